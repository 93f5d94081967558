//! Trace and span identities derived from the message ID, so that agents on different hosts,
//! which never talk to each other, give one message one trace, with no span id twice.
//!
//! Every span of a message is keyed by one string both ends can know, the message key
//! (`correlation::message_key` says which).
//!
//! # Ids
//!
//! - trace id: the first 16 bytes of SHA-256 over `mqtrace`, `trace` and the key (each part
//!   length-prefixed);
//! - send span id: the first 8 bytes of SHA-256 over `mqtrace`, `send` and the key. A client
//!   that sends the same message again (a retry after a timeout) makes a second send span; it
//!   gets an id of its own (kind, key, attempt number) and the first one as parent;
//! - receive and settle span ids: the first 8 bytes of SHA-256 over their kind, the key and
//!   what makes each one unique (group, reconsume count, start time); their parent is the
//!   send span.
//!
//! When the message carries a valid W3C `traceparent`, its trace id is used instead and the
//! send span becomes a child of the application's span; the send span id stays derived from
//! the key, so consumers still find their parent.
//!
//! The broker's spans (store, deliver, the clients' reports, seen from its side of the
//! connections it accepted) are children of the send span too, with ids of their own kinds
//! (`store`, `deliver`, a report's name with "broker"), so that client and broker agents never
//! make one id twice. What a process that accepts RocketMQ connections sends on its own
//! connections (a broker, a RocketMQ proxy, a sidecar, a relay forwarding its clients'
//! messages) makes no spans, however many agents see it; a relay's accepted side makes no
//! broker spans either.

use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

fn digest<'a>(parts: impl IntoIterator<Item = &'a str>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"mqtrace");
    for part in parts {
        // Length-prefixed, so that no two part lists hash the same input.
        hasher.update((part.len() as u32).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// W3C ids must not be all zero.
fn nonzero<const N: usize>(mut bytes: [u8; N]) -> [u8; N] {
    if bytes.iter().all(|&b| b == 0) {
        bytes[N - 1] = 1;
    }
    bytes
}

impl TraceId {
    pub fn for_message(key: &str) -> Self {
        Self(nonzero(digest(["trace", key])[..16].try_into().unwrap()))
    }
    pub fn hex(&self) -> String {
        self.to_string()
    }
}

/// As W3C and OpenTelemetry write it: 32 lower-case hex digits.
impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::hex_digits(&self.0, &mut [0u8; 32]))
    }
}

impl serde::Serialize for TraceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TraceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut id = [0u8; 16];
        hex::decode_to_slice(text.as_bytes(), &mut id)
            .map_err(|_| serde::de::Error::custom("a trace id is 32 hex digits"))?;
        Ok(Self(id))
    }
}

impl SpanId {
    pub fn for_send(key: &str) -> Self {
        Self(nonzero(digest(["send", key])[..8].try_into().unwrap()))
    }
    pub fn for_step(kind: &str, key: &str, unique: &[&str]) -> Self {
        let parts = [kind, key].into_iter().chain(unique.iter().copied());
        Self(nonzero(digest(parts)[..8].try_into().unwrap()))
    }
    pub fn hex(&self) -> String {
        crate::hex_string(&self.0)
    }
}

/// A parsed W3C `traceparent`: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
pub fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId)> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let [version, trace, span, flags, ..] = parts.as_slice() else {
        return None;
    };
    let lower_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2)
        || *version == "ff"
        || !lower_hex(trace, 32)
        || !lower_hex(span, 16)
        || !lower_hex(flags, 2)
    {
        return None;
    }
    if *version == "00" && parts.len() != 4 {
        return None;
    }
    let trace: [u8; 16] = hex::decode(trace).ok()?.try_into().ok()?;
    let span: [u8; 8] = hex::decode(span).ok()?.try_into().ok()?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((TraceId(trace), SpanId(span)))
}

/// The trace of a message and the parent of its send span.
pub fn message_trace(key: &str, traceparent: Option<&str>) -> (TraceId, Option<SpanId>) {
    match traceparent.and_then(parse_traceparent) {
        Some((trace, parent)) => (trace, Some(parent)),
        None => (TraceId::for_message(key), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_never_change() {
        // Agents of different versions on different hosts join one trace only while they
        // derive the same ids: these values must hold in every release. A remoting client's
        // UNIQ_KEY, a 5.x gRPC message id, a broker's offsetMsgId.
        let golden = [
            (
                "7F00000100002A9F0000000000000000",
                "5290a81018eef3e020205253330c5bc8",
                "ad504c7d9fda2996",
                "89f6374f64e35b77",
            ),
            (
                "0102FC000000017A680B279A4900000000",
                "c7c05981bb406be8d8d91ab01851837f",
                "b3da857b4d54c47f",
                "36c2f3ff8aef172e",
            ),
            (
                "7F000001000078BF000000000001650F",
                "04656ab63c50f2ca8e9bb6720a166d49",
                "39cd84a14128145a",
                "75be9af7cd376aa2",
            ),
        ];
        for (key, trace, send, step) in golden {
            assert_eq!(TraceId::for_message(key).hex(), trace, "{key}");
            assert_eq!(SpanId::for_send(key).hex(), send, "{key}");
            assert_eq!(
                SpanId::for_step("receive", key, &["g", "3"]).hex(),
                step,
                "{key}"
            );
        }
    }

    #[test]
    fn derivation_separates_keys_and_kinds() {
        assert_eq!(TraceId::for_message("A"), TraceId::for_message("A"));
        assert_ne!(TraceId::for_message("A"), TraceId::for_message("B"));
        assert_ne!(SpanId::for_send("A"), SpanId::for_step("receive", "A", &[]));
    }

    #[test]
    fn trace_ids_travel_as_their_hex_and_come_back() {
        let id = TraceId::for_message("A");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", id.hex()));
        assert_eq!(id.to_string(), id.hex());
        assert_eq!(serde_json::from_str::<TraceId>(&json).unwrap(), id);
        for bad in ["\"abc\"", "\"zz000000000000000000000000000000\"", "7"] {
            assert!(serde_json::from_str::<TraceId>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn traceparent_is_validated() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (trace, span) = parse_traceparent(valid).unwrap();
        assert_eq!(trace.hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.hex(), "00f067aa0ba902b7");
        for invalid in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            assert!(parse_traceparent(invalid).is_none(), "{invalid}");
        }
        assert_eq!(message_trace("K", Some(valid)), (trace, Some(span)));
        assert_eq!(
            message_trace("K", Some("bad")),
            (TraceId::for_message("K"), None)
        );
    }
}
