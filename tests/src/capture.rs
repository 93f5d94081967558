//! Running the real kernel capture in a test and rebuilding what it saw.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context;
use mqtrace::{
    sources::{ConnectionId, Direction, SourceEvent, capture::Capture, kernel::KernelCapture},
    streams::{StreamEvent, Streams},
};

/// One direction of one connection as the agent rebuilt it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    pub bytes: Vec<u8>,
    /// (position, length) of every gap.
    pub gaps: Vec<(u64, u64)>,
}

/// Everything a capture produced, per connection: [egress, ingress].
#[derive(Debug, Default)]
pub struct Captured {
    pub connections: BTreeMap<ConnectionId, [Rebuilt; 2]>,
    pub pids: BTreeMap<ConnectionId, u32>,
    pub source_events: usize,
}

impl Captured {
    fn apply(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::Opened(c) => {
                self.connections.entry(c.id).or_default();
                self.pids.insert(c.id, c.pid);
            }
            StreamEvent::Data {
                connection,
                direction,
                bytes,
                ..
            } => {
                let entry = self.connections.entry(*connection).or_default();
                entry[*direction as usize].bytes.extend_from_slice(bytes);
            }
            StreamEvent::Gap {
                connection,
                direction,
                position,
                length,
            } => {
                let entry = self.connections.entry(*connection).or_default();
                entry[*direction as usize].gaps.push((*position, *length));
            }
            StreamEvent::Closed { .. } => {}
        }
    }

    /// (egress, ingress) of each connection that moved any byte, sorted, for comparing with
    /// what the helper program exchanged.
    pub fn exchanges(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut all: Vec<_> = self
            .connections
            .values()
            .filter(|[e, i]| !e.bytes.is_empty() || !i.bytes.is_empty())
            .map(|[e, i]| (e.bytes.clone(), i.bytes.clone()))
            .collect();
        all.sort();
        all
    }

    pub fn direction(&self, egress_prefix: &[u8], direction: Direction) -> Option<&Rebuilt> {
        self.connections
            .values()
            .find(|c| {
                c[Direction::Egress as usize]
                    .bytes
                    .starts_with(egress_prefix)
                    && !egress_prefix.is_empty()
            })
            .map(|c| &c[direction as usize])
    }
}

/// Feeds capture events through the streams stage until `pid` has exited (or `timeout`).
pub async fn collect_until_exit(
    capture: &mut KernelCapture,
    pid: u32,
    timeout: Duration,
) -> anyhow::Result<Captured> {
    let mut streams = Streams::new();
    let mut captured = Captured::default();
    let mut events = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        events.clear();
        let waited = tokio::time::timeout_at(deadline, capture.next_events(&mut events)).await;
        match waited {
            Ok(result) => result.context("reading the capture")?,
            Err(_) => anyhow::bail!("pid {pid} did not exit within {timeout:?}"),
        }
        let mut exited = false;
        for event in events.drain(..) {
            captured.source_events += 1;
            exited |= matches!(event, SourceEvent::ProcessExited { pid: p } if p == pid);
            out.clear();
            streams.push(event, &mut out);
            out.iter().for_each(|e| captured.apply(e));
        }
        if exited {
            return Ok(captured);
        }
    }
}

/// Whatever the capture has produced so far, without waiting.
pub fn drain(capture: &mut KernelCapture) -> Vec<SourceEvent> {
    let mut events = Vec::new();
    capture.drain_now(&mut events);
    events
}
