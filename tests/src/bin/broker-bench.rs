//! Overhead on a real application: the real Rust producer and consumer against the real broker
//! on loopback, run back to back with the agent detached, attached but not selecting them,
//! attached and tracing them, and attached and tracing only the broker (the broker's view;
//! release build, spans to a file). Rounds are interleaved, each
//! starting with another setup, so that drift in the machine and the broker affects all three
//! alike; medians are reported. Also the agent's CPU
//! time and peak memory per 10,000 messages traced. Needs root and the peers (MQTRACE_PEERS).
//!
//! usage: broker-bench [ROUNDS] [MESSAGES]

use std::process::Stdio;

use mqtrace_tests::{
    agent::Agent,
    rocketmq::{Broker, client},
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    Detached,
    AttachedUnselected,
    Traced,
    BrokerTraced,
}

const SETUPS: [Setup; 4] = [
    Setup::Detached,
    Setup::AttachedUnselected,
    Setup::Traced,
    Setup::BrokerTraced,
];
/// The fixed rate, well under what the broker takes here (~600 messages/s for one producer).
const FIXED_RATE: u32 = 300;

fn run_client(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = client().args(args).stderr(Stdio::null()).output()?;
    anyhow::ensure!(out.status.success(), "mq-client {args:?} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow::anyhow!("mq-client {args:?} printed no summary"))?;
    Ok(serde_json::from_str(line)?)
}

#[derive(Default)]
struct Samples {
    saturated_msgs_per_s: Vec<f64>,
    saturated_p50_us: Vec<f64>,
    saturated_p99_us: Vec<f64>,
    fixed_p50_us: Vec<f64>,
    fixed_p99_us: Vec<f64>,
    consumer_msgs_per_s: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).map_or(Ok(5), |a| a.parse())?;
    let messages: usize = args.get(2).map_or(Ok(2000), |a| a.parse())?;
    let broker = Broker::start("127.0.0.1")?;
    let broker_pid = broker.pid().to_string();
    let namesrv = broker.namesrv();
    let count = messages.to_string();
    let fixed_count = (FIXED_RATE as usize * 3).to_string();
    let rate = FIXED_RATE.to_string();
    let mut samples: Vec<Samples> = SETUPS.iter().map(|_| Samples::default()).collect();
    let (mut agent_cpu, mut agent_messages, mut peak_rss) = (0.0, 0.0, 0.0f64);
    let mut traced_seconds = 0.0;
    let output =
        std::env::temp_dir().join(format!("mqtrace-broker-bench-{}.jsonl", std::process::id()));
    let output_arg = output.to_string_lossy().into_owned();
    for round in 0..rounds {
        // Each round starts with another setup: the broker slows as its store grows, and no
        // setup should always come last.
        for i in (0..SETUPS.len()).map(|k| (k + round) % SETUPS.len()) {
            let setup = &SETUPS[i];
            let agent = match setup {
                Setup::Detached => None,
                Setup::AttachedUnselected => Some(Agent::start("bench", &["--only-selected"])),
                Setup::Traced => Some(Agent::start(
                    "bench",
                    &["--comm", "mq-client", "--output", &output_arg],
                )),
                Setup::BrokerTraced => Some(Agent::start(
                    "bench",
                    &["--pid", &broker_pid, "--output", &output_arg],
                )),
            };
            let cpu_before = agent.as_ref().map_or(0.0, Agent::cpu_seconds);
            let started = std::time::Instant::now();
            let topic = format!("Bench{round}{setup:?}");
            let saturated = run_client(&["produce", &namesrv, &topic, &count, "--stats"])?;
            let fixed = run_client(&[
                "produce",
                &namesrv,
                &topic,
                &fixed_count,
                "--rate",
                &rate,
                "--stats",
            ])?;
            let group = format!("bench_{round}_{i}");
            let total = (messages + FIXED_RATE as usize * 3).to_string();
            let consumed = run_client(&[
                "consume", &namesrv, &topic, &group, &total, "120", "--stats",
            ])?;
            let s = &mut samples[i];
            let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            s.saturated_msgs_per_s.push(f(&saturated, "msgs_per_s"));
            s.saturated_p50_us.push(f(&saturated, "p50_us"));
            s.saturated_p99_us.push(f(&saturated, "p99_us"));
            s.fixed_p50_us.push(f(&fixed, "p50_us"));
            s.fixed_p99_us.push(f(&fixed, "p99_us"));
            s.consumer_msgs_per_s.push(f(&consumed, "msgs_per_s"));
            if let (Setup::Traced, Some(agent)) = (setup, agent.as_ref()) {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let metrics = agent.scrape();
                agent_cpu += agent.cpu_seconds() - cpu_before;
                traced_seconds += started.elapsed().as_secs_f64();
                // Each message traced here was both sent and consumed under the agent.
                agent_messages += metrics["mqtrace_pipeline_correlation_sends_total"];
                peak_rss = peak_rss.max(agent.peak_rss_mib());
                anyhow::ensure!(
                    metrics["mqtrace_kernel_records_lost_ring_full_total"] == 0.0,
                    "records lost while tracing"
                );
            }
            if let (Setup::BrokerTraced, Some(agent)) = (setup, agent.as_ref()) {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let metrics = agent.scrape();
                anyhow::ensure!(
                    metrics["mqtrace_pipeline_correlation_broker_stored_total"] > 0.0
                        && metrics["mqtrace_kernel_records_lost_ring_full_total"] == 0.0,
                    "the broker's view traced nothing, or lost records: {metrics:?}"
                );
            }
            if let Some(agent) = agent {
                agent.stop();
            }
        }
    }
    let _ = std::fs::remove_file(&output);
    let base = &samples[0];
    for (i, setup) in SETUPS.iter().enumerate() {
        let s = &samples[i];
        let ratio = |mine: &[f64], theirs: &[f64]| {
            (median(mine) / median(theirs) * 1000.0).round() / 1000.0
        };
        println!(
            "{}",
            serde_json::json!({
                "bench": "broker_overhead",
                "setup": format!("{setup:?}"),
                "rounds": rounds,
                "saturated_msgs_per_s": median(&s.saturated_msgs_per_s).round(),
                "saturated_throughput_ratio": ratio(&s.saturated_msgs_per_s, &base.saturated_msgs_per_s),
                "saturated_p50_us": median(&s.saturated_p50_us),
                "saturated_p99_us": median(&s.saturated_p99_us),
                "saturated_p99_ratio": ratio(&s.saturated_p99_us, &base.saturated_p99_us),
                "fixed_rate_per_s": FIXED_RATE,
                "fixed_p50_us": median(&s.fixed_p50_us),
                "fixed_p50_ratio": ratio(&s.fixed_p50_us, &base.fixed_p50_us),
                "fixed_p99_us": median(&s.fixed_p99_us),
                "fixed_p99_ratio": ratio(&s.fixed_p99_us, &base.fixed_p99_us),
                "consumer_msgs_per_s": median(&s.consumer_msgs_per_s).round(),
                "consumer_throughput_ratio": ratio(&s.consumer_msgs_per_s, &base.consumer_msgs_per_s),
            })
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "bench": "agent_cost",
            "messages_traced": agent_messages,
            "cpu_seconds_per_10k_messages": (agent_cpu / agent_messages * 10_000.0 * 1000.0).round() / 1000.0,
            "agent_cpu_percent": (agent_cpu / traced_seconds * 1000.0).round() / 10.0,
            "peak_rss_mib": (peak_rss * 10.0).round() / 10.0,
        })
    );
    drop(broker);
    Ok(())
}
