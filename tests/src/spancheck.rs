//! The check every span file a test writes goes through: no span id twice in a trace (a
//! backend rejects or merges such spans), and, where every process of the run was traced,
//! every span's parent present in its trace.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use serde_json::Value;

/// The spans of an `--output` file (JSON lines), checked for duplicate span ids.
pub fn read_span_file(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading the span file {}: {e}", path.display()));
    let spans: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a span as one JSON line"))
        .collect();
    assert_no_duplicate_span_ids(&spans);
    spans
}

fn text<'a>(span: &'a Value, key: &str) -> &'a str {
    span[key].as_str().unwrap_or("")
}

fn describe(span: &Value) -> String {
    format!(
        "{} {} (pid {}, message {})",
        text(span, "name"),
        text(span, "span_id"),
        span["resource"]["process.pid"],
        span["attributes"]["messaging.message.id"]
    )
}

/// Fails naming every span id that appears twice within one trace.
pub fn assert_no_duplicate_span_ids(spans: &[Value]) {
    let mut seen: BTreeMap<(&str, &str), &Value> = BTreeMap::new();
    let mut twice = Vec::new();
    for span in spans {
        let id = (text(span, "trace_id"), text(span, "span_id"));
        if let Some(first) = seen.insert(id, span) {
            twice.push(format!("{}  and  {}", describe(first), describe(span)));
        }
    }
    assert!(
        twice.is_empty(),
        "{} span ids appear twice in their trace:\n{}",
        twice.len(),
        twice.join("\n")
    );
}

/// Fails naming every span whose parent is not in its trace.
pub fn assert_parents_present(spans: &[Value]) {
    let present: BTreeSet<(&str, &str)> = spans
        .iter()
        .map(|s| (text(s, "trace_id"), text(s, "span_id")))
        .collect();
    let orphans: Vec<String> = spans
        .iter()
        .filter(|s| {
            s["parent_span_id"]
                .as_str()
                .is_some_and(|parent| !present.contains(&(text(s, "trace_id"), parent)))
        })
        .map(describe)
        .collect();
    assert!(
        orphans.is_empty(),
        "{} spans have no parent in their trace:\n{}",
        orphans.len(),
        orphans.join("\n")
    );
}

/// Both checks: for runs in which every process that sends or consumes was traced.
pub fn assert_complete_traces(spans: &[Value]) {
    assert_no_duplicate_span_ids(spans);
    assert_parents_present(spans);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn span(trace: &str, id: &str, parent: Option<&str>) -> Value {
        json!({"trace_id": trace, "span_id": id, "parent_span_id": parent, "name": "s",
               "resource": {}, "attributes": {}})
    }

    #[test]
    #[should_panic(expected = "appear twice")]
    fn a_span_id_twice_in_a_trace_fails() {
        assert_no_duplicate_span_ids(&[span("t", "a", None), span("t", "a", None)]);
    }

    #[test]
    #[should_panic(expected = "no parent")]
    fn a_parent_in_another_trace_fails() {
        assert_parents_present(&[span("t", "a", None), span("u", "b", Some("a"))]);
    }

    #[test]
    fn one_trace_of_send_and_children_passes() {
        assert_complete_traces(&[
            span("t", "a", None),
            span("t", "b", Some("a")),
            span("u", "a", None),
        ]);
    }
}
