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

struct Delivery {
    request_id: String,
    consumed_from_ms: u64,
}

/// Makes records of spans; remembers each delivery until it is settled.
pub struct RecordMaker {
    region: String,
    trace_topic: String,
    view: View,
    /// (consumer group, message id) → its latest delivery.
    deliveries: Bounded<(String, String), Delivery>,
}

impl RecordMaker {
    pub fn new(region: &str, trace_topic: &str, view: View) -> Self {
        Self {
            region: region.to_string(),
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
        if topic == self.trace_topic {
            return match (broker_side, pid) {
                (false, Some(pid)) => Made::OwnTrace(pid),
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
        let operation = span.name.split(' ').next().unwrap_or_default();
        let keys = keys(span);
        let text = match operation {
            "send" | "store" => self.publish(span, topic, msg_id, &keys),
            "receive" | "deliver" => self.delivery(span, msg_id, &keys),
            "ack" | "commit_offset" | "nack" | "send_back" | "dead_letter" => {
                self.settlement(span, operation, msg_id, &keys)
            }
            "commit" | "rollback" => self.end_transaction(span, operation, topic, msg_id, &keys),
            _ => None,
        };
        let Some(text) = text else {
            return Made::Nothing;
        };
        let mut trace_keys = vec![msg_id.to_string()];
        if let Some(keys) = keys {
            trace_keys.push(keys);
        }
        Made::Record(Record {
            pid: pid.filter(|_| !broker_side),
            may_be_doubled: !broker_side && span.attributes.get(names::RPC_SYSTEM).is_none(),
            text,
            keys: trace_keys,
        })
    }

    fn publish(
        &self,
        span: &Span,
        topic: &str,
        msg_id: &str,
        keys: &Option<String>,
    ) -> Option<String> {
        let group = text(span, names::MESSAGING_ROCKETMQ_CLIENT_GROUP);
        let mut record = String::with_capacity(256);
        let _ = write!(
            record,
            "Pub\x01{}\x01{}\x01{}\x01{topic}\x01{msg_id}\x01{}\x01{}\x01{}\x01{}\x01{}\x01{}\x01{}\x01{}\x02",
            millis(span.start_unix_nano),
            self.region,
            or_null(group),
            or_null(text(span, names::MESSAGING_ROCKETMQ_MESSAGE_TAG)),
            or_null(keys.as_deref()),
            or_null(store_host(span).as_deref()),
            int(span, names::MESSAGING_MESSAGE_BODY_SIZE).unwrap_or(0),
            cost_ms(span.start_unix_nano, span.end_unix_nano),
            message_type(span),
            or_null(text(span, names::MQTRACE_OFFSET_MSG_ID)),
            span.status != Status::Error,
        );
        Some(record)
    }

    /// SubBefore: the message handed to the consumer, its consumption begins.
    fn delivery(&mut self, span: &Span, msg_id: &str, keys: &Option<String>) -> Option<String> {
        let group = text(span, names::MESSAGING_CONSUMER_GROUP_NAME)?;
        let request_id = span.span_id.hex();
        let consumed_from_ms = millis(span.end_unix_nano);
        let record = format!(
            "SubBefore\x01{consumed_from_ms}\x01{}\x01{group}\x01{request_id}\x01{msg_id}\x01{}\x01{}\x02",
            self.region,
            int(span, names::MQTRACE_RECONSUME_TIMES).unwrap_or(0),
            or_null(keys.as_deref()),
        );
        self.deliveries.insert(
            (group.to_string(), msg_id.to_string()),
            Delivery {
                request_id,
                consumed_from_ms,
            },
            0,
        );
        Some(record)
    }

    /// SubAfter: how the consumption ended, paired with its delivery's SubBefore by request
    /// id; a settlement of a delivery not seen gets its own id (the console shows it alone).
    fn settlement(
        &mut self,
        span: &Span,
        operation: &str,
        msg_id: &str,
        keys: &Option<String>,
    ) -> Option<String> {
        let group = text(span, names::MESSAGING_CONSUMER_GROUP_NAME)?;
        let settled_at_ms = millis(span.start_unix_nano);
        let (request_id, cost) = match self
            .deliveries
            .remove(&(group.to_string(), msg_id.to_string()))
        {
            Some(delivery) => (
                delivery.request_id,
                settled_at_ms.saturating_sub(delivery.consumed_from_ms),
            ),
            None => (span.span_id.hex(), 0),
        };
        let success = matches!(operation, "ack" | "commit_offset") && span.status != Status::Error;
        // ConsumeReturnType: SUCCESS 0, FAILED 4.
        let context_code = if success { 0 } else { 4 };
        Some(format!(
            "SubAfter\x01{request_id}\x01{msg_id}\x01{cost}\x01{success}\x01{}\x01{context_code}\x01{settled_at_ms}\x01{group}\x02",
            or_null(keys.as_deref()),
        ))
    }

    fn end_transaction(
        &self,
        span: &Span,
        operation: &str,
        topic: &str,
        msg_id: &str,
        keys: &Option<String>,
    ) -> Option<String> {
        let state = if operation == "commit" {
            "COMMIT_MESSAGE"
        } else {
            "ROLLBACK_MESSAGE"
        };
        // MessageType: Trans_msg_Commit 2 (a rollback too: the half message's end).
        Some(format!(
            "EndTransaction\x01{}\x01{}\x01{}\x01{topic}\x01{msg_id}\x01{}\x01{}\x01{}\x012\x01{msg_id}\x01{state}\x01false\x02",
            millis(span.start_unix_nano),
            self.region,
            or_null(text(span, names::MESSAGING_ROCKETMQ_CLIENT_GROUP)),
            or_null(text(span, names::MESSAGING_ROCKETMQ_MESSAGE_TAG)),
            or_null(keys.as_deref()),
            or_null(store_host(span).as_deref()),
        ))
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

fn or_null(text: Option<&str>) -> &str {
    text.filter(|t| !t.is_empty()).unwrap_or("null")
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
