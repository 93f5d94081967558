//! A collector that is down for a long time, then comes back: the agent traces `frame-load`
//! sending at a steady rate and exports over OTLP/gRPC to an address where nothing listens;
//! its resident memory is read every 10 seconds, then a real OTLP receiver starts on that
//! address and the spans must flow again. Needs root.
//!
//! usage: outage-bench [OUTAGE_SECONDS] [RATE]   (default 600 s at 600 messages/s); prints one
//! JSON line: memory samples, drops counted, spans received after the collector came back.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use mqtrace_tests::{
    agent::{Agent, memory_mib},
    otlp::Receiver,
    process::Driven,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let outage: u64 = args.get(1).map_or(Ok(600), |a| a.parse())?;
    let rate: f64 = args.get(2).map_or(Ok(600.0), |a| a.parse())?;
    let recovery = 30;
    // A port nothing listens on while the collector is "down".
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let me = std::env::current_exe()?;
    let mut load = Command::new(me.with_file_name("frame-load"));
    load.args([
        "send",
        &rate.to_string(),
        &(outage + recovery + 10).to_string(),
    ]);
    let mut load = Driven::spawn(load)?;
    load.expect_line("ready")?;
    let endpoint = format!("http://{addr}");
    let agent = Agent::start(
        "outage",
        &[
            "--pid",
            &load.pid().to_string(),
            "--otlp-endpoint",
            &endpoint,
        ],
    );
    load.say("go")?;
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(outage) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        samples.push((memory_mib(agent.pid(), "VmRSS:") * 10.0).round() / 10.0);
    }
    let during = agent.scrape();
    let receiver = Receiver::start_on(addr).await?;
    tokio::time::sleep(Duration::from_secs(recovery)).await;
    let after = agent.scrape();
    let received = receiver.spans().len();
    drop(load);
    agent.stop();
    let metric = |m: &std::collections::BTreeMap<String, f64>, k: &str| m.get(k).copied();
    let report = serde_json::json!({
        "bench": "outage",
        "outage_seconds": outage,
        "rate": rate,
        "rss_mib_every_10s": samples,
        "rss_mib_first": samples.first(),
        "rss_mib_last": samples.last(),
        "rss_mib_max": samples.iter().cloned().fold(0.0, f64::max),
        "sends_during_outage": metric(&during, "mqtrace_pipeline_correlation_sends_total"),
        "dropped_queue_full": metric(&during, "mqtrace_export_otlp_dropped_queue_full_total"),
        "dropped_export_failed": metric(&during, "mqtrace_export_otlp_dropped_export_failed_total"),
        "exported_before_recovery": metric(&during, "mqtrace_export_otlp_exported_total"),
        "exported_after_recovery": metric(&after, "mqtrace_export_otlp_exported_total"),
        "spans_received_after_recovery": received,
    });
    println!("{report}");
    anyhow::ensure!(
        received > 0,
        "no span reached the collector after it came back"
    );
    Ok(())
}
