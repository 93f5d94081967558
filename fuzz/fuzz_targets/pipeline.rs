//! The whole pipeline from source events to spans and the journal: connections opened,
//! accepted, closed and deselected, data and gaps on them, processes exiting, time passing,
//! the capture losing records, in any order the input says. It must never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mqtrace_core::{
    correlation::Unseen,
    decoder::DecoderConfig,
    journeys::Query,
    pipeline::{Output, Pipeline},
    sources::{Chunk, Connection, ConnectionId, Direction, EndCause, Origin, SeenAs, SourceEvent},
    spans::resource::CaptureResources,
};

fuzz_target!(|data: &[u8]| {
    let Some((&control, mut rest)) = data.split_first() else {
        return;
    };
    let config = DecoderConfig {
        skip_server_side: control & 1 == 1,
        ..DecoderConfig::default()
    };
    let mut pipeline = Pipeline::new(config, 0, CaptureResources::new("fuzz".as_ref()));
    let mut out = Vec::new();
    let mut positions = std::collections::HashMap::<(u64, bool), u64>::new();
    let mut clock = 0u64;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        // Four connections over two processes, chosen by the op byte.
        let id = u64::from(op >> 6);
        let pid = (id % 2) as u32 + 1;
        let direction = if op & 0x20 == 0 {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let position = positions
            .entry((id, direction == Direction::Egress))
            .or_default();
        clock += 1_000_000;
        let event = match op & 0x1F {
            0 | 1 | 2 => SourceEvent::Opened(Connection {
                id: ConnectionId(id),
                pid,
                fd: id as i32,
                origin: [Origin::Connect, Origin::Accept, Origin::Existing]
                    [usize::from(op & 3) % 3],
                local: None,
                peer: None,
                timestamp_ns: clock,
                seen_as: if op & 4 == 0 {
                    SeenAs::Plain
                } else {
                    SeenAs::TlsUprobe
                },
            }),
            3 => {
                let length = u64::from(rest.first().copied().unwrap_or(0));
                let gap = SourceEvent::Gap {
                    connection: ConnectionId(id),
                    direction,
                    position: *position,
                    length,
                };
                *position += length;
                gap
            }
            4 => SourceEvent::Closed {
                connection: ConnectionId(id),
                final_positions: None,
                timestamp_ns: clock,
                cause: [
                    EndCause::Closed,
                    EndCause::Deselected,
                    EndCause::NotFollowed,
                ][usize::from(op >> 5) % 3],
            },
            // A process's exec or its exit, by the op's top bit.
            5 if op & 0x80 != 0 => SourceEvent::ProcessStarted { pid },
            5 => SourceEvent::ProcessExited { pid },
            6 => {
                pipeline.expire(clock.saturating_mul(u64::from(op)), &mut out);
                continue;
            }
            // Records lost, as the stream tells it or as the counters do, by the top bit.
            7 if op & 0x80 != 0 => SourceEvent::RecordsLost { total: clock },
            7 => {
                pipeline.capture_lost(clock);
                continue;
            }
            n => {
                let length = (usize::from(n) * 16).min(rest.len());
                let (bytes, tail) = rest.split_at(length);
                rest = tail;
                let chunk = SourceEvent::Data(Chunk {
                    connection: ConnectionId(id),
                    direction,
                    position: *position,
                    bytes: Bytes::copy_from_slice(bytes),
                    timestamp_ns: clock,
                });
                *position += length as u64;
                chunk
            }
        };
        pipeline.push(event, &mut out);
    }
    pipeline.finish(Unseen::CaptureEnded, &mut out);
    for output in out {
        if let Output::Span(span) = output {
            std::hint::black_box(rendered_len(&span));
        }
    }
    std::hint::black_box(
        pipeline
            .journal()
            .map(|journal| journal.query(&Query::default())),
    );
    std::hint::black_box(pipeline.counters());
});

/// Spans are rendered for the terminal and the exporters: do it here too.
fn rendered_len(span: &mqtrace_core::spans::Span) -> usize {
    mqtrace_core::spans::span_line(span).len()
}
