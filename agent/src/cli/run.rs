//! `mqtrace run`: the live pipeline on this host.

use std::{collections::HashMap, time::Duration};

use clap::Args;
use mqtrace_common::{DEFAULT_MAX_BYTES_PER_SYSCALL, MAX_BYTES_PER_SYSCALL_LIMIT};

use crate::{
    sources::{
        ConnectionId,
        kernel::{CaptureOptions, KernelCapture, describe},
    },
    streams::{StreamEvent, Streams},
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

/// Bytes seen per connection, for the summary line at close.
#[derive(Default)]
struct Tally {
    label: String,
    bytes: [u64; 2],
    gaps: u64,
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
    let mut tallies: HashMap<ConnectionId, Tally> = HashMap::new();
    let mut events = Vec::new();
    let mut out = Vec::new();
    let mut stats = tokio::time::interval(Duration::from_secs(args.stats_interval.max(1)));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            result = capture.next_events(&mut events) => result?,
            _ = stats.tick() => {
                println!("stats {}", serde_json::to_string(&capture.counters()?.0)?);
                continue;
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
        for event in events.drain(..) {
            out.clear();
            streams.push(event, &mut out);
            for event in &out {
                report(event, &mut tallies);
            }
        }
    }
    println!("stats {}", serde_json::to_string(&capture.counters()?.0)?);
    println!("streams {}", serde_json::to_string(&streams.counters)?);
    Ok(())
}

fn report(event: &StreamEvent, tallies: &mut HashMap<ConnectionId, Tally>) {
    match event {
        StreamEvent::Opened(c) => {
            let label = format!(
                "pid {} fd {} {:?} peer {}",
                c.pid,
                c.fd,
                c.origin,
                describe(c.peer)
            );
            println!("open  {label}");
            tallies.insert(
                c.id,
                Tally {
                    label,
                    ..Tally::default()
                },
            );
        }
        StreamEvent::Data {
            connection,
            direction,
            bytes,
            ..
        } => {
            tallies.entry(*connection).or_default().bytes[*direction as usize] +=
                bytes.len() as u64;
        }
        StreamEvent::Gap { connection, .. } => tallies.entry(*connection).or_default().gaps += 1,
        StreamEvent::Closed { connection, .. } => {
            if let Some(t) = tallies.remove(connection) {
                println!(
                    "close {} sent {} received {} gaps {}",
                    t.label, t.bytes[0], t.bytes[1], t.gaps
                );
            }
        }
    }
}
