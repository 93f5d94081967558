//! The deployment artefacts in `deploy/`, checked with real tools: the Kubernetes manifests
//! against the API schemas (kubernetes-validate from PyPI, installed here on first use), the
//! systemd unit with `systemd-analyze verify`, and the agent started as root with only the
//! capabilities the manifests and the unit grant, tracing a real producer.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use mqtrace_tests::{
    agent::{Agent, mqtrace_bin},
    rocketmq::{Broker, client},
};

const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The capabilities deploy/kubernetes and deploy/systemd grant, as setpriv spells them.
const CAPABILITIES: &[&str] = &[
    "bpf",
    "perfmon",
    "sys_ptrace",
    "dac_read_search",
    "sys_resource",
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
    // CAP_DAC_READ_SEARCH 2, CAP_SYS_PTRACE 19, CAP_SYS_RESOURCE 24, CAP_PERFMON 38, CAP_BPF 39,
    // as far as this machine itself has them (some VMs run without CAP_SYS_RESOURCE).
    let listed = [2u32, 19, 24, 38, 39]
        .iter()
        .map(|b| 1u64 << b)
        .sum::<u64>();
    let available = capabilities(std::process::id(), "CapBnd:");
    assert_eq!(
        capabilities(agent.pid(), "CapEff:"),
        listed & available,
        "the agent runs with exactly the listed capabilities"
    );

    let out = client()
        .args(["produce", &broker.namesrv(), "CapsTopic", "10"])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "producer failed");
    let produced = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(produced, 10);
    let started = Instant::now();
    let sends = loop {
        let sends = std::fs::read_to_string(&output)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"kind\":\"PRODUCER\""))
            .count();
        if sends == produced || started.elapsed() > Duration::from_secs(15) {
            break sends;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = agent.stop();
    mqtrace_tests::spancheck::read_span_file(&output);
    let _ = std::fs::remove_file(&output);
    drop(broker);
    assert_eq!(sends, produced, "a send span per message\n{log}");
}
