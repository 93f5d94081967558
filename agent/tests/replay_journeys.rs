//! "Where is my message?" on real captures: the journal behind `mqtrace trace` and
//! `mqtrace replay --msg-id/--key/--topic`, its listing, look-ups and words, and what replay
//! writes and counts. The Java client's captures (tests/captures/java) where they show the
//! behaviour; our golden captures of the Rust client (tests/captures/rust-client) for what the
//! Java ones do not hold: redeliveries, offset commits, many messages seen at one time.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::{Command, Output as ProcessOutput},
};

use mqtrace::{
    decoder::{DecoderConfig, operation::Operation},
    journeys::{Journey, Query},
    pipeline::{Output, Pipeline, replay_capture},
    spans::{Span, Status, Value},
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn java(name: &str) -> PathBuf {
    repo().join("tests/captures/java").join(name)
}

fn rust_client(name: &str) -> PathBuf {
    repo().join("tests/captures/rust-client").join(name)
}

fn java_captures() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/captures/java"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "{files:?}");
    files
}

/// The spans of a capture, and the finished pipeline (its counters and journal).
fn replay(path: &Path) -> (Vec<Span>, Pipeline) {
    let mut spans = Vec::new();
    let (_, pipeline) = replay_capture(path, DecoderConfig::default(), false, |output| {
        if let Output::Span(span) = output {
            spans.push(*span);
        }
    })
    .unwrap();
    (spans, pipeline)
}

fn all(pipeline: &Pipeline) -> Vec<Journey> {
    pipeline.journal().unwrap().query(&Query::default())
}

fn by_id(pipeline: &Pipeline, id: &str) -> Vec<Journey> {
    pipeline.journal().unwrap().query(&Query {
        msg_id: Some(id.into()),
        ..Query::default()
    })
}

fn message_id(span: &Span) -> String {
    match span.attributes.get("messaging.message.id") {
        Some(Value::String(id)) => id.to_string(),
        other => panic!("{other:?}"),
    }
}

fn mqtrace(args: &[&str], capture: &Path) -> ProcessOutput {
    let out = Command::new(env!("CARGO_BIN_EXE_mqtrace"))
        .args(args)
        .arg(capture)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mqtrace {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &ProcessOutput) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn last_seen(j: &Journey) -> u64 {
    j.steps.iter().map(|s| s.end_unix_ns).max().unwrap()
}

fn first_seen(j: &Journey) -> u64 {
    j.steps.iter().map(|s| s.at_unix_ns).min().unwrap()
}

#[test]
fn a_listing_is_in_one_order_every_time_ties_broken_by_first_sight_then_id() {
    let capture = rust_client("roundtrip.pcap");
    let topic = Query {
        topic: Some("GoldenTrip".into()),
        ..Query::default()
    };
    let listing = || -> Vec<Journey> { replay(&capture).1.journal().unwrap().query(&topic) };
    let journeys = listing();
    assert_eq!(journeys.len(), 10);
    // The offset commits settle several messages at one time: ties in the last sighting.
    let mut ties = 0;
    for pair in journeys.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let key = |j: &Journey| (last_seen(j), first_seen(j));
        assert!(
            key(a) > key(b) || (key(a) == key(b) && a.message_id < b.message_id),
            "{} before {}",
            a.message_id,
            b.message_id
        );
        ties += usize::from(last_seen(a) == last_seen(b));
    }
    assert!(ties >= 3, "the capture has messages last seen together");
    let ids =
        |js: &[Journey]| -> Vec<String> { js.iter().map(|j| j.message_id.to_string()).collect() };
    // Each pipeline's journal hashes its messages otherwise: the same list all the same.
    for _ in 0..5 {
        assert_eq!(ids(&listing()), ids(&journeys));
    }
    let first = stdout(&mqtrace(&["replay", "--topic", "GoldenTrip"], &capture));
    for _ in 0..3 {
        assert_eq!(
            stdout(&mqtrace(&["replay", "--topic", "GoldenTrip"], &capture)),
            first
        );
    }
}

#[test]
fn a_redelivery_is_listed_after_the_send_back_that_caused_it() {
    let capture = rust_client("pull-32.pcap");
    let (_, pipeline) = replay(&capture);
    let redelivered: Vec<Journey> = all(&pipeline)
        .into_iter()
        .filter(|j| j.steps.iter().any(|s| s.reconsume_times == Some(1)))
        .collect();
    assert_eq!(
        redelivered.len(),
        1,
        "one message redelivered in this capture"
    );
    let journey = &redelivered[0];
    let actions: Vec<(&str, Option<&str>)> = journey
        .steps
        .iter()
        .map(|s| (s.action.as_ref(), s.topic.as_deref()))
        .collect();
    let retry = Some("%RETRY%golden_consumer");
    assert_eq!(
        actions,
        [
            ("receive", Some("GoldenPull")),
            ("settle send_back", Some("GoldenPull")),
            ("settle commit_offset", Some("GoldenPull")),
            ("receive", retry),
            ("settle commit_offset", retry)
        ]
    );
    // The redelivery's long poll began before the send-back: its start is not when it
    // happened.
    let send_back = &journey.steps[1];
    let redelivery = &journey.steps[3];
    assert!(redelivery.start_unix_ns < send_back.start_unix_ns);
    assert_eq!(redelivery.at_unix_ns, redelivery.end_unix_ns);
    // The timeline shows its steps in that order, at those times.
    let text = stdout(&mqtrace(
        &["replay", "--msg-id", &journey.message_id],
        &capture,
    ));
    let steps: Vec<&str> = text.lines().filter(|l| l.starts_with("  ")).collect();
    let times: Vec<&str> = steps.iter().map(|l| &l[2..26]).collect();
    assert_eq!(times.len(), 5, "{text}");
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{text}");
    assert!(
        steps[3].contains("  receive  ") && steps[3].contains("reconsume 1"),
        "{text}"
    );
}

#[test]
fn every_step_of_every_capture_is_in_the_order_it_happened() {
    let mut captures = java_captures();
    captures.extend(["roundtrip.pcap", "pull-32.pcap"].map(rust_client));
    let mut checked = 0;
    for capture in captures {
        let (_, pipeline) = replay(&capture);
        for journey in all(&pipeline) {
            let at: Vec<u64> = journey.steps.iter().map(|s| s.at_unix_ns).collect();
            assert!(at.windows(2).all(|w| w[0] <= w[1]), "{journey:?}");
            // A receive after the send, a settlement after the receive.
            let position = |action: &str| journey.steps.iter().position(|s| s.action == action);
            if let (Some(send), Some(receive)) = (position("send"), position("receive")) {
                assert!(send < receive, "{}: {journey:?}", capture.display());
                checked += 1;
            }
            for (i, step) in journey.steps.iter().enumerate() {
                if step.action.starts_with("settle") {
                    assert!(position("receive").is_some_and(|r| r < i), "{journey:?}");
                }
            }
        }
    }
    assert!(checked >= 10, "{checked} messages sent and received");
}

#[test]
fn a_message_is_found_by_a_lower_case_id_by_its_retry_copy_and_by_its_retry_topic() {
    // Java: every message by its IDs in lower case, through the library and the CLI.
    let capture = java("rocketmq-pull-message.pcap");
    let (_, pipeline) = replay(&capture);
    let journeys = all(&pipeline);
    assert_eq!(journeys.len(), 2);
    for journey in &journeys {
        let offset_id = journey
            .offset_msg_id
            .clone()
            .expect("pulled: an offsetMsgId");
        for id in [journey.message_id.as_ref(), offset_id.as_str()] {
            let found = by_id(&pipeline, &id.to_lowercase());
            assert_eq!(found.len(), 1, "{id}");
            assert_eq!(found[0].message_id, journey.message_id);
        }
        let text = stdout(&mqtrace(
            &["replay", "--msg-id", &offset_id.to_lowercase()],
            &capture,
        ));
        assert!(
            text.starts_with(&format!("message {}  ", journey.message_id)),
            "{text}"
        );
    }

    // Rust client: the redelivered copy, stored anew in the retry topic, has an offsetMsgId of
    // its own (as the consumer sees it in the pulled message).
    let capture = rust_client("pull-32.pcap");
    let mut copies = Vec::new();
    replay_capture(&capture, DecoderConfig::default(), true, |output| {
        if let Output::Command(c) = output
            && let Operation::Pulled(pulled) = &c.operation
        {
            copies.extend(
                pulled
                    .messages
                    .iter()
                    .filter(|m| m.topic.as_deref() == Some("%RETRY%golden_consumer"))
                    .map(|m| (m.msg_id.clone().unwrap(), m.offset_msg_id.clone().unwrap())),
            );
        }
    })
    .unwrap();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let (uniq_key, copy_id) = &copies[0];
    let (_, pipeline) = replay(&capture);
    let found = by_id(&pipeline, copy_id);
    assert_eq!(
        found.len(),
        1,
        "the copy's offsetMsgId {copy_id} finds its message"
    );
    assert_eq!(found[0].message_id.as_ref(), uniq_key.as_str());
    assert_ne!(
        found[0].offset_msg_id.as_ref(),
        Some(copy_id),
        "the original's own"
    );
    assert_eq!(by_id(&pipeline, &copy_id.to_lowercase()).len(), 1);
    let text = stdout(&mqtrace(&["replay", "--msg-id", copy_id], &capture));
    assert!(text.contains(&format!("offsetMsgId {copy_id}")), "{text}");

    // The retry topic finds exactly the messages that went through it.
    let retried = pipeline.journal().unwrap().query(&Query {
        topic: Some("%RETRY%golden_consumer".into()),
        ..Query::default()
    });
    let ids: Vec<&str> = retried.iter().map(|j| j.message_id.as_ref()).collect();
    assert_eq!(ids, [uniq_key.as_str()]);
    assert_eq!(retried[0].topic.as_deref(), Some("GoldenPull"));
    let text = stdout(&mqtrace(
        &["replay", "--topic", "%RETRY%golden_consumer"],
        &capture,
    ));
    assert_eq!(text.matches("\nmessage ").count() + 1, 1, "{text}");
    assert!(text.starts_with(&format!("message {uniq_key}")), "{text}");
}

#[test]
fn every_journey_names_the_trace_its_spans_carry() {
    let mut checked = 0;
    for capture in java_captures() {
        let (spans, pipeline) = replay(&capture);
        let mut traces: HashMap<String, BTreeSet<String>> = HashMap::new();
        for span in &spans {
            traces
                .entry(message_id(span))
                .or_default()
                .insert(span.trace_id.hex());
        }
        for journey in all(&pipeline) {
            assert_eq!(
                traces[journey.message_id.as_ref()],
                BTreeSet::from([journey.trace_id.hex()]),
                "{}",
                capture.display()
            );
            let text = stdout(&mqtrace(
                &["replay", "--msg-id", &journey.message_id],
                &capture,
            ));
            let header = text.lines().next().unwrap();
            assert!(
                header.ends_with(&format!("  trace {}", journey.trace_id)),
                "{text}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} Java messages");
}

#[test]
fn replay_output_gets_the_spans_of_the_selected_messages_and_limit_limits() {
    let dir = std::env::temp_dir();
    let file = dir.join(format!("mqtrace-selected-{}.jsonl", std::process::id()));
    let file_arg = file.to_str().unwrap();
    let written = |args: &[&str], capture: &Path| -> (String, Vec<serde_json::Value>) {
        let out = mqtrace(args, capture);
        let spans = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        std::fs::remove_file(&file).unwrap();
        (stdout(&out), spans)
    };
    let ids_of = |spans: &[serde_json::Value]| -> BTreeSet<String> {
        spans
            .iter()
            .map(|s| {
                s["attributes"]["messaging.message.id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };

    // A filter: the timeline on the terminal, that message's spans in the file.
    let capture = rust_client("roundtrip.pcap");
    let (spans, pipeline) = replay(&capture);
    let key3 = pipeline.journal().unwrap().query(&Query {
        key: Some("key-3".into()),
        ..Query::default()
    });
    let id3 = key3[0].message_id.to_string();
    let (text, selected) = written(
        &["replay", "--key", "key-3", "--output", file_arg],
        &capture,
    );
    assert!(text.starts_with(&format!("message {id3}  ")), "{text}");
    assert_eq!(ids_of(&selected), BTreeSet::from([id3.clone()]));
    let expected = spans.iter().filter(|s| message_id(s) == id3).count();
    assert_eq!(selected.len(), expected);
    assert_eq!(expected, 3, "send, receive, commit");

    // --limit without a filter: the spans of the N most recent messages only, on the terminal
    // or in the file.
    let recent: BTreeSet<String> = pipeline
        .journal()
        .unwrap()
        .query(&Query {
            limit: 2,
            ..Query::default()
        })
        .into_iter()
        .map(|j| j.message_id.to_string())
        .collect();
    let text = stdout(&mqtrace(&["replay", "--limit", "2"], &capture));
    let printed: BTreeSet<String> = text
        .lines()
        .map(|l| {
            l.split(" msg ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(printed, recent);
    assert_eq!(text.lines().count(), 6, "{text}");
    let (_, limited) = written(&["replay", "--limit", "2", "--output", file_arg], &capture);
    assert_eq!(ids_of(&limited), recent);
    assert_eq!(limited.len(), 6);

    // The same on a Java capture: two sends, one kept.
    let capture = java("rocketmq-send-message-v2.pcap");
    let text = stdout(&mqtrace(&["replay", "--limit", "1"], &capture));
    assert_eq!(text.lines().count(), 1, "{text}");
    let text = stdout(&mqtrace(&["replay"], &capture));
    assert_eq!(text.lines().count(), 2, "{text}");
}

#[test]
fn one_word_for_each_status_and_for_the_offset_commit_wherever_shown() {
    let capture = rust_client("roundtrip.pcap");
    let (spans, pipeline) = replay(&capture);
    assert!(spans.iter().all(|s| s.status == Status::Unset));
    // Terminal span lines.
    let lines = stdout(&mqtrace(&["replay"], &capture));
    assert_eq!(lines.matches(" UNSET [").count(), spans.len(), "{lines}");
    // Timelines: the span's status, the span's operation.
    let timelines = stdout(&mqtrace(&["replay", "--topic", "GoldenTrip"], &capture));
    assert_eq!(timelines.matches("ms  UNSET\n").count(), spans.len());
    for text in [&lines, &timelines] {
        for old in ["Unset", "  ok", "offset_committed"] {
            assert!(!text.contains(old), "{old}: {text}");
        }
    }
    // JSON: the journal's steps and the spans.
    let journeys = serde_json::to_value(all(&pipeline)).unwrap();
    for step in journeys
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|j| j["steps"].as_array().unwrap())
    {
        assert_eq!(step["status"], "UNSET");
    }
    assert_eq!(serde_json::to_value(&spans[0]).unwrap()["status"], "UNSET");
    // Each settle step is named by its span's operation.
    for journey in all(&pipeline) {
        let settled: BTreeSet<String> = journey
            .steps
            .iter()
            .filter_map(|s| s.action.strip_prefix("settle ").map(String::from))
            .collect();
        let span_operations: BTreeSet<String> = spans
            .iter()
            .filter(|s| *message_id(s) == *journey.message_id)
            .map(|s| s.name.split(' ').next().unwrap().to_string())
            .filter(|op| op != "send" && op != "receive")
            .collect();
        assert_eq!(settled, span_operations);
        assert_eq!(settled, BTreeSet::from(["commit_offset".to_string()]));
    }
}

/// The counters of `mqtrace replay`'s last line.
fn replay_counters(args: &[&str], capture: &Path) -> serde_json::Value {
    let out = mqtrace(args, capture);
    let stderr = String::from_utf8(out.stderr).unwrap();
    let line = stderr.lines().last().unwrap();
    let parts: Vec<&str> = line.split(" | ").collect();
    assert_eq!(parts.len(), 3, "{line}");
    let mut counters: serde_json::Value = serde_json::from_str(parts[1]).unwrap();
    counters["output"] = serde_json::from_str(parts[2].strip_prefix("output ").unwrap()).unwrap();
    counters
}

#[test]
fn replay_says_where_its_spans_went_each_destination_on_its_own() {
    let capture = rust_client("roundtrip.pcap");
    let counters = replay_counters(&["replay"], &capture);
    assert_eq!(counters["spans"], 30);
    assert_eq!(counters["output"]["spans_printed"], 30);
    assert_eq!(counters["output"]["spans_written"], 0);
    let file = std::env::temp_dir().join(format!("mqtrace-dest-{}.jsonl", std::process::id()));
    let file_arg = file.to_str().unwrap();
    let counters = replay_counters(&["replay", "--limit", "1", "--output", file_arg], &capture);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(counters["output"]["spans_printed"], 0);
    assert_eq!(counters["output"]["spans_written"], 3);
}
