//! One memory budget in bytes for what the agent keeps between events, shared out among the
//! places that keep things: the connections' decoding buffers, requests waiting for their
//! response, the indexes of messages received and sent, the journal, the OTLP export queue. Each keeps within its share by
//! forgetting its oldest entries first, one by one, and counts what it forgot (a
//! [`Bounded`] store). Sizes are
//! estimated from what each entry holds (strings, maps, vectors), which producers choose
//! (keys, tags, properties): entry counts alone would not bound memory.

use serde::Serialize;

pub use mqtrace_protocol::{Bounded, Held};
use mqtrace_protocol::{Header, MessageMeta};

/// The default budget: 256 MiB.
pub const DEFAULT_BUDGET_MIB: usize = 256;

/// The budget shared out, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Shares {
    pub streams: usize,
    pub pending: usize,
    pub received: usize,
    pub sent: usize,
    pub journal: usize,
    pub export: usize,
}

impl Shares {
    pub fn of(budget_bytes: usize) -> Self {
        let part = |percent: usize| budget_bytes / 100 * percent;
        Self {
            streams: part(10),
            pending: part(10),
            received: part(15),
            sent: part(10),
            journal: part(30),
            export: part(25),
        }
    }
}

impl Default for Shares {
    fn default() -> Self {
        Self::of(DEFAULT_BUDGET_MIB << 20)
    }
}

/// What a value holds on the heap, roughly (enough to bound memory, not to the byte).
pub trait HeapSize {
    fn heap_bytes(&self) -> usize;
}

/// What every allocation costs besides its bytes (allocator and container overhead).
pub const PER_ALLOCATION: usize = 32;

impl HeapSize for String {
    fn heap_bytes(&self) -> usize {
        self.capacity() + PER_ALLOCATION
    }
}

impl HeapSize for std::borrow::Cow<'static, str> {
    fn heap_bytes(&self) -> usize {
        match self {
            std::borrow::Cow::Borrowed(_) => 0,
            std::borrow::Cow::Owned(s) => s.heap_bytes(),
        }
    }
}

/// A shared text counted whole by each holder: the estimate errs high, never low.
impl HeapSize for std::sync::Arc<str> {
    fn heap_bytes(&self) -> usize {
        self.len() + 2 * std::mem::size_of::<usize>() + PER_ALLOCATION
    }
}

impl<T: HeapSize> HeapSize for Option<T> {
    fn heap_bytes(&self) -> usize {
        self.as_ref().map_or(0, HeapSize::heap_bytes)
    }
}

impl<T: HeapSize> HeapSize for Vec<T> {
    fn heap_bytes(&self) -> usize {
        self.capacity() * std::mem::size_of::<T>()
            + self.iter().map(HeapSize::heap_bytes).sum::<usize>()
            + PER_ALLOCATION
    }
}

impl HeapSize for MessageMeta {
    fn heap_bytes(&self) -> usize {
        self.msg_id.heap_bytes()
            + self.offset_msg_id.heap_bytes()
            + self.topic.heap_bytes()
            + self.properties.0.capacity_bytes()
    }
}

impl HeapSize for Header {
    fn heap_bytes(&self) -> usize {
        self.language.heap_bytes()
            + self.remark.heap_bytes()
            + self.ext_fields.capacity_bytes()
            + 2 * PER_ALLOCATION
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_grow_with_what_producers_choose() {
        let mut meta = MessageMeta::default();
        let small = meta.heap_bytes();
        meta.properties.0.insert("KEYS", &"k".repeat(30_000));
        assert!(meta.heap_bytes() >= small + 30_000);
        let shares = Shares::of(100 << 20);
        let total = shares.pending + shares.received + shares.sent + shares.journal + shares.export;
        assert!(total <= 100 << 20);
    }
}
