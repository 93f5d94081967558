//! Messages inside frames: properties, stored messages (pull and pop bodies) and batch
//! bodies, walked incrementally so that message bodies are skipped, never buffered
//! (`common/message/MessageDecoder.java`, `MessageConst.java`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{DecodeError, fields::Fields, header::Reader};

/// The properties string: `name \x01 value \x02` repeated.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Properties(pub Fields);

impl Properties {
    pub fn parse(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let mut fields = Fields::with_capacity(text.len(), 8);
        for (key, value) in text
            .split('\u{2}')
            .filter_map(|pair| pair.split_once('\u{1}'))
        {
            fields.insert(key, value);
        }
        Self(fields)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    /// The message ID applications see (`UNIQ_KEY`).
    pub fn uniq_key(&self) -> Option<&str> {
        self.get("UNIQ_KEY")
    }
    pub fn tags(&self) -> Option<&str> {
        self.get("TAGS")
    }
    /// `KEYS`, space-separated on the wire.
    pub fn keys(&self) -> Vec<&str> {
        self.get("KEYS")
            .map(|k| k.split(' ').filter(|k| !k.is_empty()).collect())
            .unwrap_or_default()
    }
    pub fn delay_level(&self) -> Option<i32> {
        self.get("DELAY")
            .and_then(|d| d.parse().ok())
            .filter(|&d| d > 0)
    }
    /// Absolute delivery time in ms, from TIMER_DELIVER_MS (or the relative TIMER_DELAY_*
    /// added to `born_ms`).
    pub fn delivery_time_ms(&self, born_ms: i64) -> Option<i64> {
        if let Some(at) = self.get("TIMER_DELIVER_MS").and_then(|v| v.parse().ok()) {
            return Some(at);
        }
        let delay_ms = self
            .get("TIMER_DELAY_MS")
            .and_then(|v| v.parse::<i64>().ok())
            .or_else(|| {
                self.get("TIMER_DELAY_SEC")
                    .and_then(|v| v.parse::<i64>().ok())
                    .map(|s| s.saturating_mul(1000))
            })?;
        // Wire values: saturate rather than wrap (or panic in a debug build).
        Some(born_ms.saturating_add(delay_ms))
    }
    pub fn transaction_prepared(&self) -> bool {
        self.get("TRAN_MSG") == Some("true")
    }
    pub fn message_group(&self) -> Option<&str> {
        self.get("__SHARDINGKEY")
    }
    pub fn retry_topic(&self) -> Option<&str> {
        self.get("RETRY_TOPIC")
    }
    pub fn real_topic(&self) -> Option<&str> {
        self.get("REAL_TOPIC")
    }
    pub fn origin_message_id(&self) -> Option<&str> {
        self.get("ORIGIN_MESSAGE_ID")
    }
    pub fn dlq_origin_message_id(&self) -> Option<&str> {
        self.get("DLQ_ORIGIN_MESSAGE_ID")
    }
    pub fn traceparent(&self) -> Option<&str> {
        self.get("traceparent")
    }
    pub fn tracestate(&self) -> Option<&str> {
        self.get("tracestate")
    }
}

/// What the agent keeps of one message: everything but its body.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MessageMeta {
    /// `UNIQ_KEY`, the ID applications see, when the sender set one.
    pub msg_id: Option<String>,
    /// The broker's ID: store host and commit-log offset (stored messages only).
    pub offset_msg_id: Option<String>,
    pub topic: Option<String>,
    pub queue_id: Option<i32>,
    pub queue_offset: Option<i64>,
    pub physical_offset: Option<i64>,
    pub sys_flag: i32,
    pub flag: i32,
    pub born_timestamp_ms: Option<i64>,
    pub born_host: Option<SocketAddr>,
    pub store_timestamp_ms: Option<i64>,
    pub store_host: Option<SocketAddr>,
    pub reconsume_times: Option<i32>,
    pub body_len: u64,
    pub properties: Properties,
    /// Some of the message's own bytes were never seen: fields may be missing.
    pub incomplete: bool,
}

impl MessageMeta {
    pub fn tags(&self) -> Option<&str> {
        self.properties.tags()
    }
    pub fn keys(&self) -> Vec<&str> {
        self.properties.keys()
    }
}

/// `MessageDecoder.createMessageId`: store ip, port and commit-log offset as uppercase hex.
pub fn offset_msg_id(store_host: SocketAddr, physical_offset: i64) -> String {
    // At most 16 address bytes, 4 of port and 8 of offset, on the stack: this runs for every
    // pulled message.
    let mut bytes = [0u8; 28];
    let address_len = match store_host.ip() {
        IpAddr::V4(ip) => {
            bytes[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            bytes[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    let len = address_len + 12;
    bytes[address_len..address_len + 4]
        .copy_from_slice(&i32::from(store_host.port()).to_be_bytes());
    bytes[address_len + 4..len].copy_from_slice(&physical_offset.to_be_bytes());
    let mut hex = crate::hex_string(&bytes[..len]);
    hex.make_ascii_uppercase();
    hex
}

const MAGIC_V1: i32 = 0xDAA320A7_u32 as i32;
const MAGIC_V2: i32 = 0xDAA320AB_u32 as i32;
const BORN_HOST_V6: i32 = 0x10;
const STORE_HOST_V6: i32 = 0x20;
/// Topic and properties together beyond this are taken as garbage.
const MAX_TAIL: usize = 1 << 17;
/// Messages kept per frame at most; more are counted in `dropped`.
pub const MAX_MESSAGES_PER_FRAME: usize = 4096;

/// The two layouts a walker can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Stored messages, as pull and pop responses carry them.
    Stored,
    /// Inner messages of a SEND_BATCH_MESSAGE body.
    Batch,
}

fn read_host(r: &mut Reader<'_>, v6: bool) -> Result<SocketAddr, DecodeError> {
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(r.take(16)?).unwrap()))
    } else {
        IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(r.take(4)?).unwrap()))
    };
    Ok(SocketAddr::new(ip, r.i32()? as u16))
}

impl Layout {
    /// How many bytes before the body; known once the first `known_after()` bytes are in.
    fn prefix_len(self, start: &[u8]) -> Option<usize> {
        match self {
            Layout::Batch => Some(20),
            Layout::Stored => {
                // sysFlag sits at 36..40 and says how long the two hosts are.
                let sys_flag = i32::from_be_bytes(start.get(36..40)?.try_into().unwrap());
                let host = |v6: bool| if v6 { 20 } else { 8 };
                Some(
                    40 + 8
                        + host(sys_flag & BORN_HOST_V6 != 0)
                        + 8
                        + host(sys_flag & STORE_HOST_V6 != 0)
                        + 4
                        + 8
                        + 4,
                )
            }
        }
    }

    /// Parses the prefix (which ends with the body length) into a message.
    fn parse_prefix(self, prefix: &[u8]) -> Result<(MessageMeta, i32, u64), DecodeError> {
        let mut r = Reader::new(prefix);
        r.i32()?; // total size, already read by the walker
        let mut meta = MessageMeta::default();
        let magic = r.i32()?;
        r.i32()?; // body CRC
        match self {
            Layout::Batch => {
                meta.flag = r.i32()?;
            }
            Layout::Stored => {
                if magic != MAGIC_V1 && magic != MAGIC_V2 {
                    return Err(DecodeError::Magic(magic));
                }
                meta.queue_id = Some(r.i32()?);
                meta.flag = r.i32()?;
                meta.queue_offset = Some(r.i64()?);
                let physical = r.i64()?;
                meta.physical_offset = Some(physical);
                meta.sys_flag = r.i32()?;
                meta.born_timestamp_ms = Some(r.i64()?);
                meta.born_host = Some(read_host(&mut r, meta.sys_flag & BORN_HOST_V6 != 0)?);
                meta.store_timestamp_ms = Some(r.i64()?);
                let store = read_host(&mut r, meta.sys_flag & STORE_HOST_V6 != 0)?;
                meta.store_host = Some(store);
                meta.offset_msg_id = Some(offset_msg_id(store, physical));
                meta.reconsume_times = Some(r.i32()?);
                r.i64()?; // prepared transaction offset
            }
        }
        let body_len = r.i32()?;
        let body_len = u64::try_from(body_len).map_err(|_| DecodeError::Truncated)?;
        meta.body_len = body_len;
        Ok((meta, if magic == MAGIC_V2 { 2 } else { 1 }, body_len))
    }

    /// Parses what follows the body: topic (stored only) and properties.
    fn parse_tail(
        self,
        meta: &mut MessageMeta,
        magic_version: i32,
        tail: &[u8],
    ) -> Result<(), DecodeError> {
        let mut r = Reader::new(tail);
        if self == Layout::Stored {
            let topic_len = if magic_version == 2 {
                r.i16()? as u16 as usize
            } else {
                usize::from(r.u8()?)
            };
            meta.topic = Some(String::from_utf8_lossy(r.take(topic_len)?).into_owned());
        }
        let props_len = r.i16()? as u16 as usize;
        meta.properties = Properties::parse(r.take(props_len)?);
        meta.msg_id = meta.properties.uniq_key().map(String::from);
        Ok(())
    }
}

enum Phase {
    /// Collecting the prefix into `buf`.
    Prefix,
    /// Skipping `remaining` body bytes.
    Body { remaining: u64 },
    /// Collecting `len` tail bytes into `buf`.
    Tail { len: usize },
    /// Skipping the rest of a message whose fields are lost or malformed.
    SkipMessage { remaining: u64 },
    /// The rest of the body cannot be walked.
    Lost,
}

/// Walks a body made of messages back to back, fed in pieces, keeping only metadata.
pub struct MessageWalker {
    layout: Layout,
    phase: Phase,
    buf: Vec<u8>,
    current: MessageMeta,
    magic_version: i32,
    /// Bytes of the current message seen so far, and its total size once known.
    seen: u64,
    total: Option<u64>,
    pub messages: Vec<MessageMeta>,
    pub dropped: u64,
    pub errors: u64,
}

impl MessageWalker {
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            phase: Phase::Prefix,
            buf: Vec::new(),
            current: MessageMeta::default(),
            magic_version: 1,
            seen: 0,
            total: None,
            messages: Vec::new(),
            dropped: 0,
            errors: 0,
        }
    }

    fn finish_message(&mut self) {
        let meta = std::mem::take(&mut self.current);
        if self.messages.len() < MAX_MESSAGES_PER_FRAME {
            self.messages.push(meta);
        } else {
            self.dropped += 1;
        }
        self.buf.clear();
        self.seen = 0;
        self.total = None;
        self.phase = Phase::Prefix;
    }

    /// Gives up on the current message (its fields are lost) and skips to its end if known.
    fn abandon_message(&mut self, malformed: bool) {
        if malformed {
            self.errors += 1;
        }
        self.buf.clear();
        self.phase = match self.total {
            Some(total) if total > self.seen => Phase::SkipMessage {
                remaining: total - self.seen,
            },
            _ => Phase::Lost,
        };
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.phase {
                Phase::Lost => return,
                Phase::Prefix => {
                    let want = self.layout.prefix_len(&self.buf).unwrap_or(40).max(4);
                    let n = (want - self.buf.len()).min(bytes.len());
                    self.buf.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    self.seen += n as u64;
                    if self.buf.len() >= 4 && self.total.is_none() {
                        let total = i32::from_be_bytes(self.buf[..4].try_into().unwrap());
                        if total < 4 {
                            self.errors += 1;
                            self.phase = Phase::Lost;
                            continue;
                        }
                        self.total = Some(total as u64);
                    }
                    match self.layout.prefix_len(&self.buf) {
                        Some(len) if self.buf.len() >= len => self.start_body(),
                        _ => {}
                    }
                }
                Phase::Body { remaining } => {
                    let n = remaining.min(bytes.len() as u64);
                    bytes = &bytes[n as usize..];
                    self.seen += n;
                    self.body_advanced(remaining - n);
                }
                Phase::Tail { len } => {
                    let n = (len - self.buf.len()).min(bytes.len());
                    self.buf.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    self.seen += n as u64;
                    if self.buf.len() == len {
                        let tail = std::mem::take(&mut self.buf);
                        let result =
                            self.layout
                                .parse_tail(&mut self.current, self.magic_version, &tail);
                        if result.is_err() {
                            self.errors += 1;
                            self.current.incomplete = true;
                        }
                        self.finish_message();
                    }
                }
                Phase::SkipMessage { remaining } => {
                    let n = remaining.min(bytes.len() as u64);
                    bytes = &bytes[n as usize..];
                    if remaining == n {
                        self.current.incomplete = true;
                        self.finish_message();
                    } else {
                        self.phase = Phase::SkipMessage {
                            remaining: remaining - n,
                        };
                    }
                }
            }
        }
    }

    fn start_body(&mut self) {
        match self.layout.parse_prefix(&self.buf) {
            Ok((meta, magic_version, body_len)) => {
                let total = self.total.unwrap_or(0);
                let prefix = self.buf.len() as u64;
                if prefix + body_len > total || (total - prefix - body_len) as usize > MAX_TAIL {
                    return self.abandon_message(true);
                }
                self.current = meta;
                self.magic_version = magic_version;
                self.buf.clear();
                self.body_advanced(body_len);
            }
            Err(_) => self.abandon_message(true),
        }
    }

    /// After body bytes: wait for more, or move on to the tail.
    fn body_advanced(&mut self, remaining: u64) {
        if remaining > 0 {
            self.phase = Phase::Body { remaining };
            return;
        }
        let tail = self.total.unwrap_or(0).saturating_sub(self.seen) as usize;
        if tail == 0 {
            // A message without tail has no properties: malformed but its prefix stands.
            self.current.incomplete = true;
            self.errors += 1;
            self.finish_message();
        } else {
            self.phase = Phase::Tail { len: tail };
        }
    }

    /// `length` bytes of the body were never seen.
    pub fn skip(&mut self, length: u64) {
        match self.phase {
            Phase::Lost => {}
            Phase::Body { remaining } if length < remaining => {
                self.seen += length;
                self.phase = Phase::Body {
                    remaining: remaining - length,
                };
            }
            Phase::SkipMessage { remaining } if length < remaining => {
                self.phase = Phase::SkipMessage {
                    remaining: remaining - length,
                };
            }
            _ => {
                // The gap reaches into this message's fields or past its end.
                let Some(total) = self.total else {
                    self.phase = Phase::Lost;
                    return;
                };
                let left_in_message = total.saturating_sub(self.seen);
                self.current.incomplete = true;
                if length < left_in_message {
                    self.seen += length;
                    self.buf.clear();
                    self.phase = Phase::SkipMessage {
                        remaining: left_in_message - length,
                    };
                } else {
                    // Past this message: the next one starts at an unknown point in the gap.
                    self.finish_message();
                    self.phase = if length == left_in_message {
                        Phase::Prefix
                    } else {
                        Phase::Lost
                    };
                }
            }
        }
    }

    /// Bytes this walker holds: the fields being collected and the messages walked so far
    /// (their fixed part; their strings come from the same bounded body).
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity() + self.messages.capacity() * std::mem::size_of::<MessageMeta>()
    }

    /// Lets go of everything held (memory is short): the messages walked so far are dropped,
    /// counted, and the rest of the body is not walked.
    pub fn shed(&mut self) {
        self.dropped += self.messages.len() as u64;
        self.messages = Vec::new();
        self.buf = Vec::new();
        self.phase = Phase::Lost;
    }

    /// Called at the end of the body: a message cut short is kept as incomplete.
    pub fn finish(mut self) -> Self {
        if self.seen > 0 && !matches!(self.phase, Phase::Lost) {
            self.current.incomplete = true;
            self.errors += 1;
            self.finish_message();
        }
        self
    }
}
