//! Consumer lag per group and queue, as the pulls and offset commits seen reveal it: the
//! queue's max offset (pull responses) minus the group's committed offset (the commit in a pull
//! request, UPDATE_CONSUMER_OFFSET). Either side of a connection tells the same.

use crate::FastMap;

use serde::Serialize;

/// Queues followed at most (each a metric series); more are counted, not followed.
const MAX_QUEUES: usize = 4096;
/// A queue nobody pulled from or committed to for this long is forgotten (its consumers
/// left, or this host no longer sees them).
const FORGET_AFTER_NS: u64 = 600_000_000_000;

type QueueKey = (String, String, i32);

struct Queue {
    max_offset: Option<i64>,
    committed: Option<i64>,
    /// When last heard of, by the sources' clock.
    seen_ns: u64,
}

/// One queue's lag, as /metrics labels it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueLag {
    pub group: String,
    pub topic: String,
    pub queue: String,
    /// Messages stored in the queue that the group has not committed yet.
    pub messages: i64,
}

#[derive(Default)]
pub struct Lags {
    queues: FastMap<QueueKey, Queue>,
    /// Queues not followed because MAX_QUEUES were.
    pub dropped: u64,
}

impl Lags {
    fn queue(&mut self, group: &str, topic: &str, queue: i32, at_ns: u64) -> Option<&mut Queue> {
        let key = (group.to_string(), topic.to_string(), queue);
        if !self.queues.contains_key(&key) && self.queues.len() >= MAX_QUEUES {
            self.dropped += 1;
            return None;
        }
        let entry = self.queues.entry(key).or_insert(Queue {
            max_offset: None,
            committed: None,
            seen_ns: at_ns,
        });
        entry.seen_ns = entry.seen_ns.max(at_ns);
        Some(entry)
    }

    /// A pull response said the queue holds messages up to `max_offset` (exclusive).
    pub fn pulled(&mut self, group: &str, topic: &str, queue: i32, max_offset: i64, at_ns: u64) {
        if let Some(q) = self.queue(group, topic, queue, at_ns) {
            q.max_offset = Some(max_offset);
        }
    }

    /// The group committed `offset` (the next one it will consume) on the queue.
    pub fn committed(&mut self, group: &str, topic: &str, queue: i32, offset: i64, at_ns: u64) {
        if offset < 0 {
            return; // nothing committed yet
        }
        if let Some(q) = self.queue(group, topic, queue, at_ns) {
            q.committed = Some(offset);
        }
    }

    /// Forgets queues not heard of for a while, by `now_ns` on the sources' clock.
    pub fn expire(&mut self, now_ns: u64) {
        self.queues
            .retain(|_, q| now_ns.saturating_sub(q.seen_ns) < FORGET_AFTER_NS);
    }

    /// Each queue whose max offset and commit are both known, ordered.
    pub fn lags(&self) -> Vec<QueueLag> {
        let mut lags: Vec<QueueLag> = self
            .queues
            .iter()
            .filter_map(|((group, topic, queue), q)| {
                Some(QueueLag {
                    group: group.clone(),
                    topic: topic.clone(),
                    queue: queue.to_string(),
                    messages: q.max_offset?.saturating_sub(q.committed?).max(0),
                })
            })
            .collect();
        lags.sort_by(|a, b| (&a.group, &a.topic, &a.queue).cmp(&(&b.group, &b.topic, &b.queue)));
        lags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_max_offset_minus_the_commit_and_bounded() {
        let mut lags = Lags::default();
        lags.pulled("g", "T", 1, 10, 5);
        assert!(lags.lags().is_empty(), "no commit known yet");
        lags.committed("g", "T", 1, -1, 6);
        assert!(lags.lags().is_empty());
        lags.committed("g", "T", 1, 4, 7);
        assert_eq!(lags.lags()[0].messages, 6);
        lags.pulled("g", "T", 1, 12, 8);
        lags.committed("g", "T", 1, 12, 9);
        assert_eq!(
            lags.lags(),
            [QueueLag {
                group: "g".into(),
                topic: "T".into(),
                queue: "1".into(),
                messages: 0
            }]
        );
        for queue in 0..MAX_QUEUES as i32 + 5 {
            lags.pulled("h", "T", queue, 1, 10);
        }
        assert_eq!(lags.queues.len(), MAX_QUEUES);
        assert_eq!(lags.dropped, 6);
        lags.expire(10 + FORGET_AFTER_NS);
        assert!(lags.queues.is_empty(), "forgotten once silent");
    }
}
