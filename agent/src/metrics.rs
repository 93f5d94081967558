//! Self-metrics over HTTP: `GET /metrics` (Prometheus text: every counter the agent keeps,
//! named `mqtrace_<stage>_<counter>`) and `GET /healthz` for liveness and readiness probes.
//! Loopback by default: the counters say which processes are traced. Served from a thread of
//! its own, so that a busy or stuck pipeline is reported, not hidden by a probe that hangs.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
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
        *self.0.lock().unwrap() = render_all(counters);
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// Whether the pipeline advances: the daemon's loop beats at every pass (at least once a
/// second, from its timer); `/healthz` fails once no beat came for `stall_after`.
pub struct Health {
    started: Instant,
    /// Milliseconds after `started` of the last beat.
    last_beat_ms: AtomicU64,
    stall_after: Duration,
}

impl Health {
    pub fn new(stall_after: Duration) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            stall_after,
        })
    }

    pub fn beat(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_beat_ms.store(now, Ordering::Relaxed);
    }

    /// Ok, or why not.
    pub fn check(&self) -> Result<(), String> {
        let now = self.started.elapsed().as_millis() as u64;
        let silent =
            Duration::from_millis(now.saturating_sub(self.last_beat_ms.load(Ordering::Relaxed)));
        if silent > self.stall_after {
            Err(format!(
                "stalled: the pipeline has not advanced for {} s (limit {} s)",
                silent.as_secs(),
                self.stall_after.as_secs()
            ))
        } else {
            Ok(())
        }
    }
}

/// Values that go up and down (the rest only grow, and are exposed with `_total`).
const GAUGES: &[&str] = &[
    "_uptime_seconds",
    "_processes_selected",
    "_processes_excluded",
    "_connections_tracked",
    "_journal_messages",
    "_requests_waiting",
    "_serving_processes",
    "_memory_stream_bytes",
    "_memory_pending_bytes",
    "_memory_received_bytes",
    "_memory_sent_bytes",
    "_journal_bytes",
    "_queued_bytes",
];

/// Help for the metrics that say something was lost, and what to do; the others get their
/// place in the counter tree, which `mqtrace status` and the README explain.
const HELP: &[(&str, &str)] = &[
    (
        "mqtrace_kernel_records_lost_ring_full",
        "Records the kernel dropped because the ring buffer was full (raise ring_buffer_bytes).",
    ),
    (
        "mqtrace_kernel_bytes_not_copied_cap",
        "Payload bytes beyond max_bytes_per_syscall, reported as gaps.",
    ),
    (
        "mqtrace_kernel_socket_table_full",
        "Connections not tracked because the kernel's socket table was full.",
    ),
    (
        "mqtrace_kernel_syscall_table_full",
        "Syscalls not copied because the kernel's table of syscalls in flight was full.",
    ),
    (
        "mqtrace_pipeline_streams_gaps",
        "Stretches of a stream the agent did not see.",
    ),
    (
        "mqtrace_export_otlp_dropped_queue_full",
        "Spans dropped because the OTLP queue was full (collector slow or down).",
    ),
    (
        "mqtrace_export_otlp_dropped_export_failed",
        "Spans the collector did not accept after retries.",
    ),
    (
        "mqtrace_export_write_errors",
        "Spans that could not be written to the output file.",
    ),
    (
        "mqtrace_agent_uptime_seconds",
        "Seconds since the agent started.",
    ),
];

/// Renders the counter tree as Prometheus text: `# HELP`, `# TYPE`, counters with `_total`,
/// and `mqtrace_build_info`.
fn render_all(counters: &serde_json::Value) -> String {
    let mut out = String::new();
    out.push_str(concat!(
        "# HELP mqtrace_build_info The running mqtrace's version, as a label; always 1.\n",
        "# TYPE mqtrace_build_info gauge\n",
        "mqtrace_build_info{version=\"",
        env!("CARGO_PKG_VERSION"),
        "\"} 1\n"
    ));
    render("mqtrace", counters, &mut out);
    out
}

/// Flattens nested objects into metrics named by their path, `prefix_key_subkey`.
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
        serde_json::Value::Array(series) => render_series(prefix, series, out),
        serde_json::Value::Number(n) => {
            let gauge = GAUGES.iter().any(|g| prefix.ends_with(g));
            let help = HELP
                .iter()
                .find(|(name, _)| *name == prefix)
                .map_or_else(|| described(prefix), |(_, help)| (*help).to_string());
            let (name, kind) = if gauge {
                (prefix.to_string(), "gauge")
            } else {
                (format!("{prefix}_total"), "counter")
            };
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {n}\n"
            ));
        }
        _ => {}
    }
}

/// A list of objects: gauges named by the prefix and each numeric field, labelled by the
/// string fields (`mqtrace_pipeline_consumer_lag_messages{group="g",topic="T",queue="1"}`).
fn render_series(prefix: &str, series: &[serde_json::Value], out: &mut String) {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in series {
        let Some(fields) = item.as_object() else {
            continue;
        };
        let labels: Vec<String> = fields
            .iter()
            .filter_map(|(k, v)| Some(format!("{k}=\"{}\"", label_value(v.as_str()?))))
            .collect();
        for (field, value) in fields {
            if let Some(n) = value.as_number() {
                by_name
                    .entry(format!("{prefix}_{field}"))
                    .or_default()
                    .push(format!("{{{}}} {n}", labels.join(",")));
            }
        }
    }
    for (name, lines) in by_name {
        out.push_str(&format!(
            "# HELP {name} {}\n# TYPE {name} gauge\n",
            described(&name)
        ));
        for line in lines {
            out.push_str(&format!("{name}{line}\n"));
        }
    }
}

/// A label value as the exposition format escapes it.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `mqtrace_pipeline_correlation_sends` → `pipeline correlation: sends (mqtrace status).`
fn described(name: &str) -> String {
    let path = name.trim_start_matches("mqtrace_");
    let (stage, rest) = path.split_once('_').unwrap_or((path, ""));
    format!(
        "{stage}: {} (the {stage} counters of `mqtrace status`).",
        rest.replace('_', " ")
    )
}

/// The metrics server's thread; dropping it stops the server.
pub struct MetricsServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves on a thread of its own until dropped; fails at once when the address cannot be
/// bound.
pub fn serve(
    address: SocketAddr,
    snapshot: Snapshot,
    health: Arc<Health>,
) -> anyhow::Result<MetricsServer> {
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("binding the metrics endpoint to {address}"))?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("mqtrace-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                tokio::select! {
                    () = accept_loop(listener, snapshot, health) => {}
                    _ = stopped => {}
                }
            });
        })?;
    Ok(MetricsServer {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// The request line (`GET /metrics HTTP/1.1`), however the client cut its bytes; None when
/// the connection ends first or the line does not fit 1 KiB.
async fn read_request_line(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut request = [0u8; 1024];
    let mut len = 0;
    while len < request.len() {
        let n = stream.read(&mut request[len..]).await.ok()?;
        if n == 0 {
            return None;
        }
        len += n;
        if let Some(end) = request[..len].windows(2).position(|w| w == b"\r\n") {
            return Some(String::from_utf8_lossy(&request[..end]).into_owned());
        }
    }
    None
}

async fn accept_loop(listener: tokio::net::TcpListener, snapshot: Snapshot, health: Arc<Health>) {
    let mut admission = Admission::new("metrics");
    loop {
        let (mut stream, slot) = admission
            .next(|| async { listener.accept().await.map(|(stream, _)| stream) })
            .await;
        let snapshot = snapshot.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Some(request)) =
                tokio::time::timeout(REQUEST_TIMEOUT, read_request_line(&mut stream)).await
            else {
                return;
            };
            let mut words = request.split(' ');
            let (status, body) = match (words.next(), words.next()) {
                (Some("GET"), Some("/metrics")) => ("200 OK", snapshot.text()),
                (Some("GET"), Some("/healthz")) => match health.check() {
                    Ok(()) => ("200 OK", "ok\n".to_string()),
                    Err(why) => ("503 Service Unavailable", format!("{why}\n")),
                },
                _ => ("404 Not Found", "try /metrics or /healthz\n".to_string()),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_counters_become_prometheus_lines() {
        let snapshot = Snapshot::default();
        snapshot.update(&serde_json::json!({"kernel": {"records_lost_ring_full": 0}, "pipeline": {"correlation": {"sends": 7}, "requests_waiting": 2}, "otlp": null}));
        let text = snapshot.text();
        assert!(text.starts_with("# HELP mqtrace_build_info "), "{text}");
        assert!(
            text.contains(&format!(
                "mqtrace_build_info{{version=\"{}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mqtrace_kernel_records_lost_ring_full_total counter\nmqtrace_kernel_records_lost_ring_full_total 0\n"),
            "{text}"
        );
        assert!(text.contains("# HELP mqtrace_pipeline_correlation_sends_total pipeline: correlation sends (the pipeline counters of `mqtrace status`).\n# TYPE mqtrace_pipeline_correlation_sends_total counter\nmqtrace_pipeline_correlation_sends_total 7\n"), "{text}");
        assert!(text.contains("# TYPE mqtrace_pipeline_requests_waiting gauge\nmqtrace_pipeline_requests_waiting 2\n"), "{text}");
        assert!(!text.contains("otlp"), "{text}");
    }

    #[test]
    fn every_help_line_names_a_served_metric() {
        // The counter tree as the daemon builds it, from the counters' own types, with every
        // optional part present: a help entry naming no metric is never shown.
        let kernel: BTreeMap<&str, u64> = mqtrace_common::Counter::ALL
            .iter()
            .map(|c| (c.name(), 0))
            .collect();
        let tree = serde_json::json!({
            "agent": {"uptime_seconds": 0},
            "kernel": kernel,
            "pipeline": crate::pipeline::PipelineCounters::default(),
            "export": crate::exporters::ExportCounters {
                otlp: Some(Default::default()),
                ..Default::default()
            },
        });
        let text = render_all(&tree);
        let served: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split([' ', '{']).next())
            .map(|name| name.strip_suffix("_total").unwrap_or(name))
            .collect();
        for (name, _) in HELP {
            assert!(
                served.contains(name),
                "help for {name}, which is not served"
            );
        }
    }

    #[test]
    fn lists_become_labelled_gauges_with_escaped_values() {
        let snapshot = Snapshot::default();
        snapshot.update(&serde_json::json!({"pipeline": {"consumer_lag": [
            {"group": "g", "topic": "T", "queue": "1", "messages": 6},
            {"group": "a\"b\\c\nd", "topic": "T", "queue": "0", "messages": 0},
        ]}}));
        let text = snapshot.text();
        assert!(
            text.contains(concat!(
                "# TYPE mqtrace_pipeline_consumer_lag_messages gauge\n",
                "mqtrace_pipeline_consumer_lag_messages{group=\"g\",queue=\"1\",topic=\"T\"} 6\n",
                "mqtrace_pipeline_consumer_lag_messages{group=\"a\\\"b\\\\c\\nd\",queue=\"0\",topic=\"T\"} 0\n"
            )),
            "{text}"
        );
    }
}
