//! A minimal RocketMQ remoting producer for the trace topic: asks a name server for the topic's
//! route, sends each trace message to a master broker's writable queue in turn, and reads the
//! broker's answer. One request at a time, each within a timeout. The agent's own connections
//! are never traced by itself (the capture leaves the agent's process out).

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use mqtrace_protocol::{
    FrameHead, HEAD_LEN, Header, RequestCode, ResponseCode, encode::request_frame,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Connect, write and answer, each.
const TIMEOUT: Duration = Duration::from_secs(5);
/// A route is asked for again after this, or after a failed send.
const ROUTE_TTL: Duration = Duration::from_secs(30);
/// Answers larger than this are not a name server's or broker's to a trace producer.
const MAX_ANSWER: u32 = 16 << 20;

/// The topic whose route names the brokers that create topics on first use, and how many
/// queues they give a topic so created (`defaultTopicQueueNums`).
const AUTO_CREATE_TOPIC: &str = "TBW102";
const AUTO_CREATE_QUEUES: u32 = 4;

/// The property that tells a trace message the agent wrote from one a client wrote.
pub const WRITER_PROPERTY: &str = "MQTRACE_AGENT";

/// A broker's refusal that sending again cannot change: the message is malformed or too
/// large (MESSAGE_ILLEGAL 13), or the producer may not write the topic (NO_PERMISSION 16).
#[derive(Debug)]
pub struct Refused {
    pub broker: String,
    pub code: i32,
    pub remark: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "broker {} refused the trace message: code {} ({})",
            self.broker, self.code, self.remark
        )
    }
}

impl std::error::Error for Refused {}

/// Where the trace topic's messages go, from its route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queue {
    pub broker_name: String,
    pub address: String,
    pub queue_id: u32,
}

pub struct TraceProducer {
    name_servers: Vec<String>,
    topic: String,
    group: String,
    queues: Vec<Queue>,
    routed_at: Option<std::time::Instant>,
    next: usize,
    link: Link,
}

/// The connections open (to name servers and brokers), by address, and the requests'
/// numbering.
#[derive(Default)]
struct Link {
    connections: std::collections::HashMap<String, TcpStream>,
    opaque: i32,
}

impl TraceProducer {
    /// `name_servers`: `host:port` separated by `;` (as RocketMQ's clients take them).
    pub fn new(name_servers: &str, topic: &str, group: &str) -> Self {
        Self {
            name_servers: name_servers
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            topic: topic.to_string(),
            group: group.to_string(),
            queues: Vec::new(),
            routed_at: None,
            next: 0,
            link: Link::default(),
        }
    }

    /// Sends one trace message: `body` (records), found by `keys` (space-separated).
    pub async fn send(&mut self, body: &[u8], keys: &str) -> anyhow::Result<()> {
        if self.routed_at.is_none_or(|at| at.elapsed() > ROUTE_TTL) || self.queues.is_empty() {
            self.route().await?;
        }
        let queue = self.queues[self.next % self.queues.len()].clone();
        self.next = self.next.wrapping_add(1);
        let result = self.send_to(&queue, body, keys).await;
        if result
            .as_ref()
            .is_err_and(|e| e.downcast_ref::<Refused>().is_none())
        {
            // A fresh route next time (the broker may be gone from it).
            self.routed_at = None;
        }
        result
    }

    /// The trace topic's queues; where it does not exist yet, the queues of the brokers that
    /// create topics on first use (TBW102's route, as the Java producer does), which create it.
    async fn route(&mut self) -> anyhow::Result<()> {
        let queues = match self.route_of(&self.topic.clone()).await? {
            Some(queues) => queues,
            None => self
                .route_of(AUTO_CREATE_TOPIC)
                .await?
                .map(|queues| {
                    queues
                        .into_iter()
                        .filter(|q| q.queue_id < AUTO_CREATE_QUEUES)
                        .collect()
                })
                .with_context(|| {
                    format!(
                        "the trace topic {} does not exist and no broker creates topics (start \
                         the brokers with traceTopicEnable=true, or create it)",
                        self.topic
                    )
                })?,
        };
        if queues.is_empty() {
            bail!("{} has no writable queue on a master broker", self.topic);
        }
        self.queues = queues;
        self.routed_at = Some(std::time::Instant::now());
        Ok(())
    }

    /// `topic`'s writable queues from the first name server that answers; None where the
    /// topic does not exist.
    async fn route_of(&mut self, topic: &str) -> anyhow::Result<Option<Vec<Queue>>> {
        let mut last_error = None;
        let mut not_there = false;
        for server in self.name_servers.clone() {
            let answer = self
                .link
                .request(
                    &server,
                    RequestCode::GetRouteinfoByTopic,
                    &[("topic", topic)],
                    &[],
                )
                .await;
            match answer {
                Ok((header, body)) if header.code == ResponseCode::Success.code() => {
                    return writable_queues(&body)
                        .map(Some)
                        .with_context(|| format!("the route of {topic} from {server}"));
                }
                // Another name server may know it (one restarted since).
                Ok((header, _)) if header.code == ResponseCode::TopicNotExist.code() => {
                    not_there = true;
                }
                Ok((header, _)) => {
                    last_error = Some(anyhow::anyhow!(
                        "name server {server} answered code {} ({})",
                        header.code,
                        header.remark.unwrap_or_default()
                    ))
                }
                Err(error) => last_error = Some(error),
            }
        }
        match last_error {
            _ if not_there => Ok(None),
            Some(error) => Err(error),
            None => bail!("no name server given"),
        }
    }

    async fn send_to(&mut self, queue: &Queue, body: &[u8], keys: &str) -> anyhow::Result<()> {
        let properties = format!(
            "KEYS\x01{keys}\x02UNIQ_KEY\x01{}\x02WAIT\x01true\x02{WRITER_PROPERTY}\x01{}\x02",
            unique_id(),
            env!("CARGO_PKG_VERSION")
        );
        let born = unix_ms().to_string();
        let queue_id = queue.queue_id.to_string();
        let ext = [
            ("producerGroup", self.group.as_str()),
            ("topic", self.topic.as_str()),
            ("defaultTopic", AUTO_CREATE_TOPIC),
            ("defaultTopicQueueNums", "4"),
            ("queueId", &queue_id),
            ("sysFlag", "0"),
            ("bornTimestamp", &born),
            ("flag", "0"),
            ("properties", &properties),
            ("reconsumeTimes", "0"),
            ("unitMode", "false"),
            ("batch", "false"),
            ("bname", &queue.broker_name),
        ];
        let (header, _) = self
            .link
            .request(&queue.address, RequestCode::SendMessage, &ext, body)
            .await?;
        // Stored; FLUSH_DISK_TIMEOUT 10, FLUSH_SLAVE_TIMEOUT 12 and SLAVE_NOT_AVAILABLE 11
        // stored it too (the Java client counts them as sent).
        let refused = Refused {
            broker: queue.address.clone(),
            code: header.code,
            remark: header.remark.unwrap_or_default(),
        };
        match header.code {
            0 | 10..=12 => Ok(()),
            13 | 16 => Err(refused.into()),
            // Busy, flushing, not available: sent again.
            _ => bail!("{refused}"),
        }
    }
}

impl Link {
    /// One request and its answer, on the connection to `address` (made anew if needed).
    async fn request(
        &mut self,
        address: &str,
        code: RequestCode,
        ext: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<(Header, Vec<u8>)> {
        self.opaque = self.opaque.wrapping_add(1);
        let opaque = self.opaque;
        let frame = request_frame(code, opaque, ext, body);
        if !self.connections.contains_key(address) {
            let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(address))
                .await
                .with_context(|| format!("connecting to {address}: timed out"))?
                .with_context(|| format!("connecting to {address}"))?;
            stream.set_nodelay(true)?;
            self.connections.insert(address.to_string(), stream);
        }
        let stream = self.connections.get_mut(address).expect("connected above");
        let exchange = async {
            stream.write_all(&frame).await?;
            loop {
                let (header, body) = read_frame(stream).await?;
                if header.is_response() && header.opaque == opaque {
                    return Ok::<_, anyhow::Error>((header, body));
                }
                // A request of the server's (a check of the producer): not answered.
            }
        };
        match tokio::time::timeout(TIMEOUT, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                self.connections.remove(address);
                Err(error.context(format!("asking {address}")))
            }
            Err(_) => {
                self.connections.remove(address);
                bail!("{address} did not answer within {TIMEOUT:?}")
            }
        }
    }
}

async fn read_frame(stream: &mut TcpStream) -> anyhow::Result<(Header, Vec<u8>)> {
    let mut head = [0u8; HEAD_LEN];
    stream.read_exact(&mut head).await?;
    let head = FrameHead::parse(&head, MAX_ANSWER).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut rest = vec![0u8; head.length as usize - 4];
    stream.read_exact(&mut rest).await?;
    let body = rest.split_off(head.header_len as usize);
    let header = Header::parse(head.serialize_type, &rest).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((header, body))
}

/// The writable queues of master brokers in a route (`TopicRouteData` as the name server
/// writes it: fastjson, whose map keys may be bare numbers).
pub fn writable_queues(route: &[u8]) -> anyhow::Result<Vec<Queue>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Route {
        #[serde(default)]
        broker_datas: Vec<BrokerData>,
        #[serde(default)]
        queue_datas: Vec<QueueData>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct BrokerData {
        broker_name: String,
        #[serde(default)]
        broker_addrs: std::collections::BTreeMap<String, String>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct QueueData {
        broker_name: String,
        write_queue_nums: u32,
        perm: u32,
    }
    const PERM_WRITE: u32 = 2;
    let text = quote_number_keys(std::str::from_utf8(route).context("a route that is not UTF-8")?);
    let route: Route = serde_json::from_str(&text).context("a route that is not JSON")?;
    let mut queues = Vec::new();
    for data in route
        .queue_datas
        .iter()
        .filter(|q| q.perm & PERM_WRITE != 0)
    {
        let master = route
            .broker_datas
            .iter()
            .find(|b| b.broker_name == data.broker_name)
            .and_then(|b| b.broker_addrs.get("0"));
        if let Some(address) = master {
            queues.extend((0..data.write_queue_nums).map(|queue_id| Queue {
                broker_name: data.broker_name.clone(),
                address: address.clone(),
                queue_id,
            }));
        }
    }
    Ok(queues)
}

/// `{0:"a",1:"b"}` → `{"0":"a","1":"b"}`, outside strings.
fn quote_number_keys(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut after_open = false;
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => escaped = false,
            }
            continue;
        }
        if after_open && (c.is_ascii_digit() || c == '-') {
            let mut key = String::from(c);
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                key.push(d);
                chars.next();
            }
            if chars.peek() == Some(&':') {
                out.push('"');
                out.push_str(&key);
                out.push('"');
            } else {
                out.push_str(&key);
            }
            after_open = false;
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | ',' => {
                out.push(c);
                after_open = true;
                continue;
            }
            c if c.is_whitespace() => {
                out.push(c);
                continue;
            }
            _ => {}
        }
        after_open = false;
        out.push(c);
    }
    out
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A trace message's own id (its UNIQ_KEY): pid, time and a counter, 32 hex digits.
fn unique_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{:08X}{:016X}{:08X}",
        std::process::id(),
        unix_ms(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_servers_route_gives_the_masters_writable_queues() {
        // As a 5.5.0 name server writes it (fastjson: bare numbers as map keys).
        let route = br#"{"brokerDatas":[{"brokerAddrs":{0:"127.0.0.1:10911",1:"127.0.0.1:10921"},"brokerName":"broker-a","cluster":"DefaultCluster","enableActingMaster":false},{"brokerAddrs":{1:"127.0.0.1:10931"},"brokerName":"broker-b","cluster":"DefaultCluster"}],"filterServerTable":{},"queueDatas":[{"brokerName":"broker-a","perm":6,"readQueueNums":2,"topicSysFlag":0,"writeQueueNums":2},{"brokerName":"broker-b","perm":6,"readQueueNums":1,"topicSysFlag":0,"writeQueueNums":1},{"brokerName":"broker-a","perm":4,"readQueueNums":1,"topicSysFlag":0,"writeQueueNums":1}]}"#;
        let queues = writable_queues(route).unwrap();
        assert_eq!(
            queues,
            (0..2)
                .map(|queue_id| Queue {
                    broker_name: "broker-a".into(),
                    address: "127.0.0.1:10911".into(),
                    queue_id
                })
                .collect::<Vec<_>>()
        );
        assert!(writable_queues(b"not json").is_err());
    }

    #[test]
    fn bare_number_keys_are_quoted_outside_strings_only() {
        assert_eq!(
            quote_number_keys(r#"{0:"a{1:b}", 12 :"c",x:[1,2]}"#),
            r#"{"0":"a{1:b}", 12 :"c",x:[1,2]}"#
        );
        assert_eq!(quote_number_keys(r#"{"k":{7:"v"}}"#), r#"{"k":{"7":"v"}}"#);
    }

    #[test]
    fn trace_message_ids_are_unique_and_hex() {
        let (a, b) = (unique_id(), unique_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[tokio::test]
    async fn a_name_server_that_is_not_there_is_a_clear_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let mut producer = TraceProducer::new(&address.to_string(), "RMQ_SYS_TRACE_TOPIC", "g");
        let error = producer.send(b"x", "k").await.unwrap_err();
        assert!(
            format!("{error:#}").contains(&format!("connecting to {address}")),
            "{error:#}"
        );
    }
}
