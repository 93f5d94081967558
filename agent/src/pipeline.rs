//! Wiring of the stages, for the sources that need no runtime.

use std::path::Path;

use crate::{
    decoder::{DecodedCommand, DecoderConfig, DecoderCounters, Decoders},
    sources::pcap::{self, PcapCounters},
    streams::{StreamCounters, Streams},
};

/// Runs a capture file through sources → streams → decoder, handing each command to `sink`.
pub fn decode_capture(
    file: &Path,
    config: DecoderConfig,
    mut sink: impl FnMut(&DecodedCommand),
) -> anyhow::Result<(PcapCounters, StreamCounters, DecoderCounters)> {
    let mut streams = Streams::new();
    let mut decoders = Decoders::new(config);
    let (mut stream_events, mut commands) = (Vec::new(), Vec::new());
    let counters = pcap::replay(file, |event| {
        streams.push(event, &mut stream_events);
        for event in stream_events.drain(..) {
            decoders.push(&event, &mut commands);
        }
        commands.drain(..).for_each(|c| sink(&c));
    })?;
    Ok((counters, streams.counters, decoders.counters()))
}
