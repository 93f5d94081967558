//! The ceiling: the highest message rate at which the real agent (`mqtrace run`, release build)
//! loses no record and makes every span, found with `frame-load` at rising rates, for single
//! sends (1 message per request, 64-byte bodies) and for pulls of 32 messages of 1 KiB, from
//! the client's side (the agent traces the generator's client) and from the broker's (it
//! traces the generator's server process), spans written to a file; then client sends with the
//! spans exported over OTLP/gRPC to a real receiver in this process. Each rate gets a fresh
//! agent. Needs root.
//!
//! First the generator alone at the target rate, untraced: what the machine gives before an
//! agent takes its share.
//!
//! usage: ceiling-bench [SECONDS]   prints one JSON line per mode and rate.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use mqtrace_tests::{
    agent::{Agent, memory_mib},
    otlp::Receiver,
    process::Driven,
};

/// Rising to the target rate (100,000/s), finer near where this machine tops out.
const RATES: &[f64] = &[
    5_000.0, 10_000.0, 20_000.0, 40_000.0, 60_000.0, 80_000.0, 100_000.0,
];
const SUSTAINED_RATE: f64 = 20_000.0;
/// Issue 13's target, per side: 100,000 single sends/s and 100,000 pulled messages/s.
const TARGET_RATE: f64 = 100_000.0;
const SUSTAINED_SECONDS: f64 = 30.0;

/// The generator, ready to go, and its server process's pid.
fn generator(mode: &str, rate: f64, seconds: f64) -> anyhow::Result<(Driven, u32)> {
    let me = std::env::current_exe()?;
    let mut command = Command::new(me.with_file_name("frame-load"));
    command.args([mode, &rate.to_string(), &seconds.to_string()]);
    let mut child = Driven::spawn(command)?;
    let server = child.read_value("server-pid ")?.trim().parse()?;
    child.expect_line("ready")?;
    Ok((child, server))
}

/// Which end of the generator's connection the agent traces.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Broker,
}

/// Where the agent's spans go: a JSON-lines file, or a real OTLP/gRPC receiver in this process.
enum Sink<'a> {
    File,
    Otlp(&'a Receiver),
}

/// One rate: (the report line, whether nothing was lost). With `sample_memory`, the line also
/// has the agent's resident memory, read every second while the load runs.
fn measure(
    mode: &str,
    side: Side,
    sink: &Sink,
    rate: f64,
    seconds: f64,
    sample_memory: bool,
) -> anyhow::Result<(serde_json::Value, bool)> {
    let (mut load, server) = generator(mode, rate, seconds)?;
    let output = std::env::temp_dir().join(format!("mqtrace-ceiling-{}.jsonl", std::process::id()));
    let pid = match side {
        Side::Client => load.pid(),
        Side::Broker => server,
    }
    .to_string();
    let destination = match sink {
        Sink::File => [
            "--output".to_string(),
            output.to_string_lossy().into_owned(),
        ],
        Sink::Otlp(receiver) => [
            "--otlp-endpoint".to_string(),
            format!("http://{}", receiver.addr),
        ],
    };
    let received_before = match sink {
        Sink::File => 0,
        Sink::Otlp(receiver) => receiver.spans().len(),
    };
    let agent = Agent::start(
        "ceiling",
        &["--pid", &pid, &destination[0], &destination[1]],
    );
    let cpu_before = agent.cpu_seconds();
    load.say("go")?;
    let agent_pid = agent.pid();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (report, rss_samples) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            while sample_memory && !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                samples.push((memory_mib(agent_pid, "VmRSS:") * 10.0).round() / 10.0);
            }
            samples
        });
        let line = load.read_value("{").map(|rest| format!("{{{rest}"));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let report: serde_json::Value = serde_json::from_str(&line?)?;
        Ok((report, sampler.join().expect("sampler")))
    })?;
    load.wait_success()?;
    let messages = report["messages"].as_u64().unwrap_or(0) as f64;
    let counter = match (side, mode) {
        (Side::Client, "send") => "mqtrace_pipeline_correlation_sends_total",
        (Side::Client, _) => "mqtrace_pipeline_correlation_receives_total",
        (Side::Broker, "send") => "mqtrace_pipeline_correlation_broker_stored_total",
        (Side::Broker, _) => "mqtrace_pipeline_correlation_broker_delivered_total",
    };
    // The agent catches up (or not) within a few seconds after the load ends.
    let started = Instant::now();
    let mut metrics = agent.scrape();
    while metrics.get(counter).copied().unwrap_or(0.0) < messages
        && started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(500));
        metrics = agent.scrape();
    }
    let cpu = agent.cpu_seconds() - cpu_before;
    let peak_rss_mib = agent.peak_rss_mib();
    agent.stop(); // flushes the OTLP queue
    let spans = match sink {
        Sink::File => std::fs::read_to_string(&output)
            .unwrap_or_default()
            .lines()
            .count(),
        Sink::Otlp(receiver) => receiver.spans().len() - received_before,
    };
    let _ = std::fs::remove_file(&output);
    let get = |name: &str| metrics.get(name).copied().unwrap_or(-1.0);
    let events = get(counter);
    let lost = get("mqtrace_kernel_records_lost_ring_full_total");
    let gaps = get("mqtrace_pipeline_streams_gaps_total");
    let clean = events == messages && lost == 0.0 && gaps == 0.0 && spans as f64 >= messages;
    let seconds_run = report["seconds"].as_f64().unwrap_or(f64::NAN);
    let per_message = |total: f64| (total / messages.max(1.0) * 10.0).round() / 10.0;
    Ok((
        serde_json::json!({
            "bench": "ceiling",
            "mode": mode,
            "side": match side {
                Side::Client => "client",
                Side::Broker => "broker",
            },
            "spans_to": match sink {
                Sink::File => "file",
                Sink::Otlp(_) => "otlp",
            },
            "agent_cpu_us_per_message": per_message(cpu * 1e6),
            "bytes_copied_per_message": per_message(get("mqtrace_kernel_bytes_copied_total")),
            "target_per_s": rate,
            "achieved_per_s": report["achieved_per_s"],
            "messages": messages,
            "events": events,
            "spans": spans,
            "records_lost": lost,
            "gaps": gaps,
            "agent_cpu_percent": (cpu / seconds_run * 1000.0).round() / 10.0,
            "agent_peak_rss_mib": (peak_rss_mib * 10.0).round() / 10.0,
            "agent_rss_mib_each_second": rss_samples,
            "clean": clean,
        }),
        clean,
    ))
}

/// CPU seconds of this process's waited-for children and their descendants.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The generator alone, untraced, asked for the target rate: what this machine gives before
/// any agent takes a share of its two cores (the generator's client and server processes,
/// with the kernel's loopback TCP work done in their syscalls).
fn generator_alone(mode: &str, rate: f64, seconds: f64) -> anyhow::Result<serde_json::Value> {
    let cpu_before = children_cpu_seconds();
    let (mut load, _) = generator(mode, rate, seconds)?;
    load.say("go")?;
    let line = load.read_value("{")?;
    load.wait_success()?;
    let cpu = children_cpu_seconds() - cpu_before;
    let report: serde_json::Value = serde_json::from_str(&format!("{{{line}"))?;
    let seconds_run = report["seconds"].as_f64().unwrap_or(f64::NAN);
    Ok(serde_json::json!({
        "bench": "generator_alone",
        "mode": mode,
        "target_per_s": rate,
        "achieved_per_s": report["achieved_per_s"],
        "generator_cpu_cores": (cpu / seconds_run * 100.0).round() / 100.0,
    }))
}

fn main() -> anyhow::Result<()> {
    let seconds: f64 = std::env::args().nth(1).map_or(Ok(3.0), |a| a.parse())?;
    for mode in ["send", "pull"] {
        println!("{}", generator_alone(mode, TARGET_RATE, seconds)?);
    }
    for side in [Side::Client, Side::Broker] {
        for mode in ["send", "pull"] {
            rising(mode, side, &Sink::File, seconds)?;
        }
    }
    // The same client sends exported over OTLP/gRPC to a real receiver instead of a file.
    let runtime = tokio::runtime::Runtime::new()?;
    let receiver = runtime.block_on(Receiver::start())?;
    rising("send", Side::Client, &Sink::Otlp(&receiver), seconds)?;
    // Sustained: the target rate for longer, the agent's memory read every second.
    let (mut line, _) = measure(
        "send",
        Side::Client,
        &Sink::File,
        SUSTAINED_RATE,
        SUSTAINED_SECONDS,
        true,
    )?;
    line["bench"] = "sustained".into();
    println!("{line}");
    Ok(())
}

/// One line per rate, up to the first that loses anything (the ceiling's upper bound).
fn rising(mode: &str, side: Side, sink: &Sink, seconds: f64) -> anyhow::Result<()> {
    for &rate in RATES {
        let (line, clean) = measure(mode, side, sink, rate, seconds, false)?;
        println!("{line}");
        if !clean {
            break;
        }
    }
    Ok(())
}
