//! `mqtrace enable|disable|list|status|trace`: ask the running daemon over its control socket.

use std::path::PathBuf;

use clap::Args;

use crate::{
    control::{DEFAULT_SOCKET, Listing, Request, Response, Status, Target, client},
    counters::COUNTERS,
    journeys::{Query, timeline},
};

#[derive(Args)]
pub struct SocketArg {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", env = "MQTRACE_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// One process, with the connections it already has open.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Every process with this command name (/proc/PID/comm, e.g. java), now and whenever one
    /// starts.
    #[arg(long, value_name = "NAME")]
    comm: Option<String>,
    /// Every process in this cgroup (v2) or below it, now and whenever one starts: a path under
    /// the cgroup mount, or as /proc/PID/cgroup shows it.
    #[arg(long, value_name = "PATH")]
    cgroup: Option<String>,
}

impl TargetArgs {
    fn target(self) -> Target {
        match (self.pid, self.comm, self.cgroup) {
            (Some(pid), _, _) => Target::Pid(pid),
            (_, Some(comm), _) => Target::Comm(comm),
            (_, _, Some(cgroup)) => Target::Cgroup(cgroup),
            // clap requires exactly one.
            _ => unreachable!("one of --pid, --comm, --cgroup"),
        }
    }
}

#[derive(Args)]
pub struct SelectArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    socket: SocketArg,
}

#[derive(Args)]
pub struct ShowArgs {
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    socket: SocketArg,
}

/// Which messages to show; every given filter must match, and none means all.
#[derive(Args, Clone)]
pub struct MessageFilter {
    /// The message ID: UNIQ_KEY (what producers are told) or offsetMsgId (the broker's, also
    /// that of a copy redelivered through the retry topic), in upper or lower case.
    #[arg(long, value_name = "ID")]
    pub msg_id: Option<String>,
    /// One of the message's keys.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// The message's topic, or a retry or dead-letter topic it went through
    /// (%RETRY%group, %DLQ%group).
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,
}

#[derive(Args)]
pub struct TraceArgs {
    #[command(flatten)]
    filter: MessageFilter,
    /// Only messages seen in this last while, e.g. 30s, 10m, 2h.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    since: Option<std::time::Duration>,
    /// Most recent messages shown at most.
    #[arg(long, value_name = "N", default_value_t = 20)]
    limit: usize,
    #[command(flatten)]
    show: ShowArgs,
}

impl MessageFilter {
    pub fn is_empty(&self) -> bool {
        self.msg_id.is_none() && self.key.is_none() && self.topic.is_none()
    }

    pub fn query(self, limit: usize) -> Query {
        Query {
            msg_id: self.msg_id,
            key: self.key,
            topic: self.topic,
            since_unix_ns: None,
            limit,
        }
    }
}

pub fn select(args: SelectArgs, enabled: bool) -> anyhow::Result<()> {
    let target = args.target.target();
    let request = if enabled {
        Request::Enable { target }
    } else {
        Request::Disable { target }
    };
    let Response::Applied {
        target,
        enabled,
        processes,
        note,
    } = client::send(&args.socket.socket, &request)?
    else {
        anyhow::bail!("the daemon answered something else than the change");
    };
    let verb = if enabled {
        "tracing"
    } else {
        "no longer tracing"
    };
    let pids: Vec<String> = processes.iter().map(u32::to_string).collect();
    let now = match (&target, pids.is_empty()) {
        (Target::Pid(_), _) => format!("{verb} {target}"),
        (_, true) => format!("{target}: no running process changed"),
        (_, false) => format!("{target}: {verb} pids {}", pids.join(", ")),
    };
    println!("{now}");
    if !matches!(target, Target::Pid(_)) {
        println!("processes that start later are matched when they exec");
    }
    if let Some(note) = note {
        println!("note: {note}");
    }
    Ok(())
}

pub fn list(args: ShowArgs) -> anyhow::Result<()> {
    let Response::Listing(listing) = client::send(&args.socket.socket, &Request::List)? else {
        anyhow::bail!("the daemon answered something else than a listing");
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
    } else {
        print!("{}", render_listing(&listing));
    }
    Ok(())
}

fn render_listing(listing: &Listing) -> String {
    let mut out = format!("mode: {}\n", listing.mode);
    if listing.mode == "all" {
        out.push_str("  every process is traced unless excluded below\n");
    }
    out.push_str("rules:\n");
    if listing.rules.is_empty() {
        out.push_str("  (none)\n");
    }
    for rule in &listing.rules {
        let verb = if rule.enabled { "enable" } else { "disable" };
        out.push_str(&format!("  {verb} {}\n", rule.target));
    }
    out.push_str(&format!(
        "processes with a selection of their own:\n  {:<8} {:<16} {:<12} {}\n",
        "PID", "COMM", "SELECTION", "CONNECTIONS"
    ));
    for p in &listing.processes {
        let selection = serde_json::to_value(p.selection)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {:<8} {:<16} {:<12} {}\n",
            p.pid, p.comm, selection, p.connections
        ));
    }
    out
}

pub fn status(args: ShowArgs) -> anyhow::Result<()> {
    let Response::Status(status) = client::send(&args.socket.socket, &Request::Status)? else {
        anyhow::bail!("the daemon answered something else than its status");
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render_status(&status));
    }
    Ok(())
}

fn render_status(status: &Status) -> String {
    let up = status.uptime_seconds;
    let mut out = format!(
        "mqtrace {} (pid {}), up {}h{:02}m{:02}s, tracing {}\n",
        status.version,
        status.pid,
        up / 3600,
        up / 60 % 60,
        up % 60,
        if status.mode == "all" {
            "all processes but the excluded ones"
        } else {
            "selected processes"
        }
    );
    if let Some(address) = status.metrics_address {
        out.push_str(&format!("  metrics on http://{address}/metrics\n"));
    }
    // The counters people ask about first, as declared (`--json` has them all); counters
    // sharing a label are added into its line.
    let mut lines: Vec<(&str, u64)> = Vec::new();
    for counter in COUNTERS {
        let Some(label) = counter.status else {
            continue;
        };
        let value = status
            .counters
            .pointer(counter.path)
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        match lines.iter_mut().find(|(l, _)| *l == label) {
            Some((_, sum)) => *sum += value,
            None => lines.push((label, value)),
        }
    }
    for (label, value) in lines {
        out.push_str(&format!("  {label:<22} {value}\n"));
    }
    out
}

pub fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let mut query = args.filter.query(args.limit);
    query.since_unix_ns = args.since.map(|since| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(since).as_nanos() as u64
    });
    let Response::Journeys { journeys } =
        client::send(&args.show.socket.socket, &Request::Trace { query })?
    else {
        anyhow::bail!("the daemon answered something else than messages");
    };
    if journeys.is_empty() {
        anyhow::bail!(
            "no message matches: the daemon knows only the recent messages this host sent or \
             received while traced (see `mqtrace status`, messages in journal)"
        );
    }
    if args.show.json {
        println!("{}", serde_json::to_string_pretty(&journeys)?);
    } else {
        for journey in &journeys {
            println!("{}", timeline(journey));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_sums_the_counters_it_names() {
        let status = Status {
            version: "0.1.0".into(),
            pid: 7,
            uptime_seconds: 3_725,
            mode: "all".into(),
            metrics_address: None,
            counters: serde_json::json!({
                "pipeline": {"decoder": {"frames_lost": 2, "malformed_messages": 3}, "spans": 40},
                "export": {"spans_written": 7, "otlp": {"exported": 40, "dropped_queue_full": 0}},
            }),
        };
        let text = render_status(&status);
        assert!(
            text.starts_with(
                "mqtrace 0.1.0 (pid 7), up 1h02m05s, tracing all processes but the excluded ones\n"
            ),
            "{text}"
        );
        assert!(text.contains("  decode errors          5\n"), "{text}");
        assert!(text.contains("  spans sent to OTLP     40\n"), "{text}");
        assert!(text.contains("  spans written to file  7\n"), "{text}");
        assert!(
            !text.contains(" 47\n"),
            "destinations not added together: {text}"
        );
        assert!(text.contains("  records lost           0\n"), "{text}");
    }

    #[test]
    fn every_status_label_is_one_line() {
        let status = Status {
            version: "0.1.0".into(),
            pid: 7,
            uptime_seconds: 0,
            mode: "all".into(),
            metrics_address: None,
            counters: crate::counters::every_part(),
        };
        let text = render_status(&status);
        let mut labels: Vec<&str> = Vec::new();
        for label in COUNTERS.iter().filter_map(|c| c.status) {
            if !labels.contains(&label) {
                labels.push(label);
            }
        }
        let shown: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|line| line.trim().rsplit_once(' ').unwrap().0.trim_end())
            .collect();
        assert_eq!(shown, labels, "{text}");
    }
}
