//! Apache RocketMQ's own Java servers (5.5.0 and 4.9.7, from Maven Central), started as plain
//! `java -cp` processes with small heaps, stores in scratch folders, on loopback ports of their
//! own; and the Java test applications of `tests/java/apps` over Apache's Java clients.
//! `cargo xtask peers` resolves the classpaths into `$MQTRACE_PEERS/java`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};

use mqtrace_protocol::RequestCode;

use crate::rocketmq::{Owned, await_route, peers_root, refuse_a_full_disk, remoting_call, tail};

/// Which Apache RocketMQ: the servers' release, and the remoting client's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// 5.5.0: name server, broker, proxy.
    V5,
    /// 4.9.7, the last 4.x served here: name server and broker.
    V4,
}

impl Release {
    /// The classpath file `cargo xtask peers` made for it.
    fn classpath_name(self) -> &'static str {
        match self {
            Release::V5 => "rocketmq-5",
            Release::V4 => "rocketmq-4",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Release::V5 => "5.5.0",
            Release::V4 => "4.9.7",
        }
    }
}

/// How clients reach the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// A name server and a broker.
    Direct,
    /// A name server and a proxy with the broker inside its JVM (`-pm local`, what
    /// `mqbroker --enable-proxy` runs): gRPC and remoting clients reach the proxy, the broker's
    /// remoting port stays open too.
    ProxyLocal,
    /// A name server, a broker, and a proxy in front of them (`-pm cluster`) that reaches the
    /// broker over remoting.
    ProxyCluster,
}

/// The classpath (jars joined by `:`) that `cargo xtask peers` resolved for `name`.
pub fn classpath(name: &str) -> String {
    let file = peers_root().join("java").join(format!("{name}.classpath"));
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}: run `cargo xtask peers`", file.display()))
        .trim()
        .to_string()
}

/// A `java` command with a heap that fits this 2-core machine beside the other peers.
fn java(classpath: &str, heap_mib: u32) -> Command {
    let mut command = Command::new("java");
    command
        .arg(format!("-Xms{}m", heap_mib / 2))
        .arg(format!("-Xmx{heap_mib}m"))
        .arg("-XX:+UseSerialGC")
        .args(["-cp", classpath]);
    command
}

/// A command running one of the Java test applications (`mqtrace.apps.<main>`, see
/// tests/java/apps) over Apache's Java clients: the remoting client of `release`, the 5.x
/// gRPC client.
pub fn app(release: Release, main: &str) -> Command {
    app_with(release, main, &[])
}

/// As [`app`], with these options for the JVM (`-javaagent:...`, `-D...`).
pub fn app_with(release: Release, main: &str, jvm_options: &[String]) -> Command {
    let apps = peers_root().join("java/apps.jar");
    // The 4.x run has the 4.x client alone (its own remoting and common jars): the remoting
    // applications use only API that both releases have.
    let clients = match release {
        Release::V5 => classpath("apps"),
        Release::V4 => classpath("rocketmq-4"),
    };
    let mut command = java(&format!("{}:{clients}", apps.display()), 256);
    command
        // The clients log under the user's home: a scratch one, not root's.
        .arg(format!(
            "-Duser.home={}",
            std::env::temp_dir().join("mqtrace-java-clients").display()
        ))
        .args(jvm_options)
        .arg(format!("mqtrace.apps.{main}"));
    command
}

/// Runs a test application (Java or Go) to its end; fails, with the end of its stderr, unless it
/// succeeded and ended with its `done` line. The JSON lines it printed, that line last.
pub fn run_to_end(command: &mut Command) -> Vec<serde_json::Value> {
    let out = crate::process::without_terminal(command)
        .output()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}",
        out.status,
        tail(&out.stderr)
    );
    let lines = crate::rocketmq::json_lines(&out.stdout);
    assert_eq!(
        lines.last().map(|l| l["done"] == true),
        Some(true),
        "{command:?} ends with its done line"
    );
    lines
}

/// The send modes of the Java remoting test producer (`RemotingProducer --mode`).
pub const REMOTING_SEND_MODES: [&str; 7] = [
    "sync",
    "async",
    "oneway",
    "batch",
    "ordered",
    "delay",
    "transaction",
];

/// The OpenTelemetry Java agent's jar.
pub fn otel_agent_jar() -> PathBuf {
    PathBuf::from(classpath("otel-agent"))
}

/// Name server, broker and proxy of one release and topology, each with its own scratch folder
/// and log; killed by pid on drop, pass or fail.
pub struct Cluster {
    // Dropped in this order: proxy, broker, name server.
    proxy: Option<Owned>,
    broker: Option<Owned>,
    namesrv: Owned,
    home: PathBuf,
    pub release: Release,
    pub topology: Topology,
}

impl Cluster {
    /// Ports of their own, away from the rocketmq-rust peers' defaults (9876, 10911, 8081).
    pub const NAMESRV_PORT: u16 = 29876;
    /// The broker also takes this port - 2 (its fast port) and + 1 (HA).
    pub const BROKER_PORT: u16 = 30911;
    pub const PROXY_GRPC_PORT: u16 = 38081;
    pub const PROXY_REMOTING_PORT: u16 = 38080;
    const CLUSTER: &str = "DefaultCluster";

    pub fn start(release: Release, topology: Topology) -> anyhow::Result<Self> {
        anyhow::ensure!(
            release == Release::V5 || topology == Topology::Direct,
            "RocketMQ 4 has no proxy"
        );
        let tmp = std::env::temp_dir();
        refuse_a_full_disk(&tmp)?;
        let home = tmp.join(format!(
            "mqtrace-apache-{}-{}",
            release.version(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(home.join("conf"))?;
        for port in [
            Self::NAMESRV_PORT,
            Self::BROKER_PORT,
            Self::PROXY_GRPC_PORT,
            Self::PROXY_REMOTING_PORT,
        ] {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                bail!("127.0.0.1:{port} is taken already: is a Java peer of an earlier run alive?");
            }
        }
        write_configuration(&home, release)?;
        let classpath = classpath(release.classpath_name());
        let spawn = |name: &str, main: &str, args: &[String]| -> anyhow::Result<Owned> {
            let log = std::fs::File::create(home.join(format!("{name}.log")))?;
            let user_home = home.join(name);
            std::fs::create_dir_all(&user_home)?;
            let mut command = java(&classpath, if name == "namesrv" { 128 } else { 512 });
            if release == Release::V4 {
                // Its store's MappedFile cleaner reaches into the JDK (11 and later).
                command.arg("--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED");
                command.arg("--add-opens=java.base/java.nio=ALL-UNNAMED");
            }
            command
                .arg(format!("-Duser.home={}", user_home.display()))
                // What the JVM unpacks (RocksDB's native library, 12 MB) and the proxy's
                // self-signed certificates go with the cluster's folder, not into /tmp for good
                // (their delete-on-exit never runs: the processes are killed).
                .arg(format!("-Djava.io.tmpdir={}", user_home.display()))
                .arg(format!(
                    "-Drmq.logback.configurationFile=rmq.{name}.logback.xml"
                ))
                .arg(main)
                .args(args)
                .current_dir(&home)
                .env("ROCKETMQ_HOME", &home)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            Ok(Owned(command.spawn().with_context(|| {
                format!("starting the {name} ({main}) with java")
            })?))
        };
        let conf = |file: &str| home.join("conf").join(file).to_string_lossy().into_owned();
        let namesrv = spawn(
            "namesrv",
            "org.apache.rocketmq.namesrv.NamesrvStartup",
            &["-c".to_string(), conf("namesrv.conf")],
        )?;
        let mut cluster = Self {
            proxy: None,
            broker: None,
            namesrv,
            home: home.clone(),
            release,
            topology,
        };
        let broker_args = ["-c".to_string(), conf("broker.conf")];
        let proxy_args = |mode: &str| {
            [
                "-pm".to_string(),
                mode.to_string(),
                "-bc".to_string(),
                conf("broker.conf"),
                "-pc".to_string(),
                conf("rmq-proxy.json"),
                "-n".to_string(),
                cluster_namesrv(),
            ]
        };
        match topology {
            Topology::Direct | Topology::ProxyCluster => {
                cluster.broker = Some(spawn(
                    "broker",
                    "org.apache.rocketmq.broker.BrokerStartup",
                    &broker_args,
                )?);
            }
            Topology::ProxyLocal => {}
        }
        // Ready when the name server knows the broker: the route of the topic new topics are
        // made from says the broker registered. A proxy in cluster mode makes its system topics
        // on the cluster as it starts, so it comes after.
        if cluster.broker.is_some() {
            cluster.await_route("TBW102", Duration::from_secs(90))?;
        }
        if topology == Topology::ProxyCluster {
            // The proxy makes it as it starts, and gives up when the route does not come back
            // within its 3 s client timeout: on 2 busy cores it often does not.
            cluster.make_topic("DefaultHeartBeatSyncerTopic", "NORMAL")?;
        }
        match topology {
            Topology::Direct => {}
            Topology::ProxyLocal | Topology::ProxyCluster => {
                let mode = if topology == Topology::ProxyLocal {
                    "local"
                } else {
                    "cluster"
                };
                cluster.proxy = Some(spawn(
                    "proxy",
                    "org.apache.rocketmq.proxy.ProxyStartup",
                    &proxy_args(mode),
                )?);
            }
        }
        if cluster.proxy.is_some() {
            cluster.await_route("TBW102", Duration::from_secs(90))?;
            for port in [Self::PROXY_GRPC_PORT, Self::PROXY_REMOTING_PORT] {
                crate::rocketmq::wait_for_port(
                    &format!("127.0.0.1:{port}").parse()?,
                    Duration::from_secs(90),
                )
                .with_context(|| format!("the proxy's log ends: {}", cluster.log_tail("proxy")))?;
            }
        }
        Ok(cluster)
    }

    pub fn namesrv(&self) -> String {
        cluster_namesrv()
    }

    /// Where a remoting client sends: the broker, as the name server's routes say.
    pub fn broker_addr(&self) -> String {
        format!("127.0.0.1:{}", Self::BROKER_PORT)
    }

    /// The proxy's gRPC endpoint (`ip:port`), for the 5.x clients.
    pub fn grpc_endpoint(&self) -> String {
        format!("127.0.0.1:{}", Self::PROXY_GRPC_PORT)
    }

    /// The proxy's remoting port: remoting clients given it as their name server reach the
    /// messages through the proxy.
    pub fn proxy_remoting(&self) -> String {
        format!("127.0.0.1:{}", Self::PROXY_REMOTING_PORT)
    }

    /// The process that stores the messages: the broker, or the proxy with the broker inside.
    pub fn broker_pid(&self) -> u32 {
        self.broker
            .as_ref()
            .or(self.proxy.as_ref())
            .expect("a broker runs in every topology")
            .0
            .id()
    }

    /// Makes `topic` with 4 queues and, on 5.x, the message type the 5.x clients check
    /// (NORMAL, FIFO, DELAY, TRANSACTION), by the admin request the tools send
    /// (UPDATE_AND_CREATE_TOPIC to the broker); then waits for its route.
    pub fn make_topic(&self, topic: &str, message_type: &str) -> anyhow::Result<()> {
        let attributes = format!("+message.type={message_type}");
        let mut ext = vec![
            ("topic", topic),
            ("defaultTopic", "TBW102"),
            ("readQueueNums", "4"),
            ("writeQueueNums", "4"),
            ("perm", "6"),
            ("topicFilterType", "SINGLE_TAG"),
            ("topicSysFlag", "0"),
            ("order", "false"),
        ];
        if self.release == Release::V5 {
            ext.push(("attributes", &attributes));
        }
        let answer = remoting_call(
            &self.broker_addr(),
            RequestCode::UpdateAndCreateTopic,
            &ext,
            &[],
        )?;
        anyhow::ensure!(
            answer["code"] == 0,
            "the broker refused to make topic {topic}: {answer}"
        );
        self.await_route(topic, Duration::from_secs(30))
    }

    /// Makes consumer group `group` (the proxy refuses a 5.x client's unknown group, whatever
    /// `autoCreateSubscriptionGroup` says; FIFO delivery needs an orderly group), by the admin
    /// request the tools send (UPDATE_AND_CREATE_SUBSCRIPTIONGROUP to the broker), and its
    /// retry topic, so that a remoting consumer finds that route at its start rather than at
    /// its next route refresh, 30 s later.
    pub fn make_group(&self, group: &str, orderly: bool) -> anyhow::Result<()> {
        let config = serde_json::json!({
            "groupName": group,
            "consumeEnable": true,
            "consumeFromMinEnable": true,
            "consumeBroadcastEnable": true,
            "consumeMessageOrderly": orderly,
            "retryQueueNums": 1,
            "retryMaxTimes": 16,
            "brokerId": 0,
            "whichBrokerWhenConsumeSlowly": 1,
            "notifyConsumerIdsChangedEnable": true,
        });
        let answer = remoting_call(
            &self.broker_addr(),
            RequestCode::UpdateAndCreateSubscriptiongroup,
            &[],
            config.to_string().as_bytes(),
        )?;
        anyhow::ensure!(
            answer["code"] == 0,
            "the broker refused to make group {group}: {answer}"
        );
        self.make_topic(&format!("%RETRY%{group}"), "NORMAL")
    }

    fn await_route(&self, topic: &str, timeout: Duration) -> anyhow::Result<()> {
        await_route(&self.namesrv(), topic, timeout)
            .with_context(|| format!("the logs end:\n{}", self.logs()))
    }

    fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.home.join(format!("{name}.log"))).unwrap_or_default();
        tail(text.as_bytes())
    }

    /// The last lines of every server's log, for a failing test to show.
    pub fn logs(&self) -> String {
        ["namesrv", "broker", "proxy"]
            .iter()
            .filter(|name| self.home.join(format!("{name}.log")).exists())
            .map(|name| format!("--- {name}:\n{}", self.log_tail(name)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Owned kills and reaps each; the proxy before the broker before the name server.
        self.proxy.take();
        self.broker.take();
        // SAFETY: kill(2) on our own child; the field's drop reaps it.
        unsafe { libc::kill(self.namesrv.0.id() as i32, libc::SIGKILL) };
        let _ = self.namesrv.0.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn cluster_namesrv() -> String {
    format!("127.0.0.1:{}", Cluster::NAMESRV_PORT)
}

/// The servers' configuration files in `home/conf`.
fn write_configuration(home: &Path, release: Release) -> anyhow::Result<()> {
    let store = home.join("store");
    let conf = home.join("conf");
    std::fs::write(
        conf.join("namesrv.conf"),
        format!("listenPort={}\n", Cluster::NAMESRV_PORT),
    )?;
    std::fs::write(
        conf.join("broker.conf"),
        format!(
            "brokerClusterName={cluster}\n\
             brokerName=broker-a\n\
             brokerId=0\n\
             brokerIP1=127.0.0.1\n\
             namesrvAddr={namesrv}\n\
             listenPort={port}\n\
             storePathRootDir={store}\n\
             storePathCommitLog={store}/commitlog\n\
             autoCreateTopicEnable=true\n\
             autoCreateSubscriptionGroup=true\n\
             traceTopicEnable=true\n\
             enablePropertyFilter=true\n\
             mappedFileSizeCommitLog=67108864\n\
             mappedFileSizeConsumeQueue=300000\n\
             maxIndexNum=100000\n\
             maxHashSlotNum=25000\n\
             transactionCheckInterval=2000\n\
             transactionTimeOut=3000\n\
             transactionOpBatchInterval=500\n\
             flushIntervalCommitLog=200\n",
            cluster = Cluster::CLUSTER,
            namesrv = cluster_namesrv(),
            port = Cluster::BROKER_PORT,
            store = store.display(),
        ),
    )?;
    if release == Release::V5 {
        std::fs::write(
            conf.join("rmq-proxy.json"),
            format!(
                r#"{{"rocketMQClusterName": "{}", "namesrvAddr": "{}", "grpcServerPort": {}, "remotingListenPort": {}, "grpcClientConsumerMaxLongPollingTimeoutMillis": 5000}}"#,
                Cluster::CLUSTER,
                cluster_namesrv(),
                Cluster::PROXY_GRPC_PORT,
                Cluster::PROXY_REMOTING_PORT
            ),
        )?;
    } else {
        // 4.x loads its logging configuration from here and exits without it.
        let logback = |file: &str| {
            format!(
                r#"<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{}</file>
    <encoder><pattern>%d %-5level %logger{{0}} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"#,
                home.join(file).display()
            )
        };
        std::fs::write(
            conf.join("logback_namesrv.xml"),
            logback("namesrv-logback.log"),
        )?;
        std::fs::write(
            conf.join("logback_broker.xml"),
            logback("broker-logback.log"),
        )?;
    }
    Ok(())
}
