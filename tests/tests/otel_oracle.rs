//! mqtrace beside the OpenTelemetry Java agent, the oracle of what a trace should say: Apache's
//! Java clients (remoting and gRPC) run with the agent attached, exporting OTLP to a real
//! receiver, while mqtrace traces the same processes from the kernel. Per message, the two are
//! compared field by field (agree / differ / one side only); message id, destination,
//! operation, the producer→consumer relation and mqtrace's spans inside the agent's trace must
//! agree for every message. Needs root and the peers (`cargo xtask test`).

use std::collections::BTreeMap;

use mqtrace_tests::{
    agent::{Agent, final_counters},
    apache::{
        Cluster, REMOTING_SEND_MODES, Release, Topology, app_with, otel_agent_jar, run_to_end,
    },
    otlp::{ReceivedSpan, Receiver},
    process::ScratchFile,
    spancheck::read_span_file,
};
use serde_json::Value;

/// Messages per client and mode.
const MESSAGES: usize = 1000;
/// The gRPC producer's modes compared, with their topics' message types.
/// What the OpenTelemetry Java agent's publish spans say of a send mode's messages.
#[derive(Clone, Copy, Debug)]
enum AgentPublish {
    /// One publish span per message, naming it.
    PerMessage,
    /// One publish span per message, naming none (oneway sends: the client gets no result).
    Unnamed,
    /// One publish span per batch, naming all its messages (joined by commas). Its
    /// `traceparent` goes into the batch's own properties, which the broker does not give the
    /// batched messages: their consumers cannot find the publish span.
    Batched,
}

impl AgentPublish {
    fn of(client: &str) -> Self {
        if client.ends_with("oneway") {
            AgentPublish::Unnamed
        } else if client.ends_with("batch") {
            AgentPublish::Batched
        } else {
            AgentPublish::PerMessage
        }
    }
}
const GRPC_MODES: [(&str, &str); 4] = [
    ("normal", "NORMAL"),
    ("fifo", "FIFO"),
    ("delay", "DELAY"),
    ("transaction", "TRANSACTION"),
];

/// The JVM options that attach the OpenTelemetry Java agent, exporting to `endpoint`.
fn otel_options(endpoint: &str, service: &str) -> Vec<String> {
    [
        format!("-javaagent:{}", otel_agent_jar().display()),
        format!("-Dotel.service.name={service}"),
        "-Dotel.traces.exporter=otlp".into(),
        "-Dotel.metrics.exporter=none".into(),
        "-Dotel.logs.exporter=none".into(),
        "-Dotel.exporter.otlp.protocol=http/protobuf".into(),
        format!("-Dotel.exporter.otlp.endpoint={endpoint}"),
        "-Dotel.bsp.schedule.delay=200".into(),
        // Every span kept, however many: the comparison wants them all.
        "-Dotel.bsp.max.queue.size=100000".into(),
        "-Dotel.instrumentation.rocketmq-client.experimental-span-attributes=true".into(),
        "-Dotel.javaagent.logging=none".into(),
    ]
    .into()
}

/// Runs a Java test application with the OpenTelemetry Java agent to its end; its JSON lines
/// about messages.
fn run_instrumented(main: &str, endpoint: &str, args: &[&str], more: &[&str]) -> Vec<Value> {
    run_to_end(
        app_with(Release::V5, main, &otel_options(endpoint, main))
            .args(args)
            .args(more),
    )
    .into_iter()
    .filter(|line| line.get("msgId").is_some())
    .collect()
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtrace_agrees_with_the_opentelemetry_java_agent() {
    let receiver = Receiver::start_http().await.unwrap();
    let endpoint = format!("http://{}", receiver.addr);
    let spans_file = ScratchFile::new("otel-oracle-spans.jsonl");
    let output = spans_file.0.clone();
    let (runs, mqtrace) = tokio::task::spawn_blocking(move || {
        let cluster = Cluster::start(Release::V5, Topology::ProxyLocal).unwrap();
        let agent = Agent::start(
            "otel-oracle",
            &["--all", "--output", output.to_str().unwrap()],
        );
        let count = MESSAGES.to_string();
        let namesrv = cluster.namesrv();
        let grpc = cluster.grpc_endpoint();
        let mut runs = Vec::new();
        // The remoting client: a producer in each of its modes and a push consumer.
        for mode in REMOTING_SEND_MODES {
            let topic = format!("OracleRemoting{mode}");
            let group = format!("{topic}Group");
            cluster.make_topic(&topic, "NORMAL").unwrap();
            cluster.make_group(&group, false).unwrap();
            let produced = run_instrumented(
                "RemotingProducer",
                &endpoint,
                &[
                    "--namesrv",
                    &namesrv,
                    "--topic",
                    &topic,
                    "--group",
                    "oracle_producer",
                ],
                &["--count", &count, "--mode", mode],
            );
            let consumed = run_instrumented(
                "RemotingConsumer",
                &endpoint,
                &["--namesrv", &namesrv, "--topic", &topic, "--group", &group],
                &["--expect", &count, "--timeout-s", "120"],
            );
            runs.push((
                format!("Java remoting 5.5.0 {mode}"),
                topic,
                produced,
                consumed,
            ));
        }
        // The gRPC client: a producer of each message type and a push consumer, through the
        // proxy.
        for (mode, message_type) in GRPC_MODES {
            let topic = format!("OracleGrpc{mode}");
            let group = format!("{topic}Group");
            cluster.make_topic(&topic, message_type).unwrap();
            cluster.make_group(&group, false).unwrap();
            let produced = run_instrumented(
                "GrpcProducer",
                &endpoint,
                &["--endpoint", &grpc, "--topic", &topic],
                &["--count", &count, "--mode", mode],
            );
            let consumed = run_instrumented(
                "GrpcPushConsumer",
                &endpoint,
                &["--endpoint", &grpc, "--topic", &topic, "--group", &group],
                &["--expect", &count],
            );
            runs.push((format!("Java gRPC 5.x {mode}"), topic, produced, consumed));
        }
        let log = agent.stop();
        drop(cluster);
        (runs, log)
    })
    .await
    .unwrap();
    // The Java agent exports every 200 ms; its last batch left as the JVM ended.
    let otel = receiver.spans();
    let ours = read_span_file(&spans_file.0);
    for (client, topic, produced, consumed) in &runs {
        let table = compare(produced, consumed, &otel, &ours);
        println!("oracle: {client}: {} messages sent", produced.len());
        let publishes: Vec<&ReceivedSpan> = otel
            .iter()
            .filter(|s| {
                s.kind == 4 && s.attributes.get("messaging.destination.name") == Some(topic)
            })
            .collect();
        println!(
            "oracle: {client}: the agent's publish spans to {topic}: {}, e.g. {:?}",
            publishes.len(),
            publishes.first().map(|s| (&s.name, &s.attributes))
        );
        for row in table.rows() {
            println!("oracle: {client}: {row}");
        }
        table.assert_required(client, AgentPublish::of(client), &mqtrace);
    }
    // Every byte of every connection reached the decoder: a gap would make a missing span
    // the capture's fault, which the oracle is not there to excuse.
    let counters = final_counters(&mqtrace);
    let lost = [
        (
            "kernel records lost",
            &counters["kernel"]["records_lost_ring_full"],
        ),
        (
            "kernel bytes not copied",
            &counters["kernel"]["bytes_not_copied_cap"],
        ),
        ("stream gaps", &counters["pipeline"]["streams"]["gaps"]),
        (
            "frames lost",
            &counters["pipeline"]["decoder"]["frames_lost"],
        ),
    ];
    println!("oracle: the agent's losses: {lost:?}");
    for (what, value) in lost {
        assert_eq!(value.as_u64(), Some(0), "{what}: {value}\n{mqtrace}");
    }
}

/// How the two sides compare on one field over all messages.
#[derive(Default, Debug)]
struct FieldCount {
    agree: usize,
    differ: usize,
    mqtrace_only: usize,
    otel_only: usize,
    neither: usize,
    examples: Vec<String>,
}

impl FieldCount {
    /// A relation that holds or not on each side: agreement is both holding.
    fn add_holds(&mut self, message: &str, mqtrace: Option<bool>, otel: Option<bool>) {
        let holds = |v: Option<bool>| v.map(|v| if v { "holds" } else { "does not hold" });
        match (mqtrace, otel) {
            (Some(false), Some(false)) => {
                self.differ += 1;
                if self.examples.len() < 3 {
                    self.examples
                        .push(format!("{message}: holds on neither side"));
                }
            }
            _ => self.add(
                message,
                holds(mqtrace).map(str::to_string),
                holds(otel).map(str::to_string),
            ),
        }
    }

    fn add(&mut self, message: &str, mqtrace: Option<String>, otel: Option<String>) {
        match (mqtrace, otel) {
            (Some(a), Some(b)) if a == b => self.agree += 1,
            (Some(a), Some(b)) => {
                self.differ += 1;
                if self.examples.len() < 3 {
                    self.examples
                        .push(format!("{message}: mqtrace {a:?}, agent {b:?}"));
                }
            }
            (Some(_), None) => self.mqtrace_only += 1,
            (None, Some(_)) => self.otel_only += 1,
            (None, None) => self.neither += 1,
        }
    }
}

#[derive(Default)]
struct Table {
    fields: BTreeMap<&'static str, FieldCount>,
    /// How far mqtrace's send span lies inside the agent's publish span (ns), at worst:
    /// start after the publish started, end before it ended.
    least_margin_start_ns: i64,
    least_margin_end_ns: i64,
    /// How much shorter mqtrace's send span is than the publish span (ns), at worst: each a
    /// difference of one tool's monotonic clock, free of any wall-clock anchor.
    least_margin_duration_ns: i64,
    /// Messages whose send span lies strictly inside the publish span, and all compared.
    inside: usize,
    timed: usize,
}

/// How far two tools' wall-clock times may disagree beyond the anchor shift below: each turns
/// a monotonic time into wall time through an offset from a pair of clock reads (mqtrace takes
/// the most tightly bracketed of five, every second).
///
/// The agent's SDK anchors each root span (every publish span here) with one read of the wall
/// clock, then one of the monotonic clock (`AnchoredClock.create`), and times the span's start
/// and end from that anchor. A thread preempted between the two reads moves both times earlier
/// by as long (seen: one publish span in 1,000 whose anchor made its end 479 µs earlier than
/// the response it waited for was read). The shift is never negative, so mqtrace's send span
/// is inside the publish span, up to that shift, when it starts after the publish span's start
/// and lasts no longer.
const CLOCK_SKEW_NS: i64 = 500_000;

impl Table {
    fn field(&mut self, name: &'static str) -> &mut FieldCount {
        self.fields.entry(name).or_default()
    }

    fn rows(&self) -> Vec<String> {
        let mut rows: Vec<String> = self
            .fields
            .iter()
            .map(|(name, c)| {
                format!(
                    "{name}: agree {}, differ {}, mqtrace only {}, agent only {}, neither {}{}",
                    c.agree,
                    c.differ,
                    c.mqtrace_only,
                    c.otel_only,
                    c.neither,
                    if c.examples.is_empty() {
                        String::new()
                    } else {
                        format!(" (e.g. {})", c.examples.join("; "))
                    }
                )
            })
            .collect();
        rows.push(if self.timed == 0 {
            "send span inside the publish span: no publish span to compare with".to_string()
        } else {
            format!(
                "send span inside the publish span: {} of {} strictly; least margin at the start \
                 {} µs, at the end {} µs, in duration {} µs",
                self.inside,
                self.timed,
                self.least_margin_start_ns / 1000,
                self.least_margin_end_ns / 1000,
                self.least_margin_duration_ns / 1000
            )
        });
        rows
    }

    /// Message id, destination, operation, the producer→consumer relation and mqtrace's send
    /// span inside the agent's trace agree for every message, as far as the agent's publish
    /// spans (`view`) can: where they name no message, every producer-side row is mqtrace's
    /// alone; where one names a whole batch, the relations are mqtrace's only (the batched
    /// messages carry no `traceparent`: see [`AgentPublish::Batched`]). The consumer's side
    /// agrees in every mode.
    fn assert_required(&self, client: &str, view: AgentPublish, mqtrace_log: &str) {
        let identity_rows = ["message id", "destination", "operation (publish = send)"];
        let relation_rows = [
            "consumer under producer",
            "mqtrace send span in the agent's trace, under its publish span",
        ];
        let row = |name: &str| {
            self.fields
                .get(name)
                .unwrap_or_else(|| panic!("{client}: no row {name}"))
        };
        let every = |name: &str, what: &str, holds: fn(&FieldCount) -> usize| {
            let count = row(name);
            let total =
                count.agree + count.differ + count.mqtrace_only + count.otel_only + count.neither;
            assert!(
                total > 0 && holds(count) == total,
                "{client}: {name}: {what} for every message: {count:?}\n{mqtrace_log}"
            );
        };
        let agree = |name: &str| every(name, "must agree", |c| c.agree);
        let ours_alone = |name: &str| every(name, "mqtrace's alone", |c| c.mqtrace_only);
        agree("operation (process = receive)");
        match view {
            AgentPublish::PerMessage => identity_rows
                .iter()
                .chain(&relation_rows)
                .for_each(|r| agree(r)),
            AgentPublish::Unnamed => {
                identity_rows
                    .iter()
                    .chain(&relation_rows)
                    .for_each(|r| ours_alone(r));
                return;
            }
            AgentPublish::Batched => {
                identity_rows.iter().for_each(|r| agree(r));
                // mqtrace joins each receive to its send by the message id; the agent's
                // process spans start traces of their own, and mqtrace's send spans stay in
                // the traces derived from their ids.
                every(relation_rows[0], "mqtrace's holds, the agent's not", |c| {
                    c.differ
                });
                every(relation_rows[1], "differ", |c| c.differ);
            }
        }
        assert!(
            self.least_margin_start_ns >= -CLOCK_SKEW_NS
                && self.least_margin_duration_ns >= -CLOCK_SKEW_NS,
            "{client}: mqtrace's send span starts after the agent's publish span and lasts no \
             longer, but for the two clocks' skew: {} µs, {} µs",
            self.least_margin_start_ns / 1000,
            self.least_margin_duration_ns / 1000
        );
    }
}

/// A span attribute as the OTLP receiver writes it: text, a number, or a list joined by commas.
fn attribute_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(attribute_text)
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => Some(other.to_string()),
    }
}

fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "INTERNAL",
        2 => "SERVER",
        3 => "CLIENT",
        4 => "PRODUCER",
        5 => "CONSUMER",
        _ => "UNSPECIFIED",
    }
}

/// The per-message comparison of one client's run.
fn compare(produced: &[Value], consumed: &[Value], otel: &[ReceivedSpan], ours: &[Value]) -> Table {
    let mut table = Table {
        least_margin_start_ns: i64::MAX,
        least_margin_end_ns: i64::MAX,
        least_margin_duration_ns: i64::MAX,
        ..Table::default()
    };
    let by_id = |kind: &str| -> BTreeMap<String, Vec<&Value>> {
        let mut map: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for span in ours.iter().filter(|s| s["kind"] == kind) {
            if let Some(id) = span["attributes"]["messaging.message.id"].as_str() {
                map.entry(id.to_string()).or_default().push(span);
            }
        }
        map
    };
    let our_sends = by_id("PRODUCER");
    let our_receives = by_id("CLIENT");
    let otel_by_id = |kind: i32| -> BTreeMap<String, Vec<&ReceivedSpan>> {
        let mut map: BTreeMap<String, Vec<&ReceivedSpan>> = BTreeMap::new();
        for span in otel.iter().filter(|s| s.kind == kind) {
            // A batch's publish span names all its messages, joined by commas.
            for id in span
                .attributes
                .get("messaging.message.id")
                .into_iter()
                .flat_map(|ids| ids.split(','))
            {
                map.entry(id.to_string()).or_default().push(span);
            }
        }
        map
    };
    let publishes = otel_by_id(4);
    let processes = otel_by_id(5);
    let consumed_ids: std::collections::BTreeSet<&str> =
        consumed.iter().map(|c| text(c, "msgId")).collect();
    for p in produced {
        let id = text(p, "msgId");
        let send = our_sends.get(id).and_then(|v| v.first().copied());
        let publish = publishes.get(id).and_then(|v| v.first().copied());
        let ours = |key: &str| send.and_then(|s| attribute_text(&s["attributes"][key]));
        let theirs = |key: &str| publish.and_then(|s| s.attributes.get(key).cloned());
        // The publish span was found by this id among those it names.
        table.field("message id").add(
            id,
            ours("messaging.message.id"),
            publish.map(|_| id.to_string()),
        );
        table.field("destination").add(
            id,
            ours("messaging.destination.name"),
            theirs("messaging.destination.name"),
        );
        table.field("operation (publish = send)").add(
            id,
            send.map(|s| format!("{} {}", s["kind"].as_str().unwrap_or(""), "send")),
            publish.map(|s| {
                let operation = if s.name.ends_with("publish") || s.name.starts_with("send") {
                    "send"
                } else {
                    s.name.as_str()
                };
                format!("{} {operation}", kind_name(s.kind))
            }),
        );
        for (row, key) in [
            ("tag", "messaging.rocketmq.message.tag"),
            ("keys", "messaging.rocketmq.message.keys"),
            ("producer group", "messaging.rocketmq.client_group"),
        ] {
            table.field(row).add(id, ours(key), theirs(key));
        }
        // mqtrace joins the agent's trace through the traceparent it wrote: the same trace,
        // the send span a child of the publish span, within it in time.
        table
            .field("mqtrace send span in the agent's trace, under its publish span")
            .add(
                id,
                send.map(|s| {
                    format!(
                        "{}/{}",
                        s["trace_id"].as_str().unwrap_or(""),
                        s["parent_span_id"].as_str().unwrap_or("")
                    )
                }),
                publish.map(|p| format!("{}/{}", p.trace_id, p.span_id)),
            );
        if let (Some(send), Some(publish)) = (send, publish) {
            let start = send["start_unix_nano"].as_u64().unwrap_or(0) as i64;
            let end = send["end_unix_nano"].as_u64().unwrap_or(0) as i64;
            table.least_margin_start_ns = table
                .least_margin_start_ns
                .min(start - publish.start_unix_nano as i64);
            table.least_margin_end_ns = table
                .least_margin_end_ns
                .min(publish.end_unix_nano as i64 - end);
            table.least_margin_duration_ns = table
                .least_margin_duration_ns
                .min((publish.end_unix_nano - publish.start_unix_nano) as i64 - (end - start));
            table.timed += 1;
            if start >= publish.start_unix_nano as i64 && end <= publish.end_unix_nano as i64 {
                table.inside += 1;
            }
        }
        if !consumed_ids.contains(id) {
            continue;
        }
        let receive = our_receives
            .get(id)
            .and_then(|v| v.iter().find(|s| text(s, "name").starts_with("receive")));
        let process = processes.get(id).and_then(|v| v.first().copied());
        table.field("operation (process = receive)").add(
            id,
            receive.map(|_| "consumed".to_string()),
            process.map(|_| "consumed".to_string()),
        );
        table.field("consumer group").add(
            id,
            receive.and_then(|r| {
                r["attributes"]["messaging.consumer.group.name"]
                    .as_str()
                    .map(str::to_string)
            }),
            process.and_then(|p| p.attributes.get("messaging.rocketmq.client_group").cloned()),
        );
        table.field("consumer destination").add(
            id,
            receive.and_then(|r| {
                r["attributes"]["messaging.destination.name"]
                    .as_str()
                    .map(str::to_string)
            }),
            process.and_then(|p| p.attributes.get("messaging.destination.name").cloned()),
        );
        // Each side's consumer span belongs to its producer span's trace, under it.
        let send_ids = send.map(|s| {
            (
                s["trace_id"].as_str().unwrap_or("").to_string(),
                s["span_id"].as_str().unwrap_or("").to_string(),
            )
        });
        table.field("consumer under producer").add_holds(
            id,
            receive.zip(send_ids).map(|(r, (trace, span))| {
                r["trace_id"] == trace.as_str() && r["parent_span_id"] == span.as_str()
            }),
            process.zip(publish).map(|(c, p)| {
                c.trace_id == p.trace_id
                    && (c.parent_span_id == p.span_id
                        || otel.iter().any(|r| {
                            r.span_id == c.parent_span_id && r.parent_span_id == p.span_id
                        }))
            }),
        );
    }
    table
}
