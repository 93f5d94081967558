//! The deployment artefacts in `deploy/`, checked with real tools: the Kubernetes manifests
//! against the API schemas (kubernetes-validate from PyPI, installed here on first use), the
//! systemd unit with `systemd-analyze verify`, and the agent started as root with only the
//! capabilities the manifests and the unit grant, tracing a real producer.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use mqtrace_tests::{
    agent::{Agent, mqtrace_bin},
    rocketmq::{Broker, client},
    wait,
};

const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The capabilities deploy/kubernetes and deploy/systemd grant, as setpriv spells them.
const CAPABILITIES: &[&str] = &[
    "bpf",
    "perfmon",
    "sys_ptrace",
    "dac_read_search",
    "checkpoint_restore",
    "sys_resource",
    "kill",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn show(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Installs the validator into the user's cache once (pip, from PyPI) and returns its path.
fn kubernetes_validate() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let dir = home
        .join(".cache/mqtrace")
        .join(KUBERNETES_VALIDATE.replace("==", "-"));
    if !dir.join("kubernetes_validate").exists() {
        let out = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&dir)
            .arg(KUBERNETES_VALIDATE)
            .output()
            .expect("python3 with pip");
        assert!(
            out.status.success(),
            "installing {KUBERNETES_VALIDATE}: {}",
            show(&out)
        );
    }
    dir
}

fn validate(files: &[&Path], kubernetes_version: &str) -> Output {
    Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            kubernetes_version,
        ])
        .args(files)
        .env("PYTHONPATH", kubernetes_validate())
        .output()
        .unwrap()
}

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    let manifest = repo().join("deploy/kubernetes/mqtrace.yaml");
    for version in ["1.29.0", "1.37.0"] {
        let out = validate(&[&manifest], version);
        let text = show(&out);
        assert!(out.status.success(), "Kubernetes {version}: {text}");
        for kind in ["namespace", "serviceaccount", "configmap", "daemonset"] {
            assert!(
                text.contains(&format!("passed for resource {kind}/")),
                "{text}"
            );
        }
    }
    // The validator does reject what the API would: a misspelt field.
    let bad =
        std::env::temp_dir().join(format!("mqtrace-bad-manifest-{}.yaml", std::process::id()));
    std::fs::write(
        &bad,
        std::fs::read_to_string(&manifest)
            .unwrap()
            .replace("hostPID: true", "hostPid: true"),
    )
    .unwrap();
    let out = validate(&[&bad], "1.37.0");
    let _ = std::fs::remove_file(&bad);
    assert!(!out.status.success());
    assert!(
        show(&out).contains("'hostPid' was unexpected"),
        "{}",
        show(&out)
    );

    // The ConfigMap's config is one the agent accepts, and the granted capabilities are the
    // ones this file checks the agent with.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let config: String = text
        .split("mqtrace.toml: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    mqtrace::config::FileConfig::parse(&config).unwrap();
    let granted: Vec<String> = CAPABILITIES
        .iter()
        .map(|c| format!("\"{}\"", c.to_uppercase()))
        .collect();
    assert!(
        text.contains(&format!("add: [{}]", granted.join(", "))),
        "the DaemonSet grants {CAPABILITIES:?}"
    );
}

#[test]
fn systemd_unit_verifies() {
    let unit = repo().join("deploy/systemd/mqtrace.service");
    // The unit names /usr/local/bin/mqtrace: in a private mount namespace the built binary is
    // placed there, leaving the host's /usr/local/bin untouched.
    let bin_dir = std::env::temp_dir().join(format!("mqtrace-unit-bin-{}", std::process::id()));
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::copy(mqtrace_bin(), bin_dir.join("mqtrace")).unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /usr/local/bin && systemd-analyze verify \"$1\"")
        .arg(&bin_dir)
        .arg(&unit)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&bin_dir);
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        show(&out)
    );
    let text = std::fs::read_to_string(&unit).unwrap();
    let bounding: Vec<String> = CAPABILITIES
        .iter()
        .map(|c| format!("CAP_{}", c.to_uppercase()))
        .collect();
    assert!(
        text.contains(&format!("CapabilityBoundingSet={}", bounding.join(" "))),
        "the unit keeps {CAPABILITIES:?}"
    );
}

#[test]
fn the_agent_traces_with_only_the_granted_capabilities() {
    // Tracefs must be there already: mounting it is the one step that needs more (the unit
    // does it before, the DaemonSet mounts the host's).
    if !Path::new("/sys/kernel/tracing/events").is_dir() {
        let status = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status()
            .unwrap();
        assert!(status.success(), "mounting tracefs");
    }
    let broker = Broker::start("127.0.0.1").unwrap();
    let output = std::env::temp_dir().join(format!("mqtrace-caps-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&output);
    let bounding = format!(
        "-all,{}",
        CAPABILITIES
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    // Root, but every capability outside the list dropped from the bounding set: what the
    // kernel lets the agent do is what the DaemonSet and the unit grant.
    let mut wrapper = vec!["setpriv", "--bounding-set", &bounding, "--"];
    let bin = mqtrace_bin();
    wrapper.push(bin.to_str().unwrap());
    let agent = Agent::start_wrapped(
        "caps",
        &wrapper,
        &["--comm", "mq-client", "--output", output.to_str().unwrap()],
    );
    let capabilities = |pid: u32, field: &str| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
            .unwrap()
    };
    // CAP_DAC_READ_SEARCH 2, CAP_KILL 5, CAP_SYS_PTRACE 19, CAP_SYS_RESOURCE 24, CAP_PERFMON 38,
    // CAP_BPF 39, CAP_CHECKPOINT_RESTORE 40, as far as this machine itself has them (some VMs
    // run without CAP_SYS_RESOURCE).
    let listed = [2u32, 5, 19, 24, 38, 39, 40]
        .iter()
        .map(|b| 1u64 << b)
        .sum::<u64>();
    let available = capabilities(std::process::id(), "CapBnd:");
    assert_eq!(
        capabilities(agent.pid(), "CapEff:"),
        listed & available,
        "the agent runs with exactly the listed capabilities"
    );

    let out = mqtrace_tests::process::without_terminal(
        client()
            .args(["produce", &broker.namesrv(), "CapsTopic", "10"])
            .stderr(Stdio::null()),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "producer failed");
    let produced = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(produced, 10);
    let sends = || {
        std::fs::read_to_string(&output)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"kind\":\"PRODUCER\""))
            .count()
    };
    wait::holds(Duration::from_secs(15), wait::POLL, || sends() == produced);
    let sends = sends();
    let log = agent.stop();
    mqtrace_tests::spancheck::read_span_file(&output);
    let _ = std::fs::remove_file(&output);
    drop(broker);
    assert_eq!(sends, produced, "a send span per message\n{log}");
    // The client, selected by its command name, was held at exec until looked at, and
    // continued: CAP_KILL is among the capabilities.
    let held = mqtrace_tests::agent::counter_in_log(&log, "processes_held");
    assert!(held >= 1, "the client held at exec\n{log}");
}

/// promtool from Debian's prometheus package (`cargo xtask test` installs it).
fn promtool(args: &[&str], stdin: Option<&str>, dir: &Path) -> Output {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; cargo xtask test installs it)");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

#[test]
fn alert_rules_pass_promtool_and_fire_on_loss() {
    let dir = repo().join("deploy/prometheus");
    let checked = promtool(&["check", "rules", "mqtrace-rules.yaml"], None, &dir);
    assert!(checked.status.success(), "{}", show(&checked));
    assert!(
        show(&checked).contains("SUCCESS: 6 rules found"),
        "{}",
        show(&checked)
    );
    // The cases: each alert fires on its loss, at the time it should, with its words.
    let tested = promtool(&["test", "rules", "mqtrace-rules.test.yaml"], None, &dir);
    assert!(tested.status.success(), "{}", show(&tested));
    assert!(show(&tested).contains("SUCCESS"), "{}", show(&tested));
}

/// The metric names in `text` (`mqtrace_...` words).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("mqtrace_"))
        .map(String::from)
        .collect()
}

/// A real Prometheus (Debian's 2.42) scraping `target` every second, with the alert rules.
struct Prometheus {
    process: Option<mqtrace_tests::rocketmq::Owned>,
    address: std::net::SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("mqtrace-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rules = repo().join("deploy/prometheus/mqtrace-rules.yaml");
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: mqtrace\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let process = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's package; cargo xtask test installs it)");
        Self {
            process: Some(mqtrace_tests::rocketmq::Owned(process)),
            address,
            dir,
        }
    }

    /// An instant query's result vector (empty while Prometheus is not up yet).
    fn query(&self, query: &str) -> Vec<serde_json::Value> {
        let path = format!(
            "/api/v1/query?query={}",
            mqtrace_tests::http::percent_encoded(query)
        );
        mqtrace_tests::http::get(self.address, &path, Duration::from_secs(5))
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Stopped first (killed by pid), then its files removed.
        drop(self.process.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_real_prometheus_scrapes_the_agent_and_the_rules_and_dashboard_name_real_metrics() {
    // A dead collector, so that the export metrics are there too.
    let agent = Agent::start(
        "deploy-prometheus",
        &["--only-selected", "--otlp-endpoint", "http://127.0.0.1:9"],
    );
    // The exposition as Prometheus' own linter reads it.
    let text = agent.metrics_text();
    let linted = promtool(&["check", "metrics"], Some(&text), &repo());
    assert!(
        linted.status.success() && show(&linted).trim().is_empty(),
        "promtool check metrics: {}\n{text}",
        show(&linted)
    );
    assert!(text.contains("# TYPE mqtrace_kernel_records_lost_ring_full_total counter"));
    assert!(text.contains(&format!(
        "mqtrace_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));

    // Every metric the alert rules and the dashboard use is one the agent serves.
    let served = metric_names(&text);
    for file in [
        "deploy/prometheus/mqtrace-rules.yaml",
        "deploy/prometheus/mqtrace-rules.test.yaml",
        "deploy/grafana/mqtrace-dashboard.json",
    ] {
        let used = metric_names(&std::fs::read_to_string(repo().join(file)).unwrap());
        assert!(!used.is_empty(), "{file}");
        let unknown: Vec<&String> = used.difference(&served).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the agent does not serve: {unknown:?}"
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/mqtrace-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 6);

    // A real Prometheus scrapes it, and loads and evaluates the rules.
    let prometheus = Prometheus::start(agent.metrics);
    let scraped = || {
        let up = prometheus.query("up{job=\"mqtrace\"}");
        let build = prometheus.query("mqtrace_build_info");
        let uptime = prometheus.query("mqtrace_agent_uptime_seconds > 0");
        let scraped = up.first().is_some_and(|s| s["value"][1] == "1")
            && build
                .first()
                .is_some_and(|s| s["metric"]["version"] == env!("CARGO_PKG_VERSION"))
            && !uptime.is_empty();
        wait::done_or(scraped, || format!("up {up:?}"))
    };
    let every = Duration::from_millis(500);
    wait::until(
        "Prometheus to scrape the agent",
        Duration::from_secs(60),
        every,
        scraped,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", prometheus.log()));
    let evaluated = || {
        let (_, body) =
            mqtrace_tests::http::get(prometheus.address, "/api/v1/rules", Duration::from_secs(5))
                .unwrap();
        let rules: serde_json::Value = serde_json::from_str(&body).unwrap();
        let healthy = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|group| group["rules"].as_array())
            .flatten()
            .filter(|rule| rule["health"] == "ok")
            .count();
        wait::done_or(healthy == 6, || format!("{healthy} of 6 healthy: {body}"))
    };
    wait::until(
        "every rule evaluated",
        Duration::from_secs(30),
        every,
        evaluated,
    )
    .unwrap();
    agent.stop();
}
