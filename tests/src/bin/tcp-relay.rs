//! tcp-relay: a process that forwards TCP connections, bytes unchanged, as a service-mesh
//! sidecar, a tunnel or a RocketMQ proxy in remoting mode would sit between clients and a
//! broker. For the topology tests: an agent tracing every process sees both of its legs.
//!
//! usage: tcp-relay LISTEN=TARGET [LISTEN=TARGET ...]
//!   listens on each LISTEN address, connects each accepted connection to its TARGET, prints
//!   "ready" once all listen, and runs until killed.

use std::io::Write;

use anyhow::{Context, bail};
use mqtrace_tests::relay::Relay;

fn main() -> anyhow::Result<()> {
    let pairs: Vec<String> = std::env::args().skip(1).collect();
    if pairs.is_empty() {
        bail!("usage: tcp-relay LISTEN=TARGET [LISTEN=TARGET ...]");
    }
    let mut relays = Vec::new();
    for pair in &pairs {
        let (listen, target) = pair
            .split_once('=')
            .with_context(|| format!("{pair:?} is not LISTEN=TARGET"))?;
        relays
            .push(Relay::start(listen, target).with_context(|| format!("listening on {listen}"))?);
    }
    println!("ready");
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}
