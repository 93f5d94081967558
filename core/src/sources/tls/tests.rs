//! The binder over events and records as the kernel capture reads them.

use bytes::Bytes;

use super::*;
use crate::sources::{Chunk, EndCause, Origin};

const PID: u32 = 40;
const SSL: u64 = 0x7f00_dead_0000;
const CIPHER: ConnectionId = ConnectionId(5);

fn opened(id: ConnectionId) -> SourceEvent {
    SourceEvent::Opened(Connection {
        id,
        pid: PID,
        fd: 9,
        origin: Origin::Connect,
        local: None,
        peer: Some("127.0.0.1:8081".parse().unwrap()),
        timestamp_ns: 1,
        seen_as: SeenAs::Plain,
    })
}

fn data(
    connection: ConnectionId,
    direction: Direction,
    position: u64,
    bytes: &[u8],
) -> SourceEvent {
    SourceEvent::Data(Chunk {
        connection,
        direction,
        position,
        bytes: Bytes::copy_from_slice(bytes),
        timestamp_ns: 2,
    })
}

/// Ciphertext as a library writes it: a TLS record header, then random-looking bytes.
fn ciphertext(seed: u8) -> Vec<u8> {
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    record.extend((0..64u8).map(|i| i.wrapping_mul(31).wrapping_add(seed)));
    record
}

fn prefix_of(ssl: u64, bytes: &[u8]) -> Placed {
    Placed {
        before: 0,
        record: TlsRecord::Ciphertext {
            pid: PID,
            ssl,
            prefix: Bytes::copy_from_slice(&bytes[..32]),
        },
    }
}

fn plaintext(ssl: u64, direction: Direction, position: u64, bytes: &[u8]) -> Placed {
    Placed {
        before: 0,
        record: TlsRecord::Plaintext {
            pid: PID,
            ssl,
            event: data(ConnectionId(0), direction, position, bytes),
        },
    }
}

fn placed_before(mut record: Placed, before: usize) -> Placed {
    record.before = before;
    record
}

/// Binds `events` with `records`, returning the events out and the connections bound.
fn run(
    binder: &mut TlsBinder,
    events: Vec<SourceEvent>,
    records: Vec<Placed>,
) -> (Vec<SourceEvent>, Vec<ConnectionId>) {
    let mut events = events;
    let mut bound = Vec::new();
    binder.bind(&mut events, 0, records, &mut bound);
    (events, bound.into_iter().map(|c| c.id).collect())
}

#[test]
fn ciphertext_found_in_a_socket_write_binds_the_plaintext_to_that_connection() {
    let mut binder = TlsBinder::new();
    let hello = ciphertext(1);
    // The handshake's prefix, the socket write carrying it (after other bytes: a gathering
    // write), then plaintext both ways.
    let (out, bound) = run(
        &mut binder,
        vec![
            opened(CIPHER),
            data(
                CIPHER,
                Direction::Egress,
                0,
                &[b"xx".as_slice(), &hello].concat(),
            ),
        ],
        vec![
            placed_before(prefix_of(SSL, &hello), 1),
            placed_before(plaintext(SSL, Direction::Egress, 0, b"PRI * HTTP/2.0"), 2),
            placed_before(plaintext(SSL, Direction::Ingress, 0, b"settings"), 2),
        ],
    );
    let plain = plaintext_id(CIPHER);
    assert_eq!(bound, vec![CIPHER]);
    assert_eq!(out.len(), 4, "{out:#?}");
    assert_eq!(out[0], opened(CIPHER));
    let SourceEvent::Opened(connection) = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (
            connection.id,
            connection.pid,
            connection.fd,
            connection.seen_as
        ),
        (plain, PID, 9, SeenAs::TlsUprobe)
    );
    assert_eq!(connection.peer, Some("127.0.0.1:8081".parse().unwrap()));
    assert_eq!(out[2], data(plain, Direction::Egress, 0, b"PRI * HTTP/2.0"));
    assert_eq!(out[3], data(plain, Direction::Ingress, 0, b"settings"));
    assert_eq!(binder.counters().connections_bound, 1);
    assert_eq!(binder.counters().plaintext_bytes, 22);

    // Later ciphertext of the bound connection goes; its close ends both streams.
    let closed = SourceEvent::Closed {
        connection: CIPHER,
        final_positions: Some([100, 100]),
        timestamp_ns: 9,
        cause: EndCause::Closed,
    };
    let (out, bound) = run(
        &mut binder,
        vec![
            data(CIPHER, Direction::Ingress, 0, &ciphertext(2)),
            closed.clone(),
        ],
        vec![],
    );
    assert!(bound.is_empty());
    assert_eq!(
        out,
        vec![
            SourceEvent::Closed {
                connection: CIPHER,
                final_positions: None,
                timestamp_ns: 9,
                cause: EndCause::Closed,
            },
            SourceEvent::Closed {
                connection: plain,
                final_positions: None,
                timestamp_ns: 9,
                cause: EndCause::Closed,
            }
        ]
    );
}

#[test]
fn ciphertext_let_go_before_its_binding_ends_alone() {
    // A process whose first TLS bytes came before its probes: the stages after this one saw
    // its ciphertext, took it for something else and let it go, as the binding came.
    let mut binder = TlsBinder::new();
    let hello = ciphertext(1);
    let (_, bound) = run(
        &mut binder,
        vec![opened(CIPHER), data(CIPHER, Direction::Egress, 0, &hello)],
        vec![placed_before(prefix_of(SSL, &hello), 1)],
    );
    assert_eq!(bound, vec![CIPHER]);
    let let_go = SourceEvent::Closed {
        connection: CIPHER,
        final_positions: None,
        timestamp_ns: 3,
        cause: EndCause::NotFollowed,
    };
    let (out, _) = run(
        &mut binder,
        vec![let_go.clone()],
        vec![plaintext(SSL, Direction::Egress, 0, b"PRI * HTTP/2.0")],
    );
    let plain = plaintext_id(CIPHER);
    assert_eq!(
        out,
        vec![data(plain, Direction::Egress, 0, b"PRI * HTTP/2.0"), let_go]
    );
    // Its plaintext goes on after, until the connection closes.
    let (out, _) = run(
        &mut binder,
        vec![],
        vec![plaintext(SSL, Direction::Ingress, 0, b"settings")],
    );
    assert_eq!(out, vec![data(plain, Direction::Ingress, 0, b"settings")]);
}

#[test]
fn plaintext_before_its_binding_is_held_and_handed_on_in_order() {
    let mut binder = TlsBinder::new();
    let record = ciphertext(3);
    // A connection open before the probes: its first prefix comes with application data,
    // and SSL_write returns (plaintext) before the caller writes the socket.
    let (out, bound) = run(
        &mut binder,
        vec![opened(CIPHER)],
        vec![
            placed_before(prefix_of(SSL, &record), 1),
            placed_before(plaintext(SSL, Direction::Egress, 0, b"first"), 1),
            placed_before(plaintext(SSL, Direction::Egress, 5, b"second"), 1),
        ],
    );
    assert_eq!(out, vec![opened(CIPHER)]);
    assert!(bound.is_empty());
    let (out, bound) = run(
        &mut binder,
        vec![data(CIPHER, Direction::Egress, 0, &record)],
        vec![],
    );
    let plain = plaintext_id(CIPHER);
    assert_eq!(bound, vec![CIPHER]);
    assert_eq!(
        out[1..],
        [
            data(plain, Direction::Egress, 0, b"first"),
            data(plain, Direction::Egress, 5, b"second"),
        ]
    );
}

#[test]
fn other_processes_short_prefixes_and_other_bytes_bind_nothing() {
    let mut binder = TlsBinder::new();
    let record = ciphertext(4);
    let mut other = opened(ConnectionId(6));
    if let SourceEvent::Opened(c) = &mut other {
        c.pid = PID + 1;
    }
    let short = Placed {
        before: 0,
        record: TlsRecord::Ciphertext {
            pid: PID,
            ssl: SSL + 1,
            prefix: Bytes::copy_from_slice(&record[..8]),
        },
    };
    let (out, bound) = run(
        &mut binder,
        vec![
            opened(CIPHER),
            other.clone(),
            // The same bytes written by another process, and bytes without the prefix.
            data(ConnectionId(6), Direction::Egress, 0, &record),
            data(CIPHER, Direction::Egress, 0, b"plain bytes"),
            // The prefix arriving in the other direction binds nothing either.
            data(CIPHER, Direction::Ingress, 0, &record),
        ],
        vec![prefix_of(SSL, &record), short],
    );
    assert!(bound.is_empty());
    assert_eq!(out.len(), 5);
    assert_eq!(binder.counters().connections_bound, 0);
}

#[test]
fn unbound_plaintext_is_bounded_and_a_process_end_forgets_it() {
    let mut binder = TlsBinder::new();
    let chunk = vec![7u8; 64 * 1024];
    let records: Vec<Placed> = (0..(MAX_HELD_BYTES / chunk.len() + 8) as u64)
        .map(|i| plaintext(SSL + i, Direction::Egress, 0, &chunk))
        .collect();
    run(&mut binder, vec![], records);
    assert!(binder.held.held().bytes <= MAX_HELD_BYTES);
    assert_eq!(binder.counters().objects_unbound, 8);
    let (out, _) = run(
        &mut binder,
        vec![SourceEvent::ProcessExited { pid: PID }],
        vec![],
    );
    assert_eq!(out, vec![SourceEvent::ProcessExited { pid: PID }]);
    assert!(binder.held.is_empty());
    assert_eq!(
        binder.counters().objects_unbound,
        (MAX_HELD_BYTES / chunk.len() + 8) as u64
    );
}

/// A server reads the client's hello before it writes: a connection that begins TLS in a
/// process with probes is kept back until its own hello binds it; one never bound goes on, to
/// be taken for encrypted, when it ends.
#[test]
fn a_servers_connection_waits_for_its_binding() {
    let mut binder = TlsBinder::new();
    binder.set_probed(PID, true);
    let client_hello = [&[0x16, 0x03, 0x01, 0x00, 0x40][..], &ciphertext(5)[5..]].concat();
    let server_hello = [&[0x16, 0x03, 0x03, 0x00, 0x40][..], &ciphertext(6)[5..]].concat();
    let (out, bound) = run(
        &mut binder,
        vec![
            opened(CIPHER),
            data(CIPHER, Direction::Ingress, 0, &client_hello),
            data(CIPHER, Direction::Egress, 0, &server_hello),
        ],
        vec![placed_before(prefix_of(SSL, &server_hello), 2)],
    );
    assert_eq!(bound, vec![CIPHER]);
    assert_eq!(out.len(), 2, "{out:#?}");
    assert!(matches!(&out[1], SourceEvent::Opened(c) if c.id == plaintext_id(CIPHER)));

    // Another connection never bound: kept back, then handed on before its close.
    let other = ConnectionId(7);
    let hello = data(other, Direction::Ingress, 0, &client_hello);
    let closed = SourceEvent::Closed {
        connection: other,
        final_positions: None,
        timestamp_ns: 3,
        cause: EndCause::Closed,
    };
    let (out, _) = run(&mut binder, vec![opened(other), hello.clone()], vec![]);
    assert_eq!(out, vec![opened(other)]);
    let (out, _) = run(&mut binder, vec![closed.clone()], vec![]);
    assert_eq!(out, vec![hello, closed]);
    assert_eq!(binder.counters().connections_unbound, 1);
}

/// A connection already encrypted when the agent started (a newer agent taking over, a
/// restart: gRPC clients keep theirs for hours) goes on with application data, not a hello:
/// in a probed process it too is kept back until a write binds it, not handed on to be taken
/// for something other than RocketMQ and let go.
#[test]
fn a_connection_encrypted_before_the_agent_started_waits_for_its_binding() {
    let mut binder = TlsBinder::new();
    binder.set_probed(PID, true);
    let SourceEvent::Opened(mut existing) = opened(CIPHER) else {
        unreachable!()
    };
    existing.origin = Origin::Existing;
    let (read, written) = (ciphertext(10), ciphertext(11));
    let (out, bound) = run(
        &mut binder,
        vec![
            SourceEvent::Opened(existing.clone()),
            data(CIPHER, Direction::Ingress, 0, &read),
            data(CIPHER, Direction::Egress, 0, &written),
        ],
        vec![
            placed_before(plaintext(SSL, Direction::Ingress, 0, b"response"), 2),
            placed_before(prefix_of(SSL, &written), 2),
        ],
    );
    assert_eq!(bound, vec![CIPHER]);
    assert_eq!(out.len(), 3, "{out:#?}");
    assert_eq!(
        out[2],
        data(plaintext_id(CIPHER), Direction::Ingress, 0, b"response")
    );

    // Plain bytes of such a connection go on at once, as do a connection's made after the
    // start that carry no hello.
    let plain = ConnectionId(8);
    existing.id = plain;
    let request = data(
        plain,
        Direction::Egress,
        0,
        b"\x00\x00\x00\x20 remoting frame",
    );
    let (out, _) = run(
        &mut binder,
        vec![SourceEvent::Opened(existing), request.clone()],
        vec![],
    );
    assert_eq!(out[1], request);
    let later = ConnectionId(9);
    let (out, _) = run(
        &mut binder,
        vec![opened(later), data(later, Direction::Ingress, 0, &read)],
        vec![],
    );
    assert_eq!(out.len(), 2, "not kept back: {out:#?}");
}

/// The stages after the binder let a plaintext stream go (the server's side of a connection,
/// say): its object's later records are dropped, not handed on for a connection already
/// ended, and its ciphertext connection is named to be let go too.
#[test]
fn a_plaintext_stream_let_go_drops_its_objects_records() {
    let mut binder = TlsBinder::new();
    let record = ciphertext(8);
    run(
        &mut binder,
        vec![opened(CIPHER), data(CIPHER, Direction::Egress, 0, &record)],
        vec![placed_before(prefix_of(SSL, &record), 1)],
    );
    assert_eq!(
        binder.stop_following(plaintext_id(CIPHER)),
        Some((CIPHER, (PID, SSL)))
    );
    assert_eq!(
        binder.stop_following(CIPHER),
        None,
        "not a plaintext stream"
    );
    let (out, bound) = run(
        &mut binder,
        vec![],
        vec![
            plaintext(SSL, Direction::Ingress, 0, b"more"),
            prefix_of(SSL, &ciphertext(9)),
        ],
    );
    assert!(out.is_empty() && bound.is_empty(), "{out:?}");
    assert!(binder.held.is_empty());
}

/// A connection that begins TLS in a process without probes is counted once, by why it stays
/// dark: what the capture said of the process, else no library read.
#[test]
fn dark_connections_are_counted_by_why() {
    let mut binder = TlsBinder::new();
    let client_hello = [
        &[0x16, 0x03, 0x01, 0x00, 0x40, 0x01][..],
        &ciphertext(5)[6..],
    ]
    .concat();
    let server_hello = [
        &[0x16, 0x03, 0x03, 0x00, 0x40, 0x02][..],
        &ciphertext(6)[6..],
    ]
    .concat();
    let handshake = |id: u64| {
        let id = ConnectionId(id);
        vec![
            opened(id),
            data(id, Direction::Egress, 0, &client_hello),
            data(id, Direction::Ingress, 0, &server_hello),
            data(id, Direction::Egress, 70, &client_hello),
        ]
    };
    let (out, _) = run(&mut binder, handshake(1), vec![]);
    assert_eq!(out, handshake(1), "handed on as they are");
    binder.set_dark_reason(PID, Some(DarkReason::Jsse));
    run(&mut binder, handshake(2), vec![]);
    run(&mut binder, handshake(3), vec![]);
    binder.set_dark_reason(PID, Some(DarkReason::StrippedLibrary));
    run(&mut binder, handshake(4), vec![]);
    // With probes, a connection waits for its binding; let go unbound, it is the stripped
    // library's (grpcio's BoringSSL in a Python process that also maps the system's libssl).
    binder.set_probed(PID, true);
    run(&mut binder, handshake(5), vec![]);
    let closed = SourceEvent::Closed {
        connection: ConnectionId(5),
        final_positions: None,
        timestamp_ns: 3,
        cause: EndCause::Closed,
    };
    run(&mut binder, vec![closed], vec![]);
    let counters = binder.counters();
    assert_eq!(
        (
            counters.dark_no_library,
            counters.dark_jsse,
            counters.dark_stripped_library,
            counters.connections_unbound
        ),
        (1, 2, 2, 0)
    );
}
