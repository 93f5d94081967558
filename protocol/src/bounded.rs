//! The one bounded store: a map in insertion order that keeps within a count and a byte limit
//! by forgetting its oldest entries first, and counts what it forgot. Every place that keeps
//! things between events (requests awaiting their answer, calls under way, the indexes of
//! messages seen, the journal) is one of these, so eviction and its accounting are written once.

use std::{borrow::Borrow, hash::Hash};

use hashlink::LinkedHashMap;

/// Bytes one store holds against its limit, and the entries it forgot to stay within it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Held {
    pub bytes: usize,
    pub limit: usize,
    pub evicted: u64,
}

impl Held {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// Whether `more` bytes fit besides what is held.
    pub fn fits(&self, more: usize) -> bool {
        self.bytes + more <= self.limit
    }
}

struct Slot<V> {
    value: V,
    bytes: usize,
}

/// An insertion-ordered map of at most `max_entries`, holding at most `held.limit` bytes (as
/// its users estimate them per entry).
pub struct Bounded<K, V> {
    entries: LinkedHashMap<K, Slot<V>, foldhash::fast::RandomState>,
    max_entries: usize,
    held: Held,
}

impl<K: Hash + Eq, V> Bounded<K, V> {
    pub fn new(max_entries: usize, limit_bytes: usize) -> Self {
        Self {
            entries: LinkedHashMap::with_hasher(foldhash::fast::RandomState::default()),
            max_entries,
            held: Held::new(limit_bytes),
        }
    }

    /// Bounded by count only.
    pub fn with_capacity_limit(max_entries: usize) -> Self {
        Self::new(max_entries, usize::MAX)
    }

    pub fn held(&self) -> &Held {
        &self.held
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of the slots allocated, for estimates of the store's own size: each a key, a
    /// value, its two links in the order and the bytes it is counted for.
    pub fn slots_bytes(&self) -> usize {
        self.entries.capacity() * (std::mem::size_of::<(K, V)>() + 3 * std::mem::size_of::<usize>())
    }

    pub fn contains_key<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.entries.contains_key(key)
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.entries.get(key).map(|slot| &slot.value)
    }

    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.entries.get_mut(key).map(|slot| &mut slot.value)
    }

    /// Adds `value` as the newest entry, after forgetting the oldest ones, each handed to
    /// `forgotten`, until it fits (an entry that fits nowhere is still kept, alone). An entry
    /// under the same key is replaced (returned, not counted as forgotten).
    pub fn insert_with(
        &mut self,
        key: K,
        value: V,
        bytes: usize,
        mut forgotten: impl FnMut(K, V),
    ) -> Option<V> {
        let full = |store: &Self| {
            !store.entries.is_empty()
                && (store.entries.len() >= store.max_entries || !store.held.fits(bytes))
        };
        // Looked up first only when something must go (the entry replaced may free the room).
        let mut replaced = None;
        if full(self) {
            replaced = self.remove(&key);
            while full(self) {
                let (key, value) = self.evict_oldest().expect("not empty");
                forgotten(key, value);
            }
        }
        self.held.bytes += bytes;
        if let Some(old) = self.entries.insert(key, Slot { value, bytes }) {
            self.held.bytes -= old.bytes;
            replaced = Some(old.value);
        }
        replaced
    }

    /// [`Bounded::insert_with`], dropping what it forgets.
    pub fn insert(&mut self, key: K, value: V, bytes: usize) -> Option<V> {
        self.insert_with(key, value, bytes, |_, _| {})
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let slot = self.entries.remove(key)?;
        self.held.bytes -= slot.bytes;
        Some(slot.value)
    }

    /// Removes the oldest entry (not counted as forgotten: it was taken, not evicted).
    pub fn pop_oldest(&mut self) -> Option<(K, V)> {
        let (key, slot) = self.entries.pop_front()?;
        self.held.bytes -= slot.bytes;
        Some((key, slot.value))
    }

    /// Forgets the oldest entry, counting it.
    pub fn evict_oldest(&mut self) -> Option<(K, V)> {
        let oldest = self.pop_oldest()?;
        self.held.evicted += 1;
        Some(oldest)
    }

    /// The entry under `key` now holds `bytes`; the oldest entries go, one by one, until the
    /// store is within its bytes again, `key`'s own last (never when it is the only one).
    pub fn resize<Q: Hash + Eq + ?Sized>(&mut self, key: &Q, bytes: usize)
    where
        K: Borrow<Q>,
    {
        if let Some(slot) = self.entries.get_mut(key) {
            self.held.bytes = self.held.bytes - slot.bytes + bytes;
            slot.bytes = bytes;
        }
        while self.held.bytes > self.held.limit && self.entries.len() > 1 {
            self.evict_oldest();
        }
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(key, slot)| (key, &slot.value))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|slot| &slot.value)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.values_mut().map(|slot| &mut slot.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_to_keep_within_count_and_bytes() {
        let mut store = Bounded::new(3, 100);
        for key in 0..3 {
            assert!(store.insert(key, key * 10, 10).is_none());
        }
        let mut forgotten = Vec::new();
        store.insert_with(3, 30, 10, |k, v| forgotten.push((k, v)));
        assert_eq!(forgotten, [(0, 0)], "the count");
        store.insert_with(4, 40, 85, |k, v| forgotten.push((k, v)));
        assert_eq!(forgotten, [(0, 0), (1, 10), (2, 20)], "the bytes");
        assert_eq!(store.len(), 2);
        assert_eq!((store.held().bytes, store.held().evicted), (95, 3));
        // Too large to fit with anything: kept alone.
        store.insert(5, 50, 500);
        assert_eq!(store.iter().collect::<Vec<_>>(), [(&5, &50)]);
    }

    #[test]
    fn replacing_taking_and_resizing_keep_the_accounts() {
        let mut store = Bounded::new(10, 100);
        store.insert("a", 1, 10);
        store.insert("b", 2, 20);
        assert_eq!(store.insert("a", 3, 30), Some(1), "replaced");
        assert_eq!(store.iter().collect::<Vec<_>>(), [(&"b", &2), (&"a", &3)]);
        assert_eq!((store.held().bytes, store.held().evicted), (50, 0));
        assert_eq!(store.remove("b"), Some(2));
        assert_eq!(store.pop_oldest(), Some(("a", 3)));
        assert_eq!((store.held().bytes, store.held().evicted), (0, 0));

        store.insert("old", 1, 40);
        store.insert("new", 2, 40);
        store.resize("new", 70);
        assert_eq!(store.iter().collect::<Vec<_>>(), [(&"new", &2)]);
        assert_eq!((store.held().bytes, store.held().evicted), (70, 1));
        store.resize("new", 700);
        assert_eq!(store.len(), 1, "the only entry stays");
    }
}
