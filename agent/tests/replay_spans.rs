//! Spans from real captures through `mqtrace replay`.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Command,
};

use mqtrace::{
    correlation::Unseen,
    decoder::{DecoderConfig, operation::Operation},
    journeys::Query,
    pipeline::{Output, Pipeline, replay_capture},
    sources::{Direction, SourceEvent, pcap},
    spans::{
        Span, SpanKind, Value,
        identity::{SpanId, TraceId},
        resource::CaptureResources,
    },
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Spans, and the message IDs the decoder saw sent and received, of one capture.
fn replay(path: &Path) -> (Vec<Span>, BTreeSet<String>, BTreeSet<String>) {
    let (mut spans, mut sent, mut received) = (Vec::new(), BTreeSet::new(), BTreeSet::new());
    replay_capture(
        path,
        DecoderConfig::default(),
        true,
        |output| match output {
            Output::Span(span) => spans.push(*span),
            Output::Command(c) => match &c.operation {
                Operation::Send(s) => {
                    sent.extend(s.messages.iter().filter_map(|m| m.msg_id.clone()))
                }
                Operation::Pulled(p) => {
                    received.extend(p.messages.iter().filter_map(|m| m.msg_id.clone()))
                }
                _ => {}
            },
            Output::Event(..) => unreachable!("a replay makes its spans inline"),
        },
    )
    .unwrap();
    (spans, sent, received)
}

fn string(span: &Span, key: &str) -> Option<String> {
    match span.attributes.get(key) {
        Some(Value::String(s)) => Some(s.to_string()),
        Some(Value::Int(i)) => Some(i.to_string()),
        _ => None,
    }
}

#[test]
fn java_captures_every_message_gets_its_span() {
    let dir = repo().join("tests/captures/java");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/captures/java") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "pcap") {
            continue; // the note beside them
        }
        let (spans, sent, received) = replay(&path);
        for (ids, kind) in [(&sent, SpanKind::Producer), (&received, SpanKind::Client)] {
            for id in ids {
                let span = spans
                    .iter()
                    .find(|s| {
                        s.kind == kind
                            && string(s, "messaging.message.id").as_deref() == Some(id.as_str())
                    })
                    .unwrap_or_else(|| panic!("{}: no {kind:?} span for {id}", path.display()));
                assert_eq!(span.trace_id, TraceId::for_message(id));
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 10,
        "the Java captures hold at least 10 sent or pulled messages; checked {checked}"
    );
}

/// What the producer of the golden roundtrip capture reported, one object per message.
fn roundtrip_produced(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("roundtrip.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("key").is_some())
        .collect()
}

#[test]
fn real_client_roundtrip_joins_send_receive_and_commit_in_one_trace() {
    let dir = repo().join("tests/captures/rust-client");
    let (spans, _, _) = replay(&dir.join("roundtrip.pcap"));
    let produced = roundtrip_produced(&dir);
    assert_eq!(produced.len(), 10);
    let mut by_trace: HashMap<_, Vec<&Span>> = HashMap::new();
    for span in &spans {
        by_trace.entry(span.trace_id).or_default().push(span);
    }
    for line in &produced {
        let id = line["msg_id"].as_str().unwrap();
        let trace = by_trace
            .get(&TraceId::for_message(id))
            .unwrap_or_else(|| panic!("no trace for {id}"));
        let sends: Vec<_> = trace
            .iter()
            .filter(|s| s.kind == SpanKind::Producer)
            .collect();
        assert_eq!(sends.len(), 1, "{id}: exactly one send span");
        let send = sends[0];
        assert_eq!(send.span_id, SpanId::for_send(id));
        assert_eq!(send.name, "send GoldenTrip");
        assert_eq!(
            string(send, "messaging.destination.partition.id").map(|q| q.parse::<i64>().unwrap()),
            line["queue_id"].as_i64()
        );
        assert_eq!(
            string(send, "mqtrace.queue_offset").map(|q| q.parse::<i64>().unwrap()),
            line["queue_offset"].as_i64()
        );
        assert_eq!(
            string(send, "mqtrace.offset_msg_id").as_deref(),
            line["offset_msg_id"].as_str()
        );
        assert_eq!(
            string(send, "messaging.rocketmq.message.tag").as_deref(),
            Some("TagE")
        );
        assert_eq!(
            send.attributes.get("messaging.rocketmq.message.keys"),
            Some(&Value::Strings(vec![
                line["key"].as_str().unwrap().to_string()
            ]))
        );
        assert_eq!(
            send.attributes.get("messaging.message.body.size"),
            Some(&Value::Int(64))
        );
        let receives: Vec<_> = trace
            .iter()
            .filter(|s| s.name == "receive GoldenTrip")
            .collect();
        assert!(!receives.is_empty(), "{id}: at least one receive span");
        for receive in receives {
            assert_eq!(
                receive.parent_span_id,
                Some(send.span_id),
                "{id}: the receive span's parent is the send span"
            );
            assert_eq!(
                string(receive, "messaging.consumer.group.name").as_deref(),
                Some("trip_consumer")
            );
            assert_eq!(
                string(receive, "mqtrace.queue_offset").map(|q| q.parse::<i64>().unwrap()),
                line["queue_offset"].as_i64()
            );
        }
        assert!(
            trace.iter().any(|s| s.name == "commit_offset GoldenTrip"),
            "{id}: settled by the offset commit"
        );
    }
}

#[test]
fn output_file_has_exactly_the_documented_keys() {
    let out = std::env::temp_dir().join(format!("mqtrace-spans-{}.jsonl", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_mqtrace"))
        .args(["replay", "--output"])
        .arg(&out)
        .arg(repo().join("tests/captures/rust-client/roundtrip.pcap"))
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    let keys: BTreeSet<&str> = [
        "trace_id",
        "span_id",
        "parent_span_id",
        "name",
        "kind",
        "start_unix_nano",
        "end_unix_nano",
        "status",
        "status_message",
        "attributes",
        "resource",
        "links",
    ]
    .into();
    let mut lines = 0;
    for line in text.lines() {
        let span: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
        assert_eq!(
            span.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            keys
        );
        let hex = |v: &serde_json::Value, n: usize| {
            v.as_str().is_some_and(|s| {
                s.len() == n
                    && s.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            })
        };
        assert!(hex(&span["trace_id"], 32) && hex(&span["span_id"], 16));
        assert!(span["parent_span_id"].is_null() || hex(&span["parent_span_id"], 16));
        assert!(
            ["PRODUCER", "CONSUMER", "CLIENT", "SERVER", "INTERNAL"]
                .contains(&span["kind"].as_str().unwrap())
        );
        assert!(["OK", "ERROR", "UNSET"].contains(&span["status"].as_str().unwrap()));
        assert!(
            span["start_unix_nano"].as_u64().unwrap() <= span["end_unix_nano"].as_u64().unwrap()
        );
        assert!(
            span["start_unix_nano"].as_u64().unwrap() > 1_700_000_000_000_000_000,
            "Unix time"
        );
        assert!(
            span["attributes"].is_object()
                && span["resource"].is_object()
                && span["links"].is_array()
        );
        lines += 1;
    }
    assert!(
        lines >= 30,
        "10 messages sent, received and committed: {lines} spans"
    );
}

#[test]
fn replay_answers_where_is_my_message_from_a_real_capture() {
    let dir = repo().join("tests/captures/rust-client");
    let capture = dir.join("roundtrip.pcap");
    let produced = roundtrip_produced(&dir);
    let (_, pipeline) = replay_capture(&capture, DecoderConfig::default(), false, |_| {}).unwrap();
    for line in &produced {
        let id = line["msg_id"].as_str().unwrap();
        let journeys = pipeline.journal().unwrap().query(&Query {
            msg_id: Some(id.into()),
            ..Query::default()
        });
        assert_eq!(journeys.len(), 1, "{id}");
        let journey = &journeys[0];
        let actions: Vec<&str> = journey.steps.iter().map(|s| s.action.as_ref()).collect();
        assert_eq!(actions[0], "send", "{id}: {actions:?}");
        assert!(actions.contains(&"receive"), "{id}: {actions:?}");
        assert!(
            actions.contains(&"settle commit_offset"),
            "{id}: {actions:?}"
        );
        let send = &journey.steps[0];
        assert_eq!(send.queue_id.map(i64::from), line["queue_id"].as_i64());
        assert_eq!(send.queue_offset, line["queue_offset"].as_i64());
        assert_eq!(
            journey.offset_msg_id.as_deref(),
            line["offset_msg_id"].as_str()
        );
        assert_eq!(journey.keys, [line["key"].as_str().unwrap()]);
        let receive = journey
            .steps
            .iter()
            .find(|s| s.action == "receive")
            .unwrap();
        assert_eq!(receive.group.as_deref(), Some("trip_consumer"));
        assert!(receive.delay_since_born_ms.is_some_and(|d| d >= 0));
        // The broker's ID finds the same message.
        let by_offset_id = pipeline.journal().unwrap().query(&Query {
            msg_id: line["offset_msg_id"].as_str().map(String::from),
            ..Query::default()
        });
        assert_eq!(by_offset_id[0].message_id.as_ref(), id);
    }
    let by_topic = pipeline.journal().unwrap().query(&Query {
        topic: Some("GoldenTrip".into()),
        ..Query::default()
    });
    assert_eq!(by_topic.len(), produced.len());

    // The same through the CLI, by key, as a timeline.
    let out = Command::new(env!("CARGO_BIN_EXE_mqtrace"))
        .args(["replay", "--key", "key-3"])
        .arg(&capture)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let id3 = produced[3]["msg_id"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            "message {id3}  topic GoldenTrip  tags TagE  keys key-3"
        )),
        "{text}"
    );
    assert!(text.contains("settle commit_offset"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_mqtrace"))
        .args(["replay", "--key", "no-such-key"])
        .arg(&capture)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no message in"));
}

/// Spans of source events through the whole pipeline, as JSON lines, sorted; and the counters.
fn spans_of(
    events: &[SourceEvent],
    capture: &Path,
) -> (Vec<String>, mqtrace_core::pipeline::PipelineCounters) {
    let mut pipeline = Pipeline::new(DecoderConfig::default(), 0, CaptureResources::new(capture));
    let mut out = Vec::new();
    for event in events {
        pipeline.push(event.clone(), &mut out);
    }
    pipeline.finish(Unseen::CaptureEnded, &mut out);
    let mut lines: Vec<String> = out
        .into_iter()
        .map(|o| match o {
            Output::Span(span) => serde_json::to_string(&span).unwrap(),
            other => panic!("only spans are made inline: {other:?}"),
        })
        .collect();
    lines.sort();
    (lines, pipeline.counters())
}

#[test]
fn responses_read_before_their_requests_make_the_same_spans() {
    // A client writing on one thread and reading on another: the kernel can hand over the
    // read's record (the response) before the write's (the request). Real captures, every
    // request's record put right after the response's that follows it.
    let mut reordered_total = 0;
    for name in ["roundtrip.pcap", "pull-32.pcap", "send-single.pcap"] {
        let capture = repo().join("tests/captures/rust-client").join(name);
        let mut events = Vec::new();
        pcap::replay(&capture, |event| events.push(event)).unwrap();
        let (in_order, counters) = spans_of(&events, &capture);
        assert!(!in_order.is_empty(), "{name}: spans");
        assert_eq!(counters.decoder.responses_before_request, 0, "{name}");
        let mut reordered = 0;
        let mut i = 0;
        while i + 1 < events.len() {
            match (&events[i], &events[i + 1]) {
                (SourceEvent::Data(request), SourceEvent::Data(response))
                    if request.connection == response.connection
                        && request.direction == Direction::Egress
                        && response.direction == Direction::Ingress =>
                {
                    events.swap(i, i + 1);
                    reordered += 1;
                    i += 2;
                }
                _ => i += 1,
            }
        }
        assert!(reordered >= 10, "{name}: only {reordered} records moved");
        let (out_of_order, counters) = spans_of(&events, &capture);
        if out_of_order != in_order {
            let first = in_order.iter().zip(&out_of_order).find(|(a, b)| a != b);
            panic!(
                "{name}: {} spans in order, {} out of order; first to differ: {first:#?}",
                in_order.len(),
                out_of_order.len()
            );
        }
        let decoder = &counters.decoder;
        assert!(
            decoder.responses_before_request >= 10,
            "{name}: {decoder:?}"
        );
        assert_eq!(decoder.responses_without_request, 0, "{name}");
        assert_eq!(counters.correlation.timeouts, 0, "{name}");
        reordered_total += decoder.responses_before_request;
    }
    assert!(reordered_total >= 30);
}
