//! `cargo xtask <task>`: everything needed to build, run, test and benchmark mqtrace on a fresh
//! Linux host, installing what is missing and saying so.

mod bench;
mod fuzz;
mod image;
mod peers;
mod setup;

use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "mqtrace project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the eBPF programs needs (idempotent; prints each step).
    Setup,
    /// Build the agent (with its embedded eBPF object) in release mode.
    Build,
    /// Set up, build, and run the agent: `cargo xtask run -- run --all`.
    Run {
        /// Arguments for `mqtrace`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test: format, lints, unit, decoder, and real-kernel tests.
    Test,
    /// Set up, then run the benchmarks and print their table.
    Bench,
    /// Build the real RocketMQ name server, broker and client the end-to-end tests use.
    Peers,
    /// Build the container image from deploy/Dockerfile with buildah (installed if missing).
    Image,
    /// Run the libFuzzer targets (decoder; pipeline from source events to spans and journal)
    /// with cargo-fuzz on rustup's nightly, each for SECONDS (installs cargo-fuzz if missing).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            cargo(&["build", "--release", "--package", "mqtrace"])
        }
        Task::Run { args } => {
            setup::run()?;
            cargo(&["build", "--release", "--package", "mqtrace"])?;
            let status = Command::new(workspace_root().join("target/release/mqtrace"))
                .args(&args)
                .status()
                .context("starting mqtrace")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test => test(),
        Task::Peers => peers::ensure().map(|dir| println!("peers in {}", dir.display())),
        Task::Image => image::run(),
        Task::Fuzz { seconds } => {
            setup::run()?;
            fuzz::run(seconds).map(drop)
        }
        Task::Bench => {
            setup::run()?;
            bench::run()
        }
    }
}

fn test() -> anyhow::Result<()> {
    setup::run()?;
    step("checking formatting");
    cargo(&["fmt", "--all", "--check"])?;
    step("linting");
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    let peers = peers::ensure()?;
    // The end-to-end tests find the real RocketMQ peers there.
    // SAFETY: xtask is single-threaded; the variable is inherited by the cargo started next.
    unsafe { std::env::set_var("MQTRACE_PEERS", &peers) };
    // One test thread: the kernel tests share the kernel's tracepoints and CPU time.
    step(&format!(
        "running all tests (real RocketMQ peers from {})",
        peers.display()
    ));
    cargo(&["test", "--workspace", "--", "--test-threads=1"])?;
    step("fuzzing each target briefly (cargo xtask fuzz runs them longer)");
    fuzz::run(FUZZ_SMOKE_SECONDS).map(drop)
}

/// How long `cargo xtask test` fuzzes each target.
const FUZZ_SMOKE_SECONDS: u64 = 30;

pub fn step(what: &str) {
    println!("==> xtask: {what}");
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs cargo in the workspace root and fails unless it succeeds.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
