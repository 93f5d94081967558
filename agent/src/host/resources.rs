//! The resource of a traced process: who sent or received, as OpenTelemetry resources say it.
//! Read from /proc once per process and cached.

use mqtrace_core::memory::Bounded;

use crate::{
    sources::kernel::safe_read::{read_capped, read_in_root},
    spans::{
        Attributes, Resource, Value,
        names::{
            CONTAINER_ID, HOST_NAME, K8S_CONTAINER_NAME, K8S_DEPLOYMENT_NAME, K8S_NAMESPACE_NAME,
            K8S_NODE_NAME, K8S_POD_NAME, K8S_POD_UID, K8S_REPLICASET_NAME, K8S_STATEFULSET_NAME,
            PROCESS_EXECUTABLE_NAME, PROCESS_PID, SERVICE_NAME,
        },
        resource::ProcessResources,
    },
};

/// The most read of a process's environment or command line.
const MAX_PROC_FILE: usize = 256 << 10;
/// The most read of a pod's namespace file (a DNS label: 63 bytes).
const MAX_NAMESPACE: usize = 256;

/// A /proc file of `pid`, capped.
fn proc_file(pid: u32, name: &str) -> Vec<u8> {
    read_capped(
        std::path::Path::new(&format!("/proc/{pid}/{name}")),
        MAX_PROC_FILE,
    )
    .unwrap_or_default()
}

/// The most kept of a value a process chooses (its environment, its command line), in bytes:
/// Kubernetes names are at most 253, service names are short. Every span carries them.
const MAX_VALUE: usize = 256;

/// `value` cut to MAX_VALUE bytes (at a character boundary).
fn bounded(mut value: String) -> String {
    if value.len() > MAX_VALUE {
        let mut end = MAX_VALUE;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
    value
}

/// Resources kept at most; beyond it the oldest go (read again if their process speaks again).
const MAX_CACHED: usize = 16_384;

/// The resources of the live processes on this host.
pub struct HostResources {
    host_name: String,
    cache: Bounded<u32, Resource>,
    /// The resource of events with no process.
    unknown: Resource,
}

impl HostResources {
    pub fn new() -> Self {
        let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Self {
            host_name,
            cache: Bounded::with_capacity_limit(MAX_CACHED),
            unknown: Resource::default(),
        }
    }
}

impl Default for HostResources {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessResources for HostResources {
    fn of(&mut self, pid: u32) -> &Resource {
        if pid == 0 {
            return &self.unknown;
        }
        if !self.cache.contains_key(&pid) {
            let resource = Resource::new(process_resource(pid, &self.host_name));
            self.cache.insert(pid, resource, 0);
        }
        self.cache.get(&pid).expect("just cached")
    }

    fn forget(&mut self, pid: u32) {
        self.cache.remove(&pid);
    }
}

fn process_resource(pid: u32, host_name: &str) -> Attributes {
    let mut r = Attributes::new();
    r.insert(HOST_NAME.into(), host_name.into());
    r.insert(PROCESS_PID.into(), Value::Int(i64::from(pid)));
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
        r.insert(PROCESS_EXECUTABLE_NAME.into(), executable.clone().into());
    }
    let service = service_name(pid)
        .or_else(|| {
            executable
                .starts_with("java")
                .then(|| jvm_application(&proc_file(pid, "cmdline")))
                .flatten()
        })
        .unwrap_or(executable);
    r.insert(SERVICE_NAME.into(), bounded(service).into());
    let cgroup = String::from_utf8_lossy(&proc_file(pid, "cgroup")).into_owned();
    if let Some(id) = container_id(&cgroup) {
        r.insert(CONTAINER_ID.into(), id.into());
    }
    if let Some(uid) = pod_uid(&cgroup) {
        kubernetes(pid, uid, container_id(&cgroup), &mut r);
    }
    r
}

/// Where the kubelet links each container's log, named `<pod>_<namespace>_<container>-<id>.log`:
/// the node's own record of which container (by name) a container id is.
const CONTAINER_LOGS: &str = "/var/log/containers";

/// (pod, namespace, container) of the container with this id, from CONTAINER_LOGS' names.
fn container_names(dir: &std::path::Path, id: &str) -> Option<(String, String, String)> {
    let suffix = format!("-{id}.log");
    std::fs::read_dir(dir).ok()?.find_map(|entry| {
        let name = entry.ok()?.file_name().into_string().ok()?;
        let stem = name.strip_suffix(&suffix)?;
        let mut parts = stem.splitn(3, '_');
        let (pod, namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
        Some((pod.into(), namespace.into(), container.into()))
    })
}

/// The characters Kubernetes draws generated name suffixes and pod-template hashes from.
fn generated(part: &str, lengths: std::ops::RangeInclusive<usize>) -> bool {
    lengths.contains(&part.len())
        && part
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
}

/// The workload that owns a pod, as its controller names its pods: a Deployment's are
/// `<deployment>-<pod-template-hash>-<suffix>` (its ReplicaSet is `<deployment>-<hash>`), a
/// StatefulSet's `<statefulset>-<ordinal>`. Others (DaemonSets, Jobs, bare pods) cannot be
/// told apart by name and get nothing.
fn pod_owner(pod: &str) -> Vec<(&'static str, String)> {
    let parts: Vec<&str> = pod.rsplitn(3, '-').collect();
    match parts.as_slice() {
        [suffix, hash, deployment]
            if generated(suffix, 5..=5) && generated(hash, 6..=10) && !deployment.is_empty() =>
        {
            vec![
                (K8S_DEPLOYMENT_NAME, deployment.to_string()),
                (K8S_REPLICASET_NAME, format!("{deployment}-{hash}")),
            ]
        }
        [ordinal, ..] if !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()) => {
            let name = &pod[..pod.len() - ordinal.len() - 1];
            if name.is_empty() {
                Vec::new()
            } else {
                vec![(K8S_STATEFULSET_NAME, name.to_string())]
            }
        }
        _ => Vec::new(),
    }
}

/// The application a JVM runs, as the OpenTelemetry Java agent names it: the jar of `-jar`
/// (without `.jar`), else the main class (or `module/class` of `-m`), else the source file
/// of the source launcher.
fn jvm_application(cmdline: &[u8]) -> Option<String> {
    /// Options whose value is the next argument.
    const WITH_VALUE: &[&str] = &[
        "-cp",
        "-classpath",
        "--class-path",
        "-p",
        "--module-path",
        "--upgrade-module-path",
        "--add-modules",
        "--limit-modules",
        "--add-reads",
        "--add-exports",
        "--add-opens",
        "--patch-module",
        "--source",
    ];
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .skip(1)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-jar" => {
                let jar = args.next()?;
                let file = jar.rsplit('/').next()?;
                return Some(file.strip_suffix(".jar").unwrap_or(file).to_string());
            }
            "-m" | "--module" => {
                let module = args.next()?;
                return Some(module.rsplit('/').next()?.to_string());
            }
            option if WITH_VALUE.contains(&option) => {
                args.next();
            }
            option if option.starts_with('-') => {}
            main => {
                let main = main.rsplit('/').next()?;
                return Some(main.strip_suffix(".java").unwrap_or(main).to_string());
            }
        }
    }
    None
}

/// Kubernetes metadata of a process in a pod, as far as the node itself tells: the pod's uid
/// (from the cgroup path); its name, namespace and container's name from the kubelet's log
/// links (CONTAINER_LOGS, by container id), else the name from the pod's HOSTNAME (the pod
/// name unless the spec sets another) and the namespace from its service-account mount (read
/// through /proc/PID/root) or POD_NAMESPACE; the owning workload from the pod name; the node
/// from this agent's NODE_NAME (the downward API). Whatever is missing is left out.
fn kubernetes(pid: u32, uid: String, container: Option<String>, r: &mut Attributes) {
    r.insert(K8S_POD_UID.into(), uid.into());
    let environ = proc_file(pid, "environ");
    let env = |name: &str| {
        let prefix = format!("{name}=");
        environ
            .split(|&b| b == 0)
            .find_map(|var| var.strip_prefix(prefix.as_bytes()))
            .map(|v| bounded(String::from_utf8_lossy(v).into_owned()))
            .filter(|v| !v.is_empty())
    };
    let logged = container
        .and_then(|id| container_names(std::path::Path::new(CONTAINER_LOGS), &id))
        .map(|(pod, namespace, container)| (bounded(pod), bounded(namespace), bounded(container)));
    let pod_name = match &logged {
        Some((pod, _, _)) => Some(pod.clone()),
        None => env("HOSTNAME"),
    };
    if let Some(name) = pod_name {
        for (key, value) in pod_owner(&name) {
            r.insert(key.into(), value.into());
        }
        r.insert(K8S_POD_NAME.into(), name.into());
    }
    // Inside the pod's own root: never blocking on a FIFO, never a device, never a symlink
    // out to the node's files.
    let namespace = match logged {
        Some((_, namespace, container)) => {
            r.insert(K8S_CONTAINER_NAME.into(), container.into());
            Some(namespace)
        }
        None => read_in_root(
            std::path::Path::new(&format!("/proc/{pid}/root")),
            std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount/namespace"),
            MAX_NAMESPACE,
        )
        .ok()
        .map(|n| String::from_utf8_lossy(&n).trim().to_string())
        .filter(|n| !n.is_empty())
        .or_else(|| env("POD_NAMESPACE")),
    };
    if let Some(namespace) = namespace {
        r.insert(K8S_NAMESPACE_NAME.into(), namespace.into());
    }
    if let Some(node) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
        r.insert(K8S_NODE_NAME.into(), node.into());
    }
}

/// The pod uid in a kubelet cgroup path: `.../pod<uid>/...` (cgroupfs driver) or
/// `...-pod<uid with _ for ->.slice/...` (systemd driver).
fn pod_uid(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter(|line| line.contains("kubepods"))
        .flat_map(|line| line.split('/'))
        .find_map(|segment| {
            let segment = segment.strip_suffix(".slice").unwrap_or(segment);
            let (_, uid) = segment.rsplit_once("pod")?;
            let uid = uid.replace('_', "-");
            let shape_ok = uid.len() == 36
                && uid.char_indices().all(|(i, c)| match i {
                    8 | 13 | 18 | 23 => c == '-',
                    _ => c.is_ascii_hexdigit(),
                });
            shape_ok.then_some(uid)
        })
}

/// `OTEL_SERVICE_NAME` from the process's environment, or `-Dotel.service.name=` from its
/// command line, as the OpenTelemetry agents the application may run would call it.
fn service_name(pid: u32) -> Option<String> {
    let environ = proc_file(pid, "environ");
    let from_env = environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"OTEL_SERVICE_NAME="))
        .map(|v| String::from_utf8_lossy(v).into_owned());
    from_env.filter(|s| !s.is_empty()).or_else(|| {
        let cmdline = proc_file(pid, "cmdline");
        cmdline
            .split(|&b| b == 0)
            .find_map(|arg| arg.strip_prefix(b"-Dotel.service.name="))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .filter(|s| !s.is_empty())
    })
}

/// The 64-hex container id in a process's cgroup path (docker, containerd, cri-o).
fn container_id(cgroup: &str) -> Option<String> {
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
    fn pods_are_found_in_both_kubelet_cgroup_layouts() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8d2c7e3a_1b4f_4c9e_9a61_2f0d5b7c8e91.slice/cri-containerd-{id}.scope\n"
        );
        assert_eq!(
            pod_uid(&systemd).as_deref(),
            Some("8d2c7e3a-1b4f-4c9e-9a61-2f0d5b7c8e91")
        );
        assert_eq!(container_id(&systemd).as_deref(), Some(id));
        let cgroupfs =
            format!("0::/kubepods/besteffort/pod8d2c7e3a-1b4f-4c9e-9a61-2f0d5b7c8e91/{id}\n");
        assert_eq!(
            pod_uid(&cgroupfs).as_deref(),
            Some("8d2c7e3a-1b4f-4c9e-9a61-2f0d5b7c8e91")
        );
        // Not a pod: a docker container, a user session.
        assert_eq!(pod_uid(&format!("0::/docker/{id}\n")), None);
        assert_eq!(
            pod_uid("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
    }

    #[test]
    fn values_a_process_chooses_are_cut_at_a_character_boundary() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(200); // 400 bytes
        let cut = bounded(long);
        assert!(cut.len() <= MAX_VALUE && cut.len() >= MAX_VALUE - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn jvms_are_named_by_their_jar_or_main_class() {
        let cmdline = |args: &[&str]| args.join("\0").into_bytes();
        // RocketMQ's own start script.
        assert_eq!(
            jvm_application(&cmdline(&[
                "/usr/lib/jvm/java-17/bin/java",
                "-server",
                "-Xms8g",
                "-XX:+UseG1GC",
                "-Djava.ext.dirs=/opt/rocketmq/lib",
                "-cp",
                ".:/opt/rocketmq/conf:/opt/rocketmq/lib/*",
                "org.apache.rocketmq.broker.BrokerStartup",
                "-c",
                "conf/broker.conf",
            ]))
            .as_deref(),
            Some("org.apache.rocketmq.broker.BrokerStartup")
        );
        // A Spring Boot fat jar.
        assert_eq!(
            jvm_application(&cmdline(&[
                "java",
                "-javaagent:/otel/agent.jar",
                "--add-opens",
                "java.base/java.lang=ALL-UNNAMED",
                "-jar",
                "/app/order-service-1.4.2.jar",
                "--spring.profiles.active=prod",
            ]))
            .as_deref(),
            Some("order-service-1.4.2")
        );
        assert_eq!(
            jvm_application(&cmdline(&[
                "java",
                "-p",
                "mods",
                "-m",
                "orders/com.shop.Orders"
            ]))
            .as_deref(),
            Some("com.shop.Orders")
        );
        assert_eq!(
            jvm_application(&cmdline(&["java", "Producer.java", "a"])).as_deref(),
            Some("Producer")
        );
        assert_eq!(jvm_application(&cmdline(&["java", "-version"])), None);
    }

    #[test]
    fn the_owner_is_read_from_the_pod_name() {
        assert_eq!(
            pod_owner("order-service-7d9f8b6c5d-x2k4q"),
            vec![
                ("k8s.deployment.name", "order-service".to_string()),
                (
                    "k8s.replicaset.name",
                    "order-service-7d9f8b6c5d".to_string()
                ),
            ]
        );
        assert_eq!(
            pod_owner("rocketmq-broker-2"),
            vec![("k8s.statefulset.name", "rocketmq-broker".to_string())]
        );
        // A DaemonSet's or a Job's pod, a bare pod: not told apart, nothing said.
        assert!(pod_owner("mqtrace-x2k4q").is_empty());
        assert!(pod_owner("debug").is_empty());
        // Not the generated alphabet (vowels): not a pod-template hash.
        assert!(pod_owner("my-app-release-abcde").is_empty());
    }

    #[test]
    fn container_names_come_from_the_kubelets_log_links() {
        let dir = tempfile::tempdir().unwrap();
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        std::fs::write(
            dir.path()
                .join(format!("orders-7d9f8b6c5d-x2k4q_shop_app-{id}.log")),
            "",
        )
        .unwrap();
        std::fs::write(dir.path().join("other_ns_sidecar-ffff.log"), "").unwrap();
        assert_eq!(
            container_names(dir.path(), id),
            Some((
                "orders-7d9f8b6c5d-x2k4q".into(),
                "shop".into(),
                "app".into()
            ))
        );
        assert_eq!(container_names(dir.path(), "ffffffff"), None);
    }

    #[test]
    fn own_process_resource() {
        let mut resources = HostResources::new();
        let r = resources.of(std::process::id()).clone();
        assert_eq!(
            r.get("process.pid"),
            Some(&Value::Int(i64::from(std::process::id())))
        );
        assert!(matches!(r.get("service.name"), Some(Value::String(s)) if !s.is_empty()));
        assert!(r.get("host.name").is_some());
    }
}
