//! `cargo xtask bench`: every benchmark, side by side in one run, into a report file and a
//! table. Needs root (the capture benchmark loads the probes).

use std::{io::Write, process::Command};

use anyhow::{Context, bail};

use crate::{cargo, peers, step, workspace_root};

pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    let report_dir = root.join("target/bench");
    std::fs::create_dir_all(&report_dir)?;
    let mut lines = Vec::new();

    step("decoder throughput (cargo bench -p mqtrace-protocol --bench decode)");
    lines.extend(json_lines(Command::new(cargo_path()).args([
        "bench",
        "--quiet",
        "-p",
        "mqtrace-protocol",
        "--bench",
        "decode",
    ]))?);

    step("building the agent and the benchmark programs (release)");
    cargo(&[
        "build",
        "--release",
        "--quiet",
        "-p",
        "mqtrace",
        "-p",
        "mqtrace-tests",
        "--bins",
    ])?;
    let bin = |name: &str| Command::new(root.join("target/release").join(name));

    step("kernel capture cost: loopback echo, detached vs no-op floor vs attached vs traced");
    lines.extend(json_lines(&mut bin("capture-bench"))?);

    let peers = peers::ensure()?;
    step("overhead on the real producer and consumer: detached vs attached vs traced");
    lines.extend(json_lines(
        bin("broker-bench").env("MQTRACE_PEERS", &peers),
    )?);

    step(
        "Apache's Java producer and consumer on Apache's broker: untraced vs mqtrace vs the \
         OpenTelemetry Java agent",
    );
    lines.extend(json_lines(bin("java-bench").env("MQTRACE_PEERS", &peers))?);

    step(
        "TLS capture cost: a TLS echo's round trip and Apache's Java producer with TLS on, untraced vs traced",
    );
    lines.extend(json_lines(bin("tls-bench").env("MQTRACE_PEERS", &peers))?);

    step("ceiling: frame-load at rising rates, single sends and pulls of 32 x 1 KiB");
    lines.extend(json_lines(&mut bin("ceiling-bench"))?);

    step("a collector down for 10 minutes at 600 messages/s, then back (11 minutes)");
    lines.extend(json_lines(&mut bin("outage-bench"))?);

    let report = report_dir.join("report.jsonl");
    let mut file = std::fs::File::create(&report)?;
    for line in &lines {
        writeln!(file, "{line}")?;
    }
    println!();
    println!(
        "{:<44} {:>12} {:<14} {:>8}",
        "benchmark", "value", "unit", "ratio"
    );
    let row = |name: String, value: &serde_json::Value, unit: &str, ratio: &serde_json::Value| {
        let ratio = if ratio.is_null() {
            String::new()
        } else {
            ratio.to_string()
        };
        println!("{name:<44} {:>12} {unit:<14} {ratio:>8}", value.to_string());
    };
    let none = serde_json::Value::Null;
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let text = |k: &str| v[k].as_str().unwrap_or("?").to_string();
        match v["bench"].as_str() {
            Some("decode") if v["cpu_per_byte_ratio"].is_number() => row(
                format!("decode {}", text("case")),
                &v["cpu_per_byte_ratio"],
                "CPU/byte",
                &v["cpu_per_byte_ratio"],
            ),
            Some("decode") => row(
                format!("decode {}", text("case")),
                &v["mb_per_s"],
                "MB/s",
                &none,
            ),
            Some("outage") => {
                row(
                    "collector down: agent memory first / last".into(),
                    &serde_json::json!(format!("{} / {}", v["rss_mib_first"], v["rss_mib_last"])),
                    "MiB",
                    &none,
                );
                row(
                    "  spans dropped while it was down".into(),
                    &v["dropped_export_failed"],
                    "spans",
                    &none,
                );
                row(
                    "  spans received once it was back".into(),
                    &v["spans_received_after_recovery"],
                    "spans",
                    &none,
                );
            }
            Some("tls_echo") => {
                row(
                    "TLS echo round trip, traced".into(),
                    &v["traced_ns_per_round_trip"],
                    "ns",
                    &v["ratio"],
                );
                row(
                    "  added per probed TLS call".into(),
                    &v["ns_added_per_tls_call"],
                    "ns/call",
                    &none,
                );
            }
            Some("tls_producer") => row(
                "Java gRPC producer with TLS, traced".into(),
                &v["traced_msgs_per_s"],
                "msgs/s",
                &v["throughput_ratio"],
            ),
            Some("capture_echo") => row(
                format!("echo syscall, {}", text("setup")),
                &v["ns_per_syscall"],
                "ns/syscall",
                &v["ratio_to_detached"],
            ),
            Some("capture_echo_summary") => {
                row(
                    "traced cost per syscall".into(),
                    &v["traced_extra_ns_per_syscall"],
                    "ns",
                    &none,
                );
                row(
                    "  of which above the no-op floor".into(),
                    &v["traced_extra_over_floor_ns_per_syscall"],
                    "ns",
                    &none,
                );
            }
            Some("broker_overhead") => {
                let setup = text("setup");
                row(
                    format!("producer saturated, {setup}"),
                    &v["saturated_msgs_per_s"],
                    "msgs/s",
                    &v["saturated_throughput_ratio"],
                );
                row(
                    format!("  send p99, {setup}"),
                    &v["saturated_p99_us"],
                    "us",
                    &v["saturated_p99_ratio"],
                );
                row(
                    format!("producer at {}/s, send p50, {setup}", v["fixed_rate_per_s"]),
                    &v["fixed_p50_us"],
                    "us",
                    &v["fixed_p50_ratio"],
                );
                row(
                    format!("producer at {}/s, send p99, {setup}", v["fixed_rate_per_s"]),
                    &v["fixed_p99_us"],
                    "us",
                    &v["fixed_p99_ratio"],
                );
                row(
                    format!("consumer, {setup}"),
                    &v["consumer_msgs_per_s"],
                    "msgs/s",
                    &v["consumer_throughput_ratio"],
                );
            }
            Some("java_clients") => {
                let setup = text("setup");
                row(
                    format!("Java producer (sync), {setup}"),
                    &v["producer_msgs_per_s"],
                    "msgs/s",
                    &v["producer_throughput_ratio"],
                );
                row(
                    format!("  Java send p99, {setup}"),
                    &v["producer_p99_us"],
                    "us",
                    &v["producer_p99_ratio"],
                );
                row(
                    format!("  Java push consumer, {setup}"),
                    &v["consumer_msgs_per_s"],
                    "msgs/s",
                    &v["consumer_throughput_ratio"],
                );
                row(
                    format!("  tracing CPU per message, {setup}"),
                    &v["tracing_cpu_us_per_message"],
                    "us",
                    &none,
                );
            }
            Some("agent_cost") => {
                row(
                    "agent CPU per 10k messages traced".into(),
                    &v["cpu_seconds_per_10k_messages"],
                    "s",
                    &none,
                );
                row(
                    "  agent CPU while tracing them".into(),
                    &v["agent_cpu_percent"],
                    "% of a core",
                    &none,
                );
                row("agent peak memory".into(), &v["peak_rss_mib"], "MiB", &none);
            }
            Some("sustained") => {
                let samples = v["agent_rss_mib_each_second"]
                    .as_array()
                    .map_or(0, Vec::len);
                row(
                    format!(
                        "sustained {} at {}/s for {samples} s: {}",
                        text("mode"),
                        v["target_per_s"],
                        verdict(&v)
                    ),
                    &v["agent_peak_rss_mib"],
                    "MiB peak",
                    &none,
                );
                let last = v["agent_rss_mib_each_second"]
                    .as_array()
                    .and_then(|a| a.last().cloned())
                    .unwrap_or_default();
                row("  agent memory at the end".into(), &last, "MiB", &none);
            }
            Some("generator_alone") => row(
                format!(
                    "generator alone, {} at {}/s: CPU {} cores",
                    text("mode"),
                    v["target_per_s"],
                    v["generator_cpu_cores"]
                ),
                &v["achieved_per_s"],
                "msgs/s",
                &none,
            ),
            Some("ceiling") => {
                row(
                    format!(
                        "{} {} to {} at {}/s: {}",
                        text("side"),
                        text("mode"),
                        text("spans_to"),
                        v["target_per_s"],
                        verdict(&v)
                    ),
                    &v["achieved_per_s"],
                    "msgs/s",
                    &none,
                );
                row(
                    "  agent CPU / bytes copied per message".into(),
                    &serde_json::json!(format!(
                        "{} / {}",
                        v["agent_cpu_us_per_message"], v["bytes_copied_per_message"]
                    )),
                    "us / B",
                    &none,
                );
            }
            _ => {}
        }
    }
    println!("\nreport: {}", report.display());
    Ok(())
}

/// How a ceiling run ended.
fn verdict(line: &serde_json::Value) -> &'static str {
    if line["clean"] == true {
        "all spans"
    } else {
        "LOSS"
    }
}

fn cargo_path() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs a benchmark and keeps the JSON lines it prints.
fn json_lines(command: &mut Command) -> anyhow::Result<Vec<String>> {
    let output = command
        .current_dir(workspace_root())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(String::from)
        .collect())
}
