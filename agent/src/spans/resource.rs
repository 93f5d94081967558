//! The resource of a traced process: who sent or received, as OpenTelemetry resources say it.
//! Read from /proc once per process and cached.

use std::collections::HashMap;

use super::{Attributes, Value};

/// Resources kept at most; beyond it the cache starts over.
const MAX_CACHED: usize = 16_384;

#[derive(Default)]
pub struct Resources {
    host_name: String,
    cache: HashMap<u32, Attributes>,
    /// The resource of events with no process (capture files).
    pub capture: Attributes,
}

impl Resources {
    pub fn new() -> Self {
        let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Self {
            host_name,
            ..Self::default()
        }
    }

    /// For events read from a capture file: no process is known.
    pub fn for_capture(file: &std::path::Path) -> Self {
        let mut capture = Attributes::new();
        capture.insert("service.name".into(), "mqtrace-replay".into());
        capture.insert(
            "mqtrace.capture.file".into(),
            file.display().to_string().into(),
        );
        Self {
            capture,
            ..Self::default()
        }
    }

    pub fn of(&mut self, pid: u32) -> &Attributes {
        if pid == 0 {
            return &self.capture;
        }
        if self.cache.len() >= MAX_CACHED && !self.cache.contains_key(&pid) {
            self.cache.clear();
        }
        let host_name = self.host_name.clone();
        self.cache
            .entry(pid)
            .or_insert_with(|| process_resource(pid, &host_name))
    }

    /// Forgets a process that exited.
    pub fn forget(&mut self, pid: u32) {
        self.cache.remove(&pid);
    }
}

fn process_resource(pid: u32, host_name: &str) -> Attributes {
    let mut r = Attributes::new();
    r.insert("host.name".into(), host_name.into());
    r.insert("process.pid".into(), Value::Int(i64::from(pid)));
    let executable = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap_or_default()
                .trim()
                .to_string()
        });
    if !executable.is_empty() {
        r.insert("process.executable.name".into(), executable.clone().into());
    }
    let service = service_name(pid).unwrap_or(executable);
    r.insert("service.name".into(), service.into());
    if let Some(id) = container_id(pid) {
        r.insert("container.id".into(), id.into());
    }
    r
}

/// `OTEL_SERVICE_NAME` from the process's environment, or `-Dotel.service.name=` from its
/// command line, as the OpenTelemetry agents the application may run would call it.
fn service_name(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let from_env = environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"OTEL_SERVICE_NAME="))
        .map(|v| String::from_utf8_lossy(v).into_owned());
    from_env.filter(|s| !s.is_empty()).or_else(|| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        cmdline
            .split(|&b| b == 0)
            .find_map(|arg| arg.strip_prefix(b"-Dotel.service.name="))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .filter(|s| !s.is_empty())
    })
}

/// The 64-hex container id in the process's cgroup path (docker, containerd, cri-o).
fn container_id(pid: u32) -> Option<String> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cgroup
        .lines()
        .flat_map(|line| line.split(['/', '-', '.', ':']))
        .find(|part| part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_resource() {
        let mut resources = Resources::new();
        let r = resources.of(std::process::id()).clone();
        assert_eq!(
            r.get("process.pid"),
            Some(&Value::Int(i64::from(std::process::id())))
        );
        assert!(matches!(r.get("service.name"), Some(Value::String(s)) if !s.is_empty()));
        assert!(r.contains_key("host.name"));
    }
}
