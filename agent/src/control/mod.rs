//! The control plane: `mqtrace enable|disable|list|status|trace` talk to the running daemon over
//! a Unix socket, one JSON request line and one JSON response line per connection. The socket
//! file's owner and mode decide who may use it: root, and the group of `--control-group`.

pub mod client;
pub mod rules;
pub mod server;

use mqtrace_common::Selection;
use serde::{Deserialize, Serialize};

use crate::journeys::{Journey, Query};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/mqtrace/mqtrace.sock";

/// What a rule or a command applies to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// One process.
    Pid(u32),
    /// Every process with this command name (the kernel's `comm`, at most 15 bytes), now and
    /// whenever one starts.
    Comm(String),
    /// Every process in this cgroup (v2) or below it, now and whenever one starts.
    Cgroup(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Pid(pid) => write!(f, "pid {pid}"),
            Target::Comm(comm) => write!(f, "comm {comm}"),
            Target::Cgroup(path) => write!(f, "cgroup {path}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Enable {
        target: Target,
    },
    Disable {
        target: Target,
    },
    List,
    Status,
    Trace {
        query: Query,
    },
    /// A newer agent (`successor_pid`) traces requests made from `from_ns` (CLOCK_MONOTONIC)
    /// on; the running one traces those made before, to their end. `protocol`: what both must
    /// mean by that ([`HANDOVER_PROTOCOL`]).
    HandOver {
        protocol: u32,
        successor_pid: u32,
        from_ns: u64,
    },
}

/// The meaning of a hand-over both agents must share; raised when it changes.
pub const HANDOVER_PROTOCOL: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// An enable or disable took effect; `processes` are those it changed now.
    Applied {
        target: Target,
        enabled: bool,
        processes: Vec<u32>,
        /// Anything the user should know, e.g. a command name cut to 15 bytes.
        note: Option<String>,
    },
    Listing(Listing),
    Status(Status),
    Journeys {
        journeys: Vec<Journey>,
    },
    /// The running agent now traces only requests made before `from_ns` (the moment asked
    /// for, or the later one at which it took the request in); `known`: the processes it saw
    /// serving and forwarding RocketMQ connections.
    HandedOver {
        pid: u32,
        version: String,
        from_ns: u64,
        known: crate::pipeline::ServingProcesses,
    },
    Error {
        message: String,
    },
}

/// The rules in force and the processes with a selection of their own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Listing {
    /// "all" (every process unless excluded) or "selected" (only those selected).
    pub mode: String,
    pub rules: Vec<Rule>,
    pub processes: Vec<ListedProcess>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub target: Target,
    pub enabled: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListedProcess {
    pub pid: u32,
    pub comm: String,
    pub selection: Selection,
    /// Sockets of it the kernel copies now.
    pub connections: usize,
    /// Probes on its TLS libraries now.
    #[serde(default)]
    pub tls_probes: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub mode: String,
    /// Where `/metrics` and `/healthz` are served (the port bound, when 0 was asked for).
    #[serde(default)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Every counter, as on `/metrics` (there flattened to `mqtrace_<path>`).
    pub counters: serde_json::Value,
}

/// Requests and responses are one line each; a longer request is refused unread.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
