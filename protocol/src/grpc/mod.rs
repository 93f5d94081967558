//! RocketMQ 5's gRPC protocol (`apache.rocketmq.v2.MessagingService` over HTTP/2), decoded
//! into the same commands and operations as remoting, so that one correlator pairs both and
//! one identity joins them. Sans-IO like the remoting decoder.
//!
//! HTTP/2 framing (`http2.rs`) → header blocks through HPACK (loona-hpack) → the gRPC
//! length-prefixed messages of each stream → protobuf (prost, types from
//! `proto/rocketmq_v2.proto`) → operations (`calls.rs`). A call is one HTTP/2 stream: its
//! stream id is the command's opaque, so requests and responses pair as remoting's do.
//!
//! Joined mid-stream (the agent started after the connection opened), the HPACK tables are
//! unknown: header blocks that refer to entries never seen do not decode, and a call's method
//! is then inferred from the shape of its request message.

mod calls;
#[cfg(any(test, feature = "encode"))]
pub mod encode;
pub use calls::grpc_status_name;

/// The service's name, as `rpc.service` gives it.
pub const SERVICE_NAME: &str = "apache.rocketmq.v2.MessagingService";

pub mod http2;
pub mod proto;

use std::borrow::Cow;

use http2::{CONTINUATION, DATA, Event, Frame, HEADERS, RST_STREAM, Reader};
pub use http2::{Http2Counters, PREFACE};

use super::{
    BodyFaults, Bounded, CallFacts, Command, DecoderCounters, Wire,
    header::{FLAG_RESPONSE, Header},
    operation::{Operation, PopRequest},
    opposite,
};
use crate::Direction;
use calls::Method;

/// Calls followed at once per connection; the oldest are forgotten beyond it.
const MAX_CALLS: usize = 1024;
/// The largest gRPC message read (RocketMQ's bodies are at most 4 MiB by default).
const MAX_MESSAGE: usize = 8 << 20;
/// The largest header block read (headers and CONTINUATIONs of one stream).
const MAX_HEADER_BLOCK: usize = 64 << 10;
/// Most messages kept of one response (a receive's batch).
const MAX_RESPONSE_MESSAGES: usize = 1024;
/// The HPACK table size a peer may ask for, at most (the default is 4 KiB).
const MAX_HPACK_TABLE: usize = 64 << 10;
/// The method a request's `:path` names in RocketMQ 5's service (`/<service>/<method>`).
fn method_in_service(path: &str) -> Option<&str> {
    path.strip_prefix('/')?
        .strip_prefix(SERVICE_NAME)?
        .strip_prefix('/')
}

/// What one direction's header blocks and HTTP/2 frames need.
struct Half {
    hpack: loona_hpack::Decoder<'static>,
    /// The HPACK table of this direction is no longer known to match the peer's (a header
    /// block was lost or did not decode): its header blocks are not decoded any more.
    hpack_lost: bool,
    /// A header block awaiting its CONTINUATION frames: stream, bytes, END_STREAM, start.
    block: Option<(u32, Vec<u8>, bool, u64)>,
}

impl Half {
    fn new(mid_stream: bool) -> Self {
        let mut hpack = loona_hpack::Decoder::new();
        hpack.set_max_allowed_table_size(MAX_HPACK_TABLE);
        Self {
            hpack,
            hpack_lost: mid_stream,
            block: None,
        }
    }
}

/// The gRPC messages of one direction of a call, as they arrive in DATA frames.
#[derive(Default)]
struct Messages {
    held: Vec<u8>,
    /// Bytes of a message too large to read, still to skip.
    skip: usize,
    /// Some of its bytes were lost: what is held is dropped at the next message start.
    broken: bool,
}

/// One call (one HTTP/2 stream).
struct Call {
    method: Option<Method>,
    /// Request headers of interest.
    client_id: Option<String>,
    language: Option<String>,
    version: Option<String>,
    request_start_ns: u64,
    request: Messages,
    response: Messages,
    /// The request command went out; its response will follow.
    requested: bool,
    response_start_ns: Option<u64>,
    answer: calls::Answer,
    grpc_status: Option<u32>,
    grpc_message: Option<String>,
}

impl Call {
    fn new(start_ns: u64) -> Self {
        Self {
            method: None,
            client_id: None,
            language: None,
            version: None,
            request_start_ns: start_ns,
            request: Messages::default(),
            response: Messages::default(),
            requested: false,
            response_start_ns: None,
            answer: calls::Answer::default(),
            grpc_status: None,
            grpc_message: None,
        }
    }
}

/// Everything but the framing: calls, HPACK state, what is emitted.
struct Streams {
    halves: [Half; 2],
    /// The direction requests travel in (the traced process's own when it is the client).
    client: Option<Direction>,
    /// By stream, oldest first.
    calls: Bounded<u32, Call>,
    /// The connection carries MessagingService calls (Some(true)) or another service.
    service: Option<bool>,
}

/// The decoder of one HTTP/2 connection.
pub struct GrpcDecoder {
    readers: [Reader; 2],
    streams: Streams,
}

/// The connection is HTTP/2 but not RocketMQ's service (or not HTTP/2 after all).
#[derive(Debug, PartialEq, Eq)]
pub struct NotRocketMq;

impl GrpcDecoder {
    /// `client`: the direction whose first byte starts the preface, when the connection was
    /// seen from its start (None: joined mid-stream).
    pub fn new(client: Option<Direction>) -> Self {
        let mid_stream = client.is_none();
        let reader = |d: Direction| Reader::new(client == Some(d), mid_stream);
        Self {
            readers: [reader(Direction::Egress), reader(Direction::Ingress)],
            streams: Streams {
                halves: [Half::new(mid_stream), Half::new(mid_stream)],
                client,
                calls: Bounded::with_capacity_limit(MAX_CALLS),
                service: None,
            },
        }
    }

    /// The connection was seen carrying RocketMQ's service.
    pub fn is_rocketmq(&self) -> bool {
        self.streams.service == Some(true)
    }

    pub fn held_bytes(&self) -> usize {
        let calls: usize = self
            .streams
            .calls
            .values()
            .map(|c| c.request.held.capacity() + c.response.held.capacity() + c.answer.heap_bytes())
            .sum();
        let blocks: usize = self
            .streams
            .halves
            .iter()
            .filter_map(|h| h.block.as_ref().map(|b| b.1.capacity()))
            .sum();
        self.readers.iter().map(Reader::held_bytes).sum::<usize>()
            + calls
            + blocks
            + self.streams.calls.slots_bytes()
    }

    /// Lets go of partial frames and messages (memory is short).
    pub fn shed(&mut self, counters: &mut DecoderCounters) -> usize {
        let mut freed: usize = self.readers.iter_mut().map(Reader::shed).sum();
        for call in self.streams.calls.values_mut() {
            for messages in [&mut call.request, &mut call.response] {
                if !messages.held.is_empty() {
                    counters.messages_dropped += 1;
                    freed += messages.held.capacity();
                    messages.held = Vec::new();
                    messages.broken = true;
                }
            }
        }
        for half in &mut self.streams.halves {
            if let Some((_, block, ..)) = half.block.take() {
                freed += block.capacity();
                half.hpack_lost = true;
            }
        }
        freed
    }

    /// Feeds bytes read from `direction` at stream `position`; appends finished commands.
    pub fn data(
        &mut self,
        direction: Direction,
        position: u64,
        bytes: &[u8],
        timestamp_ns: u64,
        counters: &mut DecoderCounters,
        out: &mut Vec<(Command, Operation)>,
    ) -> Result<(), NotRocketMq> {
        let streams = &mut self.streams;
        let reader = &mut self.readers[direction as usize];
        let before = reader.counters.clone();
        let result = reader.feed(position, bytes, timestamp_ns, &mut |event| {
            streams.event(direction, event, counters, out)
        });
        add_http2(counters, &before, &reader.counters);
        if result.is_err() || streams.service == Some(false) {
            return Err(NotRocketMq);
        }
        Ok(())
    }

    /// `length` bytes of `direction` at `position` were never seen.
    pub fn gap(
        &mut self,
        direction: Direction,
        position: u64,
        length: u64,
        counters: &mut DecoderCounters,
        out: &mut Vec<(Command, Operation)>,
    ) {
        let streams = &mut self.streams;
        let reader = &mut self.readers[direction as usize];
        let before = reader.counters.clone();
        reader.gap(position, length, &mut |event| {
            streams.event(direction, event, counters, out)
        });
        add_http2(counters, &before, &reader.counters);
    }
}

/// The HTTP/2 reader's counters since `before`, into the decoder's.
fn add_http2(counters: &mut DecoderCounters, before: &Http2Counters, now: &Http2Counters) {
    counters.frames += now.frames - before.frames;
    counters.frames_lost += now.frames_lost - before.frames_lost;
    counters.resyncs += now.resyncs - before.resyncs;
    counters.resync_bytes += now.resync_bytes - before.resync_bytes;
}

impl Streams {
    fn event(
        &mut self,
        direction: Direction,
        event: Event<'_>,
        counters: &mut DecoderCounters,
        out: &mut Vec<(Command, Operation)>,
    ) {
        match event {
            Event::Frame(frame) => self.frame(direction, &frame, counters, out),
            Event::Lost { kind, stream } => match kind {
                HEADERS | CONTINUATION => self.lose_headers(direction, counters),
                DATA => {
                    if let Some(messages) = self.messages_of(direction, stream) {
                        messages.broken = true;
                    }
                }
                _ => {}
            },
            Event::Unsynced => {
                // Frames of any stream may have gone: every partial message and header block
                // of this direction is suspect.
                self.lose_headers(direction, counters);
                let streams: Vec<u32> = self.calls.iter().map(|(stream, _)| *stream).collect();
                for stream in streams {
                    if let Some(messages) = self.messages_of(direction, stream) {
                        messages.broken = true;
                    }
                }
            }
        }
    }

    fn lose_headers(&mut self, direction: Direction, counters: &mut DecoderCounters) {
        let half = &mut self.halves[direction as usize];
        if !half.hpack_lost {
            half.hpack_lost = true;
            counters.grpc_header_tables_lost += 1;
        }
        half.block = None;
    }

    /// The messages `direction` carries on `stream`, when the call is followed.
    fn messages_of(&mut self, direction: Direction, stream: u32) -> Option<&mut Messages> {
        let client = self.client?;
        let call = self.calls.get_mut(&stream)?;
        Some(if direction == client {
            &mut call.request
        } else {
            &mut call.response
        })
    }

    fn frame(
        &mut self,
        direction: Direction,
        frame: &Frame<'_>,
        counters: &mut DecoderCounters,
        out: &mut Vec<(Command, Operation)>,
    ) {
        match frame.kind {
            HEADERS => {
                let half = &mut self.halves[direction as usize];
                if frame.end_headers() {
                    half.block = None;
                    self.headers(
                        direction,
                        frame.stream,
                        frame.payload,
                        frame.end_stream(),
                        frame.start_ns,
                        frame.end_ns,
                        counters,
                        out,
                    );
                } else if frame.payload.len() <= MAX_HEADER_BLOCK {
                    half.block = Some((
                        frame.stream,
                        frame.payload.to_vec(),
                        frame.end_stream(),
                        frame.start_ns,
                    ));
                } else {
                    self.lose_headers(direction, counters);
                }
            }
            CONTINUATION => {
                let half = &mut self.halves[direction as usize];
                let Some((stream, mut block, end_stream, start_ns)) = half.block.take() else {
                    return self.lose_headers(direction, counters);
                };
                if stream != frame.stream || block.len() + frame.payload.len() > MAX_HEADER_BLOCK {
                    return self.lose_headers(direction, counters);
                }
                block.extend_from_slice(frame.payload);
                if frame.end_headers() {
                    self.headers(
                        direction,
                        stream,
                        &block,
                        end_stream,
                        start_ns,
                        frame.end_ns,
                        counters,
                        out,
                    );
                } else {
                    self.halves[direction as usize].block =
                        Some((stream, block, end_stream, start_ns));
                }
            }
            DATA => {
                self.data(direction, frame, counters, out);
                if frame.end_stream() && Some(direction) != self.client {
                    self.finish(frame.stream, frame.end_ns, out);
                }
            }
            RST_STREAM => {
                if let Some(call) = self.calls.get_mut(&frame.stream) {
                    // CANCELLED, as gRPC reports a reset stream.
                    call.grpc_status.get_or_insert(1);
                    call.grpc_message.get_or_insert_with(|| {
                        format!("stream reset (HTTP/2 error {})", reset_code(frame.payload))
                    });
                }
                self.finish(frame.stream, frame.end_ns, out);
            }
            _ => {}
        }
    }

    /// A whole header block of `stream` read from `direction`.
    #[allow(clippy::too_many_arguments)]
    fn headers(
        &mut self,
        direction: Direction,
        stream: u32,
        block: &[u8],
        end_stream: bool,
        start_ns: u64,
        end_ns: u64,
        counters: &mut DecoderCounters,
        out: &mut Vec<(Command, Operation)>,
    ) {
        let mut fields = HeaderFields::default();
        let half = &mut self.halves[direction as usize];
        if half.hpack_lost {
            counters.grpc_header_blocks_undecoded += 1;
        } else if half
            .hpack
            .decode_with_cb(block, |name, value| fields.take(&name, &value))
            .is_err()
        {
            counters.grpc_header_blocks_undecoded += 1;
            self.lose_headers(direction, counters);
            fields = HeaderFields::default();
        }
        // Requests carry `:path` (joined mid-stream, with the header table unknown, the first
        // request message whose shape is a call's tells instead: see `data`).
        if self.client.is_none() && fields.path.is_some() {
            self.client = Some(direction);
        }
        if Some(direction) == self.client {
            let method = fields.path.as_deref().map(method_in_service);
            if let Some(method) = method {
                self.service.get_or_insert(method.is_some());
                if method.is_none() {
                    return;
                }
            }
            if !self.calls.contains_key(&stream) {
                self.open(stream, start_ns, counters);
            }
            let Some(call) = self.calls.get_mut(&stream) else {
                return;
            };
            if let Some(Some(method)) = method {
                call.method = Some(Method::of(method));
            }
            call.client_id = fields.client_id.or(call.client_id.take());
            call.language = fields.language.or(call.language.take());
            call.version = fields.version.or(call.version.take());
        } else if let Some(call) = self.calls.get_mut(&stream) {
            call.response_start_ns.get_or_insert(start_ns);
            if let Some(status) = fields.grpc_status {
                call.grpc_status = Some(status);
                call.grpc_message = fields.grpc_message;
            }
            if end_stream {
                self.finish(stream, end_ns, out);
            }
        } else if end_stream && self.client.is_some() {
            // The end of a call whose start was not seen (joined mid-call, or lost).
            counters.grpc_calls_partly_seen += 1;
        }
    }

    fn open(&mut self, stream: u32, start_ns: u64, counters: &mut DecoderCounters) {
        self.calls
            .insert_with(stream, Call::new(start_ns), 0, |_, _| {
                counters.pending_evicted += 1
            });
    }

    /// DATA of a followed call: its gRPC messages, each handled once whole.
    fn data(
        &mut self,
        direction: Direction,
        frame: &Frame<'_>,
        counters: &mut DecoderCounters,
        out: &mut Vec<(Command, Operation)>,
    ) {
        if self.client.is_none() && starts_request(frame.payload) {
            // Joined mid-stream: the side that sends calls' requests is the client.
            self.client = Some(direction);
            self.open(frame.stream, frame.start_ns, counters);
        }
        let is_request = Some(direction) == self.client;
        let Some(messages) = self.messages_of(direction, frame.stream) else {
            return;
        };
        let mut whole = Vec::new();
        messages.split(frame.payload, counters, &mut whole);
        for message in whole {
            counters.messages += 1;
            if message[0] != 0 {
                // Compressed with the call's grpc-encoding: not read.
                counters.grpc_messages_compressed += 1;
                continue;
            }
            let body = &message[5..];
            if is_request {
                self.request(direction, frame.stream, body, frame.end_ns, counters, out);
            } else if let Some(call) = self.calls.get_mut(&frame.stream)
                && call.requested
                && let Some(method) = call.method
                && !call.answer.take(method, body, MAX_RESPONSE_MESSAGES)
            {
                counters.malformed_messages += 1;
            }
        }
    }

    /// A whole request message: the call's request command, once.
    fn request(
        &mut self,
        direction: Direction,
        stream: u32,
        body: &[u8],
        end_ns: u64,
        counters: &mut DecoderCounters,
        out: &mut Vec<(Command, Operation)>,
    ) {
        let Some(call) = self.calls.get_mut(&stream) else {
            return;
        };
        if call.requested {
            // Streamed requests (telemetry) say nothing about messages.
            return;
        }
        let method = match call.method {
            Some(method) => method,
            None => match calls::infer(body) {
                Some(method) => {
                    counters.grpc_methods_inferred += 1;
                    method
                }
                None => {
                    counters.grpc_calls_unknown += 1;
                    call.method = Some(Method::Other);
                    return;
                }
            },
        };
        call.method = Some(method);
        if method == Method::Other {
            return;
        }
        let Some(operation) = calls::request(method, body) else {
            counters.malformed_messages += 1;
            call.method = Some(Method::Other);
            return;
        };
        // The service is known by the shape of its calls where the path was not seen.
        self.service = Some(true);
        call.requested = true;
        counters.grpc_calls += 1;
        let header = Header {
            code: method.request_code().code(),
            language: call.language.clone().unwrap_or_default(),
            opaque: stream as i32,
            ..Header::default()
        };
        let facts = CallFacts {
            method: method.name(),
            client_id: call.client_id.clone(),
            client_version: call.version.clone(),
            poll_ms: match &operation {
                Operation::Pop(PopRequest { poll_time_ms, .. }) => {
                    poll_time_ms.and_then(|ms| u64::try_from(ms).ok())
                }
                _ => None,
            },
        };
        let messages = match &operation {
            Operation::Send(send) => send.messages.clone(),
            _ => Vec::new(),
        };
        let command = Command {
            direction,
            wire: Wire::Grpc,
            request_code: None,
            header,
            body_len: body.len() as u64,
            messages,
            body_json: None,
            start_position: 0,
            end_position: 0,
            start_ns: call.request_start_ns,
            end_ns,
            missing_bytes: 0,
            body_faults: BodyFaults::default(),
            call: Some(Box::new(facts)),
            // A connection never reuses a stream id: the stream is the exchange.
            exchange: Some(u64::from(stream)),
        };
        out.push((command, operation));
    }

    /// The call ended (the server's END_STREAM, or a reset): its response command.
    fn finish(&mut self, stream: u32, end_ns: u64, out: &mut Vec<(Command, Operation)>) {
        let Some(mut call) = self.calls.remove(&stream) else {
            return;
        };
        let (Some(client), Some(method), true) = (self.client, call.method, call.requested) else {
            return;
        };
        let (code, remark) = match (call.answer.status.take(), call.grpc_status) {
            (_, Some(status)) if status != 0 => (
                status as i32,
                call.grpc_message
                    .take()
                    .or(Some(calls::grpc_status_name(status).into())),
            ),
            (Some((code, message)), _) => (code, (!message.is_empty()).then_some(message)),
            // Trailers said OK and no Status came: a unary answer without one.
            (None, _) => (proto::Code::Ok as i32, None),
        };
        let header = Header {
            code,
            language: call.language.take().unwrap_or_default(),
            opaque: stream as i32,
            flag: FLAG_RESPONSE,
            remark,
            ..Header::default()
        };
        let operation = call.answer.operation(method);
        let messages = match &operation {
            Operation::Pulled(pulled) => pulled.messages.clone(),
            _ => Vec::new(),
        };
        let command = Command {
            direction: opposite(client),
            wire: Wire::Grpc,
            request_code: Some(method.request_code()),
            header,
            body_len: 0,
            messages,
            body_json: None,
            start_position: 0,
            end_position: 0,
            start_ns: call.response_start_ns.unwrap_or(end_ns),
            end_ns,
            missing_bytes: 0,
            body_faults: BodyFaults::default(),
            call: None,
            exchange: Some(u64::from(stream)),
        };
        out.push((command, operation));
    }
}

impl Messages {
    /// Splits a DATA payload into whole gRPC messages (5-byte prefix: compressed flag, length),
    /// borrowed from it where whole in it, holding the start of one that goes on.
    fn split<'a>(
        &mut self,
        mut bytes: &'a [u8],
        counters: &mut DecoderCounters,
        whole: &mut Vec<Cow<'a, [u8]>>,
    ) {
        if self.broken {
            // Where the next message starts after lost bytes is unknown, unless a frame
            // starts one: gRPC peers start each message in a new DATA frame.
            self.broken = false;
            if !self.held.is_empty() || self.skip > 0 {
                counters.messages_dropped += 1;
            }
            self.held.clear();
            self.skip = 0;
        }
        while !bytes.is_empty() {
            if self.skip > 0 {
                let take = self.skip.min(bytes.len());
                self.skip -= take;
                bytes = &bytes[take..];
                continue;
            }
            if self.held.is_empty() {
                if let Some(length) = prefix_len(bytes) {
                    if length > MAX_MESSAGE {
                        counters.grpc_messages_too_large += 1;
                        self.skip = 5 + length;
                        continue;
                    }
                    if bytes.len() >= 5 + length {
                        whole.push(Cow::Borrowed(&bytes[..5 + length]));
                        bytes = &bytes[5 + length..];
                        continue;
                    }
                }
                self.held.extend_from_slice(bytes);
                return;
            }
            if self.held.len() < 5 {
                let take = (5 - self.held.len()).min(bytes.len());
                self.held.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                continue;
            }
            let length = prefix_len(&self.held).expect("five bytes held");
            if length > MAX_MESSAGE {
                counters.grpc_messages_too_large += 1;
                self.skip = 5 + length - self.held.len();
                self.held.clear();
                continue;
            }
            let take = (5 + length - self.held.len()).min(bytes.len());
            self.held.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.held.len() == 5 + length {
                whole.push(Cow::Owned(std::mem::take(&mut self.held)));
            }
        }
    }
}

/// Whether a DATA payload starts with a whole uncompressed gRPC message shaped as a followed
/// call's request.
fn starts_request(payload: &[u8]) -> bool {
    prefix_len(payload).is_some_and(|length| {
        payload[0] == 0 && payload.get(5..5 + length).and_then(calls::infer).is_some()
    })
}

/// The length a gRPC message prefix at the start of `bytes` gives.
fn prefix_len(bytes: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = bytes.get(1..5)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// The error code of a RST_STREAM frame.
fn reset_code(payload: &[u8]) -> u32 {
    payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

/// The request and response headers the decoder reads.
#[derive(Default)]
struct HeaderFields {
    path: Option<String>,
    client_id: Option<String>,
    language: Option<String>,
    version: Option<String>,
    grpc_status: Option<u32>,
    grpc_message: Option<String>,
}

impl HeaderFields {
    fn take(&mut self, name: &[u8], value: &[u8]) {
        let text = || String::from_utf8_lossy(value).into_owned();
        match name {
            b":path" => self.path = Some(text()),
            b"x-mq-client-id" => self.client_id = Some(text()),
            b"x-mq-language" => self.language = Some(text()),
            b"x-mq-client-version" => self.version = Some(text()),
            b"grpc-status" => {
                self.grpc_status = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok())
            }
            b"grpc-message" => self.grpc_message = Some(text()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
