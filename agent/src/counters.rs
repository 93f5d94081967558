//! Every counter of the agent, declared once: where it sits in the counter tree, whether it
//! only grows or goes up and down, what it means, and, for those that say something was lost or
//! went wrong, what the problem log says when it grows. `mqtrace status`, `/metrics` and the
//! problem log are all made from this table; a test holds it to the tree the daemon builds.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{exporters::ExportCounters, pipeline::PipelineCounters};

/// The counter tree the daemon builds, which `status` reports and `/metrics` serves.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CounterTree {
    pub agent: AgentCounters,
    /// The kernel programs' counters, by name.
    pub kernel: BTreeMap<&'static str, u64>,
    pub pipeline: PipelineCounters,
    pub export: ExportCounters,
}

/// The daemon's own.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentCounters {
    pub uptime_seconds: u64,
    pub processes_selected: usize,
    pub processes_excluded: usize,
    pub connections_tracked: usize,
    pub stale_sockets_swept: u64,
    pub malformed_records: u64,
    pub non_tcp_sockets: u64,
    pub tls: TlsCounterTree,
    pub handover: HandoverCounters,
}

/// An agent started while another ran (an upgrade): which requests each traced.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HandoverCounters {
    /// 1 once this agent took over from a running one.
    pub taken_over: u64,
    /// 1 once this agent handed over to a newer one.
    pub handed_over: u64,
    /// Running agents that refused to hand over (another version): both traced meanwhile.
    pub refused: u64,
    /// Its own requests still unanswered when this agent, handed over, had to stop.
    pub unfinished_at_stop: u64,
    /// Times the agent this one handed over to exited while this one ran: it traced
    /// everything again.
    pub taken_back: u64,
}

/// TLS plaintext capture: the probes on processes' TLS libraries and the binding of their
/// plaintext to connections.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TlsCounterTree {
    /// Probes attached now, over all processes.
    pub probes: usize,
    #[serde(flatten)]
    pub capture: crate::sources::kernel::TlsCaptureCounters,
    #[serde(flatten)]
    pub binding: crate::sources::tls::TlsCounters,
}

/// How a value moves, as Prometheus types it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows: exposed as `<name>_total`.
    Counter,
    /// Goes up and down (a size, a count of things held now).
    Gauge,
}

/// How often the problem log speaks of a growing problem counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// At most once per interval, with everything since the last line.
    EachInterval,
    /// At its first growth only: a fact about the host to know, not a loss to act on each time.
    Once,
}

#[derive(Clone, Copy, Debug)]
pub struct Declared {
    /// JSON pointer into the counter tree, e.g. `/pipeline/streams/gaps`. A series (a list of
    /// labelled objects) is declared by its path and field: `/pipeline/consumer_lag/messages`.
    pub path: &'static str,
    pub kind: Kind,
    /// The `# HELP` text: one sentence a reader of `/metrics` understands.
    pub help: &'static str,
    /// What the problem log says when it grows, for counters of loss or failure.
    pub problem: Option<(&'static str, Repeat)>,
    /// The line of `mqtrace status` it is added into (several counters may share one).
    pub status: Option<&'static str>,
}

const fn counter(path: &'static str, help: &'static str) -> Declared {
    Declared {
        path,
        kind: Kind::Counter,
        help,
        problem: None,
        status: None,
    }
}

const fn gauge(path: &'static str, help: &'static str) -> Declared {
    Declared {
        kind: Kind::Gauge,
        ..counter(path, help)
    }
}

impl Declared {
    const fn problem(self, message: &'static str) -> Self {
        Self {
            problem: Some((message, Repeat::EachInterval)),
            ..self
        }
    }

    const fn said_once(self, message: &'static str) -> Self {
        Self {
            problem: Some((message, Repeat::Once)),
            ..self
        }
    }

    const fn status(self, label: &'static str) -> Self {
        Self {
            status: Some(label),
            ..self
        }
    }

    /// Its Prometheus name (without `_total`): `mqtrace` and the path's parts joined by `_`.
    pub fn metric_name(&self) -> String {
        metric_name(self.path)
    }
}

/// `/pipeline/streams/gaps` → `mqtrace_pipeline_streams_gaps`.
pub fn metric_name(path: &str) -> String {
    let mut name = String::from("mqtrace");
    for part in path.split('/').filter(|p| !p.is_empty()) {
        name.push('_');
        name.extend(
            part.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    name
}

/// The declaration of the counter at `path`.
pub fn declared(path: &str) -> Option<&'static Declared> {
    COUNTERS.iter().find(|c| c.path == path)
}

/// In the order `mqtrace status` shows its lines.
pub const COUNTERS: &[Declared] = &[
    // The agent itself.
    gauge("/agent/uptime_seconds", "Seconds since the agent started."),
    gauge(
        "/agent/processes_selected",
        "Processes traced now: selected by pid, command name or cgroup (or all, less the excluded).",
    )
    .status("processes selected"),
    gauge(
        "/agent/processes_excluded",
        "Processes never traced, even when tracing all.",
    )
    .status("processes excluded"),
    gauge(
        "/agent/connections_tracked",
        "Connections of traced processes whose bytes the kernel copies now.",
    )
    .status("connections tracked"),
    counter(
        "/agent/stale_sockets_swept",
        "Sockets forgotten because their process closed them unseen (it exited, or closed them in a way the probes do not follow).",
    ),
    counter(
        "/agent/malformed_records",
        "Kernel records the agent could not decode: the agent and its probes disagree on a layout.",
    )
    .problem("kernel records that could not be decoded (agent and probes disagree)"),
    counter(
        "/agent/non_tcp_sockets",
        "Connected sockets let go of at once because they are not TCP (UDP).",
    ),
    gauge(
        "/agent/tls/probes",
        "Probes attached now to the TLS libraries of traced processes (each costs a trap per call).",
    )
    .status("TLS probes"),
    counter(
        "/agent/tls/libraries_probed",
        "TLS libraries of traced processes whose plaintext is probed (system libssl, statically linked copies, netty-tcnative).",
    ),
    counter(
        "/agent/tls/libraries_without_symbols",
        "Libraries named like TLS ones without SSL_write and SSL_read among their symbols (stripped): their connections stay dark.",
    )
    .said_once("TLS libraries without symbols: their encrypted connections are not traced"),
    counter(
        "/agent/tls/dark_jsse",
        "Connections begun with TLS in Java processes without a native TLS library: Java's own TLS (JSSE), out of the probes' reach.",
    )
    .status("TLS, not traced: Java's JSSE"),
    counter(
        "/agent/tls/dark_stripped_library",
        "Connections begun with TLS in processes whose TLS library lacks the symbols probed (stripped).",
    )
    .status("TLS, not traced: library stripped"),
    counter(
        "/agent/tls/dark_no_library",
        "Connections begun with TLS in processes with no TLS library the agent reads (rustls; other libraries).",
    )
    .status("TLS, not traced: no library read"),
    counter(
        "/agent/tls/processes_held",
        "Processes stopped as they exec'd a program new to the agent, until their TLS probes were placed.",
    ),
    counter(
        "/agent/tls/held_seconds",
        "Time those processes waited for their probes, summed.",
    ),
    counter(
        "/agent/tls/resume_failures",
        "Processes held at exec that the agent was not allowed to continue (send them SIGCONT); holding is switched off at the first.",
    )
    .problem("processes held at exec could not be continued (see the log)"),
    counter(
        "/agent/tls/attach_failures",
        "TLS libraries whose file could not be read or whose probes the kernel refused.",
    )
    .problem("TLS libraries not probed (unreadable, or probes refused; see the log)"),
    counter(
        "/agent/tls/connections_bound",
        "Encrypted connections whose plaintext, from their TLS library, is traced.",
    )
    .status("TLS connections traced"),
    counter(
        "/agent/tls/plaintext_bytes",
        "Plaintext bytes from TLS libraries handed to the pipeline.",
    ),
    counter(
        "/agent/tls/objects_unbound",
        "TLS connection objects whose plaintext was dropped because no traced connection was found for it (the socket is not traced, or its ciphertext was missed).",
    ),
    counter(
        "/agent/tls/connections_unbound",
        "Encrypted connections of processes with TLS probes whose plaintext was never bound to them (a library version that binds differently, or probes placed after the connection began): not traced.",
    )
    .problem("encrypted connections of probed processes not bound to their plaintext: not traced"),
    counter(
        "/agent/tls/prefixes_forgotten",
        "Ciphertext prefixes forgotten before the socket write carrying them was seen.",
    ),
    counter(
        "/agent/handover/taken_over",
        "1 once this agent took over from a running one (an upgrade): that one traced the requests made before.",
    )
    .status("took over from a running agent"),
    counter(
        "/agent/handover/handed_over",
        "1 once this agent handed over to a newer one: it traces only the requests made before, to their end.",
    )
    .status("handed over to a newer agent"),
    counter(
        "/agent/handover/refused",
        "Running agents that could not hand over (another hand-over version, or not answering in time): both traced everything until the old one stopped, so messages of that time may be traced twice.",
    )
    .problem("a running agent could not hand over: messages may be traced twice until it stops"),
    counter(
        "/agent/handover/taken_back",
        "Times the newer agent this one handed over to exited while this one ran: this one traces the requests made from then on; what the newer one had not finished is lost.",
    )
    .problem("the newer agent this one handed over to exited: this one traces everything again"),
    counter(
        "/agent/handover/unfinished_at_stop",
        "Requests an agent that had handed over still waited on when it had to stop: ended as agent_stopped.",
    ),
    counter(
        "/pipeline/connections_tls",
        "Connections that began with a TLS ClientHello and whose plaintext was not captured: encrypted, not traced (why: /agent/tls/dark_jsse, dark_stripped_library, dark_no_library, and connections_unbound in processes with TLS probes).",
    )
    .said_once(
        "encrypted connections not traced: their TLS library is not one the agent probes \
         (Java's JSSE, a stripped library; see the README, TLS)",
    )
    .status("TLS, not traced"),
    // The kernel's capture.
    counter(
        "/kernel/records_emitted",
        "Records the kernel wrote to the ring buffer (pieces of at most 16 KiB of a syscall's bytes).",
    )
    .status("records captured"),
    counter(
        "/kernel/bytes_copied",
        "Payload bytes the kernel copied from traced sockets.",
    )
    .status("bytes captured"),
    counter(
        "/kernel/records_lost_ring_full",
        "Records the kernel dropped because the ring buffer was full (raise ring_buffer_bytes).",
    )
    .problem("records lost: the kernel ring buffer was full (raise --ring-buffer-bytes)")
    .status("records lost"),
    counter(
        "/kernel/bytes_not_copied_cap",
        "Payload bytes beyond max_bytes_per_syscall, reported as gaps.",
    )
    .problem("payload bytes not copied: syscalls moved more than --max-bytes-per-syscall")
    .status("bytes not copied"),
    counter(
        "/kernel/user_read_failures",
        "Reads of a traced process's memory that failed: that piece of payload was not copied.",
    )
    .problem("payload reads from traced processes failed"),
    counter(
        "/kernel/socket_table_full",
        "Connections not tracked because the kernel's socket table was full.",
    )
    .problem("connections not tracked: the kernel's socket table is full"),
    counter(
        "/kernel/syscall_table_full",
        "Syscalls not copied because the kernel's table of syscalls in flight was full.",
    )
    .problem("syscalls on traced sockets not followed: the table of syscalls in flight is full"),
    // Streams.
    counter(
        "/pipeline/streams/gaps",
        "Stretches of a stream the agent did not see.",
    )
    .problem("stream gaps: bytes of traced connections were not seen")
    .status("stream gaps"),
    counter(
        "/pipeline/streams/gap_bytes",
        "Bytes of traced streams the agent did not see.",
    ),
    counter(
        "/pipeline/streams/late_bytes",
        "Bytes that arrived behind their stream's position (overlaps, late records) and were dropped.",
    ),
    counter(
        "/pipeline/streams/connections_refused",
        "Connections not followed because the agent followed as many as it may at once.",
    ),
    // The decoder.
    counter(
        "/pipeline/decoder/resyncs",
        "Times the decoder lost a frame boundary and scanned for the next plausible header.",
    )
    .problem("the decoder lost a frame boundary and searched for the next frame")
    .status("resyncs"),
    counter(
        "/pipeline/decoder/frames",
        "RocketMQ frames decoded (remoting frames, HTTP/2 frames of gRPC calls).",
    )
    .status("frames decoded"),
    counter(
        "/pipeline/decoder/messages",
        "Messages found in frames (sends, batches, pull and pop responses, gRPC messages).",
    )
    .status("messages decoded"),
    counter(
        "/pipeline/decoder/grpc_calls",
        "RocketMQ 5 gRPC calls followed.",
    )
    .status("gRPC calls (RocketMQ 5)"),
    counter(
        "/pipeline/decoder/grpc_header_blocks_undecoded",
        "gRPC header blocks not decoded because their HPACK table is unknown (joined mid-stream).",
    )
    .status("gRPC headers not decoded"),
    counter(
        "/pipeline/decoder/frames_lost",
        "Frames whose header was lost or malformed: skipped by their length.",
    )
    .status("decode errors"),
    counter(
        "/pipeline/decoder/malformed_messages",
        "Messages in a body that could not be decoded.",
    )
    .problem("messages that could not be decoded")
    .status("decode errors"),
    counter(
        "/pipeline/decoder/messages_dropped",
        "Messages of a body not reported: beyond the number walked per body.",
    ),
    counter(
        "/pipeline/decoder/resync_bytes",
        "Bytes skipped while scanning for a frame header.",
    ),
    counter(
        "/pipeline/decoder/resync_candidates_skipped",
        "Possible frame heads the scan passed over unparsed, its work per byte seen used up.",
    ),
    counter(
        "/pipeline/decoder/resync_header_bytes_parsed",
        "Header bytes parsed while scanning for a frame (at most a few per byte seen).",
    ),
    counter(
        "/pipeline/decoder/pending_evicted",
        "Requests forgotten by the decoder, oldest first, beyond those it may hold per connection.",
    ),
    counter(
        "/pipeline/decoder/responses_before_request",
        "Responses read before their request (a client writing and reading on two threads): held, then paired.",
    ),
    counter(
        "/pipeline/decoder/responses_without_request",
        "Responses whose request was never seen: they make no event.",
    ),
    counter(
        "/pipeline/decoder/bytes_shed",
        "Bytes let go of because the connections' buffers reached their share of the memory budget.",
    ),
    counter(
        "/pipeline/decoder/grpc_calls_partly_seen",
        "gRPC calls that ended without their start seen.",
    ),
    counter(
        "/pipeline/decoder/grpc_calls_unknown",
        "gRPC calls whose method could not be told: not followed.",
    ),
    counter(
        "/pipeline/decoder/grpc_header_tables_lost",
        "Times a direction's HPACK table stopped being known (a header block lost or undecodable).",
    ),
    counter(
        "/pipeline/decoder/grpc_messages_compressed",
        "gRPC messages compressed by the call (grpc-encoding): not read.",
    ),
    counter(
        "/pipeline/decoder/grpc_messages_too_large",
        "gRPC messages larger than the decoder reads: not read.",
    ),
    counter(
        "/pipeline/decoder/grpc_methods_inferred",
        "gRPC calls whose method was told by the shape of their request, their path unreadable.",
    ),
    counter(
        "/pipeline/connections_not_rocketmq",
        "Connections let go of because they do not speak RocketMQ.",
    ),
    counter(
        "/pipeline/connections_server_side",
        "Connections on which the traced process is the broker (or a proxy or relay).",
    ),
    gauge(
        "/pipeline/serving_processes",
        "Traced processes seen accepting RocketMQ connections (brokers, proxies, relays).",
    ),
    // Correlation.
    counter(
        "/pipeline/correlation/sends",
        "Messages seen sent by producers.",
    )
    .status("sends"),
    counter(
        "/pipeline/correlation/receives",
        "Deliveries of messages seen received by consumers.",
    )
    .status("receives"),
    counter(
        "/pipeline/correlation/settles",
        "Settlements seen: acks, changes of invisible time, send-backs, offset commits, transaction ends.",
    )
    .status("settlements"),
    counter(
        "/pipeline/correlation/broker_stored",
        "The broker's view: messages it stored (send requests it answered).",
    )
    .status("broker: stored"),
    counter(
        "/pipeline/correlation/broker_delivered",
        "The broker's view: messages it delivered in pull and pop responses.",
    )
    .status("broker: delivered"),
    counter(
        "/pipeline/correlation/broker_reports",
        "The broker's view: clients' reports on messages (acks, send-backs, offset commits, transaction ends).",
    )
    .status("broker: reports"),
    counter(
        "/pipeline/correlation/relayed_requests",
        "Requests a process accepted and forwarded (a relay, sidecar or proxy): no broker spans.",
    )
    .status("relayed requests"),
    counter(
        "/pipeline/correlation/send_retries",
        "Sends of a message seen sent before (client retries).",
    ),
    counter(
        "/pipeline/correlation/timeouts",
        "Requests the broker did not answer in time, the agent seeing everything.",
    ),
    counter(
        "/pipeline/correlation/closed_unanswered",
        "Requests whose connection closed before an answer, the agent seeing everything.",
    ),
    counter(
        "/pipeline/correlation/long_polls_closed",
        "Pulls and pops still waiting when their consumer closed the connection (how consumers stop).",
    ),
    counter(
        "/pipeline/correlation/unseen_responses/capture_gap",
        "Requests whose answer may be in bytes the agent did not see.",
    ),
    counter(
        "/pipeline/correlation/unseen_responses/capture_lost",
        "Requests whose answer may be in records the kernel dropped.",
    ),
    counter(
        "/pipeline/correlation/unseen_responses/deselected",
        "Requests whose process was deselected before their answer.",
    ),
    counter(
        "/pipeline/correlation/unseen_responses/not_followed",
        "Requests whose connection stopped being followed before their answer.",
    ),
    counter(
        "/pipeline/correlation/unseen_responses/agent_stopped",
        "Requests still waiting for their answer when the agent stopped.",
    ),
    counter(
        "/pipeline/correlation/unseen_responses/capture_ended",
        "Requests still waiting for their answer when the capture file ended.",
    ),
    counter(
        "/pipeline/correlation/server_side_requests",
        "Requests the traced process received (it is the broker of that connection).",
    ),
    counter(
        "/pipeline/correlation/serving_process_requests",
        "Requests made by processes that accept RocketMQ connections: forwarded or internal, no client spans.",
    ),
    counter(
        "/pipeline/correlation/messages_without_id",
        "Messages without any ID (no UNIQ_KEY, no offsetMsgId): no trace can be made.",
    ),
    counter(
        "/pipeline/correlation/settles_unresolved",
        "Settlements whose message this host never saw received.",
    ),
    counter(
        "/pipeline/correlation/left_to_other_agent",
        "Requests made while another agent owned the traffic (before this one took over, or after it handed over): that agent traced them.",
    ),
    counter(
        "/pipeline/correlation/pending_evicted",
        "Requests forgotten, oldest first, beyond the count or memory share of those waiting.",
    )
    .problem("requests forgotten: too many waiting for a response"),
    counter(
        "/pipeline/correlation/received_evicted",
        "Received messages forgotten, oldest first (their settlements then go unresolved).",
    ),
    counter(
        "/pipeline/correlation/sent_evicted",
        "Sent messages forgotten, oldest first (a later retry of one is then a send of its own).",
    ),
    counter(
        "/pipeline/correlation/lag_queues_dropped",
        "Queues whose consumer lag is not followed: too many were.",
    ),
    gauge(
        "/pipeline/requests_waiting",
        "Requests sent and not answered yet.",
    ),
    gauge(
        "/pipeline/consumer_lag/messages",
        "Per consumer group and queue: messages stored and not yet committed.",
    ),
    // Memory.
    gauge(
        "/pipeline/memory/stream_bytes",
        "Bytes the connections' decoders hold (headers and fields being collected).",
    ),
    gauge(
        "/pipeline/memory/pending_bytes",
        "Bytes held by requests waiting for their answer.",
    ),
    gauge(
        "/pipeline/memory/received_bytes",
        "Bytes held by received messages waiting for their settlement.",
    ),
    gauge(
        "/pipeline/memory/sent_bytes",
        "Bytes held by sent messages (to tell a retry from a new send).",
    ),
    // Spans, where they went, and the journal of recent messages.
    counter("/pipeline/spans", "Spans made from the messages' events.").status("spans emitted"),
    // Export.
    counter(
        "/export/otlp/exported",
        "Spans the OTLP collector accepted.",
    )
    .status("spans sent to OTLP"),
    counter(
        "/export/spans_written",
        "Spans written to the --output file.",
    )
    .status("spans written to file"),
    counter(
        "/export/otlp/dropped_queue_full",
        "Spans dropped because the OTLP queue was full (collector slow or down).",
    )
    .problem("spans dropped: the OTLP export queue was full")
    .status("spans dropped"),
    counter(
        "/export/otlp/dropped_export_failed",
        "Spans the collector did not accept after retries.",
    )
    .problem("spans dropped: the collector did not take them")
    .status("spans dropped"),
    counter(
        "/export/otlp/queued",
        "Spans handed to the OTLP export queue.",
    ),
    gauge(
        "/export/otlp/queued_bytes",
        "Bytes of the spans waiting in the OTLP queue.",
    ),
    counter(
        "/export/otlp/export_errors",
        "OTLP export requests that failed (each retried until its spans are dropped).",
    ),
    counter(
        "/export/rocketmq_trace/records",
        "RocketMQ trace records (Pub, SubBefore, SubAfter, EndTransaction) made from spans.",
    ),
    counter(
        "/export/rocketmq_trace/records_written",
        "RocketMQ trace records in trace messages the broker stored.",
    )
    .status("RocketMQ trace records written"),
    counter(
        "/export/rocketmq_trace/trace_messages",
        "Trace messages the broker stored.",
    ),
    counter(
        "/export/rocketmq_trace/records_left_to_clients",
        "RocketMQ trace records not written: their client writes its own trace.",
    ),
    counter(
        "/export/rocketmq_trace/dropped_queue_full",
        "RocketMQ trace records dropped because their queue was full (the trace topic could \
         not be written).",
    )
    .problem("RocketMQ trace records dropped: the trace topic could not be written")
    .status("RocketMQ trace records dropped"),
    counter(
        "/export/rocketmq_trace/dropped_refused",
        "RocketMQ trace records in trace messages the broker refused for good (too large, no \
         permission).",
    )
    .problem("RocketMQ trace records dropped: the broker refused them"),
    counter(
        "/export/rocketmq_trace/dropped_at_stop",
        "RocketMQ trace records still waiting when the agent stopped and its flush deadline \
         passed.",
    ),
    counter(
        "/export/rocketmq_trace/send_failures",
        "Trace messages the name server or broker did not take (each retried).",
    ),
    gauge(
        "/export/rocketmq_trace/queued_bytes",
        "Bytes of the RocketMQ trace records waiting to be written.",
    ),
    counter(
        "/export/write_errors",
        "Spans that could not be written to the --output file (a full disk, an I/O error).",
    )
    .problem(
        "spans not written: the --output file could not be written (disk full?); tracing goes on",
    ),
    gauge(
        "/pipeline/journal/messages",
        "Messages kept for `mqtrace trace`.",
    )
    .status("messages in journal"),
    gauge(
        "/pipeline/journal/bytes",
        "Bytes the journal of recent messages holds.",
    ),
    counter(
        "/pipeline/journal/messages_evicted",
        "Messages forgotten by the journal, oldest first, beyond its count or memory share.",
    ),
    counter(
        "/pipeline/journal/steps_dropped",
        "Steps of a message not kept: it had as many as one message may keep.",
    ),
];

/// A tree with every part the daemon may report present (OTLP on, a consumer lag series),
/// each value 0: what the declarations are held to.
#[cfg(test)]
pub fn every_part() -> serde_json::Value {
    let tree = CounterTree {
        kernel: mqtrace_common::Counter::ALL
            .iter()
            .map(|c| (c.name(), 0))
            .collect(),
        pipeline: PipelineCounters {
            consumer_lag: vec![crate::correlation::lag::QueueLag::default()],
            ..Default::default()
        },
        export: ExportCounters {
            otlp: Some(Default::default()),
            rocketmq_trace: Some(Default::default()),
            ..Default::default()
        },
        ..Default::default()
    };
    serde_json::to_value(tree).expect("counters serialize")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The paths of the numbers in `value`, a series by its path and numeric fields.
    fn leaves(path: &str, value: &serde_json::Value, out: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    leaves(&format!("{path}/{key}"), value, out);
                }
            }
            serde_json::Value::Array(series) => {
                for item in series {
                    leaves(path, item, out);
                }
            }
            serde_json::Value::Number(_) => {
                out.insert(path.to_string());
            }
            _ => {}
        }
    }

    #[test]
    fn every_counter_of_the_tree_is_declared_and_every_declared_one_is_in_it() {
        let mut in_tree = BTreeSet::new();
        leaves("", &every_part(), &mut in_tree);
        let declared: BTreeSet<String> = COUNTERS.iter().map(|c| c.path.to_string()).collect();
        assert_eq!(
            in_tree.difference(&declared).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "in the tree, not declared"
        );
        assert_eq!(
            declared.difference(&in_tree).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "declared, not in the tree"
        );
    }

    #[test]
    fn each_counter_is_declared_once_with_a_sentence_of_help() {
        let mut paths = BTreeSet::new();
        for counter in COUNTERS {
            assert!(paths.insert(counter.path), "{} twice", counter.path);
            assert!(counter.path.starts_with('/'), "{}", counter.path);
            assert!(
                counter.help.ends_with('.') && counter.help.len() > 20,
                "{}: {}",
                counter.path,
                counter.help
            );
        }
    }

    #[test]
    fn metric_names_are_the_path_joined() {
        assert_eq!(
            metric_name("/pipeline/streams/gaps"),
            "mqtrace_pipeline_streams_gaps"
        );
        assert_eq!(
            declared("/kernel/records_lost_ring_full").map(Declared::metric_name),
            Some("mqtrace_kernel_records_lost_ring_full".to_string())
        );
    }
}
