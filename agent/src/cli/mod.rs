//! Command-line interface. Each subcommand parses its flags and calls the library.

mod replay;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mqtrace",
    version,
    about = "Transparent tracing of Apache RocketMQ traffic with eBPF",
    long_about = "mqtrace follows RocketMQ messages across hosts without touching the \
                  applications: kernel probes copy the socket payloads of selected processes, \
                  and the agent decodes them."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture live traffic with kernel probes (needs root, or CAP_BPF and CAP_PERFMON).
    Run(run::RunArgs),
    /// Decode a pcap/pcapng capture offline: no kernel, no privileges.
    Replay(replay::ReplayArgs),
}

pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MQTRACE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Run(args) => run::run(args),
        Command::Replay(args) => replay::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mqtrace: {error:#}");
            ExitCode::FAILURE
        }
    }
}
