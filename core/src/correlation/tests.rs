//! Events and spans from frames built from the wire reference, through the whole pipeline.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::{
    correlation::Unseen,
    decoder::{
        DecoderConfig, RequestCode, ResponseCode,
        encode::{
            json_frame, oneway_frame, properties, request_frame, response_frame, stored_message,
        },
    },
    pipeline::{Output, Pipeline},
    sources::{Chunk, Connection, ConnectionId, Direction, EndCause, Origin, SeenAs, SourceEvent},
    spans::{
        Attributes, Resource, Span, SpanKind, Status, Value,
        identity::{SpanId, TraceId},
        resource::ProcessResources,
    },
};

/// Each process's resource names only its pid: enough to tell whose a span is.
#[derive(Default)]
struct PidResources(std::collections::HashMap<u32, Resource>);

impl ProcessResources for PidResources {
    fn of(&mut self, pid: u32) -> &Resource {
        self.0.entry(pid).or_insert_with(|| {
            let mut attributes = Attributes::new();
            attributes.insert("process.pid".into(), Value::Int(i64::from(pid)));
            Resource::new(attributes)
        })
    }

    fn forget(&mut self, pid: u32) {
        self.0.remove(&pid);
    }
}

const BROKER: &str = "127.0.0.1:10911";
const CLIENT: &str = "127.0.0.1:40000";

/// A pipeline fed by hand: connections opened, frames at advancing stream positions and
/// times, other source events as given.
struct Harness {
    pipeline: Pipeline,
    out: Vec<Output>,
    positions: std::collections::HashMap<ConnectionId, [u64; 2]>,
    clock_ns: u64,
}

impl Harness {
    fn new(config: DecoderConfig) -> Self {
        Self {
            pipeline: Pipeline::new(config, 0, PidResources::default()),
            out: Vec::new(),
            positions: Default::default(),
            clock_ns: 0,
        }
    }

    /// A connection of `pid`: to the broker, or from a client when it accepted it.
    fn open(&mut self, id: u64, pid: u32, origin: Origin) -> ConnectionId {
        let id = ConnectionId(id);
        let mut ends = [Some(CLIENT.parse().unwrap()), Some(BROKER.parse().unwrap())];
        if origin == Origin::Accept {
            ends.reverse();
        }
        self.event(SourceEvent::Opened(Connection {
            id,
            pid,
            fd: id.0 as i32,
            origin,
            local: ends[0],
            peer: ends[1],
            timestamp_ns: 0,
            seen_as: SeenAs::Plain,
        }));
        id
    }

    /// The pipeline of the agent that hands over at `at_ns` (`old`), or of the one that
    /// takes over then.
    fn across_a_hand_over(old: bool, at_ns: u64) -> Self {
        let mut harness = Self::new(DecoderConfig::default());
        if old {
            harness.pipeline.hand_over_at(at_ns);
        } else {
            harness.pipeline.take_over_at(at_ns);
        }
        harness
    }

    fn frame(&mut self, id: ConnectionId, direction: Direction, bytes: &[u8]) {
        self.clock_ns += 1_000_000;
        let position = &mut self.positions.entry(id).or_default()[direction as usize];
        let chunk = Chunk {
            connection: id,
            direction,
            position: *position,
            bytes: Bytes::copy_from_slice(bytes),
            timestamp_ns: self.clock_ns,
        };
        *position += bytes.len() as u64;
        self.event(SourceEvent::Data(chunk));
    }

    /// `length` bytes of `direction` never captured.
    fn gap(&mut self, id: ConnectionId, direction: Direction, length: u64) {
        let position = &mut self.positions.entry(id).or_default()[direction as usize];
        let gap = SourceEvent::Gap {
            connection: id,
            direction,
            position: *position,
            length,
        };
        *position += length;
        self.event(gap);
    }

    fn event(&mut self, event: SourceEvent) {
        self.pipeline.push(event, &mut self.out);
    }

    /// The connection ends, for `cause`.
    fn end(&mut self, id: ConnectionId, cause: EndCause) {
        self.event(SourceEvent::Closed {
            connection: id,
            final_positions: None,
            timestamp_ns: 9_000_000,
            cause,
        });
    }

    /// Lets every request's timeout pass.
    fn time_passes(&mut self) {
        self.pipeline.expire(u64::MAX, &mut self.out);
    }

    /// The capture ends; the spans made.
    fn finish(mut self) -> (Vec<Span>, Pipeline) {
        self.pipeline.finish(Unseen::CaptureEnded, &mut self.out);
        let spans = self
            .out
            .into_iter()
            .filter_map(|o| match o {
                Output::Span(span) => Some(*span),
                Output::Command(_) | Output::Event(..) => None,
            })
            .collect();
        (spans, self.pipeline)
    }
}

/// Feeds frames (client's view: Egress = to the broker) through a pipeline, one connection,
/// until the capture ends.
fn spans(frames: &[(Direction, Vec<u8>)]) -> Vec<Span> {
    let mut harness = Harness::new(DecoderConfig::default());
    let id = harness.open(1, 0, Origin::Connect);
    for (direction, bytes) in frames {
        harness.frame(id, *direction, bytes);
    }
    harness.finish().0
}

/// The same frames seen by the broker on the connection it accepted (Egress = to the client).
fn broker_spans(frames: &[(Direction, Vec<u8>)]) -> Vec<Span> {
    let mut harness = Harness::new(DecoderConfig::default());
    let id = harness.open(1, 3, Origin::Accept);
    for (direction, bytes) in frames {
        harness.frame(id, crate::decoder::opposite(*direction), bytes);
    }
    harness.finish().0
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes.get(key)
}

fn pull(opaque: i32, topic: &str, queue: &str, commit: &str) -> Vec<u8> {
    request_frame(
        RequestCode::PullMessage,
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

/// UPDATE_CONSUMER_OFFSET: group "g" committed `commit` on topic "T", queue 3.
fn offset_commit(opaque: i32, commit: &str) -> Vec<u8> {
    request_frame(
        RequestCode::UpdateConsumerOffset,
        opaque,
        &[
            ("consumerGroup", "g"),
            ("topic", "T"),
            ("queueId", "3"),
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
            request_frame(
                RequestCode::SendMessage,
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
            response_frame(
                ResponseCode::Success,
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
            response_frame(
                ResponseCode::Success,
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
            request_frame(
                RequestCode::SendMessageV2,
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
            response_frame(
                ResponseCode::Success,
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
            response_frame(
                ResponseCode::Success,
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
fn without_uniq_key_a_retry_copy_joins_the_original_trace() {
    // ali-ons on a broker that assigns no UNIQ_KEY (Apache 4.9.7): a failed delivery is sent
    // back, and the broker stores a copy on the retry topic at another offset, naming the
    // original's offsetMsgId in ORIGIN_MESSAGE_ID. The copy's delivery belongs to the
    // original's trace, under its send span, with the original's id.
    let store: SocketAddr = BROKER.parse().unwrap();
    let original = crate::decoder::message::offset_msg_id(store, 4096);
    let copy_props = properties(&[
        ("TAGS", "x"),
        ("ORIGIN_MESSAGE_ID", &original),
        ("RETRY_TOPIC", "T"),
    ]);
    let redelivered = spans(&[
        (UP, pull(2, "%RETRY%g", "0", "-1")),
        (
            DOWN,
            response_frame(
                ResponseCode::Success,
                2,
                &[],
                &stored_message(true, store, 0, 8192, "%RETRY%g", &copy_props, b"b"),
            ),
        ),
    ]);
    assert_eq!(redelivered[0].trace_id, TraceId::for_message(&original));
    assert_eq!(
        redelivered[0].parent_span_id,
        Some(SpanId::for_send(&original))
    );
    assert_eq!(
        attr(&redelivered[0], "messaging.message.id"),
        Some(&Value::String(original.clone().into()))
    );
}

#[test]
fn failed_send_is_an_error_span() {
    let props = properties(&[("UNIQ_KEY", "F1")]);
    let out = spans(&[
        (
            UP,
            request_frame(
                RequestCode::SendMessage,
                3,
                &[("topic", "T"), ("properties", &props)],
                b"b",
            ),
        ),
        (
            DOWN,
            response_frame(ResponseCode::NoPermission, 3, &[], b""),
        ),
    ]);
    assert_eq!(out[0].status, Status::Error);
    assert_eq!(
        attr(&out[0], "error.type"),
        Some(&Value::String("NO_PERMISSION".into()))
    );
    // No response at all, with the agent seeing everything: an error too, once the request
    // times out.
    let mut harness = Harness::new(DecoderConfig::default());
    let id = harness.open(1, 0, Origin::Connect);
    harness.frame(id, UP, &single_send(4, "F2"));
    harness.time_passes();
    let (out, pipeline) = harness.finish();
    assert_eq!(out[0].status, Status::Error);
    assert_eq!(
        attr(&out[0], "error.type"),
        Some(&Value::String("timeout".into()))
    );
    assert_eq!(pipeline.counters().correlation.timeouts, 1);
}

#[test]
fn a_dual_stack_sockets_ipv4_peer_is_named_as_ipv4() {
    // A JVM's sockets are IPv6 ones: the broker 127.0.0.1 is ::ffff:127.0.0.1 to them.
    let mut harness = Harness::new(DecoderConfig::default());
    let id = ConnectionId(1);
    harness.event(SourceEvent::Opened(Connection {
        id,
        pid: 0,
        fd: 1,
        origin: Origin::Connect,
        local: Some("[::ffff:127.0.0.1]:40000".parse().unwrap()),
        peer: Some("[::ffff:127.0.0.1]:10911".parse().unwrap()),
        timestamp_ns: 0,
        seen_as: SeenAs::Plain,
    }));
    harness.frame(id, UP, &single_send(4, "M1"));
    harness.frame(id, DOWN, &ok_response(4, &[]));
    let (out, _) = harness.finish();
    assert_eq!(
        attr(&out[0], "server.address"),
        Some(&Value::String("127.0.0.1".into()))
    );
}

fn single_send(opaque: i32, uniq_key: &str) -> Vec<u8> {
    request_frame(
        RequestCode::SendMessage,
        opaque,
        &[
            ("topic", "T"),
            ("properties", &properties(&[("UNIQ_KEY", uniq_key)])),
        ],
        b"b",
    )
}

#[test]
fn traceparent_makes_the_send_a_child_of_the_application_span() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let props = properties(&[("UNIQ_KEY", "W3C"), ("traceparent", tp)]);
    let store: SocketAddr = BROKER.parse().unwrap();
    let produced = spans(&[
        (
            UP,
            request_frame(
                RequestCode::SendMessage,
                1,
                &[("topic", "T"), ("properties", &props)],
                b"b",
            ),
        ),
        (DOWN, response_frame(ResponseCode::Success, 1, &[], b"")),
    ]);
    let consumed = spans(&[
        (UP, pull(2, "T", "0", "-1")),
        (
            DOWN,
            response_frame(
                ResponseCode::Success,
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
    let frames = [
        (
            UP,
            request_frame(
                RequestCode::PopMessage,
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
        (DOWN, response_frame(ResponseCode::Success, 1, &[], &body)),
        (UP, ack(2, 200051, "4")),
        (DOWN, response_frame(ResponseCode::Success, 2, &[], b"")),
        (UP, ack(3, 200053, "5")),
        (DOWN, response_frame(ResponseCode::Success, 3, &[], b"")),
    ];
    let out = spans(&frames);
    let names: Vec<&str> = out.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["receive T", "receive T", "ack T", "nack T"]);
    // The broker's view of the same: what it delivered, what the consumer reported.
    let served = broker_spans(&frames);
    let seen: Vec<(SpanKind, &str, TraceId)> = served
        .iter()
        .map(|s| (s.kind, s.name.as_str(), s.trace_id))
        .collect();
    let (p1, p2) = (TraceId::for_message("P1"), TraceId::for_message("P2"));
    assert_eq!(
        seen,
        [
            (SpanKind::Server, "deliver T", p1),
            (SpanKind::Server, "deliver T", p2),
            (SpanKind::Server, "ack T", p1),
            (SpanKind::Server, "nack T", p2)
        ]
    );
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
        (DOWN, response_frame(ResponseCode::Success, 1, &[], &body)),
        // The consumer failed C1 (named by its offsetMsgId) and sends it back for a retry ...
        (
            UP,
            request_frame(
                RequestCode::ConsumerSendMsgBack,
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
        (DOWN, response_frame(ResponseCode::Success, 2, &[], b"")),
        // ... and commits offset 2, which passes both.
        (UP, offset_commit(3, "2")),
        (DOWN, response_frame(ResponseCode::Success, 3, &[], b"")),
    ]);
    let settled: Vec<(String, String)> = out[2..]
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                match attr(s, "messaging.message.id") {
                    Some(Value::String(id)) => id.to_string(),
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

fn ok_response(opaque: i32, ext: &[(&str, &str)]) -> Vec<u8> {
    response_frame(ResponseCode::Success, opaque, ext, b"")
}

/// The unanswered request of `harness` ends as UNSET, its reason said and counted.
fn assert_unseen(spans: &[Span], pipeline: &Pipeline, reason: &str) {
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].status, Status::Unset, "not an error: {reason}");
    assert_eq!(attr(&spans[0], "error.type"), None);
    assert_eq!(
        attr(&spans[0], "mqtrace.response.unseen"),
        Some(&Value::from(reason))
    );
    let counters = serde_json::to_value(&pipeline.counters().correlation).unwrap();
    assert_eq!(counters["unseen_responses"][reason], 1, "{counters}");
    assert_eq!(counters["timeouts"], 0);
}

#[test]
fn a_response_the_agent_may_have_missed_is_not_an_error() {
    // A gap in what came back, then the timeout.
    let mut harness = Harness::new(DecoderConfig::default());
    let id = harness.open(1, 0, Origin::Connect);
    harness.frame(id, UP, &single_send(1, "G1"));
    harness.gap(id, DOWN, 300);
    harness.time_passes();
    let (spans, pipeline) = harness.finish();
    assert_unseen(&spans, &pipeline, "capture_gap");

    // Records lost by the kernel while the request waited.
    let mut harness = Harness::new(DecoderConfig::default());
    let id = harness.open(1, 0, Origin::Connect);
    harness.pipeline.capture_lost(5);
    harness.frame(id, UP, &single_send(1, "L1"));
    harness.pipeline.capture_lost(6);
    harness.time_passes();
    let (spans, pipeline) = harness.finish();
    assert_unseen(&spans, &pipeline, "capture_lost");

    // The process deselected, the capture ended.
    for (cause, reason) in [
        (Some(EndCause::Deselected), "deselected"),
        (Some(EndCause::NotFollowed), "not_followed"),
        (None, "capture_ended"),
    ] {
        let mut harness = Harness::new(DecoderConfig::default());
        let id = harness.open(1, 0, Origin::Connect);
        harness.frame(id, UP, &single_send(1, "D1"));
        if let Some(cause) = cause {
            harness.end(id, cause);
        }
        let (spans, pipeline) = harness.finish();
        assert_unseen(&spans, &pipeline, reason);
    }
}

/// Records the ring lost, told in order with the stream: a connection that closes after a loss
/// that came after its request may have lost the response there (unseen, not an error); a
/// loss before the request says nothing of its response (an error).
#[test]
fn a_close_after_lost_records_is_unseen_one_after_an_earlier_loss_an_error() {
    let mut harness = Harness::new(DecoderConfig::default());
    let id = harness.open(1, 0, Origin::Connect);
    harness.frame(id, UP, &single_send(1, "L1"));
    harness.event(SourceEvent::RecordsLost { total: 3 });
    harness.end(id, EndCause::Closed);
    let (spans, pipeline) = harness.finish();
    assert_unseen(&spans, &pipeline, "capture_lost");
    assert_eq!(pipeline.counters().correlation.closed_unanswered, 0);

    let mut harness = Harness::new(DecoderConfig::default());
    let id = harness.open(1, 0, Origin::Connect);
    harness.event(SourceEvent::RecordsLost { total: 3 });
    harness.frame(id, UP, &single_send(1, "L2"));
    harness.end(id, EndCause::Closed);
    let (spans, pipeline) = harness.finish();
    assert_eq!(spans[0].status, Status::Error);
    assert_eq!(pipeline.counters().correlation.closed_unanswered, 1);
}

/// Two agents see the same connection across a hand-over at `at_ns`: the old one makes the
/// events of requests made before it, the new one those made from it on, each seen whole.
#[test]
fn across_a_hand_over_each_request_is_traced_by_one_agent() {
    // Frames at 1, 2, ... ms: S2's request at 3 ms is answered after the hand-over at 3.5 ms.
    let at_ns = 3_500_000;
    let run = |old: bool| {
        let mut harness = Harness::across_a_hand_over(old, at_ns);
        let id = harness.open(1, 0, Origin::Connect);
        let mut waiting = Vec::new();
        for (opaque, key) in [(1, "S1"), (2, "S2"), (3, "S3")] {
            harness.frame(id, UP, &single_send(opaque, key));
            waiting.push(harness.pipeline.waiting_owned());
            harness.frame(id, DOWN, &ok_response(opaque, &[("msgId", key)]));
        }
        let (spans, pipeline) = harness.finish();
        let keys: Vec<String> = spans
            .iter()
            .map(|s| match attr(s, "messaging.message.id") {
                Some(Value::String(key)) => key.to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        (keys, waiting, pipeline.counters().correlation)
    };
    let (old_keys, old_waiting, old) = run(true);
    let (new_keys, new_waiting, new) = run(false);
    assert_eq!(old_keys, ["S1", "S2"]);
    assert_eq!(new_keys, ["S3"]);
    // The old agent waits for S2 at its end; the new one for none of the old one's.
    assert_eq!(old_waiting, [1, 1, 0]);
    assert_eq!(new_waiting, [0, 0, 1]);
    assert_eq!((old.sends, old.left_to_other_agent), (2, 1));
    assert_eq!((new.sends, new.left_to_other_agent), (1, 2));
}

/// A message pulled before a hand-over and committed after it: the agent that owned its
/// receipt (and saw it whole) settles it, the other agent not, though it owns the commit.
#[test]
fn across_a_hand_over_a_settlement_goes_with_its_messages_receipt() {
    let store: SocketAddr = BROKER.parse().unwrap();
    let stored = stored_message(
        false,
        store,
        0,
        300,
        "T",
        &properties(&[("UNIQ_KEY", "H0")]),
        b"b",
    );
    // Frames at 1, 2, ... ms: the pull and its answer before the hand-over at 2.5 ms, the
    // commit after it.
    let at_ns = 2_500_000;
    let run = |old: bool| {
        let mut harness = Harness::across_a_hand_over(old, at_ns);
        let id = harness.open(1, 0, Origin::Connect);
        harness.frame(id, UP, &pull(1, "T", "3", "-1"));
        harness.frame(
            id,
            DOWN,
            &response_frame(ResponseCode::Success, 1, &[], &stored),
        );
        harness.frame(id, UP, &offset_commit(2, "1"));
        harness.frame(
            id,
            DOWN,
            &response_frame(ResponseCode::Success, 2, &[], b""),
        );
        let (spans, pipeline) = harness.finish();
        let names: Vec<String> = spans.iter().map(|s| s.name.clone()).collect();
        (names, pipeline.counters().correlation.settles)
    };
    assert_eq!(
        run(true),
        (vec!["receive T".into(), "commit_offset T".into()], 1)
    );
    assert_eq!(run(false), (Vec::<String>::new(), 0));
}

/// A newer agent learns from the one handing over which processes serve (a proxy): their
/// requests to the broker are never taken for a client's, even before it sees them serve.
#[test]
fn a_proxy_known_from_the_agent_handing_over_makes_no_client_spans() {
    let mut old = Harness::new(DecoderConfig::default());
    let accepted = old.open(2, 9, Origin::Accept);
    old.frame(accepted, DOWN, &single_send(1, "R1"));
    let known = old.pipeline.serving_processes();
    assert_eq!(known.serving, [9]);
    let forwarded = |learn: bool| {
        let mut new = Harness::new(DecoderConfig::default());
        if learn {
            new.pipeline.learn_serving_processes(&known);
        }
        let upstream = new.open(3, 9, Origin::Connect);
        new.frame(upstream, UP, &single_send(1, "R2"));
        new.frame(upstream, DOWN, &ok_response(1, &[("msgId", "OFF")]));
        new.finish().0.len()
    };
    assert_eq!(forwarded(false), 1, "taken for a client's send");
    assert_eq!(forwarded(true), 0);
}

#[test]
fn a_connection_closed_before_the_answer_with_nothing_missed_is_an_error() {
    let mut harness = Harness::new(DecoderConfig::default());
    let id = harness.open(1, 0, Origin::Connect);
    harness.frame(id, UP, &single_send(1, "C1"));
    harness.end(id, EndCause::Closed);
    let (spans, pipeline) = harness.finish();
    assert_eq!(spans[0].status, Status::Error);
    assert_eq!(
        attr(&spans[0], "error.type"),
        Some(&Value::String("connection_closed".into()))
    );
    assert_eq!(pipeline.counters().correlation.closed_unanswered, 1);
}

/// A client (pid 7) sends "R1" through a relay (pid 9: it accepts the client's connection and
/// forwards the same frames on its own connection to the broker), all traced; the broker too
/// (pid 3) when `broker_traced`.
fn send_through_a_relay(config: DecoderConfig, broker_traced: bool) -> Harness {
    let mut harness = Harness::new(config);
    let client = harness.open(1, 7, Origin::Connect);
    let accepted = harness.open(2, 9, Origin::Accept);
    let upstream = harness.open(3, 9, Origin::Connect);
    let at_broker = broker_traced.then(|| harness.open(4, 3, Origin::Accept));
    let request = single_send(1, "R1");
    let response = ok_response(1, &[("msgId", "OFF"), ("queueOffset", "3")]);
    harness.frame(client, UP, &request);
    harness.frame(accepted, DOWN, &request);
    harness.frame(upstream, UP, &request);
    if let Some(at_broker) = at_broker {
        harness.frame(at_broker, DOWN, &request);
        harness.frame(at_broker, UP, &response);
    }
    harness.frame(upstream, DOWN, &response);
    harness.frame(accepted, UP, &response);
    harness.frame(client, DOWN, &response);
    harness
}

#[test]
fn a_process_that_accepts_rocketmq_connections_is_a_relay_not_a_client() {
    let live = DecoderConfig {
        skip_server_side: true,
        ..DecoderConfig::default()
    };
    let mut harness = send_through_a_relay(live, false);
    let rejected = harness.pipeline.take_rejected();
    assert_eq!(rejected.len(), 1, "the accepted side is no longer copied");
    let (spans, pipeline) = harness.finish();
    assert_eq!(spans.len(), 1, "one send span, the client's: {spans:?}");
    assert_eq!(spans[0].span_id, SpanId::for_send("R1"));
    let counters = pipeline.counters();
    // The relay's request was the other one.
    assert_eq!(counters.correlation.serving_process_requests, 1);
    assert_eq!(counters.correlation.sends, 1);
    assert_eq!(counters.serving_processes, 1);
    assert_eq!(counters.connections_server_side, 1);

    // A process that accepts connections of another protocol (a web server) stays a client.
    let mut harness = Harness::new(live);
    let web = harness.open(1, 5, Origin::Accept);
    harness.frame(web, DOWN, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let own = harness.open(2, 5, Origin::Connect);
    harness.frame(own, UP, &single_send(1, "W1"));
    harness.frame(own, DOWN, &ok_response(1, &[("msgId", "OFF")]));
    let (spans, pipeline) = harness.finish();
    assert_eq!(spans.len(), 1);
    assert_eq!(pipeline.counters().connections_not_rocketmq, 1);
}

#[test]
fn without_uniq_key_the_broker_assigned_one_joins_producer_and_consumer() {
    // A current broker stores a message sent without UNIQ_KEY under one it makes, and returns
    // it as the response's transactionId.
    let store: SocketAddr = BROKER.parse().unwrap();
    let offset_id = crate::decoder::message::offset_msg_id(store, 4096);
    let produced = spans(&[
        (
            UP,
            request_frame(
                RequestCode::SendMessage,
                1,
                &[
                    ("topic", "T"),
                    ("properties", &properties(&[("KEYS", "order-1")])),
                ],
                b"b",
            ),
        ),
        (
            DOWN,
            ok_response(1, &[("msgId", &offset_id), ("transactionId", "BROKERID1")]),
        ),
    ]);
    let stored = properties(&[("KEYS", "order-1"), ("UNIQ_KEY", "BROKERID1")]);
    let consumed = spans(&[
        (UP, pull(2, "T", "3", "-1")),
        (
            DOWN,
            response_frame(
                ResponseCode::Success,
                2,
                &[],
                &stored_message(false, store, 0, 4096, "T", &stored, b"b"),
            ),
        ),
    ]);
    assert_eq!(produced[0].trace_id, TraceId::for_message("BROKERID1"));
    assert_eq!(consumed[0].trace_id, produced[0].trace_id);
    assert_eq!(consumed[0].parent_span_id, Some(produced[0].span_id));
    assert_eq!(
        attr(&consumed[0], "messaging.rocketmq.message.keys"),
        Some(&Value::Strings(vec!["order-1".into()])),
        "keys on the consumer's span too"
    );
}

#[test]
fn a_retried_send_gets_its_own_span_id_under_the_first() {
    let out = spans(&[
        (UP, single_send(1, "A1")),
        (UP, single_send(2, "A1")),
        (DOWN, ok_response(2, &[("msgId", "OFF")])),
    ]);
    // The retry completed first: it owns the send span id; the first attempt, ended when the
    // capture did, is its child.
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].span_id, SpanId::for_send("A1"));
    assert_eq!(out[1].parent_span_id, Some(out[0].span_id));
    assert_ne!(out[1].span_id, out[0].span_id);
    assert_eq!(attr(&out[1], "mqtrace.send.attempt"), Some(&Value::Int(2)));
}

#[test]
fn past_its_reconsume_times_a_sent_back_message_goes_to_the_dead_letter_queue() {
    let store: SocketAddr = BROKER.parse().unwrap();
    // stored_message delivers it as its 2nd redelivery (reconsume times 2), with keys.
    let props = properties(&[("UNIQ_KEY", "Z1"), ("KEYS", "k1 k2"), ("TAGS", "t")]);
    let id = crate::decoder::message::offset_msg_id(store, 700);
    let send_back = |opaque: i32, max: &str| {
        request_frame(
            RequestCode::ConsumerSendMsgBack,
            opaque,
            &[
                ("group", "g"),
                ("offset", "700"),
                ("originMsgId", &id),
                ("originTopic", "T"),
                ("delayLevel", "0"),
                ("maxReconsumeTimes", max),
            ],
            b"",
        )
    };
    let out = spans(&[
        (UP, pull(1, "%RETRY%g", "3", "-1")),
        (
            DOWN,
            response_frame(
                ResponseCode::Success,
                1,
                &[],
                &stored_message(false, store, 0, 700, "%RETRY%g", &props, b"b"),
            ),
        ),
        (UP, send_back(2, "3")),
        (DOWN, ok_response(2, &[])),
        (UP, send_back(3, "2")),
        (DOWN, ok_response(3, &[])),
        // A consumer that sends the message to the retry topic itself settles it too.
        (
            UP,
            request_frame(
                RequestCode::SendMessage,
                4,
                &[("topic", "%RETRY%g"), ("properties", &props)],
                b"b",
            ),
        ),
        (DOWN, ok_response(4, &[("msgId", "OFF2")])),
    ]);
    let names: Vec<&str> = out.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "receive %RETRY%g",
            "send_back T",
            "dead_letter %DLQ%g",
            "send_back %RETRY%g"
        ]
    );
    for span in &out {
        assert_eq!(span.trace_id, TraceId::for_message("Z1"));
        assert_eq!(span.parent_span_id, Some(SpanId::for_send("Z1")));
        assert_eq!(
            attr(span, "messaging.rocketmq.message.keys"),
            Some(&Value::Strings(vec!["k1".into(), "k2".into()])),
            "{}",
            span.name
        );
        assert_eq!(
            attr(span, "messaging.rocketmq.message.tag"),
            Some(&Value::String("t".into()))
        );
    }
    assert_eq!(
        attr(&out[2], "mqtrace.reconsume_times"),
        Some(&Value::Int(2))
    );
}

#[test]
fn a_huge_suspend_time_does_not_overflow_the_deadline() {
    let mut harness = Harness::new(DecoderConfig::default());
    let id = harness.open(1, 0, Origin::Connect);
    let request = request_frame(
        RequestCode::PullMessage,
        1,
        &[
            ("consumerGroup", "g"),
            ("topic", "T"),
            ("queueId", "0"),
            ("suspendTimeoutMillis", &u64::MAX.to_string()),
        ],
        b"",
    );
    harness.frame(id, UP, &request);
    harness.time_passes();
    assert_eq!(harness.pipeline.counters().requests_waiting, 0);
}

#[test]
fn requests_waiting_keep_within_their_bytes_forgetting_the_oldest() {
    let mut harness = Harness::new(DecoderConfig::default());
    let shares = crate::memory::Shares::of(10 << 20); // 2 MiB for requests waiting
    harness.pipeline.set_memory(&shares, 100);
    let id = harness.open(1, 0, Origin::Connect);
    let keys = "k".repeat(30_000);
    for opaque in 0..300 {
        let props = properties(&[("UNIQ_KEY", &format!("B{opaque}")), ("KEYS", &keys)]);
        let request = request_frame(
            RequestCode::SendMessage,
            opaque,
            &[("topic", "T"), ("properties", &props)],
            b"",
        );
        harness.frame(id, UP, &request);
    }
    let counters = harness.pipeline.counters();
    assert!(
        counters.memory.correlation.pending_bytes <= shares.pending as u64,
        "{:?}",
        counters.memory
    );
    assert!(counters.correlation.pending_evicted > 0);
    assert_eq!(
        counters.requests_waiting + counters.correlation.pending_evicted,
        300
    );
    // The journal's share holds too: at most 100 messages, within its bytes.
    assert!(counters.journal.bytes <= shares.journal as u64);
}

#[test]
fn a_long_poll_is_neither_timed_out_within_its_poll_time_nor_an_error_when_its_consumer_stops() {
    // A pop may rightly wait its poll time (40 s here) before the broker answers.
    let mut harness = Harness::new(DecoderConfig::default());
    let id = harness.open(1, 0, Origin::Connect);
    let pop = [
        ("consumerGroup", "g"),
        ("topic", "T"),
        ("pollTime", "40000"),
    ];
    harness.frame(
        id,
        UP,
        &request_frame(RequestCode::PopMessage, 1, &pop, b""),
    );
    let sent_at = harness.clock_ns;
    harness
        .pipeline
        .expire(sent_at + 35_000_000_000, &mut harness.out);
    assert_eq!(harness.pipeline.counters().requests_waiting, 1);
    harness.time_passes();
    assert_eq!(harness.pipeline.counters().correlation.timeouts, 1);

    // A pull still waiting when its consumer closes the connection: how a consumer stops.
    let mut harness = Harness::new(DecoderConfig::default());
    let id = harness.open(1, 0, Origin::Connect);
    let pull = [
        ("consumerGroup", "g"),
        ("topic", "T"),
        ("queueId", "0"),
        ("queueOffset", "3"),
        ("suspendTimeoutMillis", "15000"),
    ];
    harness.frame(
        id,
        UP,
        &request_frame(RequestCode::PullMessage, 1, &pull, b""),
    );
    harness.end(id, EndCause::Closed);
    let (spans, pipeline) = harness.finish();
    assert!(spans.is_empty(), "{spans:?}");
    let counters = pipeline.counters().correlation;
    assert_eq!(counters.long_polls_closed, 1);
    assert_eq!(counters.closed_unanswered, 0);
    assert_eq!(counters.timeouts, 0);
}

/// Sends every frame a client (`pid` 7) and its broker (`pid` 3) exchange on one connection,
/// as a host whose agent traces both sees it: each frame on the client's socket and on the
/// broker's accepted one, the other way round.
fn both_ends(harness: &mut Harness, id: u64, frames: &[(Direction, Vec<u8>)]) {
    let client = harness.open(id, 7, Origin::Connect);
    let broker = harness.open(id + 100, 3, Origin::Accept);
    for (direction, bytes) in frames {
        harness.frame(client, *direction, bytes);
        harness.frame(broker, crate::decoder::opposite(*direction), bytes);
    }
}

fn text_attr(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(Value::String(s)) => s.to_string(),
        Some(Value::Int(i)) => i.to_string(),
        _ => String::new(),
    }
}

#[test]
fn the_broker_sees_each_message_stored_delivered_and_reported_naming_its_client() {
    let store: SocketAddr = BROKER.parse().unwrap();
    let props = properties(&[("UNIQ_KEY", "B1"), ("KEYS", "order-9")]);
    let heartbeat = |client: &str, set: &str, group: &str| {
        request_frame(
            RequestCode::HeartBeat,
            90,
            &[],
            serde_json::json!({ "clientID": client, set: [{ "groupName": group }] })
                .to_string()
                .as_bytes(),
        )
    };
    let mut harness = Harness::new(DecoderConfig::default());
    both_ends(
        &mut harness,
        1,
        &[
            (UP, heartbeat("10.0.0.5@producer", "producerDataSet", "pg")),
            (DOWN, ok_response(90, &[])),
            (
                UP,
                request_frame(
                    RequestCode::SendMessage,
                    1,
                    &[
                        ("producerGroup", "pg"),
                        ("topic", "T"),
                        ("queueId", "3"),
                        ("properties", &props),
                    ],
                    b"body",
                ),
            ),
            (
                DOWN,
                ok_response(
                    1,
                    &[("msgId", "OFF1"), ("queueId", "3"), ("queueOffset", "0")],
                ),
            ),
        ],
    );
    both_ends(
        &mut harness,
        2,
        &[
            (UP, heartbeat("10.0.0.6@consumer", "consumerDataSet", "g")),
            (DOWN, ok_response(90, &[])),
            (UP, pull(1, "T", "3", "-1")),
            (
                DOWN,
                response_frame(
                    ResponseCode::Success,
                    1,
                    &[("maxOffset", "5")],
                    &stored_message(false, store, 0, 64, "T", &props, b"body"),
                ),
            ),
            (UP, offset_commit(2, "1")),
            (DOWN, ok_response(2, &[])),
        ],
    );
    let (spans, pipeline) = harness.finish();
    let of = |pid: i64| -> Vec<(SpanKind, String)> {
        spans
            .iter()
            .filter(|s| s.resource.get("process.pid") == Some(&Value::Int(pid)))
            .map(|s| (s.kind, s.name.clone()))
            .collect()
    };
    assert_eq!(
        of(3),
        [
            (SpanKind::Server, "store T".to_string()),
            (SpanKind::Server, "deliver T".into()),
            (SpanKind::Server, "commit_offset T".into()),
        ],
        "the broker's view"
    );
    assert_eq!(
        of(7),
        [
            (SpanKind::Producer, "send T".to_string()),
            (SpanKind::Client, "receive T".into()),
            (SpanKind::Client, "commit_offset T".into()),
        ],
        "the clients' view, as without the broker's"
    );
    // One trace, every span a child of the send, no id twice.
    let send = SpanId::for_send("B1");
    let ids: std::collections::HashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
    assert_eq!(ids.len(), spans.len());
    for span in &spans {
        assert_eq!(span.trace_id, TraceId::for_message("B1"));
        assert!(span.span_id == send || span.parent_span_id == Some(send));
        assert_eq!(
            attr(span, "messaging.rocketmq.message.keys"),
            Some(&Value::Strings(vec!["order-9".into()])),
            "{}",
            span.name
        );
    }
    // Each broker span names the client it served.
    let broker: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server)
        .collect();
    let named = |s: &Span| {
        [
            "messaging.client.id",
            "mqtrace.client.language",
            "mqtrace.client.version",
            "client.port",
            "mqtrace.observer",
        ]
        .map(|k| text_attr(s, k))
    };
    assert_eq!(
        named(broker[0]),
        ["10.0.0.5@producer", "JAVA", "453", "40000", "broker"]
    );
    assert_eq!(
        text_attr(broker[0], "messaging.rocketmq.client_group"),
        "pg"
    );
    assert_eq!(text_attr(broker[0], "mqtrace.offset_msg_id"), "OFF1");
    assert_eq!(
        text_attr(broker[0], "messaging.destination.partition.id"),
        "3"
    );
    assert_eq!(named(broker[1])[0], "10.0.0.6@consumer");
    assert_eq!(text_attr(broker[1], "messaging.consumer.group.name"), "g");
    assert!(attr(broker[1], "mqtrace.queue_time_ms").is_some());
    assert_eq!(text_attr(broker[2], "messaging.consumer.group.name"), "g");
    assert_eq!(attr(broker[0], "server.address"), None);
    let c = pipeline.counters().correlation;
    assert_eq!(
        (c.sends, c.receives, c.settles),
        (1, 1, 1),
        "clients' counters count the clients' view only"
    );
    assert_eq!(
        (c.broker_stored, c.broker_delivered, c.broker_reports),
        (1, 1, 1)
    );
    // The queue holds offsets up to 5, the group committed 1: 4 messages behind.
    let lag = &pipeline.counters().consumer_lag;
    assert_eq!(
        lag.iter()
            .map(|l| (
                l.group.as_str(),
                l.topic.as_str(),
                l.queue.as_str(),
                l.messages
            ))
            .collect::<Vec<_>>(),
        [("g", "T", "3", 4)]
    );
    // The journal tells both views apart.
    let journey = &pipeline.journal().unwrap().query(&crate::journeys::Query {
        msg_id: Some("B1".into()),
        limit: 1,
        ..Default::default()
    })[0];
    let actions: Vec<&str> = journey.steps.iter().map(|s| s.action.as_ref()).collect();
    assert!(actions.contains(&"broker store"), "{actions:?}");
    assert!(actions.contains(&"broker commit_offset"), "{actions:?}");
    let timeline = crate::journeys::timeline(journey);
    assert!(
        timeline.contains("<- 127.0.0.1:40000 (10.0.0.5@producer, JAVA v453)"),
        "{timeline}"
    );
}

#[test]
fn a_relay_makes_no_broker_spans_for_what_it_forwards() {
    let mut harness = send_through_a_relay(DecoderConfig::default(), true);
    assert!(harness.pipeline.take_rejected().is_empty(), "all decoded");
    let (spans, pipeline) = harness.finish();
    let made: Vec<(String, Value)> = spans
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.resource.get("process.pid").cloned().expect("process.pid"),
            )
        })
        .collect();
    assert_eq!(
        made,
        [
            ("store T".to_string(), Value::Int(3)),
            ("send T".into(), Value::Int(7))
        ]
    );
    let c = pipeline.counters().correlation;
    assert_eq!((c.relayed_requests, c.serving_process_requests), (1, 1));
    assert_eq!(pipeline.counters().serving_processes, 2);
}

#[test]
fn a_gap_in_what_the_broker_wrote_leaves_its_answer_unseen() {
    let mut harness = Harness::new(DecoderConfig::default());
    let at_broker = harness.open(1, 3, Origin::Accept);
    harness.frame(at_broker, DOWN, &single_send(1, "G1"));
    harness.gap(at_broker, UP, 100);
    harness.time_passes();
    let (spans, pipeline) = harness.finish();
    assert_unseen(&spans, &pipeline, "capture_gap");
    assert_eq!(spans[0].kind, SpanKind::Server);
}

/// A 5.x consumer acks a message it received before this agent saw its connection (it started,
/// or took over from another, in between): the ack still settles the message by its ID.
#[test]
fn a_grpc_ack_of_a_message_received_unseen_settles_it_by_its_id() {
    use crate::decoder::grpc::{
        encode::{self as grpc, Conversation},
        proto,
    };
    let mut harness = Harness::new(DecoderConfig::default());
    let mut consumer = Conversation::new();
    let ack = proto::AckMessageRequest {
        group: grpc::resource("workers"),
        topic: grpc::resource("orders"),
        entries: vec![proto::AckMessageEntry {
            message_id: "U1".into(),
            receipt_handle: "rh".into(),
        }],
    };
    consumer.request(1, "AckMessage", &ack);
    let status = proto::StatusResponse { status: grpc::ok() };
    consumer.response(1, &[grpc::grpc(&status)], "0");
    let receiver = harness.open(1, 13, Origin::Connect);
    harness.frame(receiver, UP, &consumer.client);
    harness.frame(receiver, DOWN, &consumer.server);
    let (spans, pipeline) = harness.finish();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].name, "ack orders");
    assert_eq!(spans[0].trace_id, TraceId::for_message("U1"));
    assert_eq!(spans[0].parent_span_id, Some(SpanId::for_send("U1")));
    assert_eq!(pipeline.counters().correlation.settles_unresolved, 0);
}

/// A RocketMQ 5 client sends through a proxy (gRPC in, remoting out) and acks over gRPC; a
/// remoting consumer pulls the same message: one trace, the proxy in it nowhere.
#[test]
fn a_grpc_send_through_a_proxy_joins_remoting_and_grpc_consumers() {
    use crate::decoder::grpc::encode::{self as grpc, Conversation};
    let mut harness = Harness::new(DecoderConfig::default());
    let client = harness.open(1, 7, Origin::Connect);
    let accepted = harness.open(2, 9, Origin::Accept);
    let upstream = harness.open(3, 9, Origin::Connect);
    let mut producer = Conversation::new();
    producer.request(1, "SendMessage", &grpc::send_request(&["G1"]));
    producer.response(1, &[grpc::send_response(5)], "0");
    harness.frame(client, UP, &producer.client);
    harness.frame(accepted, DOWN, &producer.client);
    harness.frame(upstream, UP, &single_send(1, "G1"));
    harness.frame(upstream, DOWN, &ok_response(1, &[("msgId", "OFF")]));
    harness.frame(accepted, UP, &producer.server);
    harness.frame(client, DOWN, &producer.server);

    // A remoting consumer pulls it from the broker.
    let store: SocketAddr = BROKER.parse().unwrap();
    let props = properties(&[("UNIQ_KEY", "G1"), ("KEYS", "key-G1")]);
    let puller = harness.open(4, 11, Origin::Connect);
    harness.frame(puller, UP, &pull(2, "orders", "0", "-1"));
    let stored = stored_message(false, store, 5, 64, "orders", &props, b"hello");
    harness.frame(
        puller,
        DOWN,
        &response_frame(ResponseCode::Success, 2, &[], &stored),
    );

    // A gRPC consumer receives and acks it through the proxy.
    let mut consumer = Conversation::new();
    consumer.request(1, "ReceiveMessage", &grpc::receive_request());
    consumer.response(
        1,
        &[
            grpc::received("G1", 1),
            grpc::receive_status(crate::decoder::grpc::proto::Code::Ok),
        ],
        "0",
    );
    let ack = crate::decoder::grpc::proto::AckMessageRequest {
        group: grpc::resource("workers"),
        topic: grpc::resource("orders"),
        entries: vec![crate::decoder::grpc::proto::AckMessageEntry {
            message_id: "G1".into(),
            receipt_handle: "rh".into(),
        }],
    };
    consumer.request(3, "AckMessage", &ack);
    consumer.response(
        3,
        &[grpc::grpc(&crate::decoder::grpc::proto::StatusResponse {
            status: grpc::ok(),
        })],
        "0",
    );
    let receiver = harness.open(5, 13, Origin::Connect);
    harness.frame(receiver, UP, &consumer.client);
    harness.frame(receiver, DOWN, &consumer.server);

    let (spans, pipeline) = harness.finish();
    let pid = |s: &Span| match s.resource.get("process.pid") {
        Some(Value::Int(pid)) => *pid as u32,
        _ => 0,
    };
    let named: Vec<(u32, &str, SpanKind)> = spans
        .iter()
        .map(|s| (pid(s), s.name.as_str(), s.kind))
        .collect();
    assert_eq!(
        named,
        [
            (7, "send orders", SpanKind::Producer),
            (11, "receive orders", SpanKind::Client),
            (13, "receive orders", SpanKind::Client),
            (13, "ack orders", SpanKind::Client),
        ],
        "the proxy (9) makes none: {spans:#?}"
    );
    for span in &spans {
        assert_eq!(span.trace_id, TraceId::for_message("G1"), "{}", span.name);
        if span.kind != SpanKind::Producer {
            assert_eq!(
                span.parent_span_id,
                Some(SpanId::for_send("G1")),
                "{}",
                span.name
            );
        }
        assert_eq!(
            attr(span, "messaging.rocketmq.message.keys"),
            Some(&Value::Strings(vec!["key-G1".into()])),
            "{}",
            span.name
        );
    }
    let grpc_spans: Vec<&str> = spans
        .iter()
        .filter(|s| attr(s, "rpc.system") == Some(&Value::String("grpc".into())))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(grpc_spans, ["send orders", "receive orders", "ack orders"]);
    let counters = pipeline.counters();
    assert_eq!(
        counters.decoder.grpc_calls, 4,
        "the send seen by client and proxy, the receive, the ack"
    );
    assert_eq!(counters.correlation.relayed_requests, 1);
    assert_eq!(counters.correlation.serving_process_requests, 1);
}

#[test]
fn a_transaction_ended_on_check_back_settles_under_the_topic_it_was_sent_to() {
    let props = properties(&[("UNIQ_KEY", "X1"), ("TRAN_MSG", "true")]);
    let send = request_frame(
        RequestCode::SendMessage,
        1,
        &[
            ("topic", "T"),
            ("producerGroup", "PG"),
            ("properties", &props),
        ],
        b"b",
    );
    // The broker asks (CHECK_TRANSACTION_STATE) with the half message, which it keeps in its
    // half topic; the producer's END_TRANSACTION (oneway) then names that topic.
    let end = oneway_frame(
        RequestCode::EndTransaction,
        2,
        &[
            ("topic", "RMQ_SYS_TRANS_HALF_TOPIC"),
            ("producerGroup", "PG"),
            ("commitOrRollback", "8"),
            ("fromTransactionCheck", "true"),
            ("msgId", "X1"),
            ("transactionId", "X1"),
            ("commitLogOffset", "0"),
            ("tranStateTableOffset", "0"),
        ],
        b"",
    );
    let out = spans(&[(UP, send), (DOWN, ok_response(1, &[])), (UP, end)]);
    let names: Vec<&str> = out.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["send T", "commit T"]);
    assert_eq!(out[1].parent_span_id, Some(out[0].span_id));
}

#[test]
fn spans_take_the_clock_offset_in_force_when_their_request_ends() {
    // The wall clock moved (an NTP step) while the agent ran: a span made after the daemon
    // renewed the offset carries the new one.
    let mut harness = Harness::new(DecoderConfig::default());
    let id = harness.open(1, 0, Origin::Connect);
    harness.frame(id, UP, &single_send(1, "C1"));
    harness.frame(id, DOWN, &ok_response(1, &[]));
    harness.pipeline.set_clock_offset(5_000_000_000);
    harness.frame(id, UP, &single_send(2, "C2"));
    harness.frame(id, DOWN, &ok_response(2, &[]));
    let (out, _) = harness.finish();
    assert_eq!(out[0].start_unix_nano, 1_000_000);
    assert_eq!(out[1].start_unix_nano, 5_000_000_000 + 3_000_000);
}
