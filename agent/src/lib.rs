//! mqtrace: transparent tracing of Apache RocketMQ traffic.
//!
//! Data flows one way through the stages, one module each:
//! [`sources`] (kernel capture, pcap replay) → [`streams`] (ordered bytes per connection and
//! direction) → decoder → correlation → spans → exporters. The `mqtrace` binary is a thin CLI
//! over this library.

pub mod cli;
pub mod decoder;
pub mod sources;
pub mod streams;
