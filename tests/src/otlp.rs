//! Real OTLP trace receivers for the tests, over gRPC (opentelemetry-proto's generated
//! TraceService on tonic) and HTTP/protobuf, in the clear or over TLS with a CA made for the
//! test run. They keep every span and every request's path and headers.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
};
use tokio::sync::oneshot;

/// A span as received, ids in lowercase hex, attribute values as text.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    /// OTLP SpanKind number: 4 PRODUCER, 3 CLIENT, 5 CONSUMER.
    pub kind: i32,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: BTreeMap<String, String>,
    pub resource: BTreeMap<String, String>,
    /// The instrumentation scope's name (`io.opentelemetry.rocketmq-client-4.8`, ...).
    pub scope: String,
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::ArrayValue(a)) => a
            .values
            .iter()
            .map(|v| text(&Some(v.clone())))
            .collect::<Vec<_>>()
            .join(","),
        other => format!("{other:?}"),
    }
}

fn map(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

/// One export request as it arrived: its path (HTTP) and headers (gRPC metadata).
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    pub path: String,
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<Vec<ReceivedRequest>>>,
}

impl Collector {
    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .as_ref()
                .map(|r| map(&r.attributes))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                let scope = scope_spans
                    .scope
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                for span in scope_spans.spans {
                    spans.push(ReceivedSpan {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name.clone(),
                        kind: span.kind,
                        start_unix_nano: span.start_time_unix_nano,
                        end_unix_nano: span.end_time_unix_nano,
                        attributes: map(&span.attributes),
                        resource: resource.clone(),
                        scope: scope.clone(),
                    });
                }
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        self.requests.lock().unwrap().push(ReceivedRequest {
            path: "/opentelemetry.proto.collector.trace.v1.TraceService/Export".into(),
            headers,
        });
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A CA and a server certificate for 127.0.0.1 and localhost, made for one test run.
pub struct TestPki {
    /// The CA certificate (PEM): what the agent is told to trust.
    pub ca_pem: String,
    server_pem: String,
    server_key_pem: String,
}

impl TestPki {
    pub fn new() -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mqtrace test CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let server_key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "mqtrace test collector");
        let server = params.signed_by(&server_key, &ca, &ca_key)?;
        Ok(Self {
            ca_pem: ca.pem(),
            server_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
        })
    }

    fn rustls_config(&self) -> anyhow::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
        use tokio_rustls::rustls::{
            self,
            pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        };
        let certs = CertificateDer::pem_slice_iter(self.server_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        Ok(Arc::new(config))
    }
}

/// The receiver, serving until dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<Vec<ReceivedRequest>>>,
    _stop: oneshot::Sender<()>,
}

impl Receiver {
    /// Listens on 127.0.0.1 on a free port, inside the current tokio runtime.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?).await
    }

    /// Listens on `addr` (a collector coming back where it was).
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        Self::start_grpc(addr, None).await
    }

    /// OTLP/gRPC over TLS with `pki`'s server certificate.
    pub async fn start_tls(pki: &TestPki) -> anyhow::Result<Self> {
        Self::start_grpc("127.0.0.1:0".parse()?, Some(pki)).await
    }

    async fn start_grpc(addr: SocketAddr, tls: Option<&TestPki>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let collector = Collector::default();
        let (spans, requests) = (collector.spans.clone(), collector.requests.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = tokio_stream_from(listener);
        let mut server = tonic::transport::Server::builder();
        if let Some(pki) = tls {
            let identity =
                tonic::transport::Identity::from_pem(&pki.server_pem, &pki.server_key_pem);
            server =
                server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
        }
        tokio::spawn(async move {
            let _ = server
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            spans,
            requests,
            _stop: stop,
        })
    }

    /// An OTLP/HTTP receiver: `POST /v1/traces` (or `path`) with a protobuf
    /// `ExportTraceServiceRequest` body (HTTP/1.1, Content-Length framed, as exporters send it).
    pub async fn start_http() -> anyhow::Result<Self> {
        Self::start_http_with(None, "/v1/traces").await
    }

    /// OTLP/HTTP over TLS with `pki`'s server certificate, taking spans at `path`.
    pub async fn start_https(pki: &TestPki, path: &str) -> anyhow::Result<Self> {
        Self::start_http_with(Some(pki), path).await
    }

    async fn start_http_with(tls: Option<&TestPki>, path: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let collector = Collector::default();
        let (spans, requests) = (collector.spans.clone(), collector.requests.clone());
        let (stop, mut stopped) = oneshot::channel::<()>();
        let acceptor = tls
            .map(|pki| pki.rustls_config().map(tokio_rustls::TlsAcceptor::from))
            .transpose()?;
        let path = path.to_string();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (collector, acceptor, path) =
                            (collector.clone(), acceptor.clone(), path.clone());
                        tokio::spawn(async move {
                            let _ = match acceptor {
                                Some(acceptor) => match acceptor.accept(stream).await {
                                    Ok(tls) => serve_http(tls, collector, &path).await,
                                    Err(e) => Err(e.into()),
                                },
                                None => serve_http(stream, collector, &path).await,
                            };
                        });
                    }
                }
            }
        });
        Ok(Self {
            addr,
            spans,
            requests,
            _stop: stop,
        })
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.requests.lock().unwrap().clone()
    }
}

/// Serves OTLP/HTTP requests on one connection until it closes; spans are taken at `path`.
async fn serve_http(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    collector: Collector,
    path: &str,
) -> anyhow::Result<()> {
    use prost::Message as _;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut stream = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if stream.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        let mut headers = BTreeMap::new();
        loop {
            let mut header = String::new();
            stream.read_line(&mut header).await?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_string());
                if name == "content-length" {
                    length = value.parse()?;
                }
                headers.insert(name, value);
            }
        }
        let requested = request_line.split(' ').nth(1).unwrap_or("").to_string();
        collector.requests.lock().unwrap().push(ReceivedRequest {
            path: requested.clone(),
            headers,
        });
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await?;
        let (status, reply) = if request_line.starts_with("POST ") && requested == path {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(request) => {
                    collector.keep(request);
                    (
                        "200 OK",
                        ExportTraceServiceResponse {
                            partial_success: None,
                        }
                        .encode_to_vec(),
                    )
                }
                Err(_) => ("400 Bad Request", Vec::new()),
            }
        } else {
            ("404 Not Found", Vec::new())
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        );
        stream.get_mut().write_all(head.as_bytes()).await?;
        stream.get_mut().write_all(&reply).await?;
    }
}

fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}
