//! A bounded index of the messages this host received, to resolve settlements that name a
//! message by position (acks, offset commits) or by the broker's ID (send-backs).

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::decoder::MessageMeta;

/// Received messages remembered at most; the oldest are forgotten first.
const CAPACITY: usize = 100_000;

#[derive(Default)]
pub struct ReceivedIndex {
    /// (topic, queue id, queue offset) → key.
    by_position: HashMap<(String, i32, i64), String>,
    /// offsetMsgId or UNIQ_KEY → key.
    by_id: HashMap<String, String>,
    /// (group, topic, queue) → queue offset → key, for messages no commit has passed yet.
    unsettled: HashMap<(String, String, i32), BTreeMap<i64, String>>,
    order: VecDeque<Entry>,
}

struct Entry {
    position: Option<(String, i32, i64)>,
    ids: Vec<String>,
    group_position: Option<((String, String, i32), i64)>,
}

impl ReceivedIndex {
    pub fn insert(&mut self, key: &str, message: &MessageMeta, group: Option<&str>) {
        if self.order.len() >= CAPACITY {
            self.evict();
        }
        let position = match (&message.topic, message.queue_id, message.queue_offset) {
            (Some(t), Some(q), Some(o)) => Some((t.clone(), q, o)),
            _ => None,
        };
        if let Some(p) = &position {
            self.by_position.insert(p.clone(), key.to_string());
        }
        let ids: Vec<String> = [Some(key.to_string()), message.offset_msg_id.clone()]
            .into_iter()
            .flatten()
            .collect();
        for id in &ids {
            self.by_id.insert(id.clone(), key.to_string());
        }
        let group_position = match (group, &position) {
            (Some(g), Some((t, q, o))) => {
                let slot = (g.to_string(), t.clone(), *q);
                self.unsettled
                    .entry(slot.clone())
                    .or_default()
                    .insert(*o, key.to_string());
                Some((slot, *o))
            }
            _ => None,
        };
        self.order.push_back(Entry {
            position,
            ids,
            group_position,
        });
    }

    fn evict(&mut self) {
        let Some(entry) = self.order.pop_front() else {
            return;
        };
        if let Some(p) = entry.position {
            self.by_position.remove(&p);
        }
        for id in entry.ids {
            self.by_id.remove(&id);
        }
        if let Some((slot, offset)) = entry.group_position
            && let Some(offsets) = self.unsettled.get_mut(&slot)
        {
            offsets.remove(&offset);
            if offsets.is_empty() {
                self.unsettled.remove(&slot);
            }
        }
    }

    pub fn by_position(&self, topic: &str, queue: i32, offset: i64) -> Option<String> {
        self.by_position
            .get(&(topic.to_string(), queue, offset))
            .cloned()
    }

    pub fn by_any_id(&self, id: &str) -> Option<String> {
        self.by_id.get(id).cloned()
    }

    /// The messages of (group, topic, queue) that a committed offset of `commit` passes (the
    /// commit is the next offset to consume), removed from the unsettled set.
    pub fn committed(&mut self, group: &str, topic: &str, queue: i32, commit: i64) -> Vec<String> {
        let slot = (group.to_string(), topic.to_string(), queue);
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
