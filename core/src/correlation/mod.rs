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

mod events;
mod index;
pub mod lag;
pub mod message_key;
mod operations;

use std::{collections::HashSet, net::SocketAddr, sync::Arc};

use serde::Serialize;

pub use events::{
    Endpoint, MessageEvent, MessageLabels, Outcome, ReceiveEvent, SendEvent, ServedClient,
    SettleEvent, Settlement, Unseen,
};

use crate::{
    decoder::{DecodedCommand, RequestCode, operation::Operation},
    memory::{Bounded, HeapSize, Shares},
    sources::{ConnectionId, Direction, EndCause},
};
use index::{ReceivedIndex, SentIndex};

/// Requests in flight per agent at most; the oldest are forgotten first beyond it.
const MAX_PENDING: usize = 65_536;
/// A request with no response after this long ends as an error.
pub const DEFAULT_TIMEOUT_NS: u64 = 30_000_000_000;

/// An address as its peer knows it: an IPv4 address that a dual-stack socket holds as IPv6
/// (`::ffff:a.b.c.d`, as a JVM's sockets report) is the IPv4 address it is.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
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
    /// Requests made while another agent owned the host's traffic (before this one took over
    /// from it, or after this one handed over to it): that agent makes their events.
    pub left_to_other_agent: u64,
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
    /// Records lost before the request, as the stream said it (in order with the request).
    lost_at: u64,
    /// Its connection's gaps in the response's direction when the request was made.
    gaps_at: u64,
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
    /// Records lost so far as the stream says it: told in order with the commands, so that a
    /// request knows which losses came after it.
    lost_in_stream: u64,
    /// Records lost so far as the capture's counters last said (out of order with the
    /// commands; may be ahead of the stream, for losses no later record has told of yet).
    lost_reported: u64,
    /// Gaps so far per connection and direction: a request made before a gap in its
    /// response's direction may have lost its response in it (counted here, O(1) per gap,
    /// and compared with the request's own count when it ends).
    gaps: crate::FastMap<(ConnectionId, Direction), u64>,
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
    /// The requests whose events this agent makes, by when they were made (the sources'
    /// clock): all, unless it took over from another agent or handed over to one. The other
    /// agent makes the rest; every request is seen whole by one of them.
    owned: std::ops::Range<u64>,
    /// From when this agent owns every request again: the one it handed over to exited.
    taken_back_at: Option<u64>,
    /// The agent this one took over from still runs: it settles the messages it saw received,
    /// which this one must not settle by their ID alone.
    predecessor_running: bool,
    /// Settlements made by the request being completed, kept apart from its other events:
    /// they go by their message's receipt, not by who owns the request.
    settled: Vec<MessageEvent>,
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
            lost_in_stream: 0,
            lost_reported: 0,
            gaps: crate::FastMap::default(),
            clients: Seen::new(&Shares::default()),
            broker: Seen::new(&Shares::default()),
            client_ids: crate::FastMap::default(),
            served: crate::FastMap::default(),
            forwarders: HashSet::new(),
            lags: lag::Lags::default(),
            owned: 0..u64::MAX,
            taken_back_at: None,
            predecessor_running: false,
            settled: Vec::new(),
            counters: CorrelationCounters::default(),
        }
    }

    /// Another agent made the events of requests made before `from_ns` (the sources' clock):
    /// it saw them whole, this one perhaps not.
    pub fn take_over_at(&mut self, from_ns: u64) {
        self.owned.start = from_ns;
    }

    /// Another agent makes the events of requests made from `from_ns` on: this one sees what
    /// it still owns to the end, the other sees those whole.
    pub fn hand_over_at(&mut self, from_ns: u64) {
        self.owned.end = from_ns;
    }

    /// The agent this one handed over to is gone: requests made from `from_ns` on are this
    /// one's again (those before it were that agent's, which may have traced them).
    pub fn take_back_at(&mut self, from_ns: u64) {
        self.taken_back_at = Some(from_ns);
    }

    /// Whether the agent this one took over from still runs.
    pub fn set_predecessor_running(&mut self, running: bool) {
        self.predecessor_running = running;
    }

    /// Whether the events of a request made at `start_ns` are this agent's to make.
    fn owns_made_at(&self, start_ns: u64) -> bool {
        self.owned.contains(&start_ns) || self.taken_back_at.is_some_and(|at| start_ns >= at)
    }

    /// Requests waiting whose events are this agent's to make: those that make any (a
    /// heartbeat, a route query or a 5.x client's telemetry stream, open for its life, make
    /// none).
    pub fn waiting_owned(&self) -> usize {
        self.pending
            .iter()
            .filter(|(_, pending)| {
                self.owns(pending) && operations::makes_events(&pending.request.operation)
            })
            .count()
    }

    fn owns(&self, pending: &Pending) -> bool {
        self.owns_made_at(pending.request.command.start_ns)
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

    /// The capture has lost `total` records since it started, as its counters say: requests
    /// waiting now may have lost their response with them.
    pub fn capture_lost(&mut self, total: u64) {
        self.lost_reported = self.lost_reported.max(total);
    }

    /// The capture had lost `total` records since it started before the commands that follow:
    /// requests waiting now may have lost their response with them, those made later not.
    pub fn records_lost_before(&mut self, total: u64) {
        self.lost_in_stream = self.lost_in_stream.max(total);
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
        let gaps_at = self.gaps_of(command.connection, command.command.direction);
        let pending = Pending {
            request: command,
            deadline_ns,
            lost_at: self.lost_in_stream,
            gaps_at,
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
        *self.gaps.entry((connection, direction)).or_default() += 1;
    }

    /// The gaps so far in the direction of the responses to requests read in
    /// `request_direction` on `connection`.
    fn gaps_of(&self, connection: ConnectionId, request_direction: Direction) -> u64 {
        let response_direction = crate::decoder::opposite(request_direction);
        self.gaps
            .get(&(connection, response_direction))
            .copied()
            .unwrap_or(0)
    }

    /// Why a request's response may have gone unseen: a gap in its stream, or records the
    /// capture lost since it was made.
    fn missed(&self, pending: &Pending) -> Option<Unseen> {
        let request = &pending.request;
        let gaps = self.gaps_of(request.connection, request.command.direction);
        let lost = self.lost_in_stream.max(self.lost_reported);
        (gaps > pending.gaps_at)
            .then_some(Unseen::CaptureGap)
            .or((lost > pending.lost_at).then_some(Unseen::CaptureLost))
    }

    /// Consumer lag per group and queue, where known.
    pub fn lags(&self) -> Vec<lag::QueueLag> {
        self.lags.lags()
    }

    /// The process exited: its pid may come back as another program.
    pub fn forget_process(&mut self, pid: u32) {
        self.forwarders.remove(&pid);
    }

    /// Processes seen forwarding what their clients send.
    pub fn forwarding_pids(&self) -> Vec<u32> {
        self.forwarders.iter().copied().collect()
    }

    /// These processes forward what their clients send, as another agent saw.
    pub fn learn_forwarding(&mut self, pids: &[u32]) {
        self.forwarders.extend(pids);
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
            let end = match self.missed(&pending).or(Unseen::of(cause)) {
                Some(reason) => Unanswered::Unseen(reason),
                None if !self.owns(&pending) => Unanswered::Closed,
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
        for direction in [Direction::Egress, Direction::Ingress] {
            self.gaps.remove(&(connection, direction));
        }
    }

    /// Ends requests whose response did not come by `now_ns` (the sources' clock): as errors
    /// when the agent saw everything, else as unseen.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<MessageEvent>) {
        self.lags.expire(now_ns);
        for key in self.keys_where(|_, p| p.deadline_ns <= now_ns) {
            let pending = self.pending.remove(&key).expect("listed");
            let missed = self.missed(&pending);
            if missed.is_none() && self.owns(&pending) {
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
            let reason = self.missed(&pending).unwrap_or(reason);
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
            seen_as: request.seen_as,
            client,
            rpc: request.command.rpc(),
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

/// When a request ran, how it ended, and where: what every event of it shares.
#[derive(Clone)]
struct Step {
    /// Whether this agent owns the request (see [`Correlator::take_over_at`]).
    owned: bool,
    start: u64,
    end: u64,
    /// `end` by the sources' clock.
    end_ns: u64,
    outcome: Outcome,
    endpoint: Endpoint,
}

#[cfg(test)]
mod tests;
