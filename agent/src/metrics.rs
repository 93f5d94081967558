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

use crate::{
    counters::{Kind, declared, metric_name},
    listeners::{Admission, REQUEST_TIMEOUT},
};

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
    render("", counters, &mut out);
    out
}

/// Flattens nested objects into metrics named by their path (`/a/b` → `mqtrace_a_b`), typed
/// and explained by their declaration.
fn render(path: &str, value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                render(&format!("{path}/{key}"), value, out);
            }
        }
        serde_json::Value::Array(series) => render_series(path, series, out),
        serde_json::Value::Number(n) => {
            let (name, kind) = match declared(path).map(|d| d.kind) {
                Some(Kind::Gauge) => (metric_name(path), "gauge"),
                _ => (format!("{}_total", metric_name(path)), "counter"),
            };
            out.push_str(&format!(
                "# HELP {name} {}\n# TYPE {name} {kind}\n{name} {n}\n",
                help(path)
            ));
        }
        _ => {}
    }
}

/// A list of objects: gauges named by the path and each numeric field, labelled by the
/// string fields (`mqtrace_pipeline_consumer_lag_messages{group="g",topic="T",queue="1"}`).
fn render_series(path: &str, series: &[serde_json::Value], out: &mut String) {
    let mut by_field: BTreeMap<String, Vec<String>> = BTreeMap::new();
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
                by_field
                    .entry(format!("{path}/{field}"))
                    .or_default()
                    .push(format!("{{{}}} {n}", labels.join(",")));
            }
        }
    }
    for (field_path, lines) in by_field {
        let name = metric_name(&field_path);
        out.push_str(&format!(
            "# HELP {name} {}\n# TYPE {name} gauge\n",
            help(&field_path)
        ));
        for line in lines {
            out.push_str(&format!("{name}{line}\n"));
        }
    }
}

/// The declared help; a counter added to the tree but not to `counters::COUNTERS` (which a
/// test forbids) still gets a line naming its place.
fn help(path: &str) -> String {
    declared(path).map_or_else(|| format!("The counter at {path}."), |d| d.help.to_string())
}

/// A label value as the exposition format escapes it.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics server's thread; dropping it stops the server.
pub struct MetricsServer {
    /// Where it listens: the port the system chose when asked for port 0.
    pub address: SocketAddr,
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
    let address = listener.local_addr()?;
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
        address,
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
        assert!(text.contains("# HELP mqtrace_pipeline_correlation_sends_total Messages seen sent by producers.\n# TYPE mqtrace_pipeline_correlation_sends_total counter\nmqtrace_pipeline_correlation_sends_total 7\n"), "{text}");
        assert!(text.contains("# TYPE mqtrace_pipeline_requests_waiting gauge\nmqtrace_pipeline_requests_waiting 2\n"), "{text}");
        assert!(!text.contains("otlp"), "{text}");
    }

    #[test]
    fn every_declared_counter_is_served_with_its_help_and_type() {
        let text = render_all(&crate::counters::every_part());
        for counter in crate::counters::COUNTERS {
            let (name, kind) = match counter.kind {
                Kind::Gauge => (counter.metric_name(), "gauge"),
                Kind::Counter => (format!("{}_total", counter.metric_name()), "counter"),
            };
            assert!(
                text.contains(&format!(
                    "# HELP {name} {}\n# TYPE {name} {kind}\n{name}",
                    counter.help
                )),
                "{} is not served as {name}, {kind}, with its help:\n{text}",
                counter.path
            );
        }
        let served = text.lines().filter(|l| !l.starts_with('#')).count();
        // Every counter once, and the build info.
        assert_eq!(served, crate::counters::COUNTERS.len() + 1, "{text}");
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
