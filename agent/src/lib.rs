//! mqtrace: transparent tracing of Apache RocketMQ traffic.
//!
//! Data flows one way through the stages, one module each:
//! [`sources`] (kernel capture, pcap replay) → [`streams`] (ordered bytes per connection and
//! direction) → [`decoder`] (RocketMQ commands and the messages in them) → correlation → spans →
//! exporters. [`pipeline`] wires the stages; the `mqtrace` binary is a thin CLI over it all.

pub mod cli;
pub mod config;
pub mod correlation;
pub mod decoder;
pub mod exporters;
pub mod metrics;
pub mod pipeline;
pub mod sources;
pub mod spans;
pub mod streams;
