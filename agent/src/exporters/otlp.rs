//! OTLP export with opentelemetry-otlp, over gRPC or HTTP/protobuf, configured by the standard
//! `OTEL_EXPORTER_OTLP_*` variables (the builder reads them) or by flags.
//!
//! Spans wait in a bounded queue (a full queue drops and counts); a task batches them, groups
//! them by resource (each traced process is a resource of its own), exports with retries, and
//! counts what it finally could not deliver. Memory stays bounded whatever the collector does.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{
        SpanContext, SpanId as OtelSpanId, SpanKind as OtelKind, Status as OtelStatus, TraceFlags,
        TraceId as OtelTraceId, TraceState,
    },
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks},
};
use tokio::sync::mpsc;

use crate::memory::HeapSize;
use crate::spans::{Attributes, Span, SpanKind, Status, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Protocol {
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`, else gRPC.
    pub fn from_env() -> Self {
        let value = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"));
        match value.as_deref() {
            Ok("http/protobuf") => Protocol::HttpProtobuf,
            _ => Protocol::Grpc,
        }
    }
}

/// Whether the environment names an OTLP endpoint for traces.
pub fn endpoint_from_env() -> Option<String> {
    std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .ok()
        .filter(|e| !e.is_empty())
}

#[derive(Clone, Debug)]
pub struct OtlpConfig {
    pub protocol: Protocol,
    /// None: the builder reads `OTEL_EXPORTER_OTLP_*`.
    pub endpoint: Option<String>,
    /// Spans waiting for export at most.
    pub queue_size: usize,
    /// Bytes the queued spans may hold at most (their share of the memory budget).
    pub queue_bytes: usize,
    pub batch_size: usize,
    pub batch_interval: Duration,
    /// Attempts per batch before its spans are dropped.
    pub attempts: u32,
    pub timeout: Duration,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            protocol: Protocol::from_env(),
            endpoint: None,
            queue_size: 8192,
            queue_bytes: crate::memory::Shares::default().export,
            batch_size: 512,
            batch_interval: Duration::from_secs(1),
            attempts: 3,
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    /// Bytes of the spans in the queue now.
    queued_bytes: AtomicU64,
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_export_failed: AtomicU64,
    export_errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> OtlpCounters {
        OtlpCounters {
            queued: self.queued.load(Ordering::Relaxed),
            queued_bytes: self.queued_bytes.load(Ordering::Relaxed),
            exported: self.exported.load(Ordering::Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            dropped_export_failed: self.dropped_export_failed.load(Ordering::Relaxed),
            export_errors: self.export_errors.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OtlpCounters {
    pub queued: u64,
    /// Bytes of the spans waiting in the queue (a gauge).
    pub queued_bytes: u64,
    pub exported: u64,
    pub dropped_queue_full: u64,
    pub dropped_export_failed: u64,
    pub export_errors: u64,
}

pub struct OtlpExporter {
    tx: mpsc::Sender<(Span, u64)>,
    queue_bytes: u64,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpExporter {
    /// Starts the export task; must run inside a tokio runtime.
    pub fn start(config: OtlpConfig) -> anyhow::Result<Self> {
        // Build one exporter now, so that a bad endpoint is an error at start, not a silence.
        build(&config, &Resource::builder_empty().build())
            .context("configuring the OTLP exporter")?;
        let (tx, rx) = mpsc::channel(config.queue_size);
        let counters = Arc::new(Counters::default());
        let queue_bytes = config.queue_bytes as u64;
        let task = tokio::spawn(run(config, rx, counters.clone()));
        Ok(Self {
            tx,
            queue_bytes,
            counters,
            task,
        })
    }

    /// Queues a span; drops and counts it when the queue is full, by count or by bytes (the
    /// collector is slow or down).
    pub fn send(&self, span: Span) {
        let bytes = span.heap_bytes() as u64;
        let queued = self.counters.queued_bytes.load(Ordering::Relaxed);
        if queued + bytes > self.queue_bytes {
            self.counters
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.try_send((span, bytes)) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .queued_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn counters(&self) -> OtlpCounters {
        self.counters.snapshot()
    }

    /// Exports what is queued, for at most `deadline`; returns the counters after it.
    pub async fn shutdown(self, deadline: Duration) -> OtlpCounters {
        let Self {
            tx, counters, task, ..
        } = self;
        drop(tx);
        if tokio::time::timeout(deadline, task).await.is_err() {
            // The spans still queued are lost.
            let left = counters.queued.load(Ordering::Relaxed)
                - counters.exported.load(Ordering::Relaxed)
                - counters.dropped_export_failed.load(Ordering::Relaxed);
            counters
                .dropped_export_failed
                .fetch_add(left, Ordering::Relaxed);
        }
        counters.snapshot()
    }
}

fn build(
    config: &OtlpConfig,
    resource: &Resource,
) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    let mut exporter = match config.protocol {
        Protocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(config.timeout);
            if let Some(endpoint) = &config.endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            builder.build()?
        }
        Protocol::HttpProtobuf => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(config.timeout);
            if let Some(endpoint) = &config.endpoint {
                builder =
                    builder.with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
            }
            builder.build()?
        }
    };
    exporter.set_resource(resource);
    Ok(exporter)
}

/// Exporters kept at most, one per distinct resource.
const MAX_EXPORTERS: usize = 64;

async fn run(config: OtlpConfig, mut rx: mpsc::Receiver<(Span, u64)>, counters: Arc<Counters>) {
    let mut exporters: HashMap<String, opentelemetry_otlp::SpanExporter> = HashMap::new();
    let mut batch = Vec::with_capacity(config.batch_size);
    loop {
        let deadline = tokio::time::Instant::now() + config.batch_interval;
        let mut closed = false;
        while batch.len() < config.batch_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((span, bytes))) => {
                    counters.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    batch.push(span);
                }
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let mut groups: HashMap<String, (Attributes, Vec<SpanData>)> = HashMap::new();
        for span in batch.drain(..) {
            let key = serde_json::to_string(&span.resource).unwrap_or_default();
            let group = groups
                .entry(key)
                .or_insert_with(|| (span.resource.clone(), Vec::new()));
            group.1.push(span_data(&span));
        }
        for (key, (resource, spans)) in groups {
            if !exporters.contains_key(&key) {
                if exporters.len() >= MAX_EXPORTERS {
                    exporters.clear();
                }
                match build(&config, &to_resource(&resource)) {
                    Ok(exporter) => {
                        exporters.insert(key.clone(), exporter);
                    }
                    Err(_) => {
                        counters.export_errors.fetch_add(1, Ordering::Relaxed);
                        counters
                            .dropped_export_failed
                            .fetch_add(spans.len() as u64, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            let exporter = &exporters[&key];
            let n = spans.len() as u64;
            let mut delivered = false;
            for attempt in 0..config.attempts {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                }
                if exporter.export(spans.clone()).await.is_ok() {
                    delivered = true;
                    break;
                }
                counters.export_errors.fetch_add(1, Ordering::Relaxed);
            }
            let counter = if delivered {
                &counters.exported
            } else {
                &counters.dropped_export_failed
            };
            counter.fetch_add(n, Ordering::Relaxed);
        }
        if closed {
            break;
        }
    }
    for exporter in exporters.values() {
        let _ = exporter.shutdown();
    }
}

fn key_value(key: &str, value: &Value) -> KeyValue {
    let key = key.to_string();
    match value {
        Value::String(s) => KeyValue::new(key, s.clone()),
        Value::Int(i) => KeyValue::new(key, *i),
        Value::Bool(b) => KeyValue::new(key, *b),
        Value::Strings(list) => KeyValue::new(
            key,
            opentelemetry::Value::Array(opentelemetry::Array::String(
                list.iter().map(|s| s.clone().into()).collect(),
            )),
        ),
    }
}

fn to_resource(attributes: &Attributes) -> Resource {
    Resource::builder_empty()
        .with_attributes(attributes.iter().map(|(k, v)| key_value(k, v)))
        .build()
}

fn time(unix_nano: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(unix_nano)
}

/// Our span as the SDK's export type, ids and times untouched.
fn span_data(span: &Span) -> SpanData {
    let context = |trace: [u8; 16], span: [u8; 8]| {
        SpanContext::new(
            OtelTraceId::from_bytes(trace),
            OtelSpanId::from_bytes(span),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )
    };
    SpanData {
        span_context: SpanContext::new(
            OtelTraceId::from_bytes(span.trace_id.0),
            OtelSpanId::from_bytes(span.span_id.0),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: span
            .parent_span_id
            .map_or(OtelSpanId::INVALID, |p| OtelSpanId::from_bytes(p.0)),
        // The parent was (or will be) recorded by another agent, or by the application.
        parent_span_is_remote: span.parent_span_id.is_some(),
        span_kind: match span.kind {
            SpanKind::Producer => OtelKind::Producer,
            SpanKind::Consumer => OtelKind::Consumer,
            SpanKind::Client => OtelKind::Client,
            SpanKind::Server => OtelKind::Server,
            SpanKind::Internal => OtelKind::Internal,
        },
        name: Cow::Owned(span.name.clone()),
        start_time: time(span.start_unix_nano),
        end_time: time(span.end_unix_nano),
        attributes: span
            .attributes
            .iter()
            .map(|(k, v)| key_value(k, v))
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: {
            let mut links = SpanLinks::default();
            links.links = span
                .links
                .iter()
                .map(|l| {
                    opentelemetry::trace::Link::new(
                        context(l.trace_id.0, l.span_id.0),
                        Vec::new(),
                        0,
                    )
                })
                .collect();
            links
        },
        status: match span.status {
            Status::Ok => OtelStatus::Ok,
            Status::Unset => OtelStatus::Unset,
            Status::Error => OtelStatus::error(span.status_message.clone().unwrap_or_default()),
        },
        instrumentation_scope: InstrumentationScope::builder("mqtrace")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    }
}
