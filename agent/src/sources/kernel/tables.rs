//! The seams under the live capture: the kernel's tables (the eBPF maps and the ring buffer)
//! and the host (`/proc`, the clock). The capture's policy (`KernelCapture`: which processes
//! and sockets are followed, and when connections end) runs over these two traits; the real
//! implementations are [`EbpfTables`] and [`ProcHost`], and tests run the same policy, without
//! root, over [`memory::MemoryTables`] and [`memory::FakeHost`].

use std::{collections::BTreeMap, future::Future};

use anyhow::Context;
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};
use mqtrace_common::{
    COMM_LEN, COUNTER_SLOTS, Config, Counter, MAX_RULES, SocketKey, SocketState,
    TLS_STREAM_IGNORED, TlsKey, TlsStream, maps,
};
use tokio::io::unix::AsyncFd;

use super::{
    POLL_INTERVAL, procfs,
    tls::{MappedFile, TlsFunction, TlsLibrary},
};

/// The kernel programs' tables, as the capture's policy reads and changes them.
pub trait KernelTables {
    /// The selection entry of `pid` (a `Selection` as its byte), if it has one.
    fn selection(&self, pid: u32) -> anyhow::Result<Option<u8>>;
    fn set_selection(&mut self, pid: u32, value: u8) -> anyhow::Result<()>;
    /// Removes `pid`'s selection entry (a no-op when it has none).
    fn remove_selection(&mut self, pid: u32);
    fn selections(&self) -> anyhow::Result<Vec<(u32, u8)>>;
    /// Every tracked socket.
    fn sockets(&self) -> anyhow::Result<Vec<(SocketKey, SocketState)>>;
    fn socket(&self, key: &SocketKey) -> Option<SocketState>;
    /// Adds a socket unless its key has one already or the table is full; whether it did.
    fn add_socket(&mut self, key: SocketKey, state: SocketState) -> bool;
    fn remove_socket(&mut self, key: &SocketKey);
    /// Sets a tracked socket's flags (`SOCKET_PAYLOAD_IGNORED`); a no-op when it is not
    /// tracked.
    fn set_socket_flags(&mut self, key: &SocketKey, flags: u64);
    /// Stops the copying of a TLS connection object's plaintext (its connection was let go).
    fn ignore_tls_object(&mut self, key: TlsKey);
    /// A probe attached to a TLS library for one process; detached by `detach_tls`.
    type TlsLink;
    /// Attaches the TLS probes at `library`'s functions, firing for `pid` only, or (None) for
    /// every process that maps the file, now or later.
    fn attach_tls(
        &mut self,
        pid: Option<u32>,
        library: &TlsLibrary,
    ) -> anyhow::Result<Vec<Self::TlsLink>>;
    fn detach_tls(&mut self, links: Vec<Self::TlsLink>);
    /// Sets (or with `None` removes) the selection byte of a command-name rule.
    fn set_comm_rule(&mut self, comm: [u8; COMM_LEN], value: Option<u8>) -> anyhow::Result<()>;
    /// Sets (or with `None` removes) the selection byte of a cgroup rule.
    fn set_cgroup_rule(&mut self, id: u64, value: Option<u8>) -> anyhow::Result<()>;
    /// The kernel's counters, summed over CPUs, by name.
    fn counters(&self) -> anyhow::Result<BTreeMap<&'static str, u64>>;
    /// Whether the kernel holds processes at exec until probed (`Config::hold_at_exec`): on
    /// once the capture can continue them, off at shutdown.
    fn set_holding(&mut self, on: bool) -> anyhow::Result<()>;
    /// Hands at most `max` of the records waiting in the ring to `each`; returns how many.
    fn drain(&mut self, max: usize, each: &mut dyn FnMut(&[u8])) -> usize;
    /// Returns once records may be waiting: at once when `more` (the last drain stopped at
    /// its bound), else when the ring signals or after [`POLL_INTERVAL`].
    fn wait(&mut self, more: bool) -> impl Future<Output = anyhow::Result<()>>;
}

/// What the capture asks of the host about its processes.
pub trait Host {
    fn own_pid(&self) -> u32;
    fn process_exists(&self, pid: u32) -> bool;
    fn all_pids(&self) -> Vec<u32>;
    /// The established TCP sockets `pid` has open now.
    fn established_sockets(&self, pid: u32) -> anyhow::Result<Vec<procfs::OpenSocket>>;
    /// Whether `pid`'s `fd` is a stream (TCP) socket; None when that cannot be told.
    fn is_stream_socket(&self, pid: u32, fd: i32) -> Option<bool>;
    /// Whether `pid`'s `fd` still holds a socket.
    fn holds_socket(&self, pid: u32, fd: i32) -> bool;
    /// CLOCK_MONOTONIC, the clock of the kernel's records.
    fn now_ns(&self) -> u64;
    /// The executable files `pid` maps now.
    fn mapped_files(&self, pid: u32) -> Vec<MappedFile>;
    /// The TLS functions `file` defines, with their file offsets.
    fn tls_functions(&self, file: &MappedFile) -> anyhow::Result<Vec<(TlsFunction, u64)>>;
    /// Continues `pid`, which the kernel stopped at exec until probed.
    fn resume(&self, pid: u32) -> std::io::Result<()>;
}

/// The loaded programs' maps and ring buffer.
pub struct EbpfTables {
    pub(super) ebpf: Ebpf,
    pub(super) records: AsyncFd<RingBuf<MapData>>,
}

impl EbpfTables {
    fn map<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> anyhow::Result<HashMap<&MapData, K, V>> {
        Ok(HashMap::try_from(
            self.ebpf
                .map(name)
                .with_context(|| format!("{name} map missing"))?,
        )?)
    }

    fn map_mut<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
    ) -> anyhow::Result<HashMap<&mut MapData, K, V>> {
        Ok(HashMap::try_from(
            self.ebpf
                .map_mut(name)
                .with_context(|| format!("{name} map missing"))?,
        )?)
    }

    fn set_rule<K: aya::Pod>(
        &mut self,
        map: &str,
        key: K,
        value: Option<u8>,
    ) -> anyhow::Result<()> {
        let mut rules = self.map_mut::<K, u8>(map)?;
        match value {
            Some(value) => rules
                .insert(key, value, 0)
                .with_context(|| format!("adding a rule to {map} (at most {MAX_RULES})"))?,
            None => {
                let _ = rules.remove(&key);
            }
        }
        Ok(())
    }
}

impl KernelTables for EbpfTables {
    fn selection(&self, pid: u32) -> anyhow::Result<Option<u8>> {
        Ok(self
            .map::<u32, u8>(maps::SELECTED_PROCESSES)?
            .get(&pid, 0)
            .ok())
    }

    fn set_selection(&mut self, pid: u32, value: u8) -> anyhow::Result<()> {
        self.map_mut::<u32, u8>(maps::SELECTED_PROCESSES)?
            .insert(pid, value, 0)
            .with_context(|| format!("selecting pid {pid}"))
    }

    fn remove_selection(&mut self, pid: u32) {
        if let Ok(mut selected) = self.map_mut::<u32, u8>(maps::SELECTED_PROCESSES) {
            let _ = selected.remove(&pid);
        }
    }

    fn selections(&self) -> anyhow::Result<Vec<(u32, u8)>> {
        Ok(self
            .map::<u32, u8>(maps::SELECTED_PROCESSES)?
            .iter()
            .filter_map(Result::ok)
            .collect())
    }

    fn sockets(&self) -> anyhow::Result<Vec<(SocketKey, SocketState)>> {
        Ok(self
            .map::<SocketKey, SocketState>(maps::SOCKETS)?
            .iter()
            .filter_map(Result::ok)
            .collect())
    }

    fn socket(&self, key: &SocketKey) -> Option<SocketState> {
        self.map::<SocketKey, SocketState>(maps::SOCKETS)
            .ok()?
            .get(key, 0)
            .ok()
    }

    fn add_socket(&mut self, key: SocketKey, state: SocketState) -> bool {
        const BPF_NOEXIST: u64 = 1;
        self.map_mut::<SocketKey, SocketState>(maps::SOCKETS)
            .is_ok_and(|mut sockets| sockets.insert(key, state, BPF_NOEXIST).is_ok())
    }

    fn remove_socket(&mut self, key: &SocketKey) {
        if let Ok(mut sockets) = self.map_mut::<SocketKey, SocketState>(maps::SOCKETS) {
            let _ = sockets.remove(key);
        }
    }

    fn set_socket_flags(&mut self, key: &SocketKey, flags: u64) {
        const BPF_EXIST: u64 = 2;
        if let Ok(mut sockets) = self.map_mut::<SocketKey, SocketState>(maps::SOCKETS)
            && let Ok(state) = sockets.get(key, 0)
        {
            // The positions written back may lag the kernel's by a syscall in flight: the
            // socket's payload is not followed from here on, only its close.
            let _ = sockets.insert(key, SocketState { flags, ..state }, BPF_EXIST);
        }
    }

    fn ignore_tls_object(&mut self, key: TlsKey) {
        if let Ok(mut streams) = self.map_mut::<TlsKey, TlsStream>(maps::TLS_STREAMS) {
            let positions = streams.get(&key, 0).map_or([0, 0], |s| s.positions);
            let ignored = TlsStream {
                positions,
                flags: TLS_STREAM_IGNORED,
            };
            let _ = streams.insert(key, ignored, 0);
        }
    }

    type TlsLink = (&'static str, UProbeLinkId);

    fn attach_tls(
        &mut self,
        pid: Option<u32>,
        library: &TlsLibrary,
    ) -> anyhow::Result<Vec<Self::TlsLink>> {
        let scope = match pid.and_then(std::num::NonZeroU32::new) {
            Some(pid) => UProbeScope::OneProcess(pid),
            None => UProbeScope::AllProcesses,
        };
        let mut links = Vec::new();
        for &(function, offset) in &library.functions {
            for &(program, _) in function.programs() {
                let probe: &mut UProbe = self
                    .ebpf
                    .program_mut(program)
                    .with_context(|| format!("program {program} missing from the eBPF object"))?
                    .try_into()?;
                if probe.fd().is_err() {
                    probe.load().map_err(|e| super::rejected(program, &e))?;
                }
                let attached = probe
                    .attach(
                        UProbeAttachLocation::AbsoluteOffset(offset),
                        &library.file.path,
                        scope,
                    )
                    .with_context(|| {
                        format!(
                            "attaching {program} at {} of {} for {}",
                            function.symbol(),
                            library.file.name,
                            pid.map_or("every process".into(), |pid| format!("pid {pid}"))
                        )
                    });
                match attached {
                    Ok(link) => links.push((program, link)),
                    Err(error) => {
                        self.detach_tls(links);
                        return Err(error);
                    }
                }
            }
        }
        Ok(links)
    }

    fn detach_tls(&mut self, links: Vec<Self::TlsLink>) {
        for (program, link) in links {
            if let Some(probe) = self.ebpf.program_mut(program)
                && let Ok(probe) = <&mut UProbe>::try_from(probe)
            {
                let _ = probe.detach(link);
            }
        }
    }

    fn set_comm_rule(&mut self, comm: [u8; COMM_LEN], value: Option<u8>) -> anyhow::Result<()> {
        self.set_rule(maps::COMM_RULES, comm, value)
    }

    fn set_cgroup_rule(&mut self, id: u64, value: Option<u8>) -> anyhow::Result<()> {
        self.set_rule(maps::CGROUP_RULES, id, value)
    }

    fn set_holding(&mut self, on: bool) -> anyhow::Result<()> {
        let mut config: Array<_, Config> = Array::try_from(
            self.ebpf
                .map_mut(maps::CONFIG)
                .context("CONFIG map missing")?,
        )?;
        let mut value = config.get(&0, 0)?;
        value.hold_at_exec = on as u32;
        config.set(0, value, 0)?;
        Ok(())
    }

    fn counters(&self) -> anyhow::Result<BTreeMap<&'static str, u64>> {
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(maps::COUNTERS)
                .context("COUNTERS map missing")?,
        )?;
        let mut out = BTreeMap::new();
        for counter in Counter::ALL {
            debug_assert!((counter as u32) < COUNTER_SLOTS);
            let per_cpu = counters.get(&(counter as u32), 0)?;
            out.insert(counter.name(), per_cpu.iter().sum());
        }
        Ok(out)
    }

    fn drain(&mut self, max: usize, each: &mut dyn FnMut(&[u8])) -> usize {
        let ring = self.records.get_mut();
        let mut read = 0;
        while read < max {
            let Some(record) = ring.next() else { break };
            each(&record);
            read += 1;
        }
        read
    }

    async fn wait(&mut self, more: bool) -> anyhow::Result<()> {
        if more {
            return Ok(());
        }
        // Readiness is cleared before the drain that follows, which reads all there is: a
        // record arriving meanwhile is read now or signals anew.
        if let Ok(guard) = tokio::time::timeout(POLL_INTERVAL, self.records.readable_mut()).await {
            guard?.clear_ready();
        }
        Ok(())
    }
}

/// The host the agent runs on, through `/proc`.
pub struct ProcHost;

impl Host for ProcHost {
    fn own_pid(&self) -> u32 {
        std::process::id()
    }

    fn process_exists(&self, pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    fn all_pids(&self) -> Vec<u32> {
        procfs::all_pids()
    }

    fn established_sockets(&self, pid: u32) -> anyhow::Result<Vec<procfs::OpenSocket>> {
        procfs::established_sockets(pid)
    }

    fn is_stream_socket(&self, pid: u32, fd: i32) -> Option<bool> {
        procfs::is_stream_socket(pid, fd).ok()
    }

    fn holds_socket(&self, pid: u32, fd: i32) -> bool {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
    }

    fn now_ns(&self) -> u64 {
        super::monotonic_ns()
    }

    fn mapped_files(&self, pid: u32) -> Vec<MappedFile> {
        let program = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let program = program.as_ref().and_then(|p| p.to_str());
        std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map(|maps| super::tls::executable_files(pid, &maps, program))
            .unwrap_or_default()
    }

    fn tls_functions(&self, file: &MappedFile) -> anyhow::Result<Vec<(TlsFunction, u64)>> {
        super::tls::tls_functions_of(&file.path).with_context(|| {
            format!(
                "reading the symbols of {} ({})",
                file.name,
                file.path.display()
            )
        })
    }

    fn resume(&self, pid: u32) -> std::io::Result<()> {
        // SAFETY: kill(2) with a plain pid and signal.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Tables and a host in memory, for the tests of the policy and of the daemon over it.
#[cfg(test)]
pub mod memory {
    use std::{
        collections::{HashMap, VecDeque},
        sync::{Arc, Mutex, MutexGuard},
        time::Duration,
    };

    use mqtrace_common::{
        CIPHERTEXT_PREFIX, ConnectionOpened, DataHeader, Origin as KernelOrigin, ProcessRecord,
        RecordKind, Syscall, TlsCiphertext,
    };

    use super::*;
    use crate::sources::{Direction, kernel::records::encoded};

    #[derive(Default)]
    pub struct MemoryTables {
        pub selected: BTreeMap<u32, u8>,
        pub sockets: HashMap<SocketKey, SocketState>,
        pub socket_capacity: Option<usize>,
        pub comm_rules: HashMap<[u8; COMM_LEN], u8>,
        pub cgroup_rules: HashMap<u64, u8>,
        /// Raw records, as the kernel programs write them.
        pub ring: VecDeque<Vec<u8>>,
        /// The next wait of [`SharedTables`] blocks the reader's thread this long: a stuck
        /// pipeline.
        pub stall: Option<Duration>,
        /// TLS probes attached: (pid, or 0 for every process, file name, function).
        pub tls_probes: Vec<(u32, String, TlsFunction)>,
        /// TLS connection objects whose plaintext is no longer copied.
        pub ignored_tls_objects: Vec<TlsKey>,
        /// The kernel holds processes at exec.
        pub holding: bool,
    }

    /// What the kernel programs do, as records in the ring and entries in the tables.
    impl MemoryTables {
        /// `pid` connected (or accepted) on `fd`: the socket is tracked and the record written.
        pub fn connect(&mut self, pid: u32, fd: i32, connection_id: u64, origin: KernelOrigin) {
            let state = SocketState {
                connection_id,
                positions: [0, 0],
                flags: 0,
            };
            self.sockets.insert(SocketKey { pid, fd }, state);
            self.ring.push_back(encoded(
                &ConnectionOpened {
                    kind: RecordKind::ConnectionOpened as u32,
                    origin: origin as u8,
                    _pad: 0,
                    family: 2, // AF_INET
                    timestamp_ns: super::super::monotonic_ns(),
                    connection_id,
                    pid,
                    tid: pid,
                    fd,
                    peer_port: 10911,
                    _pad2: 0,
                    peer_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                },
                &[],
            ));
        }

        /// `pid` wrote or read `payload` on a connection, starting at `position` of that
        /// direction's stream.
        pub fn transfer(
            &mut self,
            (pid, fd, connection_id): (u32, i32, u64),
            direction: Direction,
            position: u64,
            payload: &[u8],
        ) {
            let syscall = match direction {
                Direction::Egress => Syscall::Write,
                Direction::Ingress => Syscall::Read,
            };
            self.data_record(
                RecordKind::Data,
                syscall,
                (pid, fd, connection_id),
                position,
                payload,
            );
        }

        /// `pid` mapped an executable file.
        pub fn map_library(&mut self, pid: u32) {
            self.process_record(RecordKind::LibraryMapped, pid, false);
        }

        /// `pid` exec'd a program and the kernel stopped it until probed.
        pub fn exec_held(&mut self, pid: u32) {
            self.process_record(RecordKind::LibraryMapped, pid, true);
        }

        /// `pid`'s TLS library handed ciphertext starting with `prefix` to its BIO for `ssl`.
        pub fn tls_ciphertext(&mut self, pid: u32, ssl: u64, prefix: &[u8]) {
            let mut record = TlsCiphertext {
                kind: RecordKind::TlsCiphertext as u32,
                pid,
                timestamp_ns: super::super::monotonic_ns(),
                ssl,
                len: prefix.len() as u32,
                prefix_len: prefix.len().min(CIPHERTEXT_PREFIX) as u32,
                prefix: [0; CIPHERTEXT_PREFIX],
            };
            let length = record.prefix_len as usize;
            record.prefix[..length].copy_from_slice(&prefix[..length]);
            self.ring.push_back(encoded(&record, &[]));
        }

        /// `pid`'s TLS library took in (egress) or gave out (ingress) `plaintext` for `ssl`,
        /// at `position` of that direction.
        pub fn tls_plaintext(
            &mut self,
            (pid, ssl): (u32, u64),
            direction: Direction,
            position: u64,
            plaintext: &[u8],
        ) {
            let syscall = match direction {
                Direction::Egress => Syscall::SslWrite,
                Direction::Ingress => Syscall::SslRead,
            };
            self.data_record(
                RecordKind::TlsData,
                syscall,
                (pid, -1, ssl),
                position,
                plaintext,
            );
        }

        /// A data record as the kernel writes it: `payload` moved by one call at `position`.
        fn data_record(
            &mut self,
            kind: RecordKind,
            syscall: Syscall,
            (pid, fd, connection_id): (u32, i32, u64),
            position: u64,
            payload: &[u8],
        ) {
            self.ring.push_back(encoded(
                &DataHeader {
                    kind: kind as u32,
                    direction: syscall.direction() as u8,
                    syscall: syscall as u8,
                    records_lost: 0,
                    timestamp_ns: super::super::monotonic_ns(),
                    connection_id,
                    pid,
                    tid: pid,
                    fd,
                    copied_len: payload.len() as u32,
                    syscall_len: payload.len() as u64,
                    syscall_pos: position,
                    chunk_offset: 0,
                },
                payload,
            ));
        }

        /// `pid` exited.
        pub fn exit(&mut self, pid: u32) {
            self.process_record(RecordKind::ProcessExited, pid, false);
        }

        fn process_record(&mut self, kind: RecordKind, pid: u32, held: bool) {
            self.ring.push_back(encoded(
                &ProcessRecord {
                    kind: kind as u32,
                    pid,
                    timestamp_ns: super::super::monotonic_ns(),
                    held: held as u32,
                    exec: held as u32,
                },
                &[],
            ));
        }
    }

    impl KernelTables for MemoryTables {
        fn selection(&self, pid: u32) -> anyhow::Result<Option<u8>> {
            Ok(self.selected.get(&pid).copied())
        }

        fn set_selection(&mut self, pid: u32, value: u8) -> anyhow::Result<()> {
            self.selected.insert(pid, value);
            Ok(())
        }

        fn remove_selection(&mut self, pid: u32) {
            self.selected.remove(&pid);
        }

        fn selections(&self) -> anyhow::Result<Vec<(u32, u8)>> {
            Ok(self.selected.iter().map(|(k, v)| (*k, *v)).collect())
        }

        fn sockets(&self) -> anyhow::Result<Vec<(SocketKey, SocketState)>> {
            Ok(self.sockets.iter().map(|(k, v)| (*k, *v)).collect())
        }

        fn socket(&self, key: &SocketKey) -> Option<SocketState> {
            self.sockets.get(key).copied()
        }

        fn add_socket(&mut self, key: SocketKey, state: SocketState) -> bool {
            let full = self
                .socket_capacity
                .is_some_and(|capacity| self.sockets.len() >= capacity);
            if full || self.sockets.contains_key(&key) {
                return false;
            }
            self.sockets.insert(key, state);
            true
        }

        fn remove_socket(&mut self, key: &SocketKey) {
            self.sockets.remove(key);
        }

        fn set_comm_rule(&mut self, comm: [u8; COMM_LEN], value: Option<u8>) -> anyhow::Result<()> {
            match value {
                Some(value) => self.comm_rules.insert(comm, value),
                None => self.comm_rules.remove(&comm),
            };
            Ok(())
        }

        fn set_cgroup_rule(&mut self, id: u64, value: Option<u8>) -> anyhow::Result<()> {
            match value {
                Some(value) => self.cgroup_rules.insert(id, value),
                None => self.cgroup_rules.remove(&id),
            };
            Ok(())
        }

        fn set_socket_flags(&mut self, key: &SocketKey, flags: u64) {
            if let Some(state) = self.sockets.get_mut(key) {
                state.flags = flags;
            }
        }

        fn ignore_tls_object(&mut self, key: TlsKey) {
            self.ignored_tls_objects.push(key);
        }

        type TlsLink = (u32, String, TlsFunction);

        fn attach_tls(
            &mut self,
            pid: Option<u32>,
            library: &TlsLibrary,
        ) -> anyhow::Result<Vec<Self::TlsLink>> {
            let links: Vec<Self::TlsLink> = library
                .functions
                .iter()
                .map(|&(function, _)| (pid.unwrap_or(0), library.file.name.clone(), function))
                .collect();
            self.tls_probes.extend(links.iter().cloned());
            Ok(links)
        }

        fn detach_tls(&mut self, links: Vec<Self::TlsLink>) {
            self.tls_probes.retain(|probe| !links.contains(probe));
        }

        fn counters(&self) -> anyhow::Result<BTreeMap<&'static str, u64>> {
            Ok(Counter::ALL.iter().map(|c| (c.name(), 0)).collect())
        }

        fn set_holding(&mut self, on: bool) -> anyhow::Result<()> {
            self.holding = on;
            Ok(())
        }

        fn drain(&mut self, max: usize, each: &mut dyn FnMut(&[u8])) -> usize {
            let mut read = 0;
            while read < max {
                let Some(record) = self.ring.pop_front() else {
                    break;
                };
                each(&record);
                read += 1;
            }
            read
        }

        async fn wait(&mut self, _more: bool) -> anyhow::Result<()> {
            Ok(())
        }
    }

    /// Memory tables that a test changes and reads while a daemon runs over them.
    #[derive(Clone, Default)]
    pub struct SharedTables(Arc<Mutex<MemoryTables>>);

    impl SharedTables {
        pub fn lock(&self) -> MutexGuard<'_, MemoryTables> {
            self.0.lock().expect("memory tables")
        }
    }

    impl KernelTables for SharedTables {
        fn selection(&self, pid: u32) -> anyhow::Result<Option<u8>> {
            self.lock().selection(pid)
        }

        fn set_selection(&mut self, pid: u32, value: u8) -> anyhow::Result<()> {
            self.lock().set_selection(pid, value)
        }

        fn remove_selection(&mut self, pid: u32) {
            self.lock().remove_selection(pid)
        }

        fn selections(&self) -> anyhow::Result<Vec<(u32, u8)>> {
            self.lock().selections()
        }

        fn sockets(&self) -> anyhow::Result<Vec<(SocketKey, SocketState)>> {
            self.lock().sockets()
        }

        fn socket(&self, key: &SocketKey) -> Option<SocketState> {
            self.lock().socket(key)
        }

        fn add_socket(&mut self, key: SocketKey, state: SocketState) -> bool {
            self.lock().add_socket(key, state)
        }

        fn remove_socket(&mut self, key: &SocketKey) {
            self.lock().remove_socket(key)
        }

        fn set_comm_rule(&mut self, comm: [u8; COMM_LEN], value: Option<u8>) -> anyhow::Result<()> {
            self.lock().set_comm_rule(comm, value)
        }

        fn set_cgroup_rule(&mut self, id: u64, value: Option<u8>) -> anyhow::Result<()> {
            self.lock().set_cgroup_rule(id, value)
        }

        fn set_socket_flags(&mut self, key: &SocketKey, flags: u64) {
            self.lock().set_socket_flags(key, flags)
        }

        fn ignore_tls_object(&mut self, key: TlsKey) {
            self.lock().ignore_tls_object(key)
        }

        type TlsLink = (u32, String, TlsFunction);

        fn attach_tls(
            &mut self,
            pid: Option<u32>,
            library: &TlsLibrary,
        ) -> anyhow::Result<Vec<Self::TlsLink>> {
            self.lock().attach_tls(pid, library)
        }

        fn detach_tls(&mut self, links: Vec<Self::TlsLink>) {
            self.lock().detach_tls(links)
        }

        fn counters(&self) -> anyhow::Result<BTreeMap<&'static str, u64>> {
            self.lock().counters()
        }

        fn set_holding(&mut self, on: bool) -> anyhow::Result<()> {
            self.lock().set_holding(on)
        }

        fn drain(&mut self, max: usize, each: &mut dyn FnMut(&[u8])) -> usize {
            self.lock().drain(max, each)
        }

        /// Stalls once if asked to; idles a poll interval while the ring is empty.
        async fn wait(&mut self, more: bool) -> anyhow::Result<()> {
            let stall = self.lock().stall.take();
            if let Some(stall) = stall {
                std::thread::sleep(stall);
            }
            let idle = !more && self.lock().ring.is_empty();
            if idle {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            Ok(())
        }
    }

    /// Processes, their open sockets and what their fds hold, as a test sets them.
    #[derive(Default)]
    pub struct FakeHost {
        pub own_pid: u32,
        pub processes: BTreeMap<u32, Vec<procfs::OpenSocket>>,
        /// (pid, fd) of connected sockets that are not TCP.
        pub datagram_sockets: Vec<(u32, i32)>,
        /// (pid, fd) whose fd no longer holds a socket (closed unseen).
        pub closed_fds: Vec<(u32, i32)>,
        /// Executable files each process maps, with the TLS functions each defines.
        pub libraries: BTreeMap<u32, Vec<TlsLibrary>>,
        /// Processes continued after a hold at exec, in order.
        pub resumed: Mutex<Vec<u32>>,
        /// Processes the agent may not signal.
        pub unsignalled: Vec<u32>,
    }

    impl Host for FakeHost {
        fn own_pid(&self) -> u32 {
            self.own_pid
        }

        fn process_exists(&self, pid: u32) -> bool {
            self.processes.contains_key(&pid)
        }

        fn all_pids(&self) -> Vec<u32> {
            self.processes.keys().copied().collect()
        }

        fn established_sockets(&self, pid: u32) -> anyhow::Result<Vec<procfs::OpenSocket>> {
            self.processes
                .get(&pid)
                .cloned()
                .with_context(|| format!("no process {pid}"))
        }

        fn is_stream_socket(&self, pid: u32, fd: i32) -> Option<bool> {
            Some(!self.datagram_sockets.contains(&(pid, fd)))
        }

        fn holds_socket(&self, pid: u32, fd: i32) -> bool {
            self.processes.contains_key(&pid) && !self.closed_fds.contains(&(pid, fd))
        }

        fn now_ns(&self) -> u64 {
            1
        }

        fn mapped_files(&self, pid: u32) -> Vec<MappedFile> {
            self.libraries
                .get(&pid)
                .map(|libraries| libraries.iter().map(|l| l.file.clone()).collect())
                .unwrap_or_default()
        }

        fn tls_functions(&self, file: &MappedFile) -> anyhow::Result<Vec<(TlsFunction, u64)>> {
            self.libraries
                .values()
                .flatten()
                .find(|library| library.file == *file)
                .map(|library| library.functions.clone())
                .context("no such file")
        }

        fn resume(&self, pid: u32) -> std::io::Result<()> {
            self.resumed.lock().unwrap().push(pid);
            if self.unsignalled.contains(&pid) {
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
            Ok(())
        }
    }
}
