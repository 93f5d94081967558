//! `mqtrace run`: the live pipeline on this host.

use std::time::Duration;

use clap::Args;
use mqtrace_common::{DEFAULT_MAX_BYTES_PER_SYSCALL, MAX_BYTES_PER_SYSCALL_LIMIT};

use crate::{
    decoder::DecoderConfig,
    exporters::{
        SpanSinks,
        otlp::{OtlpConfig, Protocol, endpoint_from_env},
    },
    pipeline::{Output, Pipeline},
    sources::kernel::{CaptureOptions, KernelCapture, monotonic_ns},
    spans::resource::Resources,
};

#[derive(Args)]
pub struct RunArgs {
    /// Trace these processes (repeatable). Their open connections are picked up at once.
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Trace every process on the host except mqtrace itself.
    #[arg(long, conflicts_with = "pids")]
    all: bool,
    /// Payload bytes copied per syscall at most; the rest is reported as a gap.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BYTES_PER_SYSCALL,
          value_parser = clap::value_parser!(u32).range(1..=MAX_BYTES_PER_SYSCALL_LIMIT as i64))]
    max_bytes_per_syscall: u32,
    /// Kernel ring buffer size in bytes (a power of two): more absorbs longer bursts.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    ring_buffer_bytes: u32,
    /// Print the counters (to stderr) this often.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    stats_interval: u64,
    /// Write spans to FILE as JSON lines (one object per span).
    #[arg(long, value_name = "FILE")]
    output: Option<std::path::PathBuf>,
    /// Export spans over OTLP to this endpoint (e.g. http://127.0.0.1:4317 for gRPC).
    /// Default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT. Without any
    /// endpoint and without --output, spans are printed, one line each.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// OTLP transport. Default: OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL, else grpc.
    #[arg(long, value_name = "PROTOCOL")]
    otlp_protocol: Option<Protocol>,
    /// A request without a response after this long ends as an error span ("timeout"). Long
    /// polls get their own suspend time on top.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    request_timeout: u64,
    /// At shutdown, how long pending spans may take to reach the collector.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    flush_timeout: u64,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    if !args.all && args.pids.is_empty() {
        anyhow::bail!("say what to trace: --all, or --pid PID (repeatable)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(live(args))
}

async fn live(args: RunArgs) -> anyhow::Result<()> {
    let mut capture = KernelCapture::start(CaptureOptions {
        trace_all: args.all,
        max_bytes_per_syscall: args.max_bytes_per_syscall,
        ring_buffer_bytes: args.ring_buffer_bytes,
    })?;
    for &pid in &args.pids {
        capture.select(pid)?;
    }
    let otlp = args
        .otlp_endpoint
        .clone()
        .or_else(endpoint_from_env)
        .map(|endpoint| OtlpConfig {
            protocol: args.otlp_protocol.unwrap_or_else(Protocol::from_env),
            endpoint: Some(endpoint),
            ..OtlpConfig::default()
        });
    let mut spans = SpanSinks::new(args.output.as_deref(), otlp)?;
    eprintln!(
        "mqtrace: tracing {}; Ctrl-C to stop",
        if args.all {
            "all processes".to_string()
        } else {
            format!("pids {:?}", args.pids)
        }
    );
    let mut pipeline = Pipeline::new(
        DecoderConfig::default(),
        unix_minus_monotonic_ns(),
        Resources::new(),
    );
    let (mut events, mut outputs) = (Vec::new(), Vec::new());
    let mut stats = tokio::time::interval(Duration::from_secs(args.stats_interval.max(1)));
    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            result = capture.next_events(&mut events) => result?,
            _ = expiry.tick() => pipeline.expire(monotonic_ns(), &mut outputs),
            _ = stats.tick() => print_stats(&capture, &pipeline, &spans)?,
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
        for event in events.drain(..) {
            pipeline.push(event, &mut outputs);
        }
        for output in outputs.drain(..) {
            if let Output::Span(span) = output {
                spans.export(*span)?;
            }
        }
        spans.flush()?;
        for connection in pipeline.take_rejected() {
            // Not RocketMQ: the kernel stops copying it.
            capture.stop_copying(connection.pid, connection.fd)?;
        }
    }
    // Requests still waiting will not be answered now: end them, then flush.
    pipeline.finish(&mut outputs);
    for output in outputs.drain(..) {
        if let Output::Span(span) = output {
            spans.export(*span)?;
        }
    }
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

fn print_stats(
    capture: &KernelCapture,
    pipeline: &Pipeline,
    spans: &SpanSinks,
) -> anyhow::Result<()> {
    let stats = serde_json::json!({
        "kernel": capture.counters()?.0,
        "pipeline": pipeline.counters(),
        "export": spans.counters(),
    });
    eprintln!("stats {stats}");
    Ok(())
}

/// What to add to a CLOCK_MONOTONIC time (the kernel's record stamps) to get Unix time.
fn unix_minus_monotonic_ns() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    unix - monotonic_ns() as i64
}
