//! The daemon over the live capture's own policy on tables and a host in memory (see
//! `sources::kernel::tables::memory`): its control socket, rules, state file, pipeline and span
//! output, tested without root or eBPF. The kernel's side is tested for real in
//! tests/tests/kernel_capture.rs.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use mqtrace_common::{Origin, Selection, SocketKey};

use super::{DaemonOptions, serve};
use crate::{
    control::{HANDOVER_PROTOCOL, Request, Response, Target, client},
    decoder::{
        RequestCode, ResponseCode,
        encode::{properties, request_frame, response_frame},
    },
    memory::Shares,
    sources::{
        Direction,
        kernel::{
            CaptureOptions, KernelCapture, monotonic_ns,
            tables::memory::{FakeHost, SharedTables},
        },
    },
};

fn options(dir: &Path) -> DaemonOptions {
    DaemonOptions {
        trace_all: false,
        startup: Vec::new(),
        max_bytes_per_syscall: 4096,
        ring_buffer_bytes: 1 << 20,
        stats_interval: Duration::from_secs(3600),
        output: Some(dir.join("spans.jsonl")),
        otlp: None,
        rocketmq_trace: None,
        request_timeout: Duration::from_secs(30),
        flush_timeout: Duration::from_secs(1),
        metrics_address: free_port(),
        control_socket: dir.join("control.sock"),
        control_group: None,
        journal_messages: 1000,
        state_file: dir.join("rules.json"),
        memory: Shares::of(64 << 20),
        health_stall: Duration::from_secs(30),
        broker_spans: true,
        hold_at_exec: true,
    }
}

fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// `GET path` answered within a second: (status code, body).
fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    // In two pieces, as a client may send it.
    stream.write_all(format!("GET {path} ").as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    stream.write_all(b"HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .unwrap_or_else(|e| panic!("GET {path} not answered within a second: {e}"));
    let status = reply[9..12].parse().unwrap();
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// A daemon serving on its own thread until dropped.
struct Running {
    /// What the kernel's tables hold: the test writes records and reads the policy's changes.
    tables: SharedTables,
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// A daemon on a host where the processes `pids` run (the agent not among them).
    fn start(options: DaemonOptions, pids: &[u32]) -> Self {
        let tables = SharedTables::default();
        let mut host = FakeHost::default();
        for &pid in pids {
            host.processes.insert(pid, Vec::new());
        }
        let capture_options = CaptureOptions {
            trace_all: options.trace_all,
            max_bytes_per_syscall: options.max_bytes_per_syscall,
            ring_buffer_bytes: options.ring_buffer_bytes,
            hold_at_exec: options.hold_at_exec,
        };
        let capture = KernelCapture::over(tables.clone(), host, capture_options);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let socket = options.control_socket.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve(capture, &options, async {
                let _ = stopped.await;
            }))
        });
        let running = Self {
            tables,
            socket,
            stop: Some(stop),
            thread: Some(thread),
        };
        running.wait_for("the control socket to answer", || {
            running.ask(Request::Status).is_ok()
        });
        running
    }

    fn ask(&self, request: Request) -> anyhow::Result<Response> {
        client::send(&self.socket, &request)
    }

    fn wait_for(&self, what: &str, done: impl Fn() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon; its result.
    fn stop(mut self) -> anyhow::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().expect("the daemon thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A process for pid rules to name; killed when dropped.
struct Sleeper(Child);

impl Sleeper {
    fn start() -> Self {
        Self(
            Command::new("sleep")
                .arg("60")
                .spawn()
                .expect("start sleep"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn rules_reach_the_capture_and_are_applied_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sleeper = Sleeper::start();
    let by_pid = Some(Selection::ByPid as u8);
    let daemon = Running::start(options(dir.path()), &[sleeper.pid()]);
    daemon
        .ask(Request::Enable {
            target: Target::Pid(sleeper.pid()),
        })
        .unwrap();
    daemon
        .ask(Request::Enable {
            target: Target::Comm("order-service".into()),
        })
        .unwrap();
    {
        let tables = daemon.tables.lock();
        assert_eq!(tables.selected.get(&sleeper.pid()).copied(), by_pid);
        assert_eq!(tables.comm_rules.len(), 1);
    }
    let Response::Listing(listing) = daemon.ask(Request::List).unwrap() else {
        panic!("a listing")
    };
    assert_eq!(listing.rules.len(), 1, "{listing:?}");
    assert_eq!(listing.processes.len(), 1, "{listing:?}");
    daemon.stop().unwrap();

    // A new daemon on new tables: the same rules from the state file.
    let daemon = Running::start(options(dir.path()), &[sleeper.pid()]);
    {
        let tables = daemon.tables.lock();
        assert_eq!(tables.selected.get(&sleeper.pid()).copied(), by_pid);
        assert_eq!(
            tables.comm_rules.values().collect::<Vec<_>>(),
            [&(Selection::ByComm as u8)]
        );
    }

    // A disable is kept as well: after the next restart the process is not selected.
    daemon
        .ask(Request::Disable {
            target: Target::Pid(sleeper.pid()),
        })
        .unwrap();
    daemon.stop().unwrap();
    let daemon = Running::start(options(dir.path()), &[sleeper.pid()]);
    assert_eq!(daemon.tables.lock().selected.get(&sleeper.pid()), None);
}

/// One connection as the kernel programs report it, its bytes at advancing positions.
struct Stream {
    /// (pid, fd, connection id)
    socket: (u32, i32, u64),
    positions: [u64; 2],
}

impl Stream {
    /// A connection `pid` made (to a broker) or accepted (from a client: it is the broker).
    fn open(daemon: &Running, id: u64, pid: u32, origin: Origin) -> Self {
        let fd = id as i32 + 10;
        daemon.tables.lock().connect(pid, fd, id, origin);
        Self {
            socket: (pid, fd, id),
            positions: [0, 0],
        }
    }

    fn bytes(&mut self, daemon: &Running, direction: Direction, bytes: &[u8]) {
        let position = &mut self.positions[direction as usize];
        daemon
            .tables
            .lock()
            .transfer(self.socket, direction, *position, bytes);
        *position += bytes.len() as u64;
    }

    /// Whether the kernel still copies it.
    fn copied(&self, daemon: &Running) -> bool {
        let (pid, fd, id) = self.socket;
        daemon
            .tables
            .lock()
            .sockets
            .get(&SocketKey { pid, fd })
            .is_some_and(|state| state.connection_id == id)
    }
}

/// A send of one message to topic "orders" with key "order-1", and its answer.
fn send_and_answer() -> (Vec<u8>, Vec<u8>) {
    send_and_answer_of(1, "7F0000010001")
}

/// A send (request `opaque`) of message `id` to topic "orders" with key "order-1", and its
/// answer.
fn send_and_answer_of(opaque: i32, id: &str) -> (Vec<u8>, Vec<u8>) {
    let props = properties(&[("UNIQ_KEY", id), ("KEYS", "order-1")]);
    let send = request_frame(
        RequestCode::SendMessage,
        opaque,
        &[
            ("producerGroup", "pg"),
            ("topic", "orders"),
            ("queueId", "0"),
            ("properties", &props),
        ],
        b"body",
    );
    let answer = response_frame(
        ResponseCode::Success,
        opaque,
        &[
            ("msgId", "OFFSETID"),
            ("queueId", "0"),
            ("queueOffset", "5"),
        ],
        b"",
    );
    (send, answer)
}

#[test]
fn rocketmq_traffic_becomes_spans_and_other_traffic_is_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path());
    let output = options.output.clone().unwrap();
    let pid = std::process::id();
    let daemon = Running::start(options, &[pid]);

    let mut rocketmq = Stream::open(&daemon, 1, pid, Origin::Connect);
    let (send, answer) = send_and_answer();
    rocketmq.bytes(&daemon, Direction::Egress, &send);
    rocketmq.bytes(&daemon, Direction::Ingress, &answer);

    let mut http = Stream::open(&daemon, 2, pid, Origin::Connect);
    http.bytes(
        &daemon,
        Direction::Egress,
        b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
    );

    daemon.wait_for("the send span in the output file", || {
        std::fs::read_to_string(&output).is_ok_and(|text| text.contains("send orders"))
    });
    daemon.wait_for("the HTTP connection to be let go", || !http.copied(&daemon));
    assert!(
        rocketmq.copied(&daemon),
        "RocketMQ's connection is followed"
    );
    let spans = std::fs::read_to_string(&output).unwrap();
    assert_eq!(spans.lines().count(), 1, "{spans}");
    assert!(spans.contains("order-1"), "{spans}");
    let Response::Status(status) = daemon.ask(Request::Status).unwrap() else {
        panic!("a status")
    };
    assert_eq!(
        status.counters["pipeline"]["correlation"]["sends"], 1,
        "{:#}",
        status.counters
    );
    assert_eq!(
        status.counters["agent"]["connections_tracked"], 1,
        "{:#}",
        status.counters
    );
    daemon.stop().unwrap();
}

#[test]
fn the_brokers_side_makes_spans_unless_turned_off() {
    for broker_spans in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut options = options(dir.path());
        options.broker_spans = broker_spans;
        let output = options.output.clone().unwrap();
        let pid = std::process::id();
        let daemon = Running::start(options, &[pid]);
        // The traced process accepted a client's connection: it is the broker there.
        let mut served = Stream::open(&daemon, 1, pid, Origin::Accept);
        let (send, answer) = send_and_answer();
        served.bytes(&daemon, Direction::Ingress, &send);
        served.bytes(&daemon, Direction::Egress, &answer);
        if broker_spans {
            daemon.wait_for("the store span in the output file", || {
                std::fs::read_to_string(&output).is_ok_and(|text| text.contains("store orders"))
            });
        } else {
            daemon.wait_for("the broker's side to be let go", || !served.copied(&daemon));
        }
        let Response::Status(status) = daemon.ask(Request::Status).unwrap() else {
            panic!("a status")
        };
        let correlation = &status.counters["pipeline"]["correlation"];
        assert_eq!(
            (&correlation["broker_stored"], &correlation["sends"]),
            (
                &serde_json::json!(u64::from(broker_spans)),
                &serde_json::json!(0)
            ),
            "{:#}",
            status.counters
        );
        daemon.stop().unwrap();
        let spans = std::fs::read_to_string(&output).unwrap_or_default();
        assert_eq!(spans.lines().count(), usize::from(broker_spans), "{spans}");
    }
}

#[test]
fn healthz_fails_while_the_pipeline_is_stuck_and_recovers_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path());
    options.health_stall = Duration::from_secs(2);
    let metrics = options.metrics_address;
    let daemon = Running::start(options, &[]);
    assert_eq!(get(metrics, "/healthz"), (200, "ok\n".into()));

    // The daemon's thread blocks for 6 s; /healthz keeps answering, and says so.
    daemon.tables.lock().stall = Some(Duration::from_secs(6));
    let stalled_at = Instant::now();
    let (status, body) = loop {
        let (status, body) = get(metrics, "/healthz");
        if status != 200 || stalled_at.elapsed() > Duration::from_secs(5) {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("stalled: the pipeline has not advanced for"),
        "{body}"
    );
    daemon.wait_for("/healthz to recover", || get(metrics, "/healthz").0 == 200);
    assert!(
        stalled_at.elapsed() >= Duration::from_secs(5),
        "not before the stall ended"
    );
    daemon.stop().unwrap();
}

/// The message ids of the send spans in `output`.
fn sent_ids(output: &Path) -> Vec<String> {
    std::fs::read_to_string(output)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .map(|span| span["attributes"]["messaging.message.id"].to_string())
        .collect()
}

fn counters(daemon: &Running) -> serde_json::Value {
    let Response::Status(status) = daemon.ask(Request::Status).unwrap() else {
        panic!("a status")
    };
    status.counters
}

#[test]
fn a_newer_daemon_takes_over_each_request_is_traced_by_one_of_them() {
    let (old_dir, new_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pid = std::process::id();
    let old_options = options(old_dir.path());
    let old_output = old_options.output.clone().unwrap();
    let old = Running::start(old_options, &[pid]);
    let mut old_view = Stream::open(&old, 1, pid, Origin::Connect);
    let (first, first_answer) = send_and_answer_of(1, "7F00000100000001");
    old_view.bytes(&old, Direction::Egress, &first);

    // The newer agent, on the same control socket, joins the connection mid-stream.
    let mut new_options = options(new_dir.path());
    new_options.control_socket = old.socket.clone();
    let new_output = new_options.output.clone().unwrap();
    let new = Running::start(new_options, &[pid]);
    // The old agent answers on the socket until the newer one has replaced it.
    new.wait_for("the newer agent on the socket", || {
        counters(&new)["agent"]["handover"]["taken_over"] == 1
    });
    let mut new_view = Stream::open(&new, 1, pid, Origin::Connect);
    new_view.positions = old_view.positions;
    let (second, second_answer) = send_and_answer_of(2, "7F00000100000002");
    for (daemon, view) in [(&old, &mut old_view), (&new, &mut new_view)] {
        view.bytes(daemon, Direction::Ingress, &first_answer);
        view.bytes(daemon, Direction::Egress, &second);
        view.bytes(daemon, Direction::Ingress, &second_answer);
    }
    new.wait_for("the second send's span", || {
        sent_ids(&new_output).len() == 1
    });
    old.wait_for("the first send's span", || sent_ids(&old_output).len() == 1);
    old.stop().unwrap();
    assert_eq!(sent_ids(&old_output), ["\"7F00000100000001\""]);
    assert!(
        new.socket.exists(),
        "the old agent left the newer one's control socket in place"
    );
    let counted = counters(&new);
    assert_eq!(
        counted["pipeline"]["correlation"]["sends"], 1,
        "{counted:#}"
    );
    new.stop().unwrap();
    assert_eq!(sent_ids(&new_output), ["\"7F00000100000002\""]);
}

#[test]
fn an_agent_that_handed_over_refuses_a_second_successor_and_another_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Running::start(options(dir.path()), &[]);
    let hand_over = |protocol| Request::HandOver {
        protocol,
        successor_pid: 1,
        from_ns: monotonic_ns(),
    };
    // Asked for long ago: its asker has given up waiting, and traces everything itself.
    let stale = Request::HandOver {
        protocol: HANDOVER_PROTOCOL,
        successor_pid: 1,
        from_ns: monotonic_ns() - 6_000_000_000,
    };
    let refused = daemon.ask(stale).unwrap_err();
    assert!(
        format!("{refused:#}").contains("asked for too long ago"),
        "{refused:#}"
    );
    let refused = daemon.ask(hand_over(HANDOVER_PROTOCOL + 1)).unwrap_err();
    assert!(
        format!("{refused:#}").contains(&format!("hands over by protocol {HANDOVER_PROTOCOL}")),
        "{refused:#}"
    );
    assert!(matches!(
        daemon.ask(hand_over(HANDOVER_PROTOCOL)),
        Ok(Response::HandedOver { .. })
    ));
    let refused = daemon.ask(hand_over(HANDOVER_PROTOCOL)).unwrap_err();
    assert!(
        format!("{refused:#}").contains("handed over to pid 1 already"),
        "{refused:#}"
    );
    assert_eq!(counters(&daemon)["agent"]["handover"]["handed_over"], 1);
}

#[test]
fn a_running_agent_that_cannot_hand_over_is_counted_and_its_socket_taken() {
    use std::io::{BufRead, Write};
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path());
    // An agent of a version without hand-over: it answers every request it does not know so.
    let listener = std::os::unix::net::UnixListener::bind(&options.control_socket).unwrap();
    let old = std::thread::spawn(move || {
        loop {
            let (stream, _) = listener.accept().unwrap();
            let mut request = String::new();
            let _ = std::io::BufReader::new(&stream).read_line(&mut request);
            let _ = (&stream).write_all(
                b"{\"response\":\"error\",\"message\":\"not a request mqtrace understands\"}\n",
            );
            if request.contains("\"request\":\"hand_over\"") {
                return request;
            }
        }
    });
    let new = Running::start(options, &[]);
    let request = old.join().unwrap();
    assert!(request.contains("\"protocol\":1"), "{request}");
    let counted = counters(&new);
    assert_eq!(counted["agent"]["handover"]["refused"], 1, "{counted:#}");
    assert_eq!(counted["agent"]["handover"]["taken_over"], 0, "{counted:#}");
}

#[test]
fn an_agent_whose_successor_exits_traces_everything_again() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path());
    let output = options.output.clone().unwrap();
    let pid = std::process::id();
    let daemon = Running::start(options, &[pid]);
    let successor = Sleeper::start();
    let handed = daemon.ask(Request::HandOver {
        protocol: HANDOVER_PROTOCOL,
        successor_pid: successor.pid(),
        from_ns: monotonic_ns(),
    });
    assert!(
        matches!(handed, Ok(Response::HandedOver { .. })),
        "{handed:?}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(counters(&daemon)["agent"]["handover"]["taken_back"], 0);
    drop(successor);
    daemon.wait_for("the agent to take back what it handed over", || {
        counters(&daemon)["agent"]["handover"]["taken_back"] == 1
    });
    let mut stream = Stream::open(&daemon, 1, pid, Origin::Connect);
    let (send, answer) = send_and_answer();
    stream.bytes(&daemon, Direction::Egress, &send);
    stream.bytes(&daemon, Direction::Ingress, &answer);
    daemon.wait_for("the send's span", || sent_ids(&output).len() == 1);
}
