//! TLS plaintext joined to its connection.
//!
//! A TLS library's probes report plaintext per connection object of the library (`SSL *`),
//! and the first bytes of each piece of ciphertext the library hands to its write BIO. The same
//! ciphertext then leaves the process through a write syscall on a socket, which the socket
//! probes copy: finding those bytes there binds the library's object to the connection. From
//! then on the plaintext is the connection's stream, a connection of its own to the stages
//! after this one (same process, addresses and fd; [`SeenAs::TlsUprobe`]); the ciphertext
//! connection carries no bytes further and ends with it. Binding by bytes works for libraries
//! that write the socket themselves and for memory BIOs alike (netty-tcnative, gRPC's C core,
//! .NET), with no library's struct layout known.
//!
//! Sans-IO: the capture hands events and records over; tests drive it with bytes.

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;

use mqtrace_protocol::Bounded;

use super::{Connection, ConnectionId, Direction, EndCause, Origin, SeenAs, SourceEvent};

/// Bit set in the id of a connection's plaintext stream: the ciphertext connection's id with
/// this bit (kernel ids count up from 1; sockets found in /proc have bit 63).
pub const PLAINTEXT_CONNECTION_ID_BIT: u64 = 1 << 62;

/// A ciphertext prefix shorter than this could match by chance; it is not used.
const MIN_PREFIX: usize = 16;

/// Unbound ciphertext prefixes kept per process: the newest; an older one whose write never
/// came is forgotten.
const PREFIXES_PER_PROCESS: usize = 64;

/// Ciphertext of a connection kept back from the stages after this one while it may still be
/// bound (a server reads the client's hello before it writes anything): at most this much,
/// after which it is handed on (and its connection taken for encrypted and dark).
const MAX_WITHHELD_BYTES: usize = 64 * 1024;

/// Plaintext held, in all, for connection objects not bound yet: bytes, and objects. Binding
/// comes within a read or two; what stays longer belongs to a connection not traced (or whose
/// ciphertext was missed), and the oldest goes first.
const MAX_HELD_BYTES: usize = 4 << 20;
const MAX_HELD_OBJECTS: usize = 4096;

/// A record of a TLS library's probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsRecord {
    /// Plaintext of connection object `ssl`: a `Data` (or the `Gap` of bytes not copied),
    /// whose connection is filled in once bound.
    Plaintext {
        pid: u32,
        ssl: u64,
        event: SourceEvent,
    },
    /// The first bytes of ciphertext the library wrote for `ssl`.
    Ciphertext { pid: u32, ssl: u64, prefix: Bytes },
}

/// A TLS record with its place among the source events read with it: it came just before
/// `events[before]` (or after them all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub before: usize,
    pub record: TlsRecord,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TlsCounters {
    /// Connections whose plaintext was bound to them.
    pub connections_bound: u64,
    /// Plaintext bytes handed on.
    pub plaintext_bytes: u64,
    /// Connection objects whose plaintext was dropped unbound, the oldest beyond the bound on
    /// what is held (their connection was not traced, or its ciphertext was never seen), or
    /// at their process's end.
    pub objects_unbound: u64,
    /// Ciphertext prefixes forgotten before their write was seen.
    pub prefixes_forgotten: u64,
    /// Encrypted connections of processes with TLS probes that were never bound (their
    /// library's version binds differently, or its probes came too late; in a process that
    /// also maps a stripped TLS library, counted as that library's instead): handed on to be
    /// counted as encrypted and not traced.
    pub connections_unbound: u64,
    /// Connections that began TLS (a ClientHello, either way) in processes without probes, by
    /// why: Java's own TLS (JSSE, a Java process with no native TLS library)...
    pub dark_jsse: u64,
    /// ...a TLS library stripped of the symbols probed (beside probed ones too)...
    pub dark_stripped_library: u64,
    /// ...no TLS library the agent reads (rustls, a library of another name or kind).
    pub dark_no_library: u64,
}

/// Why a process's TLS connections cannot be read, as far as its mappings tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DarkReason {
    /// A Java process with no native TLS library: its TLS is JSSE, Java code.
    Jsse,
    /// It maps a TLS library without the symbols probed.
    StrippedLibrary,
}

type ObjectKey = (u32, u64);

struct Prefix {
    ssl: u64,
    bytes: Bytes,
}

/// Binds TLS libraries' plaintext to connections. See the module's documentation.
pub struct TlsBinder {
    /// Open connections as they were opened: the plaintext stream is opened like its
    /// ciphertext connection.
    connections: HashMap<ConnectionId, Connection>,
    /// Processes' prefixes awaiting their write, oldest first.
    prefixes: HashMap<u32, VecDeque<Prefix>>,
    /// Connection objects bound: their ciphertext connection.
    bound: HashMap<ObjectKey, ConnectionId>,
    /// Ciphertext connections bound: their object.
    by_connection: HashMap<ConnectionId, ObjectKey>,
    /// Plaintext of objects not bound yet, in order.
    held: Bounded<ObjectKey, Vec<SourceEvent>>,
    /// Processes with TLS probes: a connection of theirs that begins TLS is kept back until
    /// bound.
    probed: HashSet<u32>,
    /// Processes without probes whose TLS is known to be out of reach, and why.
    dark: HashMap<u32, DarkReason>,
    /// Connections kept back: their events so far, and their bytes.
    withheld: HashMap<ConnectionId, (Vec<SourceEvent>, usize)>,
    /// Objects whose plaintext is no longer followed (the stages after this one let their
    /// connection go): their records are dropped.
    ignored: HashSet<ObjectKey>,
    counters: TlsCounters,
}

impl Default for TlsBinder {
    fn default() -> Self {
        Self {
            connections: HashMap::new(),
            prefixes: HashMap::new(),
            bound: HashMap::new(),
            by_connection: HashMap::new(),
            held: Bounded::new(MAX_HELD_OBJECTS, MAX_HELD_BYTES),
            probed: HashSet::new(),
            dark: HashMap::new(),
            withheld: HashMap::new(),
            ignored: HashSet::new(),
            counters: TlsCounters::default(),
        }
    }
}

/// The plaintext stream of ciphertext connection `id`.
pub fn plaintext_id(id: ConnectionId) -> ConnectionId {
    ConnectionId(id.0 | PLAINTEXT_CONNECTION_ID_BIT)
}

impl TlsBinder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn counters(&self) -> TlsCounters {
        TlsCounters {
            objects_unbound: self.counters.objects_unbound + self.held.held().evicted,
            ..self.counters
        }
    }

    /// Whether `pid` has TLS probes now: its connections that begin TLS wait for their
    /// binding before they reach the stages after this one.
    pub fn set_probed(&mut self, pid: u32, probed: bool) {
        if probed {
            self.probed.insert(pid);
        } else {
            self.probed.remove(&pid);
        }
    }

    /// Why `pid`'s TLS connections cannot be read (None: no reason known, or they can).
    pub fn set_dark_reason(&mut self, pid: u32, reason: Option<DarkReason>) {
        match reason {
            Some(reason) => self.dark.insert(pid, reason),
            None => self.dark.remove(&pid),
        };
    }

    /// A connection of a probed process let go unbound: its process's stripped library's, when
    /// it maps one (Python grpcio beside the system's libssl), else unbound.
    fn count_unbound(&mut self, pid: Option<u32>) {
        match pid.and_then(|pid| self.dark.get(&pid)) {
            Some(DarkReason::StrippedLibrary) => self.counters.dark_stripped_library += 1,
            _ => self.counters.connections_unbound += 1,
        }
    }

    /// A connection of a process without probes that begins TLS: counted by why it stays
    /// dark. Only a first chunk is looked at.
    fn count_dark(&mut self, chunk: &super::Chunk) {
        if chunk.position != 0 || !begins_client_hello(&chunk.bytes) {
            return;
        }
        let Some(pid) = self.connections.get(&chunk.connection).map(|c| c.pid) else {
            return;
        };
        if self.probed.contains(&pid) {
            return;
        }
        match self.dark.get(&pid) {
            Some(DarkReason::Jsse) => self.counters.dark_jsse += 1,
            Some(DarkReason::StrippedLibrary) => self.counters.dark_stripped_library += 1,
            None => self.counters.dark_no_library += 1,
        }
    }

    /// The stages after this one let go of plaintext stream `id`: its object's records are
    /// dropped from now on. Returns its ciphertext connection, which is not followed either,
    /// and the object (pid, `SSL *`), whose plaintext need not be copied any more.
    pub fn stop_following(&mut self, id: ConnectionId) -> Option<(ConnectionId, (u32, u64))> {
        let cipher = ConnectionId(id.0 & !PLAINTEXT_CONNECTION_ID_BIT);
        if cipher == id {
            return None;
        }
        let object = self.by_connection.remove(&cipher)?;
        self.bound.remove(&object);
        self.ignored.insert(object);
        Some((cipher, object))
    }

    /// Rewrites `events[start..]` with the `records` placed among them: plaintext becomes the
    /// events of its connection's plaintext stream, the ciphertext of bound connections goes.
    /// Appends to `newly_bound` the ciphertext connections bound here, whose bytes the capture
    /// need not copy any more.
    pub fn bind(
        &mut self,
        events: &mut Vec<SourceEvent>,
        start: usize,
        records: Vec<Placed>,
        newly_bound: &mut Vec<Connection>,
    ) {
        if records.is_empty()
            && self.by_connection.is_empty()
            && self.prefixes.is_empty()
            && self.probed.is_empty()
            && self.withheld.is_empty()
        {
            self.remember(&events[start..]);
            return;
        }
        let tail: Vec<SourceEvent> = events.drain(start..).collect();
        let mut records = records.into_iter().peekable();
        for (index, event) in tail.into_iter().enumerate() {
            while let Some(placed) = records.next_if(|p| p.before <= start + index) {
                self.record(placed.record, events);
            }
            self.event(event, events, newly_bound);
        }
        for placed in records {
            self.record(placed.record, events);
        }
    }

    /// Notes the connections opened and ended, when nothing else needs doing.
    fn remember(&mut self, events: &[SourceEvent]) {
        for event in events {
            match event {
                SourceEvent::Opened(connection) => {
                    self.connections.insert(connection.id, connection.clone());
                }
                SourceEvent::Closed { connection, .. } => {
                    self.connections.remove(connection);
                }
                SourceEvent::ProcessExited { pid } => self.forget_process(*pid),
                SourceEvent::Data(chunk) => self.count_dark(chunk),
                _ => {}
            }
        }
    }

    fn record(&mut self, record: TlsRecord, out: &mut Vec<SourceEvent>) {
        match record {
            TlsRecord::Ciphertext { pid, ssl, prefix } => {
                if prefix.len() < MIN_PREFIX
                    || self.bound.contains_key(&(pid, ssl))
                    || self.ignored.contains(&(pid, ssl))
                {
                    return;
                }
                let queue = self.prefixes.entry(pid).or_default();
                if queue.len() == PREFIXES_PER_PROCESS {
                    queue.pop_front();
                    self.counters.prefixes_forgotten += 1;
                }
                queue.push_back(Prefix { ssl, bytes: prefix });
            }
            TlsRecord::Plaintext { pid, ssl, event } => match self.bound.get(&(pid, ssl)) {
                Some(&connection) => self.hand_on(plaintext_id(connection), event, out),
                None if self.ignored.contains(&(pid, ssl)) => {}
                None => {
                    let key = (pid, ssl);
                    let bytes = payload_len(&event);
                    match self.held.get_mut(&key) {
                        Some(events) => {
                            events.push(event);
                            let total = events.iter().map(payload_len).sum();
                            self.held.resize(&key, total);
                        }
                        None => {
                            self.held.insert(key, vec![event], bytes);
                        }
                    }
                }
            },
        }
    }

    fn event(
        &mut self,
        event: SourceEvent,
        out: &mut Vec<SourceEvent>,
        newly_bound: &mut Vec<Connection>,
    ) {
        match &event {
            SourceEvent::Opened(connection) => {
                self.connections.insert(connection.id, connection.clone());
            }
            SourceEvent::Data(chunk) if self.by_connection.contains_key(&chunk.connection) => {
                return; // ciphertext of a bound connection
            }
            SourceEvent::Gap { connection, .. } if self.by_connection.contains_key(connection) => {
                return;
            }
            SourceEvent::Data(chunk) => {
                self.count_dark(chunk);
                if chunk.direction == Direction::Egress
                    && let Some(bound) = self.try_bind(chunk.connection, &chunk.bytes, out)
                {
                    newly_bound.push(bound);
                    return;
                }
                if self.withheld.contains_key(&chunk.connection)
                    || (chunk.position == 0
                        && self.connections.get(&chunk.connection).is_some_and(|c| {
                            self.probed.contains(&c.pid)
                                && (begins_tls(&chunk.bytes)
                                    || (c.origin == Origin::Existing
                                        && continues_tls(&chunk.bytes)))
                        }))
                {
                    self.withhold(event, out);
                    return;
                }
            }
            SourceEvent::Gap { connection, .. } if self.withheld.contains_key(connection) => {
                self.withhold(event, out);
                return;
            }
            SourceEvent::Closed {
                connection,
                timestamp_ns,
                cause,
                ..
            } => {
                let pid = self.connections.remove(connection).map(|c| c.pid);
                // Never bound: what was kept back goes on, before its end.
                if let Some((kept, _)) = self.withheld.remove(connection) {
                    self.count_unbound(pid);
                    out.extend(kept);
                }
                if *cause == EndCause::NotFollowed && self.by_connection.contains_key(connection) {
                    // The stages after this one let go of its ciphertext, judged before it was
                    // bound (its first bytes came before its process's probes): only that ends.
                    // The connection is open, its plaintext goes on.
                    out.push(event);
                    return;
                }
                if let Some(object) = self.by_connection.remove(connection) {
                    self.bound.remove(&object);
                    // Its bytes went no further than here: the stages after this one saw
                    // none of them, and its final positions would read as bytes missed.
                    out.push(SourceEvent::Closed {
                        connection: *connection,
                        final_positions: None,
                        timestamp_ns: *timestamp_ns,
                        cause: *cause,
                    });
                    out.push(SourceEvent::Closed {
                        connection: plaintext_id(*connection),
                        final_positions: None,
                        timestamp_ns: *timestamp_ns,
                        cause: *cause,
                    });
                    return;
                }
            }
            SourceEvent::ProcessExited { pid } => {
                // Its connections kept back go on first: they end with it.
                let kept: Vec<ConnectionId> = self
                    .withheld
                    .keys()
                    .filter(|id| self.connections.get(id).is_some_and(|c| c.pid == *pid))
                    .copied()
                    .collect();
                for id in kept {
                    if let Some((events, _)) = self.withheld.remove(&id) {
                        self.count_unbound(Some(*pid));
                        out.extend(events);
                    }
                }
                self.forget_process(*pid);
            }
            _ => {}
        }
        out.push(event);
    }

    /// Binds `connection` to the object whose ciphertext prefix its egress `bytes` carry;
    /// returns the connection bound.
    fn try_bind(
        &mut self,
        connection: ConnectionId,
        bytes: &[u8],
        out: &mut Vec<SourceEvent>,
    ) -> Option<Connection> {
        let opened = self.connections.get(&connection)?;
        let pid = opened.pid;
        let queue = self.prefixes.get_mut(&pid)?;
        let found = queue
            .iter()
            .position(|prefix| contains(bytes, &prefix.bytes))?;
        let ssl = queue[found].ssl;
        // Its ciphertext kept back goes no further.
        self.withheld.remove(&connection);
        // That object's other prefixes are for this connection too.
        queue.retain(|prefix| prefix.ssl != ssl);
        if queue.is_empty() {
            self.prefixes.remove(&pid);
        }
        let plaintext = Connection {
            id: plaintext_id(connection),
            seen_as: SeenAs::TlsUprobe,
            ..opened.clone()
        };
        self.bound.insert((pid, ssl), connection);
        self.by_connection.insert(connection, (pid, ssl));
        self.counters.connections_bound += 1;
        out.push(SourceEvent::Opened(plaintext));
        for event in self.held.remove(&(pid, ssl)).unwrap_or_default() {
            self.hand_on(plaintext_id(connection), event, out);
        }
        self.connections.get(&connection).cloned()
    }

    fn hand_on(&mut self, id: ConnectionId, mut event: SourceEvent, out: &mut Vec<SourceEvent>) {
        match &mut event {
            SourceEvent::Data(chunk) => {
                chunk.connection = id;
                self.counters.plaintext_bytes += chunk.bytes.len() as u64;
            }
            SourceEvent::Gap { connection, .. } => *connection = id,
            _ => return,
        }
        out.push(event);
    }

    /// Keeps a connection's event back until the connection is bound; beyond the bound, hands
    /// on all that was kept.
    fn withhold(&mut self, event: SourceEvent, out: &mut Vec<SourceEvent>) {
        let Some(connection) = event.connection() else {
            return;
        };
        let bytes = payload_len(&event);
        let (kept, kept_bytes) = self.withheld.entry(connection).or_default();
        kept.push(event);
        *kept_bytes += bytes;
        if *kept_bytes > MAX_WITHHELD_BYTES
            && let Some((kept, _)) = self.withheld.remove(&connection)
        {
            self.count_unbound(self.connections.get(&connection).map(|c| c.pid));
            out.extend(kept);
        }
    }

    /// A process ended: its objects, prefixes and held plaintext go (the stages after this
    /// one end its connections, plaintext streams included, on the same event).
    fn forget_process(&mut self, pid: u32) {
        self.prefixes.remove(&pid);
        self.probed.remove(&pid);
        self.dark.remove(&pid);
        self.connections.retain(|_, c| c.pid != pid);
        self.bound.retain(|&(p, _), _| p != pid);
        self.ignored.retain(|&(p, _)| p != pid);
        self.by_connection.retain(|_, &mut (p, _)| p != pid);
        let held: Vec<ObjectKey> = self
            .held
            .iter()
            .map(|(key, _)| *key)
            .filter(|&(p, _)| p == pid)
            .collect();
        for key in held {
            self.held.remove(&key);
            self.counters.objects_unbound += 1;
        }
    }
}

fn payload_len(event: &SourceEvent) -> usize {
    match event {
        SourceEvent::Data(chunk) => chunk.bytes.len(),
        _ => 0,
    }
}

/// A TLS handshake record (a client's or a server's hello): content type 22, version 3.x.
fn begins_tls(bytes: &[u8]) -> bool {
    bytes.len() >= 3 && bytes[0] == 0x16 && bytes[1] == 0x03
}

/// Any TLS record (change cipher spec, alert, handshake, application data; version 3.x): how
/// the bytes of a connection open before the agent started go on, when it is encrypted.
fn continues_tls(bytes: &[u8]) -> bool {
    bytes.len() >= 5 && (0x14..=0x17).contains(&bytes[0]) && bytes[1] == 0x03 && bytes[2] <= 0x04
}

/// A handshake record holding a ClientHello (handshake type 1): the start of a TLS connection
/// seen from either end, once.
fn begins_client_hello(bytes: &[u8]) -> bool {
    begins_tls(bytes) && bytes.get(5) == Some(&1)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[cfg(test)]
mod tests;
