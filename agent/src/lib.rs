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
