//! The gRPC decoder over conversations built the way a client and server write them: HPACK
//! (loona-hpack's encoder indexes every literal, as real peers' do), HTTP/2 frames, gRPC
//! length prefixes, prost-encoded messages. Real captures are replayed in the decoder tests.

use proptest::prelude::*;

use super::{encode::*, proto as v2, *};
use crate::{RequestCode, operation::Operation};

const CLIENT: Direction = Direction::Egress;
const SERVER: Direction = Direction::Ingress;
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Feeds the client's bytes, then the server's, in pieces of `chunk` bytes.
fn decode_from(
    decoder: &mut GrpcDecoder,
    client: (u64, &[u8]),
    server: (u64, &[u8]),
    chunk: usize,
) -> (Vec<(Command, Operation)>, DecoderCounters, bool) {
    let mut out = Vec::new();
    let mut counters = DecoderCounters::default();
    let mut rocketmq = true;
    for (direction, (start, bytes)) in [(CLIENT, client), (SERVER, server)] {
        for (i, piece) in bytes.chunks(chunk.max(1)).enumerate() {
            let position = start + (i * chunk.max(1)) as u64;
            let ns = 1_000 + position;
            rocketmq &= decoder
                .data(direction, position, piece, ns, &mut counters, &mut out)
                .is_ok();
        }
    }
    (out, counters, rocketmq)
}

fn decode(c: &Conversation, chunk: usize) -> (Vec<(Command, Operation)>, DecoderCounters) {
    let mut decoder = GrpcDecoder::new(Some(CLIENT));
    let (out, counters, rocketmq) =
        decode_from(&mut decoder, (0, &c.client), (0, &c.server), chunk);
    assert!(rocketmq);
    assert!(decoder.is_rocketmq());
    (out, counters)
}

#[test]
fn a_send_call_is_a_send_request_and_its_result() {
    let mut c = Conversation::new();
    let mut request = send_request(&["ID1", "ID2"]);
    let traced = request.messages[0].system_properties.as_mut().unwrap();
    traced.trace_context = Some(TRACEPARENT.into());
    c.request(1, "SendMessage", &request);
    c.response(1, &[send_response(77)], "0");
    for chunk in [usize::MAX, 1, 7] {
        let (out, counters) = decode(&c, chunk);
        assert_eq!(out.len(), 2, "chunk {chunk}");
        let (request, operation) = &out[0];
        assert_eq!(request.wire, Wire::Grpc);
        assert_eq!(request.direction, CLIENT);
        assert!(!request.is_response());
        assert_eq!(request.header.opaque, 1);
        assert_eq!(request.request(), Some(RequestCode::SendMessage));
        assert_eq!(request.header.language, "RUST");
        assert_eq!(request.client_id(), Some("host@1234#5678"));
        assert_eq!(request.client_version(&mut itoa::Buffer::new()), "5.0.0");
        assert_eq!(request.rpc().map(|rpc| rpc.method), Some("SendMessage"));
        let Operation::Send(send) = operation else {
            panic!("not a send: {operation:?}");
        };
        assert_eq!(send.topic.as_deref(), Some("orders"));
        assert!(send.batch);
        let ids: Vec<_> = send.messages.iter().map(|m| m.msg_id.as_deref()).collect();
        assert_eq!(ids, [Some("ID1"), Some("ID2")]);
        let first = &send.messages[0];
        assert_eq!(first.properties.uniq_key(), Some("ID1"));
        assert_eq!(first.keys(), ["key-ID1"]);
        assert_eq!(first.tags(), Some("TagA"));
        assert_eq!(first.properties.get("tenant"), Some("blue"));
        assert_eq!(first.properties.traceparent(), Some(TRACEPARENT));
        assert_eq!(first.born_timestamp_ms, Some(1_700_000_000_005));
        assert_eq!(first.body_len, 5);

        let (response, operation) = &out[1];
        assert!(response.is_response());
        assert_eq!(response.direction, SERVER);
        assert_eq!(response.header.opaque, 1);
        assert_eq!(response.request_code, Some(RequestCode::SendMessage));
        assert_eq!(response.header.code, v2::Code::Ok as i32);
        let Operation::SendResult(result) = operation else {
            panic!("not a send result: {operation:?}");
        };
        assert_eq!(result.queue_offset, Some(77));
        assert!(response.end_ns >= response.start_ns);
        assert_eq!(counters.grpc_calls, 1);
        assert_eq!(counters.frames_lost, 0);
    }
}

#[test]
fn a_receive_stream_gives_every_message_and_the_long_poll() {
    let mut c = Conversation::new();
    c.request(3, "ReceiveMessage", &receive_request());
    c.response(
        3,
        &[
            received("A", 1),
            received("B", 3),
            receive_status(v2::Code::Ok),
        ],
        "0",
    );
    let (out, _) = decode(&c, 5);
    assert_eq!(out.len(), 2);
    let (request, Operation::Pop(pop)) = &out[0] else {
        panic!("not a pop: {:?}", out[0].1);
    };
    assert_eq!(request.request(), Some(RequestCode::PopMessage));
    assert_eq!(request.long_poll_ms(), 20_000);
    assert_eq!(request.rpc().map(|rpc| rpc.method), Some("ReceiveMessage"));
    assert_eq!(pop.consumer_group.as_deref(), Some("workers"));
    assert_eq!(pop.topic.as_deref(), Some("orders"));
    assert_eq!(pop.queue_id, Some(2));
    assert_eq!(pop.invisible_time_ms, Some(15_000));
    let (response, Operation::Pulled(pulled)) = &out[1] else {
        panic!("not pulled: {:?}", out[1].1);
    };
    assert_eq!(response.request_code, Some(RequestCode::PopMessage));
    let got: Vec<_> = pulled
        .messages
        .iter()
        .map(|m| (m.msg_id.as_deref(), m.reconsume_times, m.queue_offset))
        .collect();
    assert_eq!(
        got,
        [
            (Some("A"), Some(0), Some(41)),
            (Some("B"), Some(2), Some(41))
        ]
    );
}

#[test]
fn acks_and_the_other_settlements_name_their_messages() {
    let mut c = Conversation::new();
    let ack = v2::AckMessageRequest {
        group: resource("workers"),
        topic: resource("orders"),
        entries: vec![
            v2::AckMessageEntry {
                message_id: "A".into(),
                receipt_handle: "rh-a".into(),
            },
            v2::AckMessageEntry {
                message_id: "B".into(),
                receipt_handle: "rh-b".into(),
            },
        ],
    };
    c.request(1, "AckMessage", &ack);
    c.response(
        1,
        &[grpc(&v2::AckMessageResponse {
            status: ok(),
            entries: vec![],
        })],
        "0",
    );
    let change = v2::ChangeInvisibleDurationRequest {
        group: resource("workers"),
        topic: resource("orders"),
        receipt_handle: "rh-c".into(),
        invisible_duration: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        message_id: "C".into(),
    };
    c.request(3, "ChangeInvisibleDuration", &change);
    c.response(3, &[grpc(&v2::StatusResponse { status: ok() })], "0");
    let forward = v2::ForwardMessageToDeadLetterQueueRequest {
        group: resource("workers"),
        topic: resource("orders"),
        receipt_handle: "rh-d".into(),
        message_id: "D".into(),
        delivery_attempt: 17,
        max_delivery_attempts: 16,
    };
    c.request(5, "ForwardMessageToDeadLetterQueue", &forward);
    c.response(5, &[grpc(&v2::StatusResponse { status: ok() })], "0");
    let end = v2::EndTransactionRequest {
        topic: resource("orders"),
        message_id: "E".into(),
        transaction_id: "tx-e".into(),
        resolution: v2::TransactionResolution::Commit as i32,
    };
    c.request(7, "EndTransaction", &end);
    c.response(7, &[grpc(&v2::StatusResponse { status: ok() })], "0");

    let (out, _) = decode(&c, usize::MAX);
    let requests: Vec<&Operation> = out
        .iter()
        .filter(|(c, _)| !c.is_response())
        .map(|(_, o)| o)
        .collect();
    assert_eq!(requests.len(), 4);
    let Operation::Ack(ack) = requests[0] else {
        panic!("{:?}", requests[0])
    };
    assert_eq!(ack.message_ids, ["A", "B"]);
    assert_eq!(ack.consumer_group.as_deref(), Some("workers"));
    let Operation::ChangeInvisibleTime(change) = requests[1] else {
        panic!("{:?}", requests[1])
    };
    assert_eq!(change.message_ids, ["C"]);
    assert_eq!(change.invisible_time_ms, Some(5_000));
    let Operation::SendBack(back) = requests[2] else {
        panic!("{:?}", requests[2])
    };
    assert_eq!(back.origin_msg_id.as_deref(), Some("D"));
    assert_eq!(back.delay_level, Some(-1));
    let Operation::EndTransaction(tx) = requests[3] else {
        panic!("{:?}", requests[3])
    };
    assert_eq!(
        (tx.msg_id.as_deref(), tx.commit_or_rollback),
        (Some("E"), Some(8))
    );
    assert_eq!(out.iter().filter(|(c, _)| c.is_response()).count(), 4);
}

#[test]
fn failures_keep_rocketmqs_status_or_grpcs() {
    let mut c = Conversation::new();
    c.request(1, "SendMessage", &send_request(&["X"]));
    let refused = grpc(&v2::SendMessageResponse {
        status: Some(v2::Status {
            code: v2::Code::TopicNotFound as i32,
            message: "no such topic".into(),
        }),
        entries: vec![],
    });
    c.response(1, &[refused], "0");
    c.request(3, "SendMessage", &send_request(&["Y"]));
    // A reset stream: the client gave up (deadline, cancel).
    frame(&mut c.client, http2::RST_STREAM, 0, 3, &8u32.to_be_bytes());
    let (out, _) = decode(&c, usize::MAX);
    let mut responses: Vec<&Command> = out
        .iter()
        .map(|(c, _)| c)
        .filter(|c| c.is_response())
        .collect();
    responses.sort_by_key(|c| c.header.opaque);
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[0].header.code, v2::Code::TopicNotFound as i32);
    assert_eq!(responses[0].header.remark.as_deref(), Some("no such topic"));
    assert_eq!(responses[1].header.code, 1, "CANCELLED");
}

#[test]
fn telemetry_routes_and_heartbeats_make_no_commands() {
    let mut c = Conversation::new();
    c.request(1, "QueryRoute", &v2::Resource::default());
    c.response(1, &[grpc(&v2::StatusResponse { status: ok() })], "0");
    c.request(
        3,
        "Heartbeat",
        &v2::HeartbeatRequest {
            group: resource("g"),
            ..Default::default()
        },
    );
    c.response(3, &[grpc(&v2::StatusResponse { status: ok() })], "0");
    let (out, counters) = decode(&c, usize::MAX);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(counters.grpc_calls, 0);
}

#[test]
fn another_grpc_service_is_not_rocketmq() {
    let mut c = Conversation::new();
    c.request_to(1, "/grpc.health.v1.Health/Check", &v2::Resource::default());
    let mut decoder = GrpcDecoder::new(Some(CLIENT));
    let (out, _, rocketmq) = decode_from(&mut decoder, (0, &c.client), (0, &[]), usize::MAX);
    assert!(out.is_empty());
    assert!(!rocketmq);
}

#[test]
fn bytes_that_do_not_start_with_the_preface_are_not_http2() {
    let mut decoder = GrpcDecoder::new(Some(CLIENT));
    let (_, _, rocketmq) = decode_from(&mut decoder, (0, b"GET / HTTP/1.1\r\n\r\n"), (0, &[]), 64);
    assert!(!rocketmq);
}

/// Two sends, the second after the first's header literals were indexed: joined between them,
/// the second's header block refers to entries never seen.
fn two_sends() -> (Conversation, usize, usize) {
    let mut c = Conversation::new();
    c.request(1, "SendMessage", &send_request(&["FIRST"]));
    c.response(1, &[send_response(1)], "0");
    let (client_cut, server_cut) = (c.client.len(), c.server.len());
    c.request(3, "SendMessage", &send_request(&["SECOND"]));
    c.response(3, &[send_response(2)], "0");
    (c, client_cut, server_cut)
}

#[test]
fn joined_mid_stream_a_calls_method_is_told_by_its_shape() {
    let (c, client_cut, server_cut) = two_sends();
    // The agent joins 3 bytes before the second call: the frame boundary is found again,
    // the HPACK table is unknown.
    let mut decoder = GrpcDecoder::new(None);
    let (out, counters, rocketmq) = decode_from(
        &mut decoder,
        (client_cut as u64 - 3, &c.client[client_cut - 3..]),
        // The server's side from within the first call's answer: its end is seen.
        (server_cut as u64 - 40, &c.server[server_cut - 40..]),
        usize::MAX,
    );
    assert!(rocketmq);
    assert_eq!(counters.grpc_calls_partly_seen, 1, "{counters:?}");
    let ids: Vec<_> = out
        .iter()
        .filter_map(|(_, o)| match o {
            Operation::Send(s) => s.messages[0].msg_id.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(ids, ["SECOND"]);
    assert_eq!(out.len(), 2, "the send and its result: {out:?}");
    assert_eq!(counters.grpc_methods_inferred, 1);
    assert!(counters.grpc_header_blocks_undecoded >= 1);
    assert!(
        counters.resyncs == 0 && counters.resync_bytes >= 3,
        "{counters:?}"
    );
}

#[test]
fn a_gap_loses_the_call_it_hit_and_no_other() {
    let (c, client_cut, _) = two_sends();
    let mut decoder = GrpcDecoder::new(Some(CLIENT));
    let mut out = Vec::new();
    let mut counters = DecoderCounters::default();
    // The first call's DATA frame loses 10 bytes in the middle.
    let hole = client_cut - 20;
    decoder
        .data(CLIENT, 0, &c.client[..hole], 1, &mut counters, &mut out)
        .unwrap();
    decoder.gap(CLIENT, hole as u64, 10, &mut counters, &mut out);
    decoder
        .data(
            CLIENT,
            hole as u64 + 10,
            &c.client[hole + 10..],
            2,
            &mut counters,
            &mut out,
        )
        .unwrap();
    decoder
        .data(SERVER, 0, &c.server, 3, &mut counters, &mut out)
        .unwrap();
    let sends: Vec<_> = out
        .iter()
        .filter_map(|(_, o)| match o {
            Operation::Send(s) => s.messages[0].msg_id.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(sends, ["SECOND"]);
    assert_eq!(counters.frames_lost, 1);
    // The first call has no request: its response makes no command either.
    assert_eq!(out.len(), 2);
}

#[test]
fn frames_too_long_are_skipped_by_their_length() {
    let mut c = Conversation::new();
    let mut huge = Vec::new();
    frame(
        &mut huge,
        http2::DATA,
        0,
        1,
        &vec![0u8; http2::MAX_FRAME + 1],
    );
    c.client.extend_from_slice(&huge);
    c.request(3, "SendMessage", &send_request(&["AFTER"]));
    c.response(3, &[send_response(1)], "0");
    let (out, counters) = decode(&c, 4096);
    assert_eq!(out.len(), 2);
    assert_eq!(counters.frames_lost, 1);
}

proptest! {
    /// Whatever the bytes, the decoder neither panics nor holds more than a frame and a
    /// message per call.
    #[test]
    fn arbitrary_bytes_after_the_preface_are_survived(
        noise in proptest::collection::vec(any::<u8>(), 0..4096),
        chunk in 1usize..300,
    ) {
        let mut client = PREFACE.to_vec();
        client.extend_from_slice(&noise);
        let mut decoder = GrpcDecoder::new(Some(CLIENT));
        let _ = decode_from(&mut decoder, (0, &client), (0, &noise), chunk);
        prop_assert!(decoder.held_bytes() < 4 * http2::MAX_FRAME);
    }

    /// Cut anywhere, a conversation joined there still decodes the calls that start after
    /// the cut, without panicking.
    #[test]
    fn joined_anywhere_later_calls_decode(cut in 0usize..400) {
        let (c, client_cut, server_cut) = two_sends();
        let cut = cut.min(client_cut);
        let mut decoder = GrpcDecoder::new(None);
        let (out, ..) = decode_from(
            &mut decoder,
            (cut as u64, &c.client[cut..]),
            ((server_cut / 2) as u64, &c.server[server_cut / 2..]),
            usize::MAX,
        );
        let second = out.iter().any(|(_, o)| matches!(o, Operation::Send(s) if s.messages[0].msg_id.as_deref() == Some("SECOND")));
        prop_assert!(second, "{:?}", out);
    }
}

#[test]
fn joined_mid_stream_an_earlier_calls_answer_does_not_pass_for_the_client() {
    let (c, client_cut, server_cut) = two_sends();
    let mut decoder = GrpcDecoder::new(None);
    let mut out = Vec::new();
    let mut counters = DecoderCounters::default();
    // The server's answer to the first call is the first thing seen, then the second call.
    decoder
        .data(
            SERVER,
            0,
            &c.server[..server_cut],
            1,
            &mut counters,
            &mut out,
        )
        .unwrap();
    decoder
        .data(
            CLIENT,
            client_cut as u64,
            &c.client[client_cut..],
            2,
            &mut counters,
            &mut out,
        )
        .unwrap();
    decoder
        .data(
            SERVER,
            server_cut as u64,
            &c.server[server_cut..],
            3,
            &mut counters,
            &mut out,
        )
        .unwrap();
    let seen: Vec<(Direction, bool)> = out
        .iter()
        .map(|(c, _)| (c.direction, c.is_response()))
        .collect();
    assert_eq!(seen, [(CLIENT, false), (SERVER, true)], "{out:?}");
    assert!(
        matches!(&out[0].1, Operation::Send(s) if s.messages[0].msg_id.as_deref() == Some("SECOND"))
    );
}
