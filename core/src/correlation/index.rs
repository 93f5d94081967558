//! Bounded indexes of the messages this agent saw: those received, to resolve settlements
//! that name a message by position (acks, offset commits) or by the broker's ID (send-backs),
//! and those sent, to tell a client's retry of a send from the first one.

use std::{collections::BTreeMap, rc::Rc};

use super::MessageLabels;
use crate::{
    FastMap,
    decoder::MessageMeta,
    memory::{Bounded, HeapSize, Held},
    shared_text,
};

/// Received messages remembered at most; the oldest are forgotten first.
const CAPACITY: usize = 100_000;
/// Sent messages remembered at most; the oldest are forgotten first.
const SENT_CAPACITY: usize = 65_536;

/// One reception of a message: what its settlement needs to name it.
#[derive(Debug)]
pub struct Received {
    pub key: Rc<str>,
    pub labels: MessageLabels,
    pub reconsume_times: Option<i32>,
    /// Whether this agent owned the receipt (see `Correlator::take_over_at`): the agent that
    /// did makes the message's settlements.
    pub owned: bool,
}

/// (topic, queue id, queue offset).
type Position = (Rc<str>, i32, i64);
/// (consumer group, topic, queue id).
type GroupQueue = (Rc<str>, Rc<str>, i32);

/// The maps hold shared strings: a message's key is made once per reception and shared by the
/// maps and the eviction order, a topic or group once per run of receptions that name it (they
/// were a dozen allocations per pulled message, a quarter of the pipeline thread's time at
/// 60,000 messages/s).
pub struct ReceivedIndex {
    by_position: FastMap<Position, Rc<Received>>,
    /// offsetMsgId or UNIQ_KEY → reception.
    by_id: FastMap<Rc<str>, Rc<Received>>,
    /// (group, topic, queue) → queue offset → reception, for messages no commit has passed.
    unsettled: FastMap<GroupQueue, BTreeMap<i64, Rc<Received>>>,
    /// Each reception's keys in the maps above, by its number, oldest first: the store that
    /// keeps within the share and the count.
    order: Bounded<u64, Entry>,
    next_entry: u64,
    /// The last topic and group, shared by the receptions that name them again.
    last_topic: Option<Rc<str>>,
    last_group: Option<Rc<str>>,
}

struct Entry {
    position: Option<Position>,
    /// The key, and the offsetMsgId where there is one.
    ids: [Option<Rc<str>>; 2],
    group_position: Option<(GroupQueue, i64)>,
}

impl ReceivedIndex {
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            by_position: FastMap::default(),
            by_id: FastMap::default(),
            unsettled: FastMap::default(),
            order: Bounded::new(CAPACITY, limit_bytes),
            next_entry: 0,
            last_topic: None,
            last_group: None,
        }
    }

    pub fn insert(&mut self, key: &str, message: &MessageMeta, group: Option<&str>, owned: bool) {
        let labels = MessageLabels::of(message);
        // The reception, its key in each map, and the group and topic again.
        let bytes = 3 * key.len()
            + labels.heap_bytes()
            + 2 * message.topic.heap_bytes()
            + group.map_or(0, str::len)
            + message.offset_msg_id.heap_bytes()
            + 256;
        let key: Rc<str> = Rc::from(key);
        let received = Rc::new(Received {
            key: key.clone(),
            labels,
            reconsume_times: message.reconsume_times,
            owned,
        });
        let position = match (&message.topic, message.queue_id, message.queue_offset) {
            (Some(t), Some(q), Some(o)) => Some((shared_text(&mut self.last_topic, t), q, o)),
            _ => None,
        };
        let group_position = match (group, &position) {
            (Some(g), Some((t, q, o))) => {
                Some(((shared_text(&mut self.last_group, g), t.clone(), *q), *o))
            }
            _ => None,
        };
        let entry = Entry {
            position: position.clone(),
            ids: [Some(key), message.offset_msg_id.as_deref().map(Rc::from)],
            group_position: group_position.clone(),
        };
        let ids = entry.ids.clone();
        // Room first, then the maps: the forgotten go by key, and the new reception may share
        // a key with one of them.
        self.next_entry += 1;
        let (by_position, by_id, unsettled) =
            (&mut self.by_position, &mut self.by_id, &mut self.unsettled);
        self.order
            .insert_with(self.next_entry, entry, bytes, |_, forgotten| {
                forget(by_position, by_id, unsettled, forgotten)
            });
        if let Some(p) = position {
            self.by_position.insert(p, received.clone());
        }
        for id in ids.into_iter().flatten() {
            self.by_id.insert(id, received.clone());
        }
        if let Some((slot, offset)) = group_position {
            self.unsettled
                .entry(slot)
                .or_default()
                .insert(offset, received);
        }
    }

    /// Bytes held against the share; receptions forgotten to stay within it or the count.
    pub fn held(&self) -> &Held {
        self.order.held()
    }

    pub fn by_position(&self, topic: &str, queue: i32, offset: i64) -> Option<Rc<Received>> {
        self.by_position
            .get(&(Rc::from(topic), queue, offset))
            .cloned()
    }

    pub fn by_any_id(&self, id: &str) -> Option<Rc<Received>> {
        self.by_id.get(id).cloned()
    }

    /// The messages of (group, topic, queue) that a committed offset of `commit` passes (the
    /// commit is the next offset to consume), removed from the unsettled set.
    pub fn committed(
        &mut self,
        group: &str,
        topic: &str,
        queue: i32,
        commit: i64,
    ) -> Vec<Rc<Received>> {
        let slot: GroupQueue = (Rc::from(group), Rc::from(topic), queue);
        let Some(offsets) = self.unsettled.get_mut(&slot) else {
            return Vec::new();
        };
        let still = offsets.split_off(&commit);
        let passed = std::mem::replace(offsets, still);
        if offsets.is_empty() {
            self.unsettled.remove(&slot);
        }
        passed.into_values().collect()
    }
}

/// Removes a forgotten reception from the maps.
fn forget(
    by_position: &mut FastMap<Position, Rc<Received>>,
    by_id: &mut FastMap<Rc<str>, Rc<Received>>,
    unsettled: &mut FastMap<GroupQueue, BTreeMap<i64, Rc<Received>>>,
    entry: Entry,
) {
    if let Some(p) = entry.position {
        by_position.remove(&p);
    }
    for id in entry.ids.iter().flatten() {
        by_id.remove(id);
    }
    if let Some((slot, offset)) = entry.group_position
        && let Some(offsets) = unsettled.get_mut(&slot)
    {
        offsets.remove(&offset);
        if offsets.is_empty() {
            unsettled.remove(&slot);
        }
    }
}

struct Sent {
    attempts: u32,
    labels: MessageLabels,
    /// The topic it was sent to, kept where its end may name another (a transaction's check-back
    /// names the broker's half topic).
    topic: Option<Rc<str>>,
}

/// The messages this agent saw sent, by key: how often, and their labels (for the end of a
/// transaction, which names the message by ID only).
pub struct SentIndex {
    by_key: Bounded<String, Sent>,
    last_topic: Option<Rc<str>>,
}

impl SentIndex {
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            by_key: Bounded::new(SENT_CAPACITY, limit_bytes),
            last_topic: None,
        }
    }

    /// Bytes held against the share; sends forgotten to stay within it or the count.
    pub fn held(&self) -> &Held {
        self.by_key.held()
    }

    /// Counts a send of `key` (to `topic`, where its end must know it); returns which attempt
    /// it is (1 for the first seen).
    pub fn record(&mut self, key: &str, labels: MessageLabels, topic: Option<&str>) -> u32 {
        if let Some(sent) = self.by_key.get_mut(key) {
            sent.attempts = sent.attempts.saturating_add(1);
            return sent.attempts;
        }
        let topic = topic.map(|topic| shared_text(&mut self.last_topic, topic));
        let bytes = 2 * key.len() + labels.heap_bytes() + 128;
        let sent = Sent {
            attempts: 1,
            labels,
            topic,
        };
        self.by_key.insert(key.to_string(), sent, bytes);
        1
    }

    pub fn labels(&self, key: &str) -> Option<MessageLabels> {
        self.by_key.get(key).map(|s| s.labels.clone())
    }

    /// The topic `key` was sent to, where it was kept.
    pub fn topic(&self, key: &str) -> Option<&str> {
        self.by_key.get(key).and_then(|s| s.topic.as_deref())
    }
}
