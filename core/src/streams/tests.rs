use super::*;
use crate::sources::{Chunk, SeenAs};

const C: ConnectionId = ConnectionId(1);

fn data(position: u64, bytes: &'static [u8]) -> SourceEvent {
    SourceEvent::Data(Chunk {
        connection: C,
        direction: Direction::Egress,
        position,
        bytes: Bytes::from_static(bytes),
        timestamp_ns: 0,
    })
}

fn run(events: Vec<SourceEvent>) -> (Vec<StreamEvent>, StreamCounters) {
    let mut streams = Streams::new();
    let mut out = Vec::new();
    for event in events {
        streams.push(event, &mut out);
    }
    (out, streams.counters)
}

/// The stream as text: bytes as they are, gaps as `[gap N]`.
fn render(events: &[StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Data { bytes, .. } => Some(String::from_utf8_lossy(bytes).into_owned()),
            StreamEvent::Gap { length, .. } => Some(format!("[gap {length}]")),
            _ => None,
        })
        .collect()
}

#[test]
fn in_order_chunks_pass_through() {
    let (out, counters) = run(vec![data(0, b"abc"), data(3, b"def")]);
    assert_eq!(render(&out), "abcdef");
    assert_eq!(counters, StreamCounters::default());
}

#[test]
fn position_jump_becomes_a_gap_of_exact_size() {
    let (out, counters) = run(vec![data(0, b"abc"), data(10, b"xyz")]);
    assert_eq!(render(&out), "abc[gap 7]xyz");
    assert_eq!(counters.gaps, 1);
    assert_eq!(counters.gap_bytes, 7);
}

#[test]
fn overlap_is_trimmed_and_late_chunk_dropped() {
    let (out, counters) = run(vec![data(0, b"abcd"), data(2, b"cdef"), data(1, b"b")]);
    assert_eq!(render(&out), "abcdef");
    assert_eq!(counters.late_bytes, 3);
}

#[test]
fn explicit_gap_then_data_continues() {
    let gap = SourceEvent::Gap {
        connection: C,
        direction: Direction::Egress,
        position: 3,
        length: 5,
    };
    let (out, _) = run(vec![data(0, b"abc"), gap, data(8, b"z")]);
    assert_eq!(render(&out), "abc[gap 5]z");
}

#[test]
fn close_reports_unseen_tail() {
    let closed = SourceEvent::Closed {
        connection: C,
        final_positions: Some([5, 0]),
        timestamp_ns: 0,
        cause: EndCause::Closed,
    };
    let (out, _) = run(vec![data(0, b"abc"), closed]);
    assert_eq!(render(&out), "abc[gap 2]");
    assert!(matches!(out.last(), Some(StreamEvent::Closed { .. })));
}

#[test]
fn data_for_unknown_connection_opens_it() {
    let (out, _) = run(vec![data(0, b"a")]);
    assert!(matches!(
        out[0],
        StreamEvent::Opened(Connection {
            origin: Origin::Existing,
            ..
        })
    ));
}

#[test]
fn process_exit_closes_its_connections() {
    let opened = SourceEvent::Opened(Connection {
        id: C,
        pid: 42,
        fd: 3,
        origin: Origin::Connect,
        local: None,
        peer: None,
        timestamp_ns: 0,
        seen_as: SeenAs::Plain,
    });
    let (out, _) = run(vec![
        opened,
        data(0, b"a"),
        SourceEvent::ProcessExited { pid: 42 },
    ]);
    assert!(matches!(
        out.last(),
        Some(StreamEvent::Closed { connection: C, .. })
    ));
}
