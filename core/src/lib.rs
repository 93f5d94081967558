//! mqtrace's pipeline, from source events to spans, with no kernel, no host and no I/O beyond
//! reading a capture file: it builds and tests on a stock toolchain, without root.
//!
//! Data flows one way through the stages, one module each:
//! [`sources`] (the events every source produces; pcap replay) → [`streams`] (ordered bytes
//! per connection and direction) → [`decoder`] (which connections speak RocketMQ, each
//! decoded by the `mqtrace-protocol` crate into commands and the messages in them) →
//! [`correlation`] (send, receive and settle events keyed by message) → [`spans`], with
//! [`journeys`] beside the spans (the recent messages, for "where is my message?").
//! [`pipeline`] wires the stages; [`memory`] bounds what they hold. The agent crate adds the
//! kernel capture, the host, the daemon, the exporters and the CLI.

pub mod correlation;
pub mod decoder;
pub mod journeys;
pub mod memory;
pub mod pipeline;
pub mod sources;
pub mod spans;
pub mod streams;

pub use mqtrace_protocol::{FastMap, append_hex, hex_digits, hex_string};

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
