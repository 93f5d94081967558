//! `cargo xtask bench`: every benchmark, side by side in one run, into a report file and a
//! table. Needs root (the capture benchmark loads the probes).

use std::{io::Write, process::Command};

use anyhow::{Context, bail};

use crate::{cargo, step, workspace_root};

pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    let report_dir = root.join("target/bench");
    std::fs::create_dir_all(&report_dir)?;
    let mut lines = Vec::new();

    step("decoder throughput (cargo bench --bench decode)");
    lines.extend(json_lines(
        Command::new(cargo_path()).args(["bench", "--quiet", "-p", "mqtrace", "--bench", "decode"]),
    )?);

    step("kernel capture cost: loopback echo, detached vs attached vs traced");
    cargo(&[
        "build",
        "--release",
        "--quiet",
        "-p",
        "mqtrace-tests",
        "--bins",
    ])?;
    lines.extend(json_lines(&mut Command::new(
        root.join("target/release/capture-bench"),
    ))?);

    let report = report_dir.join("report.jsonl");
    let mut file = std::fs::File::create(&report)?;
    for line in &lines {
        writeln!(file, "{line}")?;
    }
    println!();
    println!(
        "{:<34} {:>14} {:>14} {:>10}",
        "benchmark", "value", "unit", "ratio"
    );
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)?;
        match v["bench"].as_str() {
            Some("decode") => println!(
                "{:<34} {:>14} {:>14} {:>10}",
                format!("decode {}", v["case"].as_str().unwrap_or("?")),
                v["mb_per_s"].to_string(),
                "MB/s",
                ""
            ),
            Some("capture_echo") => println!(
                "{:<34} {:>14} {:>14} {:>10}",
                format!("echo syscall, {}", v["setup"].as_str().unwrap_or("?")),
                v["ns_per_syscall"].to_string(),
                "ns/syscall",
                v["ratio_to_detached"].to_string()
            ),
            Some("capture_echo_summary") => println!(
                "{:<34} {:>14} {:>14} {:>10}",
                "traced cost per syscall",
                v["traced_extra_ns_per_syscall"].to_string(),
                "ns",
                v["traced_throughput_ratio"].to_string()
            ),
            _ => {}
        }
    }
    println!("\nreport: {}", report.display());
    Ok(())
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
