//! One direction's framing: head → header → body, fed in pieces of any size, with gaps of
//! known size skipped in place and a scan for the next plausible header when the frame
//! boundary is lost.

use std::collections::HashMap;

use super::{
    Command, DecoderConfig, DecoderCounters, MAX_JSON_BODY, RequestCode, ResponseCode,
    header::{FrameHead, HEAD_LEN, Header, SerializeType},
    message::{Layout, MessageWalker},
    opposite,
};
use crate::sources::Direction;

/// While scanning, headers longer than this are not believed.
const RESYNC_MAX_HEADER: u32 = 64 << 10;
/// Bytes kept while scanning: enough for a head and a plausible header.
const RESYNC_WINDOW: usize = RESYNC_MAX_HEADER as usize + HEAD_LEN;

enum Body {
    Count,
    Json { bytes: Vec<u8>, overflow: bool },
    Messages(Box<MessageWalker>),
}

impl Body {
    fn feed(&mut self, bytes: &[u8]) {
        match self {
            Body::Count => {}
            Body::Json {
                bytes: buf,
                overflow,
            } => {
                if buf.len() + bytes.len() <= MAX_JSON_BODY {
                    buf.extend_from_slice(bytes);
                } else {
                    *overflow = true;
                }
            }
            Body::Messages(walker) => walker.feed(bytes),
        }
    }

    fn skip(&mut self, length: u64) {
        match self {
            Body::Count => {}
            Body::Json { overflow, .. } => *overflow = true,
            Body::Messages(walker) => walker.skip(length),
        }
    }
}

/// A frame whose header is decoded and whose body is under way.
struct Frame {
    head: FrameHead,
    header: Header,
    body: Body,
    body_remaining: u64,
    start_position: u64,
    start_ns: u64,
    missing: u64,
}

enum State {
    /// Collecting the 8-byte head into `buf`.
    Head,
    /// Collecting the header (after the head) into `buf`.
    Header(FrameHead),
    Body(Box<Frame>),
    /// Dropping the rest of a frame whose header was lost.
    Skip {
        remaining: u64,
    },
    /// Looking for a plausible frame head in `buf`.
    Resync,
}

pub struct Framer {
    config: DecoderConfig,
    state: State,
    buf: Vec<u8>,
    /// Stream position of the next byte to consume.
    position: u64,
    /// Position and time of the current frame's first byte.
    frame_start: u64,
    frame_start_ns: u64,
}

impl Framer {
    pub fn new(config: DecoderConfig, mid_stream: bool) -> Self {
        Self {
            config,
            state: if mid_stream {
                State::Resync
            } else {
                State::Head
            },
            buf: Vec::new(),
            position: 0,
            frame_start: 0,
            frame_start_ns: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn feed(
        &mut self,
        direction: Direction,
        position: u64,
        mut bytes: &[u8],
        timestamp_ns: u64,
        pending: &HashMap<(Direction, i32), RequestCode>,
        counters: &mut DecoderCounters,
        out: &mut Vec<Command>,
    ) {
        // The streams stage delivers contiguous bytes; be safe against anything else.
        if position > self.position {
            self.gap(
                direction,
                self.position,
                position - self.position,
                counters,
                out,
            );
        } else if position < self.position {
            let overlap = ((self.position - position) as usize).min(bytes.len());
            bytes = &bytes[overlap..];
        }
        while !bytes.is_empty() {
            let consumed = match &mut self.state {
                State::Head => {
                    if self.buf.is_empty() {
                        self.frame_start = self.position;
                        self.frame_start_ns = timestamp_ns;
                    }
                    let n = (HEAD_LEN - self.buf.len()).min(bytes.len());
                    self.buf.extend_from_slice(&bytes[..n]);
                    if self.buf.len() == HEAD_LEN {
                        let head: [u8; HEAD_LEN] = self.buf[..].try_into().unwrap();
                        match FrameHead::parse(&head, self.config.max_frame) {
                            Ok(head) => self.state = State::Header(head),
                            Err(_) => self.start_resync(counters),
                        }
                    }
                    n
                }
                State::Header(head) => {
                    let head = *head;
                    let want = HEAD_LEN + head.header_len as usize;
                    let n = (want - self.buf.len()).min(bytes.len());
                    self.buf.extend_from_slice(&bytes[..n]);
                    if self.buf.len() == want {
                        match Header::parse(head.serialize_type, &self.buf[HEAD_LEN..]) {
                            Ok(header) => {
                                self.buf.clear();
                                let body = body_for(&header, direction, pending);
                                let frame = Frame {
                                    head,
                                    header,
                                    body,
                                    body_remaining: head.body_len(),
                                    start_position: self.frame_start,
                                    start_ns: self.frame_start_ns,
                                    missing: 0,
                                };
                                self.state = State::Body(Box::new(frame));
                                self.finish_if_done(direction, timestamp_ns, out);
                            }
                            // A plausible head with a garbage header: the boundary is lost.
                            Err(_) => self.start_resync(counters),
                        }
                    }
                    n
                }
                State::Body(frame) => {
                    let n = frame.body_remaining.min(bytes.len() as u64) as usize;
                    frame.body.feed(&bytes[..n]);
                    frame.body_remaining -= n as u64;
                    self.position += n as u64;
                    self.finish_if_done(direction, timestamp_ns, out);
                    bytes = &bytes[n..];
                    continue;
                }
                State::Skip { remaining } => {
                    let n = (*remaining).min(bytes.len() as u64);
                    *remaining -= n;
                    if *remaining == 0 {
                        self.state = State::Head;
                    }
                    n as usize
                }
                State::Resync => {
                    let room = RESYNC_WINDOW.saturating_sub(self.buf.len()).max(1);
                    let n = room.min(bytes.len());
                    self.buf.extend_from_slice(&bytes[..n]);
                    n
                }
            };
            self.position += consumed as u64;
            bytes = &bytes[consumed..];
            if matches!(self.state, State::Resync) {
                self.scan(direction, timestamp_ns, pending, counters, out);
            }
        }
    }

    /// `length` bytes at `position` were never seen.
    pub fn gap(
        &mut self,
        direction: Direction,
        position: u64,
        length: u64,
        counters: &mut DecoderCounters,
        out: &mut Vec<Command>,
    ) {
        let end = position + length;
        if end <= self.position {
            return;
        }
        // Everything from where this framer stands to the gap's end is missing.
        let length = end - self.position;
        self.position = end;
        // Whether the gap runs past a frame boundary into frames of unknown length.
        let beyond_boundary = match &mut self.state {
            State::Body(frame) => {
                let in_frame = length.min(frame.body_remaining);
                frame.body.skip(in_frame);
                frame.missing += in_frame;
                frame.body_remaining -= in_frame;
                self.finish_if_done(direction, 0, out);
                length > in_frame
            }
            State::Header(head) => {
                // The header is lost: skip the frame by its length.
                let frame_end = self.frame_start + 4 + u64::from(head.length);
                counters.frames_lost += 1;
                self.buf.clear();
                self.state = if end < frame_end {
                    State::Skip {
                        remaining: frame_end - end,
                    }
                } else {
                    State::Head
                };
                end > frame_end
            }
            State::Skip { remaining } => {
                let beyond = length > *remaining;
                if length < *remaining {
                    *remaining -= length;
                } else {
                    self.state = State::Head;
                }
                beyond
            }
            State::Head => {
                if !self.buf.is_empty() {
                    counters.frames_lost += 1;
                }
                true
            }
            State::Resync => {
                // Bytes before the gap cannot join bytes after it.
                self.buf.clear();
                false
            }
        };
        if beyond_boundary {
            self.start_resync(counters);
            self.buf.clear();
        }
    }

    fn finish_if_done(&mut self, direction: Direction, timestamp_ns: u64, out: &mut Vec<Command>) {
        let State::Body(frame) = &self.state else {
            return;
        };
        if frame.body_remaining > 0 {
            return;
        }
        let State::Body(frame) = std::mem::replace(&mut self.state, State::Head) else {
            unreachable!()
        };
        let Frame {
            head,
            header,
            body,
            start_position,
            start_ns,
            missing,
            ..
        } = *frame;
        let (messages, body_json) = match body {
            Body::Count => (Vec::new(), None),
            Body::Json { bytes, overflow } => (
                Vec::new(),
                if overflow {
                    None
                } else {
                    serde_json::from_slice(&bytes).ok()
                },
            ),
            Body::Messages(walker) => (walker.finish().messages, None),
        };
        out.push(Command {
            direction,
            serialize_type: head.serialize_type,
            request_code: None,
            header,
            body_len: head.body_len(),
            messages,
            body_json,
            start_position,
            end_position: start_position + 4 + u64::from(head.length),
            start_ns,
            end_ns: timestamp_ns.max(start_ns),
            missing_bytes: missing,
        });
    }

    /// Enters the scan for a plausible head, starting after the current frame's first byte.
    fn start_resync(&mut self, counters: &mut DecoderCounters) {
        counters.resyncs += 1;
        if !self.buf.is_empty() {
            self.buf.remove(0);
            counters.resync_bytes += 1;
        }
        self.state = State::Resync;
    }

    /// Looks for a plausible frame in `buf`; on success the framer goes on from there.
    fn scan(
        &mut self,
        direction: Direction,
        timestamp_ns: u64,
        pending: &HashMap<(Direction, i32), RequestCode>,
        counters: &mut DecoderCounters,
        out: &mut Vec<Command>,
    ) {
        let mut at = 0;
        while at + HEAD_LEN <= self.buf.len() {
            match plausible(&self.buf[at..], self.config.max_frame) {
                Plausible::No => at += 1,
                Plausible::NeedMore => break,
                Plausible::Yes => {
                    counters.resync_bytes += at as u64;
                    let rest = self.buf.split_off(at);
                    self.buf.clear();
                    self.state = State::Head;
                    // Re-feed the found frame's bytes from its start position.
                    let start = self.position - rest.len() as u64;
                    self.position = start;
                    self.feed(
                        direction,
                        start,
                        &rest,
                        timestamp_ns,
                        pending,
                        counters,
                        out,
                    );
                    return;
                }
            }
        }
        // Keep only what may still start a frame.
        if at > 0 && at <= self.buf.len() {
            counters.resync_bytes += at as u64;
            self.buf.drain(..at);
        }
        if self.buf.len() >= RESYNC_WINDOW {
            let drop = self.buf.len() - HEAD_LEN;
            counters.resync_bytes += drop as u64;
            self.buf.drain(..drop);
        }
    }
}

pub(super) enum Plausible {
    Yes,
    No,
    NeedMore,
}

/// Whether `bytes` starts with a frame head and a header that decodes.
pub(super) fn plausible(bytes: &[u8], max_frame: u32) -> Plausible {
    let Ok(head) = FrameHead::parse(bytes[..HEAD_LEN].try_into().unwrap(), max_frame) else {
        return Plausible::No;
    };
    if head.header_len > RESYNC_MAX_HEADER
        || (head.serialize_type == SerializeType::Json
            && bytes.get(HEAD_LEN).is_some_and(|&b| b != b'{'))
    {
        return Plausible::No;
    }
    let Some(header) = bytes.get(HEAD_LEN..HEAD_LEN + head.header_len as usize) else {
        return Plausible::NeedMore;
    };
    match Header::parse(head.serialize_type, header) {
        Ok(_) => Plausible::Yes,
        Err(_) => Plausible::No,
    }
}

/// What to do with a frame's body, from its header and the request it answers.
fn body_for(
    header: &Header,
    direction: Direction,
    pending: &HashMap<(Direction, i32), RequestCode>,
) -> Body {
    if header.is_response() {
        let request = pending.get(&(opposite(direction), header.opaque));
        let found = ResponseCode::from_code(header.code) == ResponseCode::Success;
        return match request {
            Some(code) if found && code.returns_messages() => {
                Body::Messages(Box::new(MessageWalker::new(Layout::Stored)))
            }
            _ => Body::Count,
        };
    }
    match RequestCode::from_code(header.code) {
        RequestCode::SendBatchMessage => {
            Body::Messages(Box::new(MessageWalker::new(Layout::Batch)))
        }
        RequestCode::ConsumeMessageDirectly => {
            Body::Messages(Box::new(MessageWalker::new(Layout::Stored)))
        }
        RequestCode::HeartBeat | RequestCode::BatchAckMessage => Body::Json {
            bytes: Vec::new(),
            overflow: false,
        },
        _ => Body::Count,
    }
}
