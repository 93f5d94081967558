//! Command-line interface. Each subcommand parses its flags and calls the library.

mod control;
mod replay;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::logs::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "mqtrace",
    version,
    about = "Transparent tracing of Apache RocketMQ traffic with eBPF",
    long_about = "mqtrace follows RocketMQ messages across hosts without touching the \
                  applications: kernel probes copy the socket payloads of selected processes, \
                  and the agent decodes them.",
    after_long_help = "\
Examples:
  mqtrace run                                   trace every RocketMQ client on this host (root)
  mqtrace run --comm java --otlp-endpoint http://collector:4317
  mqtrace enable --pid 4242                     start tracing a running process, at once
  mqtrace status                                what the daemon captured, lost and exported
  mqtrace trace --key order-1234                where is my message? send, receive, settle
  mqtrace replay capture.pcap                   the same decoding, offline, from tcpdump

Environment: MQTRACE_LOG (log level, default warn), MQTRACE_SOCKET (control socket),
OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_PROTOCOL (collector)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text or as JSON objects (on stderr; the level comes from MQTRACE_LOG,
    /// e.g. info or debug; default warn).
    #[arg(
        long,
        global = true,
        value_name = "FORMAT",
        env = "MQTRACE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Capture live traffic with kernel probes (needs root, or CAP_BPF and CAP_PERFMON).
    Run(Box<run::RunArgs>),
    /// Start tracing a process, a command name or a cgroup, in the running daemon.
    Enable(control::SelectArgs),
    /// Stop tracing a process, a command name or a cgroup, in the running daemon.
    Disable(control::SelectArgs),
    /// The daemon's selection rules and the processes selected (or excluded) by them.
    List(control::ShowArgs),
    /// The daemon's uptime and counters: captured, lost, decoded, exported.
    Status(control::ShowArgs),
    /// Where is my message? Its send, receive and settle steps as this host's daemon saw them.
    Trace(control::TraceArgs),
    /// Decode a pcap/pcapng capture offline: no kernel, no privileges.
    Replay(replay::ReplayArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logs::init(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Enable(args) => control::select(args, true),
        Command::Disable(args) => control::select(args, false),
        Command::List(args) => control::list(args),
        Command::Status(args) => control::status(args),
        Command::Trace(args) => control::trace(args),
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
