//! The real RocketMQ peers (rocketmq-rust name server, broker and gRPC proxy, our mq-client over
//! rocketmq-client-rust and mq5-client over Apache's Rust 5.x gRPC client), started for a test
//! and stopped by pid when it ends, pass or fail.
//! `cargo xtask test` builds them and says where in `MQTRACE_PEERS`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use mqtrace_protocol::{RequestCode, encode};

use crate::wait;

/// Where the peers are installed (`bin/` inside); tests fail loudly without them.
pub fn peers_dir() -> PathBuf {
    let dir = peers_root();
    assert!(
        dir.join("bin/rocketmq-broker-rust").exists(),
        "no broker in {}/bin: run `cargo xtask peers`",
        dir.display()
    );
    dir
}

/// `$MQTRACE_PEERS`, which `cargo xtask test` sets to the folder of the peers it built.
pub fn peers_root() -> PathBuf {
    std::env::var_os("MQTRACE_PEERS").map(PathBuf::from).expect(
        "MQTRACE_PEERS must name the directory of the real RocketMQ peers: run the tests with \
         `cargo xtask test`, which builds them (or `cargo xtask peers`)",
    )
}

fn bin(name: &str) -> PathBuf {
    peers_dir().join("bin").join(name)
}

/// The `mq-client` binary (see tests/peers/rust-client).
pub fn client_path() -> PathBuf {
    bin("mq-client")
}

/// A command running `mq-client`.
pub fn client() -> Command {
    Command::new(client_path())
}

/// The `mq5-client` binary (see tests/peers/rust5-client): produces and consumes over gRPC
/// through a [`Proxy`].
pub fn client5_path() -> PathBuf {
    bin("mq5-client")
}

/// A command running `mq5-client`.
pub fn client5() -> Command {
    Command::new(client5_path())
}

/// The `rocketmq-proxy-rust` binary (rocketmq-proxy 1.0.0, cluster mode only).
pub fn proxy_path() -> PathBuf {
    bin("rocketmq-proxy-rust")
}

/// The JSON lines a client printed (mq-client, raw-producer).
pub fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The last lines of a client's stderr, for failure messages.
pub fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A process killed (by pid) and reaped on drop.
pub struct Owned(pub Child);

impl Drop for Owned {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}

/// A name server and a broker listening on `ip`, with their own scratch directory.
pub struct Broker {
    // Dropped first: the broker, then the name server.
    broker: Owned,
    namesrv: Owned,
    home: PathBuf,
    pub ip: String,
}

impl Broker {
    /// Starts both on `ip`, telling clients to reach the broker at `ip` too.
    pub fn start(ip: &str) -> anyhow::Result<Self> {
        Self::start_advertising(ip, ip)
    }

    /// Starts both on `ip`, telling clients the broker is at `advertised` (an address relayed
    /// to `ip`: this broker listens in plain TCP on loopback only).
    pub fn start_advertising(ip: &str, advertised: &str) -> anyhow::Result<Self> {
        refuse_a_full_disk(&std::env::temp_dir())?;
        let home =
            std::env::temp_dir().join(format!("mqtrace-broker-{}-{}", std::process::id(), ip));
        std::fs::create_dir_all(home.join("conf"))?;
        std::fs::create_dir_all(home.join("store"))?;
        let template =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/peers/broker.toml.in"))?;
        let config = home.join("conf/broker.toml");
        std::fs::write(
            &config,
            template
                .replace("@HOME@", &home.to_string_lossy())
                .replace("@IP@", ip)
                .replace("@ADVERTISED@", advertised),
        )?;
        let spawn = |program: PathBuf, args: &[&str], log: &str| -> anyhow::Result<Owned> {
            let mut command = Command::new(&program);
            let log = std::fs::File::create(home.join(log))?;
            command
                .args(args)
                .env("ROCKETMQ_HOME", &home)
                .env("ROCKETMQ_SECURITY_PROFILE", "development-insecure-loopback")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            Ok(Owned(command.spawn().with_context(|| {
                format!("starting {}", program.display())
            })?))
        };
        let namesrv = spawn(
            bin("rocketmq-namesrv-rust"),
            &["--bindAddress", ip, "--listenPort", "9876"],
            "namesrv.log",
        )?;
        let namesrv_addr = format!("{ip}:9876");
        let config = config.to_string_lossy().into_owned();
        let broker = spawn(
            bin("rocketmq-broker-rust"),
            &["-c", &config, "-n", &namesrv_addr],
            "broker.log",
        )?;
        let broker = Self {
            broker,
            namesrv,
            home,
            ip: ip.to_string(),
        };
        for port in [9876, 10911] {
            // The broker's last words say why.
            wait_for_port(&format!("{ip}:{port}").parse()?, Duration::from_secs(20))
                .with_context(|| format!("broker log ends: {}", tail(broker.log().as_bytes())))?;
        }
        // The broker listens before it has registered with the name server: a client asking
        // for a route in between finds none (the first send to a new topic fails). The route
        // of the topic new topics are made from says the registration is done.
        broker.await_route("TBW102")?;
        Ok(broker)
    }

    /// Makes `topic` exist, as the first send to it does (one message through the real
    /// client); fails the test if it cannot.
    pub fn make_topic(&self, topic: &str) {
        let made = client()
            .args(["produce", &self.namesrv(), topic, "1"])
            .output()
            .expect("start mq-client");
        assert!(
            made.status.success(),
            "topic {topic} not made: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        // The broker registers the new topic with the name server after it answers the send;
        // a client asking in between (the proxy, at once) is told the topic does not exist.
        self.await_route(topic)
            .unwrap_or_else(|e| panic!("topic {topic} not made: {e:#}"));
    }

    /// Waits until the name server has a route for `topic`.
    fn await_route(&self, topic: &str) -> anyhow::Result<()> {
        await_route(&self.namesrv(), topic, Duration::from_secs(20))
            .with_context(|| format!("the broker's log ends: {}", tail(self.log().as_bytes())))
    }

    /// The broker process's pid.
    pub fn pid(&self) -> u32 {
        self.broker.0.id()
    }

    pub fn namesrv(&self) -> String {
        format!("{}:9876", self.ip)
    }

    /// The broker's log, for a failing test to show.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("broker.log")).unwrap_or_default()
    }

    /// Freezes the broker (SIGSTOP): connections stay open, requests get no answer.
    pub fn pause(&self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.broker.0.id() as i32, libc::SIGSTOP) };
    }

    pub fn resume(&self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.broker.0.id() as i32, libc::SIGCONT) };
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own children; Owned's drop reaps them.
        unsafe {
            libc::kill(self.broker.0.id() as i32, libc::SIGKILL);
            libc::kill(self.namesrv.0.id() as i32, libc::SIGKILL);
        }
        let _ = self.broker.0.wait();
        let _ = self.namesrv.0.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// A RocketMQ 5 proxy (rocketmq-proxy-rust, cluster mode) in front of a [`Broker`]: it speaks
/// gRPC (plain HTTP/2) to clients on the broker's address, port 8081, and remoting to the name
/// server and broker behind it.
pub struct Proxy {
    proxy: Owned,
    home: PathBuf,
    addr: SocketAddr,
}

impl Proxy {
    pub const GRPC_PORT: u16 = 8081;

    /// Starts the proxy for `broker` (which must be running) and waits until its gRPC port
    /// accepts connections.
    pub fn start(broker: &Broker) -> anyhow::Result<Self> {
        let addr: SocketAddr = format!("{}:{}", broker.ip, Self::GRPC_PORT).parse()?;
        // Something else answering there would pass for the proxy: a proxy left over, say.
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            bail!("{addr} is taken already: is a proxy of an earlier run still alive?");
        }
        let home = std::env::temp_dir().join(format!(
            "mqtrace-proxy-{}-{}",
            std::process::id(),
            broker.ip
        ));
        std::fs::create_dir_all(&home)?;
        let log = std::fs::File::create(home.join("proxy.log"))?;
        let program = proxy_path();
        let proxy = Command::new(&program)
            .args(["--mode", "cluster", "--namesrvAddr", &broker.namesrv()])
            .arg("--grpcListenAddr")
            .arg(addr.to_string())
            .current_dir(&home)
            .env("ROCKETMQ_HOME", &home)
            .env("ROCKETMQ_SECURITY_PROFILE", "development-insecure-loopback")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let proxy = Self {
            proxy: Owned(proxy),
            home,
            addr,
        };
        wait_for_port(&addr, Duration::from_secs(20))
            .with_context(|| format!("proxy log ends: {}", tail(proxy.log().as_bytes())))?;
        Ok(proxy)
    }

    /// The proxy process's pid.
    pub fn pid(&self) -> u32 {
        self.proxy.0.id()
    }

    /// Where clients reach it: `ip:port`, as mq5-client's `--endpoint` wants it.
    pub fn grpc_endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// The proxy's log, for a failing test to show.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("proxy.log")).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; Owned's drop reaps it.
        unsafe { libc::kill(self.proxy.0.id() as i32, libc::SIGKILL) };
        let _ = self.proxy.0.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Waits until the name server at `namesrv` has a route for `topic` (GET_ROUTEINFO_BY_TOPIC
/// answered with SUCCESS rather than TOPIC_NOT_EXIST).
pub fn await_route(namesrv: &str, topic: &str, timeout: Duration) -> anyhow::Result<()> {
    let routed = || {
        let header = remoting_call(
            namesrv,
            RequestCode::GetRouteinfoByTopic,
            &[("topic", topic)],
            &[],
        )
        .map_err(|e| format!("{e:#}"))?;
        match header["code"].as_i64() {
            Some(0) => Ok(()),
            _ => Err(format!("answered {header}")),
        }
    };
    let what = format!("a route for {topic} at {namesrv}");
    wait::until(&what, timeout, Duration::from_millis(100), routed)
}

/// Sends one remoting request (JSON header) to `addr` and returns the response's header.
pub fn remoting_call(
    addr: &str,
    code: RequestCode,
    ext: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<serde_json::Value> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(&encode::request_frame(code, 1, ext, body))?;
    let mut head = [0u8; 8];
    stream
        .read_exact(&mut head)
        .with_context(|| format!("{addr} did not answer {code:?}"))?;
    let header_len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut header = vec![0u8; header_len];
    stream.read_exact(&mut header)?;
    serde_json::from_slice(&header).with_context(|| format!("{addr}'s answer is not JSON"))
}

/// The broker will not start with its store on a disk over 75 % full (it logs why and waits):
/// say so at once, rather than after the wait for its port.
pub fn refuse_a_full_disk(dir: &std::path::Path) -> anyhow::Result<()> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs writes into the zeroed struct it is given; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", dir.display()));
    }
    // As df counts it: blocks in use over those in use or available (not those reserved).
    let in_use = stat.f_blocks.saturating_sub(stat.f_bfree) as f64;
    let used = in_use / (in_use + stat.f_bavail as f64).max(1.0);
    anyhow::ensure!(
        used < 0.75,
        "the disk holding {} is {:.0} % full: the broker refuses to start above 75 %; free \
         some space (build outputs, captures) and run the tests again",
        dir.display(),
        used * 100.0
    );
    Ok(())
}

pub fn wait_for_port(addr: &SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let listening = || {
        TcpStream::connect_timeout(addr, Duration::from_millis(200))
            .map(drop)
            .map_err(|e| e.to_string())
    };
    wait::until(
        &format!("a listener on {addr}"),
        timeout,
        Duration::from_millis(100),
        listening,
    )
}
