//! `cargo xtask fuzz`: the libFuzzer targets of `fuzz/` (cargo-fuzz, nightly compiler, release
//! build with debug assertions, so that arithmetic overflow is caught; address sanitizer unless
//! `--no-sanitizer`), each for a while, from the committed seeds and the corpus grown so far.
//! Says executions and crashes per target; a crash fails the task and leaves its input in
//! `fuzz/artifacts/<target>/` (turn it into a test).

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, bail};

use crate::{step, workspace_root};

pub const TARGETS: [&str; 3] = ["decoder", "grpc", "pipeline"];
/// The cargo-fuzz release this project pins.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What one target's run did.
pub struct FuzzRun {
    pub target: &'static str,
    pub seconds: f64,
    pub executions: u64,
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    step(&format!(
        "installing cargo-fuzz {CARGO_FUZZ_VERSION} from crates.io"
    ));
    let status = Command::new("cargo")
        .args([
            "install",
            "--locked",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
        ])
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!("installing cargo-fuzz failed ({status})");
    }
    Ok(())
}

/// Copies the seeds of `target` into its corpus (files already there are kept).
fn seed(dir: &Path, target: &str) -> anyhow::Result<std::path::PathBuf> {
    let corpus = dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    for entry in std::fs::read_dir(dir.join("seeds").join(target))? {
        let path = entry?.path();
        let into = corpus.join(path.file_name().context("a seed file")?);
        if !into.exists() {
            std::fs::copy(&path, &into)?;
        }
    }
    Ok(corpus)
}

/// Runs every target for `seconds` each; fails on the first crash. Without the address
/// sanitizer (the code is safe Rust: it finds panics and overflows all the same) a run makes
/// about ten times the executions.
pub fn run(seconds: u64, sanitizer: bool) -> anyhow::Result<Vec<FuzzRun>> {
    ensure_cargo_fuzz()?;
    let dir = workspace_root().join("fuzz");
    let mut runs = Vec::new();
    for target in TARGETS {
        let corpus = seed(&dir, target)?;
        step(&format!(
            "fuzzing {target} for {seconds} s (nightly, debug assertions, {})",
            if sanitizer {
                "address sanitizer"
            } else {
                "no sanitizer"
            }
        ));
        let started = Instant::now();
        let output = Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "fuzz",
                "run",
                "--debug-assertions",
            ])
            .args(if sanitizer {
                &[][..]
            } else {
                &["--sanitizer", "none"][..]
            })
            .arg(target)
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-print_final_stats=1",
                // Frames that matter fit in 4 KiB; longer inputs only slow each run down.
                "-max_len=4096",
                "-rss_limit_mb=2048",
            ])
            .current_dir(&dir)
            .output()
            .context("running cargo fuzz (rustup's nightly toolchain is needed)")?;
        let log = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            bail!(
                "fuzz target {target} failed ({}); its input is in fuzz/artifacts/{target}/:\n{}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let executions = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|n| n.trim().parse().ok())
            .context("libFuzzer printed no execution count")?;
        let run = FuzzRun {
            target,
            seconds: started.elapsed().as_secs_f64(),
            executions,
        };
        println!(
            "{}",
            serde_json::json!({
                "fuzz": run.target,
                "executions": run.executions,
                "crashes": 0,
                "seconds": run.seconds.round(),
                "executions_per_s": (run.executions as f64 / seconds.max(1) as f64).round(),
            })
        );
        runs.push(run);
    }
    Ok(runs)
}
