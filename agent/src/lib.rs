//! mqtrace: transparent tracing of Apache RocketMQ traffic.
//!
//! Three crates, each depending only on those before it: `mqtrace-protocol` (RocketMQ's
//! remoting and gRPC protocols, sans-IO), `mqtrace-core` (the pipeline: [`streams`] →
//! [`decoder`] → [`correlation`] → [`spans`] and [`journeys`], wired by [`pipeline`]), and this
//! one: the live [`sources`] (kernel capture behind the `sources::capture` seam), the [`host`]
//! (process resources from /proc), the [`daemon`] that runs it all, the [`exporters`], the
//! [`control`] socket the CLI steers it by, [`metrics`], and the `mqtrace` binary, a thin CLI.
//! The core's modules are re-exported here under their own names.

pub mod cli;
pub mod config;
pub mod control;
pub mod counters;
pub mod daemon;
pub mod exporters;
pub mod host;
pub mod listeners;
pub mod logs;
pub mod metrics;
pub mod sources;

pub use mqtrace_core::{
    FastMap, FromLast, append_hex, correlation, decoder, hex_string, journeys, memory, pipeline,
    shared_text, spans, streams,
};
