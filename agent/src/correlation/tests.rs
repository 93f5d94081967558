//! Events and spans from frames built from the wire reference, through the whole pipeline.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::{
    decoder::{
        DecoderConfig,
        encode::{json_frame, properties, stored_message},
    },
    pipeline::{Output, Pipeline},
    sources::{Chunk, Connection, ConnectionId, Direction, Origin, SourceEvent},
    spans::{
        Span, SpanKind, Status, Value,
        identity::{SpanId, TraceId},
        resource::Resources,
    },
};

const BROKER: &str = "127.0.0.1:10911";

/// Feeds frames (client's view: Egress = to the broker) through a pipeline, one connection.
fn spans(frames: &[(Direction, Vec<u8>)]) -> Vec<Span> {
    let mut pipeline = Pipeline::new(
        DecoderConfig::default(),
        0,
        Resources::for_capture("test".as_ref()),
    );
    let mut out = Vec::new();
    let id = ConnectionId(1);
    pipeline.push(
        SourceEvent::Opened(Connection {
            id,
            pid: 0,
            fd: 3,
            origin: Origin::Connect,
            local: Some("127.0.0.1:40000".parse().unwrap()),
            peer: Some(BROKER.parse().unwrap()),
            timestamp_ns: 0,
        }),
        &mut out,
    );
    let mut positions = [0u64; 2];
    for (i, (direction, bytes)) in frames.iter().enumerate() {
        let position = &mut positions[*direction as usize];
        pipeline.push(
            SourceEvent::Data(Chunk {
                connection: id,
                direction: *direction,
                position: *position,
                bytes: Bytes::copy_from_slice(bytes),
                timestamp_ns: 1_000_000 * (i as u64 + 1),
            }),
            &mut out,
        );
        *position += bytes.len() as u64;
    }
    pipeline.finish(&mut out);
    out.into_iter()
        .filter_map(|o| match o {
            Output::Span(span) => Some(*span),
            Output::Command(_) => None,
        })
        .collect()
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes.get(key)
}

fn pull(opaque: i32, topic: &str, queue: &str, commit: &str) -> Vec<u8> {
    json_frame(
        11,
        0,
        opaque,
        &[
            ("consumerGroup", "g"),
            ("topic", topic),
            ("queueId", queue),
            ("queueOffset", "0"),
            ("commitOffset", commit),
        ],
        b"",
    )
}

const UP: Direction = Direction::Egress;
const DOWN: Direction = Direction::Ingress;

#[test]
fn send_and_receive_join_one_trace_keyed_by_uniq_key() {
    let props = properties(&[("UNIQ_KEY", "U1"), ("TAGS", "t"), ("KEYS", "k")]);
    let store: SocketAddr = BROKER.parse().unwrap();
    let produced = spans(&[
        (
            UP,
            json_frame(
                10,
                0,
                1,
                &[
                    ("producerGroup", "pg"),
                    ("topic", "T"),
                    ("queueId", "2"),
                    ("properties", &props),
                ],
                b"body",
            ),
        ),
        (
            DOWN,
            json_frame(
                0,
                1,
                1,
                &[
                    ("msgId", "OFFSETID"),
                    ("queueId", "2"),
                    ("queueOffset", "5"),
                ],
                b"",
            ),
        ),
    ]);
    let consumed = spans(&[
        (UP, pull(7, "T", "2", "-1")),
        (
            DOWN,
            json_frame(
                0,
                1,
                7,
                &[],
                &stored_message(false, store, 5, 64, "T", &props, b"body"),
            ),
        ),
    ]);
    let (send, receive) = (&produced[0], &consumed[0]);
    assert_eq!(
        (send.kind, send.name.as_str()),
        (SpanKind::Producer, "send T")
    );
    assert_eq!(
        (receive.kind, receive.name.as_str()),
        (SpanKind::Client, "receive T")
    );
    assert_eq!(send.trace_id, TraceId::for_message("U1"));
    assert_eq!(receive.trace_id, send.trace_id, "two agents, one trace");
    assert_eq!(receive.parent_span_id, Some(send.span_id));
    assert_eq!(send.parent_span_id, None);
    assert_eq!(
        attr(send, "messaging.destination.partition.id"),
        Some(&Value::String("2".into()))
    );
    assert_eq!(attr(send, "mqtrace.queue_offset"), Some(&Value::Int(5)));
    assert_eq!(
        attr(send, "messaging.rocketmq.message.keys"),
        Some(&Value::Strings(vec!["k".into()]))
    );
    assert_eq!(
        attr(send, "messaging.message.body.size"),
        Some(&Value::Int(4))
    );
    assert_eq!(
        attr(receive, "messaging.consumer.group.name"),
        Some(&Value::String("g".into()))
    );
    assert_eq!(attr(receive, "server.port"), Some(&Value::Int(10911)));
}

#[test]
fn without_uniq_key_both_sides_use_the_offset_msg_id() {
    // ali-ons sets no UNIQ_KEY: the producer learns the offsetMsgId from the response, the
    // consumer computes it from store host and commit-log offset.
    let store: SocketAddr = BROKER.parse().unwrap();
    let offset_id = crate::decoder::message::offset_msg_id(store, 4096);
    let produced = spans(&[
        (
            UP,
            json_frame(
                310,
                0,
                1,
                &[
                    ("a", "pg"),
                    ("b", "T"),
                    ("e", "0"),
                    ("i", &properties(&[("TAGS", "x")])),
                ],
                b"b",
            ),
        ),
        (
            DOWN,
            json_frame(
                0,
                1,
                1,
                &[
                    ("msgId", &offset_id),
                    ("queueId", "0"),
                    ("queueOffset", "9"),
                ],
                b"",
            ),
        ),
    ]);
    let consumed = spans(&[
        (UP, pull(2, "T", "0", "-1")),
        (
            DOWN,
            json_frame(
                0,
                1,
                2,
                &[],
                &stored_message(
                    true,
                    store,
                    9,
                    4096,
                    "T",
                    &properties(&[("TAGS", "x")]),
                    b"b",
                ),
            ),
        ),
    ]);
    assert_eq!(produced[0].trace_id, TraceId::for_message(&offset_id));
    assert_eq!(consumed[0].trace_id, produced[0].trace_id);
    assert_eq!(consumed[0].parent_span_id, Some(produced[0].span_id));
}

#[test]
fn failed_send_is_an_error_span() {
    let props = properties(&[("UNIQ_KEY", "F1")]);
    let out = spans(&[
        (
            UP,
            json_frame(10, 0, 3, &[("topic", "T"), ("properties", &props)], b"b"),
        ),
        (DOWN, json_frame(16, 1, 3, &[], b"")),
    ]);
    assert_eq!(out[0].status, Status::Error);
    assert_eq!(
        attr(&out[0], "error.type"),
        Some(&Value::String("NO_PERMISSION".into()))
    );
    // No response at all: an error too, once the request times out.
    let out = spans(&[(
        UP,
        json_frame(
            10,
            0,
            4,
            &[
                ("topic", "T"),
                ("properties", &properties(&[("UNIQ_KEY", "F2")])),
            ],
            b"b",
        ),
    )]);
    assert_eq!(
        attr(&out[0], "error.type"),
        Some(&Value::String("timeout".into()))
    );
}

#[test]
fn traceparent_makes_the_send_a_child_of_the_application_span() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let props = properties(&[("UNIQ_KEY", "W3C"), ("traceparent", tp)]);
    let store: SocketAddr = BROKER.parse().unwrap();
    let produced = spans(&[
        (
            UP,
            json_frame(10, 0, 1, &[("topic", "T"), ("properties", &props)], b"b"),
        ),
        (DOWN, json_frame(0, 1, 1, &[], b"")),
    ]);
    let consumed = spans(&[
        (UP, pull(2, "T", "0", "-1")),
        (
            DOWN,
            json_frame(
                0,
                1,
                2,
                &[],
                &stored_message(false, store, 0, 1, "T", &props, b"b"),
            ),
        ),
    ]);
    assert_eq!(
        produced[0].trace_id.hex(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        produced[0].parent_span_id.unwrap().hex(),
        "00f067aa0ba902b7"
    );
    assert_eq!(consumed[0].trace_id, produced[0].trace_id);
    assert_eq!(consumed[0].parent_span_id, Some(SpanId::for_send("W3C")));
}

#[test]
fn pop_then_ack_and_nack_settle_in_the_message_trace() {
    let store: SocketAddr = BROKER.parse().unwrap();
    let body = [
        stored_message(
            true,
            store,
            4,
            100,
            "T",
            &properties(&[("UNIQ_KEY", "P1")]),
            b"b",
        ),
        stored_message(
            true,
            store,
            5,
            200,
            "T",
            &properties(&[("UNIQ_KEY", "P2")]),
            b"b",
        ),
    ]
    .concat();
    let ack = |opaque, code, offset: &str| {
        json_frame(
            code,
            0,
            opaque,
            &[
                ("consumerGroup", "g"),
                ("topic", "T"),
                ("queueId", "3"),
                ("offset", offset),
                ("invisibleTime", "5000"),
            ],
            b"",
        )
    };
    let out = spans(&[
        (
            UP,
            json_frame(
                200050,
                0,
                1,
                &[
                    ("consumerGroup", "g"),
                    ("topic", "T"),
                    ("queueId", "-1"),
                    ("maxMsgNums", "32"),
                ],
                b"",
            ),
        ),
        (DOWN, json_frame(0, 1, 1, &[], &body)),
        (UP, ack(2, 200051, "4")),
        (DOWN, json_frame(0, 1, 2, &[], b"")),
        (UP, ack(3, 200053, "5")),
        (DOWN, json_frame(0, 1, 3, &[], b"")),
    ]);
    let names: Vec<&str> = out.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["receive T", "receive T", "ack T", "nack T"]);
    assert_eq!(out[2].trace_id, TraceId::for_message("P1"));
    assert_eq!(out[3].trace_id, TraceId::for_message("P2"));
    assert_eq!(
        attr(&out[2], "messaging.operation.type"),
        Some(&Value::String("settle".into()))
    );
    assert_eq!(out[2].parent_span_id, Some(SpanId::for_send("P1")));
}

#[test]
fn send_back_and_offset_commit_settle_pulled_messages() {
    let store: SocketAddr = BROKER.parse().unwrap();
    let body = [
        stored_message(
            false,
            store,
            0,
            300,
            "T",
            &properties(&[("UNIQ_KEY", "C0")]),
            b"b",
        ),
        stored_message(
            false,
            store,
            1,
            400,
            "T",
            &properties(&[("UNIQ_KEY", "C1")]),
            b"b",
        ),
    ]
    .concat();
    let failed_id = crate::decoder::message::offset_msg_id(store, 400);
    let out = spans(&[
        // stored_message puts every message in queue 3.
        (UP, pull(1, "T", "3", "-1")),
        (DOWN, json_frame(0, 1, 1, &[], &body)),
        // The consumer failed C1 (named by its offsetMsgId) and sends it back for a retry ...
        (
            UP,
            json_frame(
                36,
                0,
                2,
                &[
                    ("group", "g"),
                    ("offset", "400"),
                    ("originMsgId", &failed_id),
                    ("originTopic", "T"),
                    ("delayLevel", "0"),
                ],
                b"",
            ),
        ),
        (DOWN, json_frame(0, 1, 2, &[], b"")),
        // ... and commits offset 2, which passes both.
        (
            UP,
            json_frame(
                15,
                0,
                3,
                &[
                    ("consumerGroup", "g"),
                    ("topic", "T"),
                    ("queueId", "3"),
                    ("commitOffset", "2"),
                ],
                b"",
            ),
        ),
        (DOWN, json_frame(0, 1, 3, &[], b"")),
    ]);
    let settled: Vec<(String, String)> = out[2..]
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                match attr(s, "messaging.message.id") {
                    Some(Value::String(id)) => id.clone(),
                    _ => String::new(),
                },
            )
        })
        .collect();
    assert_eq!(
        settled,
        [
            ("send_back T".to_string(), "C1".to_string()),
            ("commit_offset T".into(), "C0".into()),
            ("commit_offset T".into(), "C1".into())
        ]
    );
}
