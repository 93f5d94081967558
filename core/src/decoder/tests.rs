//! The decoder stage over connections: recognition, the server's side let go, memory shares.
//! The protocol's own tests are in the protocol crate.

use mqtrace_protocol::{
    RequestCode,
    encode::{json_frame, request_frame},
};

use super::*;
use crate::{
    sources::{Connection, ConnectionId, Origin, SeenAs},
    streams::StreamEvent,
};

const UP: Direction = Direction::Egress;
const DOWN: Direction = Direction::Ingress;

/// The stream event of connection `id` of process 7 opening, from `origin`.
fn opened(id: u64, origin: Origin) -> StreamEvent {
    StreamEvent::Opened(Connection {
        id: ConnectionId(id),
        pid: 7,
        fd: id as i32,
        origin,
        local: None,
        peer: None,
        timestamp_ns: 0,
        seen_as: SeenAs::Plain,
    })
}

/// With `skip_server_side`: which connections the live capture may stop copying.
#[test]
fn the_brokers_side_is_let_go_and_the_clients_side_is_kept() {
    let config = DecoderConfig {
        skip_server_side: true,
        ..DecoderConfig::default()
    };
    // What happens to a connection of each origin on which this request arrives.
    let verdict = |origin: Origin, code: i32| -> (bool, u64) {
        let mut decoders = Decoders::new(config);
        let mut out = Vec::new();
        decoders.push(&opened(1, origin), &mut out);
        let request = json_frame(code, 0, 1, &[], b"");
        decoders.push(
            &StreamEvent::Data {
                connection: ConnectionId(1),
                direction: DOWN,
                position: 0,
                bytes: bytes::Bytes::from(request),
                timestamp_ns: 1,
            },
            &mut out,
        );
        (
            !decoders.take_rejected().is_empty(),
            decoders.connections_server_side,
        )
    };
    // Accepted: the process is the broker there, known at once.
    assert_eq!(verdict(Origin::Accept, 10), (true, 1));
    // Open before tracing: known by the requests the process receives...
    assert_eq!(verdict(Origin::Existing, 10), (true, 1));
    assert_eq!(verdict(Origin::Existing, 34), (true, 1));
    // ...but brokers send some requests to clients: those say nothing.
    assert_eq!(verdict(Origin::Existing, 40), (false, 0));
    assert_eq!(verdict(Origin::Existing, 307), (false, 0));
    // Connected by the process: it is the client, whatever arrives.
    assert_eq!(verdict(Origin::Connect, 10), (false, 0));
}

#[test]
fn connection_buffers_stay_within_their_share_and_decoding_goes_on_after() {
    const SHARE: usize = 4 << 20;
    const HEADER: usize = 1 << 20;
    const SENT: usize = 600 << 10;
    let mut decoders = Decoders::new(DecoderConfig::default());
    decoders.set_memory(SHARE);
    let mut out = Vec::new();
    let mut positions = [0u64; 20];
    let mut data = |decoders: &mut Decoders, id: usize, bytes: Vec<u8>, out: &mut Vec<_>| {
        let length = bytes.len() as u64;
        decoders.push(
            &StreamEvent::Data {
                connection: ConnectionId(id as u64),
                direction: UP,
                position: positions[id],
                bytes: bytes::Bytes::from(bytes),
                timestamp_ns: 1,
            },
            out,
        );
        positions[id] += length;
    };
    // Twenty connections, each a RocketMQ client (one frame decoded), then each the head of a
    // frame with a 1 MiB header and 600 KiB of it: 12 MiB to hold against a 4 MiB share.
    let mut head = Vec::new();
    head.extend_from_slice(&((4 + HEADER) as u32).to_be_bytes());
    head.extend_from_slice(&(HEADER as u32).to_be_bytes());
    for id in 0..20 {
        decoders.push(&opened(id as u64, Origin::Connect), &mut out);
        data(
            &mut decoders,
            id,
            request_frame(RequestCode::HeartBeat, 1, &[], b""),
            &mut out,
        );
        data(&mut decoders, id, head.clone(), &mut out);
        for _ in 0..SENT / (60 << 10) {
            data(&mut decoders, id, vec![b' '; 60 << 10], &mut out);
            assert!(decoders.held_bytes() <= SHARE, "{}", decoders.held_bytes());
        }
    }
    assert_eq!(out.len(), 20, "the first frames");
    let counters = decoders.counters();
    assert!(
        counters.bytes_shed >= (20 * SENT - SHARE) as u64,
        "{counters:?}"
    );
    assert!(counters.frames_lost >= 14, "{counters:?}");
    assert!(
        decoders.take_rejected().is_empty(),
        "no connection given up"
    );
    // The rest of a given-up frame is skipped by its length and the next frame decodes; a
    // frame whose header was kept ends in a bad header (spaces) and a scan, which finds the
    // next frame too.
    for id in 0..20 {
        data(&mut decoders, id, vec![b' '; HEADER - SENT], &mut out);
        data(
            &mut decoders,
            id,
            request_frame(RequestCode::HeartBeat, 2, &[], b""),
            &mut out,
        );
    }
    assert_eq!(out.len(), 40);
    let after = decoders.counters();
    assert_eq!(after.frames_lost, counters.frames_lost, "{after:?}");
    assert_eq!(after.resyncs, 20 - counters.frames_lost, "{after:?}");
}

#[test]
fn a_connection_that_begins_tls_is_let_go_and_counted_as_encrypted() {
    let mut decoders = Decoders::new(DecoderConfig::default());
    let mut out = Vec::new();
    for (id, first) in [
        (1, &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..]),
        (2, &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]),
    ] {
        decoders.push(&opened(id, Origin::Connect), &mut out);
        decoders.push(
            &StreamEvent::Data {
                connection: ConnectionId(id),
                direction: UP,
                position: 0,
                bytes: bytes::Bytes::copy_from_slice(first),
                timestamp_ns: 1,
            },
            &mut out,
        );
    }
    let rejected: Vec<u64> = decoders.take_rejected().iter().map(|c| c.id.0).collect();
    assert_eq!(rejected, [1, 2]);
    assert_eq!(decoders.connections_rejected, 2);
    assert_eq!(decoders.connections_tls, 1);
}
