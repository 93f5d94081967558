//! One direction's framing: head → header → body, fed in pieces of any size, with gaps of
//! known size skipped in place and a scan for the next plausible header when the frame
//! boundary is lost.

use crate::Awaiting;

use bytes::{Buf, BytesMut};

use super::{
    BodyFaults, Command, DecoderConfig, DecoderCounters, MAX_JSON_BODY, RequestCode, ResponseCode,
    Wire,
    header::{FrameHead, HEAD_LEN, Header, SerializeType},
    message::{Layout, MessageWalker},
    opposite,
};
use crate::Direction;

/// While scanning, headers longer than this are not believed.
const RESYNC_MAX_HEADER: u32 = 64 << 10;
/// Bytes kept while scanning: enough for a head and a plausible header.
const RESYNC_WINDOW: usize = RESYNC_MAX_HEADER as usize + HEAD_LEN;
/// Header bytes the scan may parse per stream byte seen: whatever bytes a neighbour crafts,
/// looking for a lost frame boundary costs at most this many times a plain read of them.
const RESYNC_WORK_PER_BYTE: u64 = 4;
/// The most header-parse work saved up for one scan.
const RESYNC_BUDGET_MAX: u64 = 1 << 20;
/// An emptied buffer larger than this is given back rather than kept for the next frame: one
/// large header must not pin its memory for the connection's life.
const KEEP_CAPACITY: usize = 64 << 10;

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

    fn held_bytes(&self) -> usize {
        match self {
            Body::Count => 0,
            Body::Json { bytes, .. } => bytes.capacity(),
            Body::Messages(walker) => walker.held_bytes(),
        }
    }

    /// Lets go of what is held; the frame still completes, without what was let go.
    fn shed(&mut self) {
        match self {
            Body::Count => {}
            Body::Json { bytes, overflow } => {
                *bytes = Vec::new();
                *overflow = true;
            }
            Body::Messages(walker) => walker.shed(),
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
    /// Bytes taken from the stream and not consumed yet: the head or header being collected,
    /// or the window being scanned (right after a scan found a frame: that frame's bytes on).
    buf: BytesMut,
    /// Stream position of the next byte to take from the stream (the end of `buf`).
    position: u64,
    /// Position and time of the current frame's first byte, once known.
    frame_start: Option<(u64, u64)>,
    /// Header-parse work the scan may still do, earned by every byte seen.
    resync_budget: u64,
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
            buf: BytesMut::new(),
            position: 0,
            frame_start: None,
            resync_budget: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn feed(
        &mut self,
        direction: Direction,
        position: u64,
        mut bytes: &[u8],
        timestamp_ns: u64,
        pending: &Awaiting,
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
        self.resync_budget = self
            .resync_budget
            .saturating_add((bytes.len() as u64).saturating_mul(RESYNC_WORK_PER_BYTE))
            .min(RESYNC_BUDGET_MAX);
        // One step at a time until the input is used up: no recursion, and every byte is
        // taken from the stream once.
        while self.step(direction, &mut bytes, timestamp_ns, pending, counters, out) {}
    }

    /// Moves the state machine on with what `buf` holds, then with `input`; false when it
    /// needs more bytes than there are.
    fn step(
        &mut self,
        direction: Direction,
        input: &mut &[u8],
        timestamp_ns: u64,
        pending: &Awaiting,
        counters: &mut DecoderCounters,
        out: &mut Vec<Command>,
    ) -> bool {
        match &mut self.state {
            State::Head => {
                let start = self.position - self.buf.len() as u64;
                if self.buf.is_empty() && input.is_empty() {
                    return false;
                }
                self.frame_start.get_or_insert((start, timestamp_ns));
                if !self.fill(HEAD_LEN, input) {
                    return false;
                }
                let head: [u8; HEAD_LEN] = self.buf[..HEAD_LEN].try_into().unwrap();
                match FrameHead::parse(&head, self.config.max_frame) {
                    Ok(head) => self.state = State::Header(head),
                    Err(_) => self.start_resync(counters),
                }
            }
            State::Header(head) => {
                let head = *head;
                let want = HEAD_LEN + head.header_len as usize;
                if !self.fill(want, input) {
                    return false;
                }
                match Header::parse(head.serialize_type, &self.buf[HEAD_LEN..want]) {
                    Ok(header) => {
                        self.buf.advance(want);
                        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
                            self.buf = BytesMut::new();
                        }
                        let (start_position, start_ns) =
                            self.frame_start.unwrap_or((self.position, timestamp_ns));
                        let body = body_for(&header, direction, pending);
                        let frame = Frame {
                            head,
                            header,
                            body,
                            body_remaining: head.body_len(),
                            start_position,
                            start_ns,
                            missing: 0,
                        };
                        self.state = State::Body(Box::new(frame));
                        self.finish_if_done(direction, timestamp_ns, out);
                    }
                    // A plausible head with a garbage header: the boundary is lost.
                    Err(_) => self.start_resync(counters),
                }
            }
            State::Body(frame) => {
                // Bytes held since a scan first, then the stream's.
                if !self.buf.is_empty() {
                    let n = frame.body_remaining.min(self.buf.len() as u64) as usize;
                    frame.body.feed(&self.buf[..n]);
                    frame.body_remaining -= n as u64;
                    self.buf.advance(n);
                } else if !input.is_empty() {
                    let n = frame.body_remaining.min(input.len() as u64) as usize;
                    frame.body.feed(&input[..n]);
                    frame.body_remaining -= n as u64;
                    self.position += n as u64;
                    *input = &input[n..];
                } else {
                    return false;
                }
                self.finish_if_done(direction, timestamp_ns, out);
            }
            State::Skip { remaining } => {
                let n = if !self.buf.is_empty() {
                    let n = (*remaining).min(self.buf.len() as u64);
                    self.buf.advance(n as usize);
                    n
                } else if !input.is_empty() {
                    let n = (*remaining).min(input.len() as u64);
                    self.position += n;
                    *input = &input[n as usize..];
                    n
                } else {
                    return false;
                };
                *remaining -= n;
                if *remaining == 0 {
                    self.state = State::Head;
                }
            }
            State::Resync => {
                let room = RESYNC_WINDOW.saturating_sub(self.buf.len());
                let n = room.min(input.len());
                self.take(n, input);
                if !self.scan(timestamp_ns, counters) && n == 0 {
                    return false;
                }
            }
        }
        true
    }

    /// Moves `n` bytes of `input` into `buf`.
    fn take(&mut self, n: usize, input: &mut &[u8]) {
        self.buf.extend_from_slice(&input[..n]);
        self.position += n as u64;
        *input = &input[n..];
    }

    /// Makes `buf` hold `want` bytes, from `input`; false when there are not enough yet.
    fn fill(&mut self, want: usize, input: &mut &[u8]) -> bool {
        let n = want.saturating_sub(self.buf.len()).min(input.len());
        self.take(n, input);
        self.buf.len() >= want
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
                let frame_start = self.frame_start.map_or(position, |(start, _)| start);
                let frame_end = frame_start + 4 + u64::from(head.length);
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
        if !matches!(self.state, State::Header(_)) {
            self.frame_start = None;
        }
    }

    /// Bytes this direction holds between events: the head, header or scan window being
    /// collected and the body's fields.
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity()
            + match &self.state {
                State::Body(frame) => frame.body.held_bytes(),
                _ => 0,
            }
    }

    /// Lets go of what this direction holds (memory is short), as if those bytes had been
    /// lost: a header being collected is given up and its frame skipped by its length (counted
    /// as lost), a body keeps only its counts, a scan starts again with the next bytes.
    /// Returns the bytes let go of.
    pub fn shed(&mut self, counters: &mut DecoderCounters) -> usize {
        let held = self.held_bytes();
        match &mut self.state {
            State::Header(head) => {
                let frame_start = self.frame_start.map_or(self.position, |(start, _)| start);
                let frame_end = frame_start + 4 + u64::from(head.length);
                counters.frames_lost += 1;
                self.frame_start = None;
                self.state = match frame_end.saturating_sub(self.position) {
                    0 => State::Head,
                    remaining => State::Skip { remaining },
                };
                self.buf = BytesMut::new();
            }
            State::Body(frame) => {
                frame.body.shed();
                if self.buf.is_empty() {
                    self.buf = BytesMut::new();
                }
            }
            State::Resync => {
                counters.resync_bytes += self.buf.len() as u64;
                self.buf = BytesMut::new();
            }
            State::Head | State::Skip { .. } => {
                if self.buf.is_empty() {
                    self.buf = BytesMut::new();
                }
            }
        }
        held.saturating_sub(self.held_bytes())
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
        self.frame_start = None;
        let Frame {
            head,
            header,
            body,
            start_position,
            start_ns,
            missing,
            ..
        } = *frame;
        let mut body_faults = BodyFaults::default();
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
            Body::Messages(walker) => {
                let walker = walker.finish();
                body_faults = BodyFaults {
                    malformed: walker.errors,
                    dropped: walker.dropped,
                };
                (walker.messages, None)
            }
        };
        out.push(Command {
            direction,
            wire: Wire::Remoting(head.serialize_type),
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
            body_faults,
            call: None,
            exchange: None,
        });
    }

    /// Enters the scan for a plausible head, starting after the current frame's first byte.
    fn start_resync(&mut self, counters: &mut DecoderCounters) {
        counters.resyncs += 1;
        if !self.buf.is_empty() {
            self.buf.advance(1);
            counters.resync_bytes += 1;
        }
        self.frame_start = None;
        self.state = State::Resync;
    }

    /// Looks for a plausible frame in `buf`, dropping what cannot start one; true when one
    /// was found (`buf` then starts with it and the framer goes on from there).
    fn scan(&mut self, timestamp_ns: u64, counters: &mut DecoderCounters) -> bool {
        let mut at = 0;
        let found = loop {
            if at + HEAD_LEN > self.buf.len() {
                break false;
            }
            let mut budget = Budget {
                left: &mut self.resync_budget,
                skipped: &mut counters.resync_candidates_skipped,
                spent: &mut counters.resync_header_bytes_parsed,
            };
            match plausible(&self.buf[at..], self.config.max_frame, Some(&mut budget)) {
                Plausible::No => at += 1,
                Plausible::NeedMore => break false,
                Plausible::Yes => break true,
            }
        };
        // What lies before `at` cannot start a frame; a candidate that needs more bytes
        // needs at most the window.
        counters.resync_bytes += at as u64;
        self.buf.advance(at);
        if found {
            self.frame_start = Some((self.position - self.buf.len() as u64, timestamp_ns));
            self.state = State::Head;
        }
        found
    }
}

/// The header-parse work a scan may still spend, and the count of candidates passed over
/// for want of it.
pub(super) struct Budget<'a> {
    left: &'a mut u64,
    skipped: &'a mut u64,
    spent: &'a mut u64,
}

pub(super) enum Plausible {
    Yes,
    No,
    NeedMore,
}

/// Whether a header's outline holds, in constant time: a JSON object's braces, or a binary
/// header whose remark and ext fields fill it exactly.
fn outline_holds(serialize_type: SerializeType, header: &[u8]) -> bool {
    match serialize_type {
        SerializeType::Json => header.first() == Some(&b'{') && header.last() == Some(&b'}'),
        SerializeType::Rocketmq => {
            let i32_at = |at: usize| {
                header
                    .get(at..at + 4)
                    .map(|b| i32::from_be_bytes(b.try_into().unwrap()))
            };
            let Some(remark_len) = i32_at(13) else {
                return false;
            };
            let remark_len = usize::try_from(remark_len.max(0)).unwrap_or(usize::MAX);
            let Some(ext_len) = 17usize
                .checked_add(remark_len)
                .and_then(i32_at)
                .and_then(|l| usize::try_from(l).ok())
            else {
                return false;
            };
            header[2] <= 13
                && 21usize.saturating_add(remark_len).saturating_add(ext_len) == header.len()
        }
    }
}

/// Whether `bytes` starts with a frame head and a header that decodes. With a `budget`, a
/// header is parsed only while the budget lasts (and is charged for it).
pub(super) fn plausible(bytes: &[u8], max_frame: u32, budget: Option<&mut Budget>) -> Plausible {
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
    if !outline_holds(head.serialize_type, header) {
        return Plausible::No;
    }
    if let Some(budget) = budget {
        let cost = u64::from(head.header_len);
        if *budget.left < cost {
            *budget.skipped += 1;
            return Plausible::No;
        }
        *budget.left -= cost;
        *budget.spent += cost;
    }
    match Header::parse(head.serialize_type, header) {
        Ok(_) => Plausible::Yes,
        Err(_) => Plausible::No,
    }
}

/// What to do with a frame's body, from its header and the request it answers.
fn body_for(header: &Header, direction: Direction, pending: &Awaiting) -> Body {
    if header.is_response() {
        let found = ResponseCode::from_code(header.code) == ResponseCode::Success;
        return match pending.get(&(opposite(direction), header.opaque)) {
            Some(awaited) if found && awaited.code.returns_messages() => {
                Body::Messages(Box::new(MessageWalker::new(Layout::Stored)))
            }
            // Its request not seen yet: it may still come (a client writing and reading on
            // two threads can have the read's record out first). The body is walked in case
            // it holds messages; they are kept only if the request turns out to fetch them.
            None if found => Body::Messages(Box::new(MessageWalker::new(Layout::Stored))),
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
