//! `cargo xtask <task>`: everything needed to build, run, test and benchmark mqtrace on a fresh
//! Linux host, installing what is missing and saying so.

mod apache_peers;
mod bench;
mod fuzz;
mod image;
mod peers;
mod setup;

use std::process::{Command, ExitCode};

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
        /// Without the address sanitizer: about ten times the executions per second (safe
        /// Rust; panics and overflows are found all the same), for long runs.
        #[arg(long)]
        no_sanitizer: bool,
    },
}

/// A failed task ends in one line naming what failed, so that it is the last thing a CI log
/// shows (an `anyhow` error returned from `main` would print a backtrace after it whenever
/// RUST_BACKTRACE is set, burying the test failures above).
fn main() -> ExitCode {
    match run_task(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> anyhow::Result<()> {
    match task {
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
        Task::Fuzz {
            seconds,
            no_sanitizer,
        } => {
            setup::run()?;
            fuzz::run(seconds, !no_sanitizer).map(drop)
        }
        Task::Bench => {
            setup::run()?;
            bench::run()
        }
    }
}

fn test() -> anyhow::Result<()> {
    setup::run()?;
    setup::test_tools()?;
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
    unprivileged_tests()?;
    let peers = peers::ensure()?;
    // The end-to-end tests find the real RocketMQ peers there.
    // SAFETY: xtask is single-threaded; the variable is inherited by the cargo started next.
    unsafe { std::env::set_var("MQTRACE_PEERS", &peers) };
    // One test thread: the kernel tests share the kernel's tracepoints and CPU time.
    step(&format!(
        "running the tests that need root: kernel probes, daemon, end to end (real RocketMQ \
         peers from {})",
        peers.display()
    ));
    cargo(&["test", "--package", ROOT_TESTS, "--", "--test-threads=1"])?;
    step("fuzzing each target briefly (cargo xtask fuzz runs them longer)");
    fuzz::run(FUZZ_SMOKE_SECONDS, true).map(drop)
}

/// The package whose tests load kernel probes and start real peers; every other package's
/// tests need no privilege.
const ROOT_TESTS: &str = "mqtrace-tests";
/// Who runs the tests that need no privilege when xtask runs as root.
const UNPRIVILEGED_ID: &str = "65534"; // nobody

/// Builds the tests of every package but ROOT_TESTS and runs them first, as `nobody` when
/// xtask runs as root: they must not depend on privilege (the decoder, pipeline, the daemon and
/// the capture's policy over tables in memory, replay).
fn unprivileged_tests() -> anyhow::Result<()> {
    step("building the tests that need no privilege");
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(&cargo_bin)
        .args(["test", "--workspace", "--exclude", ROOT_TESTS, "--no-run"])
        .args(["--message-format=json-render-diagnostics"])
        .current_dir(workspace_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("building the tests")?;
    if !built.status.success() {
        bail!("building the tests failed ({})", built.status);
    }
    let mut executables = Vec::new();
    for line in String::from_utf8_lossy(&built.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact"
            && message["profile"]["test"] == true
            && let (Some(executable), Some(manifest)) = (
                message["executable"].as_str(),
                message["manifest_path"].as_str(),
            )
        {
            let package = std::path::Path::new(manifest).parent().map(Into::into);
            executables.push((executable.to_string(), package));
        }
    }
    let as_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
    // A clone inside a private folder (mktemp -d) cannot be read by nobody: then nobody gets
    // the one capability to read files, nothing else.
    let readable = as_root
        && executables.iter().all(|(executable, _)| {
            unprivileged(&[])
                .args(["test", "-x", executable])
                .status()
                .is_ok_and(|s| s.success())
        });
    let read_capability: &[&str] = if readable {
        &[]
    } else {
        &[
            "--inh-caps",
            "+dac_read_search",
            "--ambient-caps",
            "+dac_read_search",
        ]
    };
    step(&format!(
        "running {} test executables {}",
        executables.len(),
        match (as_root, readable) {
            (true, true) => "as nobody (uid 65534), without root",
            (true, false) =>
                "as nobody (uid 65534), without root, allowed to read the clone's \
                              private folder (CAP_DAC_READ_SEARCH)",
            (false, _) => "as this user",
        }
    ));
    for (executable, package) in executables {
        let mut command = if as_root {
            let mut c = unprivileged(read_capability);
            c.arg(&executable);
            c
        } else {
            Command::new(&executable)
        };
        if let Some(package) = package {
            // As cargo runs them: from their package's folder.
            command.current_dir::<std::path::PathBuf>(package);
        }
        let status = command
            .status()
            .with_context(|| format!("running {executable}"))?;
        if !status.success() {
            bail!("{executable} failed ({status})");
        }
    }
    Ok(())
}

/// A command run as nobody, with the capabilities given.
fn unprivileged(capabilities: &[&str]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid",
            UNPRIVILEGED_ID,
            "--regid",
            UNPRIVILEGED_ID,
            "--clear-groups",
        ])
        .args(capabilities)
        .arg("--");
    command
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
