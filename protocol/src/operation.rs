//! Typed meaning of the commands the tracer cares about, from header fields (full names for
//! SEND_MESSAGE, one-letter keys for SEND_MESSAGE_V2) and bodies.

use serde::Serialize;

use super::{Command, MessageMeta, Properties, RequestCode, ResponseCode, header::Header};

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub enum Operation {
    Send(SendRequest),
    SendResult(SendResult),
    Pull(PullRequest),
    Pulled(Pulled),
    Pop(PopRequest),
    Ack(AckRequest),
    ChangeInvisibleTime(AckRequest),
    BatchAck {
        body: Option<serde_json::Value>,
    },
    SendBack(SendBack),
    EndTransaction(EndTransaction),
    CheckTransactionState(EndTransaction),
    UpdateConsumerOffset(OffsetUpdate),
    Heartbeat(Heartbeat),
    /// Anything else, kept as its code and ext fields in the command.
    Other,
}

impl Operation {
    /// The messages it carries (sends, pull and pop responses, transactions).
    pub fn messages(&self) -> Option<&Vec<MessageMeta>> {
        match self {
            Self::Send(send) => Some(&send.messages),
            Self::Pulled(pulled) => Some(&pulled.messages),
            Self::EndTransaction(t) | Self::CheckTransactionState(t) => Some(&t.messages),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SendRequest {
    pub producer_group: Option<String>,
    pub topic: Option<String>,
    pub queue_id: Option<i32>,
    pub sys_flag: i32,
    pub born_timestamp_ms: Option<i64>,
    pub reconsume_times: Option<i32>,
    pub max_reconsume_times: Option<i32>,
    pub batch: bool,
    pub broker_name: Option<String>,
    pub reply: bool,
    /// One per message: the inner messages of a batch, or the single message.
    pub messages: Vec<MessageMeta>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SendResult {
    pub status: Option<ResponseCode>,
    /// The broker's offsetMsgId(s), comma-joined for a batch.
    pub offset_msg_ids: Vec<String>,
    pub queue_id: Option<i32>,
    pub queue_offset: Option<i64>,
    pub transaction_id: Option<String>,
    pub batch_uniq_id: Option<String>,
    pub region_id: Option<String>,
    pub trace_on: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PullRequest {
    pub consumer_group: Option<String>,
    pub topic: Option<String>,
    pub queue_id: Option<i32>,
    pub queue_offset: Option<i64>,
    pub max_msg_nums: Option<i32>,
    pub commit_offset: Option<i64>,
    pub subscription: Option<String>,
    pub lite: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Pulled {
    pub status: Option<ResponseCode>,
    pub next_begin_offset: Option<i64>,
    pub min_offset: Option<i64>,
    pub max_offset: Option<i64>,
    pub messages: Vec<MessageMeta>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PopRequest {
    pub consumer_group: Option<String>,
    pub topic: Option<String>,
    pub queue_id: Option<i32>,
    pub max_msg_nums: Option<i32>,
    pub invisible_time_ms: Option<i64>,
    pub poll_time_ms: Option<i64>,
    pub order: Option<bool>,
    pub attempt_id: Option<String>,
}

/// ACK_MESSAGE and CHANGE_MESSAGE_INVISIBLETIME: no message ID, only where it sits; gRPC's
/// AckMessage and ChangeInvisibleDuration name the messages instead.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AckRequest {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub message_ids: Vec<String>,
    pub consumer_group: Option<String>,
    pub topic: Option<String>,
    pub queue_id: Option<i32>,
    pub offset: Option<i64>,
    pub extra_info: Option<String>,
    pub invisible_time_ms: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SendBack {
    pub consumer_group: Option<String>,
    pub commit_log_offset: Option<i64>,
    pub delay_level: Option<i32>,
    pub origin_msg_id: Option<String>,
    pub origin_topic: Option<String>,
    pub max_reconsume_times: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EndTransaction {
    pub topic: Option<String>,
    pub producer_group: Option<String>,
    pub commit_log_offset: Option<i64>,
    /// 0 unknown, 8 commit, 12 rollback.
    pub commit_or_rollback: Option<i32>,
    pub from_transaction_check: Option<bool>,
    pub msg_id: Option<String>,
    pub transaction_id: Option<String>,
    /// CHECK_TRANSACTION_STATE carries the half message in its body.
    pub messages: Vec<MessageMeta>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OffsetUpdate {
    pub consumer_group: Option<String>,
    pub topic: Option<String>,
    pub queue_id: Option<i32>,
    pub commit_offset: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Heartbeat {
    pub client_id: Option<String>,
    pub producer_groups: Vec<String>,
    pub consumer_groups: Vec<String>,
}

/// An ext field by any of its names (V1 full name, V2 one-letter key).
fn text(header: &Header, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| header.ext(n)).map(String::from)
}

fn number<T: std::str::FromStr>(header: &Header, names: &[&str]) -> Option<T> {
    names
        .iter()
        .find_map(|n| header.ext(n))
        .and_then(|v| v.trim().parse().ok())
}

fn boolean(header: &Header, names: &[&str]) -> Option<bool> {
    names
        .iter()
        .find_map(|n| header.ext(n))
        .map(|v| v == "true")
}

/// Message flag bit (sysFlag) of a batch (`MessageSysFlag.BATCH` is not on the wire; the
/// header's `batch` field is).
fn send_request(command: &mut Command, code: RequestCode) -> SendRequest {
    let h = &command.header;
    let batch =
        code == RequestCode::SendBatchMessage || boolean(h, &["batch", "m"]).unwrap_or(false);
    let topic = text(h, &["topic", "b"]);
    let queue_id = number(h, &["queueId", "e"]);
    let born = number(h, &["bornTimestamp", "g"]);
    let sys_flag = number(h, &["sysFlag", "f"]).unwrap_or(0);
    let reconsume_times = number(h, &["reconsumeTimes", "j"]);
    let mut messages = if code == RequestCode::SendBatchMessage {
        std::mem::take(&mut command.messages)
    } else {
        let properties = ["properties", "i"]
            .iter()
            .find_map(|n| h.ext(n))
            .map_or_else(Properties::default, |p| Properties::parse(p.as_bytes()));
        vec![MessageMeta {
            msg_id: properties.uniq_key().map(String::from),
            flag: number(h, &["flag", "h"]).unwrap_or(0),
            body_len: command.body_len,
            incomplete: command.missing_bytes > 0,
            properties,
            ..MessageMeta::default()
        }]
    };
    // Inner messages of a batch take topic, queue and born time from the header.
    for message in &mut messages {
        message.topic = message.topic.take().or_else(|| topic.clone());
        message.queue_id = message.queue_id.or(queue_id);
        message.born_timestamp_ms = message.born_timestamp_ms.or(born);
        message.sys_flag = sys_flag;
        message.reconsume_times = message.reconsume_times.or(reconsume_times);
    }
    SendRequest {
        producer_group: text(h, &["producerGroup", "a"]),
        topic,
        queue_id,
        sys_flag,
        born_timestamp_ms: born,
        reconsume_times,
        max_reconsume_times: number(h, &["maxReconsumeTimes", "l"]),
        batch,
        broker_name: text(h, &["brokerName", "n", "bname"]),
        reply: matches!(
            code,
            RequestCode::SendReplyMessage | RequestCode::SendReplyMessageV2
        ),
        messages,
    }
}

fn ack(h: &Header) -> AckRequest {
    AckRequest {
        message_ids: Vec::new(),
        consumer_group: text(h, &["consumerGroup"]),
        topic: text(h, &["topic"]),
        queue_id: number(h, &["queueId"]),
        offset: number(h, &["offset"]),
        extra_info: text(h, &["extraInfo"]),
        invisible_time_ms: number(h, &["invisibleTime"]),
    }
}

fn transaction(command: &mut Command) -> EndTransaction {
    let h = &command.header;
    EndTransaction {
        topic: text(h, &["topic"]),
        producer_group: text(h, &["producerGroup"]),
        commit_log_offset: number(h, &["commitLogOffset"]),
        commit_or_rollback: number(h, &["commitOrRollback"]),
        from_transaction_check: boolean(h, &["fromTransactionCheck"]),
        msg_id: text(h, &["msgId"]),
        transaction_id: text(h, &["transactionId"]),
        messages: std::mem::take(&mut command.messages),
    }
}

fn heartbeat(body: Option<&serde_json::Value>) -> Heartbeat {
    let groups = |set: &str| -> Vec<String> {
        body.and_then(|b| b.get(set))
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.get("groupName")?.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    Heartbeat {
        client_id: body.and_then(|b| b.get("clientID")?.as_str().map(String::from)),
        producer_groups: groups("producerDataSet"),
        consumer_groups: groups("consumerDataSet"),
    }
}

/// What a command means. A response is interpreted by the request it answers. The command's
/// messages move into the operation (they are not copied).
pub fn interpret(command: &mut Command) -> Operation {
    let h = &command.header;
    if let Some(status) = command.response() {
        return match command.request_code {
            Some(code) if code.is_single_send() || code == RequestCode::SendBatchMessage => {
                Operation::SendResult(SendResult {
                    status: Some(status),
                    offset_msg_ids: text(h, &["msgId"])
                        .map(|ids| {
                            ids.split(',')
                                .filter(|s| !s.is_empty())
                                .map(String::from)
                                .collect()
                        })
                        .unwrap_or_default(),
                    queue_id: number(h, &["queueId"]),
                    queue_offset: number(h, &["queueOffset"]),
                    transaction_id: text(h, &["transactionId"]),
                    batch_uniq_id: text(h, &["batchUniqId"]),
                    region_id: text(h, &["MSG_REGION"]),
                    trace_on: boolean(h, &["TRACE_ON"]),
                })
            }
            Some(code) if code.returns_messages() => Operation::Pulled(Pulled {
                status: Some(status),
                next_begin_offset: number(h, &["nextBeginOffset"]),
                min_offset: number(h, &["minOffset"]),
                max_offset: number(h, &["maxOffset"]),
                messages: std::mem::take(&mut command.messages),
            }),
            _ => Operation::Other,
        };
    }
    let code = RequestCode::from_code(h.code);
    match code {
        c if c.is_single_send() || c == RequestCode::SendBatchMessage => {
            Operation::Send(send_request(command, c))
        }
        RequestCode::PullMessage | RequestCode::LitePullMessage => Operation::Pull(PullRequest {
            consumer_group: text(h, &["consumerGroup"]),
            topic: text(h, &["topic"]),
            queue_id: number(h, &["queueId"]),
            queue_offset: number(h, &["queueOffset"]),
            max_msg_nums: number(h, &["maxMsgNums"]),
            commit_offset: number(h, &["commitOffset"]),
            subscription: text(h, &["subscription"]),
            lite: code == RequestCode::LitePullMessage,
        }),
        RequestCode::PopMessage | RequestCode::PeekMessage => Operation::Pop(PopRequest {
            consumer_group: text(h, &["consumerGroup"]),
            topic: text(h, &["topic"]),
            queue_id: number(h, &["queueId"]),
            max_msg_nums: number(h, &["maxMsgNums"]),
            invisible_time_ms: number(h, &["invisibleTime"]),
            poll_time_ms: number(h, &["pollTime"]),
            order: boolean(h, &["order"]),
            attempt_id: text(h, &["attemptId"]),
        }),
        RequestCode::AckMessage => Operation::Ack(ack(h)),
        RequestCode::ChangeMessageInvisibletime => Operation::ChangeInvisibleTime(ack(h)),
        RequestCode::BatchAckMessage => Operation::BatchAck {
            body: command.body_json.clone(),
        },
        RequestCode::ConsumerSendMsgBack => Operation::SendBack(SendBack {
            consumer_group: text(h, &["group"]),
            commit_log_offset: number(h, &["offset"]),
            delay_level: number(h, &["delayLevel"]),
            origin_msg_id: text(h, &["originMsgId"]),
            origin_topic: text(h, &["originTopic"]),
            max_reconsume_times: number(h, &["maxReconsumeTimes"]),
        }),
        RequestCode::EndTransaction => Operation::EndTransaction(transaction(command)),
        RequestCode::CheckTransactionState => {
            Operation::CheckTransactionState(transaction(command))
        }
        RequestCode::UpdateConsumerOffset => Operation::UpdateConsumerOffset(OffsetUpdate {
            consumer_group: text(h, &["consumerGroup"]),
            topic: text(h, &["topic"]),
            queue_id: number(h, &["queueId"]),
            commit_offset: number(h, &["commitOffset"]),
        }),
        RequestCode::HeartBeat => Operation::Heartbeat(heartbeat(command.body_json.as_ref())),
        _ => Operation::Other,
    }
}
