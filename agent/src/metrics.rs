//! Self-metrics over HTTP: `GET /metrics` (Prometheus text: every counter the agent keeps,
//! named `mqtrace_<stage>_<counter>`) and `GET /healthz` for liveness and readiness probes.
//! Loopback by default: the counters say which processes are traced.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::listeners::{Admission, REQUEST_TIMEOUT};

/// The latest rendering of the counters, shared with the server.
#[derive(Clone, Default)]
pub struct Snapshot(Arc<Mutex<String>>);

impl Snapshot {
    /// Replaces the counters with `counters`, a JSON object of (nested) numbers.
    pub fn update(&self, counters: &serde_json::Value) {
        let mut text = String::new();
        render("mqtrace", counters, &mut text);
        *self.0.lock().unwrap() = text;
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// Values that go up and down (the rest only grow).
const GAUGES: &[&str] = &[
    "_uptime_seconds",
    "_processes_selected",
    "_processes_excluded",
    "_connections_tracked",
    "_journal_messages",
    "_requests_waiting",
    "_serving_processes",
    "_memory_pending_bytes",
    "_memory_received_bytes",
    "_memory_sent_bytes",
    "_journal_bytes",
    "_queued_bytes",
];

/// Flattens nested objects into `prefix_key_subkey value` lines.
fn render(prefix: &str, value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                let name: String = key
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                render(&format!("{prefix}_{name}"), value, out);
            }
        }
        serde_json::Value::Number(n) => {
            let kind = if GAUGES.iter().any(|g| prefix.ends_with(g)) {
                "gauge"
            } else {
                "counter"
            };
            out.push_str(&format!("# TYPE {prefix} {kind}\n{prefix} {n}\n"));
        }
        _ => {}
    }
}

/// Serves until the runtime ends; fails at once when the address cannot be bound.
pub async fn serve(address: SocketAddr, snapshot: Snapshot) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics endpoint to {address}"))?;
    let mut admission = Admission::new("metrics");
    tokio::spawn(async move {
        loop {
            let (mut stream, slot) = admission
                .next(|| async { listener.accept().await.map(|(stream, _)| stream) })
                .await;
            let snapshot = snapshot.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let mut request = [0u8; 1024];
                let Ok(Ok(n)) =
                    tokio::time::timeout(REQUEST_TIMEOUT, stream.read(&mut request)).await
                else {
                    return;
                };
                let request = String::from_utf8_lossy(&request[..n]);
                let (status, body) = if request.starts_with("GET /metrics ") {
                    ("200 OK", snapshot.text())
                } else if request.starts_with("GET /healthz ") {
                    ("200 OK", "ok\n".to_string())
                } else {
                    ("404 Not Found", "try /metrics or /healthz\n".to_string())
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_counters_become_prometheus_lines() {
        let snapshot = Snapshot::default();
        snapshot.update(&serde_json::json!({"kernel": {"records_lost_ring_full": 0}, "pipeline": {"correlation": {"sends": 7}}, "otlp": null}));
        let text = snapshot.text();
        assert!(
            text.contains("mqtrace_kernel_records_lost_ring_full 0\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE mqtrace_pipeline_correlation_sends counter\nmqtrace_pipeline_correlation_sends 7\n"), "{text}");
    }
}
