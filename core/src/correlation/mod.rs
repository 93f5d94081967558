//! Correlation: decoded commands into message events keyed by message ID.
//!
//! A response finds its request by the exchange its decoder numbered both with. Each side of a
//! connection makes events of its own: the client's (the process that sent the request:
//! producer or consumer) and the broker's (the process that received it: the message stored,
//! delivered, reported back). What a process that accepts RocketMQ connections sends on its own
//! (a relay, sidecar or proxy forwarding its clients' requests) is theirs, not its own; and
//! once such a process is seen forwarding, what it accepts is relayed, not served: it makes no
//! broker events either. Settlements that carry no message ID (acks, offset commits,
//! send-backs) are resolved through bounded indexes of the messages each side saw.
//!
//! A request whose response never shows is an error only when the agent saw everything that
//! could have carried it; when it knows it missed something (a gap, lost records, the
//! connection no longer followed, the agent stopping) the outcome says so instead.

mod index;
pub mod lag;
pub mod message_key;

use std::{net::SocketAddr, sync::Arc};

use serde::Serialize;

use std::collections::HashSet;

use message_key::{received_message_key, sent_message_key};

use crate::{
    decoder::{
        DecodedCommand, MessageMeta, RequestCode, ResponseCode, Wire,
        operation::{Operation, SendResult},
    },
    memory::{Bounded, HeapSize, Shares},
    sources::{ConnectionId, Direction, EndCause},
};
use index::{Received, ReceivedIndex, SentIndex};

/// Requests in flight per agent at most; the oldest are forgotten first beyond it.
const MAX_PENDING: usize = 65_536;
/// A request with no response after this long ends as an error.
pub const DEFAULT_TIMEOUT_NS: u64 = 30_000_000_000;
/// Times a message may be consumed again when the send-back does not say (the broker's
/// default `retryMaxTimes`).
const DEFAULT_MAX_RECONSUME_TIMES: i32 = 16;

/// An address as its peer knows it: an IPv4 address that a dual-stack socket holds as IPv6
/// (`::ffff:a.b.c.d`, as a JVM's sockets report) is the IPv4 address it is.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// Where an event was seen: the traced process and its peer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Endpoint {
    pub pid: u32,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// Set when the traced process is the broker of the connection (it received the
    /// request): the client it served, whose address is `peer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<Arc<ServedClient>>,
    /// Set when the event was seen as a RocketMQ 5 gRPC call: its method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_method: Option<&'static str>,
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
    fn of(cause: EndCause) -> Option<Self> {
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

/// Requests that ended without a response the agent could see, by why it could not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UnseenCounters {
    pub capture_gap: u64,
    pub capture_lost: u64,
    pub deselected: u64,
    pub not_followed: u64,
    pub agent_stopped: u64,
    pub capture_ended: u64,
}

impl UnseenCounters {
    fn count(&mut self, reason: Unseen) {
        *match reason {
            Unseen::CaptureGap => &mut self.capture_gap,
            Unseen::CaptureLost => &mut self.capture_lost,
            Unseen::Deselected => &mut self.deselected,
            Unseen::NotFollowed => &mut self.not_followed,
            Unseen::AgentStopped => &mut self.agent_stopped,
            Unseen::CaptureEnded => &mut self.capture_ended,
        } += 1;
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CorrelationCounters {
    pub sends: u64,
    /// Sends of a message this agent had seen sent before (client retries).
    pub send_retries: u64,
    pub receives: u64,
    pub settles: u64,
    /// Requests the broker did not answer in time, with the agent seeing everything.
    pub timeouts: u64,
    /// Requests whose connection closed before an answer, with the agent seeing everything.
    pub closed_unanswered: u64,
    /// Pulls and pops (long polls: the broker holds them until messages come) still waiting
    /// when their consumer closed the connection: how a consumer stops, not errors.
    pub long_polls_closed: u64,
    /// Requests whose response the agent may have missed, by reason: not errors.
    pub unseen_responses: UnseenCounters,
    /// Requests the traced process received (it is the broker of that connection).
    pub server_side_requests: u64,
    /// The broker's view: messages it stored (send requests answered), delivered (in pull and
    /// pop responses) and clients' reports on them (acks, send-backs, offset commits, ...).
    pub broker_stored: u64,
    pub broker_delivered: u64,
    pub broker_reports: u64,
    /// Requests a process accepted and forwarded (a relay, sidecar or proxy): no broker events.
    pub relayed_requests: u64,
    /// Queues whose consumer lag is not followed: too many were.
    pub lag_queues_dropped: u64,
    /// Requests made by processes that accept RocketMQ connections (brokers, proxies,
    /// sidecars, relays): forwarded or internal traffic, never taken for a client's.
    pub serving_process_requests: u64,
    /// Messages without any ID (no UNIQ_KEY and no offsetMsgId): no trace can be made.
    pub messages_without_id: u64,
    /// Settlements whose message this host never saw received.
    pub settles_unresolved: u64,
    /// Requests forgotten, oldest first, beyond the count or memory share of those waiting.
    pub pending_evicted: u64,
    /// Received messages forgotten (their settlements then go unresolved), oldest first.
    pub received_evicted: u64,
    /// Sent messages forgotten (a later retry of one is then a send of its own), oldest first.
    pub sent_evicted: u64,
}

/// Bytes held by the correlation stage, against its shares of the memory budget.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CorrelationMemory {
    pub pending_bytes: u64,
    pub received_bytes: u64,
    pub sent_bytes: u64,
}

struct Pending {
    request: DecodedCommand,
    deadline_ns: u64,
    /// The capture's lost-record count when the request was made.
    lost_at: u64,
    /// Something the agent missed since the request, that may have held its response.
    missed: Option<Unseen>,
}

/// (connection, exchange): the decoder numbers a request and its response alike.
type PendingKey = (ConnectionId, u64);

/// What one side remembers of the messages it saw, so that a client's and a broker's views
/// of one message never settle or retry each other's.
struct Seen {
    received: ReceivedIndex,
    sent: SentIndex,
}

impl Seen {
    /// Half of each share: the two sides share the budget.
    fn new(shares: &Shares) -> Self {
        Self {
            received: ReceivedIndex::new(shares.received / 2),
            sent: SentIndex::new(shares.sent / 2),
        }
    }
}

/// Which counter an event adds to.
#[derive(Clone, Copy)]
enum Counted {
    Send,
    Receive,
    Settle,
}

pub struct Correlator {
    /// Added to command timestamps to make them Unix time (0 for captures, which are).
    clock_offset_ns: i64,
    timeout_ns: u64,
    /// Requests waiting for their response, oldest first, within their memory share.
    pending: Bounded<PendingKey, Pending>,
    /// Records the capture has lost so far, as last told.
    capture_lost: u64,
    clients: Seen,
    broker: Seen,
    /// Client ids the heartbeats on connections the traced process accepted gave.
    client_ids: crate::FastMap<ConnectionId, String>,
    /// The client last described on each such connection, shared by the events that name it
    /// (not three strings per event).
    served: crate::FastMap<ConnectionId, Arc<ServedClient>>,
    /// Processes seen forwarding what clients sent them (relays, sidecars, proxies).
    forwarders: HashSet<u32>,
    lags: lag::Lags,
    counters: CorrelationCounters,
}

impl Correlator {
    pub fn set_clock_offset(&mut self, clock_offset_ns: i64) {
        self.clock_offset_ns = clock_offset_ns;
    }

    pub fn new(clock_offset_ns: i64, timeout_ns: u64) -> Self {
        Self {
            clock_offset_ns,
            timeout_ns,
            pending: Bounded::new(MAX_PENDING, Shares::default().pending),
            capture_lost: 0,
            clients: Seen::new(&Shares::default()),
            broker: Seen::new(&Shares::default()),
            client_ids: crate::FastMap::default(),
            served: crate::FastMap::default(),
            forwarders: HashSet::new(),
            lags: lag::Lags::default(),
            counters: CorrelationCounters::default(),
        }
    }

    /// Keeps within these shares of the memory budget.
    pub fn set_memory(&mut self, shares: &Shares) {
        self.pending = Bounded::new(MAX_PENDING, shares.pending);
        self.clients = Seen::new(shares);
        self.broker = Seen::new(shares);
    }

    /// Bytes held now.
    pub fn memory(&self) -> CorrelationMemory {
        CorrelationMemory {
            pending_bytes: self.pending.held().bytes as u64,
            received_bytes: (self.clients.received.held().bytes + self.broker.received.held().bytes)
                as u64,
            sent_bytes: (self.clients.sent.held().bytes + self.broker.sent.held().bytes) as u64,
        }
    }

    /// Counters, with what the indexes forgot.
    pub fn counters(&self) -> CorrelationCounters {
        CorrelationCounters {
            received_evicted: self.clients.received.held().evicted
                + self.broker.received.held().evicted,
            sent_evicted: self.clients.sent.held().evicted + self.broker.sent.held().evicted,
            lag_queues_dropped: self.lags.dropped,
            ..self.counters.clone()
        }
    }

    fn unix(&self, ns: u64) -> u64 {
        ns.saturating_add_signed(self.clock_offset_ns)
    }

    /// The capture has lost `total` records since it started: requests waiting now may have
    /// lost their response with them.
    pub fn capture_lost(&mut self, total: u64) {
        self.capture_lost = self.capture_lost.max(total);
    }

    pub fn push(&mut self, command: DecodedCommand, out: &mut Vec<MessageEvent>) {
        let request_direction = if command.command.is_response() {
            crate::decoder::opposite(command.command.direction)
        } else {
            command.command.direction
        };
        if !command.command.is_response() {
            if request_direction == Direction::Ingress {
                // This process is the broker of the connection.
                self.counters.server_side_requests += 1;
                if let Operation::Heartbeat(heartbeat) = &command.operation
                    && let Some(id) = &heartbeat.client_id
                {
                    self.client_ids.insert(command.connection, id.clone());
                }
            } else if command.serving_process
                && matches!(
                    command.operation,
                    Operation::Send(_) | Operation::Pull(_) | Operation::Pop(_)
                )
            {
                // Before the answer it forwards reaches its own client.
                self.forwarders.insert(command.pid);
            }
        }
        let key = command
            .command
            .exchange
            .map(|exchange| (command.connection, exchange));
        if command.command.is_response() {
            if let Some(pending) = key.and_then(|key| self.pending.remove(&key)) {
                self.complete(pending.request, Some(command), Unanswered::TimedOut, out);
            }
            return;
        }
        // A one-way request is done once made (every other one has its exchange).
        let Some(key) = key.filter(|_| !command.command.header.is_oneway()) else {
            return self.complete(command, None, Unanswered::TimedOut, out);
        };
        let bytes = command.heap_bytes();
        // A long poll may rightly wait its suspend (pull) or poll (pop) time before answering.
        let suspend_ms = command.command.long_poll_ms();
        let deadline_ns = command
            .command
            .end_ns
            .saturating_add(self.timeout_ns)
            .saturating_add(suspend_ms.saturating_mul(1_000_000));
        let pending = Pending {
            request: command,
            deadline_ns,
            lost_at: self.capture_lost,
            missed: None,
        };
        // The oldest go first, one by one, until the new one fits.
        let counters = &mut self.counters;
        self.pending
            .insert_with(key, pending, bytes, |_, _| counters.pending_evicted += 1);
    }

    /// Requests waiting for their response.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// The keys of the requests waiting that `which` picks, by connection and then in the
    /// order they were made there.
    fn keys_where(&self, which: impl Fn(&PendingKey, &Pending) -> bool) -> Vec<PendingKey> {
        let mut keys: Vec<PendingKey> = self
            .pending
            .iter()
            .filter(|(key, pending)| which(key, pending))
            .map(|(key, _)| *key)
            .collect();
        keys.sort_unstable();
        keys
    }

    fn keys_of(&self, connection: ConnectionId) -> Vec<PendingKey> {
        self.keys_where(|(of, _), _| *of == connection)
    }

    /// Bytes of `connection` read in `direction` were not captured: the responses of requests
    /// waiting on it in that direction may have been among them.
    pub fn gap(&mut self, connection: ConnectionId, direction: Direction) {
        for key in self.keys_of(connection) {
            if let Some(p) = self.pending.get_mut(&key)
                && crate::decoder::opposite(p.request.command.direction) == direction
            {
                p.missed.get_or_insert(Unseen::CaptureGap);
            }
        }
    }

    /// Consumer lag per group and queue, where known.
    pub fn lags(&self) -> Vec<lag::QueueLag> {
        self.lags.lags()
    }

    /// The process exited: its pid may come back as another program.
    pub fn forget_process(&mut self, pid: u32) {
        self.forwarders.remove(&pid);
    }

    /// The agent no longer follows `connection`: requests still waiting on it end, as
    /// unanswered when it closed with the agent seeing everything, else as unseen.
    pub fn ended(
        &mut self,
        connection: ConnectionId,
        cause: EndCause,
        out: &mut Vec<MessageEvent>,
    ) {
        self.client_ids.remove(&connection);
        self.served.remove(&connection);
        for key in self.keys_of(connection) {
            let pending = self.pending.remove(&key).expect("listed");
            let end = match pending.missed.or(Unseen::of(cause)) {
                Some(reason) => Unanswered::Unseen(reason),
                None => {
                    let long_poll = pending
                        .request
                        .command
                        .request()
                        .is_some_and(RequestCode::returns_messages);
                    if long_poll {
                        self.counters.long_polls_closed += 1;
                    } else {
                        self.counters.closed_unanswered += 1;
                    }
                    Unanswered::Closed
                }
            };
            self.complete(pending.request, None, end, out);
        }
    }

    /// Ends requests whose response did not come by `now_ns` (the sources' clock): as errors
    /// when the agent saw everything, else as unseen.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<MessageEvent>) {
        self.lags.expire(now_ns);
        for key in self.keys_where(|_, p| p.deadline_ns <= now_ns) {
            let pending = self.pending.remove(&key).expect("listed");
            let missed = pending
                .missed
                .or((self.capture_lost > pending.lost_at).then_some(Unseen::CaptureLost));
            if missed.is_none() {
                self.counters.timeouts += 1;
            }
            let end = missed.map_or(Unanswered::TimedOut, Unanswered::Unseen);
            self.complete(pending.request, None, end, out);
        }
    }

    /// Ends every request still waiting: the source is done (`reason`: the agent stopped, or
    /// the capture ended).
    pub fn finish(&mut self, reason: Unseen, out: &mut Vec<MessageEvent>) {
        while let Some((_, pending)) = self.pending.pop_oldest() {
            let reason = pending.missed.unwrap_or(reason);
            self.complete(pending.request, None, Unanswered::Unseen(reason), out);
        }
    }

    /// Where `request` was seen; from a broker's side, with the client it came from.
    fn endpoint(&mut self, request: &DecodedCommand) -> Endpoint {
        let header = &request.command.header;
        let client = (request.command.direction == Direction::Ingress).then(|| {
            // gRPC calls name their client in every request's headers.
            let client_id = self
                .client_ids
                .get(&request.connection)
                .map(String::as_str)
                .or_else(|| request.command.client_id());
            let mut digits = itoa::Buffer::new();
            let version = request.command.client_version(&mut digits);
            match self.served.get(&request.connection) {
                Some(known)
                    if known.client_id.as_deref() == client_id
                        && known.language == header.language
                        && known.version == version =>
                {
                    known.clone()
                }
                _ => {
                    let client = Arc::new(ServedClient {
                        client_id: client_id.map(String::from),
                        language: header.language.clone(),
                        version: version.to_string(),
                    });
                    self.served.insert(request.connection, client.clone());
                    client
                }
            }
        });
        Endpoint {
            pid: request.pid,
            local: request.local.map(canonical),
            peer: request.peer.map(canonical),
            client,
            grpc_method: request.command.rpc_method(),
        }
    }

    /// The indexes of the side `step` was seen on.
    fn seen(&mut self, step: &Step) -> &mut Seen {
        if step.endpoint.is_broker() {
            &mut self.broker
        } else {
            &mut self.clients
        }
    }

    fn count(&mut self, step: &Step, counted: Counted) {
        let c = &mut self.counters;
        *match (step.endpoint.is_broker(), counted) {
            (false, Counted::Send) => &mut c.sends,
            (false, Counted::Receive) => &mut c.receives,
            (false, Counted::Settle) => &mut c.settles,
            (true, Counted::Send) => &mut c.broker_stored,
            (true, Counted::Receive) => &mut c.broker_delivered,
            (true, Counted::Settle) => &mut c.broker_reports,
        } += 1;
    }

    /// Events for a request and its response (None: oneway, or no response came, and
    /// `unanswered` says how it ended).
    fn complete(
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
        let outcome = match (response.as_ref(), unanswered) {
            (Some(r), _) => outcome_of(r),
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
            .as_ref()
            .map_or(request.command.end_ns, |r| r.command.end_ns)
            .max(request.command.end_ns);
        let step = Step {
            start: self.unix(request.command.start_ns),
            end: self.unix(end_ns),
            end_ns,
            outcome,
            endpoint: self.endpoint(&request),
        };
        // The response's messages move into the events: not cloned, one by one.
        let (mut pulled, result) = match response.map(|r| r.operation) {
            Some(Operation::Pulled(pulled)) => (Some(pulled), None),
            Some(Operation::SendResult(result)) => (None, Some(result)),
            _ => (None, None),
        };
        match &request.operation {
            Operation::Send(send) => {
                // A consumer whose send-back failed sends the message to the retry topic
                // itself (or to the dead-letter topic): a settlement, not a new message.
                if let Some(settlement) = send.topic.as_deref().and_then(settlement_of_resend) {
                    for message in &send.messages {
                        self.resent(message, settlement, send.topic.clone(), &step, out);
                    }
                    return;
                }
                for (index, message) in send.messages.iter().enumerate() {
                    self.sent_message(message, index, send, result.as_ref(), &step, out);
                }
            }
            Operation::Pull(pull) => {
                if let Some(pulled) = &mut pulled {
                    let via = if pull.lite {
                        RequestCode::LitePullMessage
                    } else {
                        RequestCode::PullMessage
                    };
                    self.received_messages(
                        std::mem::take(&mut pulled.messages),
                        pull.consumer_group.as_deref(),
                        via,
                        &step,
                        out,
                    );
                }
                if let (Some(pulled), Some(group), Some(topic), Some(queue)) =
                    (&pulled, &pull.consumer_group, &pull.topic, pull.queue_id)
                    && let Some(max) = pulled.max_offset
                {
                    self.lags.pulled(group, topic, queue, max, end_ns);
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
                        pulled.messages,
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
                // gRPC names the messages; remoting, where they sit.
                for id in &ack.message_ids {
                    let found = self.seen(&step).received.by_any_id(id);
                    self.settle(
                        found.as_deref(),
                        settlement,
                        ack.consumer_group.clone(),
                        ack.topic.clone(),
                        step.clone(),
                        out,
                    );
                }
                if !ack.message_ids.is_empty() {
                    return;
                }
                let found = match (&ack.topic, ack.queue_id, ack.offset) {
                    (Some(topic), Some(queue), Some(offset)) => {
                        self.seen(&step).received.by_position(topic, queue, offset)
                    }
                    _ => None,
                };
                self.settle(
                    found.as_deref(),
                    settlement,
                    ack.consumer_group.clone(),
                    ack.topic.clone(),
                    step,
                    out,
                );
            }
            Operation::SendBack(back) => {
                let received = &self.seen(&step).received;
                let found = back
                    .origin_msg_id
                    .as_deref()
                    .and_then(|id| received.by_any_id(id));
                // The broker's rule (`consumerSendMsgBack`): past the group's reconsume times,
                // or asked for with a negative delay level, the message goes to the DLQ.
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
                self.settle(
                    found.as_deref(),
                    settlement,
                    back.consumer_group.clone(),
                    topic,
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
            _ => {}
        }
    }

    fn sent_message(
        &mut self,
        message: &MessageMeta,
        index: usize,
        send: &crate::decoder::operation::SendRequest,
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
            self.seen(step).received.insert(&key, &message, group);
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

    fn offset_committed(
        &mut self,
        group: &str,
        topic: &str,
        queue: i32,
        commit: i64,
        step: &Step,
        out: &mut Vec<MessageEvent>,
    ) {
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
                out,
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
        out: &mut Vec<MessageEvent>,
    ) {
        let Some(received) = received else {
            self.counters.settles_unresolved += 1;
            return;
        };
        self.count(&step, Counted::Settle);
        out.push(MessageEvent::Settle(SettleEvent {
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

/// How a request without a response ended.
#[derive(Clone, Copy)]
enum Unanswered {
    /// Its deadline passed, the agent seeing everything.
    TimedOut,
    /// Its connection closed, the agent seeing everything.
    Closed,
    /// The agent may have missed the response.
    Unseen(Unseen),
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

/// When a request ran, how it ended, and where: what every event of it shares.
#[derive(Clone)]
struct Step {
    start: u64,
    end: u64,
    /// `end` by the sources' clock.
    end_ns: u64,
    outcome: Outcome,
    endpoint: Endpoint,
}

fn outcome_of(response: &DecodedCommand) -> Outcome {
    if response.command.wire == Wire::Grpc {
        return grpc_outcome(response);
    }
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

/// A gRPC call's outcome: RocketMQ's `Status.code` (or, below 100, gRPC's own status).
fn grpc_outcome(response: &DecodedCommand) -> Outcome {
    use crate::decoder::grpc::{grpc_status_name, proto::Code};
    let code = response.command.header.code;
    // A receive that found nothing new has not failed.
    let nothing_new = response.command.request_code == Some(RequestCode::PopMessage)
        && code == Code::MessageNotFound as i32;
    if code == Code::Ok as i32 || nothing_new {
        return Outcome::Ok;
    }
    let error_type = match u32::try_from(code) {
        Ok(status) if status < 100 => format!("GRPC_{}", grpc_status_name(status)),
        _ => Code::try_from(code)
            .map(|c| c.as_str_name().to_string())
            .unwrap_or_else(|_| format!("CODE_{code}")),
    };
    Outcome::Error {
        error_type,
        message: response.command.header.remark.clone(),
    }
}

#[cfg(test)]
mod tests;
