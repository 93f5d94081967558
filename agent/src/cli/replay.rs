//! `mqtrace replay FILE`: the same pipeline fed from a capture file instead of the kernel.

use std::{collections::HashSet, io::Write, path::PathBuf};

use clap::Args;
use serde::Serialize;

use super::control::MessageFilter;
use crate::{
    decoder::{DEFAULT_MAX_FRAME, DecoderConfig},
    exporters::JsonLines,
    journeys::timeline,
    pipeline::{Output, replay_capture},
    spans::{Span, Value, names::MESSAGING_MESSAGE_ID, span_line},
};

#[derive(Args)]
#[command(after_long_help = "\
Without a filter, every span is printed (or written to --output). With --msg-id, --key or \
--topic, the journeys of the matching messages are printed as timelines, and --output gets \
the spans of those messages only. --limit N keeps the N most recent messages (the same order \
as `mqtrace trace`): with a filter, of those that match; without one, of the whole capture, \
whose spans are then the only ones printed or written.")]
pub struct ReplayArgs {
    /// A pcap or pcapng file, e.g. from `tcpdump -i any -w FILE 'tcp port 10911 or tcp port 9876'`.
    file: PathBuf,
    /// Print every decoded command, with the messages inside it, as one JSON object per line,
    /// instead of spans.
    #[arg(long)]
    commands: bool,
    /// Write spans to FILE as JSON lines instead of printing them: with a filter or --limit,
    /// the spans of the messages selected, else all.
    #[arg(long, value_name = "FILE", conflicts_with = "commands")]
    output: Option<PathBuf>,
    /// Instead of spans, print the journey of the matching messages (as `mqtrace trace` does
    /// for live traffic).
    #[command(flatten)]
    filter: MessageFilter,
    /// Messages shown at most, the most recent first (0: all): with a filter, those that
    /// match; without one, the spans of the N most recent messages of the capture.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        conflicts_with = "commands"
    )]
    limit: usize,
    /// Frames claiming more bytes than this are taken as garbage.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FRAME)]
    max_frame: u32,
}

/// Where the spans of a replay went, each destination on its own.
#[derive(Debug, Default, Serialize)]
struct SpansOut {
    /// Lines printed on the terminal.
    spans_printed: u64,
    /// Spans written to the --output file.
    spans_written: u64,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let config = DecoderConfig {
        max_frame: args.max_frame,
        ..DecoderConfig::default()
    };
    // The messages selected, when not all are: a first pass finds them, as the journal of a
    // daemon would.
    let selected: Option<HashSet<std::sync::Arc<str>>> =
        if args.filter.is_empty() && args.limit == 0 {
            None
        } else {
            let (_, pipeline) = replay_capture(&args.file, config, false, |_| {})?;
            let journeys = pipeline
                .journal()
                .map(|journal| journal.query(&args.filter.clone().query(args.limit)))
                .unwrap_or_default();
            if !args.filter.is_empty() {
                if journeys.is_empty() {
                    anyhow::bail!("no message in {} matches", args.file.display());
                }
                for journey in &journeys {
                    println!("{}", timeline(journey));
                }
                if args.output.is_none() {
                    return Ok(());
                }
            }
            Some(journeys.into_iter().map(|j| j.message_id).collect())
        };
    let mut file = args.output.as_deref().map(JsonLines::create).transpose()?;
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    let mut failure: Option<anyhow::Error> = None;
    let mut out = SpansOut::default();
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
            (Output::Span(span), _)
                if selected
                    .as_ref()
                    .is_some_and(|ids| message_id(span).is_none_or(|id| !ids.contains(id))) =>
            {
                Ok(())
            }
            (Output::Span(span), Some(file)) => {
                out.spans_written += 1;
                file.write(span)
            }
            (Output::Span(span), None) => {
                out.spans_printed += 1;
                writeln!(stdout, "{}", span_line(span)).map_err(Into::into)
            }
            // A replay makes its spans inline: no events come out.
            (Output::Event(..), _) => Ok(()),
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
        "mqtrace: capture {} | {} | output {}",
        serde_json::to_string(&capture)?,
        serde_json::to_string(&pipeline.counters())?,
        serde_json::to_string(&out)?
    );
    Ok(())
}

/// The message a span is of.
fn message_id(span: &Span) -> Option<&str> {
    match span.attributes.get(MESSAGING_MESSAGE_ID) {
        Some(Value::String(id)) => Some(id),
        _ => None,
    }
}
