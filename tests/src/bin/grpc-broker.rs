//! grpc-broker: a small in-memory RocketMQ 5 server speaking the gRPC API of a proxy
//! (`apache.rocketmq.v2.MessagingService`, plain HTTP/2) well enough for Apache's 5.x clients to
//! produce to it and consume from it with a simple consumer (receive, ack). A test peer beside
//! the real proxy: it keeps the message id a producer was given, which the consumer receives.
//!
//! usage: grpc-broker [--listen 127.0.0.1:0] [--verbose]
//!   prints "listening HOST:PORT" once it accepts connections and runs until killed. With
//!   --verbose it logs every call on stderr.
//!
//! One queue (id 0) per topic, made on first use; a consumer group sees every message of the
//! topic once, until it is acked or its invisible duration ends (then again, one attempt more).

use std::{
    collections::HashMap,
    io::Write,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};
use tokio::sync::{Notify, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming, transport::Server};

// Generated from protocol/proto/rocketmq_v2.proto, which also holds messages only the agent's
// decoder reads.
#[allow(clippy::all, clippy::pedantic, dead_code)]
mod pb {
    tonic::include_proto!("apache.rocketmq.v2");
}

use pb::{
    messaging_service_server::{MessagingService, MessagingServiceServer},
    receive_message_response::Content,
    settings::PubSub,
    telemetry_command::Command,
};

/// The largest body a producer may send, as its settings say.
const MAX_BODY_SIZE: usize = 4 << 20;
/// What a receive waits for when the request names no long-polling timeout.
const DEFAULT_LONG_POLLING: Duration = Duration::from_secs(20);
/// What a received message stays invisible for when the request names no invisible duration.
const DEFAULT_INVISIBLE: Duration = Duration::from_secs(30);
/// The batch size given to simple consumers in their settings.
const RECEIVE_BATCH_SIZE: i32 = 32;
const BROKER_NAME: &str = "grpc-broker";

fn status(code: pb::Code, message: &str) -> pb::Status {
    pb::Status {
        code: code as i32,
        message: message.to_string(),
    }
}

fn ok() -> Option<pb::Status> {
    Some(status(pb::Code::Ok, "OK"))
}

/// CRC32 (IEEE) of the body, in upper-case hex without leading zeros as the Java client
/// computes it (`Long.toHexString(crc32.getValue()).toUpperCase()`) to check the digest.
fn crc32_hex(data: &[u8]) -> String {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    format!("{:X}", !crc)
}

/// Whether a tag matches a TAG filter expression (`*`, `A`, `A || B`); SQL filters match all.
fn matches(filter: Option<&pb::FilterExpression>, tag: Option<&str>) -> bool {
    let Some(filter) = filter else { return true };
    if filter.r#type != pb::FilterType::Tag as i32 {
        return true;
    }
    let expression = filter.expression.trim();
    if expression.is_empty() || expression == "*" {
        return true;
    }
    let tag = tag.unwrap_or("");
    expression.split("||").any(|t| t.trim() == tag)
}

/// What a consumer group knows of one stored message.
#[derive(Default, Clone)]
struct Delivery {
    acked: bool,
    /// Received and neither acked nor visible again before this.
    invisible_until: Option<Instant>,
    attempts: i32,
    /// The receipt handle of the latest receive.
    handle: Option<String>,
}

#[derive(Default)]
struct State {
    /// Stored messages of each topic, their queue offset being their index.
    topics: HashMap<String, Vec<pb::Message>>,
    /// (group, topic) → the deliveries of that topic's messages, by offset.
    groups: HashMap<(String, String), Vec<Delivery>>,
    /// Receipt handle → (group, topic, offset).
    handles: HashMap<String, (String, String, usize)>,
    next_handle: u64,
}

impl State {
    fn new_handle(&mut self, group: &str, topic: &str, offset: usize) -> String {
        self.next_handle += 1;
        let handle = format!("grpc-broker-rh-{}-{offset}", self.next_handle);
        self.handles.insert(
            handle.clone(),
            (group.to_string(), topic.to_string(), offset),
        );
        handle
    }

    /// Makes up to `max` visible, unacked messages of `topic` matching `filter` invisible to
    /// `group` for `invisible` and returns them, each with a new receipt handle; or, when none,
    /// when the next invisible one becomes visible again.
    fn take(
        &mut self,
        group: &str,
        topic: &str,
        filter: Option<&pb::FilterExpression>,
        max: usize,
        invisible: Duration,
    ) -> (Vec<pb::Message>, Option<Instant>) {
        let now = Instant::now();
        let stored_len = self.topics.get(topic).map_or(0, Vec::len);
        let key = (group.to_string(), topic.to_string());
        let mut deliveries = self.groups.remove(&key).unwrap_or_default();
        deliveries.resize(stored_len, Delivery::default());
        let mut out = Vec::new();
        let mut next_visible: Option<Instant> = None;
        for (offset, delivery) in deliveries.iter_mut().enumerate() {
            if out.len() >= max {
                break;
            }
            if delivery.acked {
                continue;
            }
            if let Some(until) = delivery.invisible_until
                && until > now
            {
                next_visible = Some(next_visible.map_or(until, |n| n.min(until)));
                continue;
            }
            let stored = &self.topics[topic][offset];
            let tag = stored
                .system_properties
                .as_ref()
                .and_then(|p| p.tag.as_deref());
            if !matches(filter, tag) {
                continue;
            }
            let mut message = stored.clone();
            let handle = self.new_handle(group, topic, offset);
            delivery.attempts += 1;
            delivery.invisible_until = Some(now + invisible);
            delivery.handle = Some(handle.clone());
            let properties = message
                .system_properties
                .get_or_insert_with(Default::default);
            properties.receipt_handle = Some(handle);
            properties.delivery_attempt = Some(delivery.attempts);
            properties.invisible_duration = prost_types::Duration::try_from(invisible).ok();
            out.push(message);
        }
        self.groups.insert(key, deliveries);
        (out, next_visible)
    }

    /// The delivery a receipt handle (or, failing that, a message id) names.
    fn delivery(
        &mut self,
        group: &str,
        topic: &str,
        handle: &str,
        message_id: &str,
    ) -> Option<(usize, &mut Delivery)> {
        let offset = match self.handles.get(handle) {
            Some((g, t, offset)) if g == group && t == topic => Some(*offset),
            _ => self.topics.get(topic).and_then(|messages| {
                messages.iter().position(|m| {
                    m.system_properties
                        .as_ref()
                        .is_some_and(|p| !message_id.is_empty() && p.message_id == message_id)
                })
            }),
        }?;
        let deliveries = self
            .groups
            .get_mut(&(group.to_string(), topic.to_string()))?;
        deliveries.get_mut(offset).map(|d| (offset, d))
    }
}

struct Broker {
    state: Mutex<State>,
    /// Woken when messages are stored, for the receives waiting for some.
    arrived: Notify,
    /// Where clients reach this server, for routes when a client does not say.
    address: SocketAddr,
    verbose: bool,
    next_message_id: Mutex<u64>,
}

#[derive(Clone)]
struct Service(Arc<Broker>);

impl Service {
    fn log(&self, line: impl FnOnce() -> String) {
        if self.0.verbose {
            eprintln!("grpc-broker: {}", line());
        }
    }

    fn own_endpoints(&self) -> pb::Endpoints {
        let address = self.0.address;
        let host = if address.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            address.ip().to_string()
        };
        pb::Endpoints {
            scheme: if address.is_ipv6() {
                pb::AddressScheme::IPv6
            } else {
                pb::AddressScheme::IPv4
            } as i32,
            addresses: vec![pb::Address {
                host,
                port: address.port() as i32,
            }],
        }
    }

    /// The settings the server imposes in answer to a client's.
    fn authoritative(&self, mut settings: pb::Settings) -> pb::Settings {
        match settings.pub_sub.as_mut() {
            Some(PubSub::Publishing(publishing)) => {
                publishing.max_body_size = MAX_BODY_SIZE as i32;
            }
            Some(PubSub::Subscription(subscription)) => {
                subscription.fifo = Some(subscription.fifo.unwrap_or(false));
                subscription.receive_batch_size = Some(RECEIVE_BATCH_SIZE);
                if subscription.long_polling_timeout.is_none() {
                    subscription.long_polling_timeout =
                        prost_types::Duration::try_from(DEFAULT_LONG_POLLING).ok();
                }
            }
            None => {}
        }
        settings.access_point = settings.access_point.or_else(|| Some(self.own_endpoints()));
        settings
    }
}

fn name(resource: Option<&pb::Resource>) -> String {
    resource.map(|r| r.name.clone()).unwrap_or_default()
}

fn std_duration(duration: Option<prost_types::Duration>, default: Duration) -> Duration {
    duration
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(default)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl MessagingService for Service {
    async fn query_route(
        &self,
        request: Request<pb::QueryRouteRequest>,
    ) -> Result<Response<pb::QueryRouteResponse>, Status> {
        let request = request.into_inner();
        let topic = request.topic.unwrap_or_default();
        self.log(|| format!("QueryRoute {}", topic.name));
        if topic.name.is_empty() {
            return Ok(Response::new(pb::QueryRouteResponse {
                status: Some(status(pb::Code::IllegalTopic, "topic is empty")),
                message_queues: vec![],
            }));
        }
        // The endpoints the client reached this server by (through a relay, say), as proxies
        // answer, so that it goes on using them; this server's own address when it names none.
        let endpoints = request
            .endpoints
            .filter(|e| !e.addresses.is_empty())
            .unwrap_or_else(|| self.own_endpoints());
        self.0
            .state
            .lock()
            .unwrap()
            .topics
            .entry(topic.name.clone())
            .or_default();
        Ok(Response::new(pb::QueryRouteResponse {
            status: ok(),
            message_queues: vec![pb::MessageQueue {
                topic: Some(topic),
                id: 0,
                permission: pb::Permission::ReadWrite as i32,
                broker: Some(pb::Broker {
                    name: BROKER_NAME.to_string(),
                    id: 0,
                    endpoints: Some(endpoints),
                }),
                accept_message_types: vec![pb::MessageType::Normal as i32],
            }],
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.log(|| format!("Heartbeat {:?}", request.get_ref()));
        Ok(Response::new(pb::HeartbeatResponse { status: ok() }))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let messages = request.into_inner().messages;
        if messages.is_empty() {
            return Ok(Response::new(pb::SendMessageResponse {
                status: Some(status(pb::Code::BadRequest, "no message")),
                entries: vec![],
            }));
        }
        for message in &messages {
            let problem = if name(message.topic.as_ref()).is_empty() {
                Some((pb::Code::IllegalTopic, "topic is empty".to_string()))
            } else if message.body.len() > MAX_BODY_SIZE {
                Some((
                    pb::Code::MessageBodyTooLarge,
                    format!("body of {} bytes > {MAX_BODY_SIZE}", message.body.len()),
                ))
            } else {
                None
            };
            if let Some((code, text)) = problem {
                return Ok(Response::new(pb::SendMessageResponse {
                    status: Some(status(code, &text)),
                    entries: vec![],
                }));
            }
        }
        let now = SystemTime::now();
        let store_host = self.0.address.to_string();
        let mut entries = Vec::with_capacity(messages.len());
        {
            let mut state = self.0.state.lock().unwrap();
            for mut message in messages {
                let topic = name(message.topic.as_ref());
                let stored = state.topics.entry(topic.clone()).or_default();
                let offset = stored.len() as i64;
                let properties = message
                    .system_properties
                    .get_or_insert_with(Default::default);
                if properties.message_id.is_empty() {
                    let mut next = self.0.next_message_id.lock().unwrap();
                    *next += 1;
                    properties.message_id = format!("GRPCBROKER{:022X}", *next);
                }
                properties.store_timestamp = Some(now.into());
                properties.store_host = store_host.clone();
                properties.queue_id = Some(0);
                properties.queue_offset = Some(offset);
                properties.body_digest = Some(pb::Digest {
                    r#type: pb::DigestType::Crc32 as i32,
                    checksum: crc32_hex(&message.body),
                });
                if properties.message_type == pb::MessageType::Unspecified as i32 {
                    properties.message_type = pb::MessageType::Normal as i32;
                }
                let message_id = properties.message_id.clone();
                self.log(|| format!("SendMessage {topic} offset {offset} id {message_id}"));
                stored.push(message);
                entries.push(pb::SendResultEntry {
                    status: ok(),
                    message_id,
                    transaction_id: String::new(),
                    offset,
                });
            }
        }
        self.0.arrived.notify_waiters();
        Ok(Response::new(pb::SendMessageResponse {
            status: ok(),
            entries,
        }))
    }

    type ReceiveMessageStream = BoxStream<pb::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        request: Request<pb::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, Status> {
        let request = request.into_inner();
        let group = name(request.group.as_ref());
        let topic = name(
            request
                .message_queue
                .as_ref()
                .and_then(|q| q.topic.as_ref()),
        );
        let max = request.batch_size.max(1) as usize;
        let invisible = std_duration(request.invisible_duration, DEFAULT_INVISIBLE);
        let long_polling = std_duration(request.long_polling_timeout, DEFAULT_LONG_POLLING);
        // Answer a little before the client gives up: clients set the call's deadline to the
        // long-polling timeout itself.
        let wait = if long_polling > Duration::from_secs(1) {
            long_polling - Duration::from_millis(500)
        } else {
            long_polling / 2
        };
        let deadline = Instant::now() + wait;
        let code = if group.is_empty() {
            Some(status(pb::Code::IllegalConsumerGroup, "group is empty"))
        } else if topic.is_empty() {
            Some(status(pb::Code::IllegalTopic, "topic is empty"))
        } else {
            None
        };
        let mut responses = Vec::new();
        if let Some(code) = code {
            responses.push(code);
        }
        let mut found = Vec::new();
        while responses.is_empty() {
            let notified = self.0.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (messages, next_visible) = self.0.state.lock().unwrap().take(
                &group,
                &topic,
                request.filter_expression.as_ref(),
                max,
                invisible,
            );
            if !messages.is_empty() {
                found = messages;
                responses.push(status(pb::Code::Ok, "OK"));
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                responses.push(status(pb::Code::MessageNotFound, "no new message"));
                break;
            }
            let until = next_visible.map_or(deadline, |n| n.min(deadline));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
        self.log(|| {
            let ids: Vec<&str> = found
                .iter()
                .filter_map(|m| m.system_properties.as_ref())
                .map(|p| p.message_id.as_str())
                .collect();
            format!("ReceiveMessage {group} {topic} batch {max}: {ids:?}")
        });
        let items: Vec<Result<pb::ReceiveMessageResponse, Status>> = found
            .into_iter()
            .map(Content::Message)
            .chain(responses.into_iter().map(Content::Status))
            .map(|content| {
                Ok(pb::ReceiveMessageResponse {
                    content: Some(content),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn ack_message(
        &self,
        request: Request<pb::AckMessageRequest>,
    ) -> Result<Response<pb::AckMessageResponse>, Status> {
        let request = request.into_inner();
        let group = name(request.group.as_ref());
        let topic = name(request.topic.as_ref());
        let mut state = self.0.state.lock().unwrap();
        let entries: Vec<pb::AckMessageResultEntry> = request
            .entries
            .into_iter()
            .map(|entry| {
                let found =
                    state.delivery(&group, &topic, &entry.receipt_handle, &entry.message_id);
                let entry_status = match found {
                    Some((offset, delivery)) => {
                        delivery.acked = true;
                        delivery.invisible_until = None;
                        self.log(|| format!("AckMessage {group} {topic} offset {offset}"));
                        ok()
                    }
                    None => {
                        self.log(|| format!("AckMessage {group} {topic}: unknown {entry:?}"));
                        Some(status(
                            pb::Code::InvalidReceiptHandle,
                            "unknown receipt handle",
                        ))
                    }
                };
                pb::AckMessageResultEntry {
                    message_id: entry.message_id,
                    receipt_handle: entry.receipt_handle,
                    status: entry_status,
                }
            })
            .collect();
        let failed = entries
            .iter()
            .filter(|e| {
                e.status
                    .as_ref()
                    .is_some_and(|s| s.code != pb::Code::Ok as i32)
            })
            .count();
        let overall = if failed == 0 {
            ok()
        } else if failed == entries.len() {
            entries[0].status.clone()
        } else {
            Some(status(pb::Code::MultipleResults, "some entries failed"))
        };
        Ok(Response::new(pb::AckMessageResponse {
            status: overall,
            entries,
        }))
    }

    type TelemetryStream = BoxStream<pb::TelemetryCommand>;

    async fn telemetry(
        &self,
        request: Request<Streaming<pb::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let service = self.clone();
        // Answers each Settings of the client with the server's; the answers end when the
        // client ends its side.
        tokio::spawn(async move {
            while let Ok(Some(command)) = inbound.message().await {
                service.log(|| format!("Telemetry {command:?}"));
                if let Some(Command::Settings(settings)) = command.command {
                    let answer = pb::TelemetryCommand {
                        status: ok(),
                        command: Some(Command::Settings(service.authoritative(settings))),
                    };
                    if tx.send(Ok(answer)).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn notify_client_termination(
        &self,
        request: Request<pb::NotifyClientTerminationRequest>,
    ) -> Result<Response<pb::NotifyClientTerminationResponse>, Status> {
        self.log(|| format!("NotifyClientTermination {:?}", request.get_ref()));
        Ok(Response::new(pb::NotifyClientTerminationResponse {
            status: ok(),
        }))
    }

    async fn change_invisible_duration(
        &self,
        request: Request<pb::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<pb::ChangeInvisibleDurationResponse>, Status> {
        let request = request.into_inner();
        let group = name(request.group.as_ref());
        let topic = name(request.topic.as_ref());
        let invisible = std_duration(request.invisible_duration, DEFAULT_INVISIBLE);
        let mut state = self.0.state.lock().unwrap();
        let Some((offset, delivery)) =
            state.delivery(&group, &topic, &request.receipt_handle, &request.message_id)
        else {
            return Ok(Response::new(pb::ChangeInvisibleDurationResponse {
                status: Some(status(
                    pb::Code::InvalidReceiptHandle,
                    "unknown receipt handle",
                )),
                receipt_handle: String::new(),
            }));
        };
        delivery.invisible_until = Some(Instant::now() + invisible);
        let handle = state.new_handle(&group, &topic, offset);
        if let Some(deliveries) = state.groups.get_mut(&(group.clone(), topic.clone())) {
            deliveries[offset].handle = Some(handle.clone());
        }
        self.log(|| format!("ChangeInvisibleDuration {group} {topic} offset {offset}"));
        Ok(Response::new(pb::ChangeInvisibleDurationResponse {
            status: ok(),
            receipt_handle: handle,
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut verbose = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().context("--listen needs HOST:PORT")?,
            "--verbose" => verbose = true,
            _ => bail!("usage: grpc-broker [--listen 127.0.0.1:0] [--verbose]"),
        }
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    let service = Service(Arc::new(Broker {
        state: Mutex::new(State::default()),
        arrived: Notify::new(),
        address,
        verbose,
        next_message_id: Mutex::new(0),
    }));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    println!("listening {address}");
    std::io::stdout().flush()?;
    Server::builder()
        .tcp_nodelay(true)
        .add_service(
            MessagingServiceServer::new(service).max_decoding_message_size(MAX_BODY_SIZE * 4),
        )
        .serve_with_incoming(incoming)
        .await
        .context("serving")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_as_the_java_client_writes_it() {
        assert_eq!(crc32_hex(b"123456789"), "CBF43926");
        assert_eq!(crc32_hex(b""), "0");
    }

    #[test]
    fn tag_filters() {
        let tag = |e: &str| pb::FilterExpression {
            r#type: pb::FilterType::Tag as i32,
            expression: e.to_string(),
        };
        assert!(matches(None, Some("A")));
        assert!(matches(Some(&tag("*")), None));
        assert!(matches(Some(&tag("A || B")), Some("B")));
        assert!(!matches(Some(&tag("A||B")), Some("C")));
        assert!(!matches(Some(&tag("A")), None));
    }

    fn stored(id: &str) -> pb::Message {
        pb::Message {
            system_properties: Some(pb::SystemProperties {
                message_id: id.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ids(messages: &[pb::Message]) -> Vec<String> {
        messages
            .iter()
            .map(|m| m.system_properties.as_ref().unwrap().message_id.clone())
            .collect()
    }

    #[test]
    fn receive_hides_ack_removes_and_invisibility_ends() {
        let mut state = State::default();
        state
            .topics
            .insert("T".into(), vec![stored("a"), stored("b"), stored("c")]);
        let long = Duration::from_secs(60);
        let (first, _) = state.take("G", "T", None, 2, long);
        assert_eq!(ids(&first), ["a", "b"]);
        // Another group sees everything; this one only what is still visible.
        assert_eq!(ids(&state.take("H", "T", None, 8, long).0), ["a", "b", "c"]);
        let (rest, next) = state.take("G", "T", None, 8, Duration::ZERO);
        assert_eq!(ids(&rest), ["c"]);
        assert!(next.is_some());
        // Acked by handle: gone for good; c, invisible for no time, comes again.
        for message in &first {
            let handle = message
                .system_properties
                .as_ref()
                .unwrap()
                .receipt_handle
                .clone();
            let (_, delivery) = state.delivery("G", "T", &handle.unwrap(), "").unwrap();
            delivery.acked = true;
        }
        let (again, _) = state.take("G", "T", None, 8, long);
        assert_eq!(ids(&again), ["c"]);
        let properties = again[0].system_properties.as_ref().unwrap();
        assert_eq!(properties.delivery_attempt, Some(2));
        assert!(state.take("G", "T", None, 8, long).0.is_empty());
    }
}
