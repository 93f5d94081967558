//! Hand-over between agents. A newer agent started while another runs (a rolling update with
//! surge, a manual upgrade) asks it, over its control socket, to make the events of requests
//! made before a moment, and makes those made from then on itself. Both capture the traffic
//! in between, so each request is seen whole by the agent that owns it: none is lost, none
//! traced twice. The old agent then waits, at its stop, for the requests it owns.

use std::{path::Path, time::Duration};

use crate::{
    control::{HANDOVER_PROTOCOL, Request, Response, client, server},
    pipeline::ServingProcesses,
    sources::kernel::monotonic_ns,
};

/// How long an agent that handed over waits at its stop for the requests it owns: past the
/// longest a broker holds a long poll (15 s for a pull, 20-30 s for 5.x receives).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(35);

/// How long the running agent may take to answer: it answers between two batches of events
/// (and refuses a request older than this: its asker has given up on it).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the agent running when this one started agreed to.
#[derive(Debug)]
pub enum Predecessor {
    /// None was running.
    None,
    /// It makes the events of requests made before `from_ns` (CLOCK_MONOTONIC).
    HandedOver {
        pid: u32,
        version: String,
        from_ns: u64,
        known: ServingProcesses,
    },
    /// It could not hand over (another protocol, or no answer): both trace everything.
    Refused(String),
}

/// Asks the agent answering on `socket`, if one does, to hand over to this one from now on.
/// The capture must run already: what it sees from now on is this agent's to trace.
pub fn ask_running(socket: &Path) -> Predecessor {
    if !server::answers(socket) {
        return Predecessor::None;
    }
    let from_ns = monotonic_ns();
    let request = Request::HandOver {
        protocol: HANDOVER_PROTOCOL,
        successor_pid: std::process::id(),
        from_ns,
    };
    match client::send_within(socket, &request, ANSWER_TIMEOUT) {
        Ok(Response::HandedOver {
            pid,
            version,
            from_ns: agreed,
            known,
        }) => Predecessor::HandedOver {
            pid,
            version,
            from_ns: agreed.max(from_ns),
            known,
        },
        Ok(other) => Predecessor::Refused(format!("it answered {other:?}")),
        Err(error) => Predecessor::Refused(format!("{error:#}")),
    }
}
