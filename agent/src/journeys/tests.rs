use super::*;
use crate::{
    correlation::{Endpoint, MessageLabels, ReceiveEvent, SendEvent, SettleEvent, Settlement},
    decoder::{MessageMeta, RequestCode, message::Properties},
};

fn endpoint(pid: u32) -> Endpoint {
    Endpoint {
        pid,
        local: Some("127.0.0.1:40000".parse().unwrap()),
        peer: Some("127.0.0.1:10911".parse().unwrap()),
    }
}

fn meta(id: &str, topic: &str) -> MessageMeta {
    let mut properties = Properties::default();
    properties.0.insert("KEYS".into(), format!("key-{id}"));
    properties.0.insert("TAGS".into(), "TagA".into());
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
    journal.record(&send("A", 1_000_000_000), "producer", "");
    journal.record(&settle("A", 3_000_000_000), "consumer", "host-b");
    journal.record(&receive("A", 2_000_000_000), "consumer", "host-b");
    journal.record(&send("B", 1_500_000_000), "producer", "");

    let found = journal.query(&by_id("A"));
    assert_eq!(found.len(), 1);
    let journey = &found[0];
    let actions: Vec<&str> = journey.steps.iter().map(|s| s.action.as_str()).collect();
    assert_eq!(actions, ["send", "receive", "settle offset_committed"]);
    assert_eq!(journey.topic.as_deref(), Some("T"));
    assert_eq!(journey.keys, ["key-A"]);
    assert_eq!(journey.steps[0].process, "producer");
    assert_eq!(journey.steps[0].group.as_deref(), Some("pg"));
    assert_eq!(journey.steps[1].group.as_deref(), Some("cg"));
    // Born at 1 s (producer clock), received at 2 s.
    assert_eq!(journey.steps[1].delay_since_born_ms, Some(1_000));

    assert_eq!(journal.query(&by_id("OFFA"))[0].message_id, "A");
    let by_key = Query {
        key: Some("key-B".into()),
        ..Query::default()
    };
    assert_eq!(journal.query(&by_key)[0].message_id, "B");
    let by_topic = Query {
        topic: Some("T".into()),
        ..Query::default()
    };
    // Most recent first.
    let ids: Vec<String> = journal
        .query(&by_topic)
        .into_iter()
        .map(|j| j.message_id)
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
    assert!(text.contains("send                     producer[10] -> 127.0.0.1:10911  queue 1  offset 7  group pg  took 2.0 ms  ok"), "{text}");
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
        journal.record(&send(&format!("M{i}"), i), "p", "");
    }
    let counters = journal.counters();
    assert_eq!(counters.messages, 100);
    assert_eq!(counters.messages_evicted, 150);
    // The oldest went first.
    assert!(journal.query(&by_id("M149")).is_empty());
    assert_eq!(journal.query(&by_id("M150")).len(), 1);

    for i in 0..100 {
        journal.record(&receive("M200", 1_000 + i), "c", "");
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
    journal.record(&event, "producer\u{1b}[2J", "host");
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
                .insert("KEYS".into(), format!("{i}-{}", "k".repeat(30_000)));
        }
        journal.record(&event, "producer", "host");
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
