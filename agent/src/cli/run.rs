//! `mqtrace run`: the live pipeline on this host.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use mqtrace_common::{DEFAULT_MAX_BYTES_PER_SYSCALL, MAX_BYTES_PER_SYSCALL_LIMIT};

use crate::{
    config::FileConfig,
    decoder::DecoderConfig,
    exporters::{
        SpanSinks,
        otlp::{OtlpConfig, Protocol, endpoint_from_env},
    },
    metrics::{self, Snapshot},
    pipeline::{Output, Pipeline},
    sources::kernel::{CaptureOptions, KernelCapture, monotonic_ns},
    spans::resource::Resources,
};

#[derive(Args)]
pub struct RunArgs {
    /// A TOML file with any of the options below (same names, `_` for `-`); flags and their
    /// environment variables win over it.
    #[arg(long, value_name = "FILE", env = "MQTRACE_CONFIG")]
    config: Option<PathBuf>,
    /// Trace these processes (repeatable). Their open connections are picked up at once.
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Trace every process on the host except mqtrace itself.
    #[arg(long, conflicts_with = "pids", env = "MQTRACE_ALL")]
    all: bool,
    /// Payload bytes copied per syscall at most; the rest is reported as a gap [default: 262144].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..=MAX_BYTES_PER_SYSCALL_LIMIT as i64))]
    max_bytes_per_syscall: Option<u32>,
    /// Kernel ring buffer size in bytes, a power of two: more absorbs longer bursts
    /// [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    ring_buffer_bytes: Option<u32>,
    /// Print the counters (to stderr) this often [default: 10].
    #[arg(long, value_name = "SECONDS")]
    stats_interval: Option<u64>,
    /// Write spans to FILE as JSON lines (one object per span).
    #[arg(long, value_name = "FILE", env = "MQTRACE_OUTPUT")]
    output: Option<PathBuf>,
    /// Export spans over OTLP to this endpoint (e.g. http://127.0.0.1:4317 for gRPC).
    /// Default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT. Without any
    /// endpoint and without --output, spans are printed, one line each.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// OTLP transport: grpc or http/protobuf. Default: OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL,
    /// else grpc.
    #[arg(long, value_name = "PROTOCOL")]
    otlp_protocol: Option<Protocol>,
    /// A request without a response after this long ends as an error span ("timeout"); long
    /// polls get their own suspend time on top [default: 30].
    #[arg(long, value_name = "SECONDS")]
    request_timeout: Option<u64>,
    /// At shutdown, how long pending spans may take to reach the collector [default: 5].
    #[arg(long, value_name = "SECONDS")]
    flush_timeout: Option<u64>,
    /// Serve /metrics (Prometheus) and /healthz here [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDRESS", env = "MQTRACE_METRICS_ADDRESS")]
    metrics_address: Option<SocketAddr>,
}

/// The options in force: flag (or environment) over file over default.
struct Settings {
    all: bool,
    pids: Vec<u32>,
    max_bytes_per_syscall: u32,
    ring_buffer_bytes: u32,
    stats_interval: u64,
    output: Option<PathBuf>,
    otlp: Option<OtlpConfig>,
    request_timeout: u64,
    flush_timeout: u64,
    metrics_address: SocketAddr,
}

impl Settings {
    fn resolve(args: RunArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let otlp_protocol = match (args.otlp_protocol, &file.otlp_protocol) {
            (Some(p), _) => p,
            (None, Some(name)) => Protocol::from_str(name, false).map_err(|_| {
                anyhow::anyhow!("otlp_protocol = {name:?}: expected \"grpc\" or \"http/protobuf\"")
            })?,
            (None, None) => Protocol::from_env(),
        };
        let endpoint = args
            .otlp_endpoint
            .or_else(endpoint_from_env)
            .or(file.otlp_endpoint);
        let settings = Self {
            all: args.all || (args.pids.is_empty() && file.all.unwrap_or(false)),
            pids: if args.pids.is_empty() {
                file.pids.unwrap_or_default()
            } else {
                args.pids
            },
            max_bytes_per_syscall: args
                .max_bytes_per_syscall
                .or(file.max_bytes_per_syscall)
                .unwrap_or(DEFAULT_MAX_BYTES_PER_SYSCALL),
            ring_buffer_bytes: args
                .ring_buffer_bytes
                .or(file.ring_buffer_bytes)
                .unwrap_or(16 << 20),
            stats_interval: args.stats_interval.or(file.stats_interval).unwrap_or(10),
            output: args.output.or(file.output),
            otlp: endpoint.map(|endpoint| OtlpConfig {
                protocol: otlp_protocol,
                endpoint: Some(endpoint),
                ..OtlpConfig::default()
            }),
            request_timeout: args.request_timeout.or(file.request_timeout).unwrap_or(30),
            flush_timeout: args.flush_timeout.or(file.flush_timeout).unwrap_or(5),
            metrics_address: args
                .metrics_address
                .or(file.metrics_address)
                .unwrap_or(([127, 0, 0, 1], 9464).into()),
        };
        if !settings.all && settings.pids.is_empty() {
            anyhow::bail!(
                "say what to trace: --all, or --pid PID (repeatable), or all/pids in the config file"
            );
        }
        Ok(settings)
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(live(settings))
}

async fn live(args: Settings) -> anyhow::Result<()> {
    let mut capture = KernelCapture::start(CaptureOptions {
        trace_all: args.all,
        max_bytes_per_syscall: args.max_bytes_per_syscall,
        ring_buffer_bytes: args.ring_buffer_bytes,
    })?;
    for &pid in &args.pids {
        capture.select(pid)?;
    }
    let mut spans = SpanSinks::new(args.output.as_deref(), args.otlp.clone())?;
    let metrics = Snapshot::default();
    metrics::serve(args.metrics_address, metrics.clone()).await?;
    eprintln!(
        "mqtrace: tracing {}; Ctrl-C to stop",
        if args.all {
            "all processes".to_string()
        } else {
            format!("pids {:?}", args.pids)
        }
    );
    let mut pipeline = Pipeline::with_request_timeout(
        DecoderConfig::default(),
        unix_minus_monotonic_ns(),
        Resources::new(),
        args.request_timeout.max(1) * 1_000_000_000,
    );
    let (mut events, mut outputs) = (Vec::new(), Vec::new());
    let mut stats = tokio::time::interval(Duration::from_secs(args.stats_interval.max(1)));
    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            result = capture.next_events(&mut events) => result?,
            _ = expiry.tick() => {
                pipeline.expire(monotonic_ns(), &mut outputs);
                metrics.update(&counters(&capture, &pipeline, &spans)?);
            }
            _ = stats.tick() => print_stats(&capture, &pipeline, &spans)?,
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
        for event in events.drain(..) {
            pipeline.push(event, &mut outputs);
        }
        export(&mut outputs, &mut spans)?;
        for connection in pipeline.take_rejected() {
            // Not RocketMQ: the kernel stops copying it.
            capture.stop_copying(connection.pid, connection.fd)?;
        }
    }
    // Requests still waiting will not be answered now: end them, then flush.
    pipeline.finish(&mut outputs);
    export(&mut outputs, &mut spans)?;
    print_stats(&capture, &pipeline, &spans)?;
    drop(capture); // detaches the probes
    let exported = spans
        .shutdown(Duration::from_secs(args.flush_timeout))
        .await?;
    eprintln!(
        "mqtrace: stopped; export {}",
        serde_json::to_string(&exported)?
    );
    Ok(())
}

/// Hands the pipeline's spans to their destinations.
fn export(outputs: &mut Vec<Output>, spans: &mut SpanSinks) -> anyhow::Result<()> {
    for output in outputs.drain(..) {
        if let Output::Span(span) = output {
            spans.export(*span)?;
        }
    }
    spans.flush()
}

/// Every counter of the agent, by stage.
fn counters(
    capture: &KernelCapture,
    pipeline: &Pipeline,
    spans: &SpanSinks,
) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::json!({
        "kernel": capture.counters()?.0,
        "pipeline": pipeline.counters(),
        "export": spans.counters(),
    }))
}

fn print_stats(
    capture: &KernelCapture,
    pipeline: &Pipeline,
    spans: &SpanSinks,
) -> anyhow::Result<()> {
    eprintln!("stats {}", counters(capture, pipeline, spans)?);
    Ok(())
}

/// What to add to a CLOCK_MONOTONIC time (the kernel's record stamps) to get Unix time.
fn unix_minus_monotonic_ns() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    unix - monotonic_ns() as i64
}
