//! The seam in front of the live capture: what the daemon and its control logic ask of it.
//! [`KernelCapture`](super::kernel::KernelCapture) answers from the eBPF maps and ring; the
//! fake (tests only) from memory, so that the daemon, its rules and its control socket are
//! tested without root or eBPF.

use std::{collections::BTreeMap, future::Future};

use mqtrace_common::{COMM_LEN, Counter, Selection};

use super::{Connection, SourceEvent};

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters(pub BTreeMap<&'static str, u64>);

impl KernelCounters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0.get(counter.name()).copied().unwrap_or(0)
    }
}

pub trait Capture {
    /// Every process is traced unless excluded (or only the selected ones).
    fn trace_all(&self) -> bool;

    /// Waits for captured events and appends them to `out`.
    fn next_events<'a>(
        &'a mut self,
        out: &'a mut Vec<SourceEvent>,
    ) -> impl Future<Output = anyhow::Result<()>> + 'a;

    /// Appends the events captured so far, without waiting (at shutdown: what is in the ring
    /// is still traced).
    fn drain_now(&mut self, out: &mut Vec<SourceEvent>);

    /// Traces `pid` from now on for the reason given, or stops (`Excluded`).
    fn set_selection(&mut self, pid: u32, selection: Selection) -> anyhow::Result<()>;

    /// Stops tracing `pid` (in trace-all mode: until it is selected again).
    fn deselect(&mut self, pid: u32) -> anyhow::Result<()>;

    /// Whether `pid`'s traffic is copied now.
    fn is_traced(&self, pid: u32) -> anyhow::Result<bool>;

    /// Every process with its own entry (traced or excluded, and why).
    fn selections(&self) -> anyhow::Result<BTreeMap<u32, Selection>>;

    /// Connections followed now, per process.
    fn sockets_per_process(&self) -> anyhow::Result<BTreeMap<u32, usize>>;

    /// Sets (or with `None` removes) the selection of processes that exec `comm`.
    fn set_comm_rule(
        &mut self,
        comm: [u8; COMM_LEN],
        selection: Option<Selection>,
    ) -> anyhow::Result<()>;

    /// Sets (or with `None` removes) the selection of processes that exec in cgroup `id` or
    /// below it.
    fn set_cgroup_rule(&mut self, id: u64, selection: Option<Selection>) -> anyhow::Result<()>;

    /// Stops copying one connection and ends it for user space.
    fn stop_copying(&mut self, connection: &Connection) -> anyhow::Result<()>;

    /// Forgets followed connections that are gone unseen; returns how many.
    fn sweep_stale_sockets(&mut self) -> anyhow::Result<usize>;

    /// Counters of the capture itself (what it lost, what it could not hold).
    fn counters(&self) -> anyhow::Result<KernelCounters>;

    /// Records dropped so far because the ring was full.
    fn records_lost(&self) -> anyhow::Result<u64> {
        Ok(self.counters()?.get(Counter::RecordsLost))
    }

    /// Connected sockets let go of at once because they are not TCP.
    fn non_tcp_sockets(&self) -> u64;

    /// Records that could not be decoded.
    fn malformed_records(&self) -> u64;
}

#[cfg(test)]
pub mod fake {
    //! A capture in memory: the test feeds its events through a [`FakeHandle`] and reads
    //! back, from the same handle, what was asked of the capture.

    use std::{
        collections::{BTreeMap, BTreeSet},
        sync::{Arc, Mutex},
    };

    use mqtrace_common::{COMM_LEN, Counter, Selection};
    use tokio::sync::mpsc;

    use super::Capture;
    use crate::sources::{
        Connection, ConnectionId, EndCause, SourceEvent, capture::KernelCounters,
    };

    /// What the kernel's maps would hold.
    #[derive(Default)]
    pub struct FakeState {
        pub selected: BTreeMap<u32, Selection>,
        pub comm_rules: BTreeMap<[u8; COMM_LEN], Selection>,
        pub cgroup_rules: BTreeMap<u64, Selection>,
        /// Followed connections, by (pid, connection).
        pub sockets: BTreeSet<(u32, ConnectionId)>,
        /// Connections the daemon stopped copying.
        pub stopped: Vec<ConnectionId>,
        /// The next wait for events blocks the daemon's thread this long: a stuck pipeline.
        pub stall: Option<std::time::Duration>,
        /// Events the capture makes itself (the ends of connections let go of).
        pending: Vec<SourceEvent>,
    }

    pub struct FakeCapture {
        trace_all: bool,
        state: Arc<Mutex<FakeState>>,
        events: mpsc::UnboundedReceiver<SourceEvent>,
    }

    /// The test's side of a fake capture.
    #[derive(Clone)]
    pub struct FakeHandle {
        pub events: mpsc::UnboundedSender<SourceEvent>,
        pub state: Arc<Mutex<FakeState>>,
    }

    impl FakeCapture {
        pub fn new(trace_all: bool) -> (Self, FakeHandle) {
            let (sender, events) = mpsc::unbounded_channel();
            let state = Arc::new(Mutex::new(FakeState::default()));
            let handle = FakeHandle {
                events: sender,
                state: state.clone(),
            };
            let fake = Self {
                trace_all,
                state,
                events,
            };
            (fake, handle)
        }

        fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
            self.state.lock().expect("fake capture state")
        }

        /// Forgets connections and tells the pipeline they ended, as the kernel capture does.
        fn end(&self, which: impl Fn(u32, ConnectionId) -> bool, cause: EndCause) {
            let mut state = self.state();
            let ended: Vec<ConnectionId> = state
                .sockets
                .iter()
                .filter(|&&(pid, id)| which(pid, id))
                .map(|&(_, id)| id)
                .collect();
            state.sockets.retain(|&(pid, id)| !which(pid, id));
            state
                .pending
                .extend(ended.into_iter().map(|connection| SourceEvent::Closed {
                    connection,
                    final_positions: None,
                    timestamp_ns: 0,
                    cause,
                }));
        }
    }

    impl Capture for FakeCapture {
        fn trace_all(&self) -> bool {
            self.trace_all
        }

        async fn next_events(&mut self, out: &mut Vec<SourceEvent>) -> anyhow::Result<()> {
            let stall = self.state().stall.take();
            if let Some(stall) = stall {
                std::thread::sleep(stall);
            }
            let pending = std::mem::take(&mut self.state().pending);
            if !pending.is_empty() {
                out.extend(pending);
                return Ok(());
            }
            // Once the test has sent all it will, wait like an idle host.
            let Some(event) = self.events.recv().await else {
                return std::future::pending().await;
            };
            if let SourceEvent::Opened(connection) = &event {
                self.state().sockets.insert((connection.pid, connection.id));
            }
            out.push(event);
            Ok(())
        }

        fn drain_now(&mut self, out: &mut Vec<SourceEvent>) {
            out.append(&mut self.state().pending);
            while let Ok(event) = self.events.try_recv() {
                out.push(event);
            }
        }

        fn set_selection(&mut self, pid: u32, selection: Selection) -> anyhow::Result<()> {
            self.state().selected.insert(pid, selection);
            Ok(())
        }

        fn deselect(&mut self, pid: u32) -> anyhow::Result<()> {
            if self.trace_all {
                self.state().selected.insert(pid, Selection::Excluded);
            } else {
                self.state().selected.remove(&pid);
            }
            self.end(|owner, _| owner == pid, EndCause::Deselected);
            Ok(())
        }

        fn is_traced(&self, pid: u32) -> anyhow::Result<bool> {
            Ok(self
                .state()
                .selected
                .get(&pid)
                .map_or(self.trace_all, |&s| s != Selection::Excluded))
        }

        fn selections(&self) -> anyhow::Result<BTreeMap<u32, Selection>> {
            Ok(self.state().selected.clone())
        }

        fn sockets_per_process(&self) -> anyhow::Result<BTreeMap<u32, usize>> {
            let mut counts = BTreeMap::new();
            for &(pid, _) in &self.state().sockets {
                *counts.entry(pid).or_insert(0) += 1;
            }
            Ok(counts)
        }

        fn set_comm_rule(
            &mut self,
            comm: [u8; COMM_LEN],
            selection: Option<Selection>,
        ) -> anyhow::Result<()> {
            let rules = &mut self.state().comm_rules;
            match selection {
                Some(selection) => rules.insert(comm, selection),
                None => rules.remove(&comm),
            };
            Ok(())
        }

        fn set_cgroup_rule(&mut self, id: u64, selection: Option<Selection>) -> anyhow::Result<()> {
            let rules = &mut self.state().cgroup_rules;
            match selection {
                Some(selection) => rules.insert(id, selection),
                None => rules.remove(&id),
            };
            Ok(())
        }

        fn stop_copying(&mut self, connection: &Connection) -> anyhow::Result<()> {
            self.state().stopped.push(connection.id);
            self.end(|_, id| id == connection.id, EndCause::NotFollowed);
            Ok(())
        }

        fn sweep_stale_sockets(&mut self) -> anyhow::Result<usize> {
            Ok(0)
        }

        fn counters(&self) -> anyhow::Result<KernelCounters> {
            Ok(KernelCounters(
                Counter::ALL.iter().map(|c| (c.name(), 0)).collect(),
            ))
        }

        fn non_tcp_sockets(&self) -> u64 {
            0
        }

        fn malformed_records(&self) -> u64 {
            0
        }
    }
}
