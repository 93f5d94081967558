//! Cost of the kernel capture on a traced application: a loopback echo of 64-byte messages
//! (four syscalls per round trip: write, read, write, read), run back to back with the agent
//! detached, with a no-op program on the same tracepoints (the floor any tracepoint program
//! costs), attached but not selecting the process, and attached and tracing it. Rounds are
//! interleaved so that drift in the machine affects all alike. Needs root.
//!
//! usage: capture-bench [ROUNDS] [REPEATS]    prints one JSON line per configuration and a summary.

use std::process::Command;

use mqtrace::sources::{
    capture::Capture,
    kernel::{CaptureOptions, KernelCapture, NoopProbes},
};
use mqtrace_common::Counter;
use mqtrace_tests::process::Driven;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    Detached,
    NoopFloor,
    AttachedUnselected,
    Traced,
}

const SYSCALLS_PER_ROUND: f64 = 4.0;

fn helper() -> std::path::PathBuf {
    let me = std::env::current_exe().expect("own path");
    me.with_file_name("socket-exchange")
}

/// One echo run; returns (nanoseconds per round trip, records captured).
async fn run(setup: Setup, rounds: u64) -> anyhow::Result<(f64, u64)> {
    let mut command = Command::new(helper());
    command.args(["echo", &rounds.to_string()]);
    let mut child = Driven::spawn(command)?;
    child.expect_line("ready")?;
    let _floor = match setup {
        Setup::NoopFloor => Some(NoopProbes::attach()?),
        _ => None,
    };
    let mut capture = match setup {
        Setup::Detached | Setup::NoopFloor => None,
        _ => Some(KernelCapture::start(CaptureOptions::default())?),
    };
    if let (Setup::Traced, Some(capture)) = (setup, capture.as_mut()) {
        capture.select(child.pid())?;
    }
    child.say("go")?;
    // Drain the ring buffer while the child runs, as the agent would.
    let drain = async {
        let mut events = Vec::new();
        let mut records = 0u64;
        if let Some(capture) = capture.as_mut() {
            loop {
                events.clear();
                match tokio::time::timeout(
                    std::time::Duration::from_millis(200),
                    capture.next_events(&mut events),
                )
                .await
                {
                    Ok(result) => result?,
                    Err(_) => break, // quiet: the child is done
                }
                records += events.len() as u64;
            }
        }
        anyhow::Ok(records)
    };
    let (elapsed, records) = tokio::join!(
        tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
            let ns: f64 = child.read_value("elapsed_ns")?.parse()?;
            child.wait_success()?;
            Ok(ns)
        }),
        drain
    );
    let elapsed = elapsed??;
    if let Some(capture) = &capture {
        let lost = capture.counters()?.get(Counter::RecordsLost);
        anyhow::ensure!(lost == 0, "{lost} records lost in the {setup:?} run");
    }
    Ok((elapsed / rounds as f64, records?))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: u64 = args.get(1).map_or(Ok(50_000), |a| a.parse())?;
    let repeats: usize = args.get(2).map_or(Ok(5), |a| a.parse())?;
    let setups = [
        Setup::Detached,
        Setup::NoopFloor,
        Setup::AttachedUnselected,
        Setup::Traced,
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut traced_records = 0;
    for _ in 0..repeats {
        for (i, &setup) in setups.iter().enumerate() {
            let (ns, records) = run(setup, rounds).await?;
            samples[i].push(ns);
            if setup == Setup::Traced {
                traced_records = records;
            } else if setup == Setup::AttachedUnselected {
                anyhow::ensure!(
                    records == 0,
                    "an unselected process produced {records} records"
                );
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = samples.iter_mut().map(median).collect();
    for (i, setup) in setups.iter().enumerate() {
        println!(
            "{}",
            serde_json::json!({
                "bench": "capture_echo",
                "setup": format!("{setup:?}"),
                "rounds": rounds,
                "repeats": repeats,
                "ns_per_round_trip": medians[i].round(),
                "ns_per_syscall": (medians[i] / SYSCALLS_PER_ROUND).round(),
                "ratio_to_detached": (medians[i] / medians[0] * 1000.0).round() / 1000.0,
            })
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "bench": "capture_echo_summary",
            "traced_extra_ns_per_syscall": ((medians[3] - medians[0]) / SYSCALLS_PER_ROUND).round(),
            "traced_extra_over_floor_ns_per_syscall": ((medians[3] - medians[1]) / SYSCALLS_PER_ROUND).round(),
            "floor_extra_ns_per_syscall": ((medians[1] - medians[0]) / SYSCALLS_PER_ROUND).round(),
            "unselected_extra_ns_per_syscall": ((medians[2] - medians[0]) / SYSCALLS_PER_ROUND).round(),
            "traced_throughput_ratio": (medians[0] / medians[3] * 1000.0).round() / 1000.0,
            "records_in_last_traced_run": traced_records,
        })
    );
    Ok(())
}
