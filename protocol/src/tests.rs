//! Decoder tests on frames built from the wire reference (`shared/rocketmq-wire.md`); real
//! captures are tested in `core/tests/replay_captures.rs`.

use std::net::SocketAddr;

use proptest::prelude::*;

use super::{
    encode::{
        batch_message, binary_frame, properties, request_frame, response_frame, stored_message,
    },
    operation::Operation,
    *,
};

/// Commands of one connection's records, then of its end (responses still held go unpaired).
fn decode(stream: &[(Direction, &[u8])]) -> (Vec<Command>, DecoderCounters) {
    let timed: Vec<_> = stream.iter().map(|(d, b)| (*d, *b, 1)).collect();
    decode_timed(&timed)
}

/// As `decode`, each record with its timestamp.
fn decode_timed(stream: &[(Direction, &[u8], u64)]) -> (Vec<Command>, DecoderCounters) {
    let mut decoder = ConnectionDecoder::new(DecoderConfig::default(), false);
    let mut positions = [0u64; 2];
    let mut out = Vec::new();
    for (direction, bytes, timestamp_ns) in stream {
        decoder.data(
            *direction,
            positions[*direction as usize],
            bytes,
            *timestamp_ns,
            &mut out,
        );
        positions[*direction as usize] += bytes.len() as u64;
    }
    decoder.release(&mut out);
    (out, decoder.counters)
}

const UP: Direction = Direction::Egress;
const DOWN: Direction = Direction::Ingress;

fn pull_pair(messages: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
    let request = request_frame(
        RequestCode::PullMessage,
        7,
        &[
            ("consumerGroup", "g"),
            ("topic", "T"),
            ("queueId", "3"),
            ("queueOffset", "0"),
        ],
        b"",
    );
    let body = messages.concat();
    let response = response_frame(ResponseCode::Success, 7, &[("nextBeginOffset", "2")], &body);
    (request, response)
}

#[test]
fn send_v2_with_one_letter_keys() {
    let props = properties(&[
        ("UNIQ_KEY", "AC1100017F0018B4AAC2"),
        ("TAGS", "TagA"),
        ("KEYS", "k1 k2"),
        ("DELAY", "3"),
    ]);
    let frame = request_frame(
        RequestCode::SendMessageV2,
        1,
        &[
            ("a", "pg"),
            ("b", "orders"),
            ("e", "2"),
            ("g", "1700000000000"),
            ("i", &props),
        ],
        b"hello",
    );
    let (mut commands, _) = decode(&[(UP, &frame)]);
    let Operation::Send(send) = operation::interpret(&mut commands[0]) else {
        panic!("not a send")
    };
    assert_eq!(send.producer_group.as_deref(), Some("pg"));
    let m = &send.messages[0];
    assert_eq!(m.msg_id.as_deref(), Some("AC1100017F0018B4AAC2"));
    assert_eq!(
        (m.topic.as_deref(), m.queue_id, m.body_len),
        (Some("orders"), Some(2), 5)
    );
    assert_eq!(m.tags(), Some("TagA"));
    assert_eq!(m.keys(), vec!["k1", "k2"]);
    assert_eq!(m.properties.delay_level(), Some(3));
}

#[test]
fn send_result_pairs_with_its_request() {
    let request = request_frame(
        RequestCode::SendMessage,
        42,
        &[
            ("topic", "T"),
            ("properties", &properties(&[("UNIQ_KEY", "X")])),
        ],
        b"b",
    );
    let response = response_frame(
        ResponseCode::Success,
        42,
        &[
            ("msgId", "7F0000010000283F0000000000000010"),
            ("queueId", "1"),
            ("queueOffset", "9"),
        ],
        b"",
    );
    let (mut commands, _) = decode(&[(UP, &request), (DOWN, &response)]);
    assert_eq!(commands[1].request_code, Some(RequestCode::SendMessage));
    let Operation::SendResult(result) = operation::interpret(&mut commands[1]) else {
        panic!()
    };
    assert_eq!(
        result.offset_msg_ids,
        vec!["7F0000010000283F0000000000000010"]
    );
    assert_eq!(
        (result.queue_id, result.queue_offset, result.status),
        (Some(1), Some(9), Some(ResponseCode::Success))
    );
}

#[test]
fn batch_send_reports_every_inner_message() {
    let body: Vec<u8> = (0..3)
        .flat_map(|i| {
            batch_message(
                &properties(&[
                    ("UNIQ_KEY", &format!("ID{i}")),
                    ("KEYS", &format!("key-{i}")),
                ]),
                b"body",
            )
        })
        .collect();
    let frame = request_frame(
        RequestCode::SendBatchMessage,
        5,
        &[("b", "T"), ("e", "1"), ("m", "true")],
        &body,
    );
    let (mut commands, _) = decode(&[(UP, &frame)]);
    let Operation::Send(send) = operation::interpret(&mut commands[0]) else {
        panic!()
    };
    let ids: Vec<_> = send
        .messages
        .iter()
        .map(|m| m.msg_id.clone().unwrap())
        .collect();
    assert_eq!(ids, vec!["ID0", "ID1", "ID2"]);
    assert!(
        send.messages
            .iter()
            .all(|m| m.topic.as_deref() == Some("T") && m.body_len == 4)
    );
}

#[test]
fn pull_response_every_message_v1_v2_ipv4_ipv6() {
    let v4: SocketAddr = "127.0.0.1:10911".parse().unwrap();
    let v6: SocketAddr = "[::1]:10911".parse().unwrap();
    let messages = vec![
        stored_message(
            false,
            v4,
            0,
            100,
            "T",
            &properties(&[("UNIQ_KEY", "A"), ("TAGS", "x")]),
            &[1; 1024],
        ),
        stored_message(
            true,
            v6,
            1,
            200,
            "T",
            &properties(&[("UNIQ_KEY", "B")]),
            &[2; 10],
        ),
    ];
    let (request, response) = pull_pair(&messages);
    let (mut commands, counters) = decode(&[(UP, &request), (DOWN, &response)]);
    let Operation::Pulled(pulled) = operation::interpret(&mut commands[1]) else {
        panic!()
    };
    assert_eq!(pulled.messages.len(), 2);
    let (a, b) = (&pulled.messages[0], &pulled.messages[1]);
    assert_eq!(
        (
            a.msg_id.as_deref(),
            a.queue_id,
            a.queue_offset,
            a.reconsume_times
        ),
        (Some("A"), Some(3), Some(0), Some(2))
    );
    assert_eq!(
        a.offset_msg_id.as_deref(),
        Some("7F00000100002A9F0000000000000064")
    );
    assert_eq!(
        (a.store_host, a.body_len, a.tags()),
        (Some(v4), 1024, Some("x"))
    );
    assert_eq!(
        (b.msg_id.as_deref(), b.store_host, b.physical_offset),
        (Some("B"), Some(v6), Some(200))
    );
    assert_eq!(
        b.offset_msg_id.as_deref(),
        Some("0000000000000000000000000000000100002A9F00000000000000C8")
    );
    assert_eq!(counters.messages, 2);
}

#[test]
fn frames_split_anywhere_and_packed_together_decode_the_same() {
    let (request, response) = pull_pair(&[stored_message(
        false,
        "10.0.0.1:10911".parse().unwrap(),
        5,
        6,
        "T",
        &properties(&[("UNIQ_KEY", "Z")]),
        b"x",
    )]);
    let (whole, _) = decode(&[(UP, &request), (DOWN, &response)]);
    for split in 1..response.len() {
        let (a, b) = response.split_at(split);
        let (pieces, _) = decode(&[(UP, &request), (DOWN, a), (DOWN, b)]);
        assert_eq!(pieces, whole, "split at {split}");
    }
    let two = [request.clone(), request.clone()].concat();
    let (packed, _) = decode(&[(UP, &two)]);
    assert_eq!(packed.len(), 2);
}

#[test]
fn binary_header_and_null_tolerant_json() {
    let frame = binary_frame(34, 0, 77, &[("k", "v")], b"");
    let (commands, _) = decode(&[(UP, &frame)]);
    assert_eq!(commands[0].wire, Wire::Remoting(SerializeType::Rocketmq));
    assert_eq!(
        (
            commands[0].header.code,
            commands[0].header.opaque,
            commands[0].header.language.as_str()
        ),
        (34, 77, "RUST")
    );
    assert_eq!(commands[0].header.ext("k"), Some("v"));
    // Key order, nulls, numbers where strings are expected, unknown keys: all tolerated.
    let header = br#"{"extFields":{"queueId":3,"topic":null},"remark":"Some(Found)","opaque":9,"flag":1,"unknown":[1],"code":0}"#;
    let (commands, _) = decode(&[(DOWN, &frame_json(header))]);
    assert_eq!(commands[0].header.ext("queueId"), Some("3"));
    assert_eq!(commands[0].header.ext("topic"), None);
    assert!(commands[0].is_response());
    // Other scalars and nested values as their text, escapes resolved, a key given twice
    // has its last value; serialized as one object.
    let header = br#"{"code":10,"extFields":{"a":true,"b":1.5,"c":[1,{"d":null}],"e":"x\"\u00e9","a":"again","n":null,"z":-7}}"#;
    let (commands, _) = decode(&[(UP, &frame_json(header))]);
    let h = &commands[0].header;
    let found = ["a", "b", "c", "e", "n", "z"].map(|k| h.ext(k));
    assert_eq!(
        found,
        [
            Some("again"),
            Some("1.5"),
            Some(r#"[1,{"d":null}]"#),
            Some("x\"é"),
            None,
            Some("-7")
        ]
    );
    assert_eq!(h.ext_fields.len(), 6, "nulls are absent");
    assert_eq!(
        serde_json::to_value(&h.ext_fields).unwrap(),
        serde_json::json!({"a": "again", "b": "1.5", "c": r#"[1,{"d":null}]"#, "e": "x\"é", "z": "-7"})
    );
}

fn frame_json(header: &[u8]) -> Vec<u8> {
    encode::frame(SerializeType::Json, header, b"")
}

#[test]
fn gap_inside_a_body_keeps_the_message_metadata() {
    let (request, response) = pull_pair(&[stored_message(
        false,
        "127.0.0.1:1".parse().unwrap(),
        1,
        2,
        "T",
        &properties(&[("UNIQ_KEY", "KEEP")]),
        &[0; 4000],
    )]);
    let mut decoder = ConnectionDecoder::new(DecoderConfig::default(), false);
    let mut out = Vec::new();
    decoder.data(UP, 0, &request, 0, &mut out);
    // Lose 3000 body bytes in the middle of the message body.
    let body_at = response.len() - 4000 - 2 - 2 - 14 + 100;
    decoder.data(DOWN, 0, &response[..body_at], 0, &mut out);
    decoder.gap(DOWN, body_at as u64, 3000, &mut out);
    decoder.data(
        DOWN,
        body_at as u64 + 3000,
        &response[body_at + 3000..],
        0,
        &mut out,
    );
    assert_eq!(out[1].missing_bytes, 3000);
    assert_eq!(out[1].messages[0].msg_id.as_deref(), Some("KEEP"));
    // The next frame decodes normally.
    decoder.data(UP, request.len() as u64, &request, 0, &mut out);
    assert_eq!(out.len(), 3);
}

#[test]
fn gap_in_a_header_skips_the_frame_by_its_length() {
    let first = request_frame(RequestCode::HeartBeat, 1, &[("x", "y")], b"");
    let second = request_frame(RequestCode::HeartBeat, 2, &[], b"");
    let mut decoder = ConnectionDecoder::new(DecoderConfig::default(), false);
    let mut out = Vec::new();
    decoder.data(UP, 0, &first[..12], 0, &mut out);
    decoder.gap(UP, 12, 5, &mut out);
    decoder.data(UP, 17, &first[17..], 0, &mut out);
    decoder.data(UP, first.len() as u64, &second, 0, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].header.opaque, 2);
    assert_eq!(decoder.counters.frames_lost, 1);
}

#[test]
fn mid_stream_start_resynchronises_on_the_next_frame() {
    let frame = request_frame(RequestCode::PullMessage, 3, &[("topic", "T")], b"");
    let garbage = b"\x00garbage tail of an earlier frame";
    let stream = [&garbage[..], &frame, &frame].concat();
    let mut decoder = ConnectionDecoder::new(DecoderConfig::default(), true);
    let mut out = Vec::new();
    decoder.data(UP, 0, &stream, 0, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(
        decoder.counters.resyncs, 0,
        "a mid-stream start is not a resync"
    );
    assert_eq!(decoder.counters.resync_bytes, garbage.len() as u64);
}

#[test]
fn huge_length_is_refused_and_the_stream_recovers() {
    let mut bad = vec![0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 20];
    bad.extend_from_slice(&request_frame(RequestCode::HeartBeat, 8, &[], b""));
    let (commands, counters) = decode(&[(UP, &bad)]);
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].header.opaque, 8);
    assert_eq!(counters.resyncs, 1);
}

#[test]
fn pop_ack_and_change_invisible_time_from_the_wire_reference() {
    let pop = request_frame(
        RequestCode::PopMessage,
        1,
        &[
            ("consumerGroup", "g"),
            ("topic", "T"),
            ("queueId", "-1"),
            ("maxMsgNums", "32"),
            ("invisibleTime", "60000"),
        ],
        b"",
    );
    let popped = response_frame(
        ResponseCode::Success,
        1,
        &[],
        &stored_message(
            true,
            "127.0.0.1:10911".parse().unwrap(),
            4,
            8,
            "T",
            &properties(&[("UNIQ_KEY", "P")]),
            b"b",
        ),
    );
    let ack = request_frame(
        RequestCode::AckMessage,
        2,
        &[
            ("consumerGroup", "g"),
            ("topic", "T"),
            ("queueId", "1"),
            ("offset", "4"),
            ("extraInfo", "0 1 2"),
        ],
        b"",
    );
    let nack = request_frame(
        RequestCode::ChangeMessageInvisibletime,
        3,
        &[
            ("consumerGroup", "g"),
            ("topic", "T"),
            ("queueId", "1"),
            ("offset", "4"),
            ("invisibleTime", "5000"),
        ],
        b"",
    );
    let (mut commands, _) = decode(&[(UP, &pop), (DOWN, &popped), (UP, &ack), (UP, &nack)]);
    let ops: Vec<_> = commands.iter_mut().map(operation::interpret).collect();
    assert!(matches!(&ops[0], Operation::Pop(p) if p.max_msg_nums == Some(32)));
    assert!(
        matches!(&ops[1], Operation::Pulled(p) if p.messages[0].msg_id.as_deref() == Some("P") && p.messages[0].queue_offset == Some(4))
    );
    assert!(matches!(&ops[2], Operation::Ack(a) if a.offset == Some(4) && a.queue_id == Some(1)));
    assert!(
        matches!(&ops[3], Operation::ChangeInvisibleTime(a) if a.invisible_time_ms == Some(5000))
    );
}

#[test]
fn recognition_by_first_bytes() {
    assert_eq!(
        recognize(&request_frame(
            RequestCode::GetRouteinfoByTopic,
            1,
            &[],
            b""
        )),
        Recognition::Remoting
    );
    assert_eq!(
        recognize(&binary_frame(34, 0, 1, &[], b"")),
        Recognition::Remoting
    );
    assert_eq!(
        recognize(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        Recognition::Http2
    );
    assert_eq!(
        recognize(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        Recognition::Other
    );
    assert_eq!(recognize(b"\x00\x00"), Recognition::NeedMore);
    // A TLS 1.2/1.3 ClientHello record (as `openssl s_client` and the Java clients send it).
    assert_eq!(
        recognize(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        Recognition::Tls
    );
    assert_eq!(recognize(b"\x16\x03\x01"), Recognition::NeedMore);
    // A handshake record that is not a ClientHello, an alert: not taken for TLS to trace.
    assert_eq!(
        recognize(b"\x16\x03\x03\x00\x40\x02\x00\x00\x3c\x03\x03\x00"),
        Recognition::Other
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes, arbitrary splits and gaps: never a panic.
    #[test]
    fn arbitrary_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..4096), cuts in proptest::collection::vec((any::<u16>(), 0u16..64), 0..8), mid in any::<bool>()) {
        let mut decoder = ConnectionDecoder::new(DecoderConfig::default(), mid);
        let mut out = Vec::new();
        let mut at = 0usize;
        let mut position = 0u64;
        for (cut, gap) in cuts {
            let end = (at + cut as usize % 512).min(data.len());
            decoder.data(UP, position, &data[at..end], 0, &mut out);
            position += (end - at) as u64;
            decoder.gap(UP, position, u64::from(gap), &mut out);
            position += u64::from(gap);
            at = end;
        }
        decoder.data(UP, position, &data[at..], 0, &mut out);
        out.iter_mut().for_each(|c| { operation::interpret(c); });
    }

    /// Real frames, mutated: bytes flipped, truncated, garbage prepended; never a panic, and
    /// the untouched frames after the damage still decode.
    #[test]
    fn mutated_frames_never_panic(flips in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..6), cut in any::<u16>(), garbage in proptest::collection::vec(any::<u8>(), 0..32)) {
        let (request, response) = pull_pair(&[stored_message(true, "127.0.0.1:10911".parse().unwrap(), 1, 2, "T", &properties(&[("UNIQ_KEY", "M")]), b"body")]);
        let mut damaged = [garbage, response.clone()].concat();
        for (at, value) in flips {
            let len = damaged.len();
            damaged[at as usize % len] ^= value;
        }
        damaged.truncate(damaged.len() - cut as usize % 16);
        let mut decoder = ConnectionDecoder::new(DecoderConfig::default(), true);
        let mut out = Vec::new();
        decoder.data(UP, 0, &request, 0, &mut out);
        decoder.data(DOWN, 0, &damaged, 0, &mut out);
        out.iter_mut().for_each(|c| { operation::interpret(c); });
    }
}

#[test]
fn wire_times_saturate_instead_of_overflowing() {
    let props = crate::Properties::parse(
        crate::encode::properties(&[("TIMER_DELAY_SEC", &i64::MAX.to_string())]).as_bytes(),
    );
    assert_eq!(props.delivery_time_ms(i64::MAX), Some(i64::MAX));
    let props =
        crate::Properties::parse(crate::encode::properties(&[("TIMER_DELAY_MS", "1")]).as_bytes());
    assert_eq!(props.delivery_time_ms(i64::MAX), Some(i64::MAX));
}

/// A head every 32 bytes, each claiming a 65,000-byte binary header whose outline holds.
fn crafted_heads(count: usize) -> Vec<u8> {
    let mut unit = Vec::new();
    unit.extend_from_slice(&65_100u32.to_be_bytes());
    unit.extend_from_slice(&((1u32 << 24) | 65_000).to_be_bytes());
    unit.extend_from_slice(&[0, 10, 0, 1, 61, 0, 0, 0, 0, 0, 0, 0, 0]);
    unit.extend_from_slice(&0i32.to_be_bytes());
    unit.extend_from_slice(&(65_000i32 - 21).to_be_bytes());
    unit.resize(32, b'k');
    unit.repeat(count)
}

#[test]
fn crafted_heads_cost_bounded_work_and_real_frames_are_found_after_them() {
    let frame = request_frame(RequestCode::PullMessage, 3, &[("topic", "T")], b"");
    let hostile = crafted_heads(64 << 10); // 2 MiB
    // Real traffic goes on after the garbage (a candidate claiming a 65,000-byte header holds
    // the scan until that many bytes have come).
    let after: Vec<u8> = frame.repeat((80 << 10) / frame.len());
    let stream = [&frame[..], &[0xFF; 8], &hostile, &after].concat();
    let mut decoder = ConnectionDecoder::new(DecoderConfig::default(), false);
    let mut out = Vec::new();
    // In pieces, as a live connection arrives; no recursion however many candidates.
    for (i, piece) in stream.chunks(1000).enumerate() {
        decoder.data(UP, (i * 1000) as u64, piece, 0, &mut out);
    }
    let c = &decoder.counters;
    assert!(c.resync_candidates_skipped > 0, "{c:?}");
    assert!(
        c.resync_header_bytes_parsed <= 4 * stream.len() as u64,
        "header parsing is paid for by the bytes seen: {c:?}"
    );
    let found = out.iter().filter(|c| c.header.opaque == 3).count();
    assert!(
        found >= after.len() / frame.len() / 2,
        "the frames after the garbage: {found} {c:?}"
    );
}

#[test]
fn requests_awaiting_responses_beyond_the_bound_go_oldest_first() {
    let mut stream: Vec<(Direction, Vec<u8>)> = (0..=MAX_PENDING as i32)
        .map(|opaque| (UP, request_frame(RequestCode::HeartBeat, opaque, &[], b"")))
        .collect();
    // Answers to the oldest (forgotten) and to the second oldest (kept).
    stream.push((DOWN, response_frame(ResponseCode::Success, 0, &[], b"")));
    stream.push((DOWN, response_frame(ResponseCode::Success, 1, &[], b"")));
    let borrowed: Vec<(Direction, &[u8])> = stream.iter().map(|(d, b)| (*d, &b[..])).collect();
    let (commands, counters) = decode(&borrowed);
    assert_eq!(counters.pending_evicted, 1);
    let answer = |opaque| {
        commands
            .iter()
            .find(|c| c.is_response() && c.header.opaque == opaque)
            .unwrap()
    };
    // The forgotten one's answer is held for a while in case its request comes, then unpaired.
    assert_eq!(answer(0).request_code, None);
    assert_eq!(counters.responses_without_request, 1);
    assert_eq!(answer(1).request_code, Some(RequestCode::from_code(34)));
}

/// Two messages, as the broker stores them.
fn two_stored_messages() -> Vec<Vec<u8>> {
    let host: SocketAddr = "127.0.0.1:10911".parse().unwrap();
    ["A", "B"]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let props = properties(&[("UNIQ_KEY", id)]);
            stored_message(false, host, i as i64, 100, "T", &props, &[1; 64])
        })
        .collect()
}

#[test]
fn a_response_read_before_its_request_is_paired_once_the_request_comes() {
    // A client that writes on one thread and reads on another: the read's record can come
    // out of the kernel before the write's.
    let (pull, pulled) = pull_pair(&two_stored_messages());
    let send = request_frame(RequestCode::SendMessage, 8, &[("topic", "T")], b"body");
    let sent = response_frame(
        ResponseCode::Success,
        8,
        &[("msgId", "X"), ("queueId", "1")],
        b"",
    );
    let (mut commands, counters) =
        decode(&[(DOWN, &pulled), (DOWN, &sent), (UP, &pull), (UP, &send)]);
    let order: Vec<_> = commands
        .iter()
        .map(|c| (c.header.opaque, c.is_response(), c.request_code))
        .collect();
    assert_eq!(
        order,
        [
            (7, false, None),
            (7, true, Some(RequestCode::PullMessage)),
            (8, false, None),
            (8, true, Some(RequestCode::SendMessage)),
        ]
    );
    let Operation::Pulled(p) = operation::interpret(&mut commands[1]) else {
        panic!("{:?}", commands[1])
    };
    let ids: Vec<_> = p.messages.iter().map(|m| m.msg_id.as_deref()).collect();
    assert_eq!(ids, [Some("A"), Some("B")]);
    assert!(matches!(
        operation::interpret(&mut commands[3]),
        Operation::SendResult(_)
    ));
    assert_eq!(
        (
            counters.frames,
            counters.messages,
            counters.responses_before_request,
            counters.responses_without_request,
            counters.malformed_messages
        ),
        (4, 3, 2, 0, 0)
    );
}

#[test]
fn an_early_response_that_holds_no_messages_reports_none() {
    // A route query answered with JSON: walked in case it held messages, it did not.
    let query = request_frame(RequestCode::GetRouteinfoByTopic, 9, &[("topic", "T")], b"");
    let route = response_frame(
        ResponseCode::Success,
        9,
        &[],
        br#"{"queueDatas":[],"brokerDatas":[]}"#,
    );
    let (commands, counters) = decode(&[(DOWN, &route), (UP, &query)]);
    assert_eq!(
        commands[1].request_code,
        Some(RequestCode::GetRouteinfoByTopic)
    );
    assert!(commands[1].messages.is_empty());
    assert_eq!((counters.messages, counters.malformed_messages), (0, 0));
}

#[test]
fn a_response_whose_request_never_comes_goes_unpaired_after_a_second_or_at_the_bound() {
    let (_, pulled) = pull_pair(&two_stored_messages());
    let heartbeat = request_frame(RequestCode::HeartBeat, 100, &[], b"{}");
    // Held a second, then handed over unpaired by the next record after that.
    for (later, held) in [(EARLY_WAIT_NS, true), (EARLY_WAIT_NS + 1, false)] {
        let mut decoder = ConnectionDecoder::new(DecoderConfig::default(), false);
        let mut out = Vec::new();
        decoder.data(DOWN, 0, &pulled, 1_000, &mut out);
        decoder.data(UP, 0, &heartbeat, 1_000 + later, &mut out);
        let handed: Vec<_> = out
            .iter()
            .map(|c| (c.is_response(), c.request_code, c.messages.len()))
            .collect();
        if held {
            assert_eq!(handed, [(false, None, 0)], "held at {later} ns");
        } else {
            assert_eq!(handed, [(false, None, 0), (true, None, 0)]);
        }
        assert_eq!(decoder.counters.responses_without_request, u64::from(!held));
        decoder.release(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(decoder.counters.responses_without_request, 1);
    }
    // Past the most held, the oldest goes first, as soon as the next comes.
    let mut decoder = ConnectionDecoder::new(DecoderConfig::default(), false);
    let mut out = Vec::new();
    let mut position = 0;
    for opaque in 0..=MAX_EARLY as i32 {
        let bytes = response_frame(ResponseCode::Success, opaque, &[], b"");
        decoder.data(DOWN, position, &bytes, 1, &mut out);
        position += bytes.len() as u64;
    }
    let handed: Vec<_> = out.iter().map(|c| c.header.opaque).collect();
    assert_eq!(handed, [0]);
    assert_eq!(decoder.counters.responses_without_request, 1);
}

#[test]
fn malformed_and_dropped_messages_of_a_body_are_counted() {
    let mut messages = two_stored_messages();
    // The second message's magic code is not one a broker writes.
    messages[1][4..8].copy_from_slice(&0x1234_5678_i32.to_be_bytes());
    let (pull, pulled) = pull_pair(&messages);
    let (commands, counters) = decode(&[(UP, &pull), (DOWN, &pulled)]);
    assert_eq!(commands[1].messages.len(), 2);
    assert!(commands[1].messages[1].incomplete);
    assert_eq!(counters.malformed_messages, 1);
}
