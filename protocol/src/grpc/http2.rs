//! HTTP/2 framing of one direction of a connection (RFC 9113 §4): the frames of a byte stream,
//! with gaps of known size skipped and the frame boundary found again where it is lost (a
//! connection joined mid-stream, a gap longer than the frame it began in). Sans-IO: frames
//! are lent to a callback, borrowed from the bytes fed whenever they are whole in them.

/// What a client sends first on every HTTP/2 connection.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const FRAME_HEAD: usize = 9;
/// The largest frame accepted: RFC 9113's ceiling for SETTINGS_MAX_FRAME_SIZE is 2^24 - 1; a
/// gRPC peer rarely raises it past the 16 KiB default, and a frame is held whole.
pub const MAX_FRAME: usize = 1 << 20;
/// Possible frame heads kept while looking for the boundary, awaiting the bytes that tell.
const MAX_CANDIDATES: usize = 16;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY: u8 = 0x20;

/// One frame, its payload without padding or priority fields.
#[derive(Debug)]
pub struct Frame<'a> {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: &'a [u8],
    /// When its first and last byte were read.
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Frame<'_> {
    pub fn end_stream(&self) -> bool {
        self.flags & END_STREAM != 0
    }
    pub fn end_headers(&self) -> bool {
        self.flags & END_HEADERS != 0
    }
}

/// What the reader tells besides frames.
#[derive(Debug)]
pub enum Event<'a> {
    Frame(Frame<'a>),
    /// A frame whose head was read but some of whose bytes were not (`stream` 0: a connection
    /// frame, or unknown).
    Lost {
        kind: u8,
        stream: u32,
    },
    /// The frame boundary was lost; frames until the next boundary found are unknown.
    Unsynced,
}

/// Why a stream of bytes is not HTTP/2 framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Http2Error {
    /// The client's first bytes were not the preface.
    Preface,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The client preface is due (the client's direction of a connection seen from its start).
    Preface,
    /// At a frame boundary, or inside the frame being held.
    Framed,
    /// Inside a frame whose rest is skipped: `skip` bytes are left of it.
    Skipping,
    /// Looking for a frame boundary.
    Scanning,
}

pub struct Reader {
    state: State,
    /// Bytes of an unfinished frame head or frame (or, scanning, of candidate heads).
    held: Vec<u8>,
    /// Stream position of the next byte expected.
    position: u64,
    /// When the held bytes began to arrive.
    held_start_ns: u64,
    skip: u64,
    /// The frame being skipped: what is reported lost when it ends.
    skipped: Option<(u8, u32)>,
    /// Scanning: the next offset in `held` to look at, and the heads found before it whose
    /// follower has not come yet.
    cursor: usize,
    candidates: Vec<usize>,
    pub counters: Http2Counters,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Http2Counters {
    pub frames: u64,
    /// Frames some of whose bytes were never seen.
    pub frames_lost: u64,
    /// Times the frame boundary was lost, and bytes passed over until it was found again.
    pub resyncs: u64,
    pub resync_bytes: u64,
    /// Frames claiming more than MAX_FRAME bytes: skipped by their length.
    pub frames_too_long: u64,
}

impl Reader {
    /// `client_from_start`: this is the client's direction, read from its first byte (the
    /// preface comes first). `mid_stream`: the bytes start at an unknown point.
    pub fn new(client_from_start: bool, mid_stream: bool) -> Self {
        let state = if mid_stream {
            State::Scanning
        } else if client_from_start {
            State::Preface
        } else {
            State::Framed
        };
        Self {
            state,
            held: Vec::new(),
            position: 0,
            held_start_ns: 0,
            skip: 0,
            skipped: None,
            cursor: 0,
            candidates: Vec::new(),
            counters: Http2Counters::default(),
        }
    }

    pub fn held_bytes(&self) -> usize {
        self.held.capacity()
    }

    /// Lets go of the held bytes (memory is short): the frame they began is lost.
    pub fn shed(&mut self) -> usize {
        let freed = self.held.capacity();
        if !self.held.is_empty() {
            self.lose_sync();
        }
        self.held = Vec::new();
        freed
    }

    fn lose_sync(&mut self) {
        self.held.clear();
        self.cursor = 0;
        self.candidates.clear();
        self.state = State::Scanning;
        self.counters.resyncs += 1;
    }

    /// `length` bytes at `position` were never seen.
    pub fn gap(&mut self, position: u64, length: u64, emit: &mut impl FnMut(Event<'_>)) {
        if position != self.position {
            return;
        }
        self.position += length;
        match self.state {
            State::Skipping if length < self.skip => self.skip -= length,
            State::Skipping => {
                let past = length - self.skip;
                self.finish_skip(emit);
                self.gap_at_boundary(past, emit);
            }
            State::Framed if self.held.len() >= FRAME_HEAD => {
                // The head is known: the frame is lost, its end is not.
                let (kind, stream, length_of) = head(&self.held);
                let left = (FRAME_HEAD + length_of - self.held.len()) as u64;
                self.held.clear();
                self.skipped = Some((kind, stream));
                self.skip = left;
                self.state = State::Skipping;
                if length < left {
                    self.skip -= length;
                } else {
                    self.finish_skip(emit);
                    self.gap_at_boundary(length - left, emit);
                }
            }
            State::Framed if self.held.is_empty() => self.gap_at_boundary(length, emit),
            State::Scanning => {
                self.held.clear();
                self.cursor = 0;
                self.candidates.clear();
            }
            _ => {
                emit(Event::Unsynced);
                self.lose_sync();
            }
        }
    }

    fn gap_at_boundary(&mut self, length: u64, emit: &mut impl FnMut(Event<'_>)) {
        if length > 0 {
            emit(Event::Unsynced);
            self.lose_sync();
        }
    }

    fn finish_skip(&mut self, emit: &mut impl FnMut(Event<'_>)) {
        self.skip = 0;
        self.state = State::Framed;
        if let Some((kind, stream)) = self.skipped.take() {
            self.counters.frames_lost += 1;
            emit(Event::Lost { kind, stream });
        }
    }

    /// Feeds the bytes read at `position`; frames finished by them go to `emit`.
    pub fn feed(
        &mut self,
        position: u64,
        bytes: &[u8],
        timestamp_ns: u64,
        emit: &mut impl FnMut(Event<'_>),
    ) -> Result<(), Http2Error> {
        if position != self.position {
            // Bytes out of order: what lies between is unknown.
            if position > self.position {
                self.gap(self.position, position - self.position, emit);
            } else {
                return Ok(());
            }
        }
        self.position += bytes.len() as u64;
        self.process(bytes, timestamp_ns, emit)
    }

    fn process(
        &mut self,
        mut bytes: &[u8],
        timestamp_ns: u64,
        emit: &mut impl FnMut(Event<'_>),
    ) -> Result<(), Http2Error> {
        while !bytes.is_empty() {
            match self.state {
                State::Preface => {
                    let done = self.held.len();
                    let take = (PREFACE.len() - done).min(bytes.len());
                    if bytes[..take] != PREFACE[done..done + take] {
                        return Err(Http2Error::Preface);
                    }
                    self.held.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.held.len() == PREFACE.len() {
                        self.held.clear();
                        self.state = State::Framed;
                    }
                }
                State::Skipping => {
                    let take = self.skip.min(bytes.len() as u64);
                    self.skip -= take;
                    bytes = &bytes[take as usize..];
                    if self.skip == 0 {
                        self.finish_skip(emit);
                    }
                }
                State::Framed => bytes = self.framed(bytes, timestamp_ns, emit),
                State::Scanning => {
                    self.scan(bytes, timestamp_ns, emit);
                    bytes = &[];
                }
            }
        }
        Ok(())
    }

    /// Reads frames at a boundary; returns the bytes not consumed (after a state change).
    fn framed<'b>(
        &mut self,
        mut bytes: &'b [u8],
        timestamp_ns: u64,
        emit: &mut impl FnMut(Event<'_>),
    ) -> &'b [u8] {
        // Whole frames straight from the bytes fed, when nothing is held.
        while self.held.is_empty() && bytes.len() >= FRAME_HEAD {
            let (kind, stream, length) = head(bytes);
            if length > MAX_FRAME {
                return self.too_long(kind, stream, length, &bytes[FRAME_HEAD..]);
            }
            if bytes.len() < FRAME_HEAD + length {
                break;
            }
            self.frame(
                &bytes[..FRAME_HEAD + length],
                timestamp_ns,
                timestamp_ns,
                emit,
            );
            bytes = &bytes[FRAME_HEAD + length..];
        }
        if bytes.is_empty() {
            return bytes;
        }
        if self.held.is_empty() {
            self.held_start_ns = timestamp_ns;
        }
        if self.held.len() < FRAME_HEAD {
            let take = (FRAME_HEAD - self.held.len()).min(bytes.len());
            self.held.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.held.len() < FRAME_HEAD {
                return bytes;
            }
        }
        let (kind, stream, length) = head(&self.held);
        if length > MAX_FRAME {
            self.held.clear();
            return self.too_long(kind, stream, length, bytes);
        }
        let take = (FRAME_HEAD + length - self.held.len()).min(bytes.len());
        self.held.extend_from_slice(&bytes[..take]);
        bytes = &bytes[take..];
        if self.held.len() == FRAME_HEAD + length {
            let held = std::mem::take(&mut self.held);
            self.frame(&held, self.held_start_ns, timestamp_ns, emit);
            self.held = held;
            self.held.clear();
        }
        bytes
    }

    fn too_long<'b>(&mut self, kind: u8, stream: u32, length: usize, rest: &'b [u8]) -> &'b [u8] {
        self.counters.frames_too_long += 1;
        self.skipped = Some((kind, stream));
        self.skip = length as u64;
        self.state = State::Skipping;
        rest
    }

    fn frame(
        &mut self,
        bytes: &[u8],
        start_ns: u64,
        end_ns: u64,
        emit: &mut impl FnMut(Event<'_>),
    ) {
        self.counters.frames += 1;
        let (kind, stream, _) = head(bytes);
        let flags = bytes[4];
        match payload(kind, flags, &bytes[FRAME_HEAD..]) {
            Some(payload) => emit(Event::Frame(Frame {
                kind,
                flags,
                stream,
                payload,
                start_ns,
                end_ns,
            })),
            None => {
                // Padding longer than the frame: a peer error, or not a frame at all.
                self.counters.frames_lost += 1;
                emit(Event::Lost { kind, stream });
            }
        }
    }

    /// Looks for two frame heads in a row; keeps at most a frame's worth of bytes while
    /// looking. A head whose follower lies beyond the bytes held stays a candidate until they
    /// come; once a pair is found, reads on from its first head.
    fn scan(&mut self, bytes: &[u8], timestamp_ns: u64, emit: &mut impl FnMut(Event<'_>)) {
        if self.held.is_empty() {
            self.held_start_ns = timestamp_ns;
        }
        self.held.extend_from_slice(bytes);
        let held = &self.held;
        // Some(true): a pair; Some(false): not a head, or no head after it; None: unknown yet.
        let verdict = |at: usize| -> Option<bool> {
            let here = &held[at..];
            if here.len() < FRAME_HEAD {
                return None;
            }
            if !plausible(here) {
                return Some(false);
            }
            let (_, _, length) = head(here);
            let next = here.get(FRAME_HEAD + length..)?;
            if next.len() < FRAME_HEAD {
                return None;
            }
            Some(plausible(next))
        };
        let mut found = None;
        self.candidates.retain(|&at| match verdict(at) {
            Some(true) => {
                found = found.min(Some(at)).or(Some(at));
                true
            }
            Some(false) => false,
            None => true,
        });
        while found.is_none() && self.cursor + FRAME_HEAD <= held.len() {
            match verdict(self.cursor) {
                Some(true) => found = Some(self.cursor),
                Some(false) => {}
                None if self.candidates.len() < MAX_CANDIDATES => self.candidates.push(self.cursor),
                None => {}
            }
            self.cursor += 1;
        }
        // Before the earliest head that may still be one, nothing is needed any more; and
        // never more than two heads and a frame are held.
        let earliest = found
            .or(self.candidates.iter().copied().min())
            .unwrap_or(self.cursor)
            .max(held.len().saturating_sub(MAX_FRAME + 2 * FRAME_HEAD));
        self.counters.resync_bytes += earliest as u64;
        self.held.drain(..earliest);
        self.cursor -= earliest.min(self.cursor);
        self.candidates.retain(|&at| at >= earliest);
        for at in &mut self.candidates {
            *at -= earliest;
        }
        if found.is_some() {
            self.state = State::Framed;
            self.candidates.clear();
            self.cursor = 0;
            let held = std::mem::take(&mut self.held);
            // Framed bytes never lead back to scanning, nor to the preface.
            let _ = self.process(&held, timestamp_ns, emit);
        }
    }
}

/// Length, type and stream of the frame head at the start of `bytes` (≥ 9 bytes).
fn head(bytes: &[u8]) -> (u8, u32, usize) {
    let length =
        (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
    let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
    (bytes[3], stream, length)
}

/// Whether the 9 bytes at the start of `bytes` can be a frame head of a gRPC connection: a
/// known type, flags that type defines, a stream id where the type needs one (and none where
/// it must not), a length the type allows.
fn plausible(bytes: &[u8]) -> bool {
    if bytes.len() < FRAME_HEAD || bytes[5] & 0x80 != 0 {
        return false;
    }
    let (kind, stream, length) = head(bytes);
    let flags = bytes[4];
    if length > MAX_FRAME {
        return false;
    }
    match kind {
        DATA => stream != 0 && flags & !(END_STREAM | PADDED) == 0,
        HEADERS => stream != 0 && flags & !(END_STREAM | END_HEADERS | PADDED | PRIORITY) == 0,
        RST_STREAM => stream != 0 && length == 4 && flags == 0,
        SETTINGS => stream == 0 && length % 6 == 0 && flags & !1 == 0,
        PING => stream == 0 && length == 8 && flags & !1 == 0,
        GOAWAY => stream == 0 && length >= 8 && flags == 0,
        WINDOW_UPDATE => length == 4 && flags == 0,
        CONTINUATION => stream != 0 && flags & !END_HEADERS == 0,
        _ => false,
    }
}

/// The payload without padding (and, for HEADERS, the priority fields).
fn payload(kind: u8, flags: u8, mut payload: &[u8]) -> Option<&[u8]> {
    if !matches!(kind, DATA | HEADERS | PUSH_PROMISE) {
        return Some(payload);
    }
    if flags & PADDED != 0 {
        let (&pad, rest) = payload.split_first()?;
        payload = rest.get(..rest.len().checked_sub(usize::from(pad))?)?;
    }
    if kind == HEADERS && flags & PRIORITY != 0 {
        payload = payload.get(5..)?;
    }
    Some(payload)
}
