//! Decoder throughput in MB/s of stream, on the two shapes that dominate RocketMQ traffic:
//! pull responses of 32 × 1 KiB messages, and small send requests; the same two over RocketMQ
//! 5 gRPC (a ReceiveMessage stream of 32 × 1 KiB, small SendMessage calls). Run by `cargo
//! xtask bench` (or `cargo bench -p mqtrace-protocol --bench decode`); prints one JSON line per case.

use std::{hint::black_box, time::Instant};

use mqtrace_protocol::{
    ConnectionDecoder, DecoderConfig, DecoderCounters, Direction, RequestCode, ResponseCode,
    encode::{properties, request_frame, response_frame, stored_message},
    grpc::{
        GrpcDecoder,
        encode::{self as grpc, Conversation},
        proto::Code,
    },
    operation::{Operation, interpret},
};

/// Bytes of stream per measured pass.
const STREAM_BYTES: usize = 64 << 20;
const PASSES: usize = 5;

/// Requests (egress) and responses (ingress) as two streams, and how many messages they hold.
struct Workload {
    name: &'static str,
    grpc: bool,
    egress: Vec<u8>,
    ingress: Vec<u8>,
    messages: usize,
}

fn pull_responses() -> Workload {
    let (mut egress, mut ingress, mut messages) = (Vec::new(), Vec::new(), 0);
    let mut opaque = 0;
    while ingress.len() < STREAM_BYTES {
        opaque += 1;
        let ext = [
            ("consumerGroup", "bench_group"),
            ("topic", "BenchTopic"),
            ("queueId", "1"),
            ("queueOffset", "0"),
        ];
        egress.extend(request_frame(RequestCode::PullMessage, opaque, &ext, b""));
        let body: Vec<u8> = (0..32)
            .map(|i| {
                let id = format!("7F0000010BB818B4AAC2{opaque:06X}{i:06X}");
                let props = properties(&[("UNIQ_KEY", &id), ("TAGS", "TagA"), ("KEYS", "order-1")]);
                stored_message(
                    false,
                    "127.0.0.1:10911".parse().unwrap(),
                    i64::from(i),
                    i64::from(opaque) * 40_000,
                    "BenchTopic",
                    &props,
                    &[7; 1024],
                )
            })
            .collect::<Vec<_>>()
            .concat();
        ingress.extend(response_frame(
            ResponseCode::Success,
            opaque,
            &[("nextBeginOffset", "32")],
            &body,
        ));
        messages += 32;
    }
    Workload {
        name: "pull_32x1KiB",
        grpc: false,
        egress,
        ingress,
        messages,
    }
}

fn small_sends() -> Workload {
    let (mut egress, mut ingress, mut messages) = (Vec::new(), Vec::new(), 0);
    let mut opaque = 0;
    while egress.len() < STREAM_BYTES {
        opaque += 1;
        let props = properties(&[
            ("UNIQ_KEY", &format!("7F0000010BB818B4AAC2{opaque:012X}")),
            ("TAGS", "TagA"),
            ("KEYS", "order-1"),
            ("WAIT", "true"),
        ]);
        let ext = [
            ("a", "bench_producer"),
            ("b", "BenchTopic"),
            ("e", "1"),
            ("f", "0"),
            ("g", "1700000000000"),
            ("i", props.as_str()),
        ];
        egress.extend(request_frame(
            RequestCode::SendMessageV2,
            opaque,
            &ext,
            &[7; 64],
        ));
        ingress.extend(response_frame(
            ResponseCode::Success,
            opaque,
            &[
                ("msgId", "7F00000100002A9F0000000000000000"),
                ("queueId", "1"),
                ("queueOffset", "9"),
            ],
            b"",
        ));
        messages += 1;
    }
    Workload {
        name: "send_small",
        grpc: false,
        egress,
        ingress,
        messages,
    }
}

/// Bytes a local neighbour can write to a traced connection to make the decoder work: one valid
/// send, a broken head, then a head every 32 bytes claiming a 65,000-byte binary header whose
/// outline holds (remark and ext lengths fill it exactly), so that each one asks for a full
/// header parse.
fn crafted_resync() -> Workload {
    let props = properties(&[("UNIQ_KEY", "7F0000010BB818B4AAC2000000000001")]);
    let mut egress = request_frame(
        RequestCode::SendMessage,
        1,
        &[("topic", "T"), ("properties", &props)],
        b"x",
    );
    egress.extend_from_slice(&[0xFF; 8]);
    let header_len: u32 = 65_000;
    let mut unit = Vec::new();
    unit.extend_from_slice(&(header_len + 100).to_be_bytes());
    unit.extend_from_slice(&((1 << 24) | header_len).to_be_bytes());
    unit.extend_from_slice(&[0, 10, 0, 1, 61]); // code, language, version
    unit.extend_from_slice(&[0; 8]); // opaque, flag
    unit.extend_from_slice(&0i32.to_be_bytes()); // no remark
    unit.extend_from_slice(&(header_len as i32 - 21).to_be_bytes()); // ext fills the rest
    unit.resize(32, b'k');
    while egress.len() < STREAM_BYTES / 4 {
        egress.extend_from_slice(&unit);
    }
    Workload {
        name: "resync_crafted",
        grpc: false,
        egress,
        ingress: Vec::new(),
        messages: 1,
    }
}

/// ReceiveMessage calls, each streaming 32 messages of 1 KiB and a status.
fn grpc_receives() -> Workload {
    let mut c = Conversation::new();
    let (mut stream, mut messages) = (1, 0);
    while c.server.len() < STREAM_BYTES {
        c.request(stream, "ReceiveMessage", &grpc::receive_request());
        let mut responses: Vec<Vec<u8>> = (0..32)
            .map(|i| {
                let id = format!("0100000000000000{stream:08X}{i:06X}");
                let mut message = grpc::message(&id, "order-1", Some(1));
                message.body = vec![7; 1024].into();
                grpc::grpc(&mqtrace_protocol::grpc::proto::ReceiveMessageResponse {
                    content: Some(
                        mqtrace_protocol::grpc::proto::receive_message_response::Content::Message(
                            message,
                        ),
                    ),
                })
            })
            .collect();
        responses.push(grpc::receive_status(Code::Ok));
        c.response(stream, &responses, "0");
        stream += 2;
        messages += 32;
    }
    Workload {
        name: "grpc_receive_32x1KiB",
        grpc: true,
        egress: c.client,
        ingress: c.server,
        messages,
    }
}

/// SendMessage calls of one message with a 64-byte body.
fn grpc_sends() -> Workload {
    let mut c = Conversation::new();
    let (mut stream, mut messages) = (1, 0);
    while c.client.len() < STREAM_BYTES {
        let id = format!("0100000000000000{stream:014X}");
        let mut request = grpc::send_request(&[&id]);
        request.messages[0].body = vec![7; 64].into();
        c.request(stream, "SendMessage", &request);
        c.response(stream, &[grpc::send_response(9)], "0");
        stream += 2;
        messages += 1;
    }
    Workload {
        name: "grpc_send_small",
        grpc: true,
        egress: c.client,
        ingress: c.server,
        messages,
    }
}

/// The messages an operation carries, as the decoder counts them.
fn messages_in(operation: &Operation) -> usize {
    match operation {
        Operation::Send(send) => send.messages.len(),
        Operation::Pulled(pulled) => pulled.messages.len(),
        _ => 0,
    }
}

/// Decodes both streams in 64 KiB pieces, alternating, as a live connection would arrive.
fn decode(w: &Workload) -> usize {
    if w.grpc {
        return decode_grpc(w);
    }
    let mut decoder = ConnectionDecoder::new(DecoderConfig::default(), false);
    let mut out = Vec::new();
    let mut found = 0;
    let piece = 64 << 10;
    let (mut e, mut i) = (0, 0);
    while e < w.egress.len() || i < w.ingress.len() {
        for (direction, stream, at) in [
            (Direction::Egress, &w.egress, &mut e),
            (Direction::Ingress, &w.ingress, &mut i),
        ] {
            let end = (*at + piece).min(stream.len());
            decoder.data(direction, *at as u64, &stream[*at..end], 0, &mut out);
            *at = end;
        }
        for mut command in out.drain(..) {
            found += command.messages.len()
                + usize::from(command.request().is_some_and(|c| c.is_single_send()));
            black_box(interpret(&mut command));
        }
    }
    found
}

fn decode_grpc(w: &Workload) -> usize {
    let mut decoder = GrpcDecoder::new(Some(Direction::Egress));
    let mut counters = DecoderCounters::default();
    let mut out = Vec::new();
    let mut found = 0;
    // Both streams advance by the same share of their length, as calls and their answers do,
    // the requests a round ahead (an answer never comes before its request).
    let rounds = (w.egress.len().max(w.ingress.len()) / (64 << 10)).max(1);
    let (mut e, mut i) = (0, 0);
    for round in 1..=rounds + 1 {
        for (direction, stream, at, share) in [
            (Direction::Egress, &w.egress, &mut e, round.min(rounds)),
            (Direction::Ingress, &w.ingress, &mut i, round - 1),
        ] {
            let end = stream.len() * share / rounds;
            decoder
                .data(
                    direction,
                    *at as u64,
                    &stream[*at..end],
                    0,
                    &mut counters,
                    &mut out,
                )
                .expect("RocketMQ gRPC");
            *at = end;
        }
        for (_, operation) in out.drain(..) {
            found += messages_in(&operation);
            black_box(operation);
        }
    }
    found
}

/// Seconds per byte of the workload, best of the passes.
fn seconds_per_byte(workload: &Workload) -> f64 {
    let bytes = workload.egress.len() + workload.ingress.len();
    let mut best = f64::INFINITY;
    for _ in 0..PASSES {
        let started = Instant::now();
        let found = decode(workload);
        best = best.min(started.elapsed().as_secs_f64());
        assert_eq!(found, workload.messages, "every message decoded");
    }
    best / bytes as f64
}

fn main() {
    let mut per_byte = std::collections::BTreeMap::new();
    for workload in [
        pull_responses(),
        small_sends(),
        crafted_resync(),
        grpc_receives(),
        grpc_sends(),
    ] {
        let bytes = workload.egress.len() + workload.ingress.len();
        let seconds = seconds_per_byte(&workload) * bytes as f64;
        per_byte.insert(workload.name, seconds / bytes as f64);
        println!(
            "{}",
            serde_json::json!({
                "bench": "decode",
                "case": workload.name,
                "stream_mib": bytes as f64 / (1 << 20) as f64,
                "messages": workload.messages,
                "mb_per_s": (bytes as f64 / 1e6 / seconds).round(),
                "messages_per_s": (workload.messages as f64 / seconds).round(),
            })
        );
    }
    // Hostile bytes against valid frames, measured side by side: CPU per byte, as a ratio.
    println!(
        "{}",
        serde_json::json!({
            "bench": "decode",
            "case": "resync_crafted_vs_send_small",
            "cpu_per_byte_ratio":
                (per_byte["resync_crafted"] / per_byte["send_small"] * 100.0).round() / 100.0,
        })
    );
}
