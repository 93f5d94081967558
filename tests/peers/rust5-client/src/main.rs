//! mq5-client: produces and consumes through a RocketMQ 5 proxy over gRPC (plain HTTP/2, no TLS)
//! with Apache's Rust 5.x client, printing one JSON line per message on stdout. Its logs go to
//! stderr.
//!
//!   mq5-client produce --endpoint 127.0.0.1:8081 --topic T --count N [--key-prefix key-]
//!                      [--tag TagA] [--interval-ms 0] [--tls false]
//!   mq5-client consume --endpoint 127.0.0.1:8081 --topic T --group G --count N [--timeout-s 60]
//!                      [--tag '*'] [--batch 1]

use std::{
    collections::HashMap,
    process::ExitCode,
    time::{Duration, Instant},
};

use rocketmq::{
    Producer, SimpleConsumer,
    conf::{ClientOption, ProducerOption, SimpleConsumerOption},
    model::{
        common::{FilterExpression, FilterType},
        message::MessageBuilder,
    },
};
use serde_json::json;

const USAGE: &str = "usage:
  mq5-client produce --endpoint HOST:PORT --topic T --count N [--key-prefix key-] [--tag TagA] [--interval-ms 0] [--tls false]
  mq5-client consume --endpoint HOST:PORT --topic T --group G --count N [--timeout-s 60] [--tag '*'] [--batch 1]";

/// `--name value` pairs, every name given at most once.
struct Args(HashMap<String, String>);

impl Args {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(name) = it.next() {
            let Some(key) = name.strip_prefix("--") else {
                return Err(format!("unexpected argument {name:?}"));
            };
            let value = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            if map.insert(key.to_string(), value.clone()).is_some() {
                return Err(format!("{name} given twice"));
            }
        }
        Ok(Self(map))
    }

    fn take(&mut self, name: &str) -> Result<String, String> {
        self.0
            .remove(name)
            .ok_or_else(|| format!("--{name} is required"))
    }

    fn take_or(&mut self, name: &str, default: &str) -> String {
        self.0.remove(name).unwrap_or_else(|| default.to_string())
    }

    fn number<T: std::str::FromStr>(
        &mut self,
        name: &str,
        default: Option<&str>,
    ) -> Result<T, String> {
        let text = match default {
            Some(default) => self.take_or(name, default),
            None => self.take(name)?,
        };
        text.parse()
            .map_err(|_| format!("--{name} wants a number, not {text:?}"))
    }

    fn done(self) -> Result<(), String> {
        match self.0.keys().next() {
            Some(extra) => Err(format!("unknown option --{extra}")),
            None => Ok(()),
        }
    }
}

fn client_option(endpoint: &str, tls: bool) -> ClientOption {
    let mut option = ClientOption::default();
    option.set_access_url(endpoint);
    option.set_enable_tls(tls);
    option.set_timeout(Duration::from_secs(10));
    option
}

async fn produce(mut args: Args) -> Result<(), String> {
    let endpoint = args.take("endpoint")?;
    let topic = args.take("topic")?;
    let count: u64 = args.number("count", None)?;
    let prefix = args.take_or("key-prefix", "key-");
    let tag = args.take_or("tag", "TagA");
    let interval = Duration::from_millis(args.number("interval-ms", Some("0"))?);
    let tls: bool = args.number("tls", Some("false"))?;
    args.done()?;

    let mut option = ProducerOption::default();
    option.set_topics(vec![topic.clone()]);
    let mut producer = Producer::new(option, client_option(&endpoint, tls))
        .map_err(|e| format!("creating the producer: {e:?}"))?;
    producer
        .start()
        .await
        .map_err(|e| format!("starting the producer on {endpoint}: {e:?}"))?;
    for i in 0..count {
        if i > 0 && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        let key = format!("{prefix}{i}");
        let message = MessageBuilder::builder()
            .set_topic(topic.clone())
            .set_tag(tag.clone())
            .set_keys(vec![key.clone()])
            .set_body(format!("hello {i}").into_bytes())
            .build()
            .map_err(|e| format!("building message {i}: {e:?}"))?;
        let receipt = producer
            .send(message)
            .await
            .map_err(|e| format!("sending message {i} to {topic}: {e:?}"))?;
        println!(
            "{}",
            json!({"i": i, "key": key, "message_id": receipt.message_id()})
        );
    }
    producer
        .shutdown()
        .await
        .map_err(|e| format!("shutting the producer down: {e:?}"))
}

async fn consume(mut args: Args) -> Result<(), String> {
    let endpoint = args.take("endpoint")?;
    let topic = args.take("topic")?;
    let group = args.take("group")?;
    let count: usize = args.number("count", None)?;
    let timeout = Duration::from_secs(args.number("timeout-s", Some("60"))?);
    let tag = args.take_or("tag", "*");
    // One message a receive: rocketmq-rust 1.0.0's broker joins the offsets of a popped batch
    // with ';' where its proxy's parser wants ',' ("0 1 0;1;2" vs "0 1 0,1,2"), so the proxy
    // fails a receive of more than one message from a queue with INTERNAL_ERROR.
    let batch: i32 = args.number("batch", Some("1"))?;
    args.done()?;

    // Against rocketmq-proxy-rust 1.0.0 the library's telemetry loop spins once the proxy ends
    // the stream ("Authoritative client settings are unavailable"), logging each turn: run it
    // with stderr sent away and expect a busy core (it recorded tests/captures/rust5-client).
    let mut option = SimpleConsumerOption::default();
    option.set_topics(vec![topic.clone()]);
    option.set_consumer_group(group);
    let mut client = client_option(&endpoint, false);
    // Each receive long-polls the proxy this long when nothing is there.
    client.set_long_polling_timeout(Duration::from_secs(5));
    let mut consumer =
        SimpleConsumer::new(option, client).map_err(|e| format!("creating the consumer: {e:?}"))?;
    consumer
        .start()
        .await
        .map_err(|e| format!("starting the consumer on {endpoint}: {e:?}"))?;
    let filter = FilterExpression::new(FilterType::Tag, tag);
    let started = Instant::now();
    let mut acked = 0;
    while acked < count {
        if started.elapsed() > timeout {
            return Err(format!(
                "timed out after {timeout:?}: {acked} of {count} messages acked"
            ));
        }
        // Each receive goes to the next queue of the route. rocketmq-proxy 1.0.0 answers a
        // receive from an empty queue with INTERNAL_ERROR "Serialization failed" instead of
        // MESSAGE_NOT_FOUND (it decodes the header of the broker's POLLING_TIMEOUT answer, which
        // has none): go on with the next queue, and report the last error if the timeout comes
        // first.
        let messages = match consumer
            .receive_with(topic.clone(), &filter, batch, Duration::from_secs(30))
            .await
        {
            Ok(messages) => messages,
            Err(e) => {
                let e = format!("receiving from {topic}: {e:?}");
                eprintln!("mq5-client: {e}");
                if started.elapsed() > timeout {
                    return Err(format!(
                        "timed out after {timeout:?} ({acked} of {count} messages acked); last error {e}"
                    ));
                }
                continue;
            }
        };
        for message in messages {
            consumer
                .ack(&message)
                .await
                .map_err(|e| format!("acking {}: {e:?}", message.message_id()))?;
            acked += 1;
            println!(
                "{}",
                json!({
                    "message_id": message.message_id(),
                    "keys": message.keys(),
                    "body": String::from_utf8_lossy(message.body()),
                    "acked": true,
                })
            );
        }
    }
    consumer
        .shutdown()
        .await
        .map_err(|e| format!("shutting the consumer down: {e:?}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = match argv.first().map(String::as_str) {
        Some("produce") => match Args::parse(&argv[1..]) {
            Ok(args) => produce(args).await,
            Err(e) => Err(e),
        },
        Some("consume") => match Args::parse(&argv[1..]) {
            Ok(args) => consume(args).await,
            Err(e) => Err(e),
        },
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mq5-client: {e}");
            ExitCode::FAILURE
        }
    }
}
