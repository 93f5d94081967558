//! mqtrace: transparent tracing of Apache RocketMQ traffic.
//!
//! Data flows one way through the stages, one module each:
//! [`sources`] (kernel capture, pcap replay) → [`streams`] (ordered bytes per connection and
//! direction) → [`decoder`] (RocketMQ commands and the messages in them) → correlation → spans →
//! exporters, with [`journeys`] beside the spans (the recent messages, for "where is my
//! message?"). [`pipeline`] wires the stages; [`control`] lets the CLI steer a running daemon;
//! the `mqtrace` binary is a thin CLI over it all.

pub mod cli;
pub mod config;
pub mod control;
pub mod correlation;
pub mod daemon;
pub mod decoder;
pub mod exporters;
pub mod journeys;
pub mod listeners;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod sources;
pub mod spans;
pub mod streams;

/// The hash map of the per-message paths (message IDs, positions, journeys).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Lower-case hex through a buffer: `hex::encode` builds its string a char at a time, which
/// was 7 % of a pulled message's work (three ids per span).
pub fn hex_string(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut out).expect("the buffer holds two digits per byte");
    String::from_utf8(out).expect("hex digits are ASCII")
}
