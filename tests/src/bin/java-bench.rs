//! The comparison a user makes before choosing: Apache's Java remoting producer and push
//! consumer against Apache's 5.5.0 broker, untraced, traced by mqtrace (from the kernel, in its
//! own process), and with the OpenTelemetry Java agent attached instead (in the JVM, exporting
//! OTLP to a real receiver). Rounds interleaved, each starting with another setup; medians.
//! Reports throughput and p99 ratios to untraced, and the CPU each spends per message: the
//! Java agent's as the JVMs' extra CPU over the untraced run, mqtrace's as its own process's.
//! Needs root and the peers (MQTRACE_PEERS).
//!
//! usage: java-bench [ROUNDS] [MESSAGES]

use std::process::Command;

use mqtrace_tests::{
    agent::Agent,
    apache::{Cluster, Release, Topology, app_with, otel_agent_jar, run_to_end},
    otlp::Receiver,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    Untraced,
    Mqtrace,
    OtelJavaAgent,
}

const SETUPS: [Setup; 3] = [Setup::Untraced, Setup::Mqtrace, Setup::OtelJavaAgent];

/// CPU seconds (user and system) of the children this process has waited for so far.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Runs a Java test application to its end; its done line and the CPU its JVM used.
fn run_java(command: &mut Command) -> anyhow::Result<(serde_json::Value, f64)> {
    let before = children_cpu_seconds();
    let done = run_to_end(command)
        .pop()
        .expect("run_to_end returns the done line last");
    Ok((done, children_cpu_seconds() - before))
}

#[derive(Default)]
struct Samples {
    producer_msgs_per_s: Vec<f64>,
    producer_p99_us: Vec<f64>,
    consumer_msgs_per_s: Vec<f64>,
    /// CPU seconds of the producer's and the consumer's JVMs together, per message.
    jvm_cpu_per_message_us: Vec<f64>,
    /// The agent's own CPU per message (mqtrace only).
    agent_cpu_per_message_us: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).map_or(Ok(3), |a| a.parse())?;
    let messages: usize = args.get(2).map_or(Ok(5000), |a| a.parse())?;
    let receiver = Receiver::start_http().await?;
    let endpoint = format!("http://{}", receiver.addr);
    let samples = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Samples>> {
        let cluster = Cluster::start(Release::V5, Topology::Direct)?;
        let namesrv = cluster.namesrv();
        let count = messages.to_string();
        let mut samples: Vec<Samples> = SETUPS.iter().map(|_| Samples::default()).collect();
        let output =
            std::env::temp_dir().join(format!("mqtrace-java-bench-{}.jsonl", std::process::id()));
        let output_arg = output.to_string_lossy().into_owned();
        for round in 0..rounds {
            for i in (0..SETUPS.len()).map(|k| (k + round) % SETUPS.len()) {
                let setup = SETUPS[i];
                // The JVMs are the clients here; the broker's side is not what this compares.
                let agent = (setup == Setup::Mqtrace).then(|| {
                    Agent::start(
                        "java-bench",
                        &[
                            "--comm",
                            "java",
                            "--no-broker-spans",
                            "--output",
                            &output_arg,
                        ],
                    )
                });
                let jvm_options: Vec<String> = if setup == Setup::OtelJavaAgent {
                    vec![
                        format!("-javaagent:{}", otel_agent_jar().display()),
                        "-Dotel.service.name=java-bench".into(),
                        "-Dotel.metrics.exporter=none".into(),
                        "-Dotel.logs.exporter=none".into(),
                        format!("-Dotel.exporter.otlp.endpoint={endpoint}"),
                        "-Dotel.javaagent.logging=none".into(),
                    ]
                } else {
                    Vec::new()
                };
                let topic = format!("JavaBench{round}{setup:?}");
                let group = format!("JavaBench{round}{setup:?}Group");
                cluster.make_topic(&topic, "NORMAL")?;
                cluster.make_group(&group, false)?;
                let agent_cpu_before = agent.as_ref().map_or(0.0, Agent::cpu_seconds);
                let (produced, producer_cpu) = run_java(
                    app_with(Release::V5, "RemotingProducer", &jvm_options).args([
                        "--namesrv",
                        &namesrv,
                        "--topic",
                        &topic,
                        "--group",
                        "java_bench",
                        "--count",
                        &count,
                        "--mode",
                        "sync",
                        "--stats",
                    ]),
                )?;
                let (consumed, consumer_cpu) = run_java(
                    app_with(Release::V5, "RemotingConsumer", &jvm_options).args([
                        "--namesrv",
                        &namesrv,
                        "--topic",
                        &topic,
                        "--group",
                        &group,
                        "--expect",
                        &count,
                        "--timeout-s",
                        "300",
                        "--linger-ms",
                        "0",
                    ]),
                )?;
                let s = &mut samples[i];
                let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                s.producer_msgs_per_s.push(f(&produced, "msgsPerS"));
                s.producer_p99_us.push(f(&produced, "p99Us"));
                s.consumer_msgs_per_s
                    .push(messages as f64 / (f(&consumed, "elapsedMs") / 1000.0));
                s.jvm_cpu_per_message_us
                    .push((producer_cpu + consumer_cpu) / messages as f64 * 1e6);
                if let Some(agent) = agent {
                    // Let the last records through before reading the agent's CPU.
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    let metrics = agent.scrape();
                    anyhow::ensure!(
                        metrics["mqtrace_pipeline_correlation_sends_total"] >= messages as f64
                            && metrics["mqtrace_kernel_records_lost_ring_full_total"] == 0.0,
                        "mqtrace did not trace every send, or lost records: {metrics:?}"
                    );
                    s.agent_cpu_per_message_us
                        .push((agent.cpu_seconds() - agent_cpu_before) / messages as f64 * 1e6);
                    agent.stop();
                }
            }
        }
        let _ = std::fs::remove_file(&output);
        Ok(samples)
    })
    .await??;
    anyhow::ensure!(
        !receiver.spans().is_empty(),
        "the OpenTelemetry Java agent exported nothing"
    );
    let base = &samples[0];
    let ratio =
        |mine: &[f64], theirs: &[f64]| (median(mine) / median(theirs) * 1000.0).round() / 1000.0;
    for (i, setup) in SETUPS.iter().enumerate() {
        let s = &samples[i];
        let jvm_extra = median(&s.jvm_cpu_per_message_us) - median(&base.jvm_cpu_per_message_us);
        let own = if *setup == Setup::Mqtrace {
            median(&s.agent_cpu_per_message_us)
        } else {
            0.0
        };
        println!(
            "{}",
            serde_json::json!({
                "bench": "java_clients",
                "setup": format!("{setup:?}"),
                "rounds": rounds,
                "messages": messages,
                "producer_msgs_per_s": median(&s.producer_msgs_per_s).round(),
                "producer_throughput_ratio": ratio(&s.producer_msgs_per_s, &base.producer_msgs_per_s),
                "producer_p99_us": median(&s.producer_p99_us),
                "producer_p99_ratio": ratio(&s.producer_p99_us, &base.producer_p99_us),
                "consumer_msgs_per_s": median(&s.consumer_msgs_per_s).round(),
                "consumer_throughput_ratio": ratio(&s.consumer_msgs_per_s, &base.consumer_msgs_per_s),
                "jvm_cpu_us_per_message": (median(&s.jvm_cpu_per_message_us) * 10.0).round() / 10.0,
                // What tracing costs per message (sent and consumed), wherever it runs: in the
                // JVMs (their CPU above the untraced run's) and in the agent's own process.
                "tracing_cpu_us_per_message": ((jvm_extra + own) * 10.0).round() / 10.0,
                "of_which_in_the_jvms_us": (jvm_extra * 10.0).round() / 10.0,
                "of_which_in_mqtrace_us": (own * 10.0).round() / 10.0,
            })
        );
    }
    Ok(())
}
