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
use crate::spans::{Attributes, Resource as SpanResource, Span, SpanKind, Status, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Protocol {
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }

    fn parse(name: &str, source: &str) -> anyhow::Result<Self> {
        match name {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => anyhow::bail!("{source} = {other:?}: expected \"grpc\" or \"http/protobuf\""),
        }
    }
}

/// Where spans go. A traces URL (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is used as given; a
/// base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`, `--otlp-endpoint`, `otlp_endpoint`) gets
/// `/v1/traces` appended over HTTP, as the OTLP specification says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub traces_url: bool,
}

impl Endpoint {
    pub fn base(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            traces_url: false,
        }
    }

    /// The URL to send to with `protocol`.
    pub fn url_for(&self, protocol: Protocol) -> String {
        match protocol {
            Protocol::HttpProtobuf if !self.traces_url => {
                format!("{}/v1/traces", self.url.trim_end_matches('/'))
            }
            _ => self.url.clone(),
        }
    }
}

/// One layer of OTLP settings: the flags, or the config file.
#[derive(Clone, Debug, Default)]
pub struct OtlpLayer {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub certificate: Option<std::path::PathBuf>,
}

/// The OTLP settings in force.
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpSettings {
    pub endpoint: Option<Endpoint>,
    pub protocol: Protocol,
    pub certificate: Option<std::path::PathBuf>,
}

/// Resolves every OTLP setting by one rule: flags, then the environment (`OTEL_EXPORTER_OTLP_
/// TRACES_*` before `OTEL_EXPORTER_OTLP_*`), then the config file, then the default. `env`
/// reads a variable (the process environment, or a test's).
pub fn resolve(
    flags: &OtlpLayer,
    env: impl Fn(&str) -> Option<String>,
    file: &OtlpLayer,
) -> anyhow::Result<OtlpSettings> {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let from_env = |key: &str| {
        let traces = format!("OTEL_EXPORTER_OTLP_TRACES_{key}");
        let general = format!("OTEL_EXPORTER_OTLP_{key}");
        env(&traces)
            .map(|v| (v, traces))
            .or_else(|| env(&general).map(|v| (v, general)))
    };
    let endpoint = match (&flags.endpoint, from_env("ENDPOINT"), &file.endpoint) {
        (Some(url), _, _) => Some(Endpoint::base(url.clone())),
        (None, Some((url, name)), _) => Some(Endpoint {
            url,
            traces_url: name.contains("_TRACES_"),
        }),
        (None, None, Some(url)) => Some(Endpoint::base(url.clone())),
        (None, None, None) => None,
    };
    let protocol = match (&flags.protocol, from_env("PROTOCOL"), &file.protocol) {
        (Some(name), _, _) => Protocol::parse(name, "--otlp-protocol")?,
        (None, Some((name, var)), _) => Protocol::parse(&name, &var)?,
        (None, None, Some(name)) => Protocol::parse(name, "otlp_protocol")?,
        (None, None, None) => Protocol::Grpc,
    };
    let certificate = flags
        .certificate
        .clone()
        .or_else(|| from_env("CERTIFICATE").map(|(path, _)| path.into()))
        .or_else(|| file.certificate.clone());
    Ok(OtlpSettings {
        endpoint,
        protocol,
        certificate,
    })
}

#[derive(Clone, Debug)]
pub struct OtlpConfig {
    pub protocol: Protocol,
    pub endpoint: Endpoint,
    /// A PEM file of CA certificates to trust besides the system's (a self-signed collector).
    pub certificate: Option<std::path::PathBuf>,
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

impl OtlpConfig {
    /// The defaults, sending to `endpoint` with `protocol`.
    pub fn new(protocol: Protocol, endpoint: Endpoint) -> Self {
        Self {
            protocol,
            endpoint,
            certificate: None,
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
        // rustls with ring, for every TLS connection of the process (already set: fine).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = match &config.certificate {
            Some(path) => Some(Arc::<[u8]>::from(std::fs::read(path).with_context(
                || format!("reading the OTLP CA certificate {}", path.display()),
            )?)),
            None => None,
        };
        // Build one exporter now, so that a bad endpoint is an error at start, not a silence.
        build(&config, ca.as_deref(), &Resource::builder_empty().build())
            .context("configuring the OTLP exporter")?;
        let (tx, rx) = mpsc::channel(config.queue_size);
        let counters = Arc::new(Counters::default());
        let queue_bytes = config.queue_bytes as u64;
        let task = tokio::spawn(run(config, ca, rx, counters.clone()));
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

/// Builds an exporter for one resource. `ca`: PEM certificates to trust besides the
/// system's roots. Headers come from `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`, which the
/// builder reads.
fn build(
    config: &OtlpConfig,
    ca: Option<&[u8]>,
    resource: &Resource,
) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    use opentelemetry_otlp::{WithHttpConfig, WithTonicConfig};
    let url = config.endpoint.url_for(config.protocol);
    let mut exporter = match config.protocol {
        Protocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(config.timeout)
                .with_endpoint(url.clone());
            if url.starts_with("https:") {
                use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
                let mut tls = ClientTlsConfig::new().with_native_roots();
                if let Some(pem) = ca {
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                builder = builder.with_tls_config(tls);
            }
            builder.build()?
        }
        Protocol::HttpProtobuf => {
            let mut client = reqwest::Client::builder().timeout(config.timeout);
            if let Some(pem) = ca {
                for certificate in reqwest::Certificate::from_pem_bundle(pem)
                    .context("reading the OTLP CA certificate (PEM)")?
                {
                    client = client.add_root_certificate(certificate);
                }
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(config.timeout)
                .with_endpoint(url)
                .with_http_client(client.build().context("building the OTLP HTTP client")?)
                .build()?
        }
    };
    exporter.set_resource(resource);
    Ok(exporter)
}

/// Exporters kept at most, one per distinct resource.
const MAX_EXPORTERS: usize = 64;

async fn run(
    config: OtlpConfig,
    ca: Option<Arc<[u8]>>,
    mut rx: mpsc::Receiver<(Span, u64)>,
    counters: Arc<Counters>,
) {
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
        // By the process's shared resource first (a pointer compare), then by its content:
        // the exporters are kept by content, which a process that came back shares.
        let mut by_process: HashMap<usize, (SpanResource, Vec<SpanData>)> = HashMap::new();
        for span in batch.drain(..) {
            by_process
                .entry(SpanResource::as_ptr(&span.resource).addr())
                .or_insert_with(|| (SpanResource::clone(&span.resource), Vec::new()))
                .1
                .push(span_data(&span));
        }
        let mut groups: HashMap<String, (SpanResource, Vec<SpanData>)> = HashMap::new();
        for (resource, spans) in by_process.into_values() {
            let key = serde_json::to_string(&*resource).unwrap_or_default();
            groups
                .entry(key)
                .or_insert_with(|| (resource, Vec::new()))
                .1
                .extend(spans);
        }
        for (key, (resource, spans)) in groups {
            if !exporters.contains_key(&key) {
                if exporters.len() >= MAX_EXPORTERS {
                    exporters.clear();
                }
                match build(&config, ca.as_deref(), &to_resource(&resource)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(endpoint: &str, protocol: &str, certificate: &str) -> OtlpLayer {
        let some = |v: &str| (!v.is_empty()).then(|| v.to_string());
        OtlpLayer {
            endpoint: some(endpoint),
            protocol: some(protocol),
            certificate: some(certificate).map(Into::into),
        }
    }

    fn settings(flags: OtlpLayer, env: &[(&str, &str)], file: OtlpLayer) -> OtlpSettings {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve(&flags, |name| env.get(name).cloned(), &file).unwrap()
    }

    #[test]
    fn every_setting_goes_flags_then_environment_then_file_then_default() {
        let env_all = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/env/ca.pem"),
        ];
        let flags = layer("http://flag:4317", "grpc", "/flag/ca.pem");
        let file = layer("http://file:4317", "http/protobuf", "/file/ca.pem");
        // Flags over all.
        let s = settings(flags, &env_all, file.clone());
        assert_eq!(s.endpoint, Some(Endpoint::base("http://flag:4317")));
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.certificate, Some("/flag/ca.pem".into()));
        // The environment over the file.
        let s = settings(OtlpLayer::default(), &env_all, file.clone());
        assert_eq!(s.endpoint, Some(Endpoint::base("http://env:4317")));
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.certificate, Some("/env/ca.pem".into()));
        let env_grpc = [("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
        assert_eq!(
            settings(OtlpLayer::default(), &env_grpc, file.clone()).protocol,
            Protocol::Grpc,
            "the environment's protocol beats the file's"
        );
        // The file over the default.
        let s = settings(OtlpLayer::default(), &[], file);
        assert_eq!(s.endpoint, Some(Endpoint::base("http://file:4317")));
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.certificate, Some("/file/ca.pem".into()));
        // The default.
        let s = settings(OtlpLayer::default(), &[], OtlpLayer::default());
        assert_eq!(
            (s.endpoint, s.protocol, s.certificate),
            (None, Protocol::Grpc, None)
        );
        // Empty variables are unset ones.
        let s = settings(
            OtlpLayer::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "")],
            OtlpLayer::default(),
        );
        assert_eq!(s.endpoint, None);
    }

    #[test]
    fn the_traces_variables_win_and_their_endpoint_is_used_as_given() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:4318/custom/path",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/general.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/traces.pem"),
        ];
        let s = settings(OtlpLayer::default(), &env, OtlpLayer::default());
        let endpoint = s.endpoint.unwrap();
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.certificate, Some("/traces.pem".into()));
        assert_eq!(
            endpoint.url_for(Protocol::HttpProtobuf),
            "http://traces:4318/custom/path"
        );
        // A base endpoint gets the traces path over HTTP only.
        let base = Endpoint::base("http://general:4318/");
        assert_eq!(
            base.url_for(Protocol::HttpProtobuf),
            "http://general:4318/v1/traces"
        );
        assert_eq!(base.url_for(Protocol::Grpc), "http://general:4318/");
    }

    #[test]
    fn a_bad_protocol_names_where_it_came_from() {
        let error = resolve(
            &OtlpLayer::default(),
            |name| (name == "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").then(|| "http/json".into()),
            &OtlpLayer::default(),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL = \"http/json\": expected \"grpc\" or \"http/protobuf\""
        );
    }
}
