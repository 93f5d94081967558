//! OTLP export over both transports into real receivers built on the official OTLP protobuf
//! definitions, and the behaviour with a dead collector: drops counted, memory bounded.

use std::time::Duration;

use mqtrace::{
    decoder::DecoderConfig,
    exporters::otlp::{Endpoint, OtlpConfig, OtlpCounters, OtlpExporter, Protocol},
    pipeline::{Output, replay_capture},
    spans::Span,
};
use mqtrace_tests::otlp::Receiver;

/// Real spans: those of the golden roundtrip capture of the Rust client.
fn spans() -> Vec<Span> {
    let capture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/captures/rust-client/roundtrip.pcap"
    );
    let mut spans = Vec::new();
    replay_capture(capture.as_ref(), DecoderConfig::default(), false, |o| {
        if let Output::Span(span) = o {
            spans.push(*span);
        }
    })
    .unwrap();
    assert!(spans.len() >= 30);
    spans
}

fn config(protocol: Protocol, endpoint: String) -> OtlpConfig {
    OtlpConfig {
        batch_interval: Duration::from_millis(100),
        ..OtlpConfig::new(protocol, Endpoint::base(endpoint))
    }
}

/// Sends every span, shuts the exporter down, and checks that it exported them all.
async fn export_all(exporter: OtlpExporter, spans: &[Span], protocol: Protocol) -> OtlpCounters {
    for span in spans {
        exporter.send(span.clone());
    }
    let counters = exporter.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        counters.exported,
        spans.len() as u64,
        "{protocol:?}: {counters:?}"
    );
    counters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_transports_deliver_every_span_with_its_ids() {
    let spans = spans();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let receiver = match protocol {
            Protocol::Grpc => Receiver::start().await,
            Protocol::HttpProtobuf => Receiver::start_http().await,
        }
        .unwrap();
        let exporter =
            OtlpExporter::start(config(protocol, format!("http://{}", receiver.addr))).unwrap();
        let counters = export_all(exporter, &spans, protocol).await;
        assert_eq!(
            counters.dropped_queue_full + counters.dropped_export_failed,
            0,
            "{protocol:?}"
        );
        let received = receiver.spans();
        assert_eq!(received.len(), spans.len(), "{protocol:?}");
        for span in &spans {
            let got = received
                .iter()
                .find(|r| r.span_id == span.span_id.hex())
                .unwrap_or_else(|| panic!("{protocol:?}: {} missing", span.name));
            assert_eq!(got.trace_id, span.trace_id.hex());
            assert_eq!(
                got.parent_span_id,
                span.parent_span_id.map(|p| p.hex()).unwrap_or_default()
            );
            assert_eq!(got.name, span.name);
            assert_eq!(got.resource["service.name"], "mqtrace-replay");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_counted_drops_not_memory() {
    let spans = spans();
    // Nothing listens on port 1: every export fails.
    let exporter = OtlpExporter::start(OtlpConfig {
        queue_size: 100,
        attempts: 2,
        timeout: Duration::from_millis(200),
        ..config(Protocol::Grpc, "http://127.0.0.1:1".into())
    })
    .unwrap();
    let total = 5_000u64;
    for i in 0..total {
        exporter.send(spans[i as usize % spans.len()].clone());
    }
    let during = exporter.counters();
    assert!(
        during.dropped_queue_full >= total - 100 - 512,
        "the bounded queue refused the excess: {during:?}"
    );
    let after = exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(after.exported, 0);
    assert_eq!(
        after.dropped_queue_full + after.dropped_export_failed,
        total,
        "every span is exported or counted as dropped: {after:?}"
    );
    assert!(after.export_errors > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_transports_deliver_over_tls_to_a_collector_with_its_own_ca() {
    let spans = spans();
    let pki = mqtrace_tests::otlp::TestPki::new().unwrap();
    let ca_file = mqtrace_tests::process::ScratchFile::new("mqtrace-otlp-ca.pem");
    std::fs::write(&ca_file.0, &pki.ca_pem).unwrap();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let receiver = match protocol {
            Protocol::Grpc => Receiver::start_tls(&pki).await,
            Protocol::HttpProtobuf => Receiver::start_https(&pki, "/v1/traces").await,
        }
        .unwrap();
        let endpoint = format!("https://127.0.0.1:{}", receiver.addr.port());
        // Without the CA the collector is not trusted: nothing goes, everything is counted.
        let untrusted = OtlpExporter::start(OtlpConfig {
            attempts: 1,
            ..config(protocol, endpoint.clone())
        })
        .unwrap();
        untrusted.send(spans[0].clone());
        let counters = untrusted.shutdown(Duration::from_secs(10)).await;
        assert_eq!(
            (counters.exported, counters.dropped_export_failed),
            (0, 1),
            "{protocol:?}"
        );
        assert!(receiver.spans().is_empty(), "{protocol:?}");
        // With it, every span arrives.
        let exporter = OtlpExporter::start(OtlpConfig {
            certificate: Some(ca_file.0.clone()),
            ..config(protocol, endpoint)
        })
        .unwrap();
        export_all(exporter, &spans, protocol).await;
        assert_eq!(receiver.spans().len(), spans.len(), "{protocol:?}");
    }
}
