//! Spans: message events as OpenTelemetry spans, following the messaging semantic conventions
//! for RocketMQ (span names `{operation} {destination}`; send PRODUCER, receive and settle
//! CLIENT). Every span of a message lands in the message's trace (see [`identity`]).

pub mod identity;
pub mod names;
pub mod resource;

use std::borrow::Cow;

use serde::{Deserialize, Serialize, Serializer};

use crate::{
    correlation::{MessageEvent, Outcome, ReceiveEvent, SendEvent, SettleEvent},
    memory::{HeapSize, PER_ALLOCATION},
};
use identity::{SpanId, TraceId, message_trace};
// Every attribute name this module sets.
use names::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Producer,
    Consumer,
    Client,
    Server,
    Internal,
}

impl SpanKind {
    /// As OpenTelemetry names it, and as the span's JSON says it.
    pub fn name(self) -> &'static str {
        match self {
            SpanKind::Producer => "PRODUCER",
            SpanKind::Consumer => "CONSUMER",
            SpanKind::Client => "CLIENT",
            SpanKind::Server => "SERVER",
            SpanKind::Internal => "INTERNAL",
        }
    }
}

impl Serialize for SpanKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A span's status, named as OpenTelemetry names it (UNSET, OK, ERROR) wherever it is shown:
/// span lines, JSON, timelines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Ok,
    Error,
    Unset,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Error => "ERROR",
            Status::Unset => "UNSET",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An attribute value, as OTLP knows them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// Fixed texts (operation names, "rocketmq") are borrowed, not allocated per span.
    String(Cow<'static, str>),
    Int(i64),
    Bool(bool),
    Strings(Vec<String>),
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(Cow::Owned(v.to_string()))
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(Cow::Owned(v))
    }
}
impl Value {
    /// A fixed text, borrowed.
    pub fn fixed(v: &'static str) -> Self {
        Value::String(Cow::Borrowed(v))
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

/// A span's (or a resource's) attributes in the order they were set; a key set again keeps
/// its place and takes the new value. Names are mostly fixed: borrowed, not allocated per span.
/// A vector scanned by key, not a sorted map: a span has about twenty, and keeping them sorted
/// (a B-tree, then a sorted vector) cost a tenth of a pulled message's span.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attributes(Vec<(Cow<'static, str>, Value)>);

impl Attributes {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(attributes: usize) -> Self {
        Self(Vec::with_capacity(attributes))
    }

    pub fn insert(&mut self, key: Cow<'static, str>, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = value,
            None => self.0.push((key, value)),
        }
    }

    /// Sets a key not set yet, without looking for it: span builders set each key once
    /// (checked in debug builds), and the look-up was a twentieth of a span's work.
    pub(crate) fn push_new(&mut self, key: Cow<'static, str>, value: Value) {
        debug_assert!(self.get(&key).is_none(), "attribute {key} set twice");
        self.0.push((key, value));
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// In the order they were set.
    pub fn iter(&self) -> impl Iterator<Item = (&Cow<'static, str>, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes held on the heap by the vector itself.
    pub fn capacity_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<(Cow<'static, str>, Value)>()
    }
}

impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

/// A process's resource attributes, shared by all of its spans.
pub type Resource = std::sync::Arc<Attributes>;

fn hex_trace<S: Serializer>(id: &TraceId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.hex())
}
fn hex_span<S: Serializer>(id: &SpanId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.hex())
}
fn hex_parent<S: Serializer>(id: &Option<SpanId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(&id.hex()),
        None => s.serialize_none(),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Link {
    #[serde(serialize_with = "hex_trace")]
    pub trace_id: TraceId,
    #[serde(serialize_with = "hex_span")]
    pub span_id: SpanId,
}

/// One span, serialized exactly as `--output` writes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Span {
    #[serde(serialize_with = "hex_trace")]
    pub trace_id: TraceId,
    #[serde(serialize_with = "hex_span")]
    pub span_id: SpanId,
    #[serde(serialize_with = "hex_parent")]
    pub parent_span_id: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub status: Status,
    pub status_message: Option<String>,
    pub attributes: Attributes,
    pub resource: Resource,
    pub links: Vec<Link>,
}

impl HeapSize for Value {
    fn heap_bytes(&self) -> usize {
        match self {
            Value::String(s) => s.heap_bytes(),
            Value::Strings(v) => v.heap_bytes(),
            Value::Int(_) | Value::Bool(_) => 0,
        }
    }
}

fn attributes_bytes(attributes: &Attributes) -> usize {
    attributes.capacity_bytes()
        + attributes
            .iter()
            .map(|(k, v)| k.heap_bytes() + v.heap_bytes())
            .sum::<usize>()
        + PER_ALLOCATION
}

impl HeapSize for Span {
    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Span>()
            + self.name.heap_bytes()
            + self.status_message.heap_bytes()
            + attributes_bytes(&self.attributes)
            + attributes_bytes(&self.resource)
            + self.links.capacity() * std::mem::size_of::<Link>()
    }
}

fn put(attributes: &mut Attributes, key: &'static str, value: Option<impl Into<Value>>) {
    if let Some(value) = value {
        attributes.push_new(key.into(), value.into());
    }
}

fn status(outcome: &Outcome, attributes: &mut Attributes) -> (Status, Option<String>) {
    match outcome {
        Outcome::Ok => (Status::Unset, None),
        // The agent's blind spot, not the application's failure: said, not an error.
        Outcome::Unseen(reason) => {
            attributes.push_new(MQTRACE_RESPONSE_UNSEEN.into(), Value::fixed(reason.name()));
            (Status::Unset, None)
        }
        Outcome::Error {
            error_type,
            message,
        } => {
            attributes.push_new(ERROR_TYPE.into(), error_type.as_str().into());
            (
                Status::Error,
                Some(message.clone().unwrap_or_else(|| error_type.clone())),
            )
        }
    }
}

fn common(
    operation: &'static str,
    operation_type: &'static str,
    topic: Option<&str>,
) -> Attributes {
    // Room for a span's attributes at once: growing the vector step by step cost as much as
    // filling it.
    let mut a = Attributes::with_capacity(24);
    a.push_new(MESSAGING_SYSTEM.into(), Value::fixed("rocketmq"));
    a.push_new(MESSAGING_OPERATION_NAME.into(), Value::fixed(operation));
    a.push_new(
        MESSAGING_OPERATION_TYPE.into(),
        Value::fixed(operation_type),
    );
    put(&mut a, MESSAGING_DESTINATION_NAME, topic);
    // A namespaced topic is `namespace%topic` (but %RETRY% and %DLQ% are not namespaces).
    if let Some((namespace, _)) = topic
        .and_then(|t| t.split_once('%'))
        .filter(|(ns, _)| !ns.is_empty())
    {
        a.push_new(MESSAGING_ROCKETMQ_NAMESPACE.into(), namespace.into());
    }
    a
}

/// The other end: the broker a client talked to, or the client a broker served (with what the
/// broker knows of it).
fn peer(attributes: &mut Attributes, endpoint: &crate::correlation::Endpoint) {
    let (address, port) = if endpoint.is_broker() {
        (CLIENT_ADDRESS, CLIENT_PORT)
    } else {
        (SERVER_ADDRESS, SERVER_PORT)
    };
    if let Some(peer) = endpoint.peer {
        attributes.push_new(address.into(), ip_text(peer.ip()).into());
        attributes.push_new(port.into(), i64::from(peer.port()).into());
    }
    attributes.push_new(
        MQTRACE_CAPTURE.into(),
        Value::fixed(endpoint.seen_as.name()),
    );
    if let Some(rpc) = endpoint.rpc {
        attributes.push_new(RPC_SYSTEM.into(), Value::fixed("grpc"));
        attributes.push_new(RPC_SERVICE.into(), Value::fixed(rpc.service));
        attributes.push_new(RPC_METHOD.into(), Value::fixed(rpc.method));
    }
    if let Some(client) = &endpoint.client {
        attributes.push_new(MQTRACE_OBSERVER.into(), Value::fixed("broker"));
        put(attributes, MESSAGING_CLIENT_ID, client.client_id.clone());
        attributes.push_new(
            MQTRACE_CLIENT_LANGUAGE.into(),
            client.language.as_str().into(),
        );
        attributes.push_new(MQTRACE_CLIENT_VERSION.into(), client.version.clone().into());
    }
}

// Numbers and addresses made text through itoa: `to_string` goes through the formatting
// machinery, which was 14 % of a pulled message's span (its ids' parts, queue, addresses).

fn decimal(n: impl itoa::Integer) -> String {
    itoa::Buffer::new().format(n).to_string()
}

fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(itoa::Buffer::new().format(octet));
            }
            text
        }
        std::net::IpAddr::V6(v6) => v6.to_string(),
    }
}

fn socket_text(address: std::net::SocketAddr) -> String {
    match address {
        std::net::SocketAddr::V4(v4) => {
            let mut text = ip_text(std::net::IpAddr::V4(*v4.ip()));
            text.push(':');
            text.push_str(itoa::Buffer::new().format(v4.port()));
            text
        }
        std::net::SocketAddr::V6(v6) => v6.to_string(),
    }
}

/// A step's span kind: the client's own (`client_kind`), or SERVER where the traced process is
/// the broker serving it.
fn kind_of(endpoint: &crate::correlation::Endpoint, client_kind: SpanKind) -> SpanKind {
    if endpoint.is_broker() {
        SpanKind::Server
    } else {
        client_kind
    }
}

/// The operation in a span's name: the client's, or the broker's where it served the step.
fn operation_of(
    endpoint: &crate::correlation::Endpoint,
    client: &'static str,
    broker: &'static str,
) -> &'static str {
    if endpoint.is_broker() { broker } else { client }
}

/// Body size, and the batch size when the message travelled with others.
fn sizes(attributes: &mut Attributes, body_len: u64, batch_size: usize) {
    attributes.push_new(MESSAGING_MESSAGE_BODY_SIZE.into(), (body_len as i64).into());
    if batch_size > 1 {
        attributes.push_new(
            MESSAGING_BATCH_MESSAGE_COUNT.into(),
            (batch_size as i64).into(),
        );
    }
}

/// Tag and keys: on every span of a message, so that a search by business key finds them all.
fn labels<'a>(
    attributes: &mut Attributes,
    tag: Option<&str>,
    keys: impl IntoIterator<Item = &'a str>,
) {
    put(attributes, MESSAGING_ROCKETMQ_MESSAGE_TAG, tag);
    let keys: Vec<String> = keys.into_iter().map(String::from).collect();
    if !keys.is_empty() {
        attributes.push_new(MESSAGING_ROCKETMQ_MESSAGE_KEYS.into(), Value::Strings(keys));
    }
}

fn message_type(event: &SendEvent) -> &'static str {
    let p = &event.message.properties;
    if p.transaction_prepared() {
        "transaction"
    } else if p.delay_level().is_some() || p.delivery_time_ms(0).is_some() {
        "delay"
    } else if p.message_group().is_some() {
        "fifo"
    } else {
        "normal"
    }
}

fn name(operation: &str, topic: Option<&str>) -> String {
    let Some(topic) = topic else {
        return operation.to_string();
    };
    let mut name = String::with_capacity(operation.len() + 1 + topic.len());
    name.push_str(operation);
    name.push(' ');
    name.push_str(topic);
    name
}

pub fn send_span(event: &SendEvent, resource: &Resource) -> Span {
    let m = &event.message;
    let (trace_id, parent) = message_trace(&event.key, m.properties.traceparent());
    let kind = kind_of(&event.endpoint, SpanKind::Producer);
    let operation = operation_of(&event.endpoint, "send", "store");
    let mut a = common(operation, "send", m.topic.as_deref());
    a.push_new(MESSAGING_MESSAGE_ID.into(), event.key.as_str().into());
    labels(&mut a, m.tags(), m.keys());
    a.push_new(
        MESSAGING_ROCKETMQ_MESSAGE_TYPE.into(),
        Value::fixed(message_type(event)),
    );
    put(
        &mut a,
        MESSAGING_ROCKETMQ_MESSAGE_GROUP,
        m.properties.message_group(),
    );
    put(
        &mut a,
        MESSAGING_ROCKETMQ_MESSAGE_DELAY_TIME_LEVEL,
        m.properties.delay_level().map(i64::from),
    );
    put(
        &mut a,
        MESSAGING_ROCKETMQ_MESSAGE_DELIVERY_TIMESTAMP,
        m.born_timestamp_ms
            .and_then(|b| m.properties.delivery_time_ms(b)),
    );
    put(
        &mut a,
        MESSAGING_ROCKETMQ_CLIENT_GROUP,
        event.producer_group.clone(),
    );
    put(
        &mut a,
        MESSAGING_DESTINATION_PARTITION_ID,
        m.queue_id.map(decimal),
    );
    sizes(&mut a, m.body_len, event.batch_size);
    put(&mut a, MQTRACE_OFFSET_MSG_ID, event.offset_msg_id.clone());
    put(&mut a, MQTRACE_QUEUE_OFFSET, event.queue_offset);
    peer(&mut a, &event.endpoint);
    let (status, status_message) = status(&event.outcome, &mut a);
    // The first send of the message owns the send span id its consumers point to; a retry of
    // it is a child of that one, with an id of its own. The broker's store is a child of the
    // send, one per copy it stored.
    let (span_id, parent) = if event.endpoint.is_broker() {
        let attempt = decimal(event.attempt);
        (
            SpanId::for_step(operation, &event.key, &[&attempt]),
            Some(SpanId::for_send(&event.key)),
        )
    } else if event.attempt > 1 {
        a.push_new(MQTRACE_SEND_ATTEMPT.into(), i64::from(event.attempt).into());
        let attempt = decimal(event.attempt);
        (
            SpanId::for_step("send", &event.key, &[&attempt]),
            Some(SpanId::for_send(&event.key)),
        )
    } else {
        (SpanId::for_send(&event.key), parent)
    };
    Span {
        trace_id,
        span_id,
        parent_span_id: parent,
        name: name(operation, m.topic.as_deref()),
        kind,
        start_unix_nano: event.start_unix_ns,
        end_unix_nano: event.end_unix_ns,
        status,
        status_message,
        attributes: a,
        resource: Resource::clone(resource),
        links: Vec::new(),
    }
}

pub fn receive_span(event: &ReceiveEvent, resource: &Resource) -> Span {
    let m = &event.message;
    let (trace_id, _) = message_trace(&event.key, m.properties.traceparent());
    let send = SpanId::for_send(&event.key);
    let kind = kind_of(&event.endpoint, SpanKind::Client);
    let operation = operation_of(&event.endpoint, "receive", "deliver");
    let mut a = common(operation, "receive", m.topic.as_deref());
    a.push_new(MESSAGING_MESSAGE_ID.into(), event.key.as_str().into());
    put(
        &mut a,
        MESSAGING_CONSUMER_GROUP_NAME,
        event.consumer_group.as_deref(),
    );
    labels(&mut a, m.tags(), m.keys());
    put(
        &mut a,
        MESSAGING_DESTINATION_PARTITION_ID,
        m.queue_id.map(decimal),
    );
    put(&mut a, MQTRACE_QUEUE_OFFSET, m.queue_offset);
    put(&mut a, MQTRACE_OFFSET_MSG_ID, m.offset_msg_id.clone());
    put(
        &mut a,
        MQTRACE_RECONSUME_TIMES,
        m.reconsume_times.map(i64::from),
    );
    put(&mut a, MQTRACE_STORE_HOST, m.store_host.map(socket_text));
    put(&mut a, MQTRACE_STORE_TIMESTAMP_MS, m.store_timestamp_ms);
    put(
        &mut a,
        MQTRACE_ORIGIN_MESSAGE_ID,
        m.properties.origin_message_id().map(String::from),
    );
    let received_ms = (event.end_unix_ns / 1_000_000) as i64;
    if let Some(born) = m.born_timestamp_ms {
        a.push_new(
            MQTRACE_BORN_TO_RECEIVE_MS.into(),
            received_ms.saturating_sub(born).into(),
        );
    }
    // Time in the queue: from stored to handed over (the broker's clock at both ends when the
    // broker reports it).
    if let Some(stored) = m.store_timestamp_ms {
        a.push_new(
            MQTRACE_QUEUE_TIME_MS.into(),
            received_ms.saturating_sub(stored).into(),
        );
    }
    sizes(&mut a, m.body_len, event.batch_size);
    peer(&mut a, &event.endpoint);
    let group = event.consumer_group.as_deref().unwrap_or("");
    let (mut reconsume, mut start) = (itoa::Buffer::new(), itoa::Buffer::new());
    let reconsume = reconsume.format(m.reconsume_times.unwrap_or(0));
    let start = start.format(event.start_unix_ns);
    Span {
        trace_id,
        span_id: SpanId::for_step(operation, &event.key, &[group, reconsume, start]),
        parent_span_id: Some(send),
        name: name(operation, m.topic.as_deref()),
        kind,
        start_unix_nano: event.start_unix_ns,
        end_unix_nano: event.end_unix_ns,
        status: Status::Unset,
        status_message: None,
        attributes: a,
        resource: Resource::clone(resource),
        links: vec![Link {
            trace_id,
            span_id: send,
        }],
    }
}

pub fn settle_span(event: &SettleEvent, resource: &Resource) -> Span {
    let operation = event.settlement.operation();
    let kind = kind_of(&event.endpoint, SpanKind::Client);
    let (trace_id, _) = message_trace(&event.key, event.labels.traceparent.as_deref());
    let mut a = common(operation, "settle", event.topic.as_deref());
    a.push_new(MESSAGING_MESSAGE_ID.into(), event.key.as_str().into());
    put(
        &mut a,
        MESSAGING_CONSUMER_GROUP_NAME,
        event.consumer_group.clone(),
    );
    labels(
        &mut a,
        event.labels.tags.as_deref(),
        event.labels.keys.iter().map(String::as_str),
    );
    put(
        &mut a,
        MQTRACE_RECONSUME_TIMES,
        event.reconsume_times.map(i64::from),
    );
    peer(&mut a, &event.endpoint);
    let (status, status_message) = status(&event.outcome, &mut a);
    let mut start = itoa::Buffer::new();
    // The topic too: one request (or frames read at once) may commit offsets of a message's
    // delivery from its topic and of its redelivery from the retry topic.
    let unique = [
        event.consumer_group.as_deref().unwrap_or(""),
        start.format(event.start_unix_ns),
        event.topic.as_deref().unwrap_or(""),
        "broker", // the broker's only: never the id of the client's span of the same report
    ];
    let unique = &unique[..if event.endpoint.is_broker() { 4 } else { 3 }];
    Span {
        trace_id,
        span_id: SpanId::for_step(operation, &event.key, unique),
        parent_span_id: Some(SpanId::for_send(&event.key)),
        name: name(operation, event.topic.as_deref()),
        kind,
        start_unix_nano: event.start_unix_ns,
        end_unix_nano: event.end_unix_ns,
        status,
        status_message,
        attributes: a,
        resource: Resource::clone(resource),
        links: Vec::new(),
    }
}

pub fn span(event: &MessageEvent, resource: &Resource) -> Span {
    match event {
        MessageEvent::Send(e) => send_span(e, resource),
        MessageEvent::Receive(e) => receive_span(e, resource),
        MessageEvent::Settle(e) => settle_span(e, resource),
    }
}

/// Text for a terminal: control characters (escape sequences, carriage returns, newlines) in
/// strings that came off the wire are shown escaped, never passed to the terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// One readable line per span, for the terminal.
pub fn span_line(span: &Span) -> String {
    let id = |k: &str| match span.attributes.get(k) {
        Some(Value::String(s)) => s.to_string(),
        Some(Value::Int(i)) => i.to_string(),
        _ => "-".into(),
    };
    let service = match span.resource.get(SERVICE_NAME) {
        Some(Value::String(s)) => s.as_ref(),
        _ => "?",
    };
    let line = format!(
        "{:<8} {:<24} msg {} trace {} {}{} [{}] {:.1} ms",
        span.kind.name(),
        span.name,
        id(MESSAGING_MESSAGE_ID),
        span.trace_id.hex(),
        span.status,
        span.status_message
            .as_ref()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default(),
        service,
        span.end_unix_nano.saturating_sub(span.start_unix_nano) as f64 / 1e6,
    );
    printable(&line).into_owned()
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn addresses_read_as_their_display(ip: u32, port: u16, v6: u128) {
            let v4 = IpAddr::V4(Ipv4Addr::from(ip));
            prop_assert_eq!(super::ip_text(v4), v4.to_string());
            let v4 = SocketAddr::new(v4, port);
            prop_assert_eq!(super::socket_text(v4), v4.to_string());
            let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::from(v6)), port);
            prop_assert_eq!(super::socket_text(v6), v6.to_string());
            prop_assert_eq!(super::decimal(ip), ip.to_string());
        }
    }
}
