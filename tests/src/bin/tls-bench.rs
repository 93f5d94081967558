//! What TLS capture costs: uprobes trap on every call of the TLS library.
//!
//! 1. The per-call cost on this kernel: a TLS echo over loopback in one Go process
//!    (`mq-go-tlsecho`, crypto/tls at both ends: four probed calls per round trip, each an entry
//!    probe and a probe on its RET), untraced and traced by mqtrace, rounds interleaved.
//! 2. A TLS producer: Apache's 5.x Java gRPC client with TLS on (its default), sending through
//!    Apache's 5.5.0 proxy, untraced and traced (its plaintext read from netty-tcnative's
//!    BoringSSL), rounds interleaved; throughput ratio, and every message traced.
//!
//! Needs root and the peers (MQTRACE_PEERS). usage: tls-bench [ROUNDS] [MESSAGES]

use std::process::Command;

use mqtrace_tests::{
    agent::Agent,
    apache::{Cluster, Release, Topology, app, run_to_end},
    process::ScratchFile,
    rocketmq::peers_root,
    spancheck::read_span_file,
};

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// An agent tracing every process, its spans to a scratch file.
fn agent(output: &ScratchFile) -> Agent {
    Agent::start(
        "tls-bench",
        &["--all", "--output", output.0.to_str().unwrap()],
    )
}

/// One echo run: nanoseconds per round trip.
fn echo(round_trips: usize) -> anyhow::Result<f64> {
    let out = Command::new(peers_root().join("bin/mq-go-tlsecho"))
        .args(["--count", &round_trips.to_string()])
        .output()?;
    anyhow::ensure!(out.status.success(), "tlsecho: {out:?}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    line["ns_per_round_trip"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("tlsecho: {line}"))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).map_or(Ok(5), |a| a.parse())?;
    let messages: usize = args.get(2).map_or(Ok(2000), |a| a.parse())?;

    // 1. The echo.
    let round_trips = 20_000;
    let (mut untraced, mut traced) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for traced_now in [round % 2 == 1, round % 2 == 0] {
            if traced_now {
                let output = ScratchFile::new("tls-bench-echo.jsonl");
                let agent = agent(&output);
                traced.push(echo(round_trips)?);
                let status: serde_json::Value =
                    serde_json::from_str(&agent.control_ok(&["status", "--json"]))?;
                let bound = &status["counters"]["agent"]["tls"]["connections_bound"];
                agent.stop();
                anyhow::ensure!(
                    bound.as_u64() >= Some(1),
                    "the echo's TLS connection was not bound: {status}"
                );
            } else {
                untraced.push(echo(round_trips)?);
            }
        }
    }
    let (base, probed) = (median(&untraced), median(&traced));
    println!(
        "{}",
        serde_json::json!({
            "bench": "tls_echo",
            "round_trips": round_trips,
            "size": 64,
            "untraced_ns_per_round_trip": base.round(),
            "traced_ns_per_round_trip": probed.round(),
            "ratio": ((probed / base) * 100.0).round() / 100.0,
            // Four probed calls per round trip (a write and a read at each end).
            "ns_added_per_tls_call": ((probed - base) / 4.0).round(),
        })
    );

    // 2. The producer.
    let cluster = Cluster::start(Release::V5, Topology::ProxyCluster)?;
    let endpoint = cluster.grpc_endpoint();
    let (mut untraced, mut traced) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for traced_now in [round % 2 == 1, round % 2 == 0] {
            let topic = format!("TlsBench{round}{traced_now}");
            cluster.make_topic(&topic, "NORMAL")?;
            let output = ScratchFile::new("tls-bench-producer.jsonl");
            let agent = traced_now.then(|| agent(&output));
            let lines = run_to_end(app(Release::V5, "GrpcProducer").args([
                "--endpoint",
                &endpoint,
                "--topic",
                &topic,
                "--count",
                &messages.to_string(),
                "--tls",
            ]));
            let done = lines.last().cloned().unwrap_or_default();
            let sent = done["sent"].as_f64().unwrap_or(0.0);
            let elapsed_ms = done["elapsedMs"].as_f64().unwrap_or(f64::NAN);
            anyhow::ensure!(sent as usize == messages, "the producer: {done}");
            let rate = sent / (elapsed_ms / 1000.0);
            if let Some(agent) = agent {
                agent.stop();
                let spans = read_span_file(&output.0);
                let sends = spans
                    .iter()
                    .filter(|s| {
                        s["kind"] == "PRODUCER"
                            && s["attributes"]["mqtrace.capture"] == "tls-uprobe"
                            && s["attributes"]["messaging.destination.name"] == topic.as_str()
                    })
                    .count();
                anyhow::ensure!(sends == messages, "{sends} of {messages} TLS sends traced");
                traced.push(rate);
            } else {
                untraced.push(rate);
            }
        }
    }
    let (base, probed) = (median(&untraced), median(&traced));
    println!(
        "{}",
        serde_json::json!({
            "bench": "tls_producer",
            "messages": messages,
            "rounds": rounds,
            "untraced_msgs_per_s": base.round(),
            "traced_msgs_per_s": probed.round(),
            "throughput_ratio": ((probed / base) * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}
