//! `mqtrace run`: the live pipeline on this host.

use crate::memory::{DEFAULT_BUDGET_MIB, Shares};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;
use mqtrace_common::{DEFAULT_MAX_BYTES_PER_SYSCALL, MAX_BYTES_PER_SYSCALL_LIMIT};

use crate::{
    config::FileConfig,
    control::{DEFAULT_SOCKET, Target},
    daemon::{self, DaemonOptions},
    exporters::{
        otlp::{self, OtlpConfig, OtlpLayer, Protocol},
        rocketmq_trace::{RocketmqTraceConfig, View},
    },
    journeys::DEFAULT_MAX_MESSAGES,
};

#[derive(Args)]
#[command(after_long_help = "\
Modes: without --pid, --comm or --cgroup every process is traced (but mqtrace itself); with any
of them, or with --only-selected, only the selected ones. Either way `mqtrace enable` and
`mqtrace disable` change the selection while the daemon runs.

Every option can also be set in the --config file (TOML, the same names with `_` for `-`, e.g.
`ring_buffer_bytes = 33554432`, `pids = [1234]`, `comms = [\"java\"]`). One rule for every
setting: a flag wins over its environment variable (MQTRACE_* or OTEL_EXPORTER_OTLP_*), which
wins over the file, which wins over the default.

Examples:
  mqtrace run                                  trace every RocketMQ client on this host
  mqtrace run --comm java --otlp-endpoint http://collector:4317
  mqtrace run --only-selected --output /var/log/mqtrace/spans.jsonl
")]
pub struct RunArgs {
    /// A TOML file with any of the options below (same names, `_` for `-`); flags and
    /// environment variables win over it.
    #[arg(long, value_name = "FILE", env = "MQTRACE_CONFIG")]
    config: Option<PathBuf>,
    /// Trace this process (repeatable). Its open connections are picked up at once.
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Trace every process with this command name (as in /proc/PID/comm, e.g. java),
    /// including those started later (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    comms: Vec<String>,
    /// Trace every process in this cgroup (v2) or below it, including those started later
    /// (repeatable). A path under the cgroup mount or as /proc/PID/cgroup shows it.
    #[arg(long = "cgroup", value_name = "PATH")]
    cgroups: Vec<String>,
    /// Trace every process on the host except mqtrace itself (the default without --pid,
    /// --comm or --cgroup).
    #[arg(long, conflicts_with_all = ["pids", "comms", "cgroups", "only_selected"], env = "MQTRACE_ALL")]
    all: bool,
    /// Start tracing nothing; select processes later with `mqtrace enable`.
    #[arg(long)]
    only_selected: bool,
    /// Payload bytes copied per syscall at most; the rest is reported as a gap [default: 262144].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..=MAX_BYTES_PER_SYSCALL_LIMIT as i64))]
    max_bytes_per_syscall: Option<u32>,
    /// Kernel ring buffer size in bytes, a power of two: more absorbs longer bursts
    /// [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    ring_buffer_bytes: Option<u32>,
    /// Log all counters (at info level: MQTRACE_LOG=info) this often [default: 10].
    #[arg(long, value_name = "SECONDS")]
    stats_interval: Option<u64>,
    /// Write spans to FILE as JSON lines (one object per span).
    #[arg(long, value_name = "FILE", env = "MQTRACE_OUTPUT")]
    output: Option<PathBuf>,
    /// Export spans over OTLP to this collector (e.g. http://127.0.0.1:4317 for gRPC,
    /// http://127.0.0.1:4318 for HTTP, which gets /v1/traces appended; https:// for TLS).
    /// Else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as given), OTEL_EXPORTER_OTLP_ENDPOINT or
    /// the file's otlp_endpoint. Without any endpoint, --output or RocketMQ trace, spans are
    /// printed, one line each. Request headers (tenant, API key): OTEL_EXPORTER_OTLP_(TRACES_)HEADERS,
    /// `key1=value1,key2=value2`.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// OTLP transport: grpc or http/protobuf. Else OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL, the
    /// file's otlp_protocol, or grpc.
    #[arg(long, value_name = "PROTOCOL")]
    otlp_protocol: Option<Protocol>,
    /// A PEM file of CA certificates to trust for an https:// collector besides the system's
    /// (a self-signed one). Else OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE or the file's
    /// otlp_certificate.
    #[arg(long, value_name = "FILE")]
    otlp_certificate: Option<PathBuf>,
    /// Also write RocketMQ's own message trace (what RocketMQ Dashboard's message trace shows)
    /// to the trace topic of the cluster whose name servers these are (`host:port`, several
    /// separated by `;`): Pub, SubBefore, SubAfter and EndTransaction records for every
    /// message traced, from any client, in TraceDataEncoder's format. A client that writes
    /// its own trace (enableTrace) is left to it: a remoting client's records wait 7 s
    /// to tell, then go in batches.
    #[arg(long, value_name = "NAMESRV")]
    rocketmq_trace_namesrv: Option<String>,
    /// The trace topic [default: RMQ_SYS_TRACE_TOPIC, which brokers started with
    /// traceTopicEnable=true create].
    #[arg(long, value_name = "TOPIC")]
    rocketmq_trace_topic: Option<String>,
    /// The region written in each record [default: DefaultRegion].
    #[arg(long, value_name = "REGION")]
    rocketmq_trace_region: Option<String>,
    /// Whose spans become records: `client` (the clients' own steps: run the agent on the
    /// application hosts) or `broker` (the brokers' view: an agent on the broker hosts alone
    /// fills the console). Choose one per cluster, or the console shows each step twice
    /// [default: client].
    #[arg(long, value_name = "VIEW")]
    rocketmq_trace_view: Option<View>,
    /// A request without a response after this long ends as an error span ("timeout"); long
    /// polls get their own suspend time on top [default: 30].
    #[arg(long, value_name = "SECONDS")]
    request_timeout: Option<u64>,
    /// At shutdown, how long pending spans may take to reach the collector [default: 5].
    #[arg(long, value_name = "SECONDS")]
    flush_timeout: Option<u64>,
    /// Serve /metrics (Prometheus) and /healthz here [default: 127.0.0.1:9464]; port 0 lets
    /// the system choose, and `mqtrace status` says which.
    #[arg(long, value_name = "ADDRESS", env = "MQTRACE_METRICS_ADDRESS")]
    metrics_address: Option<SocketAddr>,
    /// The Unix socket `mqtrace enable|disable|list|status|trace` use
    /// [default: /run/mqtrace/mqtrace.sock].
    #[arg(long, value_name = "PATH", env = "MQTRACE_SOCKET")]
    control_socket: Option<PathBuf>,
    /// Besides root, members of this group may use the control socket (mode 0660).
    #[arg(long, value_name = "GROUP")]
    control_group: Option<String>,
    /// Recent messages kept for `mqtrace trace`, the oldest forgotten first [default: 20000].
    #[arg(long, value_name = "MESSAGES")]
    journal_messages: Option<usize>,
    /// Keep the rules set with enable/disable in FILE and apply them again at start (pid
    /// rules only to the same process) [default: the control socket's path, with extension
    /// .rules.json].
    #[arg(long, value_name = "FILE", env = "MQTRACE_STATE_FILE")]
    state_file: Option<PathBuf>,
    /// Memory the agent may keep between events, in MiB: requests waiting for their answer,
    /// the messages received and sent, the journal and the OTLP queue each get a share and
    /// forget their oldest entries first beyond it (counted) [default: 256].
    #[arg(long, value_name = "MIB")]
    memory_budget_mib: Option<usize>,
    /// /healthz answers 503 once the pipeline has not advanced for this long (it advances at
    /// least once a second when idle): a stuck agent fails its liveness probe; at least 2
    /// [default: 30].
    #[arg(long, value_name = "SECONDS")]
    health_stall_seconds: Option<u64>,
    /// Make no spans from the broker's side of its connections (a traced process that
    /// receives clients' requests: store, deliver and the clients' reports), and stop copying
    /// those connections: for hosts where only the clients matter and a busy broker runs too.
    #[arg(long)]
    no_broker_spans: bool,
    /// Let a process that starts a program new to the agent run at once, instead of stopping
    /// it (SIGSTOP, once per program and cgroup; milliseconds) until its TLS probes are placed:
    /// the TLS it begins meanwhile is then not seen.
    #[arg(long)]
    no_hold_at_exec: bool,
}

/// Resolves the options in force: flag (or environment) over file over default.
fn resolve(args: RunArgs) -> anyhow::Result<DaemonOptions> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let otlp = otlp::resolve(
        &OtlpLayer {
            endpoint: args.otlp_endpoint.clone(),
            protocol: args.otlp_protocol.map(|p| p.name().to_string()),
            certificate: args.otlp_certificate.clone(),
        },
        |name| std::env::var(name).ok(),
        &OtlpLayer {
            endpoint: file.otlp_endpoint.clone(),
            protocol: file.otlp_protocol.clone(),
            certificate: file.otlp_certificate.clone(),
        },
    )?;
    let flag_targets = !(args.pids.is_empty() && args.comms.is_empty() && args.cgroups.is_empty());
    let (pids, comms, cgroups) = if flag_targets || args.all {
        (args.pids, args.comms, args.cgroups)
    } else {
        (
            file.pids.unwrap_or_default(),
            file.comms.unwrap_or_default(),
            file.cgroups.unwrap_or_default(),
        )
    };
    let startup: Vec<Target> = pids
        .into_iter()
        .map(Target::Pid)
        .chain(comms.into_iter().map(Target::Comm))
        .chain(cgroups.into_iter().map(Target::Cgroup))
        .collect();
    let only_selected = args.only_selected || file.only_selected.unwrap_or(false);
    let trace_all = args.all || (startup.is_empty() && !only_selected && file.all.unwrap_or(true));
    if trace_all && !startup.is_empty() {
        anyhow::bail!("config file: `all = true` conflicts with pids, comms and cgroups");
    }
    let memory = Shares::of(
        args.memory_budget_mib
            .or(file.memory_budget_mib)
            .unwrap_or(DEFAULT_BUDGET_MIB)
            .max(1)
            .saturating_mul(1 << 20),
    );
    Ok(DaemonOptions {
        memory,
        broker_spans: !(args.no_broker_spans || file.no_broker_spans.unwrap_or(false)),
        hold_at_exec: !(args.no_hold_at_exec || file.no_hold_at_exec.unwrap_or(false)),
        health_stall: Duration::from_secs(
            args.health_stall_seconds
                .or(file.health_stall_seconds)
                .unwrap_or(30)
                .max(2),
        ),
        trace_all,
        startup,
        max_bytes_per_syscall: args
            .max_bytes_per_syscall
            .or(file.max_bytes_per_syscall)
            .unwrap_or(DEFAULT_MAX_BYTES_PER_SYSCALL),
        ring_buffer_bytes: args
            .ring_buffer_bytes
            .or(file.ring_buffer_bytes)
            .unwrap_or(16 << 20),
        stats_interval: Duration::from_secs(
            args.stats_interval.or(file.stats_interval).unwrap_or(10),
        ),
        output: args.output.or(file.output),
        otlp: otlp.endpoint.map(|endpoint| OtlpConfig {
            certificate: otlp.certificate,
            queue_bytes: memory.export,
            ..OtlpConfig::new(otlp.protocol, endpoint)
        }),
        rocketmq_trace: args
            .rocketmq_trace_namesrv
            .or(file.rocketmq_trace_namesrv)
            .map(|name_servers| {
                let default = RocketmqTraceConfig::new(&name_servers);
                RocketmqTraceConfig {
                    topic: args
                        .rocketmq_trace_topic
                        .or(file.rocketmq_trace_topic)
                        .unwrap_or(default.topic),
                    region: args
                        .rocketmq_trace_region
                        .or(file.rocketmq_trace_region)
                        .unwrap_or(default.region),
                    view: args
                        .rocketmq_trace_view
                        .or(file.rocketmq_trace_view)
                        .unwrap_or(default.view),
                    queue_bytes: memory.export as u64,
                    ..default
                }
            }),
        request_timeout: Duration::from_secs(
            args.request_timeout.or(file.request_timeout).unwrap_or(30),
        ),
        flush_timeout: Duration::from_secs(args.flush_timeout.or(file.flush_timeout).unwrap_or(5)),
        metrics_address: args
            .metrics_address
            .or(file.metrics_address)
            .unwrap_or(([127, 0, 0, 1], 9464).into()),
        state_file: args.state_file.or(file.state_file).unwrap_or_else(|| {
            args.control_socket
                .as_ref()
                .or(file.control_socket.as_ref())
                .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), Clone::clone)
                .with_extension("rules.json")
        }),
        control_socket: args
            .control_socket
            .or(file.control_socket)
            .unwrap_or_else(|| DEFAULT_SOCKET.into()),
        control_group: args.control_group.or(file.control_group),
        journal_messages: args
            .journal_messages
            .or(file.journal_messages)
            .unwrap_or(DEFAULT_MAX_MESSAGES),
    })
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let options = resolve(args)?;
    // The daemon's loop (decoding and correlation, which are sequential) runs on this thread
    // in `block_on`; tasks it spawns, the OTLP export's batching and encoding above all, run
    // on one worker thread beside it, as spans are made on a thread of their own: on the
    // loop's thread OTLP export took half the agent's time (`ceiling-bench`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("mqtrace-export")
        .enable_all()
        .build()?;
    runtime.block_on(daemon::run(options))
}
