//! The decoder stage: which connections speak RocketMQ (remoting or 5.x gRPC), each one
//! decoded by the sans-IO `mqtrace-protocol` crate, whose items are re-exported here.

mod connections;

pub use connections::{DecodedCommand, Decoders};
pub use mqtrace_protocol::*;

#[cfg(test)]
mod tests;
