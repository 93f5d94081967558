//! Telling RocketMQ remoting apart from other protocols by a connection's first bytes, without
//! ports: the agent stops copying connections that are not RocketMQ.

use super::{
    DEFAULT_MAX_FRAME,
    framer::{Plausible, plausible},
    header::HEAD_LEN,
};

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Recognition {
    /// A remoting frame head followed by a header that decodes.
    Remoting,
    /// HTTP/2 (RocketMQ 5 gRPC proxies speak it, and so does much else).
    Http2,
    /// A TLS ClientHello: encrypted, whatever it carries (RocketMQ with TLS on, HTTPS, ...).
    Tls,
    /// Not RocketMQ remoting.
    Other,
    /// Not enough bytes yet to tell.
    NeedMore,
}

/// Whether `prefix` starts a TLS record holding a ClientHello: content type 22 (handshake),
/// version 3.x, then handshake type 1. A remoting frame cannot start so: its length would be
/// hundreds of megabytes.
fn tls_client_hello(prefix: &[u8]) -> Option<bool> {
    let expected: [fn(u8) -> bool; 6] = [
        |b| b == 0x16,
        |b| b == 0x03,
        |b| b <= 0x04,
        |_| true,
        |_| true,
        |b| b == 0x01,
    ];
    for (byte, ok) in prefix.iter().zip(expected) {
        if !ok(*byte) {
            return Some(false);
        }
    }
    (prefix.len() >= expected.len()).then_some(true)
}

/// Classifies the first bytes a client sent on a connection.
pub fn recognize(prefix: &[u8]) -> Recognition {
    match tls_client_hello(prefix) {
        Some(true) => return Recognition::Tls,
        None if !prefix.is_empty() => return Recognition::NeedMore,
        _ => {}
    }
    let preface_len = prefix.len().min(HTTP2_PREFACE.len());
    if prefix[..preface_len] == HTTP2_PREFACE[..preface_len] && !prefix.is_empty() {
        return if prefix.len() >= HTTP2_PREFACE.len() {
            Recognition::Http2
        } else {
            Recognition::NeedMore
        };
    }
    if prefix.len() < HEAD_LEN {
        return Recognition::NeedMore;
    }
    match plausible(prefix, DEFAULT_MAX_FRAME, None) {
        Plausible::Yes => Recognition::Remoting,
        Plausible::NeedMore => Recognition::NeedMore,
        Plausible::No => Recognition::Other,
    }
}
