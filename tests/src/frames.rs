//! Real RocketMQ frames for load generation, taken from the golden captures of the Rust client
//! (`tests/captures/rust-client`) and turned into templates: each use writes a new opaque and
//! new message IDs in place (same lengths, so nothing else moves), so that every message is
//! new to the agent while the bytes are what a real client and broker exchanged.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, bail};
use mqtrace::sources::{ConnectionId, Direction, SourceEvent, pcap};
use mqtrace_protocol::{SerializeType, encode};

/// Opaques are written as this many decimal digits: every one from `FIRST_OPAQUE` on has it.
const OPAQUE_DIGITS: usize = 10;
pub const FIRST_OPAQUE: u32 = 1_000_000_000;
/// A UNIQ_KEY: 32 upper-case hex digits.
pub const ID_LEN: usize = 32;
const ID_PLACEHOLDER: &[u8; ID_LEN] = b"FEEDFACEFEEDFACEFEEDFACEFEEDFACE";

/// A frame with the places of its opaque and of its message IDs.
#[derive(Clone, Debug)]
pub struct Template {
    pub bytes: Vec<u8>,
    opaque_at: usize,
    ids_at: Vec<usize>,
}

impl Template {
    /// Message IDs the frame carries.
    pub fn ids(&self) -> usize {
        self.ids_at.len()
    }

    /// The frame with `opaque` and the IDs `id(0)`, `id(1)`, ... written in.
    pub fn render(&self, opaque: u32, mut id: impl FnMut(usize) -> [u8; ID_LEN]) -> Vec<u8> {
        let mut frame = self.bytes.clone();
        let digits = format!("{opaque:0OPAQUE_DIGITS$}");
        frame[self.opaque_at..self.opaque_at + OPAQUE_DIGITS].copy_from_slice(digits.as_bytes());
        for (i, &at) in self.ids_at.iter().enumerate() {
            frame[at..at + ID_LEN].copy_from_slice(&id(i));
        }
        frame
    }

    /// The opaque of a frame rendered from this template.
    pub fn opaque_of(&self, frame: &[u8]) -> Option<u32> {
        std::str::from_utf8(frame.get(self.opaque_at..self.opaque_at + OPAQUE_DIGITS)?)
            .ok()?
            .parse()
            .ok()
    }
}

/// A fresh message ID: `run` tells runs apart, `n` messages within one.
pub fn message_id(run: u64, n: u64) -> [u8; ID_LEN] {
    let text = format!("{run:016X}{n:016X}");
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(text.as_bytes());
    id
}

/// A request and the response the broker gave it.
pub struct Exchange {
    pub request: Template,
    pub response: Template,
}

/// One SEND_MESSAGE (code 10) request with its UNIQ_KEY, and the broker's answer.
pub fn send_exchange(captures: &Path) -> anyhow::Result<Exchange> {
    let frames = frames_of(&captures.join("send-single.pcap"))?;
    let request = frames
        .iter()
        .find(|f| f.code() == Some(10) && !f.is_response())
        .context("no SEND_MESSAGE request in send-single.pcap")?;
    let response = frames
        .iter()
        .find(|f| f.is_response() && f.opaque() == request.opaque())
        .context("no response to the SEND_MESSAGE request")?;
    let mut header = request.header.clone();
    let properties = header["extFields"]["properties"]
        .as_str()
        .context("SEND_MESSAGE without properties")?
        .to_string();
    header["extFields"]["properties"] = replace_uniq_key(&properties)?.into();
    Ok(Exchange {
        request: template(header, &request.body, &[])?,
        response: template(response.header.clone(), &response.body, &[])?,
    })
}

/// One PULL_MESSAGE (code 11) request and a response carrying `messages` stored messages (of
/// 1 KiB each in the capture), gathered from the capture's responses.
pub fn pull_exchange(captures: &Path, messages: usize) -> anyhow::Result<Exchange> {
    let frames = frames_of(&captures.join("pull-32.pcap"))?;
    let pulls: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.code() == Some(11) && !f.is_response())
        .collect();
    let mut body = Vec::new();
    let mut found = 0;
    let mut response = None;
    for request in &pulls {
        let Some(answer) = frames
            .iter()
            .find(|f| f.is_response() && f.opaque() == request.opaque() && f.code() == Some(0))
        else {
            continue;
        };
        response.get_or_insert((request, answer));
        let mut rest = &answer.body[..];
        while found < messages && rest.len() >= 4 {
            let size = i32::from_be_bytes(rest[..4].try_into()?) as usize;
            if size < 4 || size > rest.len() {
                break;
            }
            body.extend_from_slice(&rest[..size]);
            rest = &rest[size..];
            found += 1;
        }
    }
    let Some((request, answer)) = response else {
        bail!("no answered PULL_MESSAGE in pull-32.pcap");
    };
    if found < messages {
        bail!("pull-32.pcap holds {found} pulled messages, not {messages}");
    }
    let ids_at = uniq_keys_in(&body);
    if ids_at.len() != messages {
        bail!("{} UNIQ_KEYs in {messages} pulled messages", ids_at.len());
    }
    Ok(Exchange {
        request: template(request.header.clone(), &request.body, &[])?,
        response: template(answer.header.clone(), &body, &ids_at)?,
    })
}

/// A frame as captured: its JSON header and its body.
struct Frame {
    header: serde_json::Value,
    body: Vec<u8>,
}

impl Frame {
    fn code(&self) -> Option<i64> {
        self.header["code"].as_i64()
    }
    fn opaque(&self) -> Option<i64> {
        self.header["opaque"].as_i64()
    }
    fn is_response(&self) -> bool {
        self.header["flag"].as_i64().unwrap_or(0) & 1 == 1
    }
}

/// Every JSON-header frame of a capture, both directions of every connection.
fn frames_of(file: &Path) -> anyhow::Result<Vec<Frame>> {
    let mut streams: BTreeMap<(ConnectionId, Direction), Vec<u8>> = BTreeMap::new();
    pcap::replay(file, |event| {
        if let SourceEvent::Data(chunk) = event {
            streams
                .entry((chunk.connection, chunk.direction))
                .or_default()
                .extend_from_slice(&chunk.bytes);
        }
    })
    .with_context(|| format!("reading {}", file.display()))?;
    let mut frames = Vec::new();
    for stream in streams.values() {
        let mut rest = &stream[..];
        while rest.len() >= 8 {
            let len = u32::from_be_bytes(rest[..4].try_into()?) as usize;
            if rest.len() < 4 + len {
                break;
            }
            let frame = &rest[4..4 + len];
            rest = &rest[4 + len..];
            let marker = u32::from_be_bytes(frame[..4].try_into()?);
            let header_len = (marker & 0x00FF_FFFF) as usize;
            if marker >> 24 != 0 || 4 + header_len > frame.len() {
                continue; // a binary (ROCKETMQ) header: not used as a template
            }
            let Ok(header) = serde_json::from_slice(&frame[4..4 + header_len]) else {
                continue;
            };
            frames.push(Frame {
                header,
                body: frame[4 + header_len..].to_vec(),
            });
        }
    }
    Ok(frames)
}

/// The properties string with its UNIQ_KEY value replaced by the placeholder.
fn replace_uniq_key(properties: &str) -> anyhow::Result<String> {
    let start = properties
        .find("UNIQ_KEY\u{1}")
        .context("no UNIQ_KEY in the properties")?
        + "UNIQ_KEY\u{1}".len();
    let end = properties[start..]
        .find('\u{2}')
        .map_or(properties.len(), |e| start + e);
    if end - start != ID_LEN {
        bail!("a UNIQ_KEY of {} characters", end - start);
    }
    Ok(format!(
        "{}{}{}",
        &properties[..start],
        std::str::from_utf8(ID_PLACEHOLDER)?,
        &properties[end..]
    ))
}

/// Where the UNIQ_KEY values of stored messages start in `body`.
fn uniq_keys_in(body: &[u8]) -> Vec<usize> {
    let key = b"UNIQ_KEY\x01";
    body.windows(key.len())
        .enumerate()
        .filter(|(_, w)| *w == key)
        .map(|(i, _)| i + key.len())
        .filter(|&at| {
            body.get(at..at + ID_LEN)
                .is_some_and(|id| id.iter().all(u8::is_ascii_hexdigit))
        })
        .collect()
}

/// The frame of `header` (opaque set to the placeholder) and `body`, with the places of the
/// opaque, of the header's ID placeholder if any, and of `body_ids` (offsets in `body`).
fn template(
    mut header: serde_json::Value,
    body: &[u8],
    body_ids: &[usize],
) -> anyhow::Result<Template> {
    header["opaque"] = FIRST_OPAQUE.into();
    let header = serde_json::to_vec(&header)?;
    let bytes = encode::frame(SerializeType::Json, &header, body);
    let find = |needle: &[u8]| bytes.windows(needle.len()).position(|w| w == needle);
    let opaque_at = find(format!("\"opaque\":{FIRST_OPAQUE}").as_bytes())
        .context("opaque not found in the header")?
        + "\"opaque\":".len();
    let body_start = bytes.len() - body.len();
    let mut ids_at: Vec<usize> = find(ID_PLACEHOLDER).into_iter().collect();
    ids_at.extend(body_ids.iter().map(|at| body_start + at));
    Ok(Template {
        bytes,
        opaque_at,
        ids_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_writes_the_opaque_and_ids_in_place() {
        let captures = Path::new(env!("CARGO_MANIFEST_DIR")).join("captures/rust-client");
        let send = send_exchange(&captures).unwrap();
        assert_eq!(send.request.ids(), 1);
        let frame = send.request.render(FIRST_OPAQUE + 7, |_| message_id(1, 2));
        assert_eq!(frame.len(), send.request.bytes.len());
        assert_eq!(send.request.opaque_of(&frame), Some(FIRST_OPAQUE + 7));
        let text = String::from_utf8_lossy(&frame);
        assert!(text.contains("00000000000000010000000000000002"), "{text}");
        let pull = pull_exchange(&captures, 32).unwrap();
        assert_eq!(pull.response.ids(), 32);
    }

    /// Frames rendered from the templates, through the agent's own pipeline: every message
    /// gets its span, under its new ID.
    #[test]
    fn every_rendered_message_is_a_new_traced_message() {
        use bytes::Bytes;
        use mqtrace::{
            decoder::DecoderConfig,
            host::resources::HostResources,
            pipeline::{Output, Pipeline},
            sources::{Chunk, Connection, Origin, SeenAs},
        };
        let captures = Path::new(env!("CARGO_MANIFEST_DIR")).join("captures/rust-client");
        let mut spans = Vec::new();
        let mut n = 0;
        for (exchange, rounds) in [
            (send_exchange(&captures).unwrap(), 50u32),
            (pull_exchange(&captures, 32).unwrap(), 3),
        ] {
            let mut pipeline = Pipeline::new(DecoderConfig::default(), 0, HostResources::new());
            let mut out = Vec::new();
            let connection = ConnectionId(1);
            pipeline.push(
                SourceEvent::Opened(Connection {
                    id: connection,
                    pid: std::process::id(),
                    fd: 3,
                    origin: Origin::Connect,
                    local: Some("127.0.0.1:40000".parse().unwrap()),
                    peer: Some("127.0.0.1:10911".parse().unwrap()),
                    timestamp_ns: 1,
                    seen_as: SeenAs::Plain,
                }),
                &mut out,
            );
            let mut positions = [0u64; 2];
            for round in 0..rounds {
                let opaque = FIRST_OPAQUE + round;
                let id = |_| {
                    n += 1;
                    message_id(9, n)
                };
                let request = exchange.request.render(opaque, id);
                let response = exchange.response.render(opaque, |_| {
                    n += 1;
                    message_id(9, n)
                });
                for (direction, frame) in
                    [(Direction::Egress, request), (Direction::Ingress, response)]
                {
                    let position = &mut positions[direction as usize];
                    pipeline.push(
                        SourceEvent::Data(Chunk {
                            connection,
                            direction,
                            position: *position,
                            bytes: Bytes::from(frame.clone()),
                            timestamp_ns: 1_000 + u64::from(round),
                        }),
                        &mut out,
                    );
                    *position += frame.len() as u64;
                }
            }
            spans.extend(out.into_iter().filter_map(|o| match o {
                Output::Span(span) => Some(*span),
                Output::Command(_) | Output::Event(..) => None,
            }));
        }
        let sends = spans.iter().filter(|s| s.name.starts_with("send ")).count();
        let receives = spans
            .iter()
            .filter(|s| s.name.starts_with("receive "))
            .count();
        assert_eq!((sends, receives), (50, 3 * 32));
        let ids: std::collections::BTreeSet<String> = spans
            .iter()
            .filter_map(|s| match s.attributes.get("messaging.message.id") {
                Some(mqtrace::spans::Value::String(id)) => Some(id.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(ids.len(), 50 + 3 * 32, "every message under its own new ID");
    }
}
