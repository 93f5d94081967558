//! Encoders for RocketMQ frames, as the wire reference lays them out: test vectors for the
//! decoder's tests, the benchmarks, the load generator, and the agent's RocketMQ trace
//! producer. Not used on the decoding path.

use std::net::{IpAddr, SocketAddr};

use super::{RequestCode, ResponseCode, SerializeType};

/// A request for `code` that awaits its response.
pub fn request_frame(code: RequestCode, opaque: i32, ext: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    json_frame(code.code(), 0, opaque, ext, body)
}

/// A one-way request for `code`: no response follows.
pub fn oneway_frame(code: RequestCode, opaque: i32, ext: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    json_frame(code.code(), 2, opaque, ext, body)
}

/// The response, saying `code`, to the request numbered `opaque`.
pub fn response_frame(
    code: ResponseCode,
    opaque: i32,
    ext: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    json_frame(code.code(), 1, opaque, ext, body)
}

/// A frame with a JSON header holding `ext` (values as strings, as RocketMQ writes them), its
/// code and flag as given (for codes without a name and flags out of the ordinary; else
/// [`request_frame`], [`oneway_frame`] or [`response_frame`]).
pub fn json_frame(code: i32, flag: i32, opaque: i32, ext: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let ext: serde_json::Map<String, serde_json::Value> = ext
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let header = serde_json::json!({
        "code": code, "flag": flag, "opaque": opaque, "language": "JAVA", "version": 453,
        "remark": null, "extFields": ext, "serializeTypeCurrentRPC": "JSON"
    });
    frame(
        SerializeType::Json,
        &serde_json::to_vec(&header).expect("a JSON value"),
        body,
    )
}

/// Length, serialize type and header length, then header and body.
pub fn frame(serialize_type: SerializeType, header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + header.len() + body.len());
    let kind: u32 = match serialize_type {
        SerializeType::Json => 0,
        SerializeType::Rocketmq => 1,
    };
    out.extend_from_slice(&((4 + header.len() + body.len()) as u32).to_be_bytes());
    out.extend_from_slice(&((kind << 24) | header.len() as u32).to_be_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(body);
    out
}

/// A frame with a ROCKETMQ binary header (language RUST).
pub fn binary_frame(
    code: i16,
    flag: i32,
    opaque: i32,
    ext: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&code.to_be_bytes());
    h.push(12); // RUST
    h.extend_from_slice(&317i16.to_be_bytes());
    h.extend_from_slice(&opaque.to_be_bytes());
    h.extend_from_slice(&flag.to_be_bytes());
    h.extend_from_slice(&0i32.to_be_bytes());
    let mut e = Vec::new();
    for (k, v) in ext {
        e.extend_from_slice(&(k.len() as i16).to_be_bytes());
        e.extend_from_slice(k.as_bytes());
        e.extend_from_slice(&(v.len() as i32).to_be_bytes());
        e.extend_from_slice(v.as_bytes());
    }
    h.extend_from_slice(&(e.len() as i32).to_be_bytes());
    h.extend_from_slice(&e);
    frame(SerializeType::Rocketmq, &h, body)
}

/// The properties string: `name \x01 value \x02` per pair.
pub fn properties(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}\u{1}{v}\u{2}"))
        .collect()
}

/// A stored message as `MessageDecoder.encode` lays it out.
pub fn stored_message(
    v2: bool,
    store: SocketAddr,
    queue_offset: i64,
    physical: i64,
    topic: &str,
    props: &str,
    body: &[u8],
) -> Vec<u8> {
    let v6 = store.is_ipv6();
    let sys_flag: i32 = if v6 { 0x10 | 0x20 } else { 0 };
    let host = |a: SocketAddr| -> Vec<u8> {
        let mut v = match a.ip() {
            IpAddr::V4(ip) => ip.octets().to_vec(),
            IpAddr::V6(ip) => ip.octets().to_vec(),
        };
        v.extend_from_slice(&i32::from(a.port()).to_be_bytes());
        v
    };
    let mut m = Vec::new();
    m.extend_from_slice(&0i32.to_be_bytes()); // total, patched below
    m.extend_from_slice(&(if v2 { 0xDAA320ABu32 } else { 0xDAA320A7u32 }).to_be_bytes());
    m.extend_from_slice(&0i32.to_be_bytes()); // body crc
    m.extend_from_slice(&3i32.to_be_bytes()); // queue id
    m.extend_from_slice(&0i32.to_be_bytes()); // flag
    m.extend_from_slice(&queue_offset.to_be_bytes());
    m.extend_from_slice(&physical.to_be_bytes());
    m.extend_from_slice(&sys_flag.to_be_bytes());
    m.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
    m.extend_from_slice(&host(store));
    m.extend_from_slice(&1_700_000_000_123i64.to_be_bytes());
    m.extend_from_slice(&host(store));
    m.extend_from_slice(&2i32.to_be_bytes()); // reconsume times
    m.extend_from_slice(&0i64.to_be_bytes());
    m.extend_from_slice(&(body.len() as i32).to_be_bytes());
    m.extend_from_slice(body);
    if v2 {
        m.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    } else {
        m.push(topic.len() as u8);
    }
    m.extend_from_slice(topic.as_bytes());
    m.extend_from_slice(&(props.len() as i16).to_be_bytes());
    m.extend_from_slice(props.as_bytes());
    let total = m.len() as i32;
    m[..4].copy_from_slice(&total.to_be_bytes());
    m
}

/// One inner message of a SEND_BATCH_MESSAGE body.
pub fn batch_message(props: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    let total = 20 + body.len() + 2 + props.len();
    m.extend_from_slice(&(total as i32).to_be_bytes());
    m.extend_from_slice(&0i32.to_be_bytes());
    m.extend_from_slice(&0i32.to_be_bytes());
    m.extend_from_slice(&0i32.to_be_bytes());
    m.extend_from_slice(&(body.len() as i32).to_be_bytes());
    m.extend_from_slice(body);
    m.extend_from_slice(&(props.len() as i16).to_be_bytes());
    m.extend_from_slice(props.as_bytes());
    m
}
