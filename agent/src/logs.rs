//! Structured logs through `tracing`: quiet by default (warnings and errors only, on stderr),
//! as text or JSON lines, and rate-limited per problem so that a problem that keeps happening
//! (a dead collector, a ring buffer that keeps filling) makes one line per interval with a
//! count instead of a flood. `MQTRACE_LOG` sets the level (e.g. `info`, `mqtrace=debug`).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::counters::{COUNTERS, Repeat};

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

/// One line to log: a problem counter grew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProblemLine {
    pub counter: &'static str,
    /// Growth since the last line about this counter.
    pub new: u64,
    pub total: u64,
    pub message: &'static str,
}

/// Watches the problem counters (those declared with a problem) and says when one grew, at most once per `interval` each:
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
        for declared in COUNTERS {
            let Some((message, repeat)) = declared.problem else {
                continue;
            };
            let pointer = declared.path;
            let total = counters
                .pointer(pointer)
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            let (at, value) = self.reported.entry(pointer).or_insert((None, 0));
            let due = match at {
                None => true,
                Some(_) if repeat == Repeat::Once => false,
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

    #[test]
    fn every_problem_counter_is_said_when_it_grows() {
        let mut tree = crate::counters::every_part();
        let problems: Vec<&str> = COUNTERS
            .iter()
            .filter(|c| c.problem.is_some())
            .map(|c| c.path)
            .collect();
        for path in &problems {
            *tree.pointer_mut(path).unwrap() = serde_json::json!(1);
        }
        let said: Vec<&str> = ProblemLog::new(Duration::from_secs(60))
            .check(&tree, Instant::now())
            .iter()
            .map(|line| line.counter)
            .collect();
        assert_eq!(said, problems);
        // The loss counters among them.
        for loss in [
            "/kernel/records_lost_ring_full",
            "/pipeline/streams/gaps",
            "/export/otlp/dropped_queue_full",
        ] {
            assert!(said.contains(&loss), "{loss}");
        }
    }
}
