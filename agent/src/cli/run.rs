//! `mqtrace run`: the live pipeline on this host.

use std::time::Duration;

use clap::Args;
use mqtrace_common::{DEFAULT_MAX_BYTES_PER_SYSCALL, MAX_BYTES_PER_SYSCALL_LIMIT};

use crate::{
    decoder::{DecoderConfig, Decoders},
    sources::kernel::{CaptureOptions, KernelCapture},
    streams::Streams,
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
    /// Print the counters this often.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    stats_interval: u64,
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
    eprintln!(
        "mqtrace: tracing {}; Ctrl-C to stop",
        if args.all {
            "all processes".to_string()
        } else {
            format!("pids {:?}", args.pids)
        }
    );
    let mut streams = Streams::new();
    let mut decoders = Decoders::new(DecoderConfig::default());
    let (mut events, mut stream_events, mut commands) = (Vec::new(), Vec::new(), Vec::new());
    let mut stats = tokio::time::interval(Duration::from_secs(args.stats_interval.max(1)));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            result = capture.next_events(&mut events) => result?,
            _ = stats.tick() => {
                print_stats(&capture, &streams, &decoders)?;
                continue;
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
        for event in events.drain(..) {
            streams.push(event, &mut stream_events);
            for event in stream_events.drain(..) {
                decoders.push(&event, &mut commands);
            }
        }
        for command in commands.drain(..) {
            println!("{}", super::command_line(&command));
        }
        for connection in decoders.take_rejected() {
            // Not RocketMQ: the kernel stops copying it.
            capture.stop_copying(connection.pid, connection.fd)?;
        }
    }
    print_stats(&capture, &streams, &decoders)
}

fn print_stats(
    capture: &KernelCapture,
    streams: &Streams,
    decoders: &Decoders,
) -> anyhow::Result<()> {
    let stats = serde_json::json!({
        "kernel": capture.counters()?.0,
        "streams": streams.counters,
        "decoder": decoders.counters(),
        "connections_not_rocketmq": decoders.connections_rejected,
    });
    println!("stats {stats}");
    Ok(())
}
