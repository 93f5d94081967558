//! Text fields: a header's `extFields` and a message's properties. Every key and value sits in
//! one text buffer, in arrival order: two allocations per header or message, not two per field
//! (this is the decoder's hottest path). Looked up by a scan, which over RocketMQ's dozen
//! fields costs less than a map; a key given twice has its last value, as in a map.

use std::ops::Range;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    pub(super) text: String,
    /// (key, value) ranges in `text`.
    pub(super) fields: Vec<(Range<u32>, Range<u32>)>,
}

impl Fields {
    pub fn with_capacity(text_bytes: usize, fields: usize) -> Self {
        Self {
            text: String::with_capacity(text_bytes),
            fields: Vec::with_capacity(fields),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        // Lengths first: most keys tried are misses (a send's header is looked up by its long
        // and its one-letter names), and a range's length needs no look at the text.
        let text = self.text.as_bytes();
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| {
                k.len() == key.len() && &text[k.start as usize..k.end as usize] == key.as_bytes()
            })
            .map(|(_, v)| &self.text[v.start as usize..v.end as usize])
    }

    pub fn insert(&mut self, key: &str, value: &str) {
        let key = self.push(key);
        let value = self.push(value);
        self.fields.push((key, value));
    }

    fn push(&mut self, text: &str) -> Range<u32> {
        let start = self.text.len() as u32;
        self.text.push_str(text);
        start..self.text.len() as u32
    }

    /// Every field in arrival order (a key given twice: both).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&str, &str)> {
        let text = |r: &Range<u32>| &self.text[r.start as usize..r.end as usize];
        self.fields.iter().map(move |(k, v)| (text(k), text(v)))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Bytes held on the heap.
    pub fn capacity_bytes(&self) -> usize {
        self.text.capacity()
            + self.fields.capacity() * std::mem::size_of::<(Range<u32>, Range<u32>)>()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Fields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut fields = Fields::default();
        for (key, value) in pairs {
            fields.insert(key.as_ref(), value.as_ref());
        }
        fields
    }
}

/// As a JSON object, the last value of a key given twice.
impl serde::Serialize for Fields {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let fields: std::collections::BTreeMap<&str, &str> = self.iter().collect();
        s.collect_map(fields)
    }
}
