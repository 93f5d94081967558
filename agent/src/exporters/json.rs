//! A span as one JSON object, written straight into a buffer: the bytes `serde_json` makes of
//! the `Serialize` derive on [`Span`] (which stays the format's definition; the tests hold this
//! writer to it), at a fraction of the cost. serde_json escapes strings a byte at a time, and
//! that was the largest single cost of a pulled message (15 % of its work): here a string with
//! nothing to escape is copied whole, and a process's resource object, the same on each of its
//! spans, is serialized once.

use crate::{
    append_hex,
    spans::{Attributes, Span, Value},
};

#[derive(Default)]
pub struct SpanJson {
    /// The JSON of the last resource seen.
    resource: crate::FromLast<Attributes, Vec<u8>>,
}

impl SpanJson {
    /// Appends `span` to `out`, without a line end.
    pub fn write(&mut self, out: &mut Vec<u8>, span: &Span) {
        out.extend_from_slice(b"{\"trace_id\":\"");
        append_hex(out, &span.trace_id.0);
        out.extend_from_slice(b"\",\"span_id\":\"");
        append_hex(out, &span.span_id.0);
        out.extend_from_slice(b"\",\"parent_span_id\":");
        match &span.parent_span_id {
            Some(parent) => {
                out.push(b'"');
                append_hex(out, &parent.0);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"name\":");
        string(out, &span.name);
        out.extend_from_slice(b",\"kind\":\"");
        out.extend_from_slice(span.kind.name().as_bytes());
        out.extend_from_slice(b"\",\"start_unix_nano\":");
        integer(out, span.start_unix_nano);
        out.extend_from_slice(b",\"end_unix_nano\":");
        integer(out, span.end_unix_nano);
        out.extend_from_slice(b",\"status\":\"");
        out.extend_from_slice(span.status.name().as_bytes());
        out.extend_from_slice(b"\",\"status_message\":");
        match &span.status_message {
            Some(message) => string(out, message),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"attributes\":");
        attributes(out, &span.attributes);
        out.extend_from_slice(b",\"resource\":");
        out.extend_from_slice(self.resource.get(&span.resource, |resource| {
            let mut json = Vec::new();
            attributes(&mut json, resource);
            json
        }));
        out.extend_from_slice(b",\"links\":[");
        for (i, link) in span.links.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"trace_id\":\"");
            append_hex(out, &link.trace_id.0);
            out.extend_from_slice(b"\",\"span_id\":\"");
            append_hex(out, &link.span_id.0);
            out.extend_from_slice(b"\"}");
        }
        out.extend_from_slice(b"]}");
    }
}

fn attributes(out: &mut Vec<u8>, attributes: &Attributes) {
    out.push(b'{');
    for (i, (key, value)) in attributes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, key);
        out.push(b':');
        match value {
            Value::String(s) => string(out, s),
            Value::Int(n) => integer(out, *n),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Strings(list) => {
                out.push(b'[');
                for (i, s) in list.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    string(out, s);
                }
                out.push(b']');
            }
        }
    }
    out.push(b'}');
}

/// A JSON string: copied whole when nothing in it needs escaping (what JSON escapes: quote,
/// backslash, control characters), else escaped by serde_json.
fn string(out: &mut Vec<u8>, s: &str) {
    // No early exit: the loop then runs over wide registers.
    let escape = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if escape {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec does not fail");
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

fn integer(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, sync::Arc};

    use proptest::prelude::*;

    use super::*;
    use crate::spans::{
        Link, Resource, SpanKind, Status,
        identity::{SpanId, TraceId},
    };

    fn span(name: &str, value: &str, resource: &Resource) -> Span {
        let mut attributes = Attributes::new();
        attributes.insert(Cow::Borrowed("messaging.system"), "rocketmq".into());
        attributes.insert(Cow::Owned(format!("x.{name}")), value.into());
        attributes.insert(Cow::Borrowed("n"), Value::Int(-42));
        attributes.insert(Cow::Borrowed("b"), Value::Bool(true));
        attributes.insert(
            Cow::Borrowed("keys"),
            Value::Strings(vec![value.to_string(), "k".into()]),
        );
        Span {
            trace_id: TraceId([0xab; 16]),
            span_id: SpanId([1, 2, 3, 4, 5, 6, 7, 8]),
            parent_span_id: (!name.is_empty()).then_some(SpanId([9; 8])),
            name: name.to_string(),
            kind: SpanKind::Producer,
            start_unix_nano: 1_796_185_604_273_606_000,
            end_unix_nano: u64::MAX,
            status: Status::Error,
            status_message: (!value.is_empty()).then(|| value.to_string()),
            attributes,
            resource: Resource::clone(resource),
            links: vec![
                Link {
                    trace_id: TraceId([7; 16]),
                    span_id: SpanId([8; 8]),
                };
                name.len() % 3
            ],
        }
    }

    fn resource(service: &str) -> Resource {
        let mut r = Attributes::new();
        r.insert(Cow::Borrowed("service.name"), service.into());
        r.insert(Cow::Borrowed("process.pid"), Value::Int(1234));
        Arc::new(r)
    }

    /// Every kind and status, plain and escaped strings, two resources taking turns (the
    /// cache must not give one's JSON to the other).
    #[test]
    fn writes_what_serde_json_writes() {
        let (a, b) = (resource("producer"), resource("consumer \"b\"\n"));
        let kinds = [
            SpanKind::Producer,
            SpanKind::Consumer,
            SpanKind::Client,
            SpanKind::Server,
            SpanKind::Internal,
        ];
        let statuses = [Status::Ok, Status::Error, Status::Unset];
        let mut writer = SpanJson::default();
        for (i, (name, value)) in [
            ("send T", "plain"),
            ("", ""),
            ("receive \u{1}ctl", "tab\there \\ and \"quotes\""),
            ("名前", "ünïcødé \u{7f}"),
        ]
        .into_iter()
        .enumerate()
        {
            for resource in [&a, &b, &a] {
                let mut s = span(name, value, resource);
                s.kind = kinds[i % kinds.len()];
                s.status = statuses[i % statuses.len()];
                let mut out = Vec::new();
                writer.write(&mut out, &s);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    serde_json::to_string(&s).unwrap()
                );
            }
        }
    }

    proptest! {
        #[test]
        fn any_strings_are_written_as_serde_json_writes_them(name in ".*", value in ".*") {
            let mut out = Vec::new();
            let s = span(&name, &value, &resource(&value));
            SpanJson::default().write(&mut out, &s);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
        }
    }
}
