//! Apache RocketMQ's own Java servers (5.5.0: direct, proxy in local and cluster mode; 4.9.7)
//! with Apache's Java clients (remoting 5.5.0 and 4.9.7, gRPC 5.x), its Go, C++ and Rust
//! clients and ali-ons, every process traced by the real `mqtrace run`: for each message, one
//! send span, a receive span per delivery and a settlement per outcome, each once, joined in
//! one trace; the broker's own spans beside them. Needs root and the peers (`cargo xtask
//! test`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
};

use mqtrace::spans::identity::{SpanId, TraceId};
use mqtrace_tests::{
    agent::Agent,
    apache::{Cluster, REMOTING_SEND_MODES, Release, Topology, app, app_with, run_to_end},
    process::ScratchFile,
    rocketmq::{Broker, client, client5, json_lines, peers_root, tail},
    spancheck::{assert_complete_traces, read_span_file},
};
use serde_json::Value;

/// Every remoting client the test applications drive, but rocketmq-client-rust (`rust_run`).
const REMOTING_CLIENTS: [Client; 5] = [
    Client::JavaRemoting(Release::V5),
    Client::JavaRemoting(Release::V4),
    Client::GoRemoting,
    Client::Cpp,
    Client::AliOns,
];

/// The tests share the Java peers' fixed ports: they take turns even when cargo runs tests in
/// parallel (tokio's mutex does not poison when a test fails).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MESSAGES: usize = 20;

/// Topics the servers send to themselves.
const SYSTEM_TOPICS: &[&str] = &["DefaultHeartBeatSyncerTopic", "RMQ_SYS_TRACE_TOPIC"];

/// Runs a client program to its end; the JSON lines it printed about messages (a consumer also
/// says when it is ready, and each ends with its done line).
fn run_client(mut command: Command) -> Vec<Value> {
    run_to_end(&mut command)
        .into_iter()
        .filter(|line| line.get("msgId").is_some())
        .collect()
}

/// Apache's RocketMQ clients, as the test applications drive them.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// The Java remoting client (`rocketmq-client`) of a release.
    JavaRemoting(Release),
    /// `rocketmq-client-go/v2` (remoting).
    GoRemoting,
    /// The Java 5.x gRPC client (`rocketmq-client-java`).
    JavaGrpc,
    /// `rocketmq-clients/golang/v5` (gRPC).
    GoGrpc,
    /// Apache's C++ client (remoting), through PyPI `rocketmq`'s bindings.
    Cpp,
    /// ali-ons (remoting, pure JavaScript): sets no UNIQ_KEY.
    AliOns,
    /// Apache's Node.js 5.x client (`rocketmq-client-nodejs`, gRPC over grpc-js; TLS from the
    /// OpenSSL inside `node`).
    NodeGrpc,
}

impl Client {
    fn name(self) -> String {
        match self {
            Client::JavaRemoting(release) => format!("Java remoting {}", release.version()),
            Client::GoRemoting => "Go rocketmq-client-go v2".into(),
            Client::JavaGrpc => "Java gRPC 5.x".into(),
            Client::GoGrpc => "Go rocketmq-clients v5".into(),
            Client::Cpp => "C++ rocketmq-client-cpp (PyPI rocketmq 0.4.4)".into(),
            Client::AliOns => "Node.js ali-ons 3.12.0".into(),
            Client::NodeGrpc => "Node.js rocketmq-client-nodejs 1.0.8".into(),
        }
    }

    /// A command running this client's producer (`consumer` false) or consumer; the flags
    /// that both the Java and the Go applications take follow.
    fn command(self, consumer: bool, java_consumer: &str) -> Command {
        let verb = if consumer { "consume" } else { "produce" };
        let go = |binary: &str| {
            let mut command = Command::new(peers_root().join("bin").join(binary));
            command.arg(verb);
            command
        };
        let script = |interpreter: PathBuf, script: PathBuf| {
            let mut command = Command::new(interpreter);
            command.arg(script).arg(verb);
            command
        };
        let cpp = peers_root().join("python/cpp-client");
        let ali_ons = peers_root().join("node/ali-ons");
        match self {
            Client::JavaRemoting(release) => app(
                release,
                if consumer {
                    java_consumer
                } else {
                    "RemotingProducer"
                },
            ),
            Client::JavaGrpc => app(
                Release::V5,
                if consumer {
                    java_consumer
                } else {
                    "GrpcProducer"
                },
            ),
            Client::GoRemoting => go("mq-go-remoting"),
            Client::GoGrpc => go("mq-go-grpc"),
            Client::Cpp => script(cpp.join("venv/bin/python"), cpp.join("mq_cpp.py")),
            Client::AliOns => script("node".into(), ali_ons.join("mq-ali-ons.js")),
            Client::NodeGrpc => script("node".into(), peers_root().join("node/grpc5/mq-grpc5.js")),
        }
    }
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("")
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a str {
    span["attributes"][key].as_str().unwrap_or("")
}

/// What a consumer did with one delivery of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Remoting: consumed, the offset commit passes it (`commit_offset`).
    Committed,
    /// Remoting: failed, sent back to the broker for a retry (`send_back`); the offset commit
    /// passes it all the same.
    SentBack,
    /// Remoting, orderly: failed, handed to the listener again from the client's memory (no
    /// pull, no request: nothing on the wire).
    RetriedInProcess,
    /// gRPC: acknowledged (`ack`).
    Acked,
    /// gRPC: its invisible time changed, to be delivered again (`nack`).
    Nacked,
}

/// One delivery of a message as the consumer printed it, and the spans it should make.
#[derive(Clone, Debug)]
struct Delivery {
    /// The topic it was pulled from: the group's retry topic for a redelivery over remoting.
    pulled_from: String,
    /// The topic it was sent to.
    origin: String,
    outcome: Outcome,
}

impl Delivery {
    /// The receive span's name and the settlements'.
    fn span_names(&self) -> Vec<String> {
        let receive = format!("receive {}", self.pulled_from);
        let commit = format!("commit_offset {}", self.pulled_from);
        match self.outcome {
            Outcome::Committed => vec![receive, commit],
            // Sent back, the message is done with on the queue it came from: the consumer's
            // offset commit passes it too. The send-back names the message's own topic,
            // whichever it was pulled from.
            Outcome::SentBack => vec![receive, format!("send_back {}", self.origin), commit],
            Outcome::RetriedInProcess => Vec::new(),
            Outcome::Acked => vec![receive, format!("ack {}", self.origin)],
            Outcome::Nacked => vec![receive, format!("nack {}", self.origin)],
        }
    }
}

/// A remoting consumer's line: `{"msgId", "topic", "reconsumeTimes", "result"}` (the client
/// gives a redelivery its original topic back; the broker delivered it from the retry topic).
/// An orderly consumer (`orderly`) retries in process: every delivery comes from the topic.
fn remoting_delivery(group: &str, orderly: bool, line: &Value) -> (String, Delivery) {
    let outcome = match text(line, "result") {
        // Concurrent and orderly listeners, and a lite pull consumer's record.
        "CONSUME_SUCCESS" | "SUCCESS" | "PULLED" => Outcome::Committed,
        "RECONSUME_LATER" => Outcome::SentBack,
        "SUSPEND_CURRENT_QUEUE_A_MOMENT" => Outcome::RetriedInProcess,
        other => panic!("unknown result {other}: {line}"),
    };
    let origin = text(line, "topic").to_string();
    let pulled_from = if !orderly && line["reconsumeTimes"].as_u64().unwrap_or(0) > 0 {
        format!("%RETRY%{group}")
    } else {
        origin.clone()
    };
    (
        text(line, "msgId").to_string(),
        Delivery {
            pulled_from,
            origin,
            outcome,
        },
    )
}

/// A gRPC consumer's line: `{"msgId", "action"}`.
fn grpc_delivery(topic: &str, line: &Value) -> (String, Delivery) {
    let outcome = match text(line, "action") {
        "ack" => Outcome::Acked,
        "change_invisible" => Outcome::Nacked,
        other => panic!("unknown action {other}: {line}"),
    };
    (
        text(line, "msgId").to_string(),
        Delivery {
            pulled_from: topic.to_string(),
            origin: topic.to_string(),
            outcome,
        },
    )
}

/// One cell of the client × server table: how many of the messages sent have a complete and
/// correct trace on the clients' side (one send span with the id every agent derives, a receive
/// span under it for every delivery, a settlement span under it for every outcome, none twice),
/// and what is wrong with the others.
struct Cell {
    name: String,
    sent: usize,
    complete: usize,
    problems: Vec<String>,
}

impl Cell {
    fn check(run: &Run, spans: &[Value]) -> Self {
        let Run {
            name,
            topic,
            sent,
            deliveries,
            each_message_also,
        } = run;
        let mut by_trace: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        for span in spans.iter().filter(|s| s["kind"] != "SERVER") {
            by_trace
                .entry(text(span, "trace_id"))
                .or_default()
                .push(span);
        }
        let mut complete = 0;
        let mut problems = Vec::new();
        for id in sent {
            let mut wrong = Vec::new();
            let trace = by_trace
                .get(TraceId::for_message(id).hex().as_str())
                .cloned()
                .unwrap_or_default();
            let send_id = SpanId::for_send(id).hex();
            let sends: Vec<_> = trace.iter().filter(|s| s["kind"] == "PRODUCER").collect();
            match sends.as_slice() {
                [send]
                    if text(send, "span_id") == send_id
                        && text(send, "name") == format!("send {topic}")
                        && attr(send, "messaging.message.id") == id => {}
                _ => wrong.push(format!("send spans: {sends:?}")),
            }
            let mut expected: BTreeMap<String, usize> = BTreeMap::new();
            for name in each_message_also {
                *expected.entry(name.clone()).or_default() += 1;
            }
            for delivery in deliveries.get(id).map(Vec::as_slice).unwrap_or_default() {
                for name in delivery.span_names() {
                    *expected.entry(name).or_default() += 1;
                }
            }
            let mut found: BTreeMap<String, usize> = BTreeMap::new();
            for span in trace.iter().filter(|s| s["kind"] != "PRODUCER") {
                if span["parent_span_id"] != send_id.as_str() {
                    wrong.push(format!("not under the send span: {span}"));
                }
                *found.entry(text(span, "name").to_string()).or_default() += 1;
            }
            if found != expected {
                wrong.push(format!("spans {found:?}, expected {expected:?}"));
            }
            if wrong.is_empty() {
                complete += 1;
            } else {
                problems.push(format!("{id}: {}", wrong.join("; ")));
            }
        }
        let cell = Self {
            name: name.clone(),
            sent: sent.len(),
            complete,
            problems,
        };
        println!("{}", cell.row());
        cell
    }

    fn row(&self) -> String {
        format!(
            "table: {}: {}/{} messages with a complete trace",
            self.name, self.complete, self.sent
        )
    }
}

/// Checks every run's cell, prints the table rows, then fails naming every incomplete trace.
fn assert_all_complete(runs: &[Run], spans: &[Value], agent_log: &str) {
    let cells: Vec<Cell> = runs.iter().map(|run| run.check(spans)).collect();
    let problems: Vec<String> = cells
        .iter()
        .filter(|c| !c.problems.is_empty())
        .map(|c| format!("{}:\n{}", c.row(), c.problems.join("\n")))
        .collect();
    assert!(
        problems.is_empty(),
        "{}\nagent log:\n{agent_log}",
        problems.join("\n")
    );
}

/// What one client did in a run: the messages it sent and what its consumer did with each,
/// and the spans each message should make besides (a transaction's commit).
struct Run {
    name: String,
    topic: String,
    sent: Vec<String>,
    deliveries: BTreeMap<String, Vec<Delivery>>,
    each_message_also: Vec<String>,
}

impl Run {
    fn check(&self, spans: &[Value]) -> Cell {
        Cell::check(self, spans)
    }
}

/// Message ids in the order a producer printed them.
fn ids(produced: &[Value]) -> Vec<String> {
    produced
        .iter()
        .map(|p| text(p, "msgId").to_string())
        .collect()
}

fn group_deliveries(
    lines: impl IntoIterator<Item = (String, Delivery)>,
) -> BTreeMap<String, Vec<Delivery>> {
    let mut by_id: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
    for (id, delivery) in lines {
        by_id.entry(id).or_default().push(delivery);
    }
    by_id
}

/// An agent tracing every process, writing its spans to a scratch file.
fn tracing_agent(name: &str) -> (Agent, ScratchFile) {
    let output = ScratchFile::new(&format!("{name}-spans.jsonl"));
    let agent = Agent::start(name, &["--all", "--output", output.0.to_str().unwrap()]);
    (agent, output)
}

/// Runs a remoting producer of `client` in `mode` (the Java client's; the Go client sends
/// synchronously) and a push consumer that fails each message's first delivery, on a new topic
/// of `cluster` reached through `namesrv`.
fn remoting_run(
    cluster: &dyn Servers,
    namesrv: &str,
    client: Client,
    mode: &str,
    server: &str,
) -> Run {
    remoting_run_with(cluster, namesrv, client, mode, "push", server)
}

/// As [`remoting_run`], with the Java client's `orderly` push consumer or its `lite-pull`
/// consumer (which fails nothing).
fn remoting_run_with(
    cluster: &dyn Servers,
    namesrv: &str,
    client: Client,
    mode: &str,
    consumer_kind: &str,
    server: &str,
) -> Run {
    let topic = format!(
        "Remoting{}{mode}{}",
        client
            .name()
            .replace(|c: char| !c.is_ascii_alphanumeric(), ""),
        consumer_kind.replace('-', "")
    );
    cluster.make_topic(&topic, "NORMAL").unwrap();
    let group = format!("{topic}Group");
    cluster.make_group(&group, false).unwrap();
    let count = MESSAGES.to_string();
    let mut producer = client.command(false, "");
    producer.args(["--namesrv", namesrv, "--topic", &topic]);
    producer.args(["--group", "mqtrace_producer", "--count", &count]);
    if let Client::JavaRemoting(_) = client {
        producer.args(["--mode", mode]);
        if mode == "delay" {
            producer.args(["--delay-level", "1"]);
        }
    }
    let produced = run_client(producer);
    let sent = ids(&produced);
    assert_eq!(sent.len(), MESSAGES, "{mode}: {produced:?}");
    let java_consumer = if consumer_kind == "lite-pull" {
        "LitePullConsumer"
    } else {
        "RemotingConsumer"
    };
    let mut consumer = client.command(true, java_consumer);
    consumer.args(["--namesrv", namesrv, "--topic", &topic, "--group", &group]);
    consumer.args(["--expect", &count, "--timeout-s", "90"]);
    match consumer_kind {
        // The C++ client (rocketmq 0.4.4's librocketmq) delivers a message it sent back for a
        // retry again and again after it was consumed (reconsumeTimes 2, 3, ... after
        // CONSUME_SUCCESS; seen without any agent running): its consumer fails nothing.
        "push" if matches!(client, Client::Cpp) => &mut consumer,
        "push" => consumer.args(["--fail-first", "1"]),
        "orderly" => consumer.args(["--fail-first", "1", "--orderly"]),
        "lite-pull" => &mut consumer,
        other => panic!("no consumer {other}"),
    };
    if let Client::JavaRemoting(_) = client {
        // The retry topic's route and the rebalance within a second (the client's defaults:
        // 30 s, 20 s), and for a push consumer the retry after 1 s (10 s).
        consumer.args(["--poll-namesrv-ms", "1000", "--rebalance-ms", "1000"]);
        if consumer_kind != "lite-pull" {
            consumer.args(["--retry-delay-level", "1"]);
        }
    }
    match client {
        // Its shutdown commits the offsets it knows then, which may leave out the last
        // messages consumed: their offsets go out with the periodic commit, every 5 s.
        Client::GoRemoting => consumer.args(["--linger-ms", "6000"]),
        // The last message's offset is taken as consumed once its listener returns, just
        // after the application saw it through.
        Client::Cpp | Client::AliOns => consumer.args(["--linger-ms", "1000"]),
        _ => &mut consumer,
    };
    let consumed = run_client(consumer);
    // ali-ons sets no UNIQ_KEY: its producer knows the id the broker answered, the consumer
    // the UNIQ_KEY a 5.x broker adds when it stores the message, and prints both.
    let key_of_answer: BTreeMap<&str, &str> = consumed
        .iter()
        .filter_map(|c| Some((c["offsetMsgId"].as_str()?, text(c, "msgId"))))
        .collect();
    let sent = match client {
        Client::AliOns => sent
            .iter()
            .map(|id| {
                key_of_answer
                    .get(id.as_str())
                    .unwrap_or(&id.as_str())
                    .to_string()
            })
            .collect(),
        _ => sent,
    };
    let each_message_also = if mode == "transaction" {
        vec![format!("commit {topic}")]
    } else {
        Vec::new()
    };
    Run {
        name: format!(
            "{} {mode}, {consumer_kind} consumer × {server}",
            client.name()
        ),
        deliveries: group_deliveries(
            consumed
                .iter()
                .map(|line| remoting_delivery(&group, consumer_kind == "orderly", line)),
        ),
        topic,
        sent,
        each_message_also,
    }
}

/// Runs a gRPC producer of `client` in `mode` (the Java client's; the Go client sends normal
/// messages) and a consumer (`simple`, acking each message, or with `--change-invisible` first;
/// or the Java `push` consumer) on a new topic, through `cluster`'s proxy.
fn grpc_run(cluster: &Cluster, client: Client, mode: &str, consumer: &str, server: &str) -> Run {
    grpc_run_over(cluster, client, mode, consumer, server, Transport::Plain)
}

/// How a gRPC client reaches the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Plain,
    /// TLS, the 5.x clients' default.
    Tls,
}

/// As [`grpc_run`], over `transport`.
fn grpc_run_over(
    cluster: &Cluster,
    client: Client,
    mode: &str,
    consumer: &str,
    server: &str,
    transport: Transport,
) -> Run {
    let message_type = match mode {
        "normal" => "NORMAL",
        "fifo" => "FIFO",
        "delay" => "DELAY",
        "transaction" => "TRANSACTION",
        other => panic!("no message type for {other}"),
    };
    let topic = format!(
        "Grpc{}{mode}{}{}",
        client
            .name()
            .replace(|c: char| !c.is_ascii_alphanumeric(), ""),
        consumer.replace('-', ""),
        if transport == Transport::Tls {
            "Tls"
        } else {
            ""
        }
    );
    cluster.make_topic(&topic, message_type).unwrap();
    let group = format!("{topic}Group");
    cluster.make_group(&group, mode == "fifo").unwrap();
    let endpoint = cluster.grpc_endpoint();
    let count = MESSAGES.to_string();
    let mut producer = client.command(false, "");
    producer.args([
        "--endpoint",
        &endpoint,
        "--topic",
        &topic,
        "--count",
        &count,
    ]);
    if let Client::JavaGrpc = client {
        producer.args(["--mode", mode]);
    }
    if transport == Transport::Tls {
        producer.arg("--tls");
    }
    let produced = run_client(producer);
    let sent = ids(&produced);
    assert_eq!(sent.len(), MESSAGES, "{mode}: {produced:?}");
    let java_consumer = match consumer {
        "simple" | "simple-change-invisible" => "GrpcSimpleConsumer",
        "push" => "GrpcPushConsumer",
        other => panic!("no consumer {other}"),
    };
    let mut command = client.command(true, java_consumer);
    command.args([
        "--endpoint",
        &endpoint,
        "--topic",
        &topic,
        "--group",
        &group,
        "--expect",
        &count,
    ]);
    if consumer == "simple-change-invisible" {
        command.arg("--change-invisible");
    }
    if transport == Transport::Tls {
        command.arg("--tls");
    }
    let consumed = run_client(command);
    let each_message_also = if mode == "transaction" {
        vec![format!("commit {topic}")]
    } else {
        Vec::new()
    };
    let over = if transport == Transport::Tls {
        " over TLS"
    } else {
        ""
    };
    Run {
        name: format!(
            "{} {mode}, {consumer} consumer{over} × {server}",
            client.name()
        ),
        deliveries: group_deliveries(consumed.iter().map(|line| {
            let mut line = line.clone();
            if consumer == "push" {
                // The push consumer acks every message its listener consumed.
                line["action"] = "ack".into();
            }
            grpc_delivery(&topic, &line)
        })),
        topic,
        sent,
        each_message_also,
    }
}

/// The Rust client (rocketmq-client-rust) producing and consuming through `namesrv`.
fn rust_run(cluster: &Cluster, namesrv: &str, server: &str) -> Run {
    let topic = "RustClient".to_string();
    cluster.make_topic(&topic, "NORMAL").unwrap();
    let count = MESSAGES.to_string();
    let produced = client()
        .args(["produce", namesrv, &topic, &count])
        .output()
        .unwrap();
    assert!(produced.status.success(), "{}", tail(&produced.stderr));
    let consumed = client()
        .args(["consume", namesrv, &topic, "rust_group", &count, "120"])
        .output()
        .unwrap();
    assert!(consumed.status.success(), "{}", tail(&consumed.stderr));
    let sent = json_lines(&produced.stdout)
        .iter()
        .map(|p| text(p, "msg_id").to_string())
        .collect();
    let deliveries = group_deliveries(json_lines(&consumed.stdout).iter().map(|c| {
        (
            text(c, "uniq_key").to_string(),
            Delivery {
                pulled_from: topic.clone(),
                origin: topic.clone(),
                outcome: Outcome::Committed,
            },
        )
    }));
    Run {
        name: format!("Rust rocketmq-client-rust 1.0.0 × {server}"),
        topic,
        sent,
        deliveries,
        each_message_also: Vec::new(),
    }
}

/// Apache's Rust 5.x gRPC client (`mq5-client`, tests/peers/rust5-client) sending normal
/// messages through `cluster`'s proxy. Sends only: `rocketmq` 5.0.0 gives a receive a gRPC
/// deadline equal to the long-polling time it asks for, and Apache's proxy refuses every such
/// receive (BAD_REQUEST "The deadline time remaining is not enough for polling").
fn rust5_run(cluster: &Cluster, server: &str) -> Run {
    let topic = "Rust5Client".to_string();
    cluster.make_topic(&topic, "NORMAL").unwrap();
    let produced = client5()
        .args(["produce", "--endpoint", &cluster.grpc_endpoint()])
        .args(["--topic", &topic, "--count", &MESSAGES.to_string()])
        .output()
        .unwrap();
    assert!(produced.status.success(), "{}", tail(&produced.stderr));
    let sent: Vec<String> = json_lines(&produced.stdout)
        .iter()
        .map(|p| text(p, "message_id").to_string())
        .collect();
    assert_eq!(sent.len(), MESSAGES);
    Run {
        name: format!("Rust 5.x rocketmq 5.0.0 (gRPC) sends × {server}"),
        topic,
        sent,
        deliveries: BTreeMap::new(),
        each_message_also: Vec::new(),
    }
}

/// Starts `cluster`, an agent tracing every process, runs `clients` against them, stops the
/// agent and checks every run's traces, then the broker's view.
async fn traced(
    name: &'static str,
    release: Release,
    topology: Topology,
    clients: impl FnOnce(&Cluster) -> Vec<Run> + Send + 'static,
) {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::task::spawn_blocking(move || {
        let cluster = Cluster::start(release, topology).unwrap();
        let (agent, output) = tracing_agent(name);
        let runs = clients(&cluster);
        let agent_log = agent.stop();
        assert_traced(
            &runs,
            &read_span_file(&output.0),
            &agent_log,
            cluster.broker_pid(),
        );
    })
    .await
    .unwrap();
}

/// Every run's messages traced completely, nothing else traced but the servers' own messages,
/// and the broker's view of each message.
fn assert_traced(runs: &[Run], spans: &[Value], agent_log: &str, broker_pid: u32) {
    let sent: BTreeSet<&str> = runs
        .iter()
        .flat_map(|run| &run.sent)
        .map(String::as_str)
        .collect();
    let (ours, others): (Vec<Value>, Vec<Value>) = spans
        .iter()
        .cloned()
        .partition(|s| sent.contains(attr(s, "messaging.message.id")));
    assert_complete_traces(&ours);
    // Besides the tests' messages, only the servers' own: the cluster-mode proxy's heartbeat
    // sync messages, which it sends as a serving process (no client spans), so the broker's
    // spans of them have no send span as parent.
    for span in &others {
        assert!(
            SYSTEM_TOPICS.contains(&attr(span, "messaging.destination.name")),
            "a span for a message no test client sent: {span}"
        );
    }
    assert_all_complete(runs, spans, agent_log);
    assert_broker_view(spans, runs, broker_pid);
}

/// Apache's Java remoting clients against the other broker implementation, rocketmq-rust 1.0
/// (its topics and groups made as the clients first use them). The Go v2 client gets no route
/// from its name server (which refuses requests that do not look like its own client's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_clients_on_rocketmq_rust_every_message_one_complete_trace() {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::task::spawn_blocking(|| {
        let broker = Broker::start("127.0.0.1").unwrap();
        let (agent, output) = tracing_agent("rocketmq-rust-java");
        let namesrv = broker.namesrv();
        let server = "rocketmq-rust 1.0";
        let runs = vec![
            remoting_run(
                &broker,
                &namesrv,
                Client::JavaRemoting(Release::V5),
                "sync",
                server,
            ),
            remoting_run(
                &broker,
                &namesrv,
                Client::JavaRemoting(Release::V4),
                "sync",
                server,
            ),
        ];
        let agent_log = agent.stop();
        assert_traced(&runs, &read_span_file(&output.0), &agent_log, broker.pid());
    })
    .await
    .unwrap();
}

/// Where the runs' topics and groups are made.
trait Servers {
    fn make_topic(&self, topic: &str, message_type: &str) -> anyhow::Result<()>;
    fn make_group(&self, group: &str, orderly: bool) -> anyhow::Result<()>;
}

impl Servers for Cluster {
    fn make_topic(&self, topic: &str, message_type: &str) -> anyhow::Result<()> {
        Cluster::make_topic(self, topic, message_type)
    }
    fn make_group(&self, group: &str, orderly: bool) -> anyhow::Result<()> {
        Cluster::make_group(self, group, orderly)
    }
}

/// rocketmq-rust makes topics on their first send and groups on their first use.
impl Servers for Broker {
    fn make_topic(&self, _topic: &str, _message_type: &str) -> anyhow::Result<()> {
        Ok(())
    }
    fn make_group(&self, _group: &str, _orderly: bool) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The remoting clients against Apache's 5.5.0 broker: the 5.5.0 Java client's producer in
/// every mode and a push consumer that fails each message once, the 4.9.7 Java client beside
/// it, and the Rust client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remoting_clients_on_apache_5_every_message_one_complete_trace() {
    traced("apache5", Release::V5, Topology::Direct, |cluster| {
        let server = "Apache 5.5.0";
        let namesrv = cluster.namesrv();
        let mut runs: Vec<Run> = REMOTING_SEND_MODES
            .iter()
            .map(|mode| {
                remoting_run(
                    cluster,
                    &namesrv,
                    Client::JavaRemoting(Release::V5),
                    mode,
                    server,
                )
            })
            .collect();
        for consumer in ["orderly", "lite-pull"] {
            runs.push(remoting_run_with(
                cluster,
                &namesrv,
                Client::JavaRemoting(Release::V5),
                "ordered",
                consumer,
                server,
            ));
        }
        runs.push(remoting_run(
            cluster,
            &namesrv,
            Client::JavaRemoting(Release::V4),
            "sync",
            server,
        ));
        for client in [Client::GoRemoting, Client::Cpp, Client::AliOns] {
            runs.push(remoting_run(cluster, &namesrv, client, "sync", server));
        }
        runs.push(rust_run(cluster, &namesrv, server));
        runs
    })
    .await;
}

/// Apache's 4.9.7 broker with its own Java client, the Go, C++ and Node.js clients. (rocketmq-client-rust
/// 1.0.0 cannot read the 4.9.7 name server's route answers: it sends and receives nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remoting_clients_on_apache_4_every_message_one_complete_trace() {
    traced("apache4", Release::V4, Topology::Direct, |cluster| {
        let server = "Apache 4.9.7";
        let namesrv = cluster.namesrv();
        vec![
            remoting_run(
                cluster,
                &namesrv,
                Client::JavaRemoting(Release::V4),
                "sync",
                server,
            ),
            remoting_run(
                cluster,
                &namesrv,
                Client::JavaRemoting(Release::V4),
                "transaction",
                server,
            ),
            // Clients are upgraded before brokers: the 5.5.0 client on the 4.9.7 broker.
            remoting_run(
                cluster,
                &namesrv,
                Client::JavaRemoting(Release::V5),
                "sync",
                server,
            ),
            remoting_run(cluster, &namesrv, Client::GoRemoting, "sync", server),
            remoting_run(cluster, &namesrv, Client::Cpp, "sync", server),
            remoting_run(cluster, &namesrv, Client::AliOns, "sync", server),
        ]
    })
    .await;
}

/// The proxy in local mode (the broker inside its JVM): the 5.x gRPC client in every message
/// type with simple and push consumers, and every remoting client through the broker's port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_through_the_local_mode_proxy_every_message_one_complete_trace() {
    traced(
        "apache5-local",
        Release::V5,
        Topology::ProxyLocal,
        |cluster| {
            let server = "Apache 5.5.0 proxy, local mode";
            // Remoting clients reach the broker's own port, inside the proxy's process: the
            // local-mode proxy's remoting port hands them routes to its gRPC port (Apache
            // 5.5.0), where every send fails.
            let namesrv = cluster.namesrv();
            let mut runs = vec![
                grpc_run(cluster, Client::JavaGrpc, "normal", "simple", server),
                grpc_run(
                    cluster,
                    Client::JavaGrpc,
                    "normal",
                    "simple-change-invisible",
                    server,
                ),
                grpc_run(cluster, Client::JavaGrpc, "normal", "push", server),
                grpc_run(cluster, Client::JavaGrpc, "fifo", "simple", server),
                grpc_run(cluster, Client::JavaGrpc, "delay", "simple", server),
                grpc_run(cluster, Client::JavaGrpc, "transaction", "simple", server),
                grpc_run(cluster, Client::GoGrpc, "normal", "simple", server),
            ];
            runs.extend(
                REMOTING_CLIENTS
                    .map(|client| remoting_run(cluster, &namesrv, client, "sync", server)),
            );
            runs.push(rust_run(cluster, &namesrv, server));
            runs.push(rust5_run(cluster, server));
            runs
        },
    )
    .await;
}

/// The proxy in cluster mode, in front of the broker: the gRPC clients, and the remoting
/// clients that it serves through its remoting port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_through_the_cluster_mode_proxy_every_message_one_complete_trace() {
    traced(
        "apache5-cluster",
        Release::V5,
        Topology::ProxyCluster,
        |cluster| {
            let server = "Apache 5.5.0 proxy, cluster mode";
            let proxy = cluster.proxy_remoting();
            let mut runs = vec![
                grpc_run(cluster, Client::JavaGrpc, "normal", "simple", server),
                grpc_run(cluster, Client::GoGrpc, "normal", "simple", server),
            ];
            // The proxy's remoting port refuses a send without the broker's name (`bname`,
            // sent by the Java, Go and Rust clients), answering code 15 "Request doesn't
            // have field bname": the C++ client and ali-ons send none, so they send nothing.
            runs.extend(
                REMOTING_CLIENTS
                    .into_iter()
                    .filter(|client| !matches!(client, Client::Cpp | Client::AliOns))
                    .map(|client| remoting_run(cluster, &proxy, client, "sync", server)),
            );
            runs.push(rust_run(cluster, &proxy, server));
            runs.push(rust5_run(cluster, server));
            runs
        },
    )
    .await;
}

/// The 5.x Java, Go and Node.js clients with TLS on (the Java and Go clients' default) through
/// the cluster-mode proxy: the Java client's plaintext read from the BoringSSL of its
/// netty-tcnative (a library unpacked to /tmp and deleted once loaded), the Go client's from
/// `crypto/tls`, the Node.js client's from the OpenSSL inside `node` (memory BIOs), the proxy's
/// from its own tcnative; every message traced as over plaintext, each client span saying how;
/// the same clients over plaintext beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_through_the_cluster_mode_proxy_traced_as_in_plaintext() {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::task::spawn_blocking(|| {
        let cluster = Cluster::start(Release::V5, Topology::ProxyCluster).unwrap();
        let (agent, output) = tracing_agent("apache5-tls");
        let server = "Apache 5.5.0 proxy, cluster mode";
        // Each client with TLS first: the first process of each program since the agent
        // started, which begins TLS within milliseconds (the Go program) and is traced because
        // it is held at exec until its probes are placed.
        let cases = [
            (Client::JavaGrpc, Transport::Tls),
            (Client::JavaGrpc, Transport::Plain),
            (Client::GoGrpc, Transport::Tls),
            (Client::GoGrpc, Transport::Plain),
            (Client::NodeGrpc, Transport::Tls),
            (Client::NodeGrpc, Transport::Plain),
        ];
        let runs: Vec<Run> = cases
            .iter()
            .map(|&(client, transport)| {
                grpc_run_over(&cluster, client, "normal", "simple", server, transport)
            })
            .collect();
        let status: Value = serde_json::from_str(&agent.control_ok(&["status", "--json"])).unwrap();
        let tls = &status["counters"]["agent"]["tls"];
        println!("TLS counters: {tls}");
        let agent_log = agent.stop();
        for line in agent_log.lines().filter(|l| l.contains("TLS library")) {
            println!("agent: {line}");
        }
        let spans = read_span_file(&output.0);
        assert_traced(&runs, &spans, &agent_log, cluster.broker_pid());
        // Each client span says how its connection was seen.
        for (run, &(_, transport)) in runs.iter().zip(&cases) {
            let seen_as = match transport {
                Transport::Tls => "tls-uprobe",
                Transport::Plain => "plain",
            };
            let client_spans: Vec<&Value> = spans
                .iter()
                .filter(|s| {
                    s["kind"] != "SERVER" && attr(s, "messaging.destination.name") == run.topic
                })
                .collect();
            assert!(!client_spans.is_empty(), "{}: no client spans", run.name);
            for span in client_spans {
                assert_eq!(
                    attr(span, "mqtrace.capture"),
                    seen_as,
                    "{}: {span}",
                    run.name
                );
            }
        }
        // The Java producer's and consumer's tcnative, the Go program, `node`, the proxy's
        // tcnative (its gRPC port serves TLS): each TLS connection bound on both sides, at
        // least one per client process and one per proxy end.
        assert!(
            tls["libraries_probed"].as_u64() >= Some(5),
            "{tls}\n{agent_log}"
        );
        assert!(
            tls["connections_bound"].as_u64() >= Some(12),
            "{tls}\n{agent_log}"
        );
        assert_eq!(tls["attach_failures"], 0, "{tls}\n{agent_log}");
        assert!(
            tls["processes_held"].as_u64() >= Some(2),
            "the Go producer's and consumer's first processes held: {tls}"
        );
    })
    .await
    .unwrap();
}

/// The broker's own spans on Apache's broker: every message stored once, each broker span
/// naming the client it served.
fn assert_broker_view(spans: &[Value], runs: &[Run], broker_pid: u32) {
    let broker: Vec<&Value> = spans
        .iter()
        .filter(|s| s["kind"] == "SERVER" && s["resource"]["process.pid"] == broker_pid)
        .collect();
    let mut stored: BTreeMap<&str, usize> = BTreeMap::new();
    for span in &broker {
        assert!(
            !attr(span, "client.address").is_empty(),
            "a broker span names its client: {span}"
        );
        if text(span, "name").starts_with("store ") {
            *stored
                .entry(attr(span, "messaging.message.id"))
                .or_default() += 1;
        }
    }
    let missing: BTreeSet<&str> = runs
        .iter()
        .flat_map(|run| &run.sent)
        .filter(|id| stored.get(id.as_str()) != Some(&1))
        .map(String::as_str)
        .collect();
    assert!(
        missing.is_empty(),
        "{} messages without exactly one store span on the broker: {missing:?}",
        missing.len()
    );
}

/// RocketMQ's own message trace as ground truth: the Java remoting clients with their trace
/// switched on write Pub, SubBefore and SubAfter records to `RMQ_SYS_TRACE_TOPIC`; read back
/// the way RocketMQ Dashboard reads them, they say the same as mqtrace's spans of the same
/// messages (message id, offsetMsgId, store host, tags, keys, success, retry times, group),
/// and the clients' own trace producer makes no spans but its sends to the trace topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtrace_agrees_with_rocketmqs_own_trace_records() {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::task::spawn_blocking(|| {
        let cluster = Cluster::start(Release::V5, Topology::Direct).unwrap();
        let (agent, output) = tracing_agent("apache5-native-trace");
        let namesrv = cluster.namesrv();
        let sent = run_clients_with_their_own_trace(&cluster, "NativeTrace");
        let records = trace_records(&namesrv, &sent);
        let agent_log = agent.stop();
        let spans = read_span_file(&output.0);
        let table = compare_with_trace_records(&sent, &records, &spans);
        for row in &table {
            println!("native trace: {row}");
        }
        let required = [
            "message id",
            "offsetMsgId",
            "store host",
            "tags",
            "keys",
            "success",
        ];
        for row in table
            .iter()
            .filter(|r| required.contains(&r.name))
        {
            assert!(
                row.agree == row.total,
                "{row}\nagent log:\n{agent_log}"
            );
        }
        // The clients' trace producers: sends to the trace topic, nothing else.
        let trace_topic: Vec<&Value> = spans
            .iter()
            .filter(|s| attr(s, "messaging.destination.name") == "RMQ_SYS_TRACE_TOPIC")
            .collect();
        assert!(!trace_topic.is_empty(), "the trace records' sends are seen");
        for span in trace_topic {
            let name = text(span, "name");
            assert!(
                name == "send RMQ_SYS_TRACE_TOPIC" || name == "store RMQ_SYS_TRACE_TOPIC",
                "the trace producer's messages make only send spans (and the broker's store): {span}"
            );
        }
    })
    .await
    .unwrap();
}

/// RocketMQ's own message trace, written by the agent (`--rocketmq-trace-namesrv`) for clients
/// with no trace flag: the Java, Go and Rust remoting clients' messages each have their Pub,
/// SubBefore and SubAfter records, found by message id as RocketMQ Dashboard finds them and
/// read by RocketMQ's own decoder, saying what mqtrace's spans say; a Java client that writes
/// its own trace is left to it (no record twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_writes_rocketmqs_own_trace_for_clients_without_it() {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::task::spawn_blocking(|| {
        let cluster = Cluster::start(Release::V5, Topology::Direct).unwrap();
        let namesrv = cluster.namesrv();
        let (agent, output) = rocketmq_trace_agent("apache5-rocketmq-trace", &cluster, &["--all"]);
        let server = "Apache 5.5.0 broker";
        let runs = remoting_clients_without_trace(&cluster, server);
        let own = run_clients_with_their_own_trace(&cluster, "OwnTrace");
        // Every record the agent made written (or left to its client) before anything is
        // looked up: a record it wrote twice would otherwise come after the look-up.
        let (counters, records) = written_records(&agent, &namesrv, &runs);
        let sent: Vec<String> = runs.iter().flat_map(|run| run.sent.clone()).collect();
        let own_records = trace_records(&namesrv, &own);
        assert_journeys_agree_with_records(&agent, &sent, &records);
        let agent_log = agent.stop();
        let spans = read_span_file(&output.0);

        assert_agents_records(Side::Clients, &runs, &records, &spans, &agent_log);
        for record in &own_records {
            assert_eq!(record["writer"], "client", "written twice: {record}");
        }
        assert_eq!(counters["dropped_queue_full"], 0, "{counters}");
        // The traced client's Pub, SubBefore and SubAfter records, all left to it.
        let own_steps = spans
            .iter()
            .filter(|s| own.iter().any(|id| id == attr(s, "messaging.message.id")))
            .filter(|s| s["kind"] != "SERVER")
            .filter(|s| {
                let name = text(s, "name");
                name.starts_with("send ") || name.starts_with("receive ")
            })
            .count();
        assert!(
            own_steps >= 2 * MESSAGES,
            "{own_steps} steps of the traced client"
        );
        assert!(
            counters["records_left_to_clients"].as_u64() >= Some(own_steps as u64),
            "the traced client's {own_steps} sends and receives left to it: {counters}"
        );
        for kind in ["Pub", "SubBefore", "SubAfter"] {
            assert!(
                own_records.iter().any(|r| r["type"] == kind),
                "the traced client's own {kind} records: {own_records:?}"
            );
        }
        assert!(
            counters["records_written"].as_u64() >= Some(records.len() as u64),
            "{counters}"
        );
    })
    .await
    .unwrap();
}

/// The agent's records of `runs`' messages, from the spans of `side`: each message published
/// once, a SubBefore and its SubAfter per delivery, every field as the spans say.
fn assert_agents_records(
    side: Side,
    runs: &[Run],
    records: &[Value],
    spans: &[Value],
    agent_log: &str,
) {
    for record in records {
        assert_eq!(record["writer"], "mqtrace", "{record}");
    }
    let receive_name = match side {
        Side::Clients => "receive ",
        Side::Broker => "deliver ",
    };
    for run in runs {
        for id in &run.sent {
            let of = |kind: &str| -> Vec<&Value> {
                records
                    .iter()
                    .filter(|r| text(r, "msgId") == id && text(r, "type") == kind)
                    .collect()
            };
            assert_eq!(of("Pub").len(), 1, "{}: {id}", run.name);
            let receives = spans
                .iter()
                .filter(|s| {
                    attr(s, "messaging.message.id") == id
                        && text(s, "name").starts_with(receive_name)
                })
                .count();
            let deliveries = run.deliveries.get(id).map_or(0, Vec::len);
            assert!(receives >= 1, "{}: {id} never received", run.name);
            assert_eq!(receives, deliveries, "{}: {id}", run.name);
            let (befores, afters) = (of("SubBefore"), of("SubAfter"));
            assert_eq!(befores.len(), receives, "{}: {id}", run.name);
            assert_eq!(afters.len(), receives, "{}: {id}", run.name);
            for after in afters {
                assert!(
                    befores.iter().any(|b| b["requestId"] == after["requestId"]),
                    "{}: a SubAfter without its SubBefore: {after}",
                    run.name
                );
            }
        }
    }
    let sent: Vec<String> = runs.iter().flat_map(|run| run.sent.clone()).collect();
    let table = compare_side_with_trace_records(side, &sent, records, spans);
    for row in &table {
        println!("agent's trace records: {row}");
        assert!(row.agree == row.total, "{row}\nagent log:\n{agent_log}");
    }
    assert!(table.iter().any(|row| row.name == "consumer group"));
}

/// `mqtrace trace` and the records the agent wrote show a message's same steps: its send and
/// each Pub, each receive and SubBefore, each failed consumption (sent back) and failed
/// SubAfter, and a settlement for each succeeded one.
fn assert_journeys_agree_with_records(agent: &Agent, sent: &[String], records: &[Value]) {
    for id in sent {
        let journeys: Value =
            serde_json::from_str(&agent.control_ok(&["trace", "--msg-id", id, "--json"])).unwrap();
        let steps: Vec<&str> = journeys[0]["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("{id}: {journeys}"))
            .iter()
            .filter_map(|step| step["action"].as_str())
            .collect();
        let count_steps = |actions: &[&str]| steps.iter().filter(|s| actions.contains(s)).count();
        let count_records = |kind: &str, success: Option<bool>| {
            records
                .iter()
                .filter(|r| text(r, "msgId") == id && text(r, "type") == kind)
                .filter(|r| success.is_none_or(|ok| r["success"] == ok))
                .count()
        };
        assert_eq!(
            count_steps(&["send"]),
            count_records("Pub", None),
            "{id}: {steps:?}"
        );
        assert_eq!(
            count_steps(&["receive"]),
            count_records("SubBefore", None),
            "{id}: {steps:?}"
        );
        let failed = ["settle send_back", "settle nack", "settle dead_letter"];
        assert_eq!(
            count_steps(&failed),
            count_records("SubAfter", Some(false)),
            "{id}: {steps:?}"
        );
        let succeeded = count_records("SubAfter", Some(true));
        assert!(
            succeeded >= 1 && succeeded <= count_steps(&["settle ack", "settle commit_offset"]),
            "{id}: {succeeded} consumptions succeeded: {steps:?}"
        );
    }
}

/// RocketMQ's own message trace from an agent on the broker host alone (`--pid` of the broker,
/// `--rocketmq-trace-view broker`): the broker's view fills the trace of the Java, Go and Rust
/// clients' messages, no agent beside the clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_the_broker_host_alone_writes_rocketmqs_own_trace() {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::task::spawn_blocking(|| {
        let cluster = Cluster::start(Release::V5, Topology::Direct).unwrap();
        let namesrv = cluster.namesrv();
        let (agent, output) = rocketmq_trace_agent(
            "apache5-rocketmq-trace-broker",
            &cluster,
            &[
                "--pid",
                &cluster.broker_pid().to_string(),
                "--rocketmq-trace-view",
                "broker",
            ],
        );
        let server = "Apache 5.5.0 broker";
        let runs = remoting_clients_without_trace(&cluster, server);
        let (counters, records) = written_records(&agent, &namesrv, &runs);
        let agent_log = agent.stop();
        let spans = read_span_file(&output.0);
        assert!(
            spans.iter().all(|s| s["kind"] == "SERVER"),
            "the broker's spans only"
        );
        assert_agents_records(Side::Broker, &runs, &records, &spans, &agent_log);
        assert_eq!(counters["dropped_queue_full"], 0, "{counters}");
    })
    .await
    .unwrap();
}

/// What a team on RocketMQ 5 sees in RocketMQ's own message trace: Apache's Java and Go 5.x
/// gRPC clients (the Go one with TLS on) through the cluster-mode proxy, traced by the agent
/// (client view): every message's Pub, SubBefore and SubAfter, though these clients write no
/// such trace themselves; the proxy's requests to the broker make none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_through_the_proxy_get_rocketmqs_own_trace() {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::task::spawn_blocking(|| {
        let cluster = Cluster::start(Release::V5, Topology::ProxyCluster).unwrap();
        let namesrv = cluster.namesrv();
        let (agent, output) =
            rocketmq_trace_agent("apache5-rocketmq-trace-grpc", &cluster, &["--all"]);
        let server = "Apache 5.5.0 proxy, cluster mode";
        // The Java client's TLS capture is the TLS tests' (above); here its records.
        let runs = [
            (Client::JavaGrpc, Transport::Plain),
            (Client::GoGrpc, Transport::Tls),
        ]
        .map(|(client, transport)| {
            grpc_run_over(&cluster, client, "normal", "simple", server, transport)
        });
        let (counters, records) = written_records(&agent, &namesrv, &runs);
        let agent_log = agent.stop();
        let spans = read_span_file(&output.0);
        assert_agents_records(Side::Clients, &runs, &records, &spans, &agent_log);
        assert_eq!(counters["dropped_queue_full"], 0, "{counters}");
        assert_eq!(counters["records_left_to_clients"], 0, "{counters}");
    })
    .await
    .unwrap();
}

/// The Java, Go and Rust remoting clients with no trace flag, each producing and consuming
/// (the Java and Go push consumers failing each first delivery) on `cluster`.
fn remoting_clients_without_trace(cluster: &Cluster, server: &str) -> [Run; 3] {
    let namesrv = cluster.namesrv();
    [
        remoting_run(
            cluster,
            &namesrv,
            Client::JavaRemoting(Release::V5),
            "sync",
            server,
        ),
        remoting_run(cluster, &namesrv, Client::GoRemoting, "sync", server),
        rust_run(cluster, &namesrv, server),
    ]
}

/// Once the agent has written all it made (see [`wait_until_written`]): its counters, and the
/// trace records of `runs`' messages.
fn written_records(agent: &Agent, namesrv: &str, runs: &[Run]) -> (Value, Vec<Value>) {
    let counters = wait_until_written(agent);
    println!("RocketMQ trace counters: {counters}");
    let sent: Vec<String> = runs.iter().flat_map(|run| run.sent.clone()).collect();
    (counters, trace_records(namesrv, &sent))
}

/// An agent writing RocketMQ's own trace to `cluster` besides its spans to a scratch file,
/// selecting what `args` say (`--all`, or a `--pid` and the broker's view).
fn rocketmq_trace_agent(name: &str, cluster: &Cluster, args: &[&str]) -> (Agent, ScratchFile) {
    let output = ScratchFile::new(&format!("{name}-spans.jsonl"));
    let namesrv = cluster.namesrv();
    let mut all = vec![
        "--output",
        output.0.to_str().unwrap(),
        "--rocketmq-trace-namesrv",
        &namesrv,
    ];
    all.extend_from_slice(args);
    (Agent::start(name, &all), output)
}

/// Waits (at most a minute) until the agent's RocketMQ trace records are all written, left to
/// their clients or dropped, with none waiting; its counters then.
fn wait_until_written(agent: &Agent) -> Value {
    let started = std::time::Instant::now();
    loop {
        let status: Value = serde_json::from_str(&agent.control_ok(&["status", "--json"])).unwrap();
        let counters = status["counters"]["export"]["rocketmq_trace"].clone();
        let n = |key: &str| counters[key].as_u64().unwrap_or(0);
        let settled = n("records_written")
            + n("records_left_to_clients")
            + n("dropped_queue_full")
            + n("dropped_refused");
        if n("queued_bytes") == 0 && settled == n("records") && n("records") > 0 {
            return counters;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "RocketMQ trace records still waiting after a minute: {counters}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Apache's Java remoting producer and push consumer (failing each first delivery) with their
/// own trace on, on a new topic; the ids sent.
fn run_clients_with_their_own_trace(cluster: &Cluster, topic: &str) -> Vec<String> {
    let namesrv = cluster.namesrv();
    let group = format!("{topic}Group");
    cluster.make_topic(topic, "NORMAL").unwrap();
    cluster.make_group(&group, false).unwrap();
    let count = MESSAGES.to_string();
    let client = Client::JavaRemoting(Release::V5);
    let mut producer = client.command(false, "");
    producer.args([
        "--namesrv",
        &namesrv,
        "--topic",
        topic,
        "--group",
        "native_trace_producer",
        "--count",
        &count,
        "--mode",
        "sync",
        "--trace",
    ]);
    let produced = run_client(producer);
    let mut consumer = client.command(true, "RemotingConsumer");
    consumer.args([
        "--namesrv",
        &namesrv,
        "--topic",
        topic,
        "--group",
        &group,
        "--expect",
        &count,
        "--fail-first",
        "1",
        "--timeout-s",
        "90",
        "--trace",
        "--retry-delay-level",
        "1",
        "--poll-namesrv-ms",
        "1000",
        "--rebalance-ms",
        "1000",
    ]);
    run_client(consumer);
    ids(&produced)
}

/// The trace records of messages `ids` in `RMQ_SYS_TRACE_TOPIC`, found and decoded the way
/// RocketMQ Dashboard does (by key, with TraceDataEncoder), once each has Pub, SubBefore and
/// SubAfter records (at most a minute).
fn trace_records(namesrv: &str, ids: &[String]) -> Vec<Value> {
    run_client({
        let mut query = app(Release::V5, "TraceQuery");
        query.args([
            "--namesrv",
            namesrv,
            "--msg-id",
            &ids.join(","),
            "--expect-types",
            "Pub,SubBefore,SubAfter",
            "--wait-s",
            "60",
        ]);
        query
    })
}

/// One field's agreement between RocketMQ's trace records and mqtrace's spans.
struct FieldRow {
    name: &'static str,
    agree: usize,
    total: usize,
    example: Option<String>,
}

impl std::fmt::Display for FieldRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}/{} agree", self.name, self.agree, self.total)?;
        if let Some(example) = &self.example {
            write!(f, " (e.g. {example})")?;
        }
        Ok(())
    }
}

/// Whose spans trace records are compared with: the clients' (send, receive), or the broker's
/// (store, deliver).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Clients,
    Broker,
}

/// `7F00000100002A9F…` → `127.0.0.1:10911`: the store host an offsetMsgId begins with.
fn offset_msg_id_host(id: &str) -> String {
    let byte = |i: usize| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap();
    let port = u32::from_str_radix(&id[8..16], 16).unwrap();
    format!("{}.{}.{}.{}:{port}", byte(0), byte(1), byte(2), byte(3))
}

/// Compares each message's Pub record with its send span, and its SubBefore/SubAfter records
/// with its receive spans (one per delivery, in order of retry times): the clients' spans.
fn compare_with_trace_records(
    sent: &[String],
    records: &[Value],
    spans: &[Value],
) -> Vec<FieldRow> {
    compare_side_with_trace_records(Side::Clients, sent, records, spans)
}

/// As [`compare_with_trace_records`], with the spans of `side`.
fn compare_side_with_trace_records(
    side: Side,
    sent: &[String],
    records: &[Value],
    spans: &[Value],
) -> Vec<FieldRow> {
    let mut rows: BTreeMap<&'static str, FieldRow> = BTreeMap::new();
    let mut add = |name: &'static str, message: &str, record: String, span: String| {
        let row = rows.entry(name).or_insert(FieldRow {
            name,
            agree: 0,
            total: 0,
            example: None,
        });
        row.total += 1;
        if record == span {
            row.agree += 1;
        } else if row.example.is_none() {
            row.example = Some(format!("{message}: record {record:?}, span {span:?}"));
        }
    };
    // Keys as RocketMQ writes them: separated by spaces.
    let span_text = |span: Option<&&Value>, key: &str| -> String {
        span.map(|s| match &s["attributes"][key] {
            Value::String(text) => text.clone(),
            Value::Null => String::new(),
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            other => other.to_string(),
        })
        .unwrap_or_default()
    };
    let record_text = |record: &Value, key: &str| -> String {
        match &record[key] {
            // What Java's encoder writes for a text the message does not have.
            Value::String(text) if text == "null" => String::new(),
            Value::String(text) => text.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    };
    for id in sent {
        let mine: Vec<&Value> = spans
            .iter()
            .filter(|s| {
                attr(s, "messaging.message.id") == id
                    && (s["kind"] == "SERVER") == (side == Side::Broker)
            })
            .collect();
        let (send_name, receive_name) = match side {
            Side::Clients => ("send ", "receive "),
            Side::Broker => ("store ", "deliver "),
        };
        let of = |kind: &str| -> Vec<&Value> {
            records
                .iter()
                .filter(|r| text(r, "msgId") == id && text(r, "type") == kind)
                .collect()
        };
        let send = mine.iter().find(|s| text(s, "name").starts_with(send_name));
        for record in of("Pub") {
            add(
                "message id",
                id,
                record_text(record, "msgId"),
                span_text(send, "messaging.message.id"),
            );
            add(
                "offsetMsgId",
                id,
                record_text(record, "offsetMsgId"),
                span_text(send, "mqtrace.offset_msg_id"),
            );
            add(
                "store host",
                id,
                record_text(record, "storeHost"),
                match side {
                    Side::Clients => format!(
                        "{}:{}",
                        span_text(send, "server.address"),
                        span_text(send, "server.port")
                    ),
                    Side::Broker => offset_msg_id_host(&span_text(send, "mqtrace.offset_msg_id")),
                },
            );
            add(
                "tags",
                id,
                record_text(record, "tags"),
                span_text(send, "messaging.rocketmq.message.tag"),
            );
            add(
                "keys",
                id,
                record_text(record, "keys"),
                span_text(send, "messaging.rocketmq.message.keys"),
            );
            add(
                "topic",
                id,
                record_text(record, "topic"),
                span_text(send, "messaging.destination.name"),
            );
            add(
                "producer group",
                id,
                record_text(record, "groupName"),
                span_text(send, "messaging.rocketmq.client_group"),
            );
            add(
                "success",
                id,
                record_text(record, "success"),
                send.map(|s| (s["status"] != "ERROR").to_string())
                    .unwrap_or_default(),
            );
        }
        // Deliveries in order of retry times: the receive spans, and what settled each.
        let mut receives: Vec<&&Value> = mine
            .iter()
            .filter(|s| text(s, "name").starts_with(receive_name))
            .collect();
        receives.sort_by_key(|s| s["attributes"]["mqtrace.reconsume_times"].as_i64());
        let mut befores = of("SubBefore");
        befores.sort_by_key(|r| r["retryTimes"].as_i64());
        for (index, before) in befores.iter().enumerate() {
            let receive = receives.get(index).copied();
            add(
                "consumer group",
                id,
                record_text(before, "groupName"),
                span_text(receive, "messaging.consumer.group.name"),
            );
            add(
                "retry times",
                id,
                record_text(before, "retryTimes"),
                span_text(receive, "mqtrace.reconsume_times"),
            );
            add(
                "keys",
                id,
                record_text(before, "keys"),
                span_text(receive, "messaging.rocketmq.message.keys"),
            );
        }
        // A delivery that failed was sent back: one send_back span per failed SubAfter.
        let after = of("SubAfter");
        let failed = after.iter().filter(|r| r["success"] == false).count();
        let sent_back = mine
            .iter()
            .filter(|s| text(s, "name").starts_with("send_back "))
            .count();
        add(
            "success",
            id,
            format!("{failed} failed"),
            format!("{sent_back} failed"),
        );
    }
    rows.into_values().collect()
}

/// Apache's Java remoting client with TLS on (`-Dtls.enable=true`): its TLS is the JDK's own
/// (JSSE, Java code: nothing a uprobe reaches), so its connections stay dark and are counted;
/// the broker and name server answer TLS (their default `tls.server.mode` is permissive) through
/// netty-tcnative's BoringSSL, which is probed: the broker's view of every message is traced,
/// from its plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jsse_client_stays_dark_and_the_brokers_side_is_traced() {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::task::spawn_blocking(|| {
        let cluster = Cluster::start(Release::V5, Topology::Direct).unwrap();
        let (agent, output) = tracing_agent("apache5-jsse");
        let topic = "JsseTlsTopic";
        cluster.make_topic(topic, "NORMAL").unwrap();
        let mut producer = app_with(
            Release::V5,
            "RemotingProducer",
            &["-Dtls.enable=true".to_string()],
        );
        producer
            .args(["--namesrv", &cluster.namesrv(), "--topic", topic])
            .args([
                "--group",
                "mqtrace_producer",
                "--count",
                &MESSAGES.to_string(),
            ])
            .args(["--mode", "sync"]);
        let produced = run_client(producer);
        let sent = ids(&produced);
        assert_eq!(sent.len(), MESSAGES, "{produced:?}");
        let status: Value = serde_json::from_str(&agent.control_ok(&["status", "--json"])).unwrap();
        let agent_log = agent.stop();
        let spans = read_span_file(&output.0);
        let counters = &status["counters"];
        println!(
            "JSSE client: connections_tls {}, TLS counters {}",
            counters["pipeline"]["connections_tls"], counters["agent"]["tls"]
        );
        // The client's side: nothing.
        let client_spans: Vec<&Value> = spans
            .iter()
            .filter(|s| {
                s["kind"] == "PRODUCER"
                    && sent.contains(&attr(s, "messaging.message.id").to_string())
            })
            .collect();
        assert!(client_spans.is_empty(), "{client_spans:?}");
        assert!(
            counters["pipeline"]["connections_tls"].as_u64() >= Some(2),
            "the client's connections to the name server and the broker are dark: {counters}"
        );
        // And said why: a Java process with no native TLS library.
        let tls = &counters["agent"]["tls"];
        assert!(tls["dark_jsse"].as_u64() >= Some(2), "{tls}");
        assert_eq!(
            (&tls["dark_stripped_library"], &tls["dark_no_library"]),
            (&Value::from(0), &Value::from(0)),
            "{tls}"
        );
        // The broker's: every message stored, seen through its TLS library.
        let stores: Vec<&Value> = spans
            .iter()
            .filter(|s| {
                s["kind"] == "SERVER"
                    && text(s, "name") == format!("store {topic}")
                    && s["resource"]["process.pid"] == cluster.broker_pid()
            })
            .collect();
        let stored: BTreeSet<&str> = stores
            .iter()
            .map(|s| attr(s, "messaging.message.id"))
            .collect();
        let missing: Vec<&String> = sent
            .iter()
            .filter(|id| !stored.contains(id.as_str()))
            .collect();
        assert!(missing.is_empty(), "not stored: {missing:?}\n{agent_log}");
        for span in &stores {
            assert_eq!(attr(span, "mqtrace.capture"), "tls-uprobe", "{span}");
        }
    })
    .await
    .unwrap();
}

/// What a Java team running Apache RocketMQ 5 sees across an upgrade of the agent: the 5.x
/// gRPC client over TLS through the cluster-mode proxy, its producer and consumer at work, a
/// newer agent started beside the running one, which is stopped 3 s later: every message has
/// one complete trace made of the two agents' spans, none twice, the broker's view included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_upgrade_mid_traffic_over_tls_through_the_proxy_loses_no_span() {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::task::spawn_blocking(|| {
        let cluster = Cluster::start(Release::V5, Topology::ProxyCluster).unwrap();
        let (old, old_output) = tracing_agent("apache5-upgrade-old");
        let new_output = ScratchFile::new("apache5-upgrade-new-spans.jsonl");
        let topic = "UpgradeGrpcTls";
        cluster.make_topic(topic, "NORMAL").unwrap();
        let group = format!("{topic}Group");
        cluster.make_group(&group, false).unwrap();
        let endpoint = cluster.grpc_endpoint();
        let count = "3000";
        let mut consumer = Client::JavaGrpc.command(true, "GrpcSimpleConsumer");
        consumer.args(["--endpoint", &endpoint, "--topic", topic, "--group", &group]);
        // Acked one by one through the proxy: minutes on a slow machine.
        consumer.args(["--expect", count, "--tls", "--timeout-s", "400"]);
        let mut producer = Client::JavaGrpc.command(false, "");
        producer.args(["--endpoint", &endpoint, "--topic", topic, "--count", count]);
        producer.args(["--mode", "normal", "--rate", "200", "--tls"]);
        let consumer = std::thread::spawn(move || run_client(consumer));
        // The producer once the consumer's connection is bound: two JVMs starting together
        // can have the second begin TLS before the probes on its netty-tcnative are placed
        // (see the README, Not traced yet), which is not what this test is about.
        let bound = |agent: &Agent| {
            let status: Value =
                serde_json::from_str(&agent.control_ok(&["status", "--json"])).unwrap();
            status["counters"]["agent"]["tls"]["connections_bound"]
                .as_u64()
                .unwrap_or(0)
        };
        let consumer_bound = mqtrace_tests::wait::holds(
            std::time::Duration::from_secs(90),
            std::time::Duration::from_millis(500),
            || bound(&old) >= 2,
        );
        assert!(consumer_bound, "the consumer's connection not bound: {}", old.log_text());
        let producer = std::thread::spawn(move || run_client(producer));
        // Mid-traffic: once the old agent has traced 300 sends (the JVMs take seconds to
        // start, more on a cold machine; 3,000 messages take 15 s at 200/s).
        let started_sending = mqtrace_tests::wait::holds(
            std::time::Duration::from_secs(90),
            std::time::Duration::from_millis(500),
            || {
                std::fs::read_to_string(&old_output.0)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("\"PRODUCER\"") && l.contains(topic))
                    .count()
                    >= 300
            },
        );
        assert!(started_sending, "no sends traced: {}", old.log_text());
        let new = Agent::start_successor(
            "apache5-upgrade-new",
            &old,
            &["--all", "--output", new_output.0.to_str().unwrap()],
        );
        std::thread::sleep(std::time::Duration::from_secs(3));
        let old_log = old.stop();
        let produced = producer.join().unwrap();
        let consumed = consumer.join().unwrap();
        let new_log = new.stop();
        let run = Run {
            name: "Java gRPC 5.x over TLS, the agent upgraded mid-traffic".into(),
            topic: topic.into(),
            sent: ids(&produced),
            deliveries: group_deliveries(consumed.iter().map(|line| grpc_delivery(topic, line))),
            each_message_also: Vec::new(),
        };
        assert_eq!(run.sent.len(), 3000, "every send answered");
        let (old_spans, new_spans) = (read_span_file(&old_output.0), read_span_file(&new_output.0));
        let by_old: BTreeSet<&str> = old_spans
            .iter()
            .filter(|s| s["kind"] == "PRODUCER")
            .map(|s| attr(s, "messaging.message.id"))
            .collect();
        println!(
            "upgrade: {} sent; spans by the old agent {}, by the new {}; sends traced by the old {}",
            run.sent.len(),
            old_spans.len(),
            new_spans.len(),
            run.sent.iter().filter(|id| by_old.contains(id.as_str())).count()
        );
        let old_counters = mqtrace_tests::agent::final_counters(&old_log);
        let new_counters = mqtrace_tests::agent::final_counters(&new_log);
        println!(
            "old agent: {}; new agent: {}, TLS {}",
            old_counters["agent"]["handover"],
            new_counters["agent"]["handover"],
            new_counters["agent"]["tls"]
        );
        assert_eq!(old_counters["agent"]["handover"]["handed_over"], 1);
        assert_eq!(new_counters["agent"]["handover"]["taken_over"], 1);
        assert!(
            !new_spans.is_empty() && !by_old.is_empty(),
            "each agent traced its part"
        );
        // The newer agent reads the TLS connections open before it started.
        assert!(
            new_counters["agent"]["tls"]["connections_bound"].as_u64() >= Some(2),
            "{}",
            new_counters["agent"]["tls"]
        );
        let spans: Vec<Value> = old_spans.into_iter().chain(new_spans).collect();
        // The client spans are the clients' own, read through their TLS library: not the
        // proxy's requests to the broker taken for a client's.
        for span in spans.iter().filter(|s| {
            s["kind"] != "SERVER" && attr(s, "messaging.destination.name") == topic
        }) {
            let service = span["resource"]["service.name"].as_str().unwrap_or_default();
            assert!(
                ["mqtrace.apps.GrpcProducer", "mqtrace.apps.GrpcSimpleConsumer"]
                    .contains(&service)
                    && attr(span, "mqtrace.capture") == "tls-uprobe",
                "{span}"
            );
        }
        let logs = format!("old agent:\n{old_log}\nnew agent:\n{new_log}");
        assert_traced(&[run], &spans, &logs, cluster.broker_pid());
    })
    .await
    .unwrap();
}
