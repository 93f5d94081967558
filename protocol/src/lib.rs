//! The RocketMQ protocols, sans-IO: pure functions and state machines over bytes, with no
//! kernel, no runtime and no I/O. They turn the two byte streams of one connection into typed
//! commands and the messages inside them: remoting frames, and RocketMQ 5 gRPC calls
//! (`grpc`: HTTP/2, HPACK, protobuf). Which connections to decode, and what the commands mean
//! for a message, is the agent's business, not this crate's.
//!
//! Framing (`framer.rs`) → header (`header.rs`) → body (`message.rs` walks the messages of pull,
//! pop and batch bodies) → typed operations (`operation.rs`). Message bodies are skipped, never
//! kept: memory per connection is bounded by the largest header and message tail.

mod bounded;
mod codes;
/// Frame encoders for tests, benchmarks and load generators (feature `encode`).
#[cfg(any(test, feature = "encode"))]
pub mod encode;
mod fields;
mod framer;
pub mod grpc;
mod header;
pub mod message;
pub mod operation;
mod recognize;
mod verdict;

use std::collections::VecDeque;

pub use bounded::{Bounded, Held};
pub use codes::{RequestCode, ResponseCode};
use framer::Framer;
pub use header::{FrameHead, HEAD_LEN, Header, SerializeType};
pub use message::{MessageMeta, Properties};
pub use recognize::{Recognition, recognize};
use serde::Serialize;
pub use verdict::{Rpc, Verdict};

pub use mqtrace_common::Direction;

/// The hash map of the per-connection and per-message paths: SipHash was 3 % of the
/// pipeline's time; foldhash is seeded per process, so a neighbour still cannot choose
/// colliding message IDs.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The one hex writer: `bytes` as lower-case digits in `digits`, which holds two per byte.
/// Through a buffer, because `hex::encode` builds its string a char at a time, which was 7 % of
/// a pulled message's work (three ids per span).
pub fn hex_digits<'a>(bytes: &[u8], digits: &'a mut [u8]) -> &'a str {
    let digits = &mut digits[..2 * bytes.len()];
    hex::encode_to_slice(bytes, digits).expect("the buffer holds two digits per byte");
    std::str::from_utf8(digits).expect("hex digits are ASCII")
}

/// `bytes` as lower-case hex digits, appended to `out`.
pub fn append_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(start + 2 * bytes.len(), 0);
    hex_digits(bytes, &mut out[start..]);
}

/// `bytes` as a string of lower-case hex digits.
pub fn hex_string(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    append_hex(&mut out, bytes);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// The default bound on a frame's claimed length, as RocketMQ's own.
pub const DEFAULT_MAX_FRAME: u32 = 16 << 20;
/// Requests awaiting a response per connection at most; older ones are forgotten.
const MAX_PENDING: usize = 4096;
/// Responses held per connection for a request not seen yet, at most; older ones go unpaired.
const MAX_EARLY: usize = 64;
/// How long a response is held for its request: far longer than the two records of a request
/// and its response can be out of order, short enough to end a response never answered to.
const EARLY_WAIT_NS: u64 = 1_000_000_000;
/// JSON bodies (heartbeats, batch acks) are read up to this size.
const MAX_JSON_BODY: usize = 256 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("serialize type {0} is neither JSON (0) nor ROCKETMQ (1)")]
    SerializeType(u8),
    #[error("frame claims {length} bytes, more than the {max} allowed")]
    FrameTooLong { length: u32, max: u32 },
    #[error("header length {header_len} does not fit a frame of {length} bytes")]
    HeaderLength { header_len: u32, length: u32 },
    #[error("JSON header is not a RocketMQ header")]
    JsonHeader,
    #[error("ROCKETMQ binary header is malformed")]
    BinaryHeader,
    #[error("field runs past the end of its container")]
    Truncated,
    #[error("stored message has unknown magic {0:#x}")]
    Magic(i32),
}

#[derive(Clone, Copy, Debug)]
pub struct DecoderConfig {
    pub max_frame: u32,
    /// Stop decoding a connection once the traced process is seen receiving requests on it
    /// (it is the broker there): that side then makes no events, and the live capture can
    /// stop copying it (`mqtrace run --no-broker-spans`).
    pub skip_server_side: bool,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            skip_server_side: false,
        }
    }
}

/// How a command travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Wire {
    /// A remoting frame, its header serialized so.
    Remoting(SerializeType),
    /// A RocketMQ 5 gRPC call (HTTP/2 and protobuf), told in remoting's terms: the opaque is
    /// the HTTP/2 stream, the code the remoting request that does the same (a response's:
    /// RocketMQ's `Status.code`, or gRPC's own status below 100).
    Grpc,
}

/// One decoded command: a remoting frame, or one side of a gRPC call.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Command {
    /// Which stream it was read from, seen from the traced process.
    pub direction: Direction,
    pub wire: Wire,
    /// For a response: the code of the request it answers, when that request was seen.
    pub request_code: Option<RequestCode>,
    pub header: Header,
    pub body_len: u64,
    /// Messages found in the body (batch sends, pull and pop responses), until `interpret`
    /// moves them into the operation.
    pub messages: Vec<MessageMeta>,
    /// Small JSON bodies (heartbeat, batch ack), parsed.
    pub body_json: Option<serde_json::Value>,
    /// Stream positions of the frame's first and last byte.
    pub start_position: u64,
    pub end_position: u64,
    /// Timestamps of the first and last byte.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Bytes of this frame that were never seen (a gap of known size inside it).
    pub missing_bytes: u64,
    /// What the walk of its messages could not read; counted once the command is settled (a
    /// response read before its request is walked in case it holds messages).
    #[serde(skip)]
    pub body_faults: BodyFaults,
    /// A gRPC request's facts that remoting carries in its header (None for remoting).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<Box<CallFacts>>,
    /// The exchange it belongs to, numbered by its connection's decoder, the one place
    /// requests are paired with responses: a request awaiting its answer and that answer carry
    /// the same number. None for a one-way request and for a response whose request was not
    /// seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange: Option<u64>,
}

/// What a gRPC request says besides its message: its method, and the client it comes from
/// (from the call's `x-mq-*` headers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallFacts {
    pub method: &'static str,
    pub client_id: Option<String>,
    pub client_version: Option<String>,
    /// How long a receive may rightly wait for messages before its answer.
    pub poll_ms: Option<u64>,
}

/// Messages of a body found malformed, and messages past the most kept per frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyFaults {
    pub malformed: u64,
    pub dropped: u64,
}

impl Command {
    pub fn is_response(&self) -> bool {
        self.header.is_response()
    }
    pub fn request(&self) -> Option<RequestCode> {
        (!self.is_response()).then(|| RequestCode::from_code(self.header.code))
    }
    pub fn response(&self) -> Option<ResponseCode> {
        self.is_response()
            .then(|| ResponseCode::from_code(self.header.code))
    }

    /// How long this request may rightly wait before its answer: a long poll's suspend time
    /// (pull) or poll time (pop, gRPC receive); 0 for any other request.
    pub fn long_poll_ms(&self) -> u64 {
        match &self.call {
            Some(call) => call.poll_ms.unwrap_or(0),
            None => self
                .header
                .ext("suspendTimeoutMillis")
                .or_else(|| self.header.ext("pollTime"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }
    }

    /// The client's id, where the request names it (gRPC calls; remoting clients name
    /// themselves in their heartbeats instead).
    pub fn client_id(&self) -> Option<&str> {
        self.call.as_ref()?.client_id.as_deref()
    }

    /// The client's version: a gRPC client's own text, a remoting client's version code
    /// (written into `digits`, without allocating).
    pub fn client_version<'a>(&'a self, digits: &'a mut itoa::Buffer) -> &'a str {
        match &self.call {
            Some(call) => call.client_version.as_deref().unwrap_or_default(),
            None => digits.format(self.header.version),
        }
    }
}

/// What the decoder could not do, for the agent's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DecoderCounters {
    pub frames: u64,
    /// Messages found in frames: one per single send, the inner messages of a batch, those
    /// of pull and pop responses.
    pub messages: u64,
    /// Frames whose header was lost or malformed: skipped by their length.
    pub frames_lost: u64,
    /// Times the decoder lost the frame boundary and scanned for the next plausible header.
    pub resyncs: u64,
    /// Bytes skipped while scanning for a frame header.
    pub resync_bytes: u64,
    /// Possible frame heads the scan passed over without parsing their header: it had used
    /// up the work allowed per byte seen (bytes crafted to look like many heads).
    pub resync_candidates_skipped: u64,
    /// Header bytes parsed while scanning (at most a few per byte seen).
    pub resync_header_bytes_parsed: u64,
    pub malformed_messages: u64,
    pub messages_dropped: u64,
    /// Requests forgotten, oldest first, because too many awaited a response on one connection.
    pub pending_evicted: u64,
    /// Responses whose record came before their request's (the client writes and reads on two
    /// threads and the read returned first): held until the request came, then paired.
    pub responses_before_request: u64,
    /// Responses whose request was never seen (the agent joined while it was under way, or
    /// its bytes were lost): they make no event.
    pub responses_without_request: u64,
    /// Bytes let go of because the connections' buffers reached their share of the memory
    /// budget (headers given up and their frames skipped, bodies' fields dropped).
    pub bytes_shed: u64,
    /// RocketMQ 5 gRPC calls followed (sends, receives, acks, ...; HTTP/2 frames and gRPC
    /// messages count in `frames` and `messages`).
    pub grpc_calls: u64,
    /// Calls whose method was told by the shape of their request, their path unreadable.
    pub grpc_methods_inferred: u64,
    /// Calls whose method could not be told at all: not followed.
    pub grpc_calls_unknown: u64,
    /// Calls that ended without their start seen (the agent joined mid-call, or lost it).
    pub grpc_calls_partly_seen: u64,
    /// Times a direction's HPACK table stopped being known (a header block lost or not
    /// decodable; joined mid-stream, it never was), and header blocks not decoded since.
    pub grpc_header_tables_lost: u64,
    pub grpc_header_blocks_undecoded: u64,
    /// gRPC messages compressed by the call (grpc-encoding) or larger than 8 MiB: not read.
    pub grpc_messages_compressed: u64,
    pub grpc_messages_too_large: u64,
}

/// The decoder of one connection: two framers and the pairing of requests with responses.
pub struct ConnectionDecoder {
    framers: [Framer; 2],
    /// (direction the request was read from, opaque) → its code and exchange, oldest first.
    pending: Awaiting,
    /// The number of the next exchange.
    next_exchange: u64,
    /// Responses whose request has not been seen yet, oldest first.
    early: VecDeque<Command>,
    /// The commands being settled (kept for its allocation).
    settling: Vec<Command>,
    pub counters: DecoderCounters,
}

impl ConnectionDecoder {
    /// `mid_stream`: the streams start at an unknown point (a connection already open when
    /// capture began): look for a frame boundary first.
    pub fn new(config: DecoderConfig, mid_stream: bool) -> Self {
        Self {
            framers: [
                Framer::new(config, mid_stream),
                Framer::new(config, mid_stream),
            ],
            pending: Bounded::with_capacity_limit(MAX_PENDING),
            next_exchange: 0,
            early: VecDeque::new(),
            settling: Vec::new(),
            counters: DecoderCounters::default(),
        }
    }

    /// Bytes held between events: both directions' buffers and the requests awaiting a
    /// response.
    pub fn held_bytes(&self) -> usize {
        self.framers.iter().map(Framer::held_bytes).sum::<usize>()
            + self.pending.slots_bytes()
            + self.early.capacity() * std::mem::size_of::<Command>()
            + self
                .early
                .iter()
                .map(|c| c.messages.capacity() * std::mem::size_of::<MessageMeta>())
                .sum::<usize>()
    }

    /// Lets go of both directions' buffers and of the messages of responses held for their
    /// request (memory is short); returns the bytes let go of.
    pub fn shed(&mut self) -> usize {
        let mut freed: usize = self
            .framers
            .iter_mut()
            .map(|framer| framer.shed(&mut self.counters))
            .sum();
        for response in &mut self.early {
            freed += response.messages.capacity() * std::mem::size_of::<MessageMeta>();
            response.body_faults.dropped += response.messages.len() as u64;
            response.messages = Vec::new();
        }
        self.counters.bytes_shed += freed as u64;
        freed
    }

    /// Feeds bytes read from `direction` at stream `position`; appends finished commands.
    pub fn data(
        &mut self,
        direction: Direction,
        position: u64,
        bytes: &[u8],
        timestamp_ns: u64,
        out: &mut Vec<Command>,
    ) {
        let start = out.len();
        let framer = &mut self.framers[direction as usize];
        framer.feed(
            direction,
            position,
            bytes,
            timestamp_ns,
            &self.pending,
            &mut self.counters,
            out,
        );
        self.settle(start, out);
        // Responses held past any plausible reordering: their request is not coming.
        while self
            .early
            .front()
            .is_some_and(|r| r.end_ns.saturating_add(EARLY_WAIT_NS) < timestamp_ns)
        {
            self.give_up_early(out);
        }
    }

    /// Hands over the responses still held for their request (the connection ends): unpaired.
    pub fn release(&mut self, out: &mut Vec<Command>) {
        while !self.early.is_empty() {
            self.give_up_early(out);
        }
    }

    /// `length` bytes of `direction` at `position` were never seen.
    pub fn gap(
        &mut self,
        direction: Direction,
        position: u64,
        length: u64,
        out: &mut Vec<Command>,
    ) {
        let start = out.len();
        self.framers[direction as usize].gap(direction, position, length, &mut self.counters, out);
        self.settle(start, out);
    }

    /// Records new requests and resolves responses for the commands appended since `start`.
    /// A response whose request is unknown is held back until the request comes (then put
    /// right after it), for at most EARLY_WAIT_NS and MAX_EARLY of them.
    fn settle(&mut self, start: usize, out: &mut Vec<Command>) {
        if out.len() == start {
            return;
        }
        let mut new = std::mem::take(&mut self.settling);
        new.extend(out.drain(start..));
        for mut command in new.drain(..) {
            self.counters.frames += 1;
            let opaque = command.header.opaque;
            if command.is_response() {
                match self.pending.remove(&(opposite(command.direction), opaque)) {
                    Some(awaited) => {
                        command.request_code = Some(awaited.code);
                        command.exchange = Some(awaited.exchange);
                        self.count_messages(&command);
                        out.push(command);
                    }
                    None => self.hold_early(command, out),
                }
                continue;
            }
            self.count_messages(&command);
            let (direction, answered) = (command.direction, !command.header.is_oneway());
            if answered {
                command.exchange =
                    Some(self.await_response((direction, opaque), command.header.code));
            }
            out.push(command);
            if answered && let Some(response) = self.take_early(direction, opaque) {
                out.push(response);
            }
        }
        self.settling = new;
    }

    fn count_messages(&mut self, command: &Command) {
        // A single send's message is its body, not walked: one message all the same.
        let single_send = command.request().is_some_and(RequestCode::is_single_send);
        self.counters.messages += command.messages.len() as u64 + u64::from(single_send);
        self.counters.malformed_messages += command.body_faults.malformed;
        self.counters.messages_dropped += command.body_faults.dropped;
    }

    fn hold_early(&mut self, response: Command, out: &mut Vec<Command>) {
        if self.early.len() >= MAX_EARLY {
            self.give_up_early(out);
        }
        self.early.push_back(response);
    }

    /// The response held for the request just read from `direction` with `opaque`, paired.
    fn take_early(&mut self, direction: Direction, opaque: i32) -> Option<Command> {
        if self.early.is_empty() {
            return None;
        }
        let at = self
            .early
            .iter()
            .position(|r| r.header.opaque == opaque && r.direction == opposite(direction))?;
        let Awaited { code, exchange } = self.pending.remove(&(direction, opaque))?;
        let mut response = self.early.remove(at)?;
        response.request_code = Some(code);
        response.exchange = Some(exchange);
        if !code.returns_messages() {
            // Walked in case it held messages: it did not.
            response.messages = Vec::new();
            response.body_faults = BodyFaults::default();
        }
        self.counters.responses_before_request += 1;
        self.count_messages(&response);
        Some(response)
    }

    /// Hands over the oldest held response unpaired: its request was not seen.
    fn give_up_early(&mut self, out: &mut Vec<Command>) {
        if let Some(mut response) = self.early.pop_front() {
            response.messages = Vec::new();
            response.body_faults = BodyFaults::default();
            self.counters.responses_without_request += 1;
            out.push(response);
        }
    }
}

/// A request awaiting its response.
pub(crate) struct Awaited {
    pub(crate) code: RequestCode,
    exchange: u64,
}

/// (direction the request was read from, opaque) → the request awaiting its response.
pub(crate) type Awaiting = Bounded<(Direction, i32), Awaited>;

impl ConnectionDecoder {
    /// Remembers a request until its response (beyond MAX_PENDING the oldest go); its exchange.
    fn await_response(&mut self, key: (Direction, i32), code: i32) -> u64 {
        self.next_exchange += 1;
        let awaited = Awaited {
            code: RequestCode::from_code(code),
            exchange: self.next_exchange,
        };
        let counters = &mut self.counters;
        self.pending
            .insert_with(key, awaited, 0, |_, _| counters.pending_evicted += 1);
        self.next_exchange
    }
}

pub fn opposite(direction: Direction) -> Direction {
    match direction {
        Direction::Egress => Direction::Ingress,
        Direction::Ingress => Direction::Egress,
    }
}

#[cfg(test)]
mod tests;
