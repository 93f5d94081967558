//! `mqtrace replay FILE`: the same pipeline fed from a capture file instead of the kernel.

use std::{io::Write, path::PathBuf};

use clap::Args;

use super::control::MessageFilter;
use crate::{
    decoder::{DEFAULT_MAX_FRAME, DecoderConfig},
    exporters::JsonLines,
    journeys::timeline,
    pipeline::{Output, replay_capture},
    spans::span_line,
};

#[derive(Args)]
pub struct ReplayArgs {
    /// A pcap or pcapng file, e.g. from `tcpdump -i any -w FILE 'tcp port 10911 or tcp port 9876'`.
    file: PathBuf,
    /// Print every decoded command, with the messages inside it, as one JSON object per line,
    /// instead of spans.
    #[arg(long)]
    commands: bool,
    /// Write spans to FILE as JSON lines instead of printing them.
    #[arg(long, value_name = "FILE", conflicts_with = "commands")]
    output: Option<PathBuf>,
    /// Instead of spans, print the journey of the matching messages (as `mqtrace trace` does
    /// for live traffic).
    #[command(flatten)]
    filter: MessageFilter,
    /// With a filter: matching messages shown at most (0: all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    limit: usize,
    /// Frames claiming more bytes than this are taken as garbage.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FRAME)]
    max_frame: u32,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let config = DecoderConfig {
        max_frame: args.max_frame,
        ..DecoderConfig::default()
    };
    if !args.filter.is_empty() {
        return journeys(args);
    }
    let mut file = args.output.as_deref().map(JsonLines::create).transpose()?;
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    let mut failure: Option<anyhow::Error> = None;
    let (capture, pipeline) = replay_capture(&args.file, config, args.commands, |output| {
        if failure.is_some() {
            return;
        }
        let result = match (&output, file.as_mut()) {
            (Output::Command(command), _) => serde_json::to_string(command)
                .map_err(Into::into)
                .and_then(|l| writeln!(stdout, "{l}").map_err(Into::into)),
            // With --commands, commands are the output.
            (Output::Span(_), _) if args.commands => Ok(()),
            (Output::Span(span), Some(file)) => file.write(span),
            (Output::Span(span), None) => {
                writeln!(stdout, "{}", span_line(span)).map_err(Into::into)
            }
        };
        failure = result.err();
    })?;
    if let Some(file) = file.as_mut() {
        file.flush()?;
    }
    if let Some(e) = failure {
        let broken_pipe = e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe);
        if !broken_pipe {
            return Err(e);
        }
    }
    eprintln!(
        "mqtrace: capture {} | {}",
        serde_json::to_string(&capture)?,
        serde_json::to_string(&pipeline.counters())?
    );
    Ok(())
}

fn journeys(args: ReplayArgs) -> anyhow::Result<()> {
    let config = DecoderConfig {
        max_frame: args.max_frame,
        ..DecoderConfig::default()
    };
    let (_, pipeline) = replay_capture(&args.file, config, false, |_| {})?;
    let journeys = pipeline.journal.query(&args.filter.query(args.limit));
    if journeys.is_empty() {
        anyhow::bail!("no message in {} matches", args.file.display());
    }
    for journey in &journeys {
        println!("{}", timeline(journey));
    }
    Ok(())
}
