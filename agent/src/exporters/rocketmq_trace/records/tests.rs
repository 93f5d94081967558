//! Records as Java's `TraceDataEncoder` writes them, field by field.

use std::sync::Arc;

use super::*;
use crate::spans::{
    Attributes,
    identity::{SpanId, TraceId},
};

const MSG: &str = "C00002023608AC4C820C6D33AF400000";
const OFFSET: &str = "7F00000100002A9F000000000000EA76";
const MS: u64 = 1_000_000;

fn span(name: &str, kind: SpanKind, attributes: &[(&'static str, Value)]) -> Span {
    let mut a = Attributes::new();
    for (key, value) in attributes {
        a.insert((*key).into(), value.clone());
    }
    let mut resource = Attributes::new();
    resource.insert(names::PROCESS_PID.into(), Value::Int(4242));
    Span {
        trace_id: TraceId::for_message(MSG),
        span_id: SpanId::for_step(name, MSG, &[]),
        parent_span_id: None,
        name: name.to_string(),
        kind,
        start_unix_nano: 1_795_323_303_000 * MS,
        end_unix_nano: 1_795_323_303_012 * MS + 400_000,
        status: Status::Unset,
        status_message: None,
        attributes: a,
        resource: Arc::new(resource),
        links: Vec::new(),
    }
}

/// A send of message MSG to Orders, with these attributes besides.
fn send_with(attributes: &[(&'static str, Value)]) -> Span {
    let mut all = vec![
        (names::MESSAGING_DESTINATION_NAME, "Orders".into()),
        (names::MESSAGING_MESSAGE_ID, MSG.into()),
    ];
    all.extend_from_slice(attributes);
    span("send Orders", SpanKind::Producer, &all)
}

fn send() -> Span {
    send_with(&[
        (names::MESSAGING_ROCKETMQ_MESSAGE_TAG, "TagA".into()),
        (
            names::MESSAGING_ROCKETMQ_MESSAGE_KEYS,
            Value::Strings(vec!["order-1".into(), "user-7".into()]),
        ),
        (names::MESSAGING_ROCKETMQ_MESSAGE_TYPE, "normal".into()),
        (
            names::MESSAGING_ROCKETMQ_CLIENT_GROUP,
            "shop_producer".into(),
        ),
        (names::MESSAGING_MESSAGE_BODY_SIZE, Value::Int(64)),
        (names::MQTRACE_OFFSET_MSG_ID, OFFSET.into()),
        (names::SERVER_ADDRESS, "127.0.0.1".into()),
        (names::SERVER_PORT, Value::Int(10911)),
    ])
}

fn consumed(name: &str, reconsume_times: i64) -> Span {
    span(
        name,
        SpanKind::Client,
        &[
            (names::MESSAGING_DESTINATION_NAME, "Orders".into()),
            (names::MESSAGING_MESSAGE_ID, MSG.into()),
            (names::MESSAGING_CONSUMER_GROUP_NAME, "shop_consumer".into()),
            (names::MQTRACE_RECONSUME_TIMES, Value::Int(reconsume_times)),
        ],
    )
}

fn record(made: Made) -> Record {
    match made {
        Made::Record(record) => record,
        other => panic!("no record: {other:?}"),
    }
}

fn fields(record: &Record) -> Vec<&str> {
    let text = record.text.strip_suffix('\x02').expect("ended by \\x02");
    text.split('\x01').collect()
}

#[test]
fn a_send_is_a_pub_record() {
    let mut maker = RecordMaker::new("DefaultRegion", "RMQ_SYS_TRACE_TOPIC", View::Client);
    let pub_record = record(maker.make(&send()));
    assert_eq!(
        fields(&pub_record),
        [
            "Pub",
            "1795323303000",
            "DefaultRegion",
            "shop_producer",
            "Orders",
            MSG,
            "TagA",
            "order-1 user-7",
            "127.0.0.1:10911",
            "64",
            "12",
            "0",
            OFFSET,
            "true"
        ]
    );
    assert_eq!(pub_record.keys, [MSG, "order-1 user-7"]);
    assert_eq!(pub_record.pid, Some(4242));
    assert!(
        pub_record.may_be_doubled,
        "a remoting client may write its own"
    );
    let mut grpc = send();
    grpc.attributes
        .insert(names::RPC_SYSTEM.into(), Value::fixed("grpc"));
    assert!(!record(maker.make(&grpc)).may_be_doubled);
}

#[test]
fn missing_texts_are_null_separators_spaces_and_a_refused_send_no_record() {
    let mut maker = RecordMaker::new("r", "RMQ_SYS_TRACE_TOPIC", View::Client);
    let bare = send_with(&[
        (names::MESSAGING_ROCKETMQ_MESSAGE_TAG, "".into()),
        (
            names::MESSAGING_ROCKETMQ_MESSAGE_KEYS,
            Value::Strings(vec!["a\x01b".into(), "c\x02".into()]),
        ),
        (names::MESSAGING_ROCKETMQ_MESSAGE_TYPE, "fifo".into()),
    ]);
    let pub_record = record(maker.make(&bare));
    assert_eq!(
        fields(&pub_record)[3..],
        [
            "null", "Orders", MSG, "null", "a b c ", "null", "0", "12", "4", "null", "true"
        ]
    );
    assert_eq!(pub_record.keys, [MSG, "a b c "]);
    // The Java client writes no Pub for a send that failed: its retry has its own.
    let mut refused = send();
    refused.status = Status::Error;
    assert_eq!(maker.make(&refused), Made::Nothing);
}

#[test]
fn a_delivery_and_its_settlement_pair_by_request_id() {
    let mut maker = RecordMaker::new("DefaultRegion", "RMQ_SYS_TRACE_TOPIC", View::Client);
    let before = record(maker.make(&consumed("receive Orders", 1)));
    let before_fields = fields(&before);
    assert_eq!(before_fields[0], "SubBefore");
    // Consumption begins when the message is handed over: the receive's end.
    assert_eq!(before_fields[1], "1795323303012");
    assert_eq!(
        before_fields[2..],
        [
            "DefaultRegion",
            "shop_consumer",
            before_fields[4],
            MSG,
            "1",
            "null"
        ]
    );
    let mut ack = consumed("ack Orders", 1);
    ack.start_unix_nano = 1_795_323_303_050 * MS;
    let after = record(maker.make(&ack));
    let after_fields = fields(&after);
    assert_eq!(
        after_fields,
        [
            "SubAfter",
            before_fields[4],
            MSG,
            "38",
            "true",
            "null",
            "0",
            "1795323303050",
            "shop_consumer"
        ]
    );
    // A send-back is a failed consumption; one of a delivery not seen stands alone.
    let failed = record(maker.make(&consumed("send_back Orders", 2)));
    let failed_fields = fields(&failed);
    assert_eq!(failed_fields[3..7], ["0", "false", "null", "4"]);
    assert_ne!(failed_fields[1], before_fields[4]);
}

#[test]
fn an_offset_commit_passing_a_sent_back_delivery_makes_no_second_sub_after() {
    let mut maker = RecordMaker::new("r", "RMQ_SYS_TRACE_TOPIC", View::Client);
    let request_id = |made: Made| fields(&record(made))[4].to_string();
    let first = request_id(maker.make(&consumed("receive Orders", 0)));
    let sent_back = record(maker.make(&consumed("send_back Orders", 0)));
    assert_eq!(fields(&sent_back)[1], first);
    assert_eq!(fields(&sent_back)[4], "false");
    let mut again = consumed("receive %RETRY%shop_consumer", 1);
    again.span_id = SpanId::for_step("receive", MSG, &["again"]);
    let second = request_id(maker.make(&again));
    // The commit of the first delivery's offset comes after the redelivery: nothing to pair.
    assert_eq!(
        maker.make(&consumed("commit_offset Orders", 0)),
        Made::Nothing
    );
    let committed = record(maker.make(&consumed("commit_offset %RETRY%shop_consumer", 1)));
    assert_eq!(fields(&committed)[1], second);
    assert_eq!(fields(&committed)[4], "true");
    assert_ne!(first, second);
}

#[test]
fn the_trace_topics_sends_tell_a_client_writes_its_own() {
    let mut maker = RecordMaker::new("r", "RMQ_SYS_TRACE_TOPIC", View::Client);
    let mut trace_send = send();
    trace_send.attributes.insert(
        names::MESSAGING_DESTINATION_NAME.into(),
        "RMQ_SYS_TRACE_TOPIC".into(),
    );
    assert_eq!(maker.make(&trace_send), Made::OwnTrace(4242));
    // A process that reads the trace topic is not writing its own.
    let mut reading = consumed("receive RMQ_SYS_TRACE_TOPIC", 0);
    reading.attributes.insert(
        names::MESSAGING_DESTINATION_NAME.into(),
        "RMQ_SYS_TRACE_TOPIC".into(),
    );
    assert_eq!(maker.make(&reading), Made::Nothing);
}

#[test]
fn each_view_takes_its_own_side() {
    let mut client = RecordMaker::new("r", "RMQ_SYS_TRACE_TOPIC", View::Client);
    let mut broker = RecordMaker::new("r", "RMQ_SYS_TRACE_TOPIC", View::Broker);
    let mut store = send();
    store.name = "store Orders".into();
    store.kind = SpanKind::Server;
    assert_eq!(client.make(&store), Made::Nothing);
    assert_eq!(broker.make(&send()), Made::Nothing);
    let from_broker = record(broker.make(&store));
    assert_eq!(
        fields(&from_broker)[..4],
        ["Pub", "1795323303000", "r", "shop_producer"]
    );
    // The broker's side is not a process of the client's.
    assert_eq!(from_broker.pid, None);
    assert!(!from_broker.may_be_doubled);
    let mut deliver = consumed("deliver Orders", 0);
    deliver.kind = SpanKind::Server;
    assert_eq!(fields(&record(broker.make(&deliver)))[0], "SubBefore");
}

#[test]
fn a_transactions_end_and_other_spans() {
    let mut maker = RecordMaker::new("r", "RMQ_SYS_TRACE_TOPIC", View::Client);
    // As the producer's end of a transaction is settled: its group the settling one.
    let mut commit = consumed("commit Orders", 0);
    for (key, value) in [
        (names::MESSAGING_CONSUMER_GROUP_NAME, "shop_producer".into()),
        (names::MESSAGING_ROCKETMQ_MESSAGE_TAG, "TagA".into()),
        (
            names::MESSAGING_ROCKETMQ_MESSAGE_KEYS,
            Value::Strings(vec!["order-1".into(), "user-7".into()]),
        ),
        (names::SERVER_ADDRESS, "127.0.0.1".into()),
        (names::SERVER_PORT, Value::Int(10911)),
    ] {
        commit.attributes.insert(key.into(), value);
    }
    let end = record(maker.make(&commit));
    assert_eq!(
        fields(&end)[..],
        [
            "EndTransaction",
            "1795323303000",
            "r",
            "shop_producer",
            "Orders",
            MSG,
            "TagA",
            "order-1 user-7",
            "127.0.0.1:10911",
            "2",
            MSG,
            "COMMIT_MESSAGE",
            "false"
        ]
    );
    let mut heartbeat = send();
    heartbeat.name = "heartbeat".into();
    assert_eq!(maker.make(&heartbeat), Made::Nothing);
}

#[test]
fn the_store_host_comes_from_the_offset_msg_id() {
    assert_eq!(
        offset_msg_id_host(OFFSET).as_deref(),
        Some("127.0.0.1:10911")
    );
    assert_eq!(offset_msg_id_host("7F00"), None);
    assert_eq!(offset_msg_id_host("ZZ00000100002A9F000000000000EA76"), None);
}
