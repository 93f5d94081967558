//! The real `mqtrace` daemon, started for a test with its own metrics port and control socket,
//! stopped by pid (SIGTERM, then SIGKILL on drop) whatever happens.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use crate::{rocketmq::Owned, wait};

/// The `mqtrace` binary of the same build as the running executable: beside it (benchmark
/// binaries) or one level up (tests, which run from `deps/`).
pub fn mqtrace_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let bin = [dir, dir.parent().unwrap()]
        .iter()
        .map(|d| d.join("mqtrace"))
        .find(|b| b.exists());
    bin.unwrap_or_else(|| {
        panic!(
            "no mqtrace binary beside {}: build it with `cargo build -p mqtrace` (cargo xtask \
             test and bench do)",
            exe.display()
        )
    })
}

/// A memory figure of a process's /proc status (`VmRSS:`, `VmHWM:`, ...) in MiB, 0 when gone.
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

pub struct Agent {
    process: Option<Owned>,
    pub metrics: SocketAddr,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    /// Starts `mqtrace run ARGS` and waits until its probes are attached; `name` keeps the
    /// files of agents running side by side apart.
    pub fn start(name: &str, args: &[&str]) -> Self {
        Self::start_with_env(name, args, &[])
    }

    /// As `start`, with these environment variables (OTEL_EXPORTER_OTLP_*, ...).
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let bin = mqtrace_bin();
        Self::launch(name, &[bin.to_str().unwrap()], args, env, None)
    }

    /// As `start`, on the control socket of `running`: a newer agent that takes over from it
    /// (returns once the socket is its own).
    pub fn start_successor(name: &str, running: &Agent, args: &[&str]) -> Self {
        let bin = mqtrace_bin();
        let socket = Some(running.socket.clone());
        Self::launch(name, &[bin.to_str().unwrap()], args, &[], socket)
    }

    /// As `start`, through a wrapper that execs the binary (`command` ends with its path), e.g.
    /// `setpriv ... -- /path/to/mqtrace`.
    pub fn start_wrapped(name: &str, command: &[&str], args: &[&str]) -> Self {
        Self::launch(name, command, args, &[], None)
    }

    fn launch(
        name: &str,
        command: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        socket: Option<PathBuf>,
    ) -> Self {
        let dir = std::env::temp_dir();
        let stem = format!("mqtrace-{name}-{}", std::process::id());
        let log = dir.join(format!("{stem}.log"));
        let socket = socket.unwrap_or_else(|| dir.join(format!("{stem}.sock")));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(command[0])
            .args(&command[1..])
            .arg("run")
            .args(args)
            // A port of its own, which it reports in its status: none taken from another.
            .args(["--metrics-address", "127.0.0.1:0"])
            .arg("--control-socket")
            .arg(&socket)
            .envs(env.iter().copied())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start mqtrace");
        let mut agent = Self {
            process: Some(Owned(child)),
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            socket,
            log,
        };
        agent.metrics = agent.await_ready();
        agent
    }

    /// Waits until the daemon answers on its control socket (itself, not an agent it takes
    /// over from), which it does once its probes are attached and its loop runs; returns where
    /// it serves its metrics.
    fn await_ready(&mut self) -> SocketAddr {
        let pid = self.pid();
        let answered = wait::until(
            "the agent to answer on its control socket",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let exited = self.process.as_mut().unwrap().0.try_wait().unwrap();
                assert!(
                    exited.is_none(),
                    "agent exited ({exited:?}): {}",
                    self.log_text()
                );
                if !self.socket.exists() {
                    return Err("no control socket yet".into());
                }
                let out = self.control(&["status", "--json"]);
                if !out.status.success() {
                    return Err(String::from_utf8_lossy(&out.stderr).into_owned());
                }
                let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if status["pid"] != pid {
                    return Err(format!("another agent answers: {}", status["pid"]));
                }
                Ok(status["metrics_address"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("no metrics address in {status}")))
            },
        );
        answered.unwrap_or_else(|e| panic!("{e:#}\n{}", self.log_text()))
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().unwrap().0.id()
    }

    /// CPU seconds the agent has used so far (user and system).
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // After the command name in parentheses: fields 14 and 15 are utime and stime.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    /// The agent's peak resident memory so far, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        memory_mib(self.pid(), "VmHWM:")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `mqtrace ARGS --socket <this agent's>` (enable, disable, list, status, trace).
    pub fn control(&self, args: &[&str]) -> Output {
        Command::new(mqtrace_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run mqtrace")
    }

    /// As `control`, failing the test unless it succeeds; returns its stdout.
    pub fn control_ok(&self, args: &[&str]) -> String {
        let out = self.control(args);
        assert!(
            out.status.success(),
            "mqtrace {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `mqtrace trace ARGS` until its timeline has a `  STEP ` line for every step (a
    /// settlement the consumer sent as it stopped may still be in the pipeline); fails the test
    /// with the last timeline after `timeout`, else returns it.
    pub fn await_timeline(&self, args: &[&str], steps: &[&str], timeout: Duration) -> String {
        let mut query = vec!["trace"];
        query.extend_from_slice(args);
        let every_step = || {
            let timeline = self.control_ok(&query);
            let missing: Vec<&str> = steps
                .iter()
                .copied()
                .filter(|step| !timeline.contains(&format!("  {step} ")))
                .collect();
            if missing.is_empty() {
                Ok(timeline)
            } else {
                Err(format!("{missing:?} not in the timeline: {timeline}"))
            }
        };
        wait::until(
            "every step",
            timeout,
            Duration::from_millis(200),
            every_step,
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `GET /metrics`: the Prometheus text as served.
    pub fn metrics_text(&self) -> String {
        let (status, body) = crate::http::get(self.metrics, "/metrics", Duration::from_secs(10))
            .expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until the metric `name` reaches `at_least`; fails the test with the metrics and
    /// the agent's log after `timeout`.
    pub fn await_metric(&self, name: &str, at_least: f64, timeout: Duration) {
        let reached = || {
            let value = self.scrape().get(name).copied().unwrap_or(0.0);
            wait::done_or(value >= at_least, || format!("{name} is {value}"))
        };
        let what = format!("{name} to reach {at_least}");
        wait::until(&what, timeout, Duration::from_millis(200), reached)
            .unwrap_or_else(|e| panic!("{e:#}: {:?}\n{}", self.scrape(), self.log_text()));
    }

    /// The values of the metrics `names` from one scrape, 0 for one not exposed.
    pub fn metrics<const N: usize>(&self, names: [&str; N]) -> [f64; N] {
        let metrics = self.scrape();
        names.map(|name| metrics.get(name).copied().unwrap_or(0.0))
    }

    /// `GET /metrics`, as name → value.
    pub fn scrape(&self) -> BTreeMap<String, f64> {
        self.metrics_text()
            .lines()
            .filter(|l| l.starts_with("mqtrace_"))
            .filter_map(|l| {
                l.split_once(' ')
                    .and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            })
            .collect()
    }

    /// SIGTERM, then waits for the agent to flush and exit; returns its log.
    pub fn stop(mut self) -> String {
        let mut process = self.process.take().unwrap();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(process.0.id() as i32, libc::SIGTERM) };
        let exited = || match process.0.try_wait().unwrap() {
            Some(_) => Ok(()),
            None => Err("still running".into()),
        };
        let every = Duration::from_millis(100);
        wait::until(
            "the agent to stop on SIGTERM",
            // One that handed over waits up to 35 s for what it owns (a long poll).
            Duration::from_secs(60),
            every,
            exited,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        self.log_text()
    }
}

/// The counters the agent logged as it stopped (`mqtrace: stopping; counters {...}`), from the
/// log [`Agent::stop`] returned.
pub fn final_counters(log: &str) -> serde_json::Value {
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("mqtrace: stopping; counters "))
        .unwrap_or_else(|| panic!("no counters in the agent's log:\n{log}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.process.take()); // killed by pid if still running
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.socket);
        // The rules it kept (its default state file, beside the socket).
        let _ = std::fs::remove_file(self.socket.with_extension("rules.json"));
    }
}

/// The last value of counter `name` (its last path segment, e.g. `processes_held`) in an
/// agent's log: the counters of its stopping line; 0 when absent.
pub fn counter_in_log(log: &str, name: &str) -> u64 {
    let key = format!("\"{name}\":");
    log.rfind(&key)
        .and_then(|at| {
            log[at + key.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
