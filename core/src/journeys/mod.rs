//! "Where is my message?": a bounded in-memory journal of the messages this host saw, each with
//! its steps (send, receive, settle), queried by message ID, key or topic like RocketMQ's own
//! message-trace console. Fed with the same message events the spans are made of.

use std::{borrow::Cow, net::SocketAddr, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    correlation::{Endpoint, MessageEvent, Outcome, ServedClient},
    memory::{Bounded, HeapSize},
    spans::{
        Resource, Span, Status, Value,
        identity::TraceId,
        names::{HOST_NAME, SERVICE_NAME},
        printable,
    },
};

/// Messages kept by default; the oldest go first beyond it.
pub const DEFAULT_MAX_MESSAGES: usize = 20_000;
/// Steps kept per message at most (a message redelivered in a loop must not grow without end).
const MAX_STEPS: usize = 64;

/// One message and what happened to it here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Journey {
    /// The ID the trace is derived from: UNIQ_KEY, else offsetMsgId.
    pub message_id: Arc<str>,
    /// The trace its spans carry (32 hex digits), to look the message up in Tempo, Jaeger,
    /// ...: derived from the message ID, or the producer's W3C `traceparent`.
    pub trace_id: TraceId,
    /// The broker's ID of the message as its producer sent it (a copy stored again, for a
    /// redelivery through the retry topic, has one of its own: see its steps).
    pub offset_msg_id: Option<String>,
    pub topic: Option<Arc<str>>,
    pub tags: Option<Arc<str>>,
    pub keys: Vec<String>,
    pub born_unix_ms: Option<i64>,
    pub steps: Vec<Step>,
    /// Steps not kept because the message had MAX_STEPS already.
    pub steps_dropped: u64,
}

impl HeapSize for Step {
    fn heap_bytes(&self) -> usize {
        // Topic, group and client are shared with other steps; counted as if they were not.
        std::mem::size_of::<Step>()
            + self.action.heap_bytes()
            + self.topic.heap_bytes()
            + self.group.heap_bytes()
            + self.client.heap_bytes()
            + self.offset_msg_id.heap_bytes()
            + self.detail.heap_bytes()
    }
}

impl HeapSize for Journey {
    fn heap_bytes(&self) -> usize {
        // Its ID is shared with the map's key and the eviction order (two more pointers).
        self.message_id.heap_bytes()
            + 2 * std::mem::size_of::<Arc<str>>()
            + self.offset_msg_id.heap_bytes()
            + self.topic.heap_bytes()
            + self.tags.heap_bytes()
            + self.keys.heap_bytes()
            + self.steps.heap_bytes()
    }
}

/// One thing a process did with the message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// "send", "receive", or "settle" with the operation its span is named after: "settle
    /// commit_offset", "settle send_back", "settle ack", ...; the broker's view of them:
    /// "broker store", "broker deliver", "broker ack", "broker commit_offset", ...
    pub action: Cow<'static, str>,
    /// When the step happened, which orders the steps: a send when the producer sent it (the
    /// message exists no earlier), a receive when the message was delivered (the response: a
    /// long poll may have waited long before), a settlement when the consumer made it.
    #[serde(default)]
    pub at_unix_ns: u64,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// The traced process: its service name, pid and host (shared by the process's steps).
    pub process: Arc<str>,
    pub pid: u32,
    #[serde(default)]
    pub host: Arc<str>,
    pub local: Option<SocketAddr>,
    /// The broker it talked to; for the broker's steps, the client it served.
    pub peer: Option<SocketAddr>,
    /// For the broker's steps: the client's id (from its heartbeats), language and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Arc<str>>,
    pub topic: Option<Arc<str>>,
    pub queue_id: Option<i32>,
    pub queue_offset: Option<i64>,
    /// Producer group of a send, consumer group of a receive or settlement.
    pub group: Option<Arc<str>>,
    /// Receives: milliseconds from the message's birth (producer clock) to its arrival here.
    pub delay_since_born_ms: Option<i64>,
    pub reconsume_times: Option<i32>,
    /// The broker's ID of the stored copy the step saw: a send's result, a received message.
    #[serde(default)]
    pub offset_msg_id: Option<String>,
    /// The step's span's status, as OpenTelemetry names it: UNSET (nothing wrong seen), OK or
    /// ERROR.
    pub status: Status,
    /// Why: the error (response code name, "timeout" or "connection_closed") and its remark,
    /// or why no response was seen.
    #[serde(default)]
    pub detail: Option<String>,
    /// The step's span's trace, only when it is not the message's (`Journey::trace_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<TraceId>,
}

/// What to look for; every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// A UNIQ_KEY or an offsetMsgId (the message's, or a redelivered copy's), in either case:
    /// IDs are hexadecimal.
    pub msg_id: Option<String>,
    /// One of the message's keys.
    pub key: Option<String>,
    /// The message's topic, or a retry or dead-letter topic (`%RETRY%group`, `%DLQ%group`) it
    /// went through.
    pub topic: Option<String>,
    /// Only messages with a step at or after this Unix time.
    pub since_unix_ns: Option<u64>,
    /// Most recent messages returned at most.
    pub limit: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct JournalCounters {
    pub messages: u64,
    /// Bytes held, against the journal's memory share (a gauge).
    pub bytes: u64,
    pub messages_evicted: u64,
    pub steps_dropped: u64,
}

pub struct Journal {
    /// By message ID, in order of first sight: the oldest are forgotten first.
    by_id: Bounded<Arc<str>, Journey>,
    steps_dropped: u64,
    /// The process and host names the last span's resource gives, shared by the steps of
    /// that process.
    names: crate::FromLast<crate::spans::Attributes, (Arc<str>, Arc<str>)>,
    /// Texts that repeat from message to message, shared.
    texts: SharedTexts,
}

/// The last topic, group, tag and served client seen, kept to be shared by the steps and
/// journeys that name them again (most do: a topic's messages come in runs).
#[derive(Default)]
struct SharedTexts {
    topic: Option<Arc<str>>,
    group: Option<Arc<str>>,
    tags: Option<Arc<str>>,
    /// How steps name the last client seen.
    client: crate::FromLast<ServedClient, Arc<str>>,
}

impl SharedTexts {
    fn topic(&mut self, text: Option<&str>) -> Option<Arc<str>> {
        text.map(|t| crate::shared_text(&mut self.topic, t))
    }

    fn group(&mut self, text: Option<&str>) -> Option<Arc<str>> {
        text.map(|t| crate::shared_text(&mut self.group, t))
    }

    fn tags(&mut self, text: Option<&str>) -> Option<Arc<str>> {
        text.map(|t| crate::shared_text(&mut self.tags, t))
    }

    /// "(client id, language vversion)".
    fn client(&mut self, client: &Arc<ServedClient>) -> Arc<str> {
        self.client
            .get(client, |c| {
                let id = c.client_id.as_deref().unwrap_or("client");
                Arc::from(format!("({id}, {} v{})", c.language, c.version))
            })
            .clone()
    }
}

impl Journal {
    pub fn new(max_messages: usize) -> Self {
        Self::with_budget(max_messages, crate::memory::Shares::default().journal)
    }

    /// At most `max_messages`, holding at most `max_bytes` (the newest message is always
    /// kept).
    pub fn with_budget(max_messages: usize, max_bytes: usize) -> Self {
        Self {
            by_id: Bounded::new(max_messages.max(1), max_bytes),
            steps_dropped: 0,
            names: crate::FromLast::default(),
            texts: SharedTexts::default(),
        }
    }

    /// Adds the event's step to its message; `span` is the event's span (its trace, status
    /// and resource: `service.name` names the traced process, `host.name` its host).
    pub fn record(&mut self, event: MessageEvent, span: &Span) {
        let (process, host) = self.names(&span.resource);
        let key = event.key();
        if !self.by_id.contains_key(key) {
            let id: Arc<str> = Arc::from(key);
            // Its bytes are counted once it has its first step.
            self.by_id.insert(
                id.clone(),
                Journey {
                    message_id: id,
                    trace_id: span.trace_id,
                    offset_msg_id: None,
                    topic: None,
                    tags: None,
                    keys: Vec::new(),
                    born_unix_ms: None,
                    // Most messages make one or two steps on a host: room for four (the
                    // vector's first growth) was most of the journal's memory.
                    steps: Vec::with_capacity(1),
                    steps_dropped: 0,
                },
                0,
            );
        }
        let journey = self.by_id.get_mut(key).expect("inserted above");
        let id = journey.message_id.clone();
        learn(journey, &event, &mut self.texts);
        let mut step = step_of(event, span, process, host, &mut self.texts);
        if span.trace_id != journey.trace_id {
            step.trace_id = Some(span.trace_id);
        }
        if journey.steps.len() >= MAX_STEPS {
            journey.steps_dropped += 1;
            self.steps_dropped += 1;
        } else {
            // Steps arrive roughly in order; keep them sorted by when they happened (then by
            // their end, then as they came) for the timeline.
            let order = |s: &Step| (s.at_unix_ns, s.end_unix_ns);
            let at = journey.steps.partition_point(|s| order(s) <= order(&step));
            journey.steps.insert(at, step);
        }
        let held = journey.heap_bytes();
        // Within the memory share: the oldest messages go first, one by one.
        self.by_id.resize(&*id, held);
    }

    /// The process and host names of `resource` (`service.name`, `host.name`).
    fn names(&mut self, resource: &Resource) -> (Arc<str>, Arc<str>) {
        let (process, host) = self.names.get(resource, |resource| {
            let name = |key: &str| -> Arc<str> {
                match resource.get(key) {
                    Some(Value::String(value)) => Arc::from(value.as_ref()),
                    _ => Arc::from(""),
                }
            };
            (name(SERVICE_NAME), name(HOST_NAME))
        });
        (process.clone(), host.clone())
    }

    /// The matching messages, most recent first (last seen, then first seen, then by message
    /// ID: the same order every time), at most `query.limit` (0: no limit).
    pub fn query(&self, query: &Query) -> Vec<Journey> {
        let mut found: Vec<&Journey> = match query.msg_id.as_deref().map(str::trim) {
            Some(id) => match self.by_id.get(id) {
                Some(journey) => vec![journey],
                None => self.by_id.values().filter(|j| j.has_id(id)).collect(),
            },
            None => self.by_id.values().collect(),
        };
        found.retain(|j| {
            query.key.as_ref().is_none_or(|k| j.keys.contains(k))
                && query.topic.as_ref().is_none_or(|t| j.went_through(t))
                && query
                    .since_unix_ns
                    .is_none_or(|since| last_seen(j) >= since)
        });
        found.sort_by(|a, b| {
            last_seen(b)
                .cmp(&last_seen(a))
                .then_with(|| first_seen(b).cmp(&first_seen(a)))
                .then_with(|| a.message_id.cmp(&b.message_id))
        });
        if query.limit > 0 {
            found.truncate(query.limit);
        }
        found.into_iter().cloned().collect()
    }

    pub fn counters(&self) -> JournalCounters {
        JournalCounters {
            messages: self.by_id.len() as u64,
            bytes: self.by_id.held().bytes as u64,
            messages_evicted: self.by_id.held().evicted,
            steps_dropped: self.steps_dropped,
        }
    }
}

impl Journey {
    /// Whether `id` is its UNIQ_KEY or an offsetMsgId of it or of a copy, in either case.
    fn has_id(&self, id: &str) -> bool {
        let same = |other: Option<&str>| other.is_some_and(|o| o.eq_ignore_ascii_case(id));
        same(Some(&self.message_id))
            || same(self.offset_msg_id.as_deref())
            || self.steps.iter().any(|s| same(s.offset_msg_id.as_deref()))
    }

    /// Whether the message is in `topic`, or went through it (a retry or dead-letter topic).
    fn went_through(&self, topic: &str) -> bool {
        self.topic.as_deref() == Some(topic)
            || self.steps.iter().any(|s| s.topic.as_deref() == Some(topic))
    }
}

/// A journey as a readable timeline: the message, then one line per step.
pub fn timeline(journey: &Journey) -> String {
    let mut out = format!("message {}", journey.message_id);
    let mut field = |name: &str, value: Option<String>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.push_str(&format!("  {name} {value}"));
        }
    };
    field("topic", journey.topic.as_deref().map(String::from));
    field("tags", journey.tags.as_deref().map(String::from));
    field("keys", Some(journey.keys.join(",")));
    field("offsetMsgId", journey.offset_msg_id.clone());
    field(
        "born",
        journey.born_unix_ms.map(|ms| utc(ms as u64 * 1_000_000)),
    );
    field("trace", Some(journey.trace_id.to_string()));
    // Wire strings may hold terminal control sequences: shown escaped, never obeyed.
    let mut out = format!("{}\n", printable(&out));
    for step in &journey.steps {
        let mut line = format!(
            "  {}  {:<24} {}[{}]",
            utc(step.at_unix_ns),
            step.action,
            step.process,
            step.pid
        );
        if !step.host.is_empty() {
            line.push_str(&format!("@{}", step.host));
        }
        match (&step.peer, &step.client) {
            (Some(peer), Some(client)) => line.push_str(&format!(" <- {peer} {client}")),
            (Some(peer), None) => line.push_str(&format!(" -> {peer}")),
            _ => {}
        }
        if let Some(topic) = step
            .topic
            .as_ref()
            .filter(|t| journey.topic.as_ref() != Some(*t))
        {
            line.push_str(&format!("  topic {topic}"));
        }
        if let Some(queue) = step.queue_id {
            line.push_str(&format!("  queue {queue}"));
        }
        if let Some(offset) = step.queue_offset {
            line.push_str(&format!("  offset {offset}"));
        }
        if let Some(group) = &step.group {
            line.push_str(&format!("  group {group}"));
        }
        if let Some(times) = step.reconsume_times.filter(|&t| t > 0) {
            line.push_str(&format!("  reconsume {times}"));
        }
        if let Some(delay) = step.delay_since_born_ms {
            line.push_str(&format!("  {delay} ms after birth"));
        }
        if let Some(id) = step
            .offset_msg_id
            .as_ref()
            .filter(|id| journey.offset_msg_id.as_ref() != Some(*id))
        {
            line.push_str(&format!("  offsetMsgId {id}"));
        }
        if let Some(trace) = &step.trace_id {
            line.push_str(&format!("  trace {trace}"));
        }
        let took = step.end_unix_ns.saturating_sub(step.start_unix_ns);
        line.push_str(&format!(
            "  took {:.1} ms  {}",
            took as f64 / 1e6,
            step.status
        ));
        if let Some(detail) = &step.detail {
            line.push_str(&format!(" ({detail})"));
        }
        out.push_str(&printable(&line));
        out.push('\n');
    }
    if journey.steps_dropped > 0 {
        out.push_str(&format!(
            "  ({} more steps not kept)\n",
            journey.steps_dropped
        ));
    }
    out
}

/// A Unix time in nanoseconds as RFC 3339 UTC with milliseconds.
fn utc(unix_ns: u64) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(unix_ns),
    )
    .to_string()
}

fn first_seen(journey: &Journey) -> u64 {
    journey.steps.first().map_or(0, |s| s.at_unix_ns)
}

fn last_seen(journey: &Journey) -> u64 {
    journey
        .steps
        .iter()
        .map(|s| s.end_unix_ns)
        .max()
        .unwrap_or(0)
}

/// Fills in what the event tells about the message itself, first sighting wins.
fn learn(journey: &mut Journey, event: &MessageEvent, texts: &mut SharedTexts) {
    let (meta, offset_msg_id) = match event {
        MessageEvent::Send(e) => (Some(&e.message), e.offset_msg_id.as_deref()),
        MessageEvent::Receive(e) => (Some(&e.message), e.message.offset_msg_id.as_deref()),
        MessageEvent::Settle(e) => {
            // A retry topic (%RETRY%group) is not the message's own.
            if journey.topic.is_none() && e.topic.as_deref().is_some_and(|t| !t.starts_with('%')) {
                journey.topic = texts.topic(e.topic.as_deref());
            }
            if journey.tags.is_none() {
                journey.tags = texts.tags(e.labels.tags.as_deref());
            }
            if journey.keys.is_empty() {
                journey.keys.clone_from(&e.labels.keys);
            }
            (None, None)
        }
    };
    let Some(meta) = meta else { return };
    let is_retry_topic = meta.topic.as_deref().is_some_and(|t| t.starts_with('%'));
    // A copy in a retry topic is stored anew, under an offsetMsgId of its own.
    if journey.offset_msg_id.is_none() && !is_retry_topic {
        journey.offset_msg_id = offset_msg_id.map(String::from);
    }
    if journey.topic.is_none() && !is_retry_topic {
        journey.topic = texts.topic(meta.topic.as_deref());
    }
    if journey.tags.is_none() {
        journey.tags = texts.tags(meta.tags());
    }
    if journey.keys.is_empty() {
        journey.keys = meta.keys().into_iter().map(String::from).collect();
    }
    if journey.born_unix_ms.is_none() {
        journey.born_unix_ms = meta.born_timestamp_ms;
    }
}

/// The event's step; its texts move into it, or are shared with other steps.
fn step_of(
    event: MessageEvent,
    span: &Span,
    process: Arc<str>,
    host: Arc<str>,
    texts: &mut SharedTexts,
) -> Step {
    let mut base =
        |action: Cow<'static, str>, endpoint: &Endpoint, at: u64, start: u64, end: u64| Step {
            action: match &endpoint.client {
                Some(_) => match action.as_ref() {
                    "send" => "broker store".into(),
                    "receive" => "broker deliver".into(),
                    settle => format!("broker {}", settle.trim_start_matches("settle ")).into(),
                },
                None => action,
            },
            client: endpoint.client.as_ref().map(|c| texts.client(c)),
            at_unix_ns: at,
            start_unix_ns: start,
            end_unix_ns: end,
            process: process.clone(),
            pid: endpoint.pid,
            host: host.clone(),
            local: endpoint.local,
            peer: endpoint.peer,
            topic: None,
            queue_id: None,
            queue_offset: None,
            group: None,
            delay_since_born_ms: None,
            reconsume_times: None,
            offset_msg_id: None,
            // The span's own words, so that terminal, JSON and timeline say the same.
            status: span.status,
            detail: None,
            // Set by `record` where it is not the journey's.
            trace_id: None,
        };
    let detail = |outcome: Outcome| match outcome {
        Outcome::Ok => None,
        Outcome::Error {
            error_type,
            message: Some(message),
        } => Some(format!("{error_type}: {message}")),
        Outcome::Error { error_type, .. } => Some(error_type),
        Outcome::Unseen(reason) => Some(format!("no response seen: {}", reason.name())),
    };
    match event {
        MessageEvent::Send(e) => {
            let mut step = base(
                "send".into(),
                &e.endpoint,
                e.start_unix_ns,
                e.start_unix_ns,
                e.end_unix_ns,
            );
            step.queue_id = e.message.queue_id;
            step.queue_offset = e.queue_offset;
            step.offset_msg_id = e.offset_msg_id;
            step.detail = detail(e.outcome);
            step.topic = texts.topic(e.message.topic.as_deref());
            step.group = texts.group(e.producer_group.as_deref());
            step
        }
        MessageEvent::Receive(e) => {
            let mut step = base(
                "receive".into(),
                &e.endpoint,
                e.end_unix_ns,
                e.start_unix_ns,
                e.end_unix_ns,
            );
            step.queue_id = e.message.queue_id;
            step.queue_offset = e.message.queue_offset;
            step.delay_since_born_ms = e
                .message
                .born_timestamp_ms
                .map(|born| ((e.end_unix_ns / 1_000_000) as i64).saturating_sub(born));
            step.reconsume_times = e.message.reconsume_times;
            step.offset_msg_id = e.message.offset_msg_id;
            step.topic = texts.topic(e.message.topic.as_deref());
            step.group = texts.group(e.consumer_group.as_deref());
            step
        }
        MessageEvent::Settle(e) => {
            let mut step = base(
                format!("settle {}", e.settlement.operation()).into(),
                &e.endpoint,
                e.start_unix_ns,
                e.start_unix_ns,
                e.end_unix_ns,
            );
            step.reconsume_times = e.reconsume_times;
            step.detail = detail(e.outcome);
            step.topic = texts.topic(e.topic.as_deref());
            step.group = texts.group(e.consumer_group.as_deref());
            step
        }
    }
}

#[cfg(test)]
mod tests;
