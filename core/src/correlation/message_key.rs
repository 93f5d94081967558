//! The message key: the one string by which every span of a message is keyed, which both ends
//! (producer and consumer, on hosts that never talk to each other) can know:
//!
//! 1. the `UNIQ_KEY` property the producer set (the ID applications see; Java, Go, C++ and
//!    Rust clients set it). Retries, delayed and transactional messages and every copy of the
//!    message keep it;
//! 2. for a single send without one (ali-ons, some older clients): the `UNIQ_KEY` a current
//!    broker assigns when it stores the message. The consumer reads it in the message's
//!    properties; the producer's side reads it in the send response's `transactionId` field,
//!    where Apache RocketMQ's broker (`SendMessageProcessor`, 4.x and 5.x) returns the stored
//!    message's `UNIQ_KEY`;
//! 3. else the broker's `offsetMsgId` (store host and commit-log offset): the producer reads
//!    it in the send response, the consumer computes it from the stored message. Brokers that
//!    assign no `UNIQ_KEY` leave the consumer only this.
//!
//! Limits: a batch sent without `UNIQ_KEY`s to a broker that assigns them joins by rule 3 only
//! where the broker returns no `UNIQ_KEY` for the batch, and a delayed or transactional message
//! without `UNIQ_KEY` on a broker that assigns none is stored again under a new `offsetMsgId`:
//! its consumers start a trace of their own. A send whose response the agent never saw has
//! only rule 1.

use mqtrace_protocol::MessageMeta;

/// The key of a message its producer sent: its `UNIQ_KEY`, else the one the broker assigned
/// (`assigned`, from the send response), else the broker's `offsetMsgId`.
pub fn sent_message_key(
    message: &MessageMeta,
    assigned: Option<&str>,
    offset_msg_id: Option<&str>,
) -> Option<String> {
    message
        .msg_id
        .as_deref()
        .or(assigned.filter(|id| !id.is_empty()))
        .or(offset_msg_id)
        .map(String::from)
}

/// The key of a message a consumer received (a stored message): its `UNIQ_KEY`, whoever set
/// it; else, for a copy the broker made of a message for a retry or the dead-letter queue, the
/// original's id, which the broker names in `ORIGIN_MESSAGE_ID` (its `offsetMsgId`, the
/// original's key when it had no `UNIQ_KEY` either); else its own `offsetMsgId`.
pub fn received_message_key(message: &MessageMeta) -> Option<String> {
    message
        .msg_id
        .as_deref()
        .or(message.properties.origin_message_id())
        .or(message.offset_msg_id.as_deref())
        .map(String::from)
}

/// The key of a message a gRPC settlement (ack, change of invisible time) names by ID: the ID a
/// 5.x client sees is the message's `UNIQ_KEY`, its key by rule 1.
pub fn settled_message_key(message_id: &str) -> &str {
    message_id
}
