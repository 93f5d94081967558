use super::*;
use crate::{
    correlation::{Endpoint, MessageLabels, ReceiveEvent, SendEvent, SettleEvent, Settlement},
    decoder::{MessageMeta, RequestCode, message::Properties},
    sources::SeenAs,
    spans::{Attributes, identity::TraceId, span},
};

/// Records `event` as the pipeline does: with its span, made for `process` on `host`.
fn record(journal: &mut Journal, event: &MessageEvent, process: &str, host: &str) {
    let mut resource = Attributes::new();
    resource.insert("service.name".into(), process.into());
    if !host.is_empty() {
        resource.insert("host.name".into(), host.into());
    }
    journal.record(event.clone(), &span(event, &resource.into()));
}

fn endpoint(pid: u32) -> Endpoint {
    Endpoint {
        pid,
        local: Some("127.0.0.1:40000".parse().unwrap()),
        peer: Some("127.0.0.1:10911".parse().unwrap()),
        seen_as: SeenAs::Plain,
        client: None,
        rpc: None,
    }
}

fn meta(id: &str, topic: &str) -> MessageMeta {
    let mut properties = Properties::default();
    properties.0.insert("KEYS", &format!("key-{id}"));
    properties.0.insert("TAGS", "TagA");
    MessageMeta {
        msg_id: Some(id.into()),
        topic: Some(topic.into()),
        queue_id: Some(1),
        queue_offset: Some(7),
        born_timestamp_ms: Some(1_000),
        properties,
        ..MessageMeta::default()
    }
}

fn send(id: &str, at_ns: u64) -> MessageEvent {
    MessageEvent::Send(SendEvent {
        key: id.into(),
        message: meta(id, "T"),
        producer_group: Some("pg".into()),
        batch_size: 1,
        offset_msg_id: Some(format!("OFF{id}")),
        queue_offset: Some(7),
        attempt: 1,
        start_unix_ns: at_ns,
        end_unix_ns: at_ns + 2_000_000,
        outcome: Outcome::Ok,
        endpoint: endpoint(10),
    })
}

fn receive(id: &str, at_ns: u64) -> MessageEvent {
    MessageEvent::Receive(ReceiveEvent {
        key: id.into(),
        message: meta(id, "T"),
        consumer_group: Some("cg".into()),
        via: RequestCode::PullMessage,
        batch_size: 1,
        start_unix_ns: at_ns,
        end_unix_ns: at_ns,
        endpoint: endpoint(20),
    })
}

fn settle(id: &str, at_ns: u64) -> MessageEvent {
    MessageEvent::Settle(SettleEvent {
        key: id.into(),
        settlement: Settlement::OffsetCommitted,
        consumer_group: Some("cg".into()),
        topic: Some("T".into()),
        labels: MessageLabels::default(),
        reconsume_times: None,
        start_unix_ns: at_ns,
        end_unix_ns: at_ns,
        outcome: Outcome::Ok,
        endpoint: endpoint(20),
    })
}

fn by_id(id: &str) -> Query {
    Query {
        msg_id: Some(id.into()),
        ..Query::default()
    }
}

#[test]
fn steps_join_their_message_in_time_order_and_every_query_kind_finds_it() {
    let mut journal = Journal::new(10);
    // The settlement is seen before the receive (two processes, two streams): still ordered.
    record(&mut journal, &send("A", 1_000_000_000), "producer", "");
    record(
        &mut journal,
        &settle("A", 3_000_000_000),
        "consumer",
        "host-b",
    );
    record(
        &mut journal,
        &receive("A", 2_000_000_000),
        "consumer",
        "host-b",
    );
    record(&mut journal, &send("B", 1_500_000_000), "producer", "");

    let found = journal.query(&by_id("A"));
    assert_eq!(found.len(), 1);
    let journey = &found[0];
    let actions: Vec<&str> = journey.steps.iter().map(|s| s.action.as_ref()).collect();
    assert_eq!(actions, ["send", "receive", "settle commit_offset"]);
    assert_eq!(journey.topic.as_deref(), Some("T"));
    assert_eq!(journey.keys, ["key-A"]);
    assert_eq!(&*journey.steps[0].process, "producer");
    assert_eq!(journey.steps[0].group.as_deref(), Some("pg"));
    assert_eq!(journey.steps[1].group.as_deref(), Some("cg"));
    // Born at 1 s (producer clock), received at 2 s.
    assert_eq!(journey.steps[1].delay_since_born_ms, Some(1_000));

    assert_eq!(journal.query(&by_id("OFFA"))[0].message_id.as_ref(), "A");
    let by_key = Query {
        key: Some("key-B".into()),
        ..Query::default()
    };
    assert_eq!(journal.query(&by_key)[0].message_id.as_ref(), "B");
    let by_topic = Query {
        topic: Some("T".into()),
        ..Query::default()
    };
    // Most recent first.
    let ids: Vec<String> = journal
        .query(&by_topic)
        .into_iter()
        .map(|j| j.message_id.to_string())
        .collect();
    assert_eq!(ids, ["A", "B"]);
    let recent = Query {
        topic: Some("T".into()),
        since_unix_ns: Some(2_500_000_000),
        ..Query::default()
    };
    assert_eq!(journal.query(&recent).len(), 1);
    assert!(journal.query(&by_id("nope")).is_empty());

    let text = timeline(journey);
    assert!(
        text.starts_with("message A  topic T  tags TagA  keys key-A  offsetMsgId OFFA"),
        "{text}"
    );
    assert!(text.contains("send                     producer[10] -> 127.0.0.1:10911  queue 1  offset 7  group pg  took 2.0 ms  UNSET"), "{text}");
    assert!(
        text.contains("receive                  consumer[20]@host-b -> "),
        "{text}"
    );
    assert_eq!(text.lines().count(), 4, "{text}");
}

#[test]
fn the_journal_is_bounded_in_messages_and_in_steps() {
    let mut journal = Journal::new(100);
    for i in 0..250u64 {
        record(&mut journal, &send(&format!("M{i}"), i), "p", "");
    }
    let counters = journal.counters();
    assert_eq!(counters.messages, 100);
    assert_eq!(counters.messages_evicted, 150);
    // The oldest went first.
    assert!(journal.query(&by_id("M149")).is_empty());
    assert_eq!(journal.query(&by_id("M150")).len(), 1);

    for i in 0..100 {
        record(&mut journal, &receive("M200", 1_000 + i), "c", "");
    }
    let journey = &journal.query(&by_id("M200"))[0];
    assert_eq!(journey.steps.len(), MAX_STEPS);
    assert_eq!(journey.steps_dropped, 101 - MAX_STEPS as u64);
    assert_eq!(journal.counters().steps_dropped, 101 - MAX_STEPS as u64);
}

#[test]
fn wire_strings_reach_the_terminal_escaped() {
    let mut journal = Journal::new(10);
    let mut event = send("A", 1_000_000_000);
    if let MessageEvent::Send(e) = &mut event {
        e.message.topic = Some("T\u{1b}]0;owned\u{7}\r".into());
    }
    record(&mut journal, &event, "producer\u{1b}[2J", "host");
    let text = timeline(&journal.query(&by_id("A"))[0]);
    assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
    assert!(text.contains("T\\u{1b}]0;owned\\u{7}\\r"), "{text}");
    assert_eq!(text.lines().count(), 2, "one line per step: {text}");
}

#[test]
fn the_journal_keeps_within_its_bytes_forgetting_the_oldest() {
    let mut journal = Journal::with_budget(20_000, 1 << 20);
    for i in 0..200 {
        let id = format!("M{i}");
        let mut event = send(&id, i * 1_000_000);
        if let MessageEvent::Send(e) = &mut event {
            // A producer's 30 KB keys.
            e.message
                .properties
                .0
                .insert("KEYS", &format!("{i}-{}", "k".repeat(30_000)));
        }
        record(&mut journal, &event, "producer", "host");
    }
    let counters = journal.counters();
    assert!(counters.bytes <= 1 << 20, "{counters:?}");
    assert!(counters.messages_evicted > 150, "{counters:?}");
    assert_eq!(counters.messages + counters.messages_evicted, 200);
    assert_eq!(
        journal.query(&by_id("M199")).len(),
        1,
        "the newest are kept"
    );
    assert!(
        journal.query(&by_id("M0")).is_empty(),
        "the oldest went first"
    );
}

fn receive_between(id: &str, start_ns: u64, end_ns: u64) -> MessageEvent {
    let mut event = receive(id, start_ns);
    if let MessageEvent::Receive(e) = &mut event {
        e.end_unix_ns = end_ns;
        e.message.offset_msg_id = Some(format!("OFF{id}"));
    }
    event
}

/// Its redelivery through `%RETRY%cg`: a copy stored anew, with an offsetMsgId of its own.
fn redelivery(id: &str, start_ns: u64, end_ns: u64) -> MessageEvent {
    let mut event = receive_between(id, start_ns, end_ns);
    if let MessageEvent::Receive(e) = &mut event {
        e.message.topic = Some("%RETRY%cg".into());
        e.message.offset_msg_id = Some(format!("RETRYOFF{id}"));
        e.message.reconsume_times = Some(1);
    }
    event
}

fn send_back(id: &str, at_ns: u64) -> MessageEvent {
    let mut event = settle(id, at_ns);
    if let MessageEvent::Settle(e) = &mut event {
        e.settlement = Settlement::SendBack;
        e.end_unix_ns = at_ns + 1_000_000;
    }
    event
}

/// A message sent at 1 s, received by a long poll that began before it was sent, failed and
/// sent back at 3 s, redelivered by a long poll that began at 2 s and was answered at 13 s,
/// committed at 14 s; recorded in the order the pipeline finishes them.
fn redelivered_journal() -> Journal {
    let mut journal = Journal::new(10);
    let s = 1_000_000_000;
    record(
        &mut journal,
        &receive_between("A", s / 2, s + s / 2),
        "c",
        "",
    );
    record(&mut journal, &send("A", s), "p", "");
    record(&mut journal, &send_back("A", 3 * s), "c", "");
    record(&mut journal, &redelivery("A", 2 * s, 13 * s), "c", "");
    let mut commit = settle("A", 14 * s);
    if let MessageEvent::Settle(e) = &mut commit {
        e.topic = Some("%RETRY%cg".into());
    }
    record(&mut journal, &commit, "c", "");
    journal
}

#[test]
fn steps_are_ordered_by_when_they_happened_not_by_when_their_request_began() {
    let journal = redelivered_journal();
    let journey = &journal.query(&by_id("A"))[0];
    let steps: Vec<(&str, u64)> = journey
        .steps
        .iter()
        .map(|s| (s.action.as_ref(), s.at_unix_ns / 1_000_000))
        .collect();
    // The receive after the send although its long poll began before; the redelivery after
    // the send-back although its long poll began before the send-back.
    assert_eq!(
        steps,
        [
            ("send", 1_000),
            ("receive", 1_500),
            ("settle send_back", 3_000),
            ("receive", 13_000),
            ("settle commit_offset", 14_000)
        ]
    );
    // The timeline shows those times, in that order.
    let text = timeline(journey);
    let times: Vec<&str> = text.lines().skip(1).map(|l| &l[2..26]).collect();
    assert_eq!(
        times,
        [
            "1970-01-01T00:00:01.000Z",
            "1970-01-01T00:00:01.500Z",
            "1970-01-01T00:00:03.000Z",
            "1970-01-01T00:00:13.000Z",
            "1970-01-01T00:00:14.000Z"
        ],
        "{text}"
    );
    assert!(
        text.contains("reconsume 1  12000 ms after birth  offsetMsgId RETRYOFFA  took 11000.0 ms"),
        "the copy's own offsetMsgId on its step: {text}"
    );
}

#[test]
fn a_message_is_found_by_any_of_its_ids_in_either_case_and_by_the_retry_topic_it_went_through() {
    let journal = redelivered_journal();
    for id in [
        "A",
        "a",
        "OFFA",
        "offa",
        "OffA",
        "RETRYOFFA",
        "retryoffa",
        " offa ",
    ] {
        let found = journal.query(&by_id(id));
        assert_eq!(found.len(), 1, "{id}");
        assert_eq!(found[0].message_id.as_ref(), "A", "{id}");
    }
    assert!(journal.query(&by_id("OFFB")).is_empty());
    // The message's own offsetMsgId is the one its producer was told, not the copy's.
    assert_eq!(
        journal.query(&by_id("A"))[0].offset_msg_id.as_deref(),
        Some("OFFA")
    );
    let topic = |t: &str| Query {
        topic: Some(t.into()),
        ..Query::default()
    };
    assert_eq!(journal.query(&topic("T")).len(), 1);
    assert_eq!(
        journal.query(&topic("%RETRY%cg"))[0].message_id.as_ref(),
        "A"
    );
    assert!(journal.query(&topic("%RETRY%other")).is_empty());
    assert!(
        journal.query(&topic("%retry%cg")).is_empty(),
        "topics keep their case"
    );
}

#[test]
fn messages_seen_at_the_same_times_list_in_one_order_every_time() {
    let ids = ["M3", "M1", "M4", "M0", "M2"];
    let s = 1_000_000_000;
    let listing = |order: &[&str]| -> Vec<String> {
        let mut journal = Journal::new(100);
        for id in order {
            // All last seen at 5 s; M4 first seen later than the others.
            let first = if *id == "M4" { 2 * s } else { s };
            record(&mut journal, &send(id, first), "p", "");
            record(&mut journal, &settle(id, 5 * s), "c", "");
        }
        let topic = Query {
            topic: Some("T".into()),
            ..Query::default()
        };
        journal
            .query(&topic)
            .into_iter()
            .map(|j| j.message_id.to_string())
            .collect()
    };
    let expected = ["M4", "M0", "M1", "M2", "M3"];
    assert_eq!(listing(&ids), expected);
    let mut reversed = ids;
    reversed.reverse();
    // Another journal, its map hashed otherwise, filled in another order: the same list.
    for _ in 0..10 {
        assert_eq!(listing(&reversed), expected);
        assert_eq!(listing(&ids), expected);
    }
}

#[test]
fn the_timeline_names_the_trace_and_says_the_status_as_the_span_does() {
    let mut journal = Journal::new(10);
    let mut failed = send("A", 1_000_000_000);
    if let MessageEvent::Send(e) = &mut failed {
        e.outcome = Outcome::Error {
            error_type: "timeout".into(),
            message: Some("no response".into()),
        };
    }
    record(&mut journal, &failed, "producer", "");
    let mut unseen = settle("A", 2_000_000_000);
    if let MessageEvent::Settle(e) = &mut unseen {
        e.outcome = Outcome::Unseen(crate::correlation::Unseen::CaptureEnded);
        // A settlement whose labels carry the application's trace: its span is in that one.
        e.labels.traceparent =
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    }
    record(&mut journal, &unseen, "consumer", "");
    record(&mut journal, &receive("A", 1_500_000_000), "consumer", "");
    let journey = &journal.query(&by_id("A"))[0];
    let trace = TraceId::for_message("A").hex();
    assert_eq!(journey.trace_id.hex(), trace);
    let text = timeline(journey);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with(&format!("  trace {trace}")), "{text}");
    assert!(
        lines[1].ends_with("took 2.0 ms  ERROR (timeout: no response)"),
        "{text}"
    );
    assert!(lines[2].ends_with("took 0.0 ms  UNSET"), "{text}");
    assert!(
        lines[3].ends_with(
            "  trace 4bf92f3577b34da6a3ce929d0e0e4736  took 0.0 ms  UNSET (no response seen: \
             capture_ended)"
        ),
        "{text}"
    );
    // JSON says the same words.
    let json = serde_json::to_value(journey).unwrap();
    assert_eq!(json["trace_id"], trace.as_str());
    let statuses: Vec<&str> = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ERROR", "UNSET", "UNSET"]);
    assert!(json["steps"][0].get("trace_id").is_none(), "{json}");
    assert_eq!(
        json["steps"][2]["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    // And back, as `mqtrace trace` reads the daemon's answer.
    let back: Journey = serde_json::from_value(json).unwrap();
    assert_eq!(timeline(&back), text);
}

#[test]
fn shared_texts_give_the_text_asked_for_and_share_a_repeat() {
    let mut texts = SharedTexts::default();
    let a = texts.topic(Some("TopicA")).unwrap();
    let again = texts.topic(Some("TopicA")).unwrap();
    assert!(Arc::ptr_eq(&a, &again), "a repeat is shared");
    assert_eq!(&*texts.topic(Some("TopicB")).unwrap(), "TopicB");
    assert_eq!(&*texts.topic(Some("TopicA")).unwrap(), "TopicA");
    assert_eq!(texts.topic(None), None);
    // Groups and tags are kept apart from topics.
    assert_eq!(&*texts.group(Some("TopicA-group")).unwrap(), "TopicA-group");
    assert_eq!(&*texts.tags(Some("TopicA")).unwrap(), "TopicA");
    let client = Arc::new(ServedClient {
        client_id: Some("10.0.0.1@1".into()),
        language: "JAVA".into(),
        version: "V5_1_0".into(),
    });
    let other = Arc::new(ServedClient {
        client_id: None,
        ..(*client).clone()
    });
    assert_eq!(&*texts.client(&client), "(10.0.0.1@1, JAVA vV5_1_0)");
    assert_eq!(&*texts.client(&other), "(client, JAVA vV5_1_0)");
    assert_eq!(&*texts.client(&client), "(10.0.0.1@1, JAVA vV5_1_0)");
}
