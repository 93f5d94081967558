//! The seam in front of the live capture: what the daemon and its control logic ask of it.
//! [`KernelCapture`](super::kernel::KernelCapture) answers, from the eBPF maps and ring or, in
//! tests, from tables in memory (`kernel::tables::memory`).

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

    /// Holds processes at exec again (where it did at its start), or no more (a newer agent,
    /// which traces them, holds them now).
    fn hold_at_exec(&mut self, on: bool) -> anyhow::Result<()>;

    /// Connected sockets let go of at once because they are not TCP.
    fn non_tcp_sockets(&self) -> u64;

    /// Records that could not be decoded.
    fn malformed_records(&self) -> u64;

    /// TLS probes held now, per process.
    fn tls_probes_per_process(&self) -> BTreeMap<u32, usize>;

    /// The TLS capture's counters (probes now, libraries, binding).
    fn tls_counters(&self) -> crate::counters::TlsCounterTree;
}
