//! The live source: eBPF programs on syscall tracepoints copy the payloads of tracked sockets of
//! selected processes into a ring buffer, which this module reads.

mod gopclntab;
mod preflight;
pub mod procfs;
pub mod records;
pub mod safe_read;
pub mod tables;
pub mod tls;

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, RingBuf},
    programs::TracePoint,
};
use mqtrace_common::{
    COMM_LEN, Config, DEFAULT_MAX_BYTES_PER_SYSCALL, MAX_BYTES_PER_SYSCALL_LIMIT,
    SOCKET_PAYLOAD_IGNORED, Selection, SocketKey, SocketState, TlsKey, USER_CONNECTION_ID_BIT,
    maps,
};
use mqtrace_protocol::Bounded;
use tables::{EbpfTables, Host, KernelTables, ProcHost};
use tokio::io::unix::AsyncFd;

use crate::sources::{
    Connection, ConnectionId, EndCause, Origin, SeenAs, SourceEvent,
    capture::{Capture, KernelCounters},
    tls::{DarkReason, TlsBinder},
};

/// The compiled kernel programs, built by build.rs from `agent-ebpf`.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mqtrace-ebpf.o"));

/// (program, tracepoint category, tracepoint name). One exit program serves every data
/// syscall: the arguments stashed at enter say what to copy.
const ATTACHMENTS: &[(&str, &str, &str)] = &[
    ("enter_write", "syscalls", "sys_enter_write"),
    ("enter_writev", "syscalls", "sys_enter_writev"),
    ("enter_sendto", "syscalls", "sys_enter_sendto"),
    ("enter_sendmsg", "syscalls", "sys_enter_sendmsg"),
    ("enter_read", "syscalls", "sys_enter_read"),
    ("enter_readv", "syscalls", "sys_enter_readv"),
    ("enter_recvfrom", "syscalls", "sys_enter_recvfrom"),
    ("enter_recvmsg", "syscalls", "sys_enter_recvmsg"),
    ("exit_transfer", "syscalls", "sys_exit_write"),
    ("exit_transfer", "syscalls", "sys_exit_writev"),
    ("exit_transfer", "syscalls", "sys_exit_sendto"),
    ("exit_transfer", "syscalls", "sys_exit_sendmsg"),
    ("exit_transfer", "syscalls", "sys_exit_read"),
    ("exit_transfer", "syscalls", "sys_exit_readv"),
    ("exit_transfer", "syscalls", "sys_exit_recvfrom"),
    ("exit_transfer", "syscalls", "sys_exit_recvmsg"),
    ("enter_connect", "syscalls", "sys_enter_connect"),
    ("enter_accept", "syscalls", "sys_enter_accept"),
    ("enter_accept4", "syscalls", "sys_enter_accept4"),
    ("exit_open", "syscalls", "sys_exit_connect"),
    ("exit_accept", "syscalls", "sys_exit_accept"),
    ("exit_accept", "syscalls", "sys_exit_accept4"),
    ("enter_close", "syscalls", "sys_enter_close"),
    ("process_exit", "sched", "sched_process_exit"),
    ("process_exec", "sched", "sched_process_exec"),
    ("enter_mmap", "syscalls", "sys_enter_mmap"),
];

/// Records read per wake-up at most, so that one busy ring cannot starve the rest.
const MAX_RECORDS_PER_POLL: usize = 4096;

/// The kernel wakes the reader only once a backlog builds up (a wake-up per record would cost a
/// context switch per traced syscall); in between the reader looks this often.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Trace every process (but the agent) instead of only selected ones.
    pub trace_all: bool,
    /// Payload bytes copied per syscall at most; the rest is reported as a gap.
    pub max_bytes_per_syscall: u32,
    /// Ring buffer size in bytes: a power of two, a multiple of the page size.
    pub ring_buffer_bytes: u32,
    /// Stop a selected process at exec until its program's TLS probes are placed (once per
    /// program and cgroup when tracing every process).
    pub hold_at_exec: bool,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            trace_all: false,
            max_bytes_per_syscall: DEFAULT_MAX_BYTES_PER_SYSCALL,
            ring_buffer_bytes: 16 << 20,
            hold_at_exec: true,
        }
    }
}

/// The live capture: the loaded and attached probes (dropping it detaches them), and the
/// policy over their tables: which processes and sockets the kernel follows, and when a
/// connection ends for user space. The policy runs over the [`KernelTables`] and [`Host`]
/// seams, so that tests run it without root.
pub struct KernelCapture<T: KernelTables = EbpfTables, H: Host = ProcHost> {
    tables: T,
    host: H,
    options: CaptureOptions,
    next_user_connection: u64,
    /// Events produced by user space itself (sockets found in /proc), delivered first.
    pending: Vec<SourceEvent>,
    /// Processes that have had a tracked socket: only theirs need the socket table walked when
    /// they exit (in trace-all mode every process exit on the host is reported).
    pids_with_sockets: std::collections::HashSet<u32>,
    /// Records that could not be decoded (never expected: a layout mismatch).
    malformed_records: u64,
    /// Connected sockets let go of at once because they are not TCP (UDP).
    non_tcp_sockets: u64,
    /// The last drain stopped at its bound: more records wait.
    more_records: bool,
    /// TLS libraries' records read with the events, and the processes that mapped a file.
    side: records::SideRecords,
    /// Binds TLS plaintext to its connections.
    binder: TlsBinder,
    /// The TLS probes held for each process.
    tls_probes: HashMap<u32, ProcessProbes<T::TlsLink>>,
    /// Probes serving every process that maps their file, by (device, inode).
    shared_probes: HashMap<(String, u64), Vec<T::TlsLink>>,
    /// Processes whose library is to be looked at again, with the attempts made.
    tls_retries: HashMap<u32, u8>,
    /// The TLS functions of files looked at, by (device, inode): a program run again and
    /// again is read once.
    tls_files: Bounded<(String, u64), Vec<(tls::TlsFunction, u64)>>,
    tls: TlsCaptureCounters,
    /// Processes stopped at exec and probed, with when they were stopped, whose start has not
    /// been handed out yet (read into `pending`, say)...
    held: Vec<(u32, u64)>,
    /// ...and those whose start has: continued at the next read, once the stages after this
    /// one have handled it (their `ProcessStarted` read who they are while they could not
    /// exit). Kept here, not in locals, so that they are continued at shutdown whatever
    /// happened.
    to_resume: Vec<(u32, u64)>,
    /// Whether processes may be held at exec: the kernel and the agent's rights allow it, and
    /// no process failed to be continued.
    holding_allowed: bool,
}

/// What the capture attached to one process's TLS libraries.
struct ProcessProbes<L> {
    /// Files looked at already (device, inode), probed or not.
    inspected: HashSet<(String, u64)>,
    /// Probes for this process alone.
    links: Vec<L>,
    /// Its files whose probes serve every process.
    shared: Vec<(String, u64)>,
}

impl<L> Default for ProcessProbes<L> {
    fn default() -> Self {
        Self {
            inspected: HashSet::new(),
            links: Vec::new(),
            shared: Vec::new(),
        }
    }
}

/// The capture's TLS counters; the binder's are beside them.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct TlsCaptureCounters {
    /// Libraries of selected processes with their TLS plaintext probed.
    pub libraries_probed: u64,
    /// Libraries named like TLS ones without the functions probed (stripped: their
    /// connections stay dark).
    pub libraries_without_symbols: u64,
    /// Libraries whose probes the kernel refused, or whose file could not be read.
    pub attach_failures: u64,
    /// Processes stopped at exec until probed ([`CaptureOptions::hold_at_exec`]).
    pub processes_held: u64,
    /// How long they waited, summed, in seconds.
    pub held_seconds: f64,
    /// Processes the agent could not continue (not allowed to signal them): holding is then
    /// switched off.
    pub resume_failures: u64,
}

impl KernelCapture {
    /// Checks the host, loads and attaches the probes. Must run inside a tokio runtime.
    pub fn start(options: CaptureOptions) -> anyhow::Result<Self> {
        preflight::check_privileges()?;
        preflight::ensure_tracefs()?;
        preflight::check_ring_buffer()?;
        if options.max_bytes_per_syscall == 0
            || options.max_bytes_per_syscall > MAX_BYTES_PER_SYSCALL_LIMIT
        {
            bail!(
                "max bytes per syscall must be between 1 and {MAX_BYTES_PER_SYSCALL_LIMIT}, not {}",
                options.max_bytes_per_syscall
            );
        }
        let ring = options.ring_buffer_bytes;
        if !ring.is_power_of_two() || ring < 4096 {
            bail!("ring buffer size must be a power of two of at least 4096 bytes, not {ring}");
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::RECORDS, ring)
            .load(EBPF_OBJECT)
            .context("loading the mqtrace eBPF object")?;
        let terminal = options
            .hold_at_exec
            .then(|| {
                preflight::check_hold_at_exec()
                    .inspect_err(|error| {
                        tracing::warn!(
                            "processes are not held at exec until probed ({error:#}): a \
                             program that begins TLS at once may do so unseen"
                        )
                    })
                    .ok()
            })
            .flatten();
        let config = Config {
            trace_all: options.trace_all as u32,
            agent_pid: std::process::id(),
            max_bytes_per_syscall: options.max_bytes_per_syscall,
            // Set once the capture can continue what it holds (the end of this function).
            hold_at_exec: 0,
            task_signal_offset: terminal.map_or(0, |t| t.task_signal),
            signal_tty_offset: terminal.map_or(0, |t| t.signal_tty),
        };
        let mut config_map: Array<_, Config> =
            Array::try_from(ebpf.map_mut(maps::CONFIG).context("CONFIG map missing")?)?;
        config_map.set(0, config, 0)?;
        attach_all(&mut ebpf)?;
        let records = RingBuf::try_from(
            ebpf.take_map(maps::RECORDS)
                .context("RECORDS map missing")?,
        )?;
        let tables = EbpfTables {
            ebpf,
            // SAFETY: the ring buffer owns its fd and keeps it open while the AsyncFd lives.
            records: unsafe { AsyncFd::register(records) }
                .context("registering the ring buffer with tokio")?,
        };
        let mut capture = Self::over(tables, ProcHost, options);
        if terminal.is_some() {
            capture.holding_allowed = true;
            capture.tables.set_holding(true)?;
        }
        Ok(capture)
    }
}

impl<T: KernelTables, H: Host> KernelCapture<T, H> {
    /// The policy over these tables and this host; in trace-all mode every process's open
    /// connections are picked up at once.
    pub fn over(tables: T, host: H, options: CaptureOptions) -> Self {
        let mut capture = Self {
            tables,
            host,
            options,
            next_user_connection: 0,
            pending: Vec::new(),
            malformed_records: 0,
            non_tcp_sockets: 0,
            pids_with_sockets: std::collections::HashSet::new(),
            more_records: false,
            side: records::SideRecords::default(),
            binder: TlsBinder::new(),
            tls_probes: HashMap::new(),
            shared_probes: HashMap::new(),
            tls_retries: HashMap::new(),
            tls_files: Bounded::new(1024, 1 << 20),
            tls: TlsCaptureCounters::default(),
            held: Vec::new(),
            to_resume: Vec::new(),
            holding_allowed: false,
        };
        if capture.options.trace_all {
            let me = capture.host.own_pid();
            for pid in capture.host.all_pids().into_iter().filter(|&pid| pid != me) {
                // Processes may vanish while we look: that is not an error.
                let _ = capture.register_existing_sockets(pid);
                capture.probe_tls_libraries(pid);
            }
        }
        capture
    }

    pub fn options(&self) -> &CaptureOptions {
        &self.options
    }

    /// Starts copying `pid`'s traffic, including on the connections it already has open.
    pub fn select(&mut self, pid: u32) -> anyhow::Result<()> {
        self.set_selection(pid, Selection::ByPid)
    }

    /// The socket table entry of a connection, unless its fd holds a newer connection by now.
    fn socket_of(&self, connection: &Connection) -> Option<SocketKey> {
        let key = SocketKey {
            pid: connection.pid,
            fd: connection.fd,
        };
        self.tables
            .socket(&key)
            .is_some_and(|state| state.connection_id == connection.id.0)
            .then_some(key)
    }

    /// Removes one connection's socket table entry, unless its fd holds a newer connection by
    /// now.
    fn remove_socket(&mut self, connection: &Connection) {
        if let Some(key) = self.socket_of(connection) {
            self.tables.remove_socket(&key);
        }
    }

    /// Removes `pid`'s sockets from the kernel's table; returns their connection ids.
    fn forget_sockets(&mut self, pid: u32) -> anyhow::Result<Vec<ConnectionId>> {
        self.pids_with_sockets.remove(&pid);
        remove_sockets(&mut self.tables, |key| key.pid == pid)
    }

    /// Stops following `pid`'s connections: the records already in the ring go first, then
    /// each connection ends, so that user space lets go of it (a later selection picks the
    /// sockets up anew, mid-stream).
    fn stop_following(&mut self, pid: u32) -> anyhow::Result<()> {
        self.unprobe(pid);
        let closed = self.forget_sockets(pid)?;
        self.end_connections(closed, EndCause::Deselected);
        Ok(())
    }

    /// Queues the end of these connections for user space, after the records already in the
    /// ring (which still belong to them).
    fn end_connections(&mut self, closed: Vec<ConnectionId>, cause: EndCause) {
        // Read into what waits to be handed out: processes held meanwhile stay held until
        // their start has been handed out with it.
        let mut events = std::mem::take(&mut self.pending);
        self.read_now(&mut events);
        let timestamp_ns = self.host.now_ns();
        self.pending = events;
        self.queue(
            closed
                .into_iter()
                .map(|connection| SourceEvent::Closed {
                    connection,
                    final_positions: None,
                    timestamp_ns,
                    cause,
                })
                .collect(),
        );
    }

    /// Queues events user space made (sockets found in /proc, connections it ended) to be
    /// handed out first, through the TLS binder as the ring's are: it must know a connection
    /// open before the agent started to bind it, and end a bound one's plaintext with it.
    fn queue(&mut self, mut events: Vec<SourceEvent>) {
        let mut bound = Vec::new();
        self.binder.bind(&mut events, 0, Vec::new(), &mut bound);
        self.pending.append(&mut events);
    }

    /// Adds the established TCP sockets `pid` has now to the kernel's socket table.
    fn register_existing_sockets(&mut self, pid: u32) -> anyhow::Result<()> {
        let found = self
            .host
            .established_sockets(pid)
            .with_context(|| format!("reading the open sockets of pid {pid} in /proc"))?;
        for socket in found {
            self.next_user_connection += 1;
            let id = USER_CONNECTION_ID_BIT | self.next_user_connection;
            let state = SocketState {
                connection_id: id,
                positions: [0, 0],
                flags: 0,
            };
            if !self
                .tables
                .add_socket(SocketKey { pid, fd: socket.fd }, state)
            {
                continue; // already tracked (connected during the scan) or table full
            }
            self.pids_with_sockets.insert(pid);
            self.queue(vec![SourceEvent::Opened(Connection {
                id: ConnectionId(id),
                pid,
                fd: socket.fd,
                origin: Origin::Existing,
                local: Some(socket.local),
                peer: Some(socket.peer),
                timestamp_ns: self.host.now_ns(),
                seen_as: SeenAs::Plain,
            })]);
        }
        Ok(())
    }

    /// Attaches the TLS probes to the libraries `pid` maps that were not looked at yet.
    fn probe_tls_libraries(&mut self, pid: u32) {
        let files = self.host.mapped_files(pid);
        let probes = self.tls_probes.entry(pid).or_default();
        let mut found = Vec::new();
        for file in files {
            if probes.inspected.insert(file.identity.clone())
                && (file.executable || tls::may_be_tls(&file.name))
            {
                found.push(file);
            }
        }
        let mut failed = false;
        // Tracing every process, a program's or library's probes serve every process that
        // maps it, from its exec on (the kernel places them in each new mapping): only the
        // first process of a program after the agent starts waits for them. Deleted files
        // (netty unpacks its library anew in every process) are probed per process.
        let shared = self.options.trace_all;
        for file in found {
            if shared && self.shared_probes.contains_key(&file.identity) {
                self.binder.set_probed(pid, true);
                if let Some(probes) = self.tls_probes.get_mut(&pid) {
                    probes.shared.push(file.identity.clone());
                }
                continue;
            }
            let started = std::time::Instant::now();
            let functions = match self.tls_files.get(&file.identity) {
                Some(functions) => functions.clone(),
                None => match self.host.tls_functions(&file) {
                    Ok(functions) => {
                        // Deleted files (netty's) are unpacked anew by every process.
                        if !file.deleted {
                            self.tls_files.insert(
                                file.identity.clone(),
                                functions.clone(),
                                functions.len() * 16,
                            );
                        }
                        functions
                    }
                    Err(error) => {
                        failed = true;
                        self.attach_failed(pid, &file, error);
                        continue;
                    }
                },
            };
            if functions.is_empty() {
                if tls::stripped_library(&file) {
                    self.tls.libraries_without_symbols += 1;
                    self.binder
                        .set_dark_reason(pid, Some(DarkReason::StrippedLibrary));
                } else if tls::java_program(&file) {
                    self.binder.set_dark_reason(pid, Some(DarkReason::Jsse));
                }
                continue;
            }
            let library = tls::TlsLibrary { file, functions };
            let for_every_process = shared && !library.file.deleted;
            match self
                .tables
                .attach_tls((!for_every_process).then_some(pid), &library)
            {
                Ok(links) => {
                    self.tls.libraries_probed += 1;
                    self.binder.set_probed(pid, true);
                    let mut functions: Vec<&str> =
                        library.functions.iter().map(|(f, _)| f.symbol()).collect();
                    functions.dedup();
                    tracing::info!(
                        pid,
                        library = library.file.name,
                        deleted = library.file.deleted,
                        probes = links.len(),
                        took_ms = started.elapsed().as_secs_f64() * 1e3,
                        ?functions,
                        "TLS library probed"
                    );
                    let Some(probes) = self.tls_probes.get_mut(&pid) else {
                        continue;
                    };
                    if for_every_process {
                        probes.shared.push(library.file.identity.clone());
                        self.shared_probes.insert(library.file.identity, links);
                    } else {
                        probes.links.extend(links);
                    }
                }
                Err(error) => {
                    failed = true;
                    self.attach_failed(pid, &library.file, error);
                }
            }
        }
        // Nothing failed this time: no more looking again.
        if !failed {
            self.tls_retries.remove(&pid);
        }
    }

    /// A library being loaded is mapped in steps (the whole file, then each segment over it):
    /// the mapping looked at may be gone a moment later. The file is looked at again at the
    /// next read of the ring, a few times, before the failure counts.
    fn attach_failed(&mut self, pid: u32, file: &tls::MappedFile, error: anyhow::Error) {
        const ATTEMPTS: u8 = 4;
        let attempts = self.tls_retries.entry(pid).or_insert(0);
        *attempts += 1;
        tracing::debug!(
            pid,
            attempt = *attempts,
            error = format!("{error:#}"),
            "TLS library not probed yet"
        );
        if *attempts < ATTEMPTS {
            if let Some(probes) = self.tls_probes.get_mut(&pid) {
                probes.inspected.remove(&file.identity);
            }
            return;
        }
        self.tls_retries.remove(&pid);
        self.tls.attach_failures += 1;
        tracing::warn!(pid, error = format!("{error:#}"), "TLS library not probed");
    }

    /// Detaches `pid`'s TLS probes.
    fn unprobe(&mut self, pid: u32) {
        if let Some(probes) = self.tls_probes.remove(&pid) {
            self.tables.detach_tls(probes.links);
        }
        self.tls_retries.remove(&pid);
        self.binder.set_probed(pid, false);
        self.binder.set_dark_reason(pid, None);
    }

    /// The TLS records read with `out[start..]`: new libraries probed, plaintext bound to
    /// its connections, and the connections bound no longer copied (only their close is).
    fn after_tls_records(&mut self, out: &mut Vec<SourceEvent>, start: usize) {
        // The lost-record count stays: it is carried from read to read.
        let tls = std::mem::take(&mut self.side.tls);
        self.held.append(&mut self.side.held);
        let mut mapped = std::mem::take(&mut self.side.mapped);
        mapped.extend(self.tls_retries.keys().copied());
        mapped.sort_unstable();
        mapped.dedup();
        for pid in mapped {
            self.probe_tls_libraries(pid);
        }
        let mut bound = Vec::new();
        self.binder.bind(out, start, tls, &mut bound);
        for connection in bound {
            if let Some(key) = self.socket_of(&connection) {
                self.tables.set_socket_flags(&key, SOCKET_PAYLOAD_IGNORED);
            }
        }
    }

    /// Continues the processes stopped at exec, now that they have been looked at (probed, or
    /// found without TLS, or failed: they never wait longer than one read) and their start
    /// handed on. One the agent may not signal
    /// (a security module's rule) switches holding off: every later one would stay stopped.
    fn resume_held(&mut self) {
        let now = self.host.now_ns();
        for (pid, since) in std::mem::take(&mut self.to_resume) {
            let waited = now.saturating_sub(since) / 1000;
            self.tls.processes_held += 1;
            self.tls.held_seconds += waited as f64 / 1e6;
            match self.host.resume(pid) {
                Ok(()) => {
                    tracing::debug!(pid, waited_us = waited, "process held at exec continued")
                }
                // Gone meanwhile (killed while stopped).
                Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {}
                Err(error) => {
                    self.tls.resume_failures += 1;
                    self.holding_allowed = false;
                    tracing::error!(
                        pid,
                        %error,
                        "a process held at exec could not be continued: send it SIGCONT; \
                         processes are no longer held"
                    );
                    if let Err(error) = self.tables.set_holding(false) {
                        tracing::warn!(error = format!("{error:#}"), "holding not switched off");
                    }
                }
            }
        }
    }

    /// Reads what the ring holds now into `out` (after what waits to be handed out), with what
    /// the records ask of the tables; continues nobody.
    fn read_now(&mut self, out: &mut Vec<SourceEvent>) {
        out.append(&mut self.pending);
        let start = out.len();
        while self.drain_records(out) == MAX_RECORDS_PER_POLL {}
        self.after_records(out, start);
    }

    /// The events read so far have gone to the stages after this one: the processes held
    /// among them are continued at the next read.
    fn handed_out(&mut self) {
        self.to_resume.append(&mut self.held);
    }

    /// At shutdown: holds no more processes at exec, and continues those whose records still
    /// wait in the ring (nobody else would).
    fn release_held(&mut self) {
        if let Err(error) = self.tables.set_holding(false) {
            tracing::warn!(
                error = format!("{error:#}"),
                "processes may still be held at exec"
            );
        }
        // An exec that read the old setting finishes its record within microseconds.
        std::thread::sleep(std::time::Duration::from_millis(10));
        let mut events = Vec::new();
        let mut side = records::SideRecords::default();
        let cap = self.options.max_bytes_per_syscall as u64;
        // What the ring holds now, at most (the smallest record is 16 bytes); traced processes
        // keep writing meanwhile.
        let mut left = self.options.ring_buffer_bytes as usize / 16;
        while left > 0 {
            let read = self.tables.drain(MAX_RECORDS_PER_POLL, &mut |record| {
                let _ = records::decode(record, cap, &mut events, &mut side);
                events.clear();
            });
            if read == 0 {
                break;
            }
            left = left.saturating_sub(read);
        }
        self.held.append(&mut side.held);
        self.handed_out();
        self.resume_held();
    }

    /// What the records just read ask of the tables: an exiting process closes its fds without
    /// close(2), so its kernel state goes here; a connected socket that is not TCP leaves the
    /// socket table at once, unseen by the pipeline.
    fn after_records(&mut self, out: &mut Vec<SourceEvent>, start: usize) {
        self.after_tls_records(out, start);
        let mut not_tcp = Vec::new();
        for event in &out[start..] {
            match *event {
                SourceEvent::Opened(ref connection) => {
                    self.pids_with_sockets.insert(connection.pid);
                    if connection.origin == Origin::Connect
                        && self.host.is_stream_socket(connection.pid, connection.fd) == Some(false)
                    {
                        not_tcp.push(connection.clone());
                    }
                }
                SourceEvent::ProcessExited { pid } => {
                    self.tables.remove_selection(pid);
                    self.unprobe(pid);
                    if self.pids_with_sockets.contains(&pid) {
                        let _ = self.forget_sockets(pid);
                    }
                }
                _ => {}
            }
        }
        if not_tcp.is_empty() {
            return;
        }
        for connection in &not_tcp {
            self.remove_socket(connection);
        }
        self.non_tcp_sockets += not_tcp.len() as u64;
        let ids: std::collections::HashSet<ConnectionId> = not_tcp.iter().map(|c| c.id).collect();
        let mut index = 0;
        out.retain(|event| {
            index += 1;
            index <= start || !event.connection().is_some_and(|id| ids.contains(&id))
        });
    }

    /// Decodes up to MAX_RECORDS_PER_POLL waiting records into `out`; returns how many were
    /// read.
    fn drain_records(&mut self, out: &mut Vec<SourceEvent>) -> usize {
        let cap = self.options.max_bytes_per_syscall as u64;
        let malformed = &mut self.malformed_records;
        let side = &mut self.side;
        let read = self.tables.drain(MAX_RECORDS_PER_POLL, &mut |record| {
            if records::decode(record, cap, out, side).is_err() {
                *malformed += 1;
            }
        });
        self.more_records = read == MAX_RECORDS_PER_POLL;
        read
    }
}

impl<T: KernelTables, H: Host> Drop for KernelCapture<T, H> {
    fn drop(&mut self) {
        self.release_held();
    }
}

impl<T: KernelTables, H: Host> Capture for KernelCapture<T, H> {
    fn trace_all(&self) -> bool {
        self.options.trace_all
    }

    fn drain_now(&mut self, out: &mut Vec<SourceEvent>) {
        self.resume_held();
        self.read_now(out);
        self.handed_out();
    }

    fn hold_at_exec(&mut self, on: bool) -> anyhow::Result<()> {
        self.tables.set_holding(on && self.holding_allowed)
    }

    fn non_tcp_sockets(&self) -> u64 {
        self.non_tcp_sockets
    }

    fn malformed_records(&self) -> u64 {
        self.malformed_records
    }

    fn tls_probes_per_process(&self) -> BTreeMap<u32, usize> {
        self.tls_probes
            .iter()
            .map(|(&pid, probes)| {
                let shared: usize = probes
                    .shared
                    .iter()
                    .filter_map(|file| self.shared_probes.get(file))
                    .map(Vec::len)
                    .sum();
                (pid, probes.links.len() + shared)
            })
            .filter(|&(_, probes)| probes > 0)
            .collect()
    }

    fn tls_counters(&self) -> crate::counters::TlsCounterTree {
        crate::counters::TlsCounterTree {
            probes: self
                .tls_probes
                .values()
                .map(|p| p.links.len())
                .sum::<usize>()
                + self.shared_probes.values().map(Vec::len).sum::<usize>(),
            capture: self.tls,
            binding: self.binder.counters(),
        }
    }

    /// Traces `pid` from now on for the reason given, or stops (`Excluded`), whatever the
    /// mode. A process that starts being traced has its open connections picked up; one that
    /// stops has its sockets forgotten (their positions would be wrong after bytes moved
    /// unseen).
    fn set_selection(&mut self, pid: u32, selection: Selection) -> anyhow::Result<()> {
        if pid == self.host.own_pid() {
            bail!("mqtrace does not trace itself (pid {pid})");
        }
        if !self.host.process_exists(pid) {
            bail!("no process with pid {pid}");
        }
        let was_traced = self.is_traced(pid)?;
        // Entered first, so that a connection opened during the scan is caught by the kernel;
        // the scan then leaves it alone.
        self.tables.set_selection(pid, selection as u8)?;
        match (was_traced, selection != Selection::Excluded) {
            (false, true) => {
                self.probe_tls_libraries(pid);
                self.register_existing_sockets(pid)
            }
            (true, false) => self.stop_following(pid),
            _ => Ok(()),
        }
    }

    /// Stops copying `pid`'s traffic (in trace-all mode: until it is selected again).
    fn deselect(&mut self, pid: u32) -> anyhow::Result<()> {
        if self.options.trace_all {
            self.set_selection(pid, Selection::Excluded)
        } else {
            self.tables.remove_selection(pid);
            self.stop_following(pid)
        }
    }

    /// Whether the kernel copies `pid`'s traffic now.
    fn is_traced(&self, pid: u32) -> anyhow::Result<bool> {
        Ok(match self.tables.selection(pid)? {
            Some(value) => value != Selection::Excluded as u8,
            None => self.options.trace_all,
        })
    }

    /// Every process with its own entry (traced or excluded, and why), by pid.
    fn selections(&self) -> anyhow::Result<BTreeMap<u32, Selection>> {
        Ok(self
            .tables
            .selections()?
            .into_iter()
            .filter_map(|(pid, value)| Some((pid, Selection::from_u8(value)?)))
            .collect())
    }

    /// Sockets in the kernel's table now, per process.
    fn sockets_per_process(&self) -> anyhow::Result<BTreeMap<u32, usize>> {
        let mut counts = BTreeMap::new();
        for (key, _) in self.tables.sockets()? {
            *counts.entry(key.pid).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// Forgets tracked sockets whose fd no longer holds a socket (closed through `dup2` or
    /// `close_range`, which the close probe does not see) or whose process is gone, so that
    /// the socket table has room again; their connections end for user space. Returns how
    /// many went.
    fn sweep_stale_sockets(&mut self) -> anyhow::Result<usize> {
        let host = &self.host;
        let ended = remove_sockets(&mut self.tables, |key| !host.holds_socket(key.pid, key.fd))?;
        let count = ended.len();
        self.end_connections(ended, EndCause::Closed);
        Ok(count)
    }

    /// Sets (or with `None` removes) the selection a process gets when it execs `comm`.
    fn set_comm_rule(
        &mut self,
        comm: [u8; COMM_LEN],
        selection: Option<Selection>,
    ) -> anyhow::Result<()> {
        self.tables.set_comm_rule(comm, selection.map(|s| s as u8))
    }

    /// Sets (or with `None` removes) the selection a process gets when it execs inside the
    /// cgroup `id` or below it.
    fn set_cgroup_rule(&mut self, id: u64, selection: Option<Selection>) -> anyhow::Result<()> {
        self.tables.set_cgroup_rule(id, selection.map(|s| s as u8))
    }

    /// Stops copying one connection (not RocketMQ, or the broker's side) and ends it for user
    /// space after the records already captured; a later connection on the same fd is tracked
    /// anew at its connect or accept.
    fn stop_copying(&mut self, connection: &Connection) -> anyhow::Result<()> {
        // A plaintext stream: its TLS object's records are dropped, its socket let go.
        if let Some((cipher, (pid, ssl))) = self.binder.stop_following(connection.id) {
            let socket = Connection {
                id: cipher,
                ..connection.clone()
            };
            self.remove_socket(&socket);
            self.tables.ignore_tls_object(TlsKey { pid, _pad: 0, ssl });
            self.end_connections(vec![connection.id, cipher], EndCause::NotFollowed);
            return Ok(());
        }
        self.remove_socket(connection);
        self.end_connections(vec![connection.id], EndCause::NotFollowed);
        Ok(())
    }

    /// Waits until records are available and appends their events to `out`.
    async fn next_events(&mut self, out: &mut Vec<SourceEvent>) -> anyhow::Result<()> {
        self.resume_held();
        if !self.pending.is_empty() {
            out.append(&mut self.pending);
            self.handed_out();
            return Ok(());
        }
        let start = out.len();
        loop {
            self.tables.wait(self.more_records).await?;
            if self.drain_records(out) > 0 {
                break;
            }
        }
        self.after_records(out, start);
        self.handed_out();
        Ok(())
    }

    fn counters(&self) -> anyhow::Result<KernelCounters> {
        Ok(KernelCounters(self.tables.counters()?))
    }
}

/// Removes the socket table entries that `which` picks; returns their connection ids.
fn remove_sockets(
    tables: &mut impl KernelTables,
    which: impl Fn(&SocketKey) -> bool,
) -> anyhow::Result<Vec<ConnectionId>> {
    let entries: Vec<(SocketKey, SocketState)> = tables
        .sockets()?
        .into_iter()
        .filter(|(key, _)| which(key))
        .collect();
    for (key, _) in &entries {
        tables.remove_socket(key);
    }
    Ok(entries
        .into_iter()
        .map(|(_, state)| ConnectionId(state.connection_id))
        .collect())
}

/// A program that does nothing, on every tracepoint the capture uses: the cost floor the
/// benchmarks compare the capture with. Dropping it detaches it.
pub struct NoopProbes {
    _ebpf: Ebpf,
}

impl NoopProbes {
    pub fn attach() -> anyhow::Result<Self> {
        preflight::check_privileges()?;
        preflight::ensure_tracefs()?;
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .context("loading the mqtrace eBPF object")?;
        attach_each(&mut ebpf, |_| "noop")?;
        Ok(Self { _ebpf: ebpf })
    }
}

fn attach_all(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    attach_each(ebpf, |program| program)
}

/// Attaches, for every tracepoint of ATTACHMENTS, the program `choose` names for it.
fn attach_each(
    ebpf: &mut Ebpf,
    choose: impl Fn(&'static str) -> &'static str,
) -> anyhow::Result<()> {
    for &(program, category, name) in ATTACHMENTS {
        let program = choose(program);
        if !preflight::tracepoint_exists(category, name) {
            bail!(
                "tracepoint {category}:{name} does not exist on this kernel (syscall tracepoints \
                 need CONFIG_FTRACE_SYSCALLS)"
            );
        }
        let tracepoint: &mut TracePoint = ebpf
            .program_mut(program)
            .with_context(|| format!("program {program} missing from the eBPF object"))?
            .try_into()?;
        if tracepoint.fd().is_err() {
            tracepoint.load().map_err(|e| rejected(program, &e))?;
        }
        tracepoint
            .attach(category, name)
            .with_context(|| format!("attaching {program} to {category}:{name}"))?;
    }
    Ok(())
}

/// A load error with the verifier log cut to its end, where the reason is: the whole log of a
/// complex program runs to megabytes.
fn rejected(program: &str, error: &aya::programs::ProgramError) -> anyhow::Error {
    const KEEP_LINES: usize = 30;
    let text = error.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let shown = if lines.len() > KEEP_LINES {
        format!(
            "{}\n[... {} lines ...]\n{}",
            lines[0],
            lines.len() - KEEP_LINES,
            lines[lines.len() - KEEP_LINES + 1..].join("\n")
        )
    } else {
        text
    };
    anyhow::anyhow!("the kernel refused to load {program}: {shown}")
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of the kernel's record timestamps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests;
