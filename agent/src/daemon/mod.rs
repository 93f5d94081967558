//! The live daemon: kernel capture → pipeline → exporters, steered while it runs over the
//! control socket, its counters on `/metrics`, its problems in the log.

mod handover;
mod span_thread;

use anyhow::Context;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use mqtrace_common::{Counter, Selection};

use handover::Predecessor;
use span_thread::SpanThread;

use crate::{
    control::{
        HANDOVER_PROTOCOL, Request, Response, Status, Target,
        rules::{Rules, SavedRule, mode_name},
        server,
    },
    correlation::Unseen,
    counters::{AgentCounters, CounterTree, HandoverCounters},
    decoder::DecoderConfig,
    exporters::{Destinations, SpanSinks, otlp::OtlpConfig, rocketmq_trace::RocketmqTraceConfig},
    host::resources::HostResources,
    logs::{ProblemLog, log_problems},
    memory::Shares,
    metrics::{self, Health, Snapshot},
    pipeline::{Output, Pipeline},
    sources::{
        capture::Capture,
        kernel::{CaptureOptions, KernelCapture, monotonic_ns},
    },
};

/// A problem counter that keeps growing is logged at most this often.
const PROBLEM_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// How often the socket table is swept of sockets closed unseen (and at once when it was
/// found full).
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Every process but those excluded, or only those selected.
    pub trace_all: bool,
    /// Enabled at start, as if by `mqtrace enable`.
    pub startup: Vec<Target>,
    pub max_bytes_per_syscall: u32,
    pub ring_buffer_bytes: u32,
    /// Log the counters (at info level) this often.
    pub stats_interval: Duration,
    pub output: Option<PathBuf>,
    pub otlp: Option<OtlpConfig>,
    /// RocketMQ's own message trace, written to its trace topic.
    pub rocketmq_trace: Option<RocketmqTraceConfig>,
    pub request_timeout: Duration,
    pub flush_timeout: Duration,
    pub metrics_address: SocketAddr,
    pub control_socket: PathBuf,
    pub control_group: Option<String>,
    pub journal_messages: usize,
    /// Where the rules set with enable/disable are kept, to apply them again at a restart.
    pub state_file: PathBuf,
    /// The memory budget, shared out.
    pub memory: Shares,
    /// `/healthz` fails once the pipeline has not advanced for this long.
    pub health_stall: Duration,
    /// Spans from the broker's side of its connections (else not decoded nor copied).
    pub broker_spans: bool,
    /// Stop a process at exec until its TLS probes are placed.
    pub hold_at_exec: bool,
}

struct Daemon<C> {
    capture: C,
    /// Sockets forgotten by the sweeps, and when and at what table-full count the last ran.
    stale_sockets_swept: u64,
    last_sweep: (Instant, u64),
    pipeline: Pipeline,
    spans: SpanThread,
    rules: Rules,
    state_file: PathBuf,
    started: Instant,
    metrics_address: SocketAddr,
    handover: HandoverCounters,
    /// The agent this one took over from, while it runs (and this one sees it in its /proc).
    predecessor: Option<u32>,
    /// The newer agent this one handed over to, and whether this one sees it in its /proc
    /// (the same pid namespace) to notice when it exits.
    successor: Option<(u32, bool)>,
}

/// Runs the daemon on the kernel's capture until Ctrl-C or SIGTERM.
pub async fn run(options: DaemonOptions) -> anyhow::Result<()> {
    crate::listeners::raise_open_files_limit();
    let capture = KernelCapture::start(CaptureOptions {
        trace_all: options.trace_all,
        max_bytes_per_syscall: options.max_bytes_per_syscall,
        ring_buffer_bytes: options.ring_buffer_bytes,
        hold_at_exec: options.hold_at_exec,
    })?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    };
    serve(capture, &options, stop).await
}

/// Runs the daemon on `capture` until `stop` completes.
pub async fn serve(
    mut capture: impl Capture,
    options: &DaemonOptions,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut rules = Rules::default();
    for target in &options.startup {
        rules.apply(&mut capture, target, true)?;
    }
    // The rules of the last run are the later word.
    match load_rules(&options.state_file) {
        Ok(saved) if !saved.is_empty() => {
            let (applied, skipped) = rules.restore(&mut capture, &saved);
            tracing::info!(applied, state_file = %options.state_file.display(), "rules of the last run applied again");
            for reason in skipped {
                tracing::info!(%reason, "a rule of the last run not applied");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!("{error:#}"),
    }
    let metrics = Snapshot::default();
    let health = Health::new(options.health_stall);
    health.beat();
    let metrics_server = metrics::serve(options.metrics_address, metrics.clone(), health.clone())?;
    let mut pipeline = Pipeline::with_request_timeout(
        DecoderConfig {
            skip_server_side: !options.broker_spans,
            ..DecoderConfig::default()
        },
        unix_minus_monotonic_ns(),
        HostResources::new(),
        options.request_timeout.as_nanos().max(1) as u64,
    );
    pipeline.set_memory(&options.memory, options.journal_messages);
    let stage = pipeline
        .detach_spans()
        .context("the pipeline's span stage is taken already")?;
    let sinks = SpanSinks::new(
        options.output.as_deref(),
        Destinations {
            otlp: options.otlp.clone(),
            rocketmq_trace: options.rocketmq_trace.clone(),
        },
    )?;
    let spans = SpanThread::spawn(stage, sinks)?;
    // Last, once nothing else can fail: a running agent asked to hand over traces no more of
    // what this one would then miss. This agent's control socket replaces that one's.
    let predecessor = handover::ask_running(&options.control_socket);
    let (_socket, mut requests) = server::serve(
        &options.control_socket,
        options.control_group.as_deref(),
        !matches!(predecessor, Predecessor::None),
    )?;
    let mut daemon = Daemon {
        capture,
        pipeline,
        spans,
        rules,
        state_file: options.state_file.clone(),
        started: Instant::now(),
        stale_sockets_swept: 0,
        last_sweep: (Instant::now(), 0),
        metrics_address: metrics_server.address,
        handover: HandoverCounters::default(),
        successor: None,
        predecessor: None,
    };
    daemon.took_over(predecessor);
    let what = if options.trace_all {
        "all processes".to_string()
    } else if options.startup.is_empty() {
        "nothing yet (select with `mqtrace enable`)".to_string()
    } else {
        let targets: Vec<String> = options.startup.iter().map(Target::to_string).collect();
        targets.join(", ")
    };
    // Every counter is on /metrics from the moment the agent says it traces, not from the
    // loop's first tick on.
    metrics.update(&daemon.counters()?);
    eprintln!(
        "mqtrace: tracing {what}; control socket {}; metrics on http://{}/metrics; Ctrl-C to \
         stop",
        options.control_socket.display(),
        metrics_server.address
    );
    let mut problems = ProblemLog::new(PROBLEM_LOG_INTERVAL);
    let (mut events, mut outputs) = (Vec::new(), Vec::new());
    let mut stats = tokio::time::interval(options.stats_interval.max(Duration::from_secs(1)));
    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            result = daemon.capture.next_events(&mut events) => result?,
            Some(pending) = requests.recv() => {
                let response = daemon.answer(pending.request);
                let _ = pending.reply.send(response);
            }
            _ = expiry.tick() => {
                daemon.sweep_if_due()?;
                daemon.check_successor();
                daemon.check_predecessor();
                daemon.pipeline.capture_lost(daemon.capture.records_lost()?);
                // Spans carry Unix time as the wall clock says it now, not as it did at start.
                daemon.pipeline.set_clock_offset(unix_minus_monotonic_ns());
                daemon.pipeline.expire(monotonic_ns(), &mut outputs);
                let counters = daemon.counters()?;
                metrics.update(&counters);
                log_problems(&problems.check(&counters, Instant::now()));
            }
            _ = stats.tick() => tracing::info!(counters = %daemon.counters()?, "stats"),
            () = &mut stop => break,
        }
        daemon.handle(&mut events, &mut outputs)?;
        health.beat();
    }
    if daemon.successor.is_some() {
        daemon.finish_owned(&mut events, &mut outputs).await?;
    }
    // What the kernel captured before the stop is still traced; requests still waiting then
    // will not be answered now: end them, then flush.
    daemon.capture.drain_now(&mut events);
    for event in events.drain(..) {
        daemon.pipeline.push(event, &mut outputs);
    }
    daemon.pipeline.capture_lost(daemon.capture.records_lost()?);
    daemon.pipeline.finish(Unseen::AgentStopped, &mut outputs);
    export(&mut outputs, &daemon.spans);
    daemon.spans.finish()?;
    eprintln!("mqtrace: stopping; counters {}", daemon.counters()?);
    let Daemon { capture, spans, .. } = daemon;
    drop(capture); // detaches the probes
    let exported = spans.into_sinks()?.shutdown(options.flush_timeout).await?;
    eprintln!(
        "mqtrace: stopped; export {}",
        serde_json::to_string(&exported)?
    );
    Ok(())
}

impl<C: Capture> Daemon<C> {
    /// Events captured go through the pipeline, the events made to the span thread.
    fn handle(
        &mut self,
        events: &mut Vec<crate::sources::SourceEvent>,
        outputs: &mut Vec<Output>,
    ) -> anyhow::Result<()> {
        if !events.is_empty() {
            // Losses no record has told of yet: connections ended without a close record (a
            // process's exit, a sweep) must not take a lost answer for none.
            self.pipeline.capture_lost(self.capture.records_lost()?);
        }
        for event in events.drain(..) {
            self.pipeline.push(event, outputs);
        }
        export(outputs, &self.spans);
        for connection in self.pipeline.take_rejected() {
            // Not RocketMQ, or the broker's side: the kernel stops copying it.
            self.capture.stop_copying(&connection)?;
        }
        Ok(())
    }

    /// What the agent running when this one started agreed to, in force and said.
    fn took_over(&mut self, predecessor: Predecessor) {
        match predecessor {
            Predecessor::None => {}
            Predecessor::HandedOver {
                pid,
                version,
                from_ns,
                known,
            } => {
                self.pipeline.take_over_at(from_ns);
                self.pipeline.learn_serving_processes(&known);
                if process_visible(pid) {
                    self.predecessor = Some(pid);
                    self.pipeline.set_predecessor_running(true);
                }
                self.handover.taken_over = 1;
                tracing::info!(
                    pid,
                    %version,
                    serving = ?known.serving,
                    "took over from the running agent: it traces the requests made before, \
                     this one those made from now on"
                );
            }
            Predecessor::Refused(reason) => {
                self.handover.refused += 1;
                tracing::warn!(
                    %reason,
                    "the running agent did not hand over: both trace everything until it \
                     stops, so messages sent meanwhile may be traced twice"
                );
            }
        }
    }

    /// A newer agent traces the requests made from `from_ns` on; this one those before.
    fn hand_over(
        &mut self,
        protocol: u32,
        successor_pid: u32,
        from_ns: u64,
    ) -> anyhow::Result<Response> {
        if protocol != HANDOVER_PROTOCOL {
            anyhow::bail!(
                "this agent (version {}) hands over by protocol {HANDOVER_PROTOCOL}, not \
                 {protocol}",
                env!("CARGO_PKG_VERSION")
            );
        }
        if let Some((pid, _)) = self.successor {
            anyhow::bail!("this agent has handed over to pid {pid} already");
        }
        // Requests this agent has already traced may have begun after `from_ns`: it hands
        // over from now, which the newer agent, capturing since before `from_ns`, then takes.
        let now = monotonic_ns();
        if now.saturating_sub(from_ns) > handover::ANSWER_TIMEOUT.as_nanos() as u64 {
            anyhow::bail!("the hand-over was asked for too long ago: its asker has given up");
        }
        let from_ns = from_ns.max(now);
        self.pipeline.hand_over_at(from_ns);
        // The newer agent holds new processes until its probes are placed; this one would
        // continue them before.
        if let Err(error) = self.capture.hold_at_exec(false) {
            tracing::warn!(
                error = format!("{error:#}"),
                "processes may still be held at exec"
            );
        }
        self.successor = Some((successor_pid, process_visible(successor_pid)));
        self.handover.handed_over = 1;
        tracing::info!(
            successor_pid,
            "handed over to a newer agent: tracing only the requests made before; stop this \
             one (it waits for those first)"
        );
        Ok(Response::HandedOver {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            from_ns,
            known: self.pipeline.serving_processes(),
        })
    }

    /// The agent this one handed over to has exited (it failed, or was stopped): this one
    /// traces the requests made from now on again.
    fn check_successor(&mut self) {
        let Some((pid, true)) = self.successor else {
            return;
        };
        if process_visible(pid) {
            return;
        }
        self.successor = None;
        // What it began before it exited was its own: it may have ended those, as unseen.
        self.pipeline.take_back_at(monotonic_ns());
        if let Err(error) = self.capture.hold_at_exec(true) {
            tracing::warn!(
                error = format!("{error:#}"),
                "processes are not held at exec"
            );
        }
        self.handover.taken_back += 1;
        tracing::warn!(
            pid,
            "the agent this one handed over to has exited: this one traces the requests made \
             from now on (what that agent had not finished is lost)"
        );
    }

    /// The agent this one took over from has exited: messages it saw received and this one
    /// did not are settled here now, by their ID where the settlement names it.
    fn check_predecessor(&mut self) {
        if self.predecessor.is_some_and(|pid| !process_visible(pid)) {
            self.predecessor = None;
            self.pipeline.set_predecessor_running(false);
        }
    }

    /// Handed over and stopping: reads on until the requests this agent owns are answered, or
    /// for at most [`handover::DRAIN_LIMIT`].
    async fn finish_owned(
        &mut self,
        events: &mut Vec<crate::sources::SourceEvent>,
        outputs: &mut Vec<Output>,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + handover::DRAIN_LIMIT;
        while self.pipeline.waiting_owned() > 0 {
            tokio::select! {
                result = self.capture.next_events(events) => result?,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
            // A request past its timeout ends here as it would have running.
            self.pipeline.expire(monotonic_ns(), outputs);
            self.handle(events, outputs)?;
        }
        self.handover.unfinished_at_stop = self.pipeline.waiting_owned() as u64;
        Ok(())
    }

    /// Sweeps the socket table every SWEEP_INTERVAL, and at once when it was found full.
    fn sweep_if_due(&mut self) -> anyhow::Result<()> {
        let full = self.capture.counters()?.get(Counter::SocketTableFull);
        let (at, full_then) = self.last_sweep;
        if at.elapsed() >= SWEEP_INTERVAL || full > full_then {
            self.stale_sockets_swept += self.capture.sweep_stale_sockets()? as u64;
            self.last_sweep = (Instant::now(), full);
        }
        Ok(())
    }

    fn answer(&mut self, request: Request) -> Response {
        let result = match request {
            Request::Enable { target } => self.apply(target, true),
            Request::Disable { target } => self.apply(target, false),
            Request::List => self.rules.listing(&self.capture).map(Response::Listing),
            Request::Status => self.counters().map(|counters| {
                Response::Status(Status {
                    version: env!("CARGO_PKG_VERSION").into(),
                    pid: std::process::id(),
                    uptime_seconds: self.started.elapsed().as_secs(),
                    mode: mode_name(self.capture.trace_all()).into(),
                    metrics_address: Some(self.metrics_address),
                    counters,
                })
            }),
            Request::Trace { query } => Ok(Response::Journeys {
                journeys: self.spans.journeys(&query),
            }),
            Request::HandOver {
                protocol,
                successor_pid,
                from_ns,
            } => self.hand_over(protocol, successor_pid, from_ns),
        };
        result.unwrap_or_else(|error| Response::Error {
            message: format!("{error:#}"),
        })
    }

    fn apply(&mut self, target: Target, enabled: bool) -> anyhow::Result<Response> {
        let applied = self.rules.apply(&mut self.capture, &target, enabled)?;
        if let Err(error) = save_rules(&self.state_file, &self.rules.saved()) {
            // The rule is in force; only a restart would lose it.
            tracing::warn!("{error:#}");
        }
        tracing::info!(%target, enabled, processes = ?applied.processes, "selection changed");
        Ok(Response::Applied {
            target,
            enabled,
            processes: applied.processes,
            note: applied.note,
        })
    }

    /// Every counter of the agent, by stage: what `status` and `/metrics` show.
    fn counters(&self) -> anyhow::Result<serde_json::Value> {
        let sockets = self.capture.sockets_per_process()?;
        let selections = self.capture.selections()?;
        let excluded = selections
            .values()
            .filter(|s| **s == Selection::Excluded)
            .count();
        let (spans, journal, export) = self.spans.counters();
        let mut pipeline = self.pipeline.counters();
        pipeline.spans = spans;
        pipeline.journal = journal;
        let tree = CounterTree {
            agent: AgentCounters {
                uptime_seconds: self.started.elapsed().as_secs(),
                processes_selected: selections.len() - excluded,
                processes_excluded: excluded,
                connections_tracked: sockets.values().sum::<usize>(),
                stale_sockets_swept: self.stale_sockets_swept,
                malformed_records: self.capture.malformed_records(),
                non_tcp_sockets: self.capture.non_tcp_sockets(),
                tls: self.capture.tls_counters(),
                handover: self.handover.clone(),
            },
            kernel: self.capture.counters()?.0,
            pipeline,
            export,
        };
        Ok(serde_json::to_value(tree)?)
    }
}

/// The rules a previous run kept (none when there is no state file yet).
fn load_rules(path: &Path) -> anyhow::Result<Vec<SavedRule>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("reading the rules in {}", path.display()));
        }
    };
    serde_json::from_str(&text)
        .with_context(|| format!("the rules in {} are not readable; ignored", path.display()))
}

/// Writes the rules in force, whole or not at all (a temporary file renamed over the old).
fn save_rules(path: &Path, rules: &[SavedRule]) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, serde_json::to_vec_pretty(rules)?)
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(|| format!("keeping the rules in {}", path.display()))
}

/// Whether `pid` runs in this agent's pid namespace.
fn process_visible(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Hands the pipeline's message events to the span thread.
fn export(outputs: &mut Vec<Output>, spans: &SpanThread) {
    spans.send(outputs.drain(..).filter_map(|output| match output {
        Output::Event(event, resource) => Some((event, resource)),
        _ => None,
    }));
}

/// What to add to a CLOCK_MONOTONIC time (the kernel's record stamps) to get Unix time: of a
/// few readings of Unix time between two monotonic ones, the most tightly bracketed, so that a
/// preemption between two clock reads does not shift every span's time by its length.
fn unix_minus_monotonic_ns() -> i64 {
    (0..5)
        .map(|_| {
            let before = monotonic_ns() as i64;
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64);
            let after = monotonic_ns() as i64;
            (after - before, unix - (before + (after - before) / 2))
        })
        .min_by_key(|&(window, _)| window)
        .map_or(0, |(_, offset)| offset)
}

#[cfg(test)]
mod tests;
