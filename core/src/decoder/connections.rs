//! The decoder stage over all connections: one [`ConnectionDecoder`] per connection, fed by
//! stream events, emitting commands with the connection they travelled on.

use std::{collections::HashSet, net::SocketAddr};

use serde::Serialize;

use super::{
    Command, ConnectionDecoder, DecoderConfig, DecoderCounters, Recognition, RequestCode,
    grpc::GrpcDecoder,
    operation::{Operation, interpret},
    recognize,
};
use crate::{
    FastMap,
    memory::HeapSize,
    sources::{Connection, ConnectionId, Direction, Origin, SeenAs},
    streams::StreamEvent,
};

/// A command and where it was seen.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecodedCommand {
    pub connection: ConnectionId,
    pub pid: u32,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// How the connection's bytes were seen (plain, or TLS plaintext from its library).
    pub seen_as: SeenAs,
    /// The process also accepts RocketMQ connections (a broker, proxy, sidecar or relay): what
    /// it sends on its own connections is forwarded or internal, never a client's own message.
    pub serving_process: bool,
    #[serde(flatten)]
    pub command: Command,
    pub operation: Operation,
}

impl HeapSize for DecodedCommand {
    fn heap_bytes(&self) -> usize {
        // The operation repeats what the header holds, about once more; the messages moved
        // into it.
        2 * self.command.header.heap_bytes()
            + self.operation.messages().map_or(0, HeapSize::heap_bytes)
            + self
                .command
                .body_json
                .as_ref()
                .map_or(0, |j| j.to_string().len())
    }
}

/// Bytes a connection may carry without a decoded frame before it is taken for another
/// protocol (connections joined mid-stream have no first bytes to recognise).
const UNDECODED_LIMIT: u64 = 64 << 10;
/// First bytes kept for recognition.
const RECOGNITION_BYTES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Unknown,
    RocketMq,
}

struct Tracked {
    connection: Connection,
    /// The process accepted it (skip_server_side): only its first bytes are looked at, to
    /// learn whether the process serves RocketMQ.
    accepted: bool,
    decoder: ConnectionDecoder,
    /// Set once the connection turned out to speak HTTP/2: RocketMQ 5 gRPC, it is hoped.
    grpc: Option<GrpcDecoder>,
    verdict: Verdict,
    /// The first bytes of each direction, while undecided: the client's are recognised
    /// (remoting, HTTP/2, TLS), both are handed to the gRPC decoder once it starts.
    first_bytes: [Vec<u8>; 2],
    /// Bytes seen of each direction, while undecided.
    seen: [u64; 2],
    undecoded_bytes: u64,
    /// Bytes its decoder held when last asked.
    held: usize,
    /// It began with a TLS ClientHello.
    encrypted: bool,
    /// The process was seen receiving clients' requests on it: it is the broker there.
    served: bool,
}

fn with_operation(mut command: Command) -> (Command, Operation) {
    let operation = interpret(&mut command);
    (command, operation)
}

impl Tracked {
    /// Hands over the responses its decoder still holds for their request, unpaired.
    fn release(
        &mut self,
        scratch: &mut Vec<Command>,
        serving_process: bool,
        out: &mut Vec<DecodedCommand>,
    ) {
        self.decoder.release(scratch);
        self.emit(serving_process, scratch.drain(..).map(with_operation), out);
    }

    fn emit(
        &self,
        serving_process: bool,
        commands: impl Iterator<Item = (Command, Operation)>,
        out: &mut Vec<DecodedCommand>,
    ) {
        for (command, operation) in commands {
            out.push(DecodedCommand {
                connection: self.connection.id,
                pid: self.connection.pid,
                local: self.connection.local,
                peer: self.connection.peer,
                seen_as: self.connection.seen_as,
                serving_process,
                operation,
                command,
            });
        }
    }

    /// For an accepted connection: Some(true) once its client's first bytes are RocketMQ
    /// remoting, Some(false) once they are not (or the process spoke first), None while unsure.
    fn serves_rocketmq(
        &mut self,
        direction: Direction,
        position: u64,
        bytes: &[u8],
    ) -> Option<bool> {
        let first = &mut self.first_bytes[Direction::Ingress as usize];
        if direction == Direction::Egress || position != first.len() as u64 {
            return Some(false);
        }
        let take = (RECOGNITION_BYTES - first.len()).min(bytes.len());
        first.extend_from_slice(&bytes[..take]);
        match recognize(first) {
            Recognition::Remoting => Some(true),
            // A plausible head whose header is longer than the bytes kept.
            Recognition::NeedMore if first.len() >= RECOGNITION_BYTES => Some(true),
            Recognition::NeedMore => None,
            Recognition::Other | Recognition::Http2 | Recognition::Tls => Some(false),
        }
    }

    /// Updates the verdict with new bytes; false when the connection is not RocketMQ.
    /// Recognised as HTTP/2, the connection's gRPC decoder is made: the caller then gives it
    /// the bytes so far.
    fn judge(&mut self, direction: Direction, position: u64, bytes: &[u8], decoded: bool) -> bool {
        if self.verdict == Verdict::RocketMq {
            return true;
        }
        if decoded || self.grpc.as_ref().is_some_and(GrpcDecoder::is_rocketmq) {
            self.verdict = Verdict::RocketMq;
            return true;
        }
        self.undecoded_bytes += bytes.len() as u64;
        let first = &mut self.first_bytes[direction as usize];
        if position == first.len() as u64 {
            let take = (RECOGNITION_BYTES - first.len()).min(bytes.len());
            first.extend_from_slice(&bytes[..take]);
        }
        self.seen[direction as usize] = position + bytes.len() as u64;
        // The client speaks first in both protocols: its direction is known but for
        // connections open before tracing began (an HTTP/2 server may send its settings
        // before the client's preface comes).
        let client = match self.connection.origin {
            Origin::Connect => Direction::Egress,
            Origin::Accept => Direction::Ingress,
            Origin::Existing => return self.undecoded_bytes < UNDECODED_LIMIT,
        };
        let first = &self.first_bytes[client as usize];
        if direction == client && position < first.len() as u64 {
            match recognize(first) {
                Recognition::Remoting => self.verdict = Verdict::RocketMq,
                // A head whose header is longer than the bytes kept: the decoder will tell.
                Recognition::NeedMore => {}
                Recognition::Tls => {
                    self.encrypted = true;
                    return false;
                }
                Recognition::Http2 if self.grpc.is_none() => {
                    self.grpc = Some(GrpcDecoder::new(Some(client)));
                }
                Recognition::Http2 => {}
                Recognition::Other => return false,
            }
        }
        self.verdict == Verdict::RocketMq || self.undecoded_bytes < UNDECODED_LIMIT
    }
}

#[derive(Default)]
pub struct Decoders {
    config: DecoderConfig,
    connections: FastMap<ConnectionId, Tracked>,
    /// Connections found not to speak RocketMQ remoting, or (with `skip_server_side`) seen
    /// from the broker's side, since the last `take_rejected`.
    rejected: Vec<Connection>,
    /// Processes seen accepting RocketMQ connections: brokers, name servers, proxies, relays.
    servers: HashSet<u32>,
    pub connections_rejected: u64,
    /// Of those, the connections whose client began TLS: encrypted, not traced.
    pub connections_tls: u64,
    pub connections_server_side: u64,
    /// Counters of connections that have closed, summed.
    closed: DecoderCounters,
    scratch: Vec<Command>,
    grpc_scratch: Vec<(Command, Operation)>,
    /// Bytes the connections' decoders hold, and their share of the memory budget.
    held: usize,
    held_limit: usize,
}

impl Decoders {
    pub fn new(config: DecoderConfig) -> Self {
        Self {
            config,
            held_limit: crate::memory::Shares::default().streams,
            ..Self::default()
        }
    }

    /// Keeps the connections' buffers within `bytes`.
    pub fn set_memory(&mut self, bytes: usize) {
        self.held_limit = bytes;
    }

    /// Bytes the connections' decoders hold now.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    fn remove(&mut self, id: &ConnectionId) -> Option<Tracked> {
        let t = self.connections.remove(id)?;
        self.held -= t.held;
        Some(t)
    }

    /// Takes note of what `id`'s decoder holds now; beyond the share, the connections
    /// holding most let go of their buffers, one by one, until the rest fits.
    fn account(&mut self, id: ConnectionId) {
        let Some(t) = self.connections.get_mut(&id) else {
            return;
        };
        let now = t.decoder.held_bytes() + t.grpc.as_ref().map_or(0, GrpcDecoder::held_bytes);
        self.held = self.held - t.held + now;
        t.held = now;
        if self.held <= self.held_limit {
            return;
        }
        // Down to 90 %, so that the search for the largest is not made at every byte.
        let target = self.held_limit - self.held_limit / 10;
        while self.held > target {
            let Some(largest) = self.connections.values_mut().max_by_key(|t| t.held) else {
                break;
            };
            let mut freed = largest.decoder.shed();
            if let Some(grpc) = &mut largest.grpc {
                let shed = grpc.shed(&mut largest.decoder.counters);
                largest.decoder.counters.bytes_shed += shed as u64;
                freed += shed;
            }
            largest.held -= freed.min(largest.held);
            self.held -= freed.min(self.held);
            if freed == 0 {
                break;
            }
        }
    }

    pub fn push(&mut self, event: &StreamEvent, out: &mut Vec<DecodedCommand>) {
        self.scratch.clear();
        let id = match event {
            StreamEvent::Opened(connection) => {
                // A connection the process accepted: it is the broker, name server or relay
                // there, once its client's first bytes show RocketMQ.
                let accepted = self.config.skip_server_side && connection.origin == Origin::Accept;
                let decoder =
                    ConnectionDecoder::new(self.config, connection.origin == Origin::Existing);
                let tracked = Tracked {
                    connection: connection.clone(),
                    accepted,
                    decoder,
                    grpc: (connection.origin == Origin::Existing).then(|| GrpcDecoder::new(None)),
                    verdict: Verdict::Unknown,
                    first_bytes: [Vec::new(), Vec::new()],
                    seen: [0, 0],
                    undecoded_bytes: 0,
                    held: 0,
                    encrypted: false,
                    served: false,
                };
                self.connections.insert(connection.id, tracked);
                return;
            }
            StreamEvent::Data {
                connection,
                direction,
                position,
                bytes,
                timestamp_ns,
            } => {
                let Some(t) = self.connections.get_mut(connection) else {
                    return;
                };
                if t.accepted {
                    match t.serves_rocketmq(*direction, *position, bytes) {
                        Some(true) => {
                            let t = self.remove(connection).expect("present");
                            self.servers.insert(t.connection.pid);
                            self.connections_server_side += 1;
                            self.rejected.push(t.connection);
                        }
                        Some(false) => {
                            let t = self.remove(connection).expect("present");
                            self.connections_rejected += 1;
                            self.rejected.push(t.connection);
                        }
                        None => {}
                    }
                    return;
                }
                // A connection joined mid-stream is tried as remoting and as gRPC until one
                // of them decodes.
                let trial = t.grpc.is_some()
                    && t.verdict == Verdict::Unknown
                    && t.connection.origin == Origin::Existing;
                let mut grpc_ok = true;
                if let Some(grpc) = &mut t.grpc {
                    grpc_ok = grpc
                        .data(
                            *direction,
                            *position,
                            bytes,
                            *timestamp_ns,
                            &mut t.decoder.counters,
                            &mut self.grpc_scratch,
                        )
                        .is_ok();
                }
                if t.grpc.is_none() || trial {
                    t.decoder.data(
                        *direction,
                        *position,
                        bytes,
                        *timestamp_ns,
                        &mut self.scratch,
                    );
                }
                if trial {
                    let grpc_decoded = !self.grpc_scratch.is_empty()
                        || t.grpc.as_ref().is_some_and(GrpcDecoder::is_rocketmq);
                    if !grpc_ok || (!grpc_decoded && !self.scratch.is_empty()) {
                        t.grpc = None;
                        self.grpc_scratch.clear();
                        grpc_ok = true;
                    } else if grpc_decoded {
                        self.scratch.clear();
                    }
                }
                let was_grpc = t.grpc.is_some();
                let decoded = !self.scratch.is_empty() || !self.grpc_scratch.is_empty();
                let mut keep = grpc_ok && t.judge(*direction, *position, bytes, decoded);
                if keep
                    && !was_grpc
                    && let Some(grpc) = &mut t.grpc
                {
                    // Just recognised as HTTP/2 by its preface: the gRPC decoder reads both
                    // directions from their start (what was kept of them, then these bytes).
                    self.scratch.clear();
                    t.decoder = ConnectionDecoder::new(self.config, false);
                    let counters = &mut t.decoder.counters;
                    let out = &mut self.grpc_scratch;
                    keep = [Direction::Egress, Direction::Ingress]
                        .into_iter()
                        .try_for_each(|d| {
                            let before = if d == *direction {
                                *position
                            } else {
                                t.seen[d as usize]
                            };
                            let kept = &t.first_bytes[d as usize];
                            match usize::try_from(before) {
                                Ok(n) if n <= kept.len() => {
                                    grpc.data(d, 0, &kept[..n], *timestamp_ns, counters, out)
                                }
                                // More than was kept: that direction resynchronises.
                                _ => Ok(()),
                            }
                        })
                        .and_then(|()| {
                            grpc.data(*direction, *position, bytes, *timestamp_ns, counters, out)
                        })
                        .is_ok();
                }
                if !keep {
                    let t = self.remove(connection).expect("present");
                    add(&mut self.closed, &t.decoder.counters);
                    self.connections_rejected += 1;
                    self.connections_tls += u64::from(t.encrypted);
                    self.rejected.push(t.connection);
                    return;
                }
                self.account(*connection);
                *connection
            }
            StreamEvent::Gap {
                connection,
                direction,
                position,
                length,
            } => {
                if let Some(t) = self.connections.get_mut(connection) {
                    if let Some(grpc) = &mut t.grpc {
                        let counters = &mut t.decoder.counters;
                        grpc.gap(
                            *direction,
                            *position,
                            *length,
                            counters,
                            &mut self.grpc_scratch,
                        );
                    }
                    if t.grpc.is_none() || t.verdict == Verdict::Unknown {
                        t.decoder
                            .gap(*direction, *position, *length, &mut self.scratch);
                    }
                }
                self.account(*connection);
                *connection
            }
            StreamEvent::Closed { connection, .. } => {
                if let Some(mut t) = self.remove(connection) {
                    let serving_process = self.servers.contains(&t.connection.pid);
                    t.release(&mut self.scratch, serving_process, out);
                    add(&mut self.closed, &t.decoder.counters);
                }
                return;
            }
        };
        let Some(t) = self.connections.get_mut(&id) else {
            return;
        };
        // The process is the broker (or a relay) of a connection it did not open on which it
        // receives requests that clients send (brokers send a few requests to clients too).
        let serves = t.connection.origin != Origin::Connect
            && self
                .scratch
                .iter()
                .chain(self.grpc_scratch.iter().map(|(c, _)| c))
                .any(|c| {
                    c.direction == Direction::Ingress
                        && !c.is_response()
                        && !RequestCode::from_code(c.header.code).is_sent_to_clients()
                });
        if serves {
            self.servers.insert(t.connection.pid);
            if !t.served {
                t.served = true;
                self.connections_server_side += 1;
            }
        }
        // With `skip_server_side`, what is left of it after its first bytes: a connection open
        // before tracing began.
        let server_side = self.config.skip_server_side && serves;
        let serving_process = self.servers.contains(&t.connection.pid);
        let remoting = self.scratch.drain(..).map(with_operation);
        t.emit(
            serving_process,
            remoting.chain(self.grpc_scratch.drain(..)),
            out,
        );
        if server_side {
            let t = self.remove(&id).expect("present");
            add(&mut self.closed, &t.decoder.counters);
            self.rejected.push(t.connection);
        }
    }

    /// The source is done: responses still held for their request are handed over unpaired.
    pub fn finish(&mut self, out: &mut Vec<DecodedCommand>) {
        for t in self.connections.values_mut() {
            let serving_process = self.servers.contains(&t.connection.pid);
            t.release(&mut self.scratch, serving_process, out);
        }
    }

    /// The process exited: its pid may come back as another program.
    pub fn forget_process(&mut self, pid: u32) {
        self.servers.remove(&pid);
    }

    /// Processes known to accept RocketMQ connections.
    pub fn serving_processes(&self) -> usize {
        self.servers.len()
    }

    /// Their pids.
    pub fn serving_pids(&self) -> Vec<u32> {
        self.servers.iter().copied().collect()
    }

    /// These processes accept RocketMQ connections, as another agent saw.
    pub fn learn_serving(&mut self, pids: &[u32]) {
        self.servers.extend(pids);
    }

    /// Connections that turned out not to be RocketMQ, or to be seen from the broker's side,
    /// since the last call: the capture can stop copying them.
    pub fn take_rejected(&mut self) -> Vec<Connection> {
        std::mem::take(&mut self.rejected)
    }

    /// Counters over all connections, open and closed.
    pub fn counters(&self) -> DecoderCounters {
        let mut total = self.closed.clone();
        for t in self.connections.values() {
            add(&mut total, &t.decoder.counters);
        }
        total
    }
}

fn add(total: &mut DecoderCounters, c: &DecoderCounters) {
    total.frames += c.frames;
    total.messages += c.messages;
    total.frames_lost += c.frames_lost;
    total.resyncs += c.resyncs;
    total.resync_bytes += c.resync_bytes;
    total.resync_candidates_skipped += c.resync_candidates_skipped;
    total.resync_header_bytes_parsed += c.resync_header_bytes_parsed;
    total.malformed_messages += c.malformed_messages;
    total.messages_dropped += c.messages_dropped;
    total.pending_evicted += c.pending_evicted;
    total.responses_before_request += c.responses_before_request;
    total.responses_without_request += c.responses_without_request;
    total.bytes_shed += c.bytes_shed;
    total.grpc_calls += c.grpc_calls;
    total.grpc_methods_inferred += c.grpc_methods_inferred;
    total.grpc_calls_unknown += c.grpc_calls_unknown;
    total.grpc_calls_partly_seen += c.grpc_calls_partly_seen;
    total.grpc_header_tables_lost += c.grpc_header_tables_lost;
    total.grpc_header_blocks_undecoded += c.grpc_header_blocks_undecoded;
    total.grpc_messages_compressed += c.grpc_messages_compressed;
    total.grpc_messages_too_large += c.grpc_messages_too_large;
}
