//! What each operation means for the messages it names: a request, with its response or how
//! it ended without one, made into send, receive and settle events.

use std::{rc::Rc, sync::Arc};

use super::{
    Correlator, Counted, MessageEvent, MessageLabels, Outcome, ReceiveEvent, SendEvent,
    SettleEvent, Settlement, Step, Unanswered,
    index::Received,
    message_key::{received_message_key, sent_message_key, settled_message_key},
};
use crate::{
    decoder::{
        DecodedCommand, MessageMeta, RequestCode,
        operation::{
            AckRequest, EndTransaction, Operation, PullRequest, Pulled, SendBack, SendRequest,
            SendResult,
        },
    },
    sources::Direction,
};

/// Times a message may be consumed again when the send-back does not say (the broker's
/// default `retryMaxTimes`).
const DEFAULT_MAX_RECONSUME_TIMES: i32 = 16;

impl Correlator {
    /// Events for a request and its response (None: oneway, or no response came, and
    /// `unanswered` says how it ended).
    pub(super) fn complete(
        &mut self,
        request: DecodedCommand,
        response: Option<DecodedCommand>,
        unanswered: Unanswered,
        out: &mut Vec<MessageEvent>,
    ) {
        if request.command.direction == Direction::Ingress {
            if self.forwarders.contains(&request.pid) {
                self.counters.relayed_requests += 1;
                return;
            }
        } else if request.serving_process || response.as_ref().is_some_and(|r| r.serving_process) {
            self.counters.serving_process_requests += 1;
            return;
        }
        // Another agent's request still passes through the indexes (a later settlement or
        // retry of its message is this agent's), but makes no events here.
        let owned = self.owns_made_at(request.command.start_ns);
        let (made_before, counted_before) = (out.len(), (!owned).then(|| self.counters.clone()));
        let step = self.step(&request, response.as_ref(), unanswered);
        let broker_side = step.endpoint.is_broker();
        // The response's messages move into the events: not cloned, one by one.
        let (pulled, result) = match response.map(|r| r.operation) {
            Some(Operation::Pulled(pulled)) => (Some(pulled), None),
            Some(Operation::SendResult(result)) => (None, Some(result)),
            _ => (None, None),
        };
        match &request.operation {
            Operation::Send(send) => self.sent(send, result.as_ref(), &step, out),
            Operation::Pull(pull) => self.pulled(pull, pulled, &step, out),
            Operation::Pop(pop) => {
                if let Some(pulled) = pulled {
                    let group = pop.consumer_group.as_deref();
                    let via = RequestCode::PopMessage;
                    self.received_messages(pulled.messages, group, via, &step, out);
                }
            }
            Operation::Ack(ack) => self.acked(ack, Settlement::Ack, step),
            Operation::ChangeInvisibleTime(ack) => {
                self.acked(ack, Settlement::ChangeInvisibleTime, step)
            }
            Operation::SendBack(back) => self.sent_back(back, step),
            Operation::UpdateConsumerOffset(update) => {
                if let (Some(group), Some(topic), Some(queue), Some(commit)) = (
                    &update.consumer_group,
                    &update.topic,
                    update.queue_id,
                    update.commit_offset,
                ) {
                    self.offset_committed(group, topic, queue, commit, &step);
                }
            }
            Operation::EndTransaction(tx) => self.transaction_ended(tx, step, out),
            _ => {}
        }
        if let Some(counted) = counted_before {
            self.counters = counted;
            self.counters.left_to_other_agent += 1;
            out.truncate(made_before);
        }
        let settled = self.settled.len() as u64;
        *if broker_side {
            &mut self.counters.broker_reports
        } else {
            &mut self.counters.settles
        } += settled;
        out.append(&mut self.settled);
    }

    /// When the request ran, how it ended and where.
    fn step(
        &mut self,
        request: &DecodedCommand,
        response: Option<&DecodedCommand>,
        unanswered: Unanswered,
    ) -> Step {
        let outcome = match (response, unanswered) {
            (Some(r), _) => r.command.verdict().into(),
            (None, _) if request.command.header.is_oneway() => Outcome::Ok,
            (None, Unanswered::Unseen(reason)) => {
                self.counters.unseen_responses.count(reason);
                Outcome::Unseen(reason)
            }
            (None, Unanswered::TimedOut) => Outcome::Error {
                error_type: "timeout".into(),
                message: Some("no response".into()),
            },
            (None, Unanswered::Closed) => Outcome::Error {
                error_type: "connection_closed".into(),
                message: Some("the connection closed before a response".into()),
            },
        };
        // A response read before its request's write returned ends no earlier than the write.
        let end_ns = response
            .map_or(request.command.end_ns, |r| r.command.end_ns)
            .max(request.command.end_ns);
        Step {
            owned: self.owns_made_at(request.command.start_ns),
            start: self.unix(request.command.start_ns),
            end: self.unix(end_ns),
            end_ns,
            outcome,
            endpoint: self.endpoint(request),
        }
    }

    fn sent(
        &mut self,
        send: &SendRequest,
        result: Option<&SendResult>,
        step: &Step,
        out: &mut Vec<MessageEvent>,
    ) {
        // A consumer whose send-back failed sends the message to the retry topic itself (or
        // to the dead-letter topic): a settlement, not a new message.
        if let Some(settlement) = send.topic.as_deref().and_then(settlement_of_resend) {
            for message in &send.messages {
                self.resent(message, settlement, send.topic.clone(), step, out);
            }
            return;
        }
        for (index, message) in send.messages.iter().enumerate() {
            self.sent_message(message, index, send, result, step, out);
        }
    }

    fn pulled(
        &mut self,
        pull: &PullRequest,
        mut pulled: Option<Pulled>,
        step: &Step,
        out: &mut Vec<MessageEvent>,
    ) {
        if let Some(pulled) = &mut pulled {
            let via = if pull.lite {
                RequestCode::LitePullMessage
            } else {
                RequestCode::PullMessage
            };
            let messages = std::mem::take(&mut pulled.messages);
            self.received_messages(messages, pull.consumer_group.as_deref(), via, step, out);
        }
        if let (Some(pulled), Some(group), Some(topic), Some(queue)) =
            (&pulled, &pull.consumer_group, &pull.topic, pull.queue_id)
            && let Some(max) = pulled.max_offset
        {
            self.lags.pulled(group, topic, queue, max, step.end_ns);
        }
        // A pull also commits the group's offset on that queue.
        if let (Some(group), Some(topic), Some(queue), Some(commit)) = (
            &pull.consumer_group,
            &pull.topic,
            pull.queue_id,
            pull.commit_offset,
        ) {
            self.offset_committed(group, topic, queue, commit, step);
        }
    }

    /// An ack or a change of invisible time: gRPC names the messages; remoting, where they
    /// sit.
    fn acked(&mut self, ack: &AckRequest, settlement: Settlement, step: Step) {
        let by_id = !self.predecessor_running;
        let received = &self.seen(&step).received;
        let found: Vec<Option<Rc<Received>>> = match (&ack.topic, ack.queue_id, ack.offset) {
            _ if !ack.message_ids.is_empty() => ack
                .message_ids
                .iter()
                .map(|id| {
                    // A message received before this agent saw its connection (it started,
                    // or took over, in between) is still named by its ID, without labels;
                    // unless the agent it took over from, which may have seen it received,
                    // still runs: that one settles it.
                    received.by_any_id(id).or_else(|| {
                        (!id.is_empty() && by_id).then(|| {
                            Rc::new(Received {
                                key: settled_message_key(id).into(),
                                labels: MessageLabels::default(),
                                reconsume_times: None,
                                owned: step.owned,
                            })
                        })
                    })
                })
                .collect(),
            (Some(topic), Some(queue), Some(offset)) => {
                vec![received.by_position(topic, queue, offset)]
            }
            _ => vec![None],
        };
        for received in found {
            let (group, topic) = (ack.consumer_group.clone(), ack.topic.clone());
            let step = step.clone();
            self.settle(received.as_deref(), settlement, group, topic, step);
        }
    }

    fn sent_back(&mut self, back: &SendBack, step: Step) {
        let received = &self.seen(&step).received;
        let found = back
            .origin_msg_id
            .as_deref()
            .and_then(|id| received.by_any_id(id));
        // The broker's rule (`consumerSendMsgBack`): past the group's reconsume times, or
        // asked for with a negative delay level, the message goes to the DLQ.
        let max = back
            .max_reconsume_times
            .unwrap_or(DEFAULT_MAX_RECONSUME_TIMES);
        let dead = back.delay_level.is_some_and(|d| d < 0)
            || found
                .as_ref()
                .and_then(|r| r.reconsume_times)
                .is_some_and(|times| times >= max);
        let (settlement, topic) = match (&back.consumer_group, dead) {
            (Some(group), true) => (Settlement::DeadLetter, Some(format!("%DLQ%{group}"))),
            _ => (Settlement::SendBack, back.origin_topic.clone()),
        };
        let group = back.consumer_group.clone();
        self.settle(found.as_deref(), settlement, group, topic, step);
    }

    /// A transaction committed or rolled back: its message is named by ID alone.
    fn transaction_ended(&mut self, tx: &EndTransaction, step: Step, out: &mut Vec<MessageEvent>) {
        let settlement = match tx.commit_or_rollback {
            Some(8) => Settlement::TransactionCommit,
            Some(12) => Settlement::TransactionRollback,
            _ => return,
        };
        let Some(key) = tx.msg_id.clone() else {
            self.counters.settles_unresolved += 1;
            return;
        };
        let sent = &self.seen(&step).sent;
        let labels = sent.labels(&key).unwrap_or_default();
        let topic = sent
            .topic(&key)
            .map(String::from)
            .or_else(|| tx.topic.clone());
        self.count(&step, Counted::Settle);
        out.push(MessageEvent::Settle(SettleEvent {
            key,
            settlement,
            consumer_group: tx.producer_group.clone(),
            topic,
            labels,
            reconsume_times: None,
            start_unix_ns: step.start,
            end_unix_ns: step.end,
            outcome: step.outcome,
            endpoint: step.endpoint,
        }));
    }

    fn sent_message(
        &mut self,
        message: &MessageMeta,
        index: usize,
        send: &SendRequest,
        result: Option<&SendResult>,
        step: &Step,
        out: &mut Vec<MessageEvent>,
    ) {
        let offset_msg_id = result.and_then(|r| r.offset_msg_ids.get(index).cloned());
        // The broker's UNIQ_KEY for a message sent without one (single sends only).
        let assigned = result
            .filter(|_| send.messages.len() == 1)
            .and_then(|r| r.transaction_id.as_deref());
        let Some(key) = sent_message_key(message, assigned, offset_msg_id.as_deref()) else {
            self.counters.messages_without_id += 1;
            return;
        };
        // Labels and topic are kept for transactional messages only: their end names them by
        // ID alone, and a check-back's end by the broker's half topic.
        let (labels, topic) = if message.properties.transaction_prepared() {
            (MessageLabels::of(message), send.topic.as_deref())
        } else {
            (MessageLabels::default(), None)
        };
        let attempt = self.seen(step).sent.record(&key, labels, topic);
        if attempt > 1 && !step.endpoint.is_broker() {
            self.counters.send_retries += 1;
        }
        self.count(step, Counted::Send);
        out.push(MessageEvent::Send(SendEvent {
            key,
            message: message.clone(),
            producer_group: send.producer_group.clone(),
            batch_size: send.messages.len(),
            queue_offset: result.and_then(|r| {
                r.queue_offset
                    .map(|o| o.saturating_add(i64::try_from(index).unwrap_or(i64::MAX)))
            }),
            offset_msg_id,
            attempt,
            start_unix_ns: step.start,
            end_unix_ns: step.end,
            outcome: step.outcome.clone(),
            endpoint: step.endpoint.clone(),
        }));
    }

    /// A message a consumer sent to a retry or dead-letter topic itself.
    fn resent(
        &mut self,
        message: &MessageMeta,
        settlement: Settlement,
        topic: Option<String>,
        step: &Step,
        out: &mut Vec<MessageEvent>,
    ) {
        let Some(key) = received_message_key(message) else {
            self.counters.messages_without_id += 1;
            return;
        };
        let group = topic
            .as_deref()
            .and_then(|t| t.split_once('%').map(|(_, rest)| rest))
            .and_then(|rest| rest.split_once('%').map(|(_, group)| group.to_string()));
        self.count(step, Counted::Settle);
        out.push(MessageEvent::Settle(SettleEvent {
            key,
            settlement,
            consumer_group: group,
            topic,
            labels: MessageLabels::of(message),
            reconsume_times: message.reconsume_times,
            start_unix_ns: step.start,
            end_unix_ns: step.end,
            outcome: step.outcome.clone(),
            endpoint: step.endpoint.clone(),
        }));
    }

    fn received_messages(
        &mut self,
        messages: Vec<MessageMeta>,
        group: Option<&str>,
        via: RequestCode,
        step: &Step,
        out: &mut Vec<MessageEvent>,
    ) {
        let batch_size = messages.len();
        let group_shared: Option<Arc<str>> = group.map(Arc::from);
        for message in messages {
            let Some(key) = received_message_key(&message) else {
                self.counters.messages_without_id += 1;
                continue;
            };
            self.seen(step)
                .received
                .insert(&key, &message, group, step.owned);
            self.count(step, Counted::Receive);
            out.push(MessageEvent::Receive(ReceiveEvent {
                key,
                message,
                consumer_group: group_shared.clone(),
                via,
                batch_size,
                start_unix_ns: step.start,
                end_unix_ns: step.end,
                endpoint: step.endpoint.clone(),
            }));
        }
    }

    fn offset_committed(&mut self, group: &str, topic: &str, queue: i32, commit: i64, step: &Step) {
        self.lags
            .committed(group, topic, queue, commit, step.end_ns);
        let passed = self
            .seen(step)
            .received
            .committed(group, topic, queue, commit);
        for received in passed {
            let step = Step {
                outcome: Outcome::Ok,
                ..step.clone()
            };
            self.settle(
                Some(&received),
                Settlement::OffsetCommitted,
                Some(group.to_string()),
                Some(topic.to_string()),
                step,
            );
        }
    }

    fn settle(
        &mut self,
        received: Option<&Received>,
        settlement: Settlement,
        group: Option<String>,
        topic: Option<String>,
        step: Step,
    ) {
        let Some(received) = received else {
            self.counters.settles_unresolved += 1;
            return;
        };
        if !received.owned {
            // Received while another agent owned the traffic: that one settles it.
            self.counters.left_to_other_agent += 1;
            return;
        }
        self.settled.push(MessageEvent::Settle(SettleEvent {
            key: received.key.to_string(),
            settlement,
            consumer_group: group,
            topic,
            labels: received.labels.clone(),
            reconsume_times: received.reconsume_times,
            start_unix_ns: step.start,
            end_unix_ns: step.end,
            outcome: step.outcome,
            endpoint: step.endpoint,
        }));
    }
}

/// Whether a request of this kind makes message events (what [`Correlator::complete`] reads).
pub(super) fn makes_events(operation: &Operation) -> bool {
    matches!(
        operation,
        Operation::Send(_)
            | Operation::Pull(_)
            | Operation::Pop(_)
            | Operation::Ack(_)
            | Operation::ChangeInvisibleTime(_)
            | Operation::SendBack(_)
            | Operation::UpdateConsumerOffset(_)
            | Operation::EndTransaction(_)
    )
}

/// A send to `%RETRY%group` or `%DLQ%group` is a consumer settling a message, not a producer.
fn settlement_of_resend(topic: &str) -> Option<Settlement> {
    if topic.starts_with("%RETRY%") {
        Some(Settlement::SendBack)
    } else if topic.starts_with("%DLQ%") {
        Some(Settlement::DeadLetter)
    } else {
        None
    }
}
