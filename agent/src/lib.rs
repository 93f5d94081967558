//! mqtrace: transparent tracing of Apache RocketMQ traffic.
//!
//! Data flows one way through the stages, one module each:
//! [`sources`] (kernel capture, pcap replay) → [`streams`] (ordered bytes per connection and
//! direction) → [`decoder`] (RocketMQ commands and the messages in them) → correlation → spans →
//! exporters, with [`journeys`] beside the spans (the recent messages, for "where is my
//! message?"). [`pipeline`] wires the stages; [`control`] lets the CLI steer a running daemon;
//! the `mqtrace` binary is a thin CLI over it all.

pub mod cli;
pub mod config;
pub mod control;
pub mod correlation;
pub mod daemon;
pub mod decoder;
pub mod exporters;
pub mod journeys;
pub mod listeners;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod sources;
pub mod spans;
pub mod streams;

/// The hash map of the per-message paths (message IDs, positions, journeys).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// What was made of the last shared value seen (a process's resource, a served client), kept
/// for the next: the same value comes again and again, so it is made once per run of it. The
/// value is held, so that its address is not reused by another.
pub struct FromLast<T: ?Sized, V> {
    last: Option<(std::sync::Arc<T>, V)>,
}

impl<T: ?Sized, V> Default for FromLast<T, V> {
    fn default() -> Self {
        Self { last: None }
    }
}

impl<T: ?Sized, V> FromLast<T, V> {
    /// What `make` made of `value`, made again only when `value` is not the last one.
    pub fn get(&mut self, value: &std::sync::Arc<T>, make: impl FnOnce(&T) -> V) -> &V {
        let same = self
            .last
            .as_ref()
            .is_some_and(|(last, _)| std::sync::Arc::ptr_eq(last, value));
        if !same {
            self.last = Some((value.clone(), make(value)));
        }
        &self.last.as_ref().expect("set above").1
    }
}

/// `text`, shared with the last text asked for through `last` when they are equal: topics and
/// groups come in runs, so a run makes one allocation (`Rc<str>` or `Arc<str>`).
pub fn shared_text<P>(last: &mut Option<P>, text: &str) -> P
where
    P: Clone + std::ops::Deref<Target = str> + for<'a> From<&'a str>,
{
    match last {
        Some(shared) if **shared == *text => shared.clone(),
        _ => last.insert(P::from(text)).clone(),
    }
}

/// Lower-case hex through a buffer: `hex::encode` builds its string a char at a time, which
/// was 7 % of a pulled message's work (three ids per span).
pub fn hex_string(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut out).expect("the buffer holds two digits per byte");
    String::from_utf8(out).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::FromLast;

    #[test]
    fn from_last_makes_once_per_run_of_the_same_value() {
        let mut made = 0;
        let mut lengths = FromLast::<str, usize>::default();
        let (a, b) = (Arc::<str>::from("abc"), Arc::<str>::from("abc"));
        let mut length_of = |value: &Arc<str>| {
            *lengths.get(value, |s| {
                made += 1;
                s.len()
            })
        };
        assert_eq!([length_of(&a), length_of(&a)], [3, 3]);
        // Equal text, another value: made again; and again for the first after it.
        assert_eq!([length_of(&b), length_of(&a)], [3, 3]);
        assert_eq!(made, 3);
    }
}
