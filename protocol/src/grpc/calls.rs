//! What a MessagingService call means, in the remoting decoder's operations: the request's
//! protobuf message into an [`Operation`], the response's messages into an [`Answer`].

use std::{collections::BTreeMap, net::SocketAddr};

use prost::Message as _;

use super::proto::{
    self as v2, AckMessageRequest, ChangeInvisibleDurationRequest, EndTransactionRequest,
    ForwardMessageToDeadLetterQueueRequest, ReceiveMessageRequest, SendMessageRequest,
    receive_message_response::Content,
};
use crate::{
    MessageMeta, Properties, RequestCode,
    operation::{
        AckRequest, EndTransaction, Operation, PopRequest, Pulled, SendBack, SendRequest,
        SendResult,
    },
};

/// The calls the tracer follows, and the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    SendMessage,
    ReceiveMessage,
    AckMessage,
    ChangeInvisibleDuration,
    ForwardMessageToDeadLetterQueue,
    EndTransaction,
    /// Routes, assignments, heartbeats, telemetry, ...: nothing about a message.
    Other,
}

impl Method {
    /// From the method part of the path.
    pub fn of(name: &str) -> Self {
        match name {
            "SendMessage" => Method::SendMessage,
            "ReceiveMessage" => Method::ReceiveMessage,
            "AckMessage" => Method::AckMessage,
            "ChangeInvisibleDuration" => Method::ChangeInvisibleDuration,
            "ForwardMessageToDeadLetterQueue" => Method::ForwardMessageToDeadLetterQueue,
            "EndTransaction" => Method::EndTransaction,
            _ => Method::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::SendMessage => "SendMessage",
            Method::ReceiveMessage => "ReceiveMessage",
            Method::AckMessage => "AckMessage",
            Method::ChangeInvisibleDuration => "ChangeInvisibleDuration",
            Method::ForwardMessageToDeadLetterQueue => "ForwardMessageToDeadLetterQueue",
            Method::EndTransaction => "EndTransaction",
            Method::Other => "Other",
        }
    }

    /// The remoting request that does the same, which the correlator knows.
    pub fn request_code(self) -> RequestCode {
        match self {
            Method::SendMessage => RequestCode::SendMessage,
            Method::ReceiveMessage => RequestCode::PopMessage,
            Method::AckMessage => RequestCode::AckMessage,
            Method::ChangeInvisibleDuration => RequestCode::ChangeMessageInvisibletime,
            Method::ForwardMessageToDeadLetterQueue => RequestCode::ConsumerSendMsgBack,
            Method::EndTransaction => RequestCode::EndTransaction,
            Method::Other => RequestCode::Other(-1),
        }
    }
}

/// Which followed call a request message is, from its shape alone (its header block did not
/// decode): the field numbers and wire types at its top level, which differ between them,
/// then a decode that must give the fields the call cannot do without.
pub fn infer(message: &[u8]) -> Option<Method> {
    const VARINT: u8 = 0;
    const LEN: u8 = 2;
    let fields = top_level_fields(message)?;
    let has = |number: u32, wire: u8| fields.contains(&(number, wire));
    let only = |allowed: &[u32]| {
        !fields.is_empty()
            && fields
                .iter()
                .all(|&(n, w)| w == LEN && allowed.contains(&n))
    };
    if only(&[1]) {
        let send = SendMessageRequest::decode(message).ok()?;
        let named = |m: &v2::Message| {
            m.system_properties
                .as_ref()
                .is_some_and(|p| !p.message_id.is_empty())
        };
        return send
            .messages
            .iter()
            .all(named)
            .then_some(Method::SendMessage);
    }
    if has(4, LEN) && has(5, VARINT) {
        let forward = ForwardMessageToDeadLetterQueueRequest::decode(message).ok()?;
        return (!forward.message_id.is_empty()).then_some(Method::ForwardMessageToDeadLetterQueue);
    }
    if has(4, LEN) && has(5, LEN) {
        let change = ChangeInvisibleDurationRequest::decode(message).ok()?;
        return (!change.message_id.is_empty()).then_some(Method::ChangeInvisibleDuration);
    }
    if has(2, LEN) && has(3, LEN) && has(4, VARINT) && !has(5, LEN) && !has(7, LEN) {
        let end = EndTransactionRequest::decode(message).ok()?;
        return (!end.message_id.is_empty() && !end.transaction_id.is_empty())
            .then_some(Method::EndTransaction);
    }
    if has(2, LEN) && has(4, VARINT) && !has(5, VARINT) {
        let receive = ReceiveMessageRequest::decode(message).ok()?;
        let topic = receive
            .message_queue
            .as_ref()
            .and_then(|q| q.topic.as_ref());
        return (name(receive.group.as_ref()).is_some() && name(topic).is_some())
            .then_some(Method::ReceiveMessage);
    }
    if only(&[1, 2, 3]) && has(3, LEN) {
        let ack = AckMessageRequest::decode(message).ok()?;
        let named = !ack.entries.is_empty() && ack.entries.iter().all(|e| !e.message_id.is_empty());
        return named.then_some(Method::AckMessage);
    }
    None
}

/// (field number, wire type) of each top-level field, None when the bytes are not protobuf.
fn top_level_fields(mut bytes: &[u8]) -> Option<Vec<(u32, u8)>> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let key = prost::encoding::decode_varint(&mut bytes).ok()?;
        let wire = (key & 7) as u8;
        let number = u32::try_from(key >> 3).ok().filter(|&n| n > 0)?;
        let skip = match wire {
            0 => {
                prost::encoding::decode_varint(&mut bytes).ok()?;
                0
            }
            1 => 8,
            2 => usize::try_from(prost::encoding::decode_varint(&mut bytes).ok()?).ok()?,
            5 => 4,
            _ => return None,
        };
        bytes = bytes.get(skip..)?;
        if !fields.contains(&(number, wire)) {
            fields.push((number, wire));
        }
    }
    Some(fields)
}

fn name(resource: Option<&v2::Resource>) -> Option<String> {
    resource.map(|r| r.name.clone()).filter(|n| !n.is_empty())
}

fn millis(seconds: i64, nanos: i32) -> i64 {
    seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(nanos) / 1_000_000)
}

/// A message's metadata in the remoting decoder's terms: its ID as UNIQ_KEY (the proxy maps
/// one to the other), tag, keys and trace context as the properties remoting carries them in.
pub fn message_meta(message: &v2::Message) -> MessageMeta {
    let system = message.system_properties.clone().unwrap_or_default();
    let mut properties: BTreeMap<String, String> =
        message.user_properties.clone().into_iter().collect();
    if !system.message_id.is_empty() {
        properties.insert("UNIQ_KEY".into(), system.message_id.clone());
    }
    if let Some(tag) = system.tag.filter(|t| !t.is_empty()) {
        properties.insert("TAGS".into(), tag);
    }
    if !system.keys.is_empty() {
        properties.insert("KEYS".into(), system.keys.join(" "));
    }
    if let Some(group) = system.message_group {
        properties.insert("__SHARDINGKEY".into(), group);
    }
    if let Some(context) = system.trace_context.filter(|c| !c.is_empty()) {
        properties.insert("traceparent".into(), context);
    }
    MessageMeta {
        msg_id: (!system.message_id.is_empty()).then_some(system.message_id),
        topic: name(message.topic.as_ref()),
        queue_id: system.queue_id,
        queue_offset: system.queue_offset,
        born_timestamp_ms: system.born_timestamp.map(|t| millis(t.seconds, t.nanos)),
        born_host: system.born_host.parse::<SocketAddr>().ok(),
        store_timestamp_ms: system.store_timestamp.map(|t| millis(t.seconds, t.nanos)),
        store_host: system.store_host.parse::<SocketAddr>().ok(),
        // The first delivery is attempt 1.
        reconsume_times: system.delivery_attempt.map(|a| a.saturating_sub(1).max(0)),
        body_len: message.body.len() as u64,
        properties: Properties(properties.into_iter().collect()),
        ..MessageMeta::default()
    }
}

/// The request of a followed call; None when it does not decode as the method's.
pub fn request(method: Method, message: &[u8]) -> Option<Operation> {
    Some(match method {
        Method::SendMessage => {
            let send = SendMessageRequest::decode(message).ok()?;
            let messages: Vec<MessageMeta> = send.messages.iter().map(message_meta).collect();
            Operation::Send(SendRequest {
                topic: messages.first().and_then(|m| m.topic.clone()),
                born_timestamp_ms: messages.first().and_then(|m| m.born_timestamp_ms),
                batch: messages.len() > 1,
                messages,
                ..SendRequest::default()
            })
        }
        Method::ReceiveMessage => {
            let receive = ReceiveMessageRequest::decode(message).ok()?;
            let queue = receive.message_queue.as_ref();
            Operation::Pop(PopRequest {
                consumer_group: name(receive.group.as_ref()),
                topic: name(queue.and_then(|q| q.topic.as_ref())),
                queue_id: queue.map(|q| q.id),
                max_msg_nums: Some(receive.batch_size),
                invisible_time_ms: receive
                    .invisible_duration
                    .map(|d| millis(d.seconds, d.nanos)),
                poll_time_ms: receive
                    .long_polling_timeout
                    .map(|d| millis(d.seconds, d.nanos)),
                order: None,
                attempt_id: receive.attempt_id,
            })
        }
        Method::AckMessage => {
            let ack = AckMessageRequest::decode(message).ok()?;
            Operation::Ack(AckRequest {
                consumer_group: name(ack.group.as_ref()),
                topic: name(ack.topic.as_ref()),
                message_ids: ack.entries.into_iter().map(|e| e.message_id).collect(),
                ..AckRequest::default()
            })
        }
        Method::ChangeInvisibleDuration => {
            let change = ChangeInvisibleDurationRequest::decode(message).ok()?;
            Operation::ChangeInvisibleTime(AckRequest {
                consumer_group: name(change.group.as_ref()),
                topic: name(change.topic.as_ref()),
                invisible_time_ms: change
                    .invisible_duration
                    .map(|d| millis(d.seconds, d.nanos)),
                message_ids: vec![change.message_id],
                ..AckRequest::default()
            })
        }
        Method::ForwardMessageToDeadLetterQueue => {
            let forward = ForwardMessageToDeadLetterQueueRequest::decode(message).ok()?;
            Operation::SendBack(SendBack {
                consumer_group: name(forward.group.as_ref()),
                origin_msg_id: Some(forward.message_id),
                origin_topic: name(forward.topic.as_ref()),
                // Straight to the dead-letter queue, as a negative delay level asks remoting.
                delay_level: Some(-1),
                max_reconsume_times: Some(forward.max_delivery_attempts),
                commit_log_offset: None,
            })
        }
        Method::EndTransaction => {
            let end = EndTransactionRequest::decode(message).ok()?;
            let commit_or_rollback = match v2::TransactionResolution::try_from(end.resolution) {
                Ok(v2::TransactionResolution::Commit) => 8,
                Ok(v2::TransactionResolution::Rollback) => 12,
                _ => 0,
            };
            Operation::EndTransaction(EndTransaction {
                topic: name(end.topic.as_ref()),
                msg_id: Some(end.message_id),
                transaction_id: Some(end.transaction_id),
                commit_or_rollback: Some(commit_or_rollback),
                ..EndTransaction::default()
            })
        }
        Method::Other => return None,
    })
}

/// What the response messages of a call said, gathered until its end.
#[derive(Debug, Default)]
pub struct Answer {
    /// RocketMQ's status (`Status.code`, `Status.message`).
    pub status: Option<(i32, String)>,
    pub messages: Vec<MessageMeta>,
    pub queue_offset: Option<i64>,
}

impl Answer {
    pub fn heap_bytes(&self) -> usize {
        self.messages.capacity() * std::mem::size_of::<MessageMeta>()
    }

    /// Takes one response message of `method` in.
    pub fn take(&mut self, method: Method, message: &[u8], max_messages: usize) -> bool {
        let status = match method {
            Method::SendMessage => match v2::SendMessageResponse::decode(message) {
                Ok(response) => {
                    self.queue_offset = response.entries.first().map(|e| e.offset);
                    response.status
                }
                Err(_) => return false,
            },
            Method::ReceiveMessage => match v2::ReceiveMessageResponse::decode(message) {
                Ok(response) => match response.content {
                    Some(Content::Status(status)) => Some(status),
                    Some(Content::Message(m)) => {
                        if self.messages.len() < max_messages {
                            self.messages.push(message_meta(&m));
                        }
                        None
                    }
                    _ => None,
                },
                Err(_) => return false,
            },
            Method::AckMessage => match v2::AckMessageResponse::decode(message) {
                Ok(response) => response.status,
                Err(_) => return false,
            },
            _ => match v2::StatusResponse::decode(message) {
                Ok(response) => response.status,
                Err(_) => return false,
            },
        };
        if let Some(status) = status {
            self.status = Some((status.code, status.message));
        }
        true
    }

    /// The response operation of `method`.
    pub fn operation(&mut self, method: Method) -> Operation {
        match method {
            Method::SendMessage => Operation::SendResult(SendResult {
                queue_offset: self.queue_offset,
                ..SendResult::default()
            }),
            Method::ReceiveMessage => Operation::Pulled(Pulled {
                messages: std::mem::take(&mut self.messages),
                ..Pulled::default()
            }),
            _ => Operation::Other,
        }
    }
}

/// gRPC's own status codes (grpc-status), which a call ends with when it failed below
/// RocketMQ (no `Status` message came).
pub fn grpc_status_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "GRPC_UNKNOWN_STATUS",
    }
}
