//! `mqtrace replay FILE`: the same pipeline fed from a capture file instead of the kernel.

use std::{io::Write, path::PathBuf};

use clap::Args;

use crate::{
    decoder::{DEFAULT_MAX_FRAME, DecoderConfig},
    pipeline::decode_capture,
};

#[derive(Args)]
pub struct ReplayArgs {
    /// A pcap or pcapng file, e.g. from `tcpdump -i any -w FILE 'tcp port 10911 or tcp port 9876'`.
    file: PathBuf,
    /// Print every decoded command, with the messages inside it, as one JSON object per line.
    #[arg(long)]
    commands: bool,
    /// Frames claiming more bytes than this are taken as garbage.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FRAME)]
    max_frame: u32,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    let mut write_error = None;
    let (pcap, streams, decoders) = decode_capture(
        &args.file,
        DecoderConfig {
            max_frame: args.max_frame,
        },
        |command| {
            let line = if args.commands {
                serde_json::to_string(command).unwrap_or_default()
            } else {
                super::command_line(command)
            };
            if write_error.is_none() {
                write_error = writeln!(stdout, "{line}").err();
            }
        },
    )?;
    if let Some(e) = write_error
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e.into());
    }
    eprintln!(
        "mqtrace: capture {} | streams {} | decoder {}",
        serde_json::to_string(&pcap)?,
        serde_json::to_string(&streams)?,
        serde_json::to_string(&decoders)?
    );
    Ok(())
}
