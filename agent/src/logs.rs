//! Structured logs through `tracing`: quiet by default (warnings and errors only, on stderr),
//! as text or JSON lines, and rate-limited per problem so that a problem that keeps happening
//! (a dead collector, a ring buffer that keeps filling) makes one line per interval with a
//! count instead of a flood. `MQTRACE_LOG` sets the level (e.g. `info`, `mqtrace=debug`).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MQTRACE_LOG")
        .unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Counters that mean something was lost or went wrong, and what to say when they grow.
const PROBLEMS: &[(&str, &str)] = &[
    (
        "/kernel/records_lost_ring_full",
        "records lost: the kernel ring buffer was full (raise --ring-buffer-bytes)",
    ),
    (
        "/kernel/bytes_not_copied_cap",
        "payload bytes not copied: syscalls moved more than --max-bytes-per-syscall",
    ),
    (
        "/kernel/user_read_failures",
        "payload reads from traced processes failed",
    ),
    (
        "/kernel/socket_table_full",
        "connections not tracked: the kernel's socket table is full",
    ),
    (
        "/kernel/syscall_table_full",
        "syscalls on traced sockets not followed: the table of syscalls in flight is full",
    ),
    (
        "/agent/malformed_records",
        "kernel records that could not be decoded (agent and probes disagree)",
    ),
    (
        "/pipeline/connections_tls",
        "connections began TLS: encrypted traffic is not traced; if they are RocketMQ clients, \
         turn TLS off between them and their brokers (see the README, Not traced yet)",
    ),
    (
        "/pipeline/streams/gaps",
        "stream gaps: bytes of traced connections were not seen",
    ),
    (
        "/pipeline/decoder/resyncs",
        "the decoder lost a frame boundary and searched for the next frame",
    ),
    (
        "/pipeline/decoder/malformed_messages",
        "messages that could not be decoded",
    ),
    (
        "/pipeline/correlation/pending_evicted",
        "requests forgotten: too many waiting for a response",
    ),
    (
        "/export/write_errors",
        "spans not written: the --output file could not be written (disk full?); tracing goes on",
    ),
    (
        "/export/otlp/dropped_queue_full",
        "spans dropped: the OTLP export queue was full",
    ),
    (
        "/export/otlp/dropped_export_failed",
        "spans dropped: the collector did not take them",
    ),
];

/// Counters said once, at their first growth: not a loss to act on each time, a fact about the
/// host to know.
const SAID_ONCE: &[&str] = &["/pipeline/connections_tls"];

/// One line to log: a problem counter grew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProblemLine {
    pub counter: &'static str,
    /// Growth since the last line about this counter.
    pub new: u64,
    pub total: u64,
    pub message: &'static str,
}

/// Watches the problem counters and says when one grew, at most once per `interval` each:
/// the next line carries everything that happened in between.
pub struct ProblemLog {
    interval: Duration,
    /// Per counter: when it was last reported, and its value then.
    reported: HashMap<&'static str, (Option<Instant>, u64)>,
}

impl ProblemLog {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            reported: HashMap::new(),
        }
    }

    pub fn check(&mut self, counters: &serde_json::Value, now: Instant) -> Vec<ProblemLine> {
        let mut lines = Vec::new();
        for &(pointer, message) in PROBLEMS {
            let total = counters
                .pointer(pointer)
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            let (at, value) = self.reported.entry(pointer).or_insert((None, 0));
            let due = match at {
                None => true,
                Some(_) if SAID_ONCE.contains(&pointer) => false,
                Some(at) => now.duration_since(*at) >= self.interval,
            };
            if total > *value && due {
                lines.push(ProblemLine {
                    counter: pointer,
                    new: total - *value,
                    total,
                    message,
                });
                *at = Some(now);
                *value = total;
            }
        }
        lines
    }
}

/// Logs the lines as warnings, one each.
pub fn log_problems(lines: &[ProblemLine]) {
    for line in lines {
        tracing::warn!(
            counter = line.counter,
            new = line.new,
            total = line.total,
            "{}",
            line.message
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_growing_problem_is_logged_once_per_interval_with_all_it_missed() {
        let mut log = ProblemLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let lost = |n: u64, gaps: u64| serde_json::json!({"kernel": {"records_lost_ring_full": n}, "pipeline": {"streams": {"gaps": gaps}}});
        assert!(log.check(&lost(0, 0), t0).is_empty());
        let lines = log.check(&lost(5, 0), at(1));
        assert_eq!(lines.len(), 1);
        assert_eq!(
            (lines[0].counter, lines[0].new, lines[0].total),
            ("/kernel/records_lost_ring_full", 5, 5)
        );
        // Held back within the interval, but another problem is not.
        assert!(log.check(&lost(9, 0), at(2)).is_empty());
        let lines = log.check(&lost(12, 1), at(3));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].counter, "/pipeline/streams/gaps");
        // The next line about the first counts everything since its last line.
        let lines = log.check(&lost(20, 1), at(62));
        assert_eq!((lines[0].new, lines[0].total), (15, 20));
        // No growth, no line.
        assert!(log.check(&lost(20, 1), at(200)).is_empty());
        // Encrypted connections are said once, however many come later.
        let tls = |n: u64| serde_json::json!({"pipeline": {"connections_tls": n}});
        assert_eq!(
            log.check(&tls(3), at(300))[0].counter,
            "/pipeline/connections_tls"
        );
        assert!(log.check(&tls(50), at(1000)).is_empty());
    }
}
