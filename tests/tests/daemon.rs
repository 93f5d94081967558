//! The daemon steered while it runs: the real `mqtrace run` with its kernel probes, the real
//! `mqtrace enable|disable|list|status|trace` over its control socket, and the real Rust
//! producer and consumer against the real broker. Needs root and the peers (`cargo xtask test`).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mqtrace_tests::{
    agent::{Agent, final_counters, mqtrace_bin},
    process::{Driven, ScratchFile},
    rocketmq::{Broker, Owned, client, client_path},
    spancheck::read_span_file,
    wait,
};

/// The tests share fixed broker ports: they take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn ids(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["msg_id"].as_str().map(String::from))
        .collect()
}

/// Message IDs with a send span in the agent's output file.
fn sent_ids_in(output: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(output)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|s| s["kind"] == "PRODUCER")
        .filter_map(|s| {
            s["attributes"]["messaging.message.id"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

/// Waits until every id in `expected` has a send span in `output`.
fn wait_for_sends(output: &Path, expected: &[String], agent: &Agent) {
    let every_send = || {
        let seen = sent_ids_in(output);
        let missing: Vec<&String> = expected.iter().filter(|id| !seen.contains(*id)).collect();
        wait::done_or(missing.is_empty(), || {
            format!("no send span for {missing:?}")
        })
    };
    wait::until(
        "every send span",
        Duration::from_secs(15),
        wait::POLL,
        every_send,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_text()));
}

/// A producer of `count` messages that pauses before every `every`, driven over stdin.
fn paused_producer(namesrv: &str, topic: &str, count: usize, every: usize) -> Driven {
    let mut command = client();
    command
        .args(["produce", namesrv, topic, &count.to_string()])
        .args(["--pause-every", &every.to_string()])
        .stderr(Stdio::null());
    Driven::spawn(command).unwrap()
}

fn produce(namesrv: &str, topic: &str, count: usize) -> Vec<String> {
    let out = client()
        .args(["produce", namesrv, topic, &count.to_string()])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "producer failed");
    ids(&String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect::<Vec<_>>())
}

const POD_UID: &str = "8d2c7e3a-1b4f-4c9e-9a61-2f0d5b7c8e91";
const CONTAINER_ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A cgroup (v2) made for a test, removed when it ends: a top cgroup (what the rule names)
/// with, below it, the pod and container cgroups a kubelet (systemd driver) makes.
struct TestCgroup {
    /// Created, outermost first.
    dirs: Vec<PathBuf>,
    /// The top cgroup, as /proc/PID/cgroup spells it.
    relative: String,
}

impl TestCgroup {
    fn create() -> Self {
        let mount = mqtrace::sources::kernel::procfs::cgroup_v2_mount()
            .expect("this machine mounts cgroup v2");
        let relative = format!("/mqtrace-test-{}", std::process::id());
        let top = mount.join(relative.trim_start_matches('/'));
        let pod = top.join(format!(
            "kubepods-besteffort-pod{}.slice",
            POD_UID.replace('-', "_")
        ));
        let container = pod.join(format!("cri-containerd-{CONTAINER_ID}.scope"));
        let dirs = vec![top, pod, container];
        for dir in &dirs {
            std::fs::create_dir_all(dir).unwrap();
        }
        Self { dirs, relative }
    }

    /// `mq-client ARGS`, moved into this cgroup before it execs.
    fn client(&self, args: &[&str]) -> Command {
        use std::os::unix::process::CommandExt;
        let procs = std::ffi::CString::new(
            self.dirs
                .last()
                .unwrap()
                .join("cgroup.procs")
                .to_string_lossy()
                .into_owned(),
        )
        .unwrap();
        let mut command = Command::new(client_path());
        command.args(args).stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Its processes have exited by now; empty cgroups are removed with rmdir, innermost first.
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn selection_changes_apply_at_once_to_running_and_later_processes() {
    let _turn = turn();
    let broker = Broker::start("127.0.0.1").unwrap();
    let namesrv = broker.namesrv();
    let output = std::env::temp_dir().join(format!("mqtrace-daemon-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&output);
    let agent = Agent::start(
        "daemon-select",
        &["--only-selected", "--output", output.to_str().unwrap()],
    );

    // A producer running before and after each change, never restarted.
    let mut producer = paused_producer(&namesrv, "DaemonSelect", 30, 10);
    let pid = producer.pid().to_string();
    producer.expect_line(r#"{"pause":0}"#).unwrap();
    let said = agent.control_ok(&["enable", "--pid", &pid]);
    assert_eq!(said.trim(), format!("tracing pid {pid}"));
    producer.say("").unwrap();
    let traced_first = ids(&producer.lines_until(r#"{"pause":10}"#).unwrap());
    wait_for_sends(&output, &traced_first, &agent);

    agent.control_ok(&["disable", "--pid", &pid]);
    producer.say("").unwrap();
    let untraced = ids(&producer.lines_until(r#"{"pause":20}"#).unwrap());

    agent.control_ok(&["enable", "--pid", &pid]);
    // Its connection to the broker, open since the first phase, is followed again at once.
    let listing: serde_json::Value =
        serde_json::from_str(&agent.control_ok(&["list", "--json"])).unwrap();
    let listed = listing["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"].as_u64() == pid.parse().ok())
        .unwrap_or_else(|| panic!("pid {pid} not listed: {listing}"));
    assert_eq!(listed["selection"], "by_pid");
    assert!(
        listed["connections"].as_u64().unwrap() >= 1,
        "its open connections are picked up: {listing}"
    );
    producer.say("").unwrap();
    let traced_again = ids(&producer.finish().unwrap());
    assert_eq!(
        (traced_first.len(), untraced.len(), traced_again.len()),
        (10, 10, 10)
    );
    wait_for_sends(&output, &traced_again, &agent);
    let sent = sent_ids_in(&output);
    let leaked: Vec<&String> = untraced.iter().filter(|id| sent.contains(*id)).collect();
    assert!(
        leaked.is_empty(),
        "spans for messages sent while disabled: {leaked:?}"
    );

    // A command-name rule catches a process that starts after it.
    let said = agent.control_ok(&["enable", "--comm", "mq-client"]);
    assert!(said.contains("comm mq-client"), "{said}");
    let by_comm = produce(&namesrv, "DaemonComm", 5);
    wait_for_sends(&output, &by_comm, &agent);
    let listing = agent.control_ok(&["list"]);
    assert!(listing.contains("enable comm mq-client"), "{listing}");

    // A cgroup rule: a process started below the cgroup is traced, one outside is not. The
    // inside one sits in cgroups shaped as a kubelet makes them, with a pod's environment:
    // its spans carry the pod's metadata.
    agent.control_ok(&["disable", "--comm", "mq-client"]);
    let cgroup = TestCgroup::create();
    agent.control_ok(&["enable", "--cgroup", &cgroup.relative]);
    let outside = produce(&namesrv, "DaemonCgroup", 5);
    let out = cgroup
        .client(&["produce", &namesrv, "DaemonCgroup", "5"])
        .env("HOSTNAME", "orders-7d9f8-x2x4q")
        .env("POD_NAMESPACE", "shop")
        .output()
        .unwrap();
    assert!(out.status.success(), "producer in the cgroup failed");
    let inside = ids(&String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect::<Vec<_>>());
    assert_eq!(inside.len(), 5);
    wait_for_sends(&output, &inside, &agent);
    let sent = sent_ids_in(&output);
    assert!(
        outside.iter().all(|id| !sent.contains(id)),
        "a process outside the cgroup was traced"
    );
    let pod_span = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|s| s["attributes"]["messaging.message.id"] == inside[0].as_str())
        .unwrap();
    let resource = &pod_span["resource"];
    assert_eq!(resource["k8s.pod.uid"], POD_UID, "{resource}");
    assert_eq!(resource["k8s.pod.name"], "orders-7d9f8-x2x4q", "{resource}");
    assert_eq!(resource["k8s.namespace.name"], "shop");
    assert_eq!(resource["container.id"], CONTAINER_ID);

    // Errors a user meets: an unknown pid, and a user who may not use the socket.
    let out = agent.control(&["enable", "--pid", "4194304"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no process with pid 4194304"), "{stderr}");
    let out = as_nobody(&["status", "--socket", agent.socket.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permission denied on"), "{stderr}");

    let log = agent.stop();
    read_span_file(&output);
    let _ = std::fs::remove_file(&output);
    drop(broker);
    assert!(log.contains("mqtrace: stopped"), "{log}");
}

/// Runs the mqtrace binary as user nobody (a copy readable by all: the build directory may
/// not be).
fn as_nobody(args: &[&str]) -> std::process::Output {
    as_user(&["--clear-groups"], args)
}

/// Runs the mqtrace binary as user nobody with these further setpriv options (groups,
/// capabilities).
fn as_user(setpriv: &[&str], args: &[&str]) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!("mqtrace-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("mqtrace");
    std::fs::copy(mqtrace_bin(), &bin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534"])
        .args(setpriv)
        .arg(&bin)
        .args(args)
        .output()
        .expect("setpriv");
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[test]
fn the_control_socket_serves_group_members_and_refuses_others_by_peer_credentials() {
    let _turn = turn();
    let group = "4242";
    let agent = Agent::start(
        "daemon-peers",
        &["--only-selected", "--control-group", group],
    );
    let socket = agent.socket.to_str().unwrap().to_string();
    // A member of the group (supplementary) is served.
    let member = as_user(&["--groups", group], &["status", "--socket", &socket]);
    assert!(
        member.status.success(),
        "a member is served: {}",
        String::from_utf8_lossy(&member.stderr)
    );
    // A non-member that gets past the file's mode (CAP_DAC_OVERRIDE) is refused all the same.
    let outsider = as_user(
        &[
            "--clear-groups",
            "--inh-caps",
            "+dac_override",
            "--ambient-caps",
            "+dac_override",
        ],
        &["status", "--socket", &socket],
    );
    assert!(!outsider.status.success());
    let stderr = String::from_utf8_lossy(&outsider.stderr);
    assert!(
        stderr.contains("refused: uid 65534 is neither root nor in group 4242"),
        "{stderr}"
    );
}

#[test]
fn rules_survive_a_restart_of_the_daemon() {
    let _turn = turn();
    let state = std::env::temp_dir().join(format!("mqtrace-rules-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&state);
    let sleeper = Owned(Command::new("sleep").arg("120").spawn().unwrap());
    let pid = sleeper.0.id().to_string();
    let args = ["--all", "--state-file", state.to_str().unwrap()];
    let agent = Agent::start("daemon-rules", &args);
    agent.control_ok(&["disable", "--pid", &pid]);
    agent.control_ok(&["disable", "--comm", "mqtrace-rules-x"]);
    agent.stop();
    let agent = Agent::start("daemon-rules", &args);
    let listing = agent.control_ok(&["list"]);
    let _ = std::fs::remove_file(&state);
    assert!(listing.contains("mqtrace-rules-x"), "{listing}");
    let line = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(pid.as_str()))
        .unwrap_or_else(|| panic!("pid {pid} listed again: {listing}"));
    assert!(line.contains("excluded"), "{line}");
}

#[test]
fn idle_connections_to_the_metrics_port_stop_nothing() {
    let _turn = turn();
    // This test holds thousands of sockets itself.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a valid pointer.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let agent = Agent::start("daemon-idle", &["--only-selected"]);
    let idle: Vec<std::net::TcpStream> = (0..2000)
        .filter_map(|_| std::net::TcpStream::connect(agent.metrics).ok())
        .collect();
    assert_eq!(idle.len(), 2000, "connected");
    let started = Instant::now();
    agent.control_ok(&["status"]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "status answered in {:?}",
        started.elapsed()
    );
    // The idle ones get their deadline; /metrics answers again while they are still open.
    let answered = || {
        let counters = std::panic::catch_unwind(|| agent.scrape()).unwrap_or_default();
        (!counters.is_empty())
            .then_some(counters)
            .ok_or_else(|| "no answer".to_string())
    };
    let counters = wait::until(
        "/metrics to answer again",
        Duration::from_secs(15),
        wait::POLL,
        answered,
    )
    .unwrap();
    assert!(counters.contains_key("mqtrace_agent_uptime_seconds"));
    drop(idle);
}

#[test]
fn errors_name_what_is_wrong_and_exit_non_zero() {
    // Not root: the daemon refuses before touching the kernel.
    let out = as_nobody(&[
        "run",
        "--all",
        "--control-socket",
        "/tmp/mqtrace-nobody.sock",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("run it as root, or grant CAP_BPF and CAP_PERFMON")
            && stderr.contains("uid 65534"),
        "{stderr}"
    );

    // No daemon.
    let out = Command::new(mqtrace_bin())
        .args(["status", "--socket", "/tmp/mqtrace-no-such-daemon.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "no mqtrace daemon is running: nothing listens on /tmp/mqtrace-no-such-daemon.sock"
        ),
        "{stderr}"
    );

    // A config file with a misspelt key, then a value of the wrong type.
    let config = std::env::temp_dir().join(format!("mqtrace-bad-{}.toml", std::process::id()));
    for (text, line, key) in [
        (
            "all = true\n\nring_bufer_bytes = 4096\n",
            "line 3",
            "ring_bufer_bytes",
        ),
        (
            "journal_messages = \"many\"\n",
            "line 1",
            "journal_messages",
        ),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = Command::new(mqtrace_bin())
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(line) && stderr.contains(key),
            "{text:?}: {stderr}"
        );
    }
    let _ = std::fs::remove_file(&config);
}

#[test]
fn status_metrics_and_trace_agree_with_a_known_run() {
    let _turn = turn();
    let broker = Broker::start("127.0.0.1").unwrap();
    let namesrv = broker.namesrv();
    let dir = std::env::temp_dir();
    let output = dir.join(format!("mqtrace-status-{}.jsonl", std::process::id()));
    let config = dir.join(format!("mqtrace-status-{}.toml", std::process::id()));
    // Started from a config file: only the test's clients, by command name.
    std::fs::write(
        &config,
        format!(
            "comms = [\"mq-client\"]\noutput = {:?}\n",
            output.to_str().unwrap()
        ),
    )
    .unwrap();
    let agent = Agent::start("daemon-status", &["--config", config.to_str().unwrap()]);
    let messages = 20;
    let produced = produce(&namesrv, "DaemonTrace", messages);
    let consumed = client()
        .args([
            "consume",
            &namesrv,
            "DaemonTrace",
            "daemon_group",
            &messages.to_string(),
            "120",
        ])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(consumed.status.success(), "consumer failed");

    // Every message's journey: sent, received, and settled (the consumer commits its offsets).
    let journey = |id: &str| -> serde_json::Value {
        serde_json::from_str(&agent.control_ok(&["trace", "--msg-id", id, "--json"])).unwrap()
    };
    let settled = || {
        for id in &produced {
            let found = journey(id);
            let actions: Vec<String> = found[0]["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["action"].as_str().unwrap().to_string())
                .collect();
            if !actions.iter().any(|a| a.starts_with("settle")) {
                return Err(format!("{id}: no settle step: {found}"));
            }
            assert_eq!(actions[0], "send", "{id}: {actions:?}");
            assert!(actions.contains(&"receive".to_string()), "{actions:?}");
            assert_eq!(found[0]["topic"], "DaemonTrace");
        }
        Ok(())
    };
    let every = Duration::from_millis(500);
    wait::until(
        "every journey settled",
        Duration::from_secs(20),
        every,
        settled,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_text()));
    let timeline = agent.control_ok(&["trace", "--msg-id", &produced[7]]);
    assert!(
        timeline.starts_with(&format!(
            "message {}  topic DaemonTrace  tags TagA  keys key-7",
            produced[7]
        )),
        "{timeline}"
    );
    assert!(
        timeline.contains("receive") && timeline.contains("group daemon_group"),
        "{timeline}"
    );
    // Each step names the process and this host.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        timeline.matches(&format!("]@{} -> ", host.trim())).count(),
        timeline.lines().filter(|l| l.starts_with("  ")).count(),
        "{timeline}"
    );
    assert!(timeline.contains(" mq-client["), "{timeline}");
    let by_key: serde_json::Value =
        serde_json::from_str(&agent.control_ok(&["trace", "--key", "key-7", "--json"])).unwrap();
    assert_eq!(by_key[0]["message_id"].as_str(), Some(produced[7].as_str()));
    let by_topic: serde_json::Value = serde_json::from_str(&agent.control_ok(&[
        "trace",
        "--topic",
        "DaemonTrace",
        "--since",
        "10m",
        "--limit",
        "100",
        "--json",
    ]))
    .unwrap();
    let found: BTreeSet<&str> = by_topic
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(found, produced.iter().map(String::as_str).collect());

    // status and /metrics: the same counters, and the known counts. The metrics snapshot is
    // renewed every second: wait until one renewal after the traffic shows them alike.
    let alike = || {
        let status: serde_json::Value =
            serde_json::from_str(&agent.control_ok(&["status", "--json"])).unwrap();
        let metrics = agent.scrape();
        let mut compared = 0;
        let mut differing = Vec::new();
        let mut leaves = vec![("mqtrace".to_string(), &status["counters"])];
        while let Some((name, value)) = leaves.pop() {
            match value {
                serde_json::Value::Object(map) => {
                    leaves.extend(map.iter().map(|(k, v)| (format!("{name}_{k}"), v)))
                }
                serde_json::Value::Number(n) if name != "mqtrace_agent_uptime_seconds" => {
                    // Counters are served with `_total`, gauges as named.
                    let served = metrics
                        .get(&format!("{name}_total"))
                        .or_else(|| metrics.get(&name));
                    if served != n.as_f64().as_ref() {
                        differing.push(format!("{name}: status {n}, /metrics {served:?}"));
                    }
                    compared += 1;
                }
                _ => {}
            }
        }
        if differing.is_empty() {
            Ok((status, compared))
        } else {
            Err(format!("they differ: {differing:#?}"))
        }
    };
    let (status, compared) = wait::until(
        "status and /metrics alike",
        Duration::from_secs(10),
        wait::POLL,
        alike,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let counters = &status["counters"];
    assert!(compared > 30, "only {compared} counters compared");
    let count = |pointer: &str| counters.pointer(pointer).and_then(|v| v.as_u64()).unwrap();
    assert_eq!(count("/pipeline/correlation/sends"), messages as u64);
    assert!(count("/pipeline/correlation/receives") >= messages as u64);
    assert!(count("/pipeline/correlation/settles") >= messages as u64);
    assert_eq!(
        count("/pipeline/spans"),
        count("/pipeline/correlation/sends")
            + count("/pipeline/correlation/receives")
            + count("/pipeline/correlation/settles")
            + count("/pipeline/correlation/timeouts")
    );
    assert_eq!(count("/export/spans_written"), count("/pipeline/spans"));
    assert_eq!(count("/kernel/records_lost_ring_full"), 0);
    assert_eq!(count("/pipeline/streams/gaps"), 0);
    assert_eq!(count("/pipeline/journal/messages"), messages as u64);
    let human = agent.control_ok(&["status"]);
    assert!(
        human.contains(&format!("  sends                  {messages}\n")),
        "{human}"
    );
    assert!(human.contains("tracing selected processes"), "{human}");

    // Quiet by default: nothing was lost, so nothing but the start and stop lines.
    let log = agent.stop();
    let unexpected: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("mqtrace: "))
        .collect();
    assert!(unexpected.is_empty(), "{log}");
    let _ = std::fs::remove_file(&output);
    let _ = std::fs::remove_file(&config);
    drop(broker);
}

#[test]
fn in_trace_all_mode_disable_excludes_a_process_until_enabled_again() {
    let _turn = turn();
    let broker = Broker::start("127.0.0.1").unwrap();
    let namesrv = broker.namesrv();
    let output = std::env::temp_dir().join(format!("mqtrace-exclude-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&output);
    let agent = Agent::start("daemon-exclude", &["--output", output.to_str().unwrap()]);
    let mut producer = paused_producer(&namesrv, "DaemonExclude", 20, 10);
    let pid = producer.pid().to_string();
    producer.expect_line(r#"{"pause":0}"#).unwrap();
    agent.control_ok(&["disable", "--pid", &pid]);
    let listing: serde_json::Value =
        serde_json::from_str(&agent.control_ok(&["list", "--json"])).unwrap();
    assert_eq!(listing["mode"], "all");
    assert!(
        listing["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"].as_u64() == pid.parse().ok() && p["selection"] == "excluded"),
        "{listing}"
    );
    producer.say("").unwrap();
    let excluded = ids(&producer.lines_until(r#"{"pause":10}"#).unwrap());
    agent.control_ok(&["enable", "--pid", &pid]);
    producer.say("").unwrap();
    let readmitted = ids(&producer.finish().unwrap());
    wait_for_sends(&output, &readmitted, &agent);
    let sent = sent_ids_in(&output);
    assert!(
        excluded.iter().all(|id| !sent.contains(id)),
        "spans for messages sent while excluded"
    );
    agent.stop();
    read_span_file(&output);
    let _ = std::fs::remove_file(&output);
    drop(broker);
}

#[test]
fn thirty_kilobyte_keys_stay_within_the_memory_budget() {
    let _turn = turn();
    let budget_mib = 128;
    let messages = 5000;
    let broker = Broker::start("127.0.0.1").unwrap();
    let agent = Agent::start(
        "daemon-memory",
        &["--all", "--memory-budget-mib", &budget_mib.to_string()],
    );
    let topic = "MemoryKeys";
    broker.make_topic(topic);
    let out = Command::new(env!("CARGO_BIN_EXE_raw-producer"))
        .args(["127.0.0.1:10911", topic, &messages.to_string(), "30000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "raw-producer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        messages
    );
    let sends = || agent.scrape()["mqtrace_pipeline_correlation_sends_total"];
    wait::holds(Duration::from_secs(30), wait::POLL, || {
        sends() >= (messages + 1) as f64
    });
    let counters = agent.scrape();
    let peak_mib = agent.peak_rss_mib();
    drop(broker);
    assert_eq!(
        counters["mqtrace_pipeline_correlation_sends_total"],
        (messages + 1) as f64,
        "every send seen"
    );
    let journal_share = (budget_mib << 20) as f64 * 0.30;
    assert!(
        counters["mqtrace_pipeline_journal_bytes"] <= journal_share,
        "{counters:?}"
    );
    assert!(counters["mqtrace_pipeline_journal_messages_evicted_total"] > 0.0);
    eprintln!(
        "{messages} messages with 30 KB keys: agent peak RSS {peak_mib:.0} MiB, budget \
         {budget_mib} MiB, journal {:.0} MiB holding {} messages",
        counters["mqtrace_pipeline_journal_bytes"] / (1 << 20) as f64,
        counters["mqtrace_pipeline_journal_messages"]
    );
    assert!(
        peak_mib < budget_mib as f64,
        "peak resident memory {peak_mib:.0} MiB, budget {budget_mib} MiB"
    );
}

/// Connections of `pid` the kernel copies now, as `mqtrace list` shows them.
fn listed_connections(agent: &Agent, pid: u32) -> Option<usize> {
    agent
        .control_ok(&["list"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(pid.to_string().as_str()))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

#[test]
fn sockets_closed_unseen_are_swept_from_the_socket_table() {
    let _turn = turn();
    // A process replaces its sockets' fds with dup2, which the close probe does not see.
    let script = r#"
import os, socket, sys
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
print("ready", flush=True); sys.stdin.readline()
client = socket.create_connection(listener.getsockname()); server, _ = listener.accept()
print("connected", flush=True); sys.stdin.readline()
null = os.open("/dev/null", os.O_RDONLY)
os.dup2(null, client.fileno()); os.dup2(null, server.fileno())
print("replaced", flush=True); sys.stdin.readline()
"#;
    let mut command = Command::new("python3");
    command.args(["-c", script]);
    let mut process = Driven::spawn(command).unwrap();
    process.expect_line("ready").unwrap();
    let pid = process.pid();
    let agent = Agent::start("daemon-sweep", &["--pid", &pid.to_string()]);
    process.say("go").unwrap();
    process.expect_line("connected").unwrap();
    let agent = &agent;
    let tracked = |want: usize| {
        move || match listed_connections(agent, pid) {
            Some(n) if n == want => Ok(()),
            other => Err(format!("listed {other:?}")),
        }
    };
    let every = Duration::from_millis(100);
    wait::until(
        "both ends tracked",
        Duration::from_secs(10),
        every,
        tracked(2),
    )
    .unwrap();
    process.say("go").unwrap();
    process.expect_line("replaced").unwrap();
    let every = Duration::from_millis(500);
    wait::until(
        "the stale sockets swept",
        Duration::from_secs(25),
        every,
        tracked(0),
    )
    .unwrap();
    assert!(agent.scrape()["mqtrace_agent_stale_sockets_swept_total"] >= 2.0);
    process.say("go").unwrap();
}

/// A pod as the node sees it: a cgroup in the kubelet's layout (cgroupfs driver) and a root
/// of its own. Removed when dropped (its processes must have ended).
struct PodLike {
    uid: String,
    container: String,
    cgroup: PathBuf,
    root: PathBuf,
}

impl PodLike {
    const TOP: &'static str = "mqtrace-test-kubepods";

    fn create(index: usize) -> Self {
        let uid = format!("8d2c7e3a-1b4f-4c9e-9a61-{:012x}", 0x2f0d_5b7c_8e00 + index);
        let container: String = format!("{index:x}").repeat(64).chars().take(64).collect();
        let mount = mqtrace::sources::kernel::procfs::cgroup_v2_mount()
            .expect("this machine mounts cgroup v2");
        let cgroup = mount
            .join(Self::TOP)
            .join("besteffort")
            .join(format!("pod{uid}"))
            .join(&container);
        std::fs::create_dir_all(&cgroup).expect("create the pod's cgroup");
        let root = std::env::temp_dir().join(format!("mqtrace-pod-{}-{index}", std::process::id()));
        std::fs::create_dir_all(root.join("var/run/secrets/kubernetes.io/serviceaccount")).unwrap();
        Self {
            uid,
            container,
            cgroup,
            root,
        }
    }

    /// The path a pod's namespace is read from, inside its root.
    fn namespace_file(&self) -> PathBuf {
        self.root
            .join("var/run/secrets/kubernetes.io/serviceaccount/namespace")
    }

    /// `raw-producer` started inside the pod: in its cgroup before it execs (so that a
    /// cgroup rule selects it), chrooted into the pod's root, with the downward API's
    /// variables and `env`; with `hold`, it runs on until its stdin closes, as a pod's service
    /// does, else it exits after its sends, as a job does.
    fn producer(
        &self,
        name: &str,
        topic: &str,
        count: usize,
        hold: bool,
        env: &[(&str, &str)],
    ) -> std::process::Child {
        use std::os::{fd::AsRawFd, unix::process::CommandExt};
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.cgroup.join("cgroup.procs"))
            .unwrap();
        let fd = procs.as_raw_fd();
        let mut command = Command::new(env!("CARGO_BIN_EXE_raw-producer"));
        command.arg("--root").arg(&self.root);
        if hold {
            command.arg("--hold");
        }
        command
            .args(["127.0.0.1:10911", topic, &count.to_string()])
            .envs(env.iter().copied())
            .env("HOSTNAME", name)
            .env("POD_NAMESPACE", "from-downward-api")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: one write(2) of a static buffer to an fd opened before the fork:
        // async-signal-safe, as the time between fork and exec requires.
        unsafe {
            command.pre_exec(move || {
                let zero = b"0";
                if libc::write(fd, zero.as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start raw-producer in the pod");
        drop(procs);
        child
    }
}

impl Drop for PodLike {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
        // Leaf first, up to the top.
        let mut dir = Some(self.cgroup.as_path());
        while let Some(d) = dir {
            if std::fs::remove_dir(d).is_err() || d.ends_with(Self::TOP) {
                break;
            }
            dir = d.parent();
        }
    }
}

/// The kubelet's link to a container's log, `/var/log/containers/<pod>_<namespace>_<container>-
/// <id>.log`, made for a test and removed after (with the folder, when the test made it).
struct ContainerLogLink {
    file: PathBuf,
    made_folder: bool,
}

impl ContainerLogLink {
    const FOLDER: &'static str = "/var/log/containers";

    fn create(pod: &str, namespace: &str, container: &str, id: &str) -> Self {
        let made_folder = !Path::new(Self::FOLDER).exists();
        std::fs::create_dir_all(Self::FOLDER).unwrap();
        let file = Path::new(Self::FOLDER).join(format!("{pod}_{namespace}_{container}-{id}.log"));
        std::os::unix::fs::symlink("/dev/null", &file).unwrap();
        Self { file, made_folder }
    }
}

impl Drop for ContainerLogLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        if self.made_folder {
            let _ = std::fs::remove_dir(Self::FOLDER);
        }
    }
}

/// `GET /healthz`: its status, or None when it did not answer within a second.
fn healthz(agent: &Agent) -> Option<u16> {
    mqtrace_tests::http::get(agent.metrics, "/healthz", Duration::from_secs(1))
        .ok()
        .map(|(status, _)| status)
}

/// The HOSTNAME of the pod-like process `i`: a Deployment's pod name (the fourth pod's is
/// not its pod name, which the node's log link gives).
fn hostname(i: usize) -> String {
    match i {
        3 => "not-the-pod-name".to_string(),
        _ => format!("payments-5c6d7f8b9-q2w4{}", ["b", "c", "d"][i]),
    }
}

#[test]
fn pods_with_a_fifo_or_a_symlink_at_the_namespace_path_neither_stall_nor_leak_host_files() {
    let _turn = turn();
    let broker = Broker::start("127.0.0.1").unwrap();
    let topic = "PodTopic";
    broker.make_topic(topic);
    // A node file a pod must never get the agent to export.
    let host_file = ScratchFile::new("mqtrace-host-secret");
    let secret = host_file
        .0
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    std::fs::write(&host_file.0, &secret).unwrap();

    let pods: Vec<PodLike> = (0..4).map(PodLike::create).collect();
    // The fourth pod's container is known to the node by name: a Deployment's pod.
    let _log_link =
        ContainerLogLink::create("orders-7d9f8b6c5d-x2k4q", "shop", "app", &pods[3].container);
    // A FIFO nobody writes: an agent that opens it blocking hangs for good.
    let fifo = std::ffi::CString::new(pods[0].namespace_file().to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // Symlinks to the node's file: absolute, and climbing out with `..`.
    std::os::unix::fs::symlink(&host_file.0, pods[1].namespace_file()).unwrap();
    let climb = format!("../../../../../../../../../..{}", host_file.0.display());
    std::os::unix::fs::symlink(&climb, pods[2].namespace_file()).unwrap();

    let output_file = ScratchFile::new("mqtrace-pods.jsonl");
    let output = &output_file.0;
    let agent = Agent::start(
        "daemon-pods",
        &[
            "--cgroup",
            &format!("/{}", PodLike::TOP),
            "--health-stall-seconds",
            "2",
            "--output",
            output.to_str().unwrap(),
        ],
    );
    let per_pod = 5;
    let producers: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| Owned(pod.producer(&hostname(i), topic, per_pod, true, &[])))
        .collect();
    // /healthz answers within a second, and healthy, all the while.
    let mut probes = 0;
    let every_send_while_healthy = || {
        let status = healthz(&agent).expect("/healthz answered within a second");
        assert_eq!(status, 200, "{}", agent.log_text());
        probes += 1;
        let (traced, sent) = (sent_ids_in(output).len(), pods.len() * per_pod);
        wait::done_or(traced >= sent, || {
            format!("{traced} of {sent} sends traced")
        })
    };
    let every = Duration::from_millis(100);
    wait::until(
        "every send",
        Duration::from_secs(30),
        every,
        every_send_while_healthy,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_text()));
    for mut producer in producers {
        drop(producer.0.stdin.take());
        let status = producer.0.wait().unwrap();
        let mut printed = String::new();
        std::io::Read::read_to_string(producer.0.stdout.as_mut().unwrap(), &mut printed).unwrap();
        assert!(status.success(), "raw-producer failed");
        assert_eq!(printed.lines().count(), per_pod);
    }
    for _ in 0..5 {
        let status = healthz(&agent).expect("/healthz answered within a second");
        assert_eq!(status, 200);
        probes += 1;
    }
    agent.stop();
    drop(broker);

    let text = std::fs::read_to_string(output).unwrap();
    assert!(!text.contains(&secret), "a node file was exported");
    let spans = read_span_file(output);
    for (i, pod) in pods.iter().enumerate() {
        let sends: Vec<&serde_json::Value> = spans
            .iter()
            .filter(|s| s["kind"] == "PRODUCER" && s["resource"]["k8s.pod.uid"] == pod.uid)
            .collect();
        assert_eq!(sends.len(), per_pod, "pod {i}");
        for send in sends {
            let resource = &send["resource"];
            if i == 3 {
                // From the kubelet's log link, which names the container too.
                assert_eq!(
                    resource["k8s.pod.name"], "orders-7d9f8b6c5d-x2k4q",
                    "{resource}"
                );
                assert_eq!(resource["k8s.namespace.name"], "shop", "{resource}");
                assert_eq!(resource["k8s.container.name"], "app", "{resource}");
                assert_eq!(resource["k8s.deployment.name"], "orders", "{resource}");
            } else {
                assert_eq!(resource["k8s.pod.name"], hostname(i), "{resource}");
                // Not from the FIFO or the node's file: from the downward API's variable.
                assert_eq!(
                    resource["k8s.namespace.name"], "from-downward-api",
                    "{resource}"
                );
                assert_eq!(resource["k8s.deployment.name"], "payments", "{resource}");
                assert_eq!(resource["k8s.container.name"], serde_json::Value::Null);
            }
        }
    }
    eprintln!("{probes} /healthz probes, each answered 200 within a second");
}

/// Compiles tests/java (javac and jar of the JDK on the machine) into `dir`: classes in
/// `dir/classes`, and `dir/order-service.jar`.
fn build_java_producer(dir: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("java/shop/OrderService.java");
    let classes = dir.join("classes");
    let javac = Command::new("javac")
        .arg("-d")
        .arg(&classes)
        .arg(&source)
        .output()
        .expect("javac (the machine's JDK)");
    assert!(
        javac.status.success(),
        "{}",
        String::from_utf8_lossy(&javac.stderr)
    );
    let jar = Command::new("jar")
        .args(["--create", "--file"])
        .arg(dir.join("order-service.jar"))
        .args(["--main-class", "shop.OrderService", "-C"])
        .arg(&classes)
        .arg(".")
        .output()
        .expect("jar (the machine's JDK)");
    assert!(
        jar.status.success(),
        "{}",
        String::from_utf8_lossy(&jar.stderr)
    );
}

#[test]
fn a_jvm_is_named_by_its_main_class_or_jar_without_otel_service_name() {
    let _turn = turn();
    let dir = std::env::temp_dir().join(format!("mqtrace-jvm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    struct RemoveDir<'a>(&'a Path);
    impl Drop for RemoveDir<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0);
        }
    }
    let _cleanup = RemoveDir(&dir);
    build_java_producer(&dir);
    let broker = Broker::start("127.0.0.1").unwrap();
    let topic = "JvmTopic";
    broker.make_topic(topic);
    let output_file = ScratchFile::new("mqtrace-jvm.jsonl");
    let output = &output_file.0;
    // Selected as users select JVMs: by command name.
    let agent = Agent::start(
        "daemon-jvm",
        &["--comm", "java", "--output", output.to_str().unwrap()],
    );
    let per_run = 3;
    let runs: [&[&str]; 2] = [
        &["-cp", "classes", "shop.OrderService"],
        &["-jar", "order-service.jar"],
    ];
    // Each runs on until the agent has seen its sends, as services do (a JVM gone within
    // milliseconds of its sends may be gone before the agent reads its command line).
    for (run, args) in runs.into_iter().enumerate() {
        let mut java = Owned(
            Command::new("java")
                .args(args)
                .args(["127.0.0.1:10911", topic, &per_run.to_string(), "--hold"])
                .current_dir(&dir)
                .env_remove("OTEL_SERVICE_NAME")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let this_run_traced = || {
            let traced = sent_ids_in(output).len();
            wait::done_or(traced >= (run + 1) * per_run, || {
                format!("{traced} sends traced")
            })
        };
        wait::until(
            "this run's sends",
            Duration::from_secs(20),
            wait::POLL,
            this_run_traced,
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_text()));
        drop(java.0.stdin.take());
        let status = java.0.wait().unwrap();
        let mut printed = String::new();
        std::io::Read::read_to_string(java.0.stdout.as_mut().unwrap(), &mut printed).unwrap();
        assert!(status.success(), "java {args:?} failed");
        assert_eq!(printed.lines().count(), per_run);
    }
    agent.stop();
    drop(broker);
    let spans = read_span_file(output);
    let names: Vec<&str> = spans
        .iter()
        .filter(|s| s["kind"] == "PRODUCER")
        .map(|s| s["resource"]["service.name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["shop.OrderService"; 3]
            .into_iter()
            .chain(["order-service"; 3])
            .collect::<Vec<_>>()
    );
    assert!(
        spans
            .iter()
            .all(|s| s["resource"]["process.executable.name"] == "java")
    );
}

/// openssl's `s_server` on a loopback port with a self-signed certificate, in a scratch folder
/// removed (and the server stopped) when dropped.
struct TlsServer {
    port: u16,
    _server: Owned,
    dir: PathBuf,
}

impl TlsServer {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("mqtrace-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
            .args(["-keyout", "key.pem", "-out", "cert.pem"])
            .current_dir(&dir)
            .output()
            .expect("openssl");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Command::new("openssl");
        server
            .args(["s_server", "-quiet", "-cert", "cert.pem", "-key", "key.pem"])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let server = Owned(server.spawn().expect("openssl s_server"));
        Self {
            port,
            _server: server,
            dir,
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// openssl's own s_server and s_client over the system's libssl, both traced: each connection
/// end is bound to its plaintext by the TLS probes, or (a client whose handshake beat its
/// probes: each s_client is a new process) counted as encrypted and said once; none is lost
/// track of, and nothing in them is taken for RocketMQ.
#[test]
fn openssl_connections_are_bound_to_their_plaintext_or_counted_as_encrypted() {
    let agent = Agent::start("daemon-tls", &["--comm", "openssl"]);
    let server = TlsServer::start();
    let port = server.port;
    // Two clients, each a full handshake, then end of input.
    for _ in 0..2 {
        let handshake = || {
            let client = Command::new("openssl")
                .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            client
                .status
                .success()
                .then_some(())
                .ok_or_else(|| String::from_utf8_lossy(&client.stderr).into_owned())
        };
        let every = Duration::from_millis(100);
        wait::until(
            "s_server to answer",
            Duration::from_secs(10),
            every,
            handshake,
        )
        .unwrap();
    }
    // Each handshake from both of its ends: s_client's socket and the one s_server accepted
    // (both `openssl`, both traced). The server was probed before any client came: its ends
    // are bound.
    let ends = || {
        agent.metrics([
            "mqtrace_agent_tls_connections_bound_total",
            "mqtrace_pipeline_connections_tls_total",
        ])
    };
    wait::holds(Duration::from_secs(10), wait::POLL, || {
        let [bound, dark] = ends();
        bound + dark >= 4.0
    });
    let [bound, dark] = ends();
    let status = agent.control_ok(&["status"]);
    assert!(bound >= 2.0 && bound + dark == 4.0, "{status}");
    let log = agent.stop();
    assert!(
        log.matches("encrypted connections not traced").count() <= 1,
        "said once at most: {log}"
    );
    assert!(!log.contains("TLS libraries without symbols"), "{log}");
    assert!(!log.contains("\"sends\":1"), "nothing traced: {log}");
}

/// A Go program stripped of its symbols (`-ldflags=-s -w`, as release builds often are) has
/// its TLS probed through Go's own function table (`.gopclntab`): both ends of its TLS echo
/// bound to their plaintext, none counted as encrypted and not traced. Selected by its
/// command name, it is held at exec until probed, so its first handshake is seen too.
#[test]
fn a_stripped_go_program_is_probed_through_its_function_table() {
    let _turn = turn();
    let program = mqtrace_tests::rocketmq::peers_root().join("bin/mq-go-tlsstrip");
    let symbols = Command::new("readelf")
        .args(["--section-headers", "--wide"])
        .arg(&program)
        .output()
        .expect("readelf");
    let sections = String::from_utf8_lossy(&symbols.stdout);
    assert!(
        sections.contains(".gopclntab") && !sections.contains(".symtab"),
        "{} is stripped, its function table kept: {sections}",
        program.display()
    );
    let agent = Agent::start("daemon-go-stripped", &["--comm", "mq-go-tlsstrip"]);
    let echo =
        mqtrace_tests::process::without_terminal(Command::new(&program).args(["--count", "20"]))
            .output()
            .unwrap();
    assert!(echo.status.success(), "{echo:?}");
    let counters = || {
        agent.metrics([
            "mqtrace_agent_tls_connections_bound_total",
            "mqtrace_pipeline_connections_tls_total",
            "mqtrace_agent_tls_libraries_probed_total",
            "mqtrace_agent_tls_processes_held_total",
        ])
    };
    wait::holds(Duration::from_secs(10), wait::POLL, || counters()[0] >= 2.0);
    let [bound, dark, probed, held] = counters();
    let status = agent.control_ok(&["status"]);
    let log = agent.stop();
    assert_eq!((bound, dark), (2.0, 0.0), "{status}\n{log}");
    assert_eq!(probed, 1.0, "{status}");
    assert!(held >= 1.0, "{status}");
}

/// Python grpcio links BoringSSL in and strips it: nothing to probe. Its TLS connection is
/// counted as dark for that reason, its library among those without symbols; nothing bound.
/// The process maps the system's libssl too (Python's own `ssl`), which is probed: its
/// connection, held back for a binding that never comes, is counted as the stripped
/// library's when it ends.
#[test]
fn a_grpcio_client_is_dark_because_its_tls_library_is_stripped() {
    let _turn = turn();
    let agent = Agent::start("daemon-grpcio", &["--comm", "python"]);
    let server = TlsServer::start();
    let app = mqtrace_tests::rocketmq::peers_root().join("python/grpcio");
    let address = format!("127.0.0.1:{}", server.port);
    wait::until(
        "s_server to listen",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            std::net::TcpStream::connect(&address)
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .unwrap();
    let dialed = Command::new(app.join("venv/bin/python"))
        .arg(app.join("dial.py"))
        .arg(&address)
        .output()
        .unwrap();
    assert!(dialed.status.success(), "{dialed:?}");
    let counters = || {
        agent.metrics([
            "mqtrace_agent_tls_dark_stripped_library_total",
            "mqtrace_agent_tls_libraries_without_symbols_total",
            "mqtrace_agent_tls_connections_bound_total",
        ])
    };
    wait::holds(Duration::from_secs(10), wait::POLL, || counters()[0] >= 1.0);
    let [dark, stripped, bound] = counters();
    let status = agent.control_ok(&["status"]);
    agent.stop();
    assert!(dark >= 1.0 && stripped >= 1.0, "{status}");
    assert_eq!(bound, 0.0, "{status}");
    assert!(
        status.contains("TLS, not traced: library stripped"),
        "{status}"
    );
}

/// A producer that lives milliseconds (it connects, sends one message and exits, as a
/// CronJob's or a script's does) keeps its identity: who it is is read as it execs, while it
/// is held there until probed, not when its span is made, when its /proc is gone.
#[test]
fn a_producer_that_lives_milliseconds_keeps_its_service_name_and_pod() {
    let _turn = turn();
    let broker = Broker::start("127.0.0.1").unwrap();
    let topic = "ShortLived";
    broker.make_topic(topic);
    let pod = PodLike::create(7);
    // Run `i`: its pod name and service name say which it was.
    let name = |i: usize| format!("nightly-report-2906184{i}-x7k2p");
    let service = |i: usize| format!("nightly-report-{i}");
    let run = |i: usize| {
        let started = Instant::now();
        let mut producer = Owned(pod.producer(
            &name(i),
            topic,
            1,
            false,
            &[("OTEL_SERVICE_NAME", &service(i))],
        ));
        let status = producer.0.wait().unwrap();
        assert!(status.success(), "raw-producer failed");
        started.elapsed()
    };
    // Untraced, for the record: how long such a process lives here.
    let untraced: Vec<Duration> = (0..3).map(run).collect();
    let output_file = ScratchFile::new("mqtrace-short-lived.jsonl");
    let output = &output_file.0;
    let agent = Agent::start(
        "daemon-short-lived",
        &[
            "--cgroup",
            &format!("/{}", PodLike::TOP),
            "--output",
            output.to_str().unwrap(),
        ],
    );
    // The first traced run has the agent read the program's symbols; the later ones find
    // them known and are as quick as untraced.
    let runs = 10;
    let traced: Vec<Duration> = (0..runs).map(run).collect();
    wait::holds(Duration::from_secs(10), wait::POLL, || {
        sent_ids_in(output).len() >= runs
    });
    // Each was held at exec (selected by a rule, every exec is): none could exit before the
    // agent had read who it is.
    let held = || agent.metrics(["mqtrace_agent_tls_processes_held_total"])[0];
    assert!(
        wait::holds(Duration::from_secs(5), wait::POLL, || held() >= runs as f64),
        "{} of {runs} runs held",
        held()
    );
    let log = agent.stop();
    let spans = read_span_file(output);
    println!("the producer lived {untraced:?} untraced, {traced:?} traced (held at exec)");
    let sends: Vec<&serde_json::Value> = spans.iter().filter(|s| s["kind"] == "PRODUCER").collect();
    assert_eq!(sends.len(), runs, "{log}");
    for (i, send) in sends.iter().enumerate() {
        let resource = &send["resource"];
        assert_eq!(resource["service.name"], service(i).as_str(), "{resource}");
        assert_eq!(resource["k8s.pod.name"], name(i).as_str(), "{resource}");
        assert_eq!(resource["k8s.pod.uid"], pod.uid.as_str(), "{resource}");
    }
}

/// The agent's own loss is never taken for the application's failure: with a 4 KiB ring,
/// thousands of sends lose records by the thousand while the broker answers every one OK,
/// and no send span says ERROR (one whose answer may have been among the records lost says
/// UNSET, and why). Five runs.
#[test]
fn records_lost_to_a_small_ring_never_make_an_error_span() {
    let _turn = turn();
    let broker = Broker::start("127.0.0.1").unwrap();
    let namesrv = broker.namesrv();
    let topic = "SmallRing";
    broker.make_topic(topic);
    let sends = 4000;
    for run in 0..5 {
        let output = ScratchFile::new(&format!("mqtrace-small-ring-{run}.jsonl"));
        let agent = Agent::start(
            "daemon-small-ring",
            &[
                "--comm",
                "mq-client",
                "--ring-buffer-bytes",
                "4096",
                "--output",
                output.0.to_str().unwrap(),
            ],
        );
        let sent = produce(&namesrv, topic, sends);
        assert_eq!(sent.len(), sends, "every send answered OK");
        let log = agent.stop();
        let lost = mqtrace_tests::agent::counter_in_log(&log, "records_lost_ring_full");
        let spans = read_span_file(&output.0);
        let producer_spans: Vec<&serde_json::Value> =
            spans.iter().filter(|s| s["kind"] == "PRODUCER").collect();
        let errors: Vec<&&serde_json::Value> = producer_spans
            .iter()
            .filter(|s| s["status"] == "ERROR")
            .collect();
        let unseen = producer_spans
            .iter()
            .filter(|s| s["attributes"]["mqtrace.response.unseen"].is_string())
            .count();
        println!(
            "run {run}: {lost} records lost, {} send spans, {unseen} unseen, {} errors",
            producer_spans.len(),
            errors.len()
        );
        assert!(lost > 0, "the ring lost nothing: no test\n{log}");
        assert!(!producer_spans.is_empty(), "no send traced: no test\n{log}");
        assert!(errors.is_empty(), "{errors:#?}");
    }
}

/// Message ids with a send span in each of `outputs`, and span ids found more than once over
/// all of them.
fn sends_per_agent(outputs: &[&Path]) -> (Vec<BTreeSet<String>>, Vec<String>) {
    let mut span_ids = BTreeSet::new();
    let mut twice = Vec::new();
    for output in outputs {
        for span in read_span_file(output) {
            let id = span["span_id"].as_str().unwrap_or_default().to_string();
            if !span_ids.insert(id.clone()) {
                twice.push(id);
            }
        }
    }
    let sent = outputs.iter().map(|output| sent_ids_in(output)).collect();
    (sent, twice)
}

/// 20,000 messages at 1,000/s from a real producer, the agent changed 8 s in: (message ids
/// sent, per agent the ids it traced, span ids twice). `change` stops or starts agents.
fn traffic_across(
    namesrv: &str,
    topic: &str,
    outputs: &[&Path],
    change: impl FnOnce(),
) -> (Vec<String>, Vec<BTreeSet<String>>, Vec<String>) {
    let mut producer = client();
    producer
        .args(["produce", namesrv, topic, "20000", "--rate", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut producer = Owned(producer.spawn().unwrap());
    let stdout = producer.0.stdout.take().unwrap();
    // Read meanwhile: 20,000 lines would fill the pipe.
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    std::thread::sleep(Duration::from_secs(8));
    change();
    let status = producer.0.wait().unwrap();
    assert!(status.success(), "producer failed");
    let sent = ids(&reader
        .join()
        .unwrap()
        .lines()
        .map(String::from)
        .collect::<Vec<_>>());
    assert_eq!(sent.len(), 20_000, "every send answered");
    let (traced, twice) = sends_per_agent(outputs);
    (sent, traced, twice)
}

#[test]
fn an_upgrade_mid_traffic_loses_no_message_and_traces_none_twice() {
    let _turn = turn();
    let broker = Broker::start("127.0.0.1").unwrap();
    let namesrv = broker.namesrv();
    let topic = "Upgrade";
    broker.make_topic(topic);
    let outputs = [
        ScratchFile::new("mqtrace-upgrade-old.jsonl"),
        ScratchFile::new("mqtrace-upgrade-new.jsonl"),
    ];
    let args = |output: &ScratchFile| {
        [
            "--comm".to_string(),
            "mq-client".into(),
            "--output".into(),
            output.0.to_string_lossy().into_owned(),
        ]
    };
    let [old_args, new_args] = [args(&outputs[0]), args(&outputs[1])];
    let old_args: Vec<&str> = old_args.iter().map(String::as_str).collect();
    let new_args: Vec<&str> = new_args.iter().map(String::as_str).collect();

    // A newer agent started while the old one runs, the old one stopped 3 s later.
    let old = Agent::start("upgrade-old", &old_args);
    let mut logs = (String::new(), None);
    let (sent, _, twice) = traffic_across(&namesrv, topic, &[&outputs[0].0, &outputs[1].0], || {
        let new = Agent::start_successor("upgrade-new", &old, &new_args);
        std::thread::sleep(Duration::from_secs(3));
        logs.0 = old.stop();
        logs.1 = Some(new);
    });
    let new = logs.1.take().unwrap();
    let expected: Vec<String> = sent.clone();
    let union = || {
        let (traced, _) = sends_per_agent(&[&outputs[0].0, &outputs[1].0]);
        traced[0]
            .union(&traced[1])
            .cloned()
            .collect::<BTreeSet<String>>()
    };
    // The newer agent writes its last spans within its flush.
    let _ = wait::until(
        "every send traced",
        Duration::from_secs(15),
        wait::POLL,
        || {
            let traced = union();
            let missing = expected.iter().filter(|id| !traced.contains(*id)).count();
            wait::done_or(missing == 0, || format!("{missing} missing"))
        },
    );
    let new_log = new.stop();
    let (traced, twice_after) = sends_per_agent(&[&outputs[0].0, &outputs[1].0]);
    let missing: Vec<&String> = sent
        .iter()
        .filter(|id| !traced[0].contains(*id) && !traced[1].contains(*id))
        .collect();
    let both: Vec<&String> = traced[0].intersection(&traced[1]).collect();
    println!(
        "hand-over: {} sent; old agent traced {}, new agent {}; {} missing, {} traced by both, \
         {} span ids twice",
        sent.len(),
        traced[0].len(),
        traced[1].len(),
        missing.len(),
        both.len(),
        twice_after.len()
    );
    let old_counters = final_counters(&logs.0);
    let new_counters = final_counters(&new_log);
    assert_eq!(
        old_counters["agent"]["handover"]["handed_over"], 1,
        "{}",
        logs.0
    );
    assert_eq!(
        new_counters["agent"]["handover"]["taken_over"], 1,
        "{new_log}"
    );
    assert!(
        traced[0].len() > 2_000 && traced[1].len() > 2_000,
        "each agent traced its part"
    );
    assert!(
        missing.is_empty(),
        "{} missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        both.is_empty(),
        "{} traced twice: {:?}",
        both.len(),
        &both[..both.len().min(10)]
    );
    assert!(
        twice.is_empty() && twice_after.is_empty(),
        "{twice_after:?}"
    );

    // Beside it, a plain restart: the old agent stopped, then a new one started.
    let outputs = [
        ScratchFile::new("mqtrace-restart-first.jsonl"),
        ScratchFile::new("mqtrace-restart-second.jsonl"),
    ];
    let [first_args, second_args] = [args(&outputs[0]), args(&outputs[1])];
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let second_args: Vec<&str> = second_args.iter().map(String::as_str).collect();
    let first = Agent::start("restart-first", &first_args);
    let (mut second, mut gap) = (None, Duration::ZERO);
    let (sent, traced, twice) =
        traffic_across(&namesrv, topic, &[&outputs[0].0, &outputs[1].0], || {
            let stopping = Instant::now();
            first.stop();
            second = Some(Agent::start("restart-second", &second_args));
            gap = stopping.elapsed();
        });
    let second = second.unwrap();
    std::thread::sleep(Duration::from_secs(2));
    second.stop();
    let missing = sent
        .iter()
        .filter(|id| !traced[0].contains(*id) && !traced[1].contains(*id))
        .count();
    println!(
        "plain restart: {} sent; {} missing ({:.2} s from the old agent's stop to the new one \
         answering), {} span ids twice",
        sent.len(),
        missing,
        gap.as_secs_f64(),
        twice.len()
    );
    assert!(
        missing > 0,
        "a plain restart leaves a gap: the hand-over is what closes it"
    );
    assert!(twice.is_empty(), "{twice:?}");
}
