//! RocketMQ's own trace records, as `TraceDataEncoder` (rocketmq-client) writes them and
//! RocketMQ Dashboard reads them, made from mqtrace's spans. Sans-IO: spans in, record texts
//! out.
//!
//! A record is fields separated by `\x01`, ended by `\x02`:
//! - Pub: type, time, region, producer group, topic, message id, tags, keys, store host, body
//!   length, cost (ms), message type ordinal, offsetMsgId, success.
//! - SubBefore: type, time, region, consumer group, request id, message id, retry times, keys.
//! - SubAfter: type, request id, message id, cost (ms), success, keys, context code, time,
//!   (Java's decoder stops there; the group follows in newer clients).
//! - EndTransaction: type, time, region, producer group, topic, message id, tags, keys, store
//!   host, message type ordinal, transaction id, state, from a check.
//!
//! A text missing is written `null`, as Java's `StringBuilder` writes a null: its decoder splits
//! with `String.split`, which drops trailing empty fields.

use std::fmt::Write as _;

use mqtrace_protocol::Bounded;

use crate::spans::{Span, SpanKind, Status, Value, names};

/// Whose spans become records: the clients' (an agent on the application hosts), or the
/// broker's (an agent on the broker hosts alone).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum View {
    #[default]
    Client,
    Broker,
}

/// One record, with what a trace message carrying it is found by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The traced process whose step this is (client view): a process that writes its own
    /// trace gets none of the agent's.
    pub pid: Option<u32>,
    /// A remoting client's step: its client may write its own trace (a gRPC client does not
    /// use the trace topic), which shows within seconds.
    pub may_be_doubled: bool,
    /// The record, `\x02` included.
    pub text: String,
    /// The message id, then its keys (space-separated, as the message's KEYS property holds
    /// them): the trace message's KEYS, which the broker indexes.
    pub keys: Vec<String>,
}

/// What a span makes.
#[derive(Debug, PartialEq, Eq)]
pub enum Made {
    Record(Record),
    /// `pid` sends to the trace topic: its client writes its own records.
    OwnTrace(u32),
    Nothing,
}

/// Deliveries remembered until their settlement: pairs SubBefore and SubAfter.
const DELIVERIES_REMEMBERED: usize = 65_536;
/// A message's keys beyond this are left out of its trace message's keys (the broker refuses
/// properties beyond 32 KiB): it is still found by its id.
const MAX_KEYS_INDEXED: usize = 4096;

struct Delivery {
    request_id: String,
    consumed_from_ms: u64,
    reconsume_times: i64,
}

/// Makes records of spans; remembers each delivery until it is settled.
pub struct RecordMaker {
    region: String,
    trace_topic: String,
    view: View,
    deliveries: OpenDeliveries,
}

impl RecordMaker {
    pub fn new(region: &str, trace_topic: &str, view: View) -> Self {
        Self {
            region: field(Some(region)).into_owned(),
            trace_topic: trace_topic.to_string(),
            view,
            deliveries: Bounded::with_capacity_limit(DELIVERIES_REMEMBERED),
        }
    }

    pub fn make(&mut self, span: &Span) -> Made {
        let Some(topic) = text(span, names::MESSAGING_DESTINATION_NAME) else {
            return Made::Nothing;
        };
        let pid = span.resource.get(names::PROCESS_PID).and_then(|v| match v {
            Value::Int(pid) => u32::try_from(*pid).ok(),
            _ => None,
        });
        let broker_side = span.kind == SpanKind::Server;
        let operation = span.name.split(' ').next().unwrap_or_default();
        if topic == self.trace_topic {
            // A client's own trace producer at work (a process reading the topic is not).
            return match (broker_side, operation, pid) {
                (false, "send", Some(pid)) => Made::OwnTrace(pid),
                _ => Made::Nothing,
            };
        }
        if broker_side != (self.view == View::Broker) {
            return Made::Nothing;
        }
        let Some(msg_id) = text(span, names::MESSAGING_MESSAGE_ID).filter(|id| !id.is_empty())
        else {
            return Made::Nothing;
        };
        let keys = keys(span);
        let fields = Fields {
            region: &self.region,
            topic: field(Some(topic)),
            msg_id: field(Some(msg_id)),
            keys: field(keys.as_deref()),
        };
        let text = match operation {
            "send" | "store" => publish(span, &fields),
            "receive" | "deliver" => delivery(&mut self.deliveries, span, &fields),
            "ack" | "commit_offset" | "nack" | "send_back" | "dead_letter" => {
                settlement(&mut self.deliveries, span, operation, &fields)
            }
            "commit" | "rollback" => end_transaction(span, operation, &fields),
            _ => None,
        };
        let Some(text) = text else {
            return Made::Nothing;
        };
        let mut trace_keys = vec![fields.msg_id.into_owned()];
        if let Some(keys) = keys.filter(|k| k.len() <= MAX_KEYS_INDEXED) {
            trace_keys.push(field(Some(&keys)).into_owned());
        }
        Made::Record(Record {
            pid: pid.filter(|_| !broker_side),
            may_be_doubled: !broker_side && span.attributes.get(names::RPC_SYSTEM).is_none(),
            text,
            keys: trace_keys,
        })
    }
}

/// Each (consumer group, message id)'s deliveries not settled yet, oldest first.
type OpenDeliveries = Bounded<(String, String), Vec<Delivery>>;

/// SubBefore: the message handed to the consumer, its consumption begins.
fn delivery(deliveries: &mut OpenDeliveries, span: &Span, f: &Fields) -> Option<String> {
    let group = text(span, names::MESSAGING_CONSUMER_GROUP_NAME).filter(|g| !g.is_empty())?;
    let request_id = span.span_id.hex();
    let consumed_from_ms = millis(span.end_unix_nano);
    let reconsume_times = int(span, names::MQTRACE_RECONSUME_TIMES).unwrap_or(0);
    let record = format!(
        "SubBefore\x01{consumed_from_ms}\x01{}\x01{}\x01{request_id}\x01{}\x01{reconsume_times}\x01{}\x02",
        f.region,
        field(Some(group)),
        f.msg_id,
        f.keys,
    );
    let key = (group.to_string(), f.msg_id.to_string());
    let delivery = Delivery {
        request_id,
        consumed_from_ms,
        reconsume_times,
    };
    match deliveries.get_mut(&key) {
        Some(open) => open.push(delivery),
        None => {
            deliveries.insert(key, vec![delivery], 0);
        }
    }
    Some(record)
}

/// SubAfter: how a consumption ended, paired with its delivery's SubBefore by request id
/// (the delivery of the same retry times; the oldest open where the settlement does not say). An offset commit passing
/// a delivery already settled (sent back) makes none: the Java client writes one SubAfter
/// per consumption. An ack or send-back of a delivery not seen stands alone.
fn settlement(
    deliveries: &mut OpenDeliveries,
    span: &Span,
    operation: &str,
    f: &Fields,
) -> Option<String> {
    let group = text(span, names::MESSAGING_CONSUMER_GROUP_NAME).filter(|g| !g.is_empty())?;
    let settled_at_ms = millis(span.start_unix_nano);
    let key = (group.to_string(), f.msg_id.to_string());
    let reconsume_times = int(span, names::MQTRACE_RECONSUME_TIMES);
    let delivery = deliveries.get_mut(&key).and_then(|open| {
        let index = match reconsume_times {
            Some(times) => open.iter().position(|d| d.reconsume_times == times)?,
            None => (!open.is_empty()).then_some(0)?,
        };
        Some(open.remove(index))
    });
    if deliveries.get(&key).is_some_and(Vec::is_empty) {
        deliveries.remove(&key);
    }
    let (request_id, cost) = match delivery {
        Some(delivery) => (
            delivery.request_id,
            settled_at_ms.saturating_sub(delivery.consumed_from_ms),
        ),
        None if operation == "commit_offset" => return None,
        None => (span.span_id.hex(), 0),
    };
    let success = matches!(operation, "ack" | "commit_offset") && span.status != Status::Error;
    // ConsumeReturnType: SUCCESS 0, FAILED 4.
    let context_code = if success { 0 } else { 4 };
    Some(format!(
        "SubAfter\x01{request_id}\x01{}\x01{cost}\x01{success}\x01{}\x01{context_code}\x01{settled_at_ms}\x01{}\x02",
        f.msg_id,
        f.keys,
        field(Some(group)),
    ))
}

/// The texts every record of a span has, each made a field.
struct Fields<'a> {
    region: &'a str,
    topic: std::borrow::Cow<'a, str>,
    msg_id: std::borrow::Cow<'a, str>,
    keys: std::borrow::Cow<'a, str>,
}

/// Pub: a message stored. A send that failed makes none (the Java client writes none for a
/// send that threw; its retry has its own).
fn publish(span: &Span, f: &Fields) -> Option<String> {
    if span.status == Status::Error {
        return None;
    }
    let mut record = String::with_capacity(256);
    let _ = write!(
        record,
        "Pub\x01{}\x01{}\x01{}\x01{}\x01{}\x01{}\x01{}\x01{}\x01{}\x01{}\x01{}\x01{}\x01true\x02",
        millis(span.start_unix_nano),
        f.region,
        field(text(span, names::MESSAGING_ROCKETMQ_CLIENT_GROUP)),
        f.topic,
        f.msg_id,
        field(text(span, names::MESSAGING_ROCKETMQ_MESSAGE_TAG)),
        f.keys,
        field(store_host(span).as_deref()),
        int(span, names::MESSAGING_MESSAGE_BODY_SIZE)
            .unwrap_or(0)
            .max(0),
        cost_ms(span.start_unix_nano, span.end_unix_nano),
        message_type(span),
        field(text(span, names::MQTRACE_OFFSET_MSG_ID)),
    );
    Some(record)
}

/// EndTransaction: a transactional producer's commit or rollback (its group is the settling
/// group of the span).
fn end_transaction(span: &Span, operation: &str, f: &Fields) -> Option<String> {
    let state = if operation == "commit" {
        "COMMIT_MESSAGE"
    } else {
        "ROLLBACK_MESSAGE"
    };
    let group = text(span, names::MESSAGING_CONSUMER_GROUP_NAME)
        .or_else(|| text(span, names::MESSAGING_ROCKETMQ_CLIENT_GROUP));
    // MessageType: Trans_msg_Commit 2 (a rollback too: the half message's end).
    Some(format!(
        "EndTransaction\x01{}\x01{}\x01{}\x01{}\x01{}\x01{}\x01{}\x01{}\x012\x01{}\x01{state}\x01false\x02",
        millis(span.start_unix_nano),
        f.region,
        field(group),
        f.topic,
        f.msg_id,
        field(text(span, names::MESSAGING_ROCKETMQ_MESSAGE_TAG)),
        f.keys,
        field(store_host(span).as_deref()),
        f.msg_id,
    ))
}

/// A text as a record's field: `null` when missing or empty (Java writes a null so, and its
/// decoder's split drops an empty last field), the separators `\x01` and `\x02` (and other
/// control characters) as spaces.
fn field(text: Option<&str>) -> std::borrow::Cow<'_, str> {
    match text {
        None | Some("") => "null".into(),
        Some(text) if text.chars().any(char::is_control) => text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .into(),
        Some(text) => text.into(),
    }
}

fn text<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match span.attributes.get(key)? {
        Value::String(text) => Some(text),
        _ => None,
    }
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match span.attributes.get(key)? {
        Value::Int(n) => Some(*n),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
}

/// The message's keys as its KEYS property holds them: space-separated.
fn keys(span: &Span) -> Option<String> {
    match span
        .attributes
        .get(names::MESSAGING_ROCKETMQ_MESSAGE_KEYS)?
    {
        Value::Strings(keys) if !keys.is_empty() => Some(keys.join(" ")),
        Value::String(keys) if !keys.is_empty() => Some(keys.to_string()),
        _ => None,
    }
}

fn millis(unix_nano: u64) -> u64 {
    unix_nano / 1_000_000
}

fn cost_ms(start: u64, end: u64) -> u64 {
    end.saturating_sub(start) / 1_000_000
}

/// MessageType's ordinal: Normal_Msg 0, Trans_Msg_Half 1, Delay_Msg 3, Order_Msg 4.
fn message_type(span: &Span) -> u8 {
    match text(span, names::MESSAGING_ROCKETMQ_MESSAGE_TYPE) {
        Some("transaction") => 1,
        Some("delay") => 3,
        Some("fifo") => 4,
        _ => 0,
    }
}

/// The broker that stored the message: from its offsetMsgId (the store host's IPv4 address and
/// port come first), else the server the client sent to.
fn store_host(span: &Span) -> Option<String> {
    if let Some(host) = text(span, names::MQTRACE_OFFSET_MSG_ID).and_then(offset_msg_id_host) {
        return Some(host);
    }
    let address = text(span, names::SERVER_ADDRESS)?;
    let port = int(span, names::SERVER_PORT)?;
    Some(format!("{address}:{port}"))
}

/// `7F00000100002A9F…` → `127.0.0.1:10911` (an IPv4 store host: 32 hex digits).
fn offset_msg_id_host(id: &str) -> Option<String> {
    if id.len() != 32 {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(id.get(2 * i..2 * i + 2)?, 16).ok();
    let port = u32::from_str_radix(id.get(8..16)?, 16).ok()?;
    Some(format!(
        "{}.{}.{}.{}:{port}",
        byte(0)?,
        byte(1)?,
        byte(2)?,
        byte(3)?
    ))
}

#[cfg(test)]
mod tests;
