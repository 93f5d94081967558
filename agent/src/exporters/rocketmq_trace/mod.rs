//! RocketMQ's own message trace, written by the agent: records in `TraceDataEncoder`'s format
//! sent to the trace topic (`RMQ_SYS_TRACE_TOPIC`), where RocketMQ Dashboard's message trace
//! finds them by message id, for every client the agent traces, in any language, with no
//! client flag.
//!
//! The span thread makes the records ([`records`]) and queues them, bounded in bytes (a full
//! queue drops and counts). A task holds each record of a remoting client [`HOLD`] (a Java
//! client that writes its own trace sends its first trace message within 5 s), leaves out
//! those of processes seen sending to the trace topic themselves, batches the rest into trace
//! messages and sends them with [`producer`]. A broker or name server that is down or refuses costs counted failures
//! while the queue fills to its bound and drops; sending resumes when it is back.

pub mod producer;
pub mod records;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::spans::Span;
pub use records::View;
use records::{Made, Record, RecordMaker};

/// How long a remoting client's record waits before it is sent: a client writing its own
/// trace is known by then (Java's sends every 20 records or 5 s).
pub const HOLD: Duration = Duration::from_secs(7);
/// A trace message carries at most this many records, this much body and these keys (the
/// broker refuses properties beyond 32 KiB).
const RECORDS_PER_MESSAGE: usize = 100;
const BODY_PER_MESSAGE: usize = 64 << 10;
const KEYS_PER_MESSAGE: usize = 16 << 10;
/// How long other records wait, for company in a trace message.
const BATCH_WAIT: Duration = Duration::from_millis(500);
/// Processes remembered as writing their own trace, each until it has sent no trace message
/// for [`OWN_TRACE_FORGOTTEN`] (its pid may be another process's by then).
const OWN_TRACE_PROCESSES: usize = 4096;
const OWN_TRACE_FORGOTTEN: Duration = Duration::from_secs(600);
/// Waits between attempts while the trace topic cannot be written.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RocketmqTraceConfig {
    /// Name servers, `host:port` separated by `;`.
    pub name_servers: String,
    pub topic: String,
    pub region: String,
    pub view: View,
    /// The producer group the agent's trace messages are sent as.
    pub group: String,
    /// Records waiting (held, batched or being retried), at most, in bytes: the export share
    /// of the memory budget.
    pub queue_bytes: u64,
}

impl RocketmqTraceConfig {
    pub const DEFAULT_TOPIC: &str = "RMQ_SYS_TRACE_TOPIC";
    pub const DEFAULT_REGION: &str = "DefaultRegion";
    pub const DEFAULT_GROUP: &str = "_MQTRACE_TRACE_PRODUCER";

    pub fn new(name_servers: &str) -> Self {
        Self {
            name_servers: name_servers.to_string(),
            topic: Self::DEFAULT_TOPIC.to_string(),
            region: Self::DEFAULT_REGION.to_string(),
            view: View::Client,
            group: Self::DEFAULT_GROUP.to_string(),
            queue_bytes: 64 << 20,
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RocketmqTraceCounters {
    /// Records made from spans.
    pub records: u64,
    /// Records in trace messages the broker stored.
    pub records_written: u64,
    pub trace_messages: u64,
    /// Records of processes that write their own trace: left to them.
    pub records_left_to_clients: u64,
    /// Records dropped because the queue was full (the trace topic could not be written).
    pub dropped_queue_full: u64,
    /// Attempts to send a trace message that failed (each retried).
    pub send_failures: u64,
    /// Records in trace messages the broker refused for good (too large, no permission).
    pub dropped_refused: u64,
    /// Records still waiting when the agent stopped and its flush deadline passed.
    pub dropped_at_stop: u64,
    /// Bytes of the records waiting (a gauge).
    pub queued_bytes: u64,
}

#[derive(Default)]
struct Counters {
    records: AtomicU64,
    records_written: AtomicU64,
    trace_messages: AtomicU64,
    records_left_to_clients: AtomicU64,
    dropped_queue_full: AtomicU64,
    send_failures: AtomicU64,
    dropped_refused: AtomicU64,
    dropped_at_stop: AtomicU64,
    queued_bytes: AtomicU64,
}

enum Item {
    Record(Record),
    OwnTrace(u32),
}

pub struct RocketmqTraceExporter {
    maker: RecordMaker,
    tx: mpsc::UnboundedSender<Item>,
    queue_bytes: u64,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl RocketmqTraceExporter {
    /// Starts the sending task; must run inside a tokio runtime.
    pub fn start(config: RocketmqTraceConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let producer =
            producer::TraceProducer::new(&config.name_servers, &config.topic, &config.group);
        let task = tokio::spawn(run(rx, producer, counters.clone()));
        Self {
            maker: RecordMaker::new(&config.region, &config.topic, config.view),
            tx,
            queue_bytes: config.queue_bytes,
            counters,
            task,
        }
    }

    pub fn send(&mut self, span: &Span) {
        match self.maker.make(span) {
            Made::Record(record) => {
                self.counters.records.fetch_add(1, Ordering::Relaxed);
                let bytes = record_bytes(&record);
                if self.counters.queued_bytes.load(Ordering::Relaxed) + bytes > self.queue_bytes {
                    self.counters
                        .dropped_queue_full
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.counters
                    .queued_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
                if self.tx.send(Item::Record(record)).is_err() {
                    // The task is gone (it ended on a panic): nothing waits.
                    self.counters
                        .queued_bytes
                        .fetch_sub(bytes, Ordering::Relaxed);
                    self.counters
                        .dropped_at_stop
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            // One per trace message the client sends: a fraction of its records.
            Made::OwnTrace(pid) => {
                let _ = self.tx.send(Item::OwnTrace(pid));
            }
            Made::Nothing => {}
        }
    }

    pub fn counters(&self) -> RocketmqTraceCounters {
        self.counters.snapshot()
    }

    /// Sends what waits (held records at once), for at most `deadline`; what is left is lost,
    /// and said.
    pub async fn shutdown(self, deadline: Duration) -> RocketmqTraceCounters {
        let Self {
            tx,
            counters,
            mut task,
            ..
        } = self;
        drop(tx);
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            task.abort();
        }
        counters.queued_bytes.store(0, Ordering::Relaxed);
        let c = counters.snapshot();
        let left = c.records.saturating_sub(
            c.records_written
                + c.records_left_to_clients
                + c.dropped_queue_full
                + c.dropped_refused
                + c.dropped_at_stop,
        );
        if left > 0 {
            counters.dropped_at_stop.fetch_add(left, Ordering::Relaxed);
            tracing::warn!(
                records = left,
                "RocketMQ trace records not written before the flush deadline"
            );
        }
        counters.snapshot()
    }
}

impl Counters {
    fn snapshot(&self) -> RocketmqTraceCounters {
        RocketmqTraceCounters {
            records: self.records.load(Ordering::Relaxed),
            records_written: self.records_written.load(Ordering::Relaxed),
            trace_messages: self.trace_messages.load(Ordering::Relaxed),
            records_left_to_clients: self.records_left_to_clients.load(Ordering::Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            send_failures: self.send_failures.load(Ordering::Relaxed),
            dropped_refused: self.dropped_refused.load(Ordering::Relaxed),
            dropped_at_stop: self.dropped_at_stop.load(Ordering::Relaxed),
            queued_bytes: self.queued_bytes.load(Ordering::Relaxed),
        }
    }
}

/// A record's bytes while it waits: its text, its keys and their bookkeeping.
fn record_bytes(record: &Record) -> u64 {
    (record.text.len() + record.keys.iter().map(|k| k.len() + 24).sum::<usize>() + 64) as u64
}

/// What the sending task keeps: the records waiting, in two queues by how long each waits
/// (so that one kind never waits behind the other), and the processes that write their own
/// trace.
struct Waiting {
    held: VecDeque<(Instant, Record)>,
    prompt: VecDeque<(Instant, Record)>,
    own_trace: HashMap<u32, Instant>,
    counters: Arc<Counters>,
}

impl Waiting {
    fn new(counters: Arc<Counters>) -> Self {
        Self {
            held: VecDeque::new(),
            prompt: VecDeque::new(),
            own_trace: HashMap::new(),
            counters,
        }
    }

    fn is_empty(&self) -> bool {
        self.held.is_empty() && self.prompt.is_empty()
    }

    /// Takes an item in; false once the channel has closed.
    fn take(&mut self, item: Option<Item>) -> bool {
        match item {
            Some(Item::Record(record)) => {
                if record
                    .pid
                    .is_some_and(|pid| self.own_trace.contains_key(&pid))
                {
                    self.leave_to_client(&record);
                } else if record.may_be_doubled {
                    self.held.push_back((Instant::now(), record));
                } else {
                    self.prompt.push_back((Instant::now(), record));
                }
            }
            Some(Item::OwnTrace(pid)) => {
                if self.own_trace.insert(pid, Instant::now()).is_none() {
                    // Newly known: what waits of it is the client's to write.
                    let mut held = std::mem::take(&mut self.held);
                    held.retain(|(_, record)| {
                        let left = record.pid == Some(pid);
                        if left {
                            self.leave_to_client(record);
                        }
                        !left
                    });
                    self.held = held;
                    if self.own_trace.len() > OWN_TRACE_PROCESSES {
                        self.own_trace
                            .retain(|_, seen| seen.elapsed() < OWN_TRACE_FORGOTTEN);
                    }
                    if self.own_trace.len() > OWN_TRACE_PROCESSES {
                        self.own_trace.clear();
                    }
                }
            }
            None => return false,
        }
        true
    }

    fn leave_to_client(&self, record: &Record) {
        self.counters
            .records_left_to_clients
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .queued_bytes
            .fetch_sub(record_bytes(record), Ordering::Relaxed);
    }

    /// The queue whose oldest records have waited long enough (all of them once `closing`),
    /// and how many of them have.
    fn ready(&mut self, closing: bool) -> Option<(&mut VecDeque<(Instant, Record)>, usize)> {
        for (queue, wait) in [(&mut self.held, HOLD), (&mut self.prompt, BATCH_WAIT)] {
            let ready = queue
                .iter()
                .take_while(|(at, _)| closing || at.elapsed() >= wait)
                .count();
            if ready > 0 {
                return Some((queue, ready));
            }
        }
        None
    }
}

/// The sending task: holds, filters, batches and sends until the channel closes (then sends
/// what is left without holding).
async fn run(
    mut rx: mpsc::UnboundedReceiver<Item>,
    mut producer: producer::TraceProducer,
    counters: Arc<Counters>,
) {
    let mut waiting = Waiting::new(counters.clone());
    let mut retry_in = RETRY_FIRST;
    let mut open = true;
    let mut more_ready = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        if open && !more_ready {
            tokio::select! {
                item = rx.recv() => open = waiting.take(item),
                _ = tick.tick() => {}
            }
            // Everything that came meanwhile, at once.
            while open && let Ok(item) = rx.try_recv() {
                open = waiting.take(Some(item));
            }
        } else if !open && waiting.is_empty() {
            return;
        }
        more_ready = false;
        let Some((queue, ready)) = waiting.ready(!open) else {
            continue;
        };
        let batch = batch_of(queue.iter().take(ready).map(|(_, r)| r));
        let sent = producer.send(batch.body.as_bytes(), &batch.keys).await;
        let refused = sent
            .as_ref()
            .err()
            .is_some_and(|e| e.downcast_ref::<producer::Refused>().is_some());
        if sent.is_ok() || refused {
            more_ready = ready > batch.records;
            let bytes: u64 = queue
                .drain(..batch.records)
                .map(|(_, record)| record_bytes(&record))
                .sum();
            counters.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => {
                retry_in = RETRY_FIRST;
                counters
                    .records_written
                    .fetch_add(batch.records as u64, Ordering::Relaxed);
                counters.trace_messages.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) if refused => {
                counters
                    .dropped_refused
                    .fetch_add(batch.records as u64, Ordering::Relaxed);
                tracing::warn!(
                    error = format!("{error:#}"),
                    records = batch.records,
                    "RocketMQ trace records refused by the broker for good: dropped"
                );
            }
            Err(error) => {
                let failures = counters.send_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures.is_power_of_two() {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        failures,
                        "RocketMQ trace records not written; retrying (they wait, up to the \
                         queue's bound)"
                    );
                }
                if !open {
                    return;
                }
                // Records keep arriving (and queueing to the bound) meanwhile.
                let until = tokio::time::Instant::now() + retry_in;
                while open && let Ok(item) = tokio::time::timeout_at(until, rx.recv()).await {
                    open = waiting.take(item);
                }
                retry_in = (retry_in * 2).min(RETRY_MAX);
            }
        }
    }
}

/// A trace message: records joined, keys joined by spaces.
struct Batch {
    records: usize,
    body: String,
    keys: String,
}

fn batch_of<'a>(records: impl Iterator<Item = &'a Record>) -> Batch {
    let mut batch = Batch {
        records: 0,
        body: String::new(),
        keys: String::new(),
    };
    let mut keys_seen: HashSet<&str> = HashSet::new();
    for record in records {
        let new_keys: usize = record
            .keys
            .iter()
            .filter(|k| !keys_seen.contains(k.as_str()))
            .map(|k| k.len() + 1)
            .sum();
        if batch.records > 0
            && (batch.records == RECORDS_PER_MESSAGE
                || batch.body.len() + record.text.len() > BODY_PER_MESSAGE
                || batch.keys.len() + new_keys > KEYS_PER_MESSAGE)
        {
            break;
        }
        batch.body.push_str(&record.text);
        for key in &record.keys {
            if keys_seen.insert(key) {
                if !batch.keys.is_empty() {
                    batch.keys.push(' ');
                }
                batch.keys.push_str(key);
            }
        }
        batch.records += 1;
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, keys: &[&str], text_len: usize) -> Record {
        Record {
            pid: Some(1),
            may_be_doubled: true,
            text: "x".repeat(text_len),
            keys: std::iter::once(id)
                .chain(keys.iter().copied())
                .map(String::from)
                .collect(),
        }
    }

    #[test]
    fn a_trace_message_joins_records_and_their_keys_once() {
        let records = [
            record("A", &["order-1"], 10),
            record("A", &["order-1"], 10),
            record("B", &[], 10),
        ];
        let batch = batch_of(records.iter());
        assert_eq!(batch.records, 3);
        assert_eq!(batch.body.len(), 30);
        assert_eq!(batch.keys, "A order-1 B");
    }

    #[test]
    fn a_trace_message_stops_at_its_bounds() {
        let many: Vec<Record> = (0..150)
            .map(|i| record(&format!("M{i}"), &[], 10))
            .collect();
        assert_eq!(batch_of(many.iter()).records, RECORDS_PER_MESSAGE);
        let big: Vec<Record> = (0..3)
            .map(|i| record(&format!("M{i}"), &[], BODY_PER_MESSAGE / 2))
            .collect();
        assert_eq!(batch_of(big.iter()).records, 2);
        // One record beyond every bound still goes, alone.
        let huge = [record("H", &[], BODY_PER_MESSAGE * 2)];
        assert_eq!(batch_of(huge.iter()).records, 1);
    }
}
