//! mq-client: a real RocketMQ producer and push consumer for mqtrace's tests.
//!
//! mq-client produce NAMESRV TOPIC COUNT [--batch N] [--tag T] [--body-size B] [--pause-every P]
//!   sends COUNT messages (in batches of N when given), keys "key-<i>", and prints one JSON
//!   line per message: {"msg_id","offset_msg_id","queue_id","queue_offset","key","tag"}.
//!   With --pause-every, before message 0, P, 2P, ... it prints {"pause":i} and waits for a
//!   line on stdin (the producer and its connections stay up meanwhile). With --rate R it sends
//!   R messages per second at most; with --stats it prints, instead of the lines, one summary:
//!   {"count","seconds","msgs_per_s","p50_us","p99_us"} (send latencies; synchronous sends).
//! mq-client consume NAMESRV TOPIC GROUP EXPECT TIMEOUT_SECS [--fail-first N] [--fail-all --max-reconsume M]
//!   consumes until EXPECT distinct messages (by UNIQ_KEY) were consumed (or the timeout),
//!   printing one JSON line per delivery: {"msg_id" (the offsetMsgId), "uniq_key", "queue_id",
//!   "queue_offset", "topic", "tags", "reconsume_times", "status"}. With --fail-first, the
//!   first N messages are failed once (ReconsumeLater: the client sends them back for a retry),
//!   with status "failed". With --fail-all every delivery fails, the group may retry a message
//!   M times (maxReconsumeTimes), and a message counts once delivered with reconsume times M:
//!   the send-back of that delivery puts it into the dead-letter queue. With --stats it prints instead one summary {"count","seconds",
//!   "msgs_per_s"} (first to last delivery) and leaves without waiting for the offset commit.
#![recursion_limit = "512"]

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use rocketmq_client_rust::{
    ClientResult, ClientRuntime, ClientRuntimeConfig, ConsumeConcurrentlyContext,
    ConsumeConcurrentlyStatus, DefaultMQProducer, DefaultMQPushConsumer, MQPushConsumer,
    MessageListenerConcurrently,
};
use rocketmq_model::common::message::{message_ext::MessageExt, message_single::Message};
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};
use serde_json::json;

fn arg(args: &[String], i: usize, what: &str) -> String {
    args.get(i).cloned().unwrap_or_else(|| {
        eprintln!("missing {what}; see the usage at the top of tests/peers/rust-client/src/main.rs");
        std::process::exit(2)
    })
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

struct Runtime {
    owner: RuntimeOwner,
    client: Arc<ClientRuntime>,
    _telemetry: rocketmq_observability::TelemetryRuntimeGuard,
}

fn runtime(scope: &str) -> Runtime {
    let owner = RuntimeOwner::plan(RuntimeConfig {
        thread_name: format!("mq-client-{scope}"),
        ..Default::default()
    })
    .expect("runtime plan")
    .build()
    .expect("runtime");
    let telemetry = rocketmq_observability::install_global(
        &rocketmq_observability::TelemetryBootstrapConfig::default(),
    )
    .expect("telemetry");
    let client = ClientRuntime::try_new(
        owner.root_context().component("client"),
        ClientRuntimeConfig::default(),
        telemetry.handle(),
    )
    .expect("client runtime");
    Runtime { owner, client, _telemetry: telemetry }
}

fn message(topic: &str, tag: &str, i: usize, body_size: usize) -> Message {
    let mut body = format!("mqtrace test message {i} ").into_bytes();
    body.resize(body_size.max(body.len()), b'x');
    Message::builder()
        .topic(topic)
        .tags(tag)
        .key(format!("key-{i}"))
        .body_slice(&body)
        .build_unchecked()
}

async fn produce(args: &[String]) -> ClientResult<()> {
    let namesrv = arg(args, 2, "NAMESRV");
    let topic = arg(args, 3, "TOPIC");
    let count: usize = arg(args, 4, "COUNT").parse().expect("COUNT");
    let batch: usize = flag(args, "--batch").map_or(1, |b| b.parse().expect("--batch"));
    let tag = flag(args, "--tag").unwrap_or_else(|| "TagA".into());
    let body_size: usize = flag(args, "--body-size").map_or(64, |b| b.parse().expect("--body-size"));
    let pause_every: Option<usize> = flag(args, "--pause-every").map(|p| p.parse().expect("--pause-every"));
    let rate: Option<f64> = flag(args, "--rate").map(|r| r.parse().expect("--rate"));
    let stats = args.iter().any(|a| a == "--stats");
    let mut latencies_us: Vec<u64> = Vec::with_capacity(count);
    let rt = runtime("producer");
    let mut producer = DefaultMQProducer::builder(rt.client.clone())
        .producer_group("mqtrace_test_producer".to_string())
        .name_server_addr(namesrv)
        .build();
    producer.start().await?;
    let mut i = 0;
    let started = std::time::Instant::now();
    while i < count {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        if pause_every.is_some_and(|p| i % p == 0) {
            println!("{}", json!({ "pause": i }));
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).expect("stdin");
        }
        let n = batch.min(count - i);
        if batch == 1 {
            let sent_at = std::time::Instant::now();
            let result = producer.send_with_timeout(message(&topic, &tag, i, body_size), 5000).await?;
            latencies_us.push(sent_at.elapsed().as_micros() as u64);
            let result = result.expect("synchronous send returns a result");
            if stats {
                i += n;
                continue;
            }
            println!(
                "{}",
                json!({
                    "msg_id": result.msg_id.as_ref().map(|m| m.to_string()),
                    "offset_msg_id": result.offset_msg_id,
                    "queue_id": result.message_queue.as_ref().map(|q| q.queue_id()),
                    "queue_offset": result.queue_offset,
                    "key": format!("key-{i}"),
                    "tag": tag,
                })
            );
        } else {
            let messages: Vec<Message> = (i..i + n).map(|j| message(&topic, &tag, j, body_size)).collect();
            let result = producer.send_batch_with_timeout(messages, 5000).await?;
            // A batch result carries comma-joined ids, one per message, in order.
            let ids: Vec<String> = result.msg_id.as_ref().map(|m| m.as_str().split(',').map(String::from).collect()).unwrap_or_default();
            for (k, id) in ids.iter().enumerate() {
                println!(
                    "{}",
                    json!({
                        "msg_id": id,
                        "queue_id": result.message_queue.as_ref().map(|q| q.queue_id()),
                        "queue_offset": result.queue_offset + k as u64,
                        "key": format!("key-{}", i + k),
                        "tag": tag,
                    })
                );
            }
        }
        i += n;
    }
    let seconds = started.elapsed().as_secs_f64();
    if stats {
        latencies_us.sort_unstable();
        let at = |q: f64| latencies_us.get(((latencies_us.len() as f64 * q) as usize).min(latencies_us.len().saturating_sub(1))).copied().unwrap_or(0);
        println!(
            "{}",
            json!({
                "count": count,
                "seconds": seconds,
                "msgs_per_s": count as f64 / seconds,
                "p50_us": at(0.50),
                "p99_us": at(0.99),
            })
        );
    }
    producer.shutdown().await;
    rt.client.shutdown().await;
    let _ = rt.owner.shutdown_tasks().await;
    Ok(())
}

struct Collector {
    /// UNIQ_KEYs consumed successfully.
    seen: Arc<Mutex<HashSet<String>>>,
    /// First and last delivery.
    times: Arc<Mutex<Option<(std::time::Instant, std::time::Instant)>>>,
    quiet: bool,
    /// UNIQ_KEYs failed once on purpose, and how many may still be.
    failed: Mutex<(HashSet<String>, usize)>,
    /// Fail every delivery; a message is done at this reconsume count.
    fail_all: Option<i32>,
}

impl MessageListenerConcurrently for Collector {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> ClientResult<ConsumeConcurrentlyStatus> {
        let mut seen = self.seen.lock().unwrap();
        let mut failed = self.failed.lock().unwrap();
        let mut status = ConsumeConcurrentlyStatus::ConsumeSuccess;
        let now = std::time::Instant::now();
        let mut times = self.times.lock().unwrap();
        *times = Some((times.map_or(now, |(first, _)| first), now));
        for msg in msgs {
            let uniq_key = msg.property("UNIQ_KEY").unwrap_or_default().to_string();
            let fail = self.fail_all.is_some()
                || (msg.reconsume_times() == 0 && failed.1 > 0 && !failed.0.contains(&uniq_key));
            if self.fail_all.is_some_and(|max| msg.reconsume_times() >= max) {
                seen.insert(uniq_key.clone());
            }
            if fail {
                failed.0.insert(uniq_key.clone());
                failed.1 -= 1;
                status = ConsumeConcurrentlyStatus::ReconsumeLater;
            }
            if self.quiet {
                continue;
            }
            println!(
                "{}",
                json!({
                    "msg_id": msg.msg_id().to_string(),
                    "uniq_key": uniq_key,
                    "topic": msg.topic().to_string(),
                    "queue_id": msg.queue_id(),
                    "queue_offset": msg.queue_offset(),
                    "tags": msg.get_tags().map(|t| t.to_string()),
                    "reconsume_times": msg.reconsume_times(),
                    "status": if fail { "failed" } else { "consumed" },
                })
            );
        }
        if status == ConsumeConcurrentlyStatus::ConsumeSuccess {
            for msg in msgs {
                seen.insert(msg.property("UNIQ_KEY").unwrap_or_default().to_string());
            }
        }
        Ok(status)
    }
}

async fn consume(args: &[String]) -> ClientResult<()> {
    let namesrv = arg(args, 2, "NAMESRV");
    let topic = arg(args, 3, "TOPIC");
    let group = arg(args, 4, "GROUP");
    let expect: usize = arg(args, 5, "EXPECT").parse().expect("EXPECT");
    let timeout: u64 = arg(args, 6, "TIMEOUT_SECS").parse().expect("TIMEOUT_SECS");
    let fail_first: usize = flag(args, "--fail-first").map_or(0, |n| n.parse().expect("--fail-first"));
    let max_reconsume: Option<i32> = flag(args, "--max-reconsume").map(|n| n.parse().expect("--max-reconsume"));
    let fail_all = args.iter().any(|a| a == "--fail-all").then(|| max_reconsume.expect("--fail-all needs --max-reconsume"));
    let stats = args.iter().any(|a| a == "--stats");
    let times = Arc::new(Mutex::new(None));
    let rt = runtime("consumer");
    let mut builder = DefaultMQPushConsumer::builder(rt.client.clone())
        .consumer_group(group)
        .name_server_addr(namesrv);
    if let Some(max) = max_reconsume {
        builder = builder.max_reconsume_times(max);
    }
    let mut consumer = builder.build();
    consumer.subscribe(&topic, "*").await?;
    let seen = Arc::new(Mutex::new(HashSet::new()));
    consumer.register_message_listener_concurrently(Collector {
        seen: seen.clone(),
        times: times.clone(),
        quiet: stats,
        failed: Mutex::new((HashSet::new(), fail_first)),
        fail_all,
    });
    consumer.start().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    while seen.lock().unwrap().len() < expect && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let (true, Some((first, last))) = (stats, *times.lock().unwrap()) {
        let count = seen.lock().unwrap().len();
        let seconds = last.duration_since(first).as_secs_f64();
        println!("{}", json!({"count": count, "seconds": seconds, "msgs_per_s": count as f64 / seconds.max(1e-9)}));
    } else {
        // Let the offset commit reach the broker before leaving.
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    consumer.shutdown().await;
    let got = seen.lock().unwrap().len();
    if got < expect {
        eprintln!("consumed {got} of {expect} messages before the timeout");
        std::process::exit(1);
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("produce") => produce(&args).await,
        Some("consume") => consume(&args).await,
        _ => {
            eprintln!("usage: mq-client produce|consume ... (see src/main.rs)");
            std::process::exit(2)
        }
    };
    if let Err(e) = result {
        eprintln!("mq-client: {e}");
        std::process::exit(1);
    }
}
