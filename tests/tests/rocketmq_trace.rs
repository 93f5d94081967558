//! RocketMQ's own message trace, written by the agent, while the trace topic's broker is down:
//! a real broker (rocketmq-rust) holds the trace topic, the project's load generator sends
//! 1,000 messages/s, and the broker freezes for a minute. Needs root.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use mqtrace_tests::{
    agent::{Agent, memory_mib},
    process::Driven,
    rocketmq::Broker,
};
use serde_json::Value;

/// The agent's RocketMQ trace counters.
fn trace_counters(agent: &Agent) -> Value {
    let status: Value = serde_json::from_str(&agent.control_ok(&["status", "--json"])).unwrap();
    status["counters"]["export"]["rocketmq_trace"].clone()
}

fn number(counters: &Value, key: &str) -> u64 {
    counters[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key}: {counters}"))
}

/// Waits (at most `within`) until `done` holds of the counters; returns them.
fn wait_for(agent: &Agent, what: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let counters = trace_counters(agent);
        if done(&counters) {
            return counters;
        }
        assert!(
            started.elapsed() < within,
            "not within {within:?}: {what}: {counters}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The trace topic does not exist: the agent sends where new topics are made (TBW102's
/// broker), which makes it. Frozen for a minute, the broker costs failed sends, retried, then
/// counted drops once the queue holds its bound (a quarter of a 16 MiB budget): the agent's
/// memory stays flat and tracing goes on; once the broker is back, records are written again.
#[test]
fn a_trace_broker_down_for_a_minute_costs_counted_drops_and_no_memory() {
    let broker = Broker::start("127.0.0.1").unwrap();
    let mut load = Driven::spawn({
        let mut command = Command::new(env!("CARGO_BIN_EXE_frame-load"));
        command.args(["send", "1000", "300"]);
        command
    })
    .unwrap();
    load.expect_line("ready").unwrap();
    let agent = Agent::start(
        "rocketmq-trace-outage",
        &[
            "--pid",
            &load.pid().to_string(),
            "--rocketmq-trace-namesrv",
            &broker.namesrv(),
            "--memory-budget-mib",
            "16",
            "--output",
            "/dev/null",
        ],
    );
    load.say("go").unwrap();
    let before = wait_for(&agent, "records written", Duration::from_secs(30), |c| {
        number(c, "records_written") > 0
    });

    broker.pause();
    let mut rss_mib = Vec::new();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_secs(10));
        rss_mib.push(memory_mib(agent.pid(), "VmRSS:"));
    }
    let during = trace_counters(&agent);
    broker.resume();
    let after = wait_for(
        &agent,
        "records written again",
        Duration::from_secs(60),
        |c| number(c, "records_written") >= number(&during, "records_written") + 5_000,
    );
    let sends: Value = serde_json::from_str(&agent.control_ok(&["status", "--json"])).unwrap();
    drop(load);
    let log = agent.stop();
    println!("agent RSS every 10 s of the outage (MiB): {rss_mib:?}");
    println!("before: {before}\nduring: {during}\nafter: {after}");

    assert!(number(&during, "send_failures") > 0, "{during}");
    assert!(number(&during, "dropped_queue_full") > 0, "{during}");
    // Flat once the queue is full (by 20 s in at 1,000 records/s): an unbounded queue would
    // have grown by about 20 MiB over the minute.
    let full = rss_mib[1];
    let most = rss_mib.iter().copied().fold(0.0, f64::max);
    assert!(most - full < 8.0, "memory grew: {rss_mib:?}");
    // Tracing went on all along.
    assert!(
        sends["counters"]["pipeline"]["correlation"]["sends"].as_u64() >= Some(60_000),
        "{sends}"
    );
    assert!(
        log.contains("RocketMQ trace records not written; retrying"),
        "the failure is said: {log}"
    );
}
