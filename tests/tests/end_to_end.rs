//! End to end on one host: a real name server and broker, the real rocketmq-client-rust
//! producer and consumer, the real `mqtrace run` binary with its kernel probes, and spans
//! exported over OTLP/gRPC to a real receiver. Needs root and the peers (`cargo xtask test`).

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Stdio,
    time::Duration,
};

use mqtrace::spans::identity::{SpanId, TraceId};
use mqtrace_tests::{
    agent::Agent,
    netns::NetNs,
    otlp::{ReceivedSpan, Receiver},
    relay::Relay,
    rocketmq::{Broker, client, client_path, json_lines, tail},
    spancheck::{assert_complete_traces, read_span_file},
    wait,
};

const MESSAGES: usize = 200;

/// The tests share fixed broker ports: they take turns even when cargo runs tests in parallel.
/// (tokio's mutex: the guard is held across awaits, and it does not poison when a test fails.)
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PRODUCER: i32 = 4;
const CLIENT: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_messages_one_trace_each_over_otlp() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let topic = "E2ETopic";
    let broker = Broker::start("127.0.0.1").unwrap();
    let receiver = Receiver::start().await.unwrap();
    let endpoint = format!("http://{}", receiver.addr);
    let agent = Agent::start("e2e", &["--all", "--otlp-endpoint", &endpoint]);

    let namesrv = broker.namesrv();
    let (produced, consumed) = tokio::task::spawn_blocking(move || {
        let produced = client()
            .args([
                "produce",
                &namesrv,
                topic,
                &MESSAGES.to_string(),
                "--tag",
                "TagE2E",
            ])
            .output()
            .unwrap();
        assert!(
            produced.status.success(),
            "producer failed: {}",
            tail(&produced.stderr)
        );
        let consumed = client()
            .args([
                "consume",
                &namesrv,
                topic,
                "e2e_group",
                &MESSAGES.to_string(),
                "120",
            ])
            .output()
            .unwrap();
        assert!(
            consumed.status.success(),
            "consumer failed: {}",
            tail(&consumed.stderr)
        );
        (json_lines(&produced.stdout), json_lines(&consumed.stdout))
    })
    .await
    .unwrap();
    assert_eq!(produced.len(), MESSAGES);
    assert!(consumed.len() >= MESSAGES);

    // The agent's own counters agree with what the run is known to have done (once the last
    // events have made their way through).
    let (agent, counters) = tokio::task::spawn_blocking(move || {
        let receives = || agent.scrape()["mqtrace_pipeline_correlation_receives_total"];
        wait::holds(Duration::from_secs(20), wait::POLL, || {
            receives() >= MESSAGES as f64
        });
        let counters = agent.scrape();
        (agent, counters)
    })
    .await
    .unwrap();
    assert_eq!(
        counters.get("mqtrace_pipeline_correlation_sends_total"),
        Some(&(MESSAGES as f64)),
        "{counters:?}"
    );
    assert!(
        counters["mqtrace_pipeline_correlation_receives_total"] >= MESSAGES as f64,
        "{counters:?}"
    );
    assert_eq!(counters["mqtrace_kernel_records_lost_ring_full_total"], 0.0);
    assert_eq!(counters["mqtrace_kernel_bytes_not_copied_cap_total"], 0.0);
    assert_eq!(counters["mqtrace_pipeline_streams_gaps_total"], 0.0);
    let agent_log = tokio::task::spawn_blocking(move || agent.stop())
        .await
        .unwrap();
    let spans = receiver.spans();
    drop(broker);
    assert_complete_traces(
        &spans
            .iter()
            .map(|s| {
                serde_json::json!({
                    "trace_id": s.trace_id, "span_id": s.span_id, "name": s.name,
                    "parent_span_id": (!s.parent_span_id.is_empty()).then_some(&s.parent_span_id),
                    "resource": {}, "attributes": {},
                })
            })
            .collect::<Vec<_>>(),
    );

    let ids: BTreeSet<String> = produced
        .iter()
        .map(|p| p["msg_id"].as_str().unwrap().to_string())
        .collect();
    let mut by_trace: BTreeMap<String, Vec<&ReceivedSpan>> = BTreeMap::new();
    for span in &spans {
        by_trace
            .entry(span.trace_id.clone())
            .or_default()
            .push(span);
        // No span for unrelated traffic (heartbeats, routes, the broker's own side, ...).
        let id = span
            .attributes
            .get("messaging.message.id")
            .cloned()
            .unwrap_or_default();
        assert!(
            ids.contains(&id),
            "span {} for a message not produced here: {id:?}\n{agent_log}",
            span.name
        );
    }
    for p in &produced {
        let id = p["msg_id"].as_str().unwrap();
        let trace = by_trace
            .get(&TraceId::for_message(id).hex())
            .unwrap_or_else(|| panic!("no trace for {id}\n{agent_log}"));
        let sends: Vec<_> = trace.iter().filter(|s| s.kind == PRODUCER).collect();
        assert_eq!(sends.len(), 1, "{id}: exactly one send span");
        let send = sends[0];
        assert_eq!(send.span_id, SpanId::for_send(id).hex());
        assert_eq!(send.name, format!("send {topic}"));
        let a = &send.attributes;
        assert_eq!(a["messaging.system"], "rocketmq");
        assert_eq!(a["messaging.destination.name"], topic);
        assert_eq!(
            a["messaging.destination.partition.id"],
            p["queue_id"].to_string()
        );
        assert_eq!(a["mqtrace.queue_offset"], p["queue_offset"].to_string());
        assert_eq!(
            a["mqtrace.offset_msg_id"],
            p["offset_msg_id"].as_str().unwrap()
        );
        assert_eq!(a["messaging.rocketmq.message.tag"], "TagE2E");
        assert_eq!(
            a["messaging.rocketmq.message.keys"],
            p["key"].as_str().unwrap()
        );
        assert_eq!(a["messaging.message.body.size"], "64");
        assert_eq!(send.resource["service.name"], "mq-client");
        let receives: Vec<_> = trace
            .iter()
            .filter(|s| s.kind == CLIENT && s.name == format!("receive {topic}"))
            .collect();
        assert!(
            !receives.is_empty(),
            "{id}: at least one receive span\n{agent_log}"
        );
        for receive in receives {
            assert_eq!(
                receive.parent_span_id, send.span_id,
                "{id}: receive's parent is the send span"
            );
            assert_eq!(
                receive.attributes["messaging.consumer.group.name"],
                "e2e_group"
            );
            assert_eq!(
                receive.attributes["messaging.destination.partition.id"],
                p["queue_id"].to_string()
            );
            assert_eq!(
                receive.attributes["mqtrace.queue_offset"],
                p["queue_offset"].to_string()
            );
        }
    }
    assert!(
        agent_log.contains("\"dropped_queue_full\":0")
            && agent_log.contains("\"dropped_export_failed\":0"),
        "nothing dropped:\n{agent_log}"
    );
}

fn spans_from_file(path: &std::path::Path) -> Vec<serde_json::Value> {
    read_span_file(path)
}

fn attr<'a>(span: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    &span["attributes"][key]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_consumption_settles_and_retries_and_an_unanswered_send_is_an_error() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let topic = "E2EFail";
    let group = "e2e_fail_group";
    let broker = Broker::start("127.0.0.1").unwrap();
    let dir = std::env::temp_dir();
    let output = dir.join(format!(
        "mqtrace-e2e-fail-spans-{}.jsonl",
        std::process::id()
    ));
    let output_arg = output.to_string_lossy().into_owned();
    let agent = Agent::start(
        "e2e-fail",
        &["--all", "--output", &output_arg, "--request-timeout", "3"],
    );

    let namesrv = broker.namesrv();
    let (produced, consumed) = tokio::task::spawn_blocking(move || {
        let produced = client()
            .args(["produce", &namesrv, topic, "10"])
            .output()
            .unwrap();
        assert!(produced.status.success());
        // The first 3 messages are failed once: the client sends them back for a retry.
        let consumed = client()
            .args([
                "consume",
                &namesrv,
                topic,
                group,
                "10",
                "120",
                "--fail-first",
                "3",
            ])
            .output()
            .unwrap();
        assert!(
            consumed.status.success(),
            "consumer: {}",
            tail(&consumed.stderr)
        );
        (json_lines(&produced.stdout), json_lines(&consumed.stdout))
    })
    .await
    .unwrap();
    let failed: Vec<String> = consumed
        .iter()
        .filter(|c| c["status"] == "failed")
        .map(|c| c["uniq_key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(failed.len(), 3);

    // The broker freezes: a send gets no answer, the client gives up, the agent ends it as an error.
    broker.pause();
    let namesrv = broker.namesrv();
    let unanswered = tokio::task::spawn_blocking(move || {
        client()
            .args(["produce", &namesrv, topic, "1"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        !unanswered.status.success(),
        "a send to a frozen broker fails"
    );
    // Ended by the request timeout while the agent runs, not by its shutdown.
    let started = std::time::Instant::now();
    while !spans_from_file(&output)
        .iter()
        .any(|s| s["status"] == "ERROR")
        && started.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let so_far = spans_from_file(&output);
    let errors_while_running = so_far.iter().filter(|s| s["status"] == "ERROR").count();
    let sends: Vec<String> = so_far
        .iter()
        .filter(|s| s["kind"] == "PRODUCER")
        .map(|s| format!("{} {} {}", s["status"], s["attributes"], s["end_unix_nano"]))
        .collect();
    assert_eq!(
        errors_while_running,
        1,
        "the unanswered send is an error span within the request timeout: {}\n{}",
        sends.join("\n"),
        tail(&unanswered.stderr)
    );
    broker.resume();

    let agent_log = tokio::task::spawn_blocking(move || agent.stop())
        .await
        .unwrap();
    let spans = spans_from_file(&output);
    let _ = std::fs::remove_file(&output);
    assert_complete_traces(&spans);

    for id in &failed {
        let trace = TraceId::for_message(id).hex();
        let mine: Vec<_> = spans
            .iter()
            .filter(|s| s["trace_id"] == trace.as_str())
            .collect();
        let send = SpanId::for_send(id).hex();
        assert!(
            mine.iter()
                .any(|s| s["name"] == format!("send_back {topic}")
                    && s["parent_span_id"] == send.as_str()),
            "{id}: a send-back settle span under the send span\n{agent_log}"
        );
        let retry = mine
            .iter()
            .find(|s| s["name"] == format!("receive %RETRY%{group}"))
            .unwrap_or_else(|| panic!("{id}: a receive span for the retry\n{agent_log}"));
        assert_eq!(retry["parent_span_id"], send.as_str());
        assert_eq!(attr(retry, "mqtrace.reconsume_times"), 1);
    }
    let (broker_errors, errors): (Vec<_>, Vec<_>) = spans
        .iter()
        .filter(|s| s["status"] == "ERROR")
        .partition(|s| s["kind"] == "SERVER");
    assert_eq!(errors.len(), 1, "exactly the unanswered send: {errors:?}");
    assert_eq!(errors[0]["name"], format!("send {topic}"));
    // The broker, resumed, may read the abandoned request before the agent stops: its side of
    // the same exchange is then an error too, the client's connection closed before the answer.
    for store in &broker_errors {
        assert_eq!(store["name"], format!("store {topic}"), "{store}");
        assert_eq!(
            attr(store, "messaging.message.id"),
            attr(errors[0], "messaging.message.id"),
            "{store}"
        );
        assert_eq!(attr(store, "error.type"), "connection_closed", "{store}");
    }
    // The broker never answered, the agent seeing everything: a timeout, or the connection
    // closed first when the client gave up before the agent's request timeout.
    assert!(
        ["timeout", "connection_closed"].contains(&attr(errors[0], "error.type").as_str().unwrap()),
        "{:?}",
        errors[0]
    );
    let ok_ids: BTreeSet<&str> = produced
        .iter()
        .map(|p| p["msg_id"].as_str().unwrap())
        .collect();
    assert!(!ok_ids.contains(attr(errors[0], "messaging.message.id").as_str().unwrap()));
}

/// Starts `mq-client ARGS` inside `ns`, blocked until `release`: `sh` waits for a line, then
/// execs the client, so the pid an agent selects is the client's from its first syscall.
fn blocked_client(ns: &NetNs, args: &[&str]) -> std::process::Child {
    let client = client_path();
    let mut command = ns.command("sh");
    command
        .args(["-c", "read _ && exec \"$0\" \"$@\""])
        .arg(&client)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    command.spawn().expect("start mq-client in its namespace")
}

fn release_and_wait(child: std::process::Child) -> Vec<serde_json::Value> {
    let mut child = child;
    use std::io::Write;
    writeln!(child.stdin.take().unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "client in namespace failed");
    json_lines(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_two_agents_the_traces_still_join() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let topic = "E2ETwoHosts";
    let messages = 50;
    let (host_a, host_b) = (NetNs::create(1).unwrap(), NetNs::create(2).unwrap());
    // The broker runs here on loopback (the only plain-TCP address it accepts) and is reached
    // at host A's link address through a relay; host B gets there by its route.
    let broker_ip = host_a.host_ip.clone();
    let broker = Broker::start_advertising("127.0.0.1", &broker_ip).unwrap();
    let _relays = [9876, 10911].map(|port| {
        Relay::start(&format!("{broker_ip}:{port}"), &format!("127.0.0.1:{port}")).unwrap()
    });
    let namesrv = format!("{broker_ip}:9876");
    let dir = std::env::temp_dir();
    let file = |name: &str| dir.join(format!("mqtrace-e2e-{name}-{}", std::process::id()));
    let (out_a, out_b) = (file("a.jsonl"), file("b.jsonl"));

    // The namespaces move into the blocking task and are removed when it ends, pass or fail.
    let result = tokio::task::spawn_blocking({
        let (out_a, out_b) = (out_a.clone(), out_b.clone());
        move || {
            // Host A: the producer and an agent selecting only it.
            let producer = blocked_client(
                &host_a,
                &["produce", &namesrv, topic, &messages.to_string()],
            );
            let pid_a = producer.id().to_string();
            let agent_a = Agent::start(
                "e2e-host-a",
                &["--pid", &pid_a, "--output", out_a.to_str().unwrap()],
            );
            let produced = release_and_wait(producer);
            // Host B: the consumer and an agent selecting only it.
            let consumer = blocked_client(
                &host_b,
                &[
                    "consume",
                    &namesrv,
                    topic,
                    "two_hosts_group",
                    &messages.to_string(),
                    "120",
                ],
            );
            let pid_b = consumer.id().to_string();
            let agent_b = Agent::start(
                "e2e-host-b",
                &["--pid", &pid_b, "--output", out_b.to_str().unwrap()],
            );
            let consumed = release_and_wait(consumer);
            let logs = (agent_a.stop(), agent_b.stop());
            (produced, consumed, pid_a, pid_b, logs)
        }
    })
    .await;
    let (produced, consumed, pid_a, pid_b, (log_a_text, log_b_text)) = result.unwrap();
    let (spans_a, spans_b) = (spans_from_file(&out_a), spans_from_file(&out_b));
    for f in [&out_a, &out_b] {
        let _ = std::fs::remove_file(f);
    }
    assert_complete_traces(&[spans_a.clone(), spans_b.clone()].concat());
    drop(broker);

    assert_eq!(produced.len(), messages);
    assert!(consumed.len() >= messages);
    // Each agent saw only its own host's process.
    assert!(
        spans_a
            .iter()
            .all(|s| s["resource"]["process.pid"].as_u64() == pid_a.parse().ok()),
        "{log_a_text}"
    );
    assert!(
        spans_b
            .iter()
            .all(|s| s["resource"]["process.pid"].as_u64() == pid_b.parse().ok()),
        "{log_b_text}"
    );
    for p in &produced {
        let id = p["msg_id"].as_str().unwrap();
        let trace = TraceId::for_message(id).hex();
        let send = spans_a
            .iter()
            .find(|s| s["kind"] == "PRODUCER" && s["trace_id"] == trace.as_str());
        let send = send.unwrap_or_else(|| panic!("{id}: no send span from host A\n{log_a_text}"));
        let receive = spans_b
            .iter()
            .find(|s| s["name"] == format!("receive {topic}") && s["trace_id"] == trace.as_str());
        let receive =
            receive.unwrap_or_else(|| panic!("{id}: no receive span from host B\n{log_b_text}"));
        assert_eq!(
            receive["parent_span_id"], send["span_id"],
            "{id}: host B's receive is a child of host A's send"
        );
        assert_eq!(
            send["attributes"]["server.address"],
            broker_ip.as_str(),
            "{id}: sent to the broker across the link"
        );
    }
}

/// The collector set the way OpenTelemetry users set it: only `OTEL_EXPORTER_OTLP_*`
/// variables, a TLS collector with its own CA, a tenant header; over both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_otlp_variables_reach_a_tls_collector_with_their_headers() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let pki = mqtrace_tests::otlp::TestPki::new().unwrap();
    let ca_file = mqtrace_tests::process::ScratchFile::new("mqtrace-e2e-ca.pem");
    std::fs::write(&ca_file.0, &pki.ca_pem).unwrap();
    let broker = Broker::start("127.0.0.1").unwrap();
    let topic = "OtlpEnvTopic";
    broker.make_topic(topic);
    // The traces endpoint of the HTTP collector has a path of its own: it is used as given.
    let http = Receiver::start_https(&pki, "/ingest/otlp/traces")
        .await
        .unwrap();
    let grpc = Receiver::start_tls(&pki).await.unwrap();
    let http_endpoint = format!("https://127.0.0.1:{}/ingest/otlp/traces", http.addr.port());
    let grpc_endpoint = format!("https://127.0.0.1:{}", grpc.addr.port());
    let cases = [
        (
            &http,
            vec![
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", http_endpoint.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
        ),
        (
            &grpc,
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", grpc_endpoint.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        ),
    ];
    for (receiver, mut env) in cases {
        env.push((
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ca_file.0.to_str().unwrap(),
        ));
        env.push((
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-scope-orgid=tenant-7,authorization=Bearer%20s3cret",
        ));
        let agent = Agent::start_with_env("e2e-otlp-env", &["--comm", "raw-producer"], &env);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_raw-producer"))
            .args(["127.0.0.1:10911", topic, "3"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", tail(&out.stderr));
        let log = agent.stop(); // flushes the export
        let spans = receiver.spans();
        assert_eq!(
            spans.iter().filter(|s| s.kind == PRODUCER).count(),
            3,
            "{env:?}\n{log}"
        );
        let requests = receiver.requests();
        assert!(!requests.is_empty());
        for request in &requests {
            assert_eq!(request.headers["x-scope-orgid"], "tenant-7", "{request:?}");
            assert_eq!(
                request.headers["authorization"], "Bearer s3cret",
                "{request:?}"
            );
            if std::ptr::eq(receiver, &http) {
                assert_eq!(request.path, "/ingest/otlp/traces");
            }
        }
    }
    drop(broker);
}
