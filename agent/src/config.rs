//! The daemon's configuration file (TOML). Every key mirrors a `mqtrace run` flag of the same
//! name; a flag (or its environment variable) wins over the file, the file over the default.
//!
//! ```toml
//! all = true                       # or any of: pids = [1234], comms = ["java"],
//!                                  #   cgroups = ["/kubepods.slice"], only_selected = true
//! max_bytes_per_syscall = 262144
//! ring_buffer_bytes = 16777216
//! output = "/var/log/mqtrace/spans.jsonl"
//! otlp_endpoint = "http://otel-collector:4317"
//! otlp_protocol = "grpc"           # or "http/protobuf"
//! otlp_certificate = "/etc/mqtrace/collector-ca.pem"   # CA of an https:// collector
//! rocketmq_trace_namesrv = "namesrv:9876"   # also write RocketMQ's own message trace there
//! rocketmq_trace_topic = "RMQ_SYS_TRACE_TOPIC"
//! rocketmq_trace_region = "DefaultRegion"
//! rocketmq_trace_view = "client"   # or "broker": the brokers' view (agents on broker hosts)
//! request_timeout = 30
//! flush_timeout = 5
//! stats_interval = 10
//! metrics_address = "127.0.0.1:9464"
//! control_socket = "/run/mqtrace/mqtrace.sock"
//! control_group = "mqtrace"        # may use the control socket besides root
//! journal_messages = 20000
//! state_file = "/run/mqtrace/mqtrace.rules.json"   # rules kept across restarts
//! memory_budget_mib = 256          # what the agent keeps between events, oldest forgotten first
//! health_stall_seconds = 30        # /healthz fails once the pipeline is stuck this long
//! no_broker_spans = false          # true: a broker's side of its connections is not decoded
//! no_hold_at_exec = false          # true: a new program is not stopped until its TLS probes
//! ```

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub all: Option<bool>,
    pub pids: Option<Vec<u32>>,
    pub comms: Option<Vec<String>>,
    pub cgroups: Option<Vec<String>>,
    pub only_selected: Option<bool>,
    pub max_bytes_per_syscall: Option<u32>,
    pub ring_buffer_bytes: Option<u32>,
    pub output: Option<PathBuf>,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    pub otlp_certificate: Option<PathBuf>,
    pub rocketmq_trace_namesrv: Option<String>,
    pub rocketmq_trace_topic: Option<String>,
    pub rocketmq_trace_region: Option<String>,
    pub rocketmq_trace_view: Option<crate::exporters::rocketmq_trace::View>,
    pub request_timeout: Option<u64>,
    pub flush_timeout: Option<u64>,
    pub stats_interval: Option<u64>,
    pub metrics_address: Option<SocketAddr>,
    pub control_socket: Option<PathBuf>,
    pub control_group: Option<String>,
    pub journal_messages: Option<usize>,
    pub state_file: Option<PathBuf>,
    pub memory_budget_mib: Option<usize>,
    pub health_stall_seconds: Option<u64>,
    pub no_broker_spans: Option<bool>,
    pub no_hold_at_exec: Option<bool>,
}

impl FileConfig {
    /// Reads and checks a config file; errors name the file, the line and the key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let Some(span) = e.span() else {
                return e.message().to_string();
            };
            let line = text[..span.start].matches('\n').count() + 1;
            // The key of that line, which a type error does not name itself.
            let key = text
                .lines()
                .nth(line - 1)
                .and_then(|l| l.split_once('='))
                .map(|(key, _)| key.trim())
                .filter(|key| !key.is_empty());
            match key {
                Some(key) => format!("line {line}, key {key}: {}", e.message()),
                None => format!("line {line}: {}", e.message()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses() {
        let config = FileConfig::parse(
            "all = true\nmax_bytes_per_syscall = 65536\notlp_endpoint = \"http://c:4317\"\nmetrics_address = \"127.0.0.1:9464\"\n",
        )
        .unwrap();
        assert_eq!(config.all, Some(true));
        assert_eq!(config.max_bytes_per_syscall, Some(65536));
        assert_eq!(
            config.metrics_address,
            Some("127.0.0.1:9464".parse().unwrap())
        );
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let error = FileConfig::parse("all = true\n\nring_bufer_bytes = 4096\n").unwrap_err();
        assert!(
            error.starts_with("line 3, key ring_bufer_bytes:"),
            "{error}"
        );
        let error =
            FileConfig::parse("all = true\nmax_bytes_per_syscall = \"lots\"\n").unwrap_err();
        assert!(
            error.starts_with("line 2, key max_bytes_per_syscall: invalid type"),
            "{error}"
        );
    }
}
