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

/// One readable line per decoded command, for the terminal.
fn command_line(c: &crate::decoder::DecodedCommand) -> String {
    let name = match (c.command.request(), c.command.response()) {
        (Some(request), _) => format!("{request:?}"),
        (_, Some(response)) => format!("{response:?} to {:?}", c.command.request_code),
        _ => unreachable!("a command is a request or a response"),
    };
    let ids: Vec<&str> = match &c.operation {
        crate::decoder::operation::Operation::Send(send) => send
            .messages
            .iter()
            .filter_map(|m| m.msg_id.as_deref())
            .collect(),
        _ => c
            .command
            .messages
            .iter()
            .filter_map(|m| m.msg_id.as_deref())
            .collect(),
    };
    let pid = if c.pid == 0 {
        String::new()
    } else {
        format!("pid {} ", c.pid)
    };
    format!(
        "{pid}conn {} {:?} opaque {} {name} body {}B{}",
        c.connection.0,
        c.command.direction,
        c.command.header.opaque,
        c.command.body_len,
        if ids.is_empty() {
            String::new()
        } else {
            format!(" messages {}", ids.join(","))
        }
    )
}
