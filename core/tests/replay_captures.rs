//! `mqtrace replay`'s pipeline over real captures: the Java client's (tests/captures/java, from
//! DeepFlow's public test data) and our own golden captures of the Rust client
//! (tests/captures/rust-client).

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use mqtrace_core::{
    decoder::{
        DecodedCommand, DecoderConfig, MessageMeta, SerializeType, Wire,
        operation::{Operation, SendResult},
    },
    pipeline::decode_capture,
};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn java_captures() -> Vec<PathBuf> {
    let dir = repo().join("tests/captures/java");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the Java captures must be at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "expected the 8 Java captures, found {files:?}"
    );
    files
}

fn decode(path: &Path) -> Vec<DecodedCommand> {
    let mut commands = Vec::new();
    decode_capture(path, DecoderConfig::default(), |c| commands.push(c.clone())).unwrap();
    commands
}

/// Every message the decoder reported, from sends and from pull/pop responses.
fn messages(commands: &[DecodedCommand]) -> Vec<MessageMeta> {
    commands
        .iter()
        .flat_map(|c| match &c.operation {
            Operation::Send(send) => send.messages.clone(),
            Operation::Pulled(pulled) => pulled.messages.clone(),
            _ => Vec::new(),
        })
        .collect()
}

/// UNIQ_KEY values found in the raw file bytes: in binary properties (`\x01`) and in JSON
/// headers, where the separator is escaped as `\u0001`. Independent of the decoder.
fn uniq_keys_in_file(path: &Path) -> BTreeSet<String> {
    let bytes = std::fs::read(path).unwrap();
    let mut keys = BTreeSet::new();
    for separator in [&b"UNIQ_KEY\x01"[..], &b"UNIQ_KEY\\u0001"[..]] {
        for start in bytes
            .windows(separator.len())
            .enumerate()
            .filter(|(_, w)| *w == separator)
            .map(|(i, _)| i + separator.len())
        {
            let id: String = bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_hexdigit())
                .map(|&b| b as char)
                .collect();
            if id.len() >= 32 {
                keys.insert(id);
            }
        }
    }
    keys
}

#[test]
fn java_captures_every_uniq_key_is_reported() {
    let mut total = 0;
    for path in java_captures() {
        let commands = decode(&path);
        assert!(
            !commands.is_empty(),
            "{} decoded to nothing",
            path.display()
        );
        let reported: BTreeSet<String> = messages(&commands)
            .into_iter()
            .filter_map(|m| m.msg_id)
            .collect();
        let in_file = uniq_keys_in_file(&path);
        let missing: Vec<_> = in_file.difference(&reported).collect();
        assert!(
            missing.is_empty(),
            "{}: UNIQ_KEYs in the file but not reported: {missing:?}",
            path.display()
        );
        total += in_file.len();
    }
    assert!(
        total >= 8,
        "the Java captures hold send and pull traffic with UNIQ_KEYs; found {total}"
    );
}

#[test]
fn java_send_v2_and_pull_fields() {
    let dir = repo().join("tests/captures/java");
    let sends = decode(&dir.join("rocketmq-send-message-v2.pcap"));
    let send = sends.iter().find_map(|c| match &c.operation {
        Operation::Send(s) => Some(s.clone()),
        _ => None,
    });
    let send = send.expect("a SEND_MESSAGE_V2");
    assert!(send.producer_group.is_some() && send.topic.is_some());
    assert!(send.messages[0].msg_id.is_some());
    let results = sends
        .iter()
        .filter(
            |c| matches!(&c.operation, Operation::SendResult(r) if !r.offset_msg_ids.is_empty()),
        )
        .count();
    assert_eq!(
        results, 2,
        "both send responses carry the broker's offsetMsgId"
    );

    let pulls = decode(&dir.join("rocketmq-pull-message.pcap"));
    let pulled = messages(&pulls);
    assert!(!pulled.is_empty(), "FOUND responses carry messages");
    for m in &pulled {
        assert!(
            m.topic.is_some()
                && m.queue_id.is_some()
                && m.queue_offset.is_some()
                && m.offset_msg_id.is_some(),
            "{m:?}"
        );
        assert!(!m.incomplete);
    }
}

#[test]
fn java_heartbeat_names_client_and_groups() {
    let commands = decode(&repo().join("tests/captures/java/rocketmq-heartbeat.pcap"));
    let Operation::Heartbeat(heartbeat) = &commands[0].operation else {
        panic!("{:?}", commands[0].operation)
    };
    assert_eq!(heartbeat.client_id.as_deref(), Some("192.169.0.5@8"));
    assert_eq!(heartbeat.producer_groups, vec!["CLIENT_INNER_PRODUCER"]);
    assert_eq!(
        heartbeat.consumer_groups,
        vec!["please_rename_unique_group_name_4"]
    );
}

fn lines(name: &str) -> Vec<Value> {
    let path = repo().join("tests/captures/rust-client").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn golden(name: &str) -> Vec<DecodedCommand> {
    decode(&repo().join("tests/captures/rust-client").join(name))
}

/// A message as its send request carried it, with the result that answered the request.
struct Sent {
    meta: MessageMeta,
    /// Position in its batch (0 for a single send).
    index: usize,
    result: SendResult,
}

/// Every sent message by its UNIQ_KEY.
fn sends_with_results(commands: &[DecodedCommand]) -> HashMap<String, Sent> {
    let mut results = HashMap::new();
    for c in commands {
        if let Operation::SendResult(r) = &c.operation {
            results.insert((c.connection, c.command.header.opaque), r.clone());
        }
    }
    let mut out = HashMap::new();
    for c in commands {
        if let Operation::Send(send) = &c.operation {
            let result = results
                .get(&(c.connection, c.command.header.opaque))
                .expect("every send was answered");
            for (index, meta) in send.messages.iter().enumerate() {
                let id = meta.msg_id.clone().expect("the Rust client sets UNIQ_KEY");
                out.insert(
                    id,
                    Sent {
                        meta: meta.clone(),
                        index,
                        result: result.clone(),
                    },
                );
            }
        }
    }
    out
}

fn check_sends(capture: &str, client_output: &str, topic: &str, tag: &str) {
    let sent = sends_with_results(&golden(capture));
    let expected = lines(client_output);
    assert_eq!(
        sent.len(),
        expected.len(),
        "every message sent is found once"
    );
    for line in expected {
        let id = line["msg_id"].as_str().unwrap();
        let Sent {
            meta: m,
            index,
            result,
        } = sent.get(id).unwrap_or_else(|| panic!("{id} not found"));
        let (queue_offset, offset_ids, result_queue) =
            (result.queue_offset, &result.offset_msg_ids, result.queue_id);
        assert_eq!(m.topic.as_deref(), Some(topic));
        assert_eq!(m.tags(), Some(tag));
        assert_eq!(m.keys(), vec![line["key"].as_str().unwrap()]);
        assert_eq!(
            i64::from(m.queue_id.unwrap()),
            line["queue_id"].as_i64().unwrap(),
            "{id} queue"
        );
        assert_eq!(
            result_queue.map(i64::from),
            line["queue_id"].as_i64(),
            "{id} result queue"
        );
        assert_eq!(
            queue_offset.unwrap() + *index as i64,
            line["queue_offset"].as_i64().unwrap(),
            "{id} offset"
        );
        if let Some(offset_id) = line["offset_msg_id"].as_str() {
            assert_eq!(offset_ids, &vec![offset_id.to_string()]);
        } else {
            assert_eq!(
                offset_ids.len(),
                10,
                "a batch result lists every offsetMsgId"
            );
        }
        assert!(!m.incomplete);
    }
}

#[test]
fn rust_client_single_sends() {
    check_sends(
        "send-single.pcap",
        "send-single.jsonl",
        "GoldenSingle",
        "TagA",
    );
}

#[test]
fn rust_client_binary_header_sends() {
    check_sends(
        "send-binary.pcap",
        "send-binary.jsonl",
        "GoldenBinary",
        "TagD",
    );
    let commands = golden("send-binary.pcap");
    let sends: Vec<_> = commands
        .iter()
        .filter(|c| matches!(c.operation, Operation::Send(_)))
        .collect();
    assert!(
        sends
            .iter()
            .all(|c| c.command.wire == Wire::Remoting(SerializeType::Rocketmq)),
        "requests in ROCKETMQ binary"
    );
    assert!(
        commands
            .iter()
            .any(|c| c.command.is_response()
                && c.command.wire == Wire::Remoting(SerializeType::Json)),
        "answers in JSON"
    );
}

#[test]
fn rust_client_batch_sends() {
    check_sends("send-batch.pcap", "send-batch.jsonl", "GoldenBatch", "TagB");
}

#[test]
fn rust_client_pull_finds_every_message_with_its_ids() {
    let pulled = messages(&golden("pull-32.pcap"));
    for line in lines("pull-produced.jsonl") {
        let id = line["msg_id"].as_str().unwrap();
        let m = pulled
            .iter()
            .find(|m| m.msg_id.as_deref() == Some(id) && m.topic.as_deref() == Some("GoldenPull"))
            .unwrap_or_else(|| panic!("{id} not pulled"));
        assert_eq!(
            m.offset_msg_id.as_deref(),
            line["offset_msg_id"].as_str(),
            "{id}: offsetMsgId from store host and physical offset"
        );
        assert_eq!(m.queue_id.map(i64::from), line["queue_id"].as_i64());
        assert_eq!(m.queue_offset, line["queue_offset"].as_i64());
        assert_eq!(m.tags(), Some("TagC"));
        assert_eq!(m.keys(), vec![line["key"].as_str().unwrap()]);
        assert_eq!(m.body_len, 1024);
    }
    // What the consumer itself reported (by offsetMsgId) was all seen too.
    for line in lines("pull-32.jsonl") {
        let offset_id = line["msg_id"].as_str().unwrap();
        assert!(
            pulled
                .iter()
                .any(|m| m.offset_msg_id.as_deref() == Some(offset_id)),
            "{offset_id}"
        );
    }
    // The redelivery of key-4 through the retry topic keeps its UNIQ_KEY and says where from.
    let retry = pulled
        .iter()
        .find(|m| m.topic.as_deref() == Some("%RETRY%golden_consumer"))
        .expect("the retry");
    assert_eq!(retry.reconsume_times, Some(1));
    assert_eq!(retry.properties.retry_topic(), Some("GoldenPull"));
    assert!(retry.properties.origin_message_id().is_some());
}

#[test]
fn counters_count_the_messages_of_sends_and_do_not_take_a_stopping_consumer_for_errors() {
    let java = repo().join("tests/captures/java");
    let rust = repo().join("tests/captures/rust-client");
    // Messages decoded: one per single send (Java SEND_MESSAGE_V2, the Rust client's
    // SEND_MESSAGE in JSON and binary headers), each of a batch, each pulled.
    for (path, expected) in [
        (java.join("rocketmq-send-message-v2.pcap"), 2),
        (java.join("rocketmq-producer-skywalking.pcap"), 3),
        (java.join("rocketmq-pull-message.pcap"), 2),
        (rust.join("send-single.pcap"), 20),
        (rust.join("send-binary.pcap"), 10),
        (rust.join("send-batch.pcap"), 30),
    ] {
        let counters = decode_capture(&path, DecoderConfig::default(), |_| {}).unwrap();
        assert_eq!(counters.decoder.messages, expected, "{}", path.display());
        assert_eq!(messages(&decode(&path)).len() as u64, expected);
    }
    // The consumer stopped with five long polls waiting: no timeouts, no unanswered requests.
    for name in ["pull-32.pcap", "roundtrip.pcap"] {
        let counters = decode_capture(&rust.join(name), DecoderConfig::default(), |_| {}).unwrap();
        let c = &counters.correlation;
        assert_eq!(c.long_polls_closed, 5, "{name}: {c:?}");
        assert_eq!((c.closed_unanswered, c.timeouts), (0, 0), "{name}: {c:?}");
    }
}

fn grpc_golden(name: &str) -> Vec<DecodedCommand> {
    decode(&repo().join("tests/captures/rust5-client").join(name))
}

/// Apache's Rust 5.x client's sends through the proxy: every message the client was told about,
/// with its keys and tag, each answered OK.
#[test]
fn rust_5x_client_grpc_sends() {
    let commands = grpc_golden("send-10.pcap");
    assert!(commands.iter().all(|c| c.command.wire == Wire::Grpc));
    let path = repo().join("tests/captures/rust5-client/send-10.jsonl");
    let told: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(told.len(), 10);
    let sent: HashMap<String, MessageMeta> = messages(&commands)
        .into_iter()
        .map(|m| (m.msg_id.clone().unwrap(), m))
        .collect();
    for line in &told {
        let id = line["message_id"].as_str().unwrap();
        let message = sent.get(id).unwrap_or_else(|| panic!("{id} not decoded"));
        assert_eq!(message.keys(), [line["key"].as_str().unwrap()]);
        assert_eq!(message.tags(), Some("TagG"));
        assert_eq!(message.topic.as_deref(), Some("GoldenGrpc"));
        assert_eq!(message.properties.uniq_key(), Some(id));
        assert!(message.born_timestamp_ms.is_some());
    }
    let answered: Vec<&DecodedCommand> = commands
        .iter()
        .filter(|c| matches!(c.operation, Operation::SendResult(_)))
        .collect();
    assert_eq!(answered.len(), 10);
    for answer in answered {
        assert_eq!(answer.command.header.code, 20000, "OK");
        assert_eq!(answer.command.header.language, "RUST");
    }
    // The request names its client as the 5.x clients do, in every call's headers.
    let send = commands
        .iter()
        .find(|c| matches!(c.operation, Operation::Send(_)))
        .unwrap();
    assert_eq!(
        send.command.client_version(&mut itoa::Buffer::new()),
        "5.0.0"
    );
    assert!(send.command.client_id().is_some_and(|id| id.contains('@')));
    assert_eq!(
        send.command.rpc().map(|rpc| rpc.method),
        Some("SendMessage")
    );
}

/// The simple consumer's receives and acks: every message received is acked by its id.
#[test]
fn rust_5x_client_grpc_receives_and_acks() {
    let commands = grpc_golden("receive-ack.pcap");
    let received: BTreeSet<String> = commands
        .iter()
        .filter_map(|c| match &c.operation {
            Operation::Pulled(pulled) => Some(pulled.messages.iter()),
            _ => None,
        })
        .flatten()
        .map(|m| {
            assert!(m.keys().iter().all(|k| k.starts_with("key-")), "{m:?}");
            assert_eq!(m.reconsume_times, Some(0));
            assert!(m.queue_offset.is_some() && m.store_timestamp_ms.is_some());
            m.msg_id.clone().unwrap()
        })
        .collect();
    let acked: BTreeSet<String> = commands
        .iter()
        .filter_map(|c| match &c.operation {
            Operation::Ack(ack) => Some(ack.message_ids.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(received.len(), 21);
    assert_eq!(acked, received);
    // The receives that found an empty queue failed in the proxy: errors, not messages.
    let failed = commands
        .iter()
        .filter(|c| {
            c.command.is_response()
                && c.command.request_code == Some(mqtrace_core::decoder::RequestCode::PopMessage)
                && c.command.header.code != 20000
        })
        .count();
    assert!(failed > 0);
}
