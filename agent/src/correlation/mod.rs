//! Correlation: decoded commands into message events keyed by message ID.
//!
//! Requests are paired with their responses on (connection, opaque). Only the client side of
//! a connection makes events (the process that sent the request: producer or consumer); what a
//! broker's own connections show is the same traffic seen from the other end. Settlements that
//! carry no message ID (acks, offset commits, send-backs) are resolved through a bounded index
//! of the messages this host received.

mod index;

use std::{collections::HashMap, net::SocketAddr};

use serde::Serialize;

use crate::{
    decoder::{
        DecodedCommand, MessageMeta, RequestCode, ResponseCode,
        operation::{Operation, SendResult},
    },
    sources::{ConnectionId, Direction},
};
use index::ReceivedIndex;

/// Requests in flight per agent at most; the oldest are ended as timed out beyond it.
const MAX_PENDING: usize = 65_536;
/// A request with no response after this long ends as an error.
pub const DEFAULT_TIMEOUT_NS: u64 = 30_000_000_000;

/// The ID a message is followed by: the UNIQ_KEY its producer set, else (clients that set
/// none) the broker's offsetMsgId, which both sides can know.
pub fn message_key(meta: &MessageMeta, offset_msg_id: Option<&str>) -> Option<String> {
    meta.msg_id
        .clone()
        .or_else(|| meta.offset_msg_id.clone())
        .or_else(|| offset_msg_id.map(String::from))
}

/// Where an event was seen: the traced process and its peer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Endpoint {
    pub pid: u32,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Outcome {
    Ok,
    /// `error_type` is the response code's name, or "timeout".
    Error {
        error_type: String,
        message: Option<String>,
    },
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
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub outcome: Outcome,
    pub endpoint: Endpoint,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReceiveEvent {
    pub key: String,
    pub message: MessageMeta,
    pub consumer_group: Option<String>,
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
    /// Pull mode: the group's committed offset passed the message.
    OffsetCommitted,
    /// A transactional half message was committed or rolled back.
    TransactionCommit,
    TransactionRollback,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SettleEvent {
    pub key: String,
    pub settlement: Settlement,
    pub consumer_group: Option<String>,
    pub topic: Option<String>,
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

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CorrelationCounters {
    pub sends: u64,
    pub receives: u64,
    pub settles: u64,
    pub timeouts: u64,
    /// Requests the traced process received (it is the broker of that connection).
    pub server_side_requests: u64,
    /// Messages without any ID (no UNIQ_KEY and no offsetMsgId): no trace can be made.
    pub messages_without_id: u64,
    /// Settlements whose message this host never saw received.
    pub settles_unresolved: u64,
    pub pending_evicted: u64,
}

struct Pending {
    request: DecodedCommand,
    deadline_ns: u64,
}

pub struct Correlator {
    /// Added to command timestamps to make them Unix time (0 for captures, which are).
    clock_offset_ns: i64,
    timeout_ns: u64,
    pending: HashMap<(ConnectionId, i32), Pending>,
    received: ReceivedIndex,
    pub counters: CorrelationCounters,
}

impl Correlator {
    pub fn new(clock_offset_ns: i64, timeout_ns: u64) -> Self {
        Self {
            clock_offset_ns,
            timeout_ns,
            pending: HashMap::new(),
            received: ReceivedIndex::default(),
            counters: CorrelationCounters::default(),
        }
    }

    fn unix(&self, ns: u64) -> u64 {
        ns.saturating_add_signed(self.clock_offset_ns)
    }

    pub fn push(&mut self, command: DecodedCommand, out: &mut Vec<MessageEvent>) {
        let request_direction = if command.command.is_response() {
            crate::decoder::opposite(command.command.direction)
        } else {
            command.command.direction
        };
        // Ingress requests: this process is the broker of the connection.
        if request_direction == Direction::Ingress {
            if !command.command.is_response() {
                self.counters.server_side_requests += 1;
            }
            return;
        }
        let key = (command.connection, command.command.header.opaque);
        if command.command.is_response() {
            if let Some(pending) = self.pending.remove(&key) {
                self.complete(pending.request, Some(&command), out);
            }
            return;
        }
        if command.command.header.is_oneway() {
            return self.complete(command, None, out);
        }
        if self.pending.len() >= MAX_PENDING {
            self.counters.pending_evicted += self.pending.len() as u64;
            self.pending.clear();
        }
        // A long poll may rightly wait its suspend time before answering.
        let suspend_ms: u64 = command
            .command
            .header
            .ext("suspendTimeoutMillis")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let deadline_ns = command.command.end_ns + self.timeout_ns + suspend_ms * 1_000_000;
        self.pending.insert(
            key,
            Pending {
                request: command,
                deadline_ns,
            },
        );
    }

    /// Ends requests whose response did not come by `now_ns` (the sources' clock) as errors.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<MessageEvent>) {
        let expired: Vec<(ConnectionId, i32)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_ns <= now_ns)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            let pending = self.pending.remove(&key).expect("listed");
            self.counters.timeouts += 1;
            self.complete(pending.request, None, out);
        }
    }

    /// Ends every request still waiting (end of a capture): as timeouts.
    pub fn finish(&mut self, out: &mut Vec<MessageEvent>) {
        self.expire(u64::MAX, out);
    }

    fn endpoint(c: &DecodedCommand) -> Endpoint {
        Endpoint {
            pid: c.pid,
            local: c.local,
            peer: c.peer,
        }
    }

    /// Events for a request and its response (None: oneway, or no response came).
    fn complete(
        &mut self,
        request: DecodedCommand,
        response: Option<&DecodedCommand>,
        out: &mut Vec<MessageEvent>,
    ) {
        let step = Step {
            start: self.unix(request.command.start_ns),
            end: self.unix(response.map_or(request.command.end_ns, |r| r.command.end_ns)),
            outcome: match response {
                Some(r) => outcome_of(r),
                None if request.command.header.is_oneway() => Outcome::Ok,
                None => Outcome::Error {
                    error_type: "timeout".into(),
                    message: Some("no response".into()),
                },
            },
            endpoint: Self::endpoint(&request),
        };
        let pulled = match response.map(|r| &r.operation) {
            Some(Operation::Pulled(pulled)) => Some(pulled),
            _ => None,
        };
        match &request.operation {
            Operation::Send(send) => {
                let result = match response.map(|r| &r.operation) {
                    Some(Operation::SendResult(r)) => Some(r),
                    _ => None,
                };
                for (index, message) in send.messages.iter().enumerate() {
                    let offset_msg_id = result.and_then(|r| r.offset_msg_ids.get(index).cloned());
                    let Some(key) = message_key(message, offset_msg_id.as_deref()) else {
                        self.counters.messages_without_id += 1;
                        continue;
                    };
                    self.counters.sends += 1;
                    out.push(MessageEvent::Send(SendEvent {
                        key,
                        message: message.clone(),
                        producer_group: send.producer_group.clone(),
                        batch_size: send.messages.len(),
                        queue_offset: result
                            .and_then(|r: &SendResult| r.queue_offset.map(|o| o + index as i64)),
                        offset_msg_id,
                        start_unix_ns: step.start,
                        end_unix_ns: step.end,
                        outcome: step.outcome.clone(),
                        endpoint: step.endpoint.clone(),
                    }));
                }
            }
            Operation::Pull(pull) => {
                if let Some(pulled) = pulled {
                    let via = if pull.lite {
                        RequestCode::LitePullMessage
                    } else {
                        RequestCode::PullMessage
                    };
                    self.received_messages(
                        &pulled.messages,
                        pull.consumer_group.as_deref(),
                        via,
                        &step,
                        out,
                    );
                }
                // A pull also commits the group's offset on that queue.
                if let (Some(group), Some(topic), Some(queue), Some(commit)) = (
                    &pull.consumer_group,
                    &pull.topic,
                    pull.queue_id,
                    pull.commit_offset,
                ) {
                    self.offset_committed(group, topic, queue, commit, &step, out);
                }
            }
            Operation::Pop(pop) => {
                if let Some(pulled) = pulled {
                    self.received_messages(
                        &pulled.messages,
                        pop.consumer_group.as_deref(),
                        RequestCode::PopMessage,
                        &step,
                        out,
                    );
                }
            }
            Operation::Ack(ack) | Operation::ChangeInvisibleTime(ack) => {
                let settlement = if matches!(request.operation, Operation::Ack(_)) {
                    Settlement::Ack
                } else {
                    Settlement::ChangeInvisibleTime
                };
                let found = match (&ack.topic, ack.queue_id, ack.offset) {
                    (Some(topic), Some(queue), Some(offset)) => {
                        self.received.by_position(topic, queue, offset)
                    }
                    _ => None,
                };
                self.settle(
                    found,
                    settlement,
                    ack.consumer_group.clone(),
                    ack.topic.clone(),
                    step,
                    out,
                );
            }
            Operation::SendBack(back) => {
                let found = back
                    .origin_msg_id
                    .as_deref()
                    .and_then(|id| self.received.by_any_id(id));
                self.settle(
                    found,
                    Settlement::SendBack,
                    back.consumer_group.clone(),
                    back.origin_topic.clone(),
                    step,
                    out,
                );
            }
            Operation::UpdateConsumerOffset(update) => {
                if let (Some(group), Some(topic), Some(queue), Some(commit)) = (
                    &update.consumer_group,
                    &update.topic,
                    update.queue_id,
                    update.commit_offset,
                ) {
                    self.offset_committed(group, topic, queue, commit, &step, out);
                }
            }
            Operation::EndTransaction(tx) => {
                let settlement = match tx.commit_or_rollback {
                    Some(8) => Settlement::TransactionCommit,
                    Some(12) => Settlement::TransactionRollback,
                    _ => return,
                };
                self.settle(
                    tx.msg_id.clone(),
                    settlement,
                    tx.producer_group.clone(),
                    tx.topic.clone(),
                    step,
                    out,
                );
            }
            _ => {}
        }
    }

    fn received_messages(
        &mut self,
        messages: &[MessageMeta],
        group: Option<&str>,
        via: RequestCode,
        step: &Step,
        out: &mut Vec<MessageEvent>,
    ) {
        for message in messages {
            let Some(key) = message_key(message, None) else {
                self.counters.messages_without_id += 1;
                continue;
            };
            self.received.insert(&key, message, group);
            self.counters.receives += 1;
            out.push(MessageEvent::Receive(ReceiveEvent {
                key,
                message: message.clone(),
                consumer_group: group.map(String::from),
                via,
                batch_size: messages.len(),
                start_unix_ns: step.start,
                end_unix_ns: step.end,
                endpoint: step.endpoint.clone(),
            }));
        }
    }

    fn offset_committed(
        &mut self,
        group: &str,
        topic: &str,
        queue: i32,
        commit: i64,
        step: &Step,
        out: &mut Vec<MessageEvent>,
    ) {
        for key in self.received.committed(group, topic, queue, commit) {
            let step = Step {
                outcome: Outcome::Ok,
                ..step.clone()
            };
            self.settle(
                Some(key),
                Settlement::OffsetCommitted,
                Some(group.to_string()),
                Some(topic.to_string()),
                step,
                out,
            );
        }
    }

    fn settle(
        &mut self,
        key: Option<String>,
        settlement: Settlement,
        group: Option<String>,
        topic: Option<String>,
        step: Step,
        out: &mut Vec<MessageEvent>,
    ) {
        let Some(key) = key else {
            self.counters.settles_unresolved += 1;
            return;
        };
        self.counters.settles += 1;
        out.push(MessageEvent::Settle(SettleEvent {
            key,
            settlement,
            consumer_group: group,
            topic,
            start_unix_ns: step.start,
            end_unix_ns: step.end,
            outcome: step.outcome,
            endpoint: step.endpoint,
        }));
    }
}

/// When a request ran, how it ended, and where: what every event of it shares.
#[derive(Clone)]
struct Step {
    start: u64,
    end: u64,
    outcome: Outcome,
    endpoint: Endpoint,
}

fn outcome_of(response: &DecodedCommand) -> Outcome {
    let code = ResponseCode::from_code(response.command.header.code);
    let is_send = response
        .command
        .request_code
        .is_some_and(|c| c.is_single_send() || c == RequestCode::SendBatchMessage);
    let pulled = response
        .command
        .request_code
        .is_some_and(RequestCode::returns_messages);
    let ok = if is_send {
        code.stored()
    } else if pulled {
        // Nothing new is not a failure of a pull.
        matches!(
            code,
            ResponseCode::Success
                | ResponseCode::PullNotFound
                | ResponseCode::PullRetryImmediately
                | ResponseCode::NoMessage
                | ResponseCode::PollingTimeout
        )
    } else {
        code == ResponseCode::Success
    };
    if ok {
        Outcome::Ok
    } else {
        let error_type = match code {
            ResponseCode::Other(n) => format!("CODE_{n}"),
            named => serde_json::to_value(named)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_else(|| format!("{named:?}")),
        };
        Outcome::Error {
            error_type,
            message: response.command.header.remark.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
