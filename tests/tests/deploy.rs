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

// The Helm chart, deploy/helm/mqtrace: linted, rendered and validated with a real helm, and its
// default rendering held to deploy/kubernetes object for object.

/// The helm the chart is checked with, built from its Go module (helm's releases are not on the
/// package registries this runs next to; the Go module proxy is).
const HELM_MODULE: &str = "helm.sh/helm/v4";
const HELM_VERSION: &str = "v4.3.2";
const CHART: &str = "deploy/helm/mqtrace";
/// The release name and namespace that give deploy/kubernetes' names.
const RELEASE: &str = "mqtrace";
const NAMESPACE: &str = "mqtrace";
/// Every option the chart has off by default.
const ALL_OPTIONS: &str =
    "podMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true";
/// The labels Helm's release bookkeeping adds to every object's metadata, with their values
/// for RELEASE; nothing else in a default rendering may differ from deploy/kubernetes.
const HELM_LABELS: &[(&str, &str)] = &[
    ("helm.sh/chart", "mqtrace-0.1.0"),
    ("app.kubernetes.io/managed-by", "Helm"),
    ("app.kubernetes.io/instance", RELEASE),
];

fn go() -> PathBuf {
    let installed = Path::new("/usr/local/go/bin/go");
    if installed.exists() {
        installed.to_path_buf()
    } else {
        PathBuf::from("go")
    }
}

/// Builds helm into the user's cache once (`go install` from the module proxy, with the Go
/// that is installed: GOTOOLCHAIN=local) and returns its path. The binary is built into a
/// directory of its own and moved into place, so that an interrupted build is never taken for
/// a finished one.
fn helm() -> PathBuf {
    static HELM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HELM.get_or_init(|| {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        let dir = home
            .join(".cache/mqtrace")
            .join(format!("helm-{HELM_VERSION}"));
        let bin = dir.join("helm");
        if !bin.exists() {
            let staging = home.join(".cache/mqtrace").join(format!(
                "helm-{HELM_VERSION}.partial-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(&staging).unwrap();
            let started = std::time::Instant::now();
            let out = Command::new(go())
                .args(["install", &format!("{HELM_MODULE}/cmd/helm@{HELM_VERSION}")])
                .env("GOBIN", &staging)
                .env("GOTOOLCHAIN", "local")
                // The user's flags (a -mod=vendor, say) have no say over a module@version build.
                .env("GOFLAGS", "")
                .current_dir(&staging)
                .output()
                .expect("Go (/usr/local/go/bin/go or go on PATH) to build helm");
            assert!(
                out.status.success(),
                "go install {HELM_MODULE}/cmd/helm@{HELM_VERSION}: {}",
                show(&out)
            );
            eprintln!(
                "built helm {HELM_VERSION} in {:.0?} into {}",
                started.elapsed(),
                dir.display()
            );
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::rename(staging.join("helm"), &bin).unwrap();
            let _ = std::fs::remove_dir_all(&staging);
        }
        // The binary is the module version asked for, not a stale one.
        let out = Command::new(go())
            .args(["version", "-m"])
            .arg(&bin)
            .output()
            .unwrap();
        assert!(
            show(&out).contains(&format!("{HELM_MODULE}\t{HELM_VERSION}")),
            "{}: {}",
            bin.display(),
            show(&out)
        );
        bin
    })
    .clone()
}

/// helm in the repository; lint and template read no cluster.
fn run_helm(args: &[&str]) -> Output {
    Command::new(helm())
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

/// `helm template` of the chart as RELEASE in NAMESPACE, with `extra` arguments.
fn helm_template(extra: &[&str]) -> String {
    let mut args = vec!["template", RELEASE, CHART, "--namespace", NAMESPACE];
    args.extend_from_slice(extra);
    let out = run_helm(&args);
    assert!(out.status.success(), "helm {args:?}: {}", show(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The YAML documents of `text` as JSON values, read by PyYAML (which kubernetes-validate
/// brings into its directory), empty documents left out.
fn yaml_documents(text: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .env("PYTHONPATH", kubernetes_validate())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(text.as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "PyYAML: {}\n{text}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

type Objects = std::collections::BTreeMap<(String, String), serde_json::Value>;

/// Objects by kind and name; a kind and name twice is an error.
fn by_kind_and_name(documents: Vec<serde_json::Value>) -> Objects {
    let mut objects = Objects::new();
    for object in documents {
        let key = (
            object["kind"].as_str().unwrap().to_string(),
            object["metadata"]["name"].as_str().unwrap().to_string(),
        );
        assert!(
            objects.insert(key.clone(), object).is_none(),
            "{key:?} twice"
        );
    }
    objects
}

fn object<'a>(objects: &'a Objects, kind: &str, name: &str) -> &'a serde_json::Value {
    objects
        .get(&(kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", objects.keys()))
}

/// The object as deploy/kubernetes would have it: Helm's labels taken off its metadata (each
/// one checked to be there, with its value) and the config checksum off a pod template.
fn without_helm(mut object: serde_json::Value) -> serde_json::Value {
    let what = format!("{} {}", object["kind"], object["metadata"]["name"]);
    let labels = object["metadata"]["labels"]
        .as_object_mut()
        .unwrap_or_else(|| panic!("{what} has no labels"));
    for (label, value) in HELM_LABELS {
        assert_eq!(
            labels.remove(*label).as_ref().and_then(|v| v.as_str()),
            Some(*value),
            "{what}: label {label}"
        );
    }
    if labels.is_empty() {
        object["metadata"].as_object_mut().unwrap().remove("labels");
    }
    // (pointer_mut, not indexing, which would add the path to objects without a pod template)
    if let Some(annotations) = object
        .pointer_mut("/spec/template/metadata/annotations")
        .and_then(|a| a.as_object_mut())
    {
        let checksum = annotations
            .remove("checksum/config")
            .unwrap_or_else(|| panic!("{what}: no checksum/config on the pods"));
        let checksum = checksum.as_str().unwrap();
        assert!(
            checksum.len() == 64 && checksum.bytes().all(|b| b.is_ascii_hexdigit()),
            "{what}: checksum/config {checksum}"
        );
    }
    object
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap()
}

/// The DaemonSet pods' checksum/config annotation in a rendering.
fn config_checksum(rendered: &str) -> String {
    let objects = by_kind_and_name(yaml_documents(rendered));
    object(&objects, "DaemonSet", RELEASE)["spec"]["template"]["metadata"]["annotations"]
        ["checksum/config"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The ConfigMap's mqtrace.toml in a rendering.
fn rendered_config(rendered: &str) -> String {
    let objects = by_kind_and_name(yaml_documents(rendered));
    object(&objects, "ConfigMap", &format!("{RELEASE}-config"))["data"]["mqtrace.toml"]
        .as_str()
        .unwrap()
        .to_string()
}

fn sha256(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(bytes).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn helm_chart_lints_strictly_with_and_without_the_options() {
    for extra in [&[][..], &["--set", ALL_OPTIONS][..]] {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend_from_slice(extra);
        let out = run_helm(&args);
        assert!(out.status.success(), "helm {args:?}: {}", show(&out));
        assert!(
            show(&out).contains("1 chart(s) linted, 0 chart(s) failed")
                && !show(&out).contains("[WARNING]")
                && !show(&out).contains("[ERROR]"),
            "helm {args:?}: {}",
            show(&out)
        );
    }
    // values.schema.json holds the values to their types and names: what lint, install and
    // upgrade refuse.
    for (set, refusal) in [
        (
            "podMonitor.enabled=yes",
            "at '/podMonitor/enabled': got string, want boolean",
        ),
        ("image.tag=5", "at '/image/tag': got number, want string"),
        (
            "podMonitr.enabled=true",
            "additional properties 'podMonitr' not allowed",
        ),
        ("updateStrategy.type=Recreate", "/updateStrategy/type"),
    ] {
        let out = run_helm(&["lint", "--strict", CHART, "--set", set]);
        assert!(!out.status.success(), "--set {set}: {}", show(&out));
        assert!(show(&out).contains(refusal), "--set {set}: {}", show(&out));
    }
    // The chart's appVersion, the image's default tag, is the agent's version (the workspace's).
    let chart =
        yaml_documents(&std::fs::read_to_string(repo().join(CHART).join("Chart.yaml")).unwrap());
    assert_eq!(chart[0]["apiVersion"], "v2");
    assert_eq!(chart[0]["name"], "mqtrace");
    assert_eq!(chart[0]["version"], "0.1.0");
    assert_eq!(chart[0]["appVersion"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn helm_renderings_validate_against_the_api_schemas() {
    let dir = std::env::temp_dir().join(format!("mqtrace-helm-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let builtin = [
        "namespace/mqtrace",
        "serviceaccount/mqtrace",
        "configmap/mqtrace-config",
        "daemonset/mqtrace",
    ];
    for (name, extra, passed) in [
        ("default", &[][..], &builtin[..]),
        (
            "all-options",
            &["--set", ALL_OPTIONS][..],
            &[&builtin[..], &["configmap/mqtrace-dashboard"]].concat()[..],
        ),
    ] {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, helm_template(extra)).unwrap();
        for version in ["1.29.0", "1.37.0"] {
            let out = validate(&[&file], version);
            let text = show(&out);
            assert!(out.status.success(), "{name}, Kubernetes {version}: {text}");
            assert!(
                !text.contains("ERROR"),
                "{name}, Kubernetes {version}: {text}"
            );
            for resource in passed {
                assert!(
                    text.contains(&format!("passed for resource {resource} ")),
                    "{name}, Kubernetes {version}: {resource}: {text}"
                );
            }
            // Every object is one of those, or one of the Prometheus Operator's, which the
            // Kubernetes schemas do not have: the validator skips those with a warning, so they
            // are checked against deploy/prometheus below instead.
            let objects = text
                .lines()
                .filter(|l| l.starts_with("INFO ") || l.starts_with("WARN "))
                .count();
            let custom = if name == "default" { 0 } else { 2 };
            assert_eq!(
                objects,
                passed.len() + custom,
                "{name}, Kubernetes {version}: {text}"
            );
            for kind in ["PodMonitor", "PrometheusRule"] {
                assert_eq!(
                    text.contains(&format!(
                        "Couldn't find schema for kind {kind} with api version monitoring.coreos.com/v1"
                    )),
                    custom > 0,
                    "{name}, Kubernetes {version}: {text}"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    // The custom resources are deploy/prometheus' PodMonitor and its rules wrapped in a
    // PrometheusRule; the dashboard ConfigMap carries deploy/grafana's file for Grafana's
    // sidecar.
    let objects = by_kind_and_name(yaml_documents(&helm_template(&["--set", ALL_OPTIONS])));
    let podmonitor = yaml_documents(
        &std::fs::read_to_string(repo().join("deploy/prometheus/podmonitor.yaml")).unwrap(),
    )
    .remove(0);
    assert_eq!(
        without_helm(object(&objects, "PodMonitor", RELEASE).clone()),
        podmonitor,
        "the chart's PodMonitor is deploy/prometheus/podmonitor.yaml"
    );
    let rules = yaml_documents(
        &std::fs::read_to_string(repo().join("deploy/prometheus/mqtrace-rules.yaml")).unwrap(),
    )
    .remove(0);
    let rule = without_helm(object(&objects, "PrometheusRule", RELEASE).clone());
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        rule["metadata"]["labels"],
        serde_json::json!({"app.kubernetes.io/name": "mqtrace"})
    );
    assert_eq!(
        rule["spec"],
        serde_json::json!({"groups": rules["groups"]}),
        "the PrometheusRule holds deploy/prometheus/mqtrace-rules.yaml's groups"
    );
    assert_eq!(rules["groups"][0]["rules"].as_array().unwrap().len(), 6);
    let dashboard = object(&objects, "ConfigMap", &format!("{RELEASE}-dashboard"));
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(dashboard["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        dashboard["data"]["mqtrace-dashboard.json"]
            .as_str()
            .unwrap(),
        std::fs::read_to_string(repo().join("deploy/grafana/mqtrace-dashboard.json")).unwrap(),
        "the dashboard ConfigMap holds deploy/grafana/mqtrace-dashboard.json as it is"
    );
    // Without the options, none of them.
    let default = by_kind_and_name(yaml_documents(&helm_template(&[])));
    for (kind, name) in [
        ("PodMonitor", RELEASE.to_string()),
        ("PrometheusRule", RELEASE.to_string()),
        ("ConfigMap", format!("{RELEASE}-dashboard")),
    ] {
        assert!(
            !default.contains_key(&(kind.to_string(), name.clone())),
            "{kind} {name}"
        );
    }
}

#[test]
fn helm_default_rendering_equals_the_kustomize_base() {
    // deploy/kubernetes' kustomization only lists mqtrace.yaml, with no transformer: its
    // output is that file's objects.
    let kustomization = yaml_documents(
        &std::fs::read_to_string(repo().join("deploy/kubernetes/kustomization.yaml")).unwrap(),
    );
    assert_eq!(
        kustomization,
        vec![serde_json::json!({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": ["mqtrace.yaml"],
        })]
    );
    let kustomize = by_kind_and_name(yaml_documents(
        &std::fs::read_to_string(repo().join("deploy/kubernetes/mqtrace.yaml")).unwrap(),
    ));
    let chart: Objects = by_kind_and_name(yaml_documents(&helm_template(&[])))
        .into_iter()
        .map(|(key, object)| (key, without_helm(object)))
        .collect();
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        kustomize.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (key, object) in &kustomize {
        assert!(
            chart[key] == *object,
            "{key:?} differs:\nchart:\n{}\nkustomize:\n{}",
            pretty(&chart[key]),
            pretty(object)
        );
    }
}

#[test]
fn helm_release_name_and_namespace_reach_every_object() {
    // Another release in another namespace: every object named after it and placed in it, and
    // the references between them (volume, ServiceAccount, selectors) still meeting.
    let rendered = {
        let out = run_helm(&[
            "template",
            "tracing",
            CHART,
            "--namespace",
            "observability",
            "--set",
            ALL_OPTIONS,
        ]);
        assert!(out.status.success(), "{}", show(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let objects = by_kind_and_name(yaml_documents(&rendered));
    let names: Vec<(&str, &str)> = objects
        .keys()
        .map(|(kind, name)| (kind.as_str(), name.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("ConfigMap", "tracing-mqtrace-config"),
            ("ConfigMap", "tracing-mqtrace-dashboard"),
            ("DaemonSet", "tracing-mqtrace"),
            ("Namespace", "observability"),
            ("PodMonitor", "tracing-mqtrace"),
            ("PrometheusRule", "tracing-mqtrace"),
            ("ServiceAccount", "tracing-mqtrace"),
        ]
    );
    for ((kind, name), object) in &objects {
        if kind != "Namespace" {
            assert_eq!(
                object["metadata"]["namespace"], "observability",
                "{kind} {name}"
            );
        }
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/instance"], "tracing",
            "{kind} {name}"
        );
    }
    let daemonset = object(&objects, "DaemonSet", "tracing-mqtrace");
    let pod = &daemonset["spec"]["template"];
    assert_eq!(pod["spec"]["serviceAccountName"], "tracing-mqtrace");
    assert_eq!(
        pod["spec"]["volumes"][0]["configMap"]["name"],
        "tracing-mqtrace-config"
    );
    assert_eq!(
        daemonset["spec"]["selector"]["matchLabels"],
        pod["metadata"]["labels"]
    );
    assert_eq!(
        object(&objects, "PodMonitor", "tracing-mqtrace")["spec"]["selector"]["matchLabels"],
        pod["metadata"]["labels"]
    );

    // In a namespace made beforehand, with an existing ServiceAccount: neither rendered.
    let objects = by_kind_and_name(yaml_documents(&helm_template(&[
        "--set",
        "namespace.create=false,serviceAccount.create=false,serviceAccount.name=tracer",
    ])));
    assert!(
        !objects
            .keys()
            .any(|(kind, _)| kind == "Namespace" || kind == "ServiceAccount")
    );
    assert_eq!(
        object(&objects, "DaemonSet", RELEASE)["spec"]["template"]["spec"]["serviceAccountName"],
        "tracer"
    );
}

#[test]
fn helm_config_change_rolls_the_pods() {
    let default = helm_template(&[]);
    // The checksum is the ConfigMap as rendered: Helm prints each template's text after its
    // Source line.
    let configmap = helm_template(&["--show-only", "templates/configmap.yaml"]);
    let text = configmap
        .split_once("# Source: mqtrace/templates/configmap.yaml\n")
        .unwrap()
        .1;
    let text = format!("{}\n", text.trim_end_matches('\n'));
    assert_eq!(config_checksum(&default), sha256(text.as_bytes()), "{text}");

    // The default config is one the agent accepts, serving metrics on the port the pods
    // declare and are probed and scraped on.
    let config = rendered_config(&default);
    let parsed = mqtrace::config::FileConfig::parse(&config).unwrap();
    assert_eq!(parsed.metrics_address.unwrap().port(), 9464, "{config}");
    assert_eq!(parsed.all, Some(true));

    // Another config: another checksum, so `helm upgrade` replaces the pods.
    let values =
        std::env::temp_dir().join(format!("mqtrace-helm-values-{}.yaml", std::process::id()));
    let changed = config.replace("journal_messages = 20000", "journal_messages = 50000");
    assert_ne!(changed, config);
    std::fs::write(
        &values,
        format!(
            "config: |\n{}",
            changed
                .lines()
                .map(|l| format!("  {l}\n"))
                .collect::<String>()
        ),
    )
    .unwrap();
    let rendered = helm_template(&["--values", values.to_str().unwrap()]);
    let _ = std::fs::remove_file(&values);
    assert_eq!(rendered_config(&rendered), changed);
    assert_eq!(
        mqtrace::config::FileConfig::parse(&changed)
            .unwrap()
            .journal_messages,
        Some(50000)
    );
    assert_ne!(config_checksum(&rendered), config_checksum(&default));
    // A change elsewhere leaves the checksum as it was (the pods roll for it anyway, their spec
    // changing).
    let retagged = helm_template(&["--set", "image.tag=0.1.1"]);
    assert!(retagged.contains("image: mqtrace:0.1.1"));
    assert_eq!(config_checksum(&retagged), config_checksum(&default));
}

#[test]
fn helm_chart_copies_of_the_rules_and_dashboard_equal_the_originals() {
    // Helm reads no file outside the chart: these are copies, kept byte for byte.
    for (copy, original) in [
        (
            "files/mqtrace-rules.yaml",
            "deploy/prometheus/mqtrace-rules.yaml",
        ),
        (
            "files/mqtrace-dashboard.json",
            "deploy/grafana/mqtrace-dashboard.json",
        ),
    ] {
        let copy = repo().join(CHART).join(copy);
        assert!(
            std::fs::read(&copy).unwrap() == std::fs::read(repo().join(original)).unwrap(),
            "{} differs from {original}: cp {original} {}",
            copy.display(),
            copy.display()
        );
    }
    let files: Vec<String> = std::fs::read_dir(repo().join(CHART).join("files"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
}
