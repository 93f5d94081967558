//! What correlation hands the stages after it: one event per message sent, received or
//! settled, with when, how it ended and where it was seen.

use std::{net::SocketAddr, sync::Arc};

use serde::Serialize;

use crate::{
    decoder::{MessageMeta, RequestCode, Rpc, Verdict},
    memory::HeapSize,
    sources::{EndCause, SeenAs},
};

/// Where an event was seen: the traced process and its peer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Endpoint {
    pub pid: u32,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// How the connection's bytes were seen.
    pub seen_as: SeenAs,
    /// Set when the traced process is the broker of the connection (it received the
    /// request): the client it served, whose address is `peer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<Arc<ServedClient>>,
    /// Set when the event was seen as a RocketMQ 5 gRPC call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc: Option<Rpc>,
}

impl Endpoint {
    /// The event is the broker's view of a client's request.
    pub fn is_broker(&self) -> bool {
        self.client.is_some()
    }
}

/// What the broker's side of a connection tells about the client on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServedClient {
    /// The id its heartbeats give (`ip@instance`), once one was seen on the connection.
    pub client_id: Option<String>,
    /// Its language and version: remoting's version code from the request's header, or a
    /// gRPC client's own version (`x-mq-client-version`, such as 5.0.0).
    pub language: String,
    pub version: String,
}

/// Why the agent cannot tell how a request ended: it knows it may have missed the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unseen {
    /// Bytes of the connection's response stream were not captured (ring buffer full, the
    /// per-syscall cap, a failed copy).
    CaptureGap,
    /// The kernel dropped records while the request waited (the ring buffer was full).
    CaptureLost,
    /// The process was deselected while the request waited.
    Deselected,
    /// The agent stopped copying the connection.
    NotFollowed,
    /// The agent stopped while the request waited.
    AgentStopped,
    /// The capture file ended while the request waited.
    CaptureEnded,
}

impl Unseen {
    pub fn name(self) -> &'static str {
        match self {
            Unseen::CaptureGap => "capture_gap",
            Unseen::CaptureLost => "capture_lost",
            Unseen::Deselected => "deselected",
            Unseen::NotFollowed => "not_followed",
            Unseen::AgentStopped => "agent_stopped",
            Unseen::CaptureEnded => "capture_ended",
        }
    }

    /// Why the agent may have missed a response on a connection it stopped following; None
    /// when the connection really closed (the agent saw it all: no response came).
    pub(super) fn of(cause: EndCause) -> Option<Self> {
        match cause {
            EndCause::Closed => None,
            EndCause::Deselected => Some(Unseen::Deselected),
            EndCause::NotFollowed => Some(Unseen::NotFollowed),
            EndCause::CaptureEnded => Some(Unseen::CaptureEnded),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Outcome {
    Ok,
    /// `error_type` is the response code's name, or "timeout".
    Error {
        error_type: String,
        message: Option<String>,
    },
    /// No response seen, and the agent knows why it may have missed it.
    Unseen(Unseen),
}

impl From<Verdict> for Outcome {
    fn from(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Ok => Outcome::Ok,
            Verdict::Failed {
                error_type,
                message,
            } => Outcome::Error {
                error_type,
                message,
            },
        }
    }
}

/// What identifies a message to a person beyond its ID, carried by every event of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MessageLabels {
    pub tags: Option<String>,
    pub keys: Vec<String>,
    /// The W3C trace context the producer's application put in the message.
    pub traceparent: Option<String>,
}

impl HeapSize for MessageLabels {
    fn heap_bytes(&self) -> usize {
        self.tags.heap_bytes() + self.keys.heap_bytes() + self.traceparent.heap_bytes()
    }
}

impl MessageLabels {
    pub fn of(message: &MessageMeta) -> Self {
        Self {
            tags: message.tags().map(String::from),
            keys: message.keys().into_iter().map(String::from).collect(),
            traceparent: message.properties.traceparent().map(String::from),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SendEvent {
    pub key: String,
    pub message: MessageMeta,
    pub producer_group: Option<String>,
    /// Messages in the request (1 unless batched).
    pub batch_size: usize,
    pub offset_msg_id: Option<String>,
    pub queue_offset: Option<i64>,
    /// 1 for the first send of this message this agent saw, 2 for the next (a retry), ...
    pub attempt: u32,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub outcome: Outcome,
    pub endpoint: Endpoint,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReceiveEvent {
    pub key: String,
    pub message: MessageMeta,
    /// Shared by the messages of one response.
    pub consumer_group: Option<Arc<str>>,
    /// PULL_MESSAGE, LITE_PULL_MESSAGE, POP_MESSAGE or PEEK_MESSAGE.
    pub via: RequestCode,
    pub batch_size: usize,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub endpoint: Endpoint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Settlement {
    /// POP mode: the consumer acknowledged it.
    Ack,
    /// POP mode: the consumer changed its invisible time (asks for redelivery later).
    ChangeInvisibleTime,
    /// The consumer failed it and sent it back for a retry.
    SendBack,
    /// The consumer failed it once more than the group may retry: the broker moves it to the
    /// dead-letter queue (`%DLQ%group`) instead of redelivering it.
    DeadLetter,
    /// Pull mode: the group's committed offset passed the message.
    OffsetCommitted,
    /// A transactional half message was committed or rolled back.
    TransactionCommit,
    TransactionRollback,
}

impl Settlement {
    /// The span's operation name.
    pub fn operation(self) -> &'static str {
        match self {
            Settlement::Ack => "ack",
            Settlement::ChangeInvisibleTime => "nack",
            Settlement::SendBack => "send_back",
            Settlement::DeadLetter => "dead_letter",
            Settlement::OffsetCommitted => "commit_offset",
            Settlement::TransactionCommit => "commit",
            Settlement::TransactionRollback => "rollback",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SettleEvent {
    pub key: String,
    pub settlement: Settlement,
    pub consumer_group: Option<String>,
    /// Where the settlement happens: the message's topic, or the retry or dead-letter topic
    /// it goes to.
    pub topic: Option<String>,
    pub labels: MessageLabels,
    /// The delivery it settles was the message's n-th redelivery.
    pub reconsume_times: Option<i32>,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub outcome: Outcome,
    pub endpoint: Endpoint,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum MessageEvent {
    Send(SendEvent),
    Receive(ReceiveEvent),
    Settle(SettleEvent),
}

impl MessageEvent {
    /// The message's identity: its UNIQ_KEY, else its offsetMsgId.
    pub fn key(&self) -> &str {
        match self {
            MessageEvent::Send(e) => &e.key,
            MessageEvent::Receive(e) => &e.key,
            MessageEvent::Settle(e) => &e.key,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        match self {
            MessageEvent::Send(e) => &e.endpoint,
            MessageEvent::Receive(e) => &e.endpoint,
            MessageEvent::Settle(e) => &e.endpoint,
        }
    }
}
