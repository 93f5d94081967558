//! One correct trace per message in the topologies real clusters have, with the agent tracing
//! every process: a relay between clients and broker (on the clients' host, or on its own host
//! with its own agent), a producer that sets no UNIQ_KEY, a consumer that fails a message until
//! it goes to the dead-letter queue, a request the agent stops watching, and a RocketMQ 5
//! client sending over gRPC through a proxy (the agent started before it, or while it sends). Real name server,
//! broker and clients; the real `mqtrace` binary. Needs root and the peers (`cargo xtask test`).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use mqtrace::spans::identity::{SpanId, TraceId};
use mqtrace_protocol::hex_string;
use mqtrace_tests::{
    agent::Agent,
    grpc_broker::GrpcBroker,
    netns::NetNs,
    process::{Driven, ScratchFile},
    relay::Relay,
    rocketmq::{Broker, Proxy, client, client5, json_lines, tail},
    spancheck::{assert_complete_traces, read_span_file},
    wait,
};
use serde_json::Value;

/// The tests share fixed broker ports: they take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A span file of this test run, removed on drop.
struct SpanFile(PathBuf);

impl SpanFile {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "mqtrace-topology-{name}-{}.jsonl",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }
    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
    fn spans(&self) -> Vec<Value> {
        read_span_file(&self.0)
    }
}

impl Drop for SpanFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn succeeded(what: &str, out: Output) -> Vec<Value> {
    assert!(out.status.success(), "{what} failed: {}", tail(&out.stderr));
    json_lines(&out.stdout)
}

/// Runs a client to its end, returning its pid and its JSON lines.
fn run(what: &str, mut command: Command) -> (u32, Vec<Value>) {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let pid = child.id();
    (pid, succeeded(what, child.wait_with_output().unwrap()))
}

fn text<'a>(span: &'a Value, key: &str) -> &'a str {
    span[key].as_str().unwrap_or("")
}

fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn pid_of(span: &Value) -> u64 {
    span["resource"]["process.pid"].as_u64().unwrap_or(0)
}

/// The spans of each trace.
fn by_trace(spans: &[Value]) -> BTreeMap<String, Vec<&Value>> {
    let mut traces: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for span in spans {
        traces
            .entry(text(span, "trace_id").to_string())
            .or_default()
            .push(span);
    }
    traces
}

/// Who did what to a message, as its trace must show it.
struct Expected<'a> {
    key: &'a str,
    topic: &'a str,
    business_key: &'a str,
    producer: u32,
    consumer: u32,
    /// The broker: traced too, its spans (SERVER) may be in the trace, none other of it.
    broker: u32,
    /// The consumer's settlement that must be in the trace too (`commit_offset`, `ack`).
    settled: Option<&'a str>,
}

/// Why the trace of a message is not complete and correct, if it is not: exactly one send
/// span (the producer's, with the send span id), receive spans (and, where asked, the
/// settlement: offset commit or ack) from the consumer, each a child of the send span and carrying the message's keys;
/// besides them only the broker's own spans (SERVER).
fn trace_problem(traces: &BTreeMap<String, Vec<&Value>>, e: &Expected) -> Option<String> {
    let Some(trace) = traces.get(&TraceId::for_message(e.key).hex()) else {
        return Some("no trace".into());
    };
    let send_id = SpanId::for_send(e.key).hex();
    let sends: Vec<&&Value> = trace.iter().filter(|s| s["kind"] == "PRODUCER").collect();
    if sends.len() != 1 {
        return Some(format!("{} send spans", sends.len()));
    }
    let send = sends[0];
    if text(send, "span_id") != send_id || pid_of(send) != u64::from(e.producer) {
        return Some(format!(
            "send span {} from pid {}",
            send["span_id"],
            pid_of(send)
        ));
    }
    let receives: Vec<&&Value> = trace
        .iter()
        .filter(|s| text(s, "name") == format!("receive {}", e.topic))
        .collect();
    let settles: Vec<&&Value> = trace
        .iter()
        .filter(|s| {
            e.settled.is_some_and(|op| {
                s["kind"] == "CLIENT" && text(s, "name") == format!("{op} {}", e.topic)
            })
        })
        .collect();
    if receives.is_empty() || (e.settled.is_some() && settles.is_empty()) {
        return Some(format!(
            "{} receive and {} {} spans",
            receives.len(),
            settles.len(),
            e.settled.unwrap_or("settle")
        ));
    }
    for span in trace {
        let pid = pid_of(span);
        let clients = pid == u64::from(e.producer) || pid == u64::from(e.consumer);
        let brokers = pid == u64::from(e.broker) && span["kind"] == "SERVER";
        if clients == brokers {
            return Some(format!("{} {} from pid {pid}", span["kind"], span["name"]));
        }
        if text(span, "span_id") != send_id && text(span, "parent_span_id") != send_id {
            return Some(format!("{} is not a child of the send", span["name"]));
        }
        if attribute(span, "messaging.rocketmq.message.keys")
            != &serde_json::json!([e.business_key])
        {
            return Some(format!("{} lacks the keys", span["name"]));
        }
    }
    None
}

/// Checks every message's trace; prints the share complete and correct (for the record).
fn assert_traces(test: &str, spans: &[Value], expected: &[Expected]) {
    let traces = by_trace(spans);
    let problems: Vec<String> = expected
        .iter()
        .filter_map(|e| trace_problem(&traces, e).map(|p| format!("{}: {p}", e.key)))
        .collect();
    eprintln!(
        "{test}: {} of {} messages have a complete and correct trace",
        expected.len() - problems.len(),
        expected.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn produce(namesrv: &str, topic: &str, count: usize) -> (u32, Vec<Value>) {
    let mut command = client();
    command.args(["produce", namesrv, topic, &count.to_string()]);
    let (pid, produced) = run("producer", command);
    assert_eq!(produced.len(), count);
    (pid, produced)
}

fn consume(
    namesrv: &str,
    topic: &str,
    group: &str,
    expect: usize,
    extra: &[&str],
) -> (u32, Vec<Value>) {
    let mut command = client();
    command
        .args(["consume", namesrv, topic, group, &expect.to_string(), "120"])
        .args(extra);
    run("consumer", command)
}

/// The relay process: tcp-relay LISTEN=TARGET ..., once it listens.
fn relay_process(mut command: Command, pairs: &[String]) -> Driven {
    command.args(pairs);
    let mut relay = Driven::spawn(command).expect("start tcp-relay");
    relay.expect_line("ready").unwrap();
    relay
}

fn relayed(listen_ip: &str, target_ip: &str) -> Vec<String> {
    [9876, 10911]
        .map(|port| format!("{listen_ip}:{port}={target_ip}:{port}"))
        .to_vec()
}

const MESSAGES: usize = 200;

/// The expectations of a produce/consume run whose messages carry keys "key-<i>".
fn expectations<'a>(
    produced: &'a [Value],
    topic: &'a str,
    producer: u32,
    consumer: u32,
    broker: u32,
) -> Vec<Expected<'a>> {
    expectations_by(produced, "msg_id", topic, producer, consumer, broker)
}

/// The same, the message id in the producer's `id_field` (mq5-client: `message_id`).
fn expectations_by<'a>(
    produced: &'a [Value],
    id_field: &str,
    topic: &'a str,
    producer: u32,
    consumer: u32,
    broker: u32,
) -> Vec<Expected<'a>> {
    produced
        .iter()
        .map(|p| Expected {
            key: p[id_field].as_str().unwrap(),
            topic,
            business_key: p["key"].as_str().unwrap(),
            producer,
            consumer,
            broker,
            settled: Some("commit_offset"),
        })
        .collect()
}

#[test]
fn a_relay_on_the_clients_host_is_not_taken_for_a_client() {
    let _turn = turn();
    let topic = "TopoRelay";
    // The broker listens on 127.0.0.1 and tells clients it is at 127.0.0.2, where the relay
    // listens: every byte between clients and broker crosses the relay process.
    let broker = Broker::start_advertising("127.0.0.1", "127.0.0.2").unwrap();
    let relay = relay_process(
        Command::new(env!("CARGO_BIN_EXE_tcp-relay")),
        &relayed("127.0.0.2", "127.0.0.1"),
    );
    let file = SpanFile::new("relay");
    let agent = Agent::start("topo-relay", &["--all", "--output", file.arg()]);
    let namesrv = "127.0.0.2:9876";
    let (producer, produced) = produce(namesrv, topic, MESSAGES);
    let (consumer, consumed) = consume(namesrv, topic, "topo_relay_group", MESSAGES, &[]);
    assert!(consumed.len() >= MESSAGES);
    let counters = agent.scrape();
    // A business key finds the message's whole story, the consumer's steps too.
    agent.await_timeline(
        &["--key", "key-7"],
        &["send", "receive", "settle commit_offset"],
        Duration::from_secs(20),
    );
    agent.stop();
    let relay_pid = u64::from(relay.pid());
    drop(relay);
    let broker_pid = broker.pid();
    drop(broker);

    let spans = file.spans();
    assert_complete_traces(&spans);
    let of_relay: Vec<String> = spans
        .iter()
        .filter(|s| pid_of(s) == relay_pid)
        .map(|s| format!("{} {}", s["name"], s["attributes"]["messaging.message.id"]))
        .collect();
    assert!(
        of_relay.is_empty(),
        "the relay made {} spans: {:?}\n{counters:?}",
        of_relay.len(),
        &of_relay[..of_relay.len().min(10)]
    );
    assert_traces(
        "relay on the clients' host",
        &spans,
        &expectations(&produced, topic, producer, consumer, broker_pid),
    );
    assert!(
        counters["mqtrace_pipeline_correlation_serving_process_requests_total"] >= MESSAGES as f64,
        "the relay's forwarded requests are counted: {counters:?}"
    );
    assert_eq!(
        counters["mqtrace_pipeline_correlation_sends_total"],
        MESSAGES as f64
    );
}

#[test]
fn a_relay_on_its_own_host_with_its_own_agent_adds_no_span() {
    let _turn = turn();
    let topic = "TopoRelayHost";
    let relay_host = NetNs::create(3).unwrap();
    // Clients reach the relay's host at its link address; the relay forwards to this host's
    // link address, where a second relay (in the test process: one more hop, traced by the
    // clients' agent) reaches the broker on loopback, the only address it serves in plain TCP.
    let broker = Broker::start_advertising("127.0.0.1", &relay_host.ns_ip).unwrap();
    let _hop = [9876, 10911].map(|port| {
        Relay::start(
            &format!("{}:{port}", relay_host.host_ip),
            &format!("127.0.0.1:{port}"),
        )
        .unwrap()
    });
    let relay = relay_process(
        relay_host.command(env!("CARGO_BIN_EXE_tcp-relay")),
        &relayed(&relay_host.ns_ip, &relay_host.host_ip),
    );
    // `ip netns exec` execs the relay: the pid is the relay's.
    let relay_pid = relay.pid().to_string();
    let (clients_file, relay_file) = (SpanFile::new("clients"), SpanFile::new("relay-host"));
    let clients_agent = Agent::start("topo-clients", &["--all", "--output", clients_file.arg()]);
    let relay_agent = Agent::start(
        "topo-relay-host",
        &["--pid", &relay_pid, "--output", relay_file.arg()],
    );
    let namesrv = format!("{}:9876", relay_host.ns_ip);
    let (producer, produced) = produce(&namesrv, topic, MESSAGES);
    let (consumer, consumed) = consume(&namesrv, topic, "topo_host_group", MESSAGES, &[]);
    assert!(consumed.len() >= MESSAGES);
    let relay_counters = relay_agent.scrape();
    relay_agent.stop();
    clients_agent.stop();
    drop(relay);
    let broker_pid = broker.pid();
    drop(broker);

    let (clients_spans, relay_spans) = (clients_file.spans(), relay_file.spans());
    assert!(
        relay_spans.is_empty(),
        "the relay host's agent made {} spans",
        relay_spans.len()
    );
    assert!(
        relay_counters["mqtrace_pipeline_correlation_serving_process_requests_total"]
            >= MESSAGES as f64,
        "the relay host's agent saw the relay forward: {relay_counters:?}"
    );
    // What it accepted it forwarded: a relay, no broker, so no broker spans either.
    assert!(
        relay_counters["mqtrace_pipeline_correlation_relayed_requests_total"] >= MESSAGES as f64,
        "{relay_counters:?}"
    );
    assert_eq!(
        relay_counters["mqtrace_pipeline_correlation_broker_stored_total"],
        0.0
    );
    let all = [clients_spans, relay_spans].concat();
    assert_complete_traces(&all);
    assert_traces(
        "relay on its own host",
        &all,
        &expectations(&produced, topic, producer, consumer, broker_pid),
    );
}

#[test]
fn a_producer_without_uniq_key_joins_its_consumer() {
    let _turn = turn();
    let topic = "TopoNoUniqKey";
    let raw = 20;
    let broker = Broker::start("127.0.0.1").unwrap();
    let file = SpanFile::new("no-uniq-key");
    let agent = Agent::start("topo-no-uniq", &["--all", "--output", file.arg()]);
    let namesrv = broker.namesrv();
    // One message from the real client makes the topic and its route.
    let (_, first) = produce(&namesrv, topic, 1);
    let mut command = Command::new(env!("CARGO_BIN_EXE_raw-producer"));
    command.args(["127.0.0.1:10911", topic, &raw.to_string()]);
    let (producer, sent) = run("raw-producer", command);
    assert_eq!(sent.len(), raw);
    let (consumer, consumed) = consume(&namesrv, topic, "topo_raw_group", raw + 1, &[]);
    agent.stop();
    let broker_pid = broker.pid();
    drop(broker);

    // The broker assigned each one a UNIQ_KEY and said which; the consumer sees the same.
    let seen: Vec<&str> = consumed
        .iter()
        .filter_map(|c| c["uniq_key"].as_str())
        .collect();
    let expected: Vec<Expected> = sent
        .iter()
        .map(|s| {
            let key = s["transaction_id"]
                .as_str()
                .expect("the broker returns the UNIQ_KEY it assigned");
            assert!(seen.contains(&key), "{key} consumed");
            Expected {
                key,
                topic,
                business_key: s["key"].as_str().unwrap(),
                producer,
                consumer,
                broker: broker_pid,
                // What (c) asks: each receive under its send. The consumer's last offset
                // commit may come after it leaves.
                settled: None,
            }
        })
        .collect();
    let spans = file.spans();
    assert_complete_traces(&spans);
    assert_traces("producer without UNIQ_KEY", &spans, &expected);
    assert!(first[0]["msg_id"].is_string());
}

#[test]
fn a_message_failed_until_the_dead_letter_queue_keeps_one_trace() {
    let _turn = turn();
    let topic = "TopoDlq";
    let group = "topo_dlq_group";
    let messages = 10;
    let broker = Broker::start("127.0.0.1").unwrap();
    let file = SpanFile::new("dlq");
    let agent = Agent::start("topo-dlq", &["--all", "--output", file.arg()]);
    let namesrv = broker.namesrv();
    let (producer, produced) = produce(&namesrv, topic, messages);
    // Every delivery fails; the group retries a message once, then it goes to the DLQ.
    let (consumer, deliveries) = consume(
        &namesrv,
        topic,
        group,
        messages,
        &["--fail-all", "--max-reconsume", "1"],
    );
    agent.stop();
    let broker_pid = broker.pid();
    drop(broker);

    let spans = file.spans();
    assert_complete_traces(&spans);
    let traces = by_trace(&spans);
    let mut complete = 0;
    let mut problems = Vec::new();
    for p in &produced {
        let id = p["msg_id"].as_str().unwrap();
        assert!(
            deliveries
                .iter()
                .any(|d| d["uniq_key"] == id && d["reconsume_times"] == 1),
            "{id}: redelivered once"
        );
        let trace = traces
            .get(&TraceId::for_message(id).hex())
            .cloned()
            .unwrap_or_default();
        // In the order the steps ended (a receive starts when its long poll does): what
        // happened to the message, step by step.
        let mut steps: Vec<&Value> = trace;
        steps.sort_by_key(|s| s["end_unix_nano"].as_u64());
        let story: Vec<(String, u64, i64)> = steps
            .iter()
            .filter(|s| s["kind"] != "SERVER")
            .map(|s| {
                (
                    text(s, "name").to_string(),
                    pid_of(s),
                    attribute(s, "mqtrace.reconsume_times")
                        .as_i64()
                        .unwrap_or(0),
                )
            })
            .collect();
        let (producer, consumer) = (u64::from(producer), u64::from(consumer));
        let want = [
            (format!("send {topic}"), producer, 0),
            (format!("receive {topic}"), consumer, 0),
            (format!("send_back {topic}"), consumer, 0),
            (format!("receive %RETRY%{group}"), consumer, 1),
            (format!("dead_letter %DLQ%{group}"), consumer, 1),
        ];
        // Offsets committed past the message (whenever the consumer gets to it) are not
        // part of the story asked for here.
        let story: Vec<_> = story
            .into_iter()
            .filter(|(name, _, _)| !name.starts_with("commit_offset "))
            .collect();
        // The broker's view of the same story, from its side of the connections.
        let broker_story: Vec<(String, i64)> = steps
            .iter()
            .filter(|s| s["kind"] == "SERVER" && pid_of(s) == u64::from(broker_pid))
            .map(|s| {
                let times = attribute(s, "mqtrace.reconsume_times").as_i64();
                (text(s, "name").to_string(), times.unwrap_or(0))
            })
            .filter(|(name, _)| !name.starts_with("commit_offset "))
            .collect();
        let broker_want = [
            (format!("store {topic}"), 0),
            (format!("deliver {topic}"), 0),
            (format!("send_back {topic}"), 0),
            (format!("deliver %RETRY%{group}"), 1),
            (format!("dead_letter %DLQ%{group}"), 1),
        ];
        let send_id = SpanId::for_send(id).hex();
        let children_of_send = steps
            .iter()
            .filter(|s| text(s, "span_id") != send_id)
            .all(|s| text(s, "parent_span_id") == send_id);
        let ok_status = steps.iter().all(|s| s["status"] != "ERROR");
        if story == want && broker_story == broker_want && children_of_send && ok_status {
            complete += 1;
        } else {
            problems.push(format!("{id}: {story:?} broker: {broker_story:?}"));
        }
    }
    eprintln!(
        "dead-letter lineage: {complete} of {messages} messages have a complete and correct trace"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_request_the_agent_stopped_watching_is_not_an_error() {
    let _turn = turn();
    let topic = "TopoBlind";
    let broker = Broker::start("127.0.0.1").unwrap();
    let file = SpanFile::new("blind");
    let agent = Agent::start(
        "topo-blind",
        &["--all", "--output", file.arg(), "--request-timeout", "3"],
    );
    // The producer starts, connects and waits before its first message.
    let mut command = client();
    command.args([
        "produce",
        &broker.namesrv(),
        topic,
        "1",
        "--pause-every",
        "1000",
    ]);
    let mut producer = Driven::spawn(command).unwrap();
    producer.expect_line("{\"pause\":0}").unwrap();
    let waiting = |agent: &Agent| agent.scrape()["mqtrace_pipeline_requests_waiting"];
    let before = waiting(&agent);
    // The broker freezes; the message goes out and waits for an answer ...
    broker.pause();
    producer.say("go").unwrap();
    let sent = || {
        let now = waiting(&agent);
        wait::done_or(now > before, || format!("{now} waiting"))
    };
    let every = Duration::from_millis(50);
    wait::until("the send to wait", Duration::from_secs(10), every, sent).unwrap();
    // ... when the producer is disabled: the agent stops watching it mid-request.
    agent.control_ok(&["disable", "--pid", &producer.pid().to_string()]);
    broker.resume();
    producer.finish().unwrap();
    // The request ended when the agent stopped watching: nothing is left to time out.
    let deselected =
        || agent.scrape()["mqtrace_pipeline_correlation_unseen_responses_deselected_total"];
    let every = Duration::from_millis(100);
    wait::holds(Duration::from_secs(10), every, || deselected() >= 1.0);
    let counters = agent.scrape();
    agent.stop();
    drop(broker);

    let spans = file.spans();
    let errors: Vec<&Value> = spans.iter().filter(|s| s["status"] == "ERROR").collect();
    assert!(
        errors.is_empty(),
        "the agent's blind spot is no error: {errors:?}"
    );
    let send = spans
        .iter()
        .find(|s| s["kind"] == "PRODUCER")
        .expect("the send span, ended when the agent stopped watching");
    assert_eq!(send["status"], "UNSET");
    assert_eq!(attribute(send, "mqtrace.response.unseen"), "deselected");
    assert!(counters["mqtrace_pipeline_correlation_unseen_responses_deselected_total"] >= 1.0);
    assert_eq!(counters["mqtrace_pipeline_correlation_timeouts_total"], 0.0);
}

/// The spans of `spans` named `name` (one per message expected), by message ID.
fn named<'a>(spans: &'a [Value], name: &str) -> BTreeMap<&'a str, Vec<&'a Value>> {
    let mut by_id: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for span in spans.iter().filter(|s| text(s, "name") == name) {
        by_id
            .entry(
                attribute(span, "messaging.message.id")
                    .as_str()
                    .unwrap_or(""),
            )
            .or_default()
            .push(span);
    }
    by_id
}

#[test]
fn an_agent_tracing_only_the_broker_sees_every_message_and_joins_the_clients_agent() {
    let _turn = turn();
    let topic = "TopoBrokerView";
    let group = "topo_broker_view_group";
    let broker = Broker::start("127.0.0.1").unwrap();
    let broker_pid = broker.pid();
    // Two agents that know nothing of each other: one on the broker "host" tracing only the
    // broker process, one tracing only the clients.
    let (broker_file, clients_file) = (SpanFile::new("broker-view"), SpanFile::new("its-clients"));
    let broker_agent = Agent::start(
        "topo-broker-host",
        &[
            "--pid",
            &broker_pid.to_string(),
            "--output",
            broker_file.arg(),
        ],
    );
    let clients_agent = Agent::start(
        "topo-broker-clients",
        &["--comm", "mq-client", "--output", clients_file.arg()],
    );
    let namesrv = broker.namesrv();
    let (producer, produced) = produce(&namesrv, topic, MESSAGES);
    let (consumer, consumed) = consume(&namesrv, topic, group, MESSAGES, &[]);
    assert!(consumed.len() >= MESSAGES);
    broker_agent.await_timeline(
        &["--key", "key-7"],
        &["broker store", "broker deliver", "broker commit_offset"],
        Duration::from_secs(20),
    );
    let counters = broker_agent.scrape();
    broker_agent.stop();
    clients_agent.stop();
    drop(broker);

    let (at_broker, at_clients) = (broker_file.spans(), clients_file.spans());
    assert!(
        at_broker
            .iter()
            .all(|s| pid_of(s) == u64::from(broker_pid) && s["kind"] == "SERVER"),
        "the broker host's agent makes the broker's spans only"
    );
    // Per message, from the broker alone: stored (by the producer), delivered (to the
    // consumer's group, from the queue the producer was told), reported (the offset commit).
    let (stored, delivered, reported) = (
        named(&at_broker, &format!("store {topic}")),
        named(&at_broker, &format!("deliver {topic}")),
        named(&at_broker, &format!("commit_offset {topic}")),
    );
    let client_id = |s: &Value| {
        attribute(s, "messaging.client.id")
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let mut problems = Vec::new();
    let mut clients_seen = std::collections::BTreeSet::new();
    for p in &produced {
        let id = p["msg_id"].as_str().unwrap();
        let (Some(store), Some(deliver), Some(report)) =
            (stored.get(id), delivered.get(id), reported.get(id))
        else {
            problems.push(format!(
                "{id}: {} stored, {} delivered, {} reported",
                stored.get(id).map_or(0, Vec::len),
                delivered.get(id).map_or(0, Vec::len),
                reported.get(id).map_or(0, Vec::len)
            ));
            continue;
        };
        let (store, deliver, report) = (store[0], deliver[0], report[0]);
        let queue = p["queue_id"].as_i64().unwrap().to_string();
        let wanted = [
            (
                store,
                "messaging.rocketmq.client_group",
                "mqtrace_test_producer",
            ),
            (deliver, "messaging.consumer.group.name", group),
            (report, "messaging.consumer.group.name", group),
            (store, "messaging.destination.partition.id", queue.as_str()),
            (
                deliver,
                "messaging.destination.partition.id",
                queue.as_str(),
            ),
            (store, "mqtrace.client.language", "RUST"),
            (deliver, "mqtrace.client.language", "RUST"),
            (store, "client.address", "127.0.0.1"),
            (store, "messaging.message.id", id),
        ];
        for (span, key, value) in wanted {
            if attribute(span, key) != value {
                problems.push(format!(
                    "{id}: {} {key} {}",
                    span["name"],
                    attribute(span, key)
                ));
            }
        }
        if attribute(store, "mqtrace.queue_offset") != &p["queue_offset"] {
            problems.push(format!(
                "{id}: stored at {}",
                attribute(store, "mqtrace.queue_offset")
            ));
        }
        if !attribute(deliver, "mqtrace.queue_time_ms").is_i64() {
            problems.push(format!("{id}: no queue time"));
        }
        if attribute(store, "messaging.rocketmq.message.keys") != &serde_json::json!([p["key"]]) {
            problems.push(format!("{id}: store lacks the keys"));
        }
        clients_seen.insert((client_id(store), client_id(deliver), client_id(report)));
    }
    eprintln!(
        "broker view: {} of {MESSAGES} messages stored, delivered and reported, naming their client",
        MESSAGES - problems.len().min(MESSAGES)
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // One producer and one consumer: the heartbeats named each, and not the same.
    assert_eq!(clients_seen.len(), 1, "{clients_seen:?}");
    let (of_producer, of_consumer, of_report) = clients_seen.into_iter().next().unwrap();
    assert!(
        !of_producer.is_empty() && of_producer != of_consumer,
        "{of_producer} {of_consumer}"
    );
    assert_eq!(of_consumer, of_report);
    assert_eq!(
        counters["mqtrace_pipeline_correlation_broker_stored_total"],
        MESSAGES as f64
    );
    // The group's lag on each queue of the topic, from what the broker answered and was told.
    let lags: Vec<(&String, &f64)> = counters
        .iter()
        .filter(|(name, _)| {
            name.starts_with("mqtrace_pipeline_consumer_lag_messages{")
                && name.contains(&format!("group=\"{group}\""))
                && name.contains(&format!("topic=\"{topic}\""))
        })
        .collect();
    assert!(!lags.is_empty(), "no lag series: {counters:?}");
    assert!(
        lags.iter()
            .all(|(_, lag)| (0.0..=MESSAGES as f64).contains(*lag)),
        "{lags:?}"
    );
    // With the clients' agent's spans: one trace per message holding both sides, the
    // clients' as without the broker's, no span id twice, every parent there.
    let all = [at_clients, at_broker].concat();
    assert_complete_traces(&all);
    assert_traces(
        "broker and clients agents",
        &all,
        &expectations(&produced, topic, producer, consumer, broker_pid),
    );
}

/// mq5-client producing `count` messages through `proxy` (keys key-0, key-1, ...).
fn produce5(proxy: &Proxy, topic: &str, count: usize, interval_ms: u64) -> Command {
    produce5_to(&proxy.grpc_endpoint(), topic, count, interval_ms)
}

fn produce5_to(endpoint: &str, topic: &str, count: usize, interval_ms: u64) -> Command {
    let mut command = client5();
    command.args([
        "produce",
        "--endpoint",
        endpoint,
        "--topic",
        topic,
        "--count",
        &count.to_string(),
        "--interval-ms",
        &interval_ms.to_string(),
    ]);
    command
}

/// Fails naming the spans of `pid` (a relay's: it must make none).
fn assert_spanless(what: &str, spans: &[Value], pid: u32) {
    let of: Vec<String> = spans
        .iter()
        .filter(|s| pid_of(s) == u64::from(pid))
        .map(|s| format!("{} {}", s["name"], s["attributes"]["messaging.message.id"]))
        .collect();
    assert!(
        of.is_empty(),
        "{what} made {} spans: {:?}",
        of.len(),
        &of[..of.len().min(10)]
    );
}

#[test]
fn a_5x_client_sending_over_grpc_through_the_proxy_joins_its_remoting_consumer() {
    let _turn = turn();
    let topic = "TopoGrpc";
    let broker = Broker::start("127.0.0.1").unwrap();
    // The proxy does not create topics; this sends one message before the agent starts.
    broker.make_topic(topic);
    let proxy = Proxy::start(&broker).unwrap();
    let file = SpanFile::new("grpc");
    let agent = Agent::start("topo-grpc", &["--all", "--output", file.arg()]);
    let (producer, produced) = run("5.x producer", produce5(&proxy, topic, MESSAGES, 0));
    assert_eq!(produced.len(), MESSAGES);
    let (consumer, consumed) = consume(&broker.namesrv(), topic, "topo_grpc_group", MESSAGES, &[]);
    assert!(consumed.len() >= MESSAGES);
    // The proxy hands the 5.x client's message id to the broker as its UNIQ_KEY.
    let uniq_keys: std::collections::BTreeSet<&str> = consumed
        .iter()
        .filter_map(|c| c["uniq_key"].as_str())
        .collect();
    for p in &produced {
        assert!(uniq_keys.contains(p["message_id"].as_str().unwrap()), "{p}");
    }
    let counters = agent.scrape();
    agent.await_timeline(
        &["--key", "key-7"],
        &["send", "receive"],
        Duration::from_secs(20),
    );
    agent.stop();
    let proxy_pid = proxy.pid();
    drop(proxy);
    let broker_pid = broker.pid();
    drop(broker);

    let spans = file.spans();
    eprintln!("{counters:?}");
    assert_spanless("the proxy", &spans, proxy_pid);
    assert_traces(
        "5.x client through the gRPC proxy",
        &spans,
        &expectations_by(
            &produced,
            "message_id",
            topic,
            producer,
            consumer,
            broker_pid,
        ),
    );
    let sends: Vec<&Value> = spans.iter().filter(|s| s["kind"] == "PRODUCER").collect();
    assert_eq!(sends.len(), MESSAGES);
    for send in sends {
        assert_eq!(attribute(send, "rpc.system"), "grpc", "{send}");
        assert_eq!(attribute(send, "rpc.method"), "SendMessage", "{send}");
    }
    // The client's side and the proxy's side of each send.
    assert!(
        counters["mqtrace_pipeline_decoder_grpc_calls_total"] >= (2 * MESSAGES) as f64,
        "{counters:?}"
    );
    assert!(
        counters["mqtrace_pipeline_correlation_relayed_requests_total"] >= MESSAGES as f64,
        "the proxy's accepted calls are relayed: {counters:?}"
    );
    assert!(
        counters["mqtrace_pipeline_correlation_serving_process_requests_total"] >= MESSAGES as f64,
        "the proxy's remoting sends are its clients': {counters:?}"
    );
}

#[test]
fn an_agent_started_while_a_5x_client_sends_traces_what_follows_and_counts_what_it_missed() {
    let _turn = turn();
    let topic = "TopoGrpcLate";
    let broker = Broker::start("127.0.0.1").unwrap();
    broker.make_topic(topic);
    let proxy = Proxy::start(&broker).unwrap();
    // 200 sends over 8 s on one connection; the agent starts about 2 s in.
    let mut producer = produce5(&proxy, topic, MESSAGES, 40);
    let child = producer
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mq5-client");
    let producer_pid = child.id();
    let mut producer = mqtrace_tests::rocketmq::Owned(child);
    std::thread::sleep(Duration::from_secs(2));
    let file = SpanFile::new("grpc-late");
    let agent = Agent::start("topo-grpc-late", &["--all", "--output", file.arg()]);
    let tracing_since = Instant::now();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut producer.0.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(
        producer.0.wait().unwrap().success(),
        "the 5.x producer failed"
    );
    let produced = json_lines(stdout.as_bytes());
    assert_eq!(produced.len(), MESSAGES);
    let sending_for = tracing_since.elapsed();
    let counters = agent.scrape();
    agent.stop();
    drop(proxy);
    drop(broker);

    let spans = file.spans();
    let traced: std::collections::BTreeSet<&str> = spans
        .iter()
        .filter(|s| s["kind"] == "PRODUCER" && pid_of(s) == u64::from(producer_pid))
        .map(|s| text(&s["attributes"], "messaging.message.id"))
        .collect();
    // The last messages went out well after the agent traced: every one of them is there.
    let after = ((sending_for.as_millis() as usize / 40) / 2).min(MESSAGES / 4);
    let missing: Vec<&str> = produced[MESSAGES - after..]
        .iter()
        .map(|p| p["message_id"].as_str().unwrap())
        .filter(|id| !traced.contains(id))
        .collect();
    eprintln!(
        "joined mid-stream: {} of {MESSAGES} sends traced, the last {after} all required; {:?}",
        traced.len(),
        counters
            .iter()
            .filter(|(k, _)| k.contains("grpc"))
            .collect::<Vec<_>>()
    );
    assert!(
        missing.is_empty(),
        "untraced after the agent started: {missing:?}"
    );
    // Joined mid-stream, the header tables are unknown: counted, the methods inferred.
    assert!(
        counters["mqtrace_pipeline_decoder_grpc_header_blocks_undecoded_total"] >= 1.0,
        "{counters:?}"
    );
    assert!(
        counters["mqtrace_pipeline_decoder_grpc_methods_inferred_total"] >= after as f64,
        "{counters:?}"
    );
}

/// rocketmq-proxy-rust 1.0.0 cannot serve a 5.x consumer its messages by the ids their
/// producer was told (README, "Not traced yet"), so the consumer's side runs against a gRPC
/// server of our own (tests/src/bin/grpc-broker.rs) with the real client library: a 5.x
/// producer and a 5.x consumer, both over gRPC, every process traced.
#[test]
fn a_5x_consumers_receive_and_ack_join_the_5x_send_over_grpc() {
    let _turn = turn();
    let topic = "TopoGrpcConsumer";
    let server = GrpcBroker::start().unwrap();
    let file = SpanFile::new("grpc-consumer");
    let agent = Agent::start("topo-grpc-consumer", &["--all", "--output", file.arg()]);
    let (producer, produced) = run(
        "5.x producer",
        produce5_to(&server.endpoint(), topic, MESSAGES, 0),
    );
    assert_eq!(produced.len(), MESSAGES);
    let mut command = client5();
    command.args([
        "consume",
        "--endpoint",
        &server.endpoint(),
        "--topic",
        topic,
        "--group",
        "topo_grpc_consumers",
        "--count",
        &MESSAGES.to_string(),
        "--timeout-s",
        "60",
        "--batch",
        "16",
    ]);
    let (consumer, consumed) = run("5.x consumer", command);
    assert_eq!(consumed.len(), MESSAGES);
    agent.await_timeline(
        &["--key", "key-7"],
        &["send", "receive", "settle ack"],
        Duration::from_secs(20),
    );
    let counters = agent.scrape();
    agent.stop();
    let server_pid = server.pid();
    drop(server);

    let spans = file.spans();
    mqtrace_tests::spancheck::assert_parents_present(&spans);
    // The server's side of each call is the broker's view (store, deliver, ack); the
    // consumer settles by acking.
    let expected: Vec<Expected> = expectations_by(
        &produced,
        "message_id",
        topic,
        producer,
        consumer,
        server_pid,
    )
    .into_iter()
    .map(|e| Expected {
        settled: Some("ack"),
        ..e
    })
    .collect();
    assert_traces("5.x producer and consumer over gRPC", &spans, &expected);
    for span in spans.iter().filter(|s| pid_of(s) != u64::from(server_pid)) {
        assert_eq!(attribute(span, "rpc.system"), "grpc", "{span}");
    }
    let broker_views: Vec<&str> = spans
        .iter()
        .filter(|s| pid_of(s) == u64::from(server_pid))
        .map(|s| text(s, "name"))
        .collect();
    for name in [
        format!("store {topic}"),
        format!("deliver {topic}"),
        format!("ack {topic}"),
    ] {
        assert_eq!(
            broker_views.iter().filter(|n| **n == name).count(),
            MESSAGES,
            "{name}: {counters:?}"
        );
    }
}

/// The 5.x Java, Go, C++ and C# clients start TLS by default. Apache's Rust 5.x client with TLS
/// on, against a server that speaks none: both ends of the connection are reported encrypted,
/// nothing is taken from them, and the agent goes on tracing the plain client after it.
#[test]
fn a_5x_client_with_tls_on_is_reported_as_encrypted_and_the_agent_goes_on() {
    let _turn = turn();
    let topic = "TopoGrpcTls";
    let server = GrpcBroker::start().unwrap();
    let file = SpanFile::new("grpc-tls");
    let agent = Agent::start("topo-grpc-tls", &["--all", "--output", file.arg()]);
    let mut encrypted = produce5_to(&server.endpoint(), topic, 1, 0);
    encrypted
        .args(["--tls", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut client = mqtrace_tests::rocketmq::Owned(encrypted.spawn().expect("start mq5-client"));
    wait::holds(Duration::from_secs(30), wait::POLL, || {
        client.0.try_wait().unwrap().is_some()
    });
    drop(client);
    // The client's connection and the one the server accepted: both began with a ClientHello.
    agent.await_metric(
        "mqtrace_pipeline_connections_tls_total",
        2.0,
        Duration::from_secs(10),
    );
    let status = agent.control_ok(&["status"]);
    assert!(status.contains("  TLS, not traced"), "{status}");
    let (producer, produced) = run("5.x producer", produce5_to(&server.endpoint(), topic, 5, 0));
    let counters = agent.scrape();
    agent.stop();
    drop(server);
    let spans = file.spans();
    let sends: Vec<&str> = spans
        .iter()
        .filter(|s| s["kind"] == "PRODUCER" && pid_of(s) == u64::from(producer))
        .map(|s| text(&s["attributes"], "messaging.message.id"))
        .collect();
    let ids: Vec<&str> = produced
        .iter()
        .map(|p| p["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(sends, ids, "{counters:?}");
}

/// A client over the system's libssl (Python's ssl module on Debian's libssl3: SSL_write_ex and
/// SSL_read_ex over a socket BIO), speaking real remoting frames to a server process over the
/// same, TLS on: every send traced as over plaintext, `mqtrace.capture` `tls-uprobe`, both ends
/// of the connection bound to their plaintext.
#[test]
fn a_client_over_the_system_libssl_is_traced_through_tls() {
    const SENDS: u64 = 20;
    let _turn = turn();
    let (cert, key, frames) = (
        ScratchFile::new("mqtrace-tls-cert.pem"),
        ScratchFile::new("mqtrace-tls-key.pem"),
        ScratchFile::new("mqtrace-tls-frames.hex"),
    );
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&cert.0, certified.cert.pem()).unwrap();
    std::fs::write(&key.0, certified.key_pair.serialize_pem()).unwrap();
    let captures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("captures/rust-client");
    let exchange = mqtrace_tests::frames::send_exchange(&captures).unwrap();
    let run = std::process::id() as u64;
    let mut lines = String::new();
    let mut ids = Vec::new();
    for n in 0..SENDS {
        let id = mqtrace_tests::frames::message_id(run, n);
        ids.push(String::from_utf8(id.to_vec()).unwrap());
        let opaque = mqtrace_tests::frames::FIRST_OPAQUE + n as u32;
        lines += &hex_string(&exchange.request.render(opaque, |_| id));
        lines += "\n";
        lines += &hex_string(&exchange.response.render(opaque, |_| id));
        lines += "\n";
    }
    std::fs::write(&frames.0, lines).unwrap();

    let file = SpanFile::new("system-libssl");
    let agent = Agent::start("topo-system-libssl", &["--all", "--output", file.arg()]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/tls-remoting/exchange.py");
    let python = |args: &[&std::ffi::OsStr]| {
        let mut command = Command::new("/usr/bin/python3");
        command.arg(&script).args(args);
        command
    };
    let mut server = Driven::spawn(python(&[
        "server".as_ref(),
        cert.0.as_os_str(),
        key.0.as_os_str(),
        frames.0.as_os_str(),
    ]))
    .unwrap();
    let port = server.read_value("port").unwrap();
    let out = python(&["client".as_ref(), port.as_ref(), frames.0.as_os_str()])
        .output()
        .expect("Debian's python3");
    assert!(out.status.success(), "{out:?}");
    server.finish().unwrap();
    let file_sends = || {
        file.spans()
            .into_iter()
            .filter(|s| s["kind"] == "PRODUCER")
            .collect::<Vec<Value>>()
    };
    wait::holds(Duration::from_secs(15), wait::POLL, || {
        file_sends().len() as u64 >= SENDS
    });
    let status: Value = serde_json::from_str(&agent.control_ok(&["status", "--json"])).unwrap();
    let log = agent.stop();
    let sends = file_sends();
    let traced: Vec<&str> = sends
        .iter()
        .map(|s| text(&s["attributes"], "messaging.message.id"))
        .collect();
    assert_eq!(traced, ids, "{log}");
    for send in &sends {
        assert_eq!(
            text(&send["attributes"], "mqtrace.capture"),
            "tls-uprobe",
            "{send}"
        );
        assert_ne!(send["status"], "ERROR", "{send}");
    }
    let tls = &status["counters"]["agent"]["tls"];
    assert!(tls["connections_bound"].as_u64() >= Some(2), "{tls}\n{log}");
}
