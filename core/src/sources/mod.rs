//! Where bytes come from: the kernel probes of a live host (in the agent), or a packet capture
//! file ([`pcap`]). Both produce the same [`SourceEvent`]s, so everything after this stage
//! cannot tell them apart.

pub mod pcap;
pub mod tls;

use std::net::SocketAddr;

use bytes::Bytes;
pub use mqtrace_common::Direction;

/// Identity of one TCP connection as seen from one process: kernel-assigned for sockets seen at
/// connect/accept, agent-assigned for sockets found already open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ConnectionId(pub u64);

/// How a connection came to be observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The traced process connected.
    Connect,
    /// The traced process accepted it.
    Accept,
    /// It was already open when tracing began: its streams start mid-way.
    Existing,
}

/// How a connection's bytes were seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub enum SeenAs {
    /// As they crossed the socket, unencrypted.
    #[default]
    #[serde(rename = "plain")]
    Plain,
    /// Encrypted on the socket; the plaintext from probes on its TLS library.
    #[serde(rename = "tls-uprobe")]
    TlsUprobe,
}

impl SeenAs {
    pub const fn name(self) -> &'static str {
        match self {
            SeenAs::Plain => "plain",
            SeenAs::TlsUprobe => "tls-uprobe",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Connection {
    pub id: ConnectionId,
    /// The traced process (0 when unknown, as in a capture file).
    pub pid: u32,
    pub fd: i32,
    pub origin: Origin,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub timestamp_ns: u64,
    pub seen_as: SeenAs,
}

/// Bytes that moved on a connection, placed at their stream position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub connection: ConnectionId,
    pub direction: Direction,
    /// Offset of `bytes[0]` in the direction's stream, counted from when tracing began.
    pub position: u64,
    pub bytes: Bytes,
    /// CLOCK_MONOTONIC nanoseconds for the kernel, capture time for pcap.
    pub timestamp_ns: u64,
}

/// Why a connection's events end: what a request still waiting on it can be said to have met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndCause {
    /// The connection closed (close(2), its process exited, FIN or RST in a capture).
    Closed,
    /// Its process was deselected (`mqtrace disable`): the agent stopped looking.
    Deselected,
    /// The agent stopped copying it (not RocketMQ, or the broker's side of it).
    NotFollowed,
    /// The capture file ended with the connection still open.
    CaptureEnded,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceEvent {
    Opened(Connection),
    Data(Chunk),
    /// `length` bytes at `position` moved but were not captured.
    Gap {
        connection: ConnectionId,
        direction: Direction,
        position: u64,
        length: u64,
    },
    /// The connection ended, or the agent stopped following it (`cause` says which);
    /// `final_positions` (egress, ingress) tell of bytes never seen at its end.
    Closed {
        connection: ConnectionId,
        final_positions: Option<[u64; 2]>,
        timestamp_ns: u64,
        cause: EndCause,
    },
    /// A traced process exec'd a program: who it is (its resource) can be read now, while it
    /// surely runs (a short-lived one may be gone by the time its first span is made).
    ProcessStarted {
        pid: u32,
    },
    ProcessExited {
        pid: u32,
    },
    /// The capture had lost `total` records (its ring full) by the time of the events that
    /// follow: a request before it may have lost its response, one after it not.
    RecordsLost {
        total: u64,
    },
}

impl SourceEvent {
    /// The connection the event is about (none for a process's exit).
    pub fn connection(&self) -> Option<ConnectionId> {
        match self {
            Self::Opened(connection) => Some(connection.id),
            Self::Data(chunk) => Some(chunk.connection),
            Self::Gap { connection, .. } | Self::Closed { connection, .. } => Some(*connection),
            Self::ProcessStarted { .. } | Self::ProcessExited { .. } | Self::RecordsLost { .. } => {
                None
            }
        }
    }
}
