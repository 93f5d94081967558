//! The capture's policy (selection, sockets, connection ends) over tables and a host in
//! memory: the code the live capture runs, without root or eBPF. The kernel's side of it is
//! tested for real in tests/tests/kernel_capture.rs.

use mqtrace_common::Origin as KernelOrigin;

use super::{
    tables::memory::{FakeHost, MemoryTables},
    *,
};
use crate::sources::Direction;

const AGENT: u32 = 1;
const CLIENT: u32 = 10;

fn open_socket(fd: i32) -> procfs::OpenSocket {
    procfs::OpenSocket {
        fd,
        local: "127.0.0.1:40000".parse().unwrap(),
        peer: "127.0.0.1:10911".parse().unwrap(),
    }
}

/// A host with the agent and one client holding two established connections (fds 3 and 4).
fn host() -> FakeHost {
    let mut host = FakeHost {
        own_pid: AGENT,
        ..FakeHost::default()
    };
    host.processes.insert(AGENT, Vec::new());
    host.processes
        .insert(CLIENT, vec![open_socket(3), open_socket(4)]);
    host
}

fn capture(trace_all: bool, host: FakeHost) -> KernelCapture<MemoryTables, FakeHost> {
    KernelCapture::over(
        MemoryTables::default(),
        host,
        CaptureOptions {
            trace_all,
            ..CaptureOptions::default()
        },
    )
}

fn events(capture: &mut KernelCapture<MemoryTables, FakeHost>) -> Vec<SourceEvent> {
    let mut out = Vec::new();
    capture.drain_now(&mut out);
    out
}

fn opened_ids(events: &[SourceEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            SourceEvent::Opened(c) if c.origin == Origin::Existing => Some(c.id.0),
            _ => None,
        })
        .collect()
}

#[test]
fn a_selected_process_has_its_open_connections_picked_up_mid_stream() {
    let mut capture = capture(false, host());
    assert!(!capture.is_traced(CLIENT).unwrap());
    capture.select(CLIENT).unwrap();
    assert_eq!(
        capture.tables.selected.get(&CLIENT),
        Some(&(Selection::ByPid as u8))
    );
    let ids = opened_ids(&events(&mut capture));
    assert_eq!(ids.len(), 2, "both established connections");
    assert!(ids.iter().all(|id| id & USER_CONNECTION_ID_BIT != 0));
    assert_eq!(
        capture.sockets_per_process().unwrap().get(&CLIENT),
        Some(&2)
    );
    // Selected again: nothing new.
    capture.select(CLIENT).unwrap();
    assert!(opened_ids(&events(&mut capture)).is_empty());
    // Neither the agent nor a process that is not there.
    let own = capture.select(AGENT).unwrap_err().to_string();
    assert!(own.contains("does not trace itself"), "{own}");
    let gone = capture.select(99).unwrap_err().to_string();
    assert!(gone.contains("no process with pid 99"), "{gone}");
}

#[test]
fn a_full_socket_table_leaves_the_rest_untracked() {
    let mut capture = capture(false, host());
    capture.tables.socket_capacity = Some(1);
    capture.select(CLIENT).unwrap();
    assert_eq!(opened_ids(&events(&mut capture)).len(), 1);
}

#[test]
fn deselected_its_connections_end_after_the_records_already_captured() {
    let mut capture = capture(false, host());
    capture.select(CLIENT).unwrap();
    let ids = opened_ids(&events(&mut capture));
    capture
        .tables
        .transfer((CLIENT, 3, ids[0]), Direction::Egress, 0, b"hello");
    capture.deselect(CLIENT).unwrap();
    assert!(capture.tables.selected.is_empty());
    assert!(capture.tables.sockets.is_empty());
    let after = events(&mut capture);
    assert!(
        matches!(&after[0], SourceEvent::Data(chunk) if chunk.bytes.as_ref() == b"hello"),
        "the record first: {after:?}"
    );
    let mut ended: Vec<u64> = after[1..]
        .iter()
        .map(|e| match e {
            SourceEvent::Closed {
                connection,
                cause: EndCause::Deselected,
                ..
            } => connection.0,
            other => panic!("not a deselected end: {other:?}"),
        })
        .collect();
    ended.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(ended, want);
}

#[test]
fn tracing_all_starts_with_every_process_but_the_agent_and_excludes_on_deselect() {
    let mut capture = capture(true, host());
    assert_eq!(opened_ids(&events(&mut capture)).len(), 2);
    assert!(capture.is_traced(CLIENT).unwrap());
    assert!(capture.tables.sockets.keys().all(|k| k.pid == CLIENT));
    capture.deselect(CLIENT).unwrap();
    assert!(!capture.is_traced(CLIENT).unwrap());
    assert_eq!(
        capture.selections().unwrap().get(&CLIENT),
        Some(&Selection::Excluded)
    );
    assert!(capture.tables.sockets.is_empty());
    // Enabled again: its connections are picked up anew.
    capture.set_selection(CLIENT, Selection::ByPid).unwrap();
    assert_eq!(
        opened_ids(&events(&mut capture)).len(),
        2,
        "picked up again after the ends"
    );
}

#[test]
fn an_exiting_process_loses_its_selection_and_its_sockets() {
    let mut capture = capture(false, host());
    capture.select(CLIENT).unwrap();
    events(&mut capture);
    capture.tables.exit(CLIENT);
    let after = events(&mut capture);
    assert_eq!(after, [SourceEvent::ProcessExited { pid: CLIENT }]);
    assert!(capture.tables.selected.is_empty());
    assert!(capture.tables.sockets.is_empty());
}

#[test]
fn a_connected_socket_that_is_not_tcp_is_let_go_unseen() {
    let mut host = host();
    host.datagram_sockets.push((CLIENT, 7));
    let mut capture = capture(false, host);
    capture.select(CLIENT).unwrap();
    events(&mut capture);
    // The kernel tracked both connects; user space lets the UDP one go.
    for (fd, id) in [(7, 70), (8, 80)] {
        capture
            .tables
            .connect(CLIENT, fd, id, KernelOrigin::Connect);
    }
    capture
        .tables
        .transfer((CLIENT, 7, 70), Direction::Egress, 0, b"datagram");
    let after = events(&mut capture);
    assert_eq!(after.len(), 1, "only the TCP connection: {after:?}");
    assert!(matches!(&after[0], SourceEvent::Opened(c) if c.id.0 == 80));
    assert!(
        !capture
            .tables
            .sockets
            .contains_key(&SocketKey { pid: CLIENT, fd: 7 })
    );
    assert_eq!(capture.non_tcp_sockets(), 1);
}

#[test]
fn sockets_closed_unseen_are_swept_and_their_connections_end() {
    let mut host = host();
    host.closed_fds.push((CLIENT, 4));
    let mut capture = capture(false, host);
    capture.select(CLIENT).unwrap();
    events(&mut capture);
    assert_eq!(capture.sweep_stale_sockets().unwrap(), 1);
    let after = events(&mut capture);
    assert!(
        matches!(
            after.as_slice(),
            [SourceEvent::Closed {
                cause: EndCause::Closed,
                ..
            }]
        ),
        "{after:?}"
    );
    assert_eq!(
        capture.sockets_per_process().unwrap().get(&CLIENT),
        Some(&1)
    );
}

#[test]
fn one_connection_stops_being_copied_unless_its_fd_holds_a_newer_one() {
    let mut capture = capture(false, host());
    capture.select(CLIENT).unwrap();
    let opened: Vec<Connection> = events(&mut capture)
        .into_iter()
        .filter_map(|e| match e {
            SourceEvent::Opened(c) => Some(c),
            _ => None,
        })
        .collect();
    // The fd of the first now holds a newer connection: its entry stays.
    let newer = SocketState {
        connection_id: 999,
        positions: [0, 0],
        flags: 0,
    };
    capture.tables.sockets.insert(
        SocketKey {
            pid: CLIENT,
            fd: opened[0].fd,
        },
        newer,
    );
    capture.stop_copying(&opened[0]).unwrap();
    capture.stop_copying(&opened[1]).unwrap();
    assert_eq!(capture.tables.sockets.len(), 1);
    assert_eq!(
        capture
            .tables
            .sockets
            .values()
            .next()
            .unwrap()
            .connection_id,
        999
    );
    let ends: Vec<EndCause> = events(&mut capture)
        .into_iter()
        .filter_map(|e| match e {
            SourceEvent::Closed { cause, .. } => Some(cause),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [EndCause::NotFollowed, EndCause::NotFollowed]);
}

#[test]
fn rules_reach_their_tables() {
    let mut capture = capture(false, host());
    let mut comm = [0u8; COMM_LEN];
    comm[..4].copy_from_slice(b"java");
    capture
        .set_comm_rule(comm, Some(Selection::ByComm))
        .unwrap();
    capture
        .set_cgroup_rule(42, Some(Selection::Excluded))
        .unwrap();
    assert_eq!(
        capture.tables.comm_rules.get(&comm),
        Some(&(Selection::ByComm as u8))
    );
    assert_eq!(
        capture.tables.cgroup_rules.get(&42),
        Some(&(Selection::Excluded as u8))
    );
    capture.set_comm_rule(comm, None).unwrap();
    assert!(capture.tables.comm_rules.is_empty());
}

/// A client's TLS library, as `/proc` and its symbols show it.
fn tls_library(name: &str) -> tls::TlsLibrary {
    tls::TlsLibrary {
        file: tls::MappedFile {
            identity: ("00:2a".into(), 77),
            name: name.into(),
            deleted: true,
            executable: false,
            path: format!("/proc/{CLIENT}/map_files/7f00-7f10").into(),
        },
        functions: tls::TlsFunction::ALL[..4]
            .iter()
            .enumerate()
            .map(|(i, &f)| (f, 0x1000 * (i as u64 + 1)))
            .collect(),
    }
}

/// A process loads its TLS library after it was selected: probed at the mapping, once; its
/// TLS connection bound by the ciphertext it writes, the plaintext handed on as the
/// connection's, the socket's own bytes no longer copied; detached when the process ends.
#[test]
fn a_tls_library_loaded_later_is_probed_and_its_plaintext_bound_to_the_socket() {
    let mut capture = capture(true, host());
    assert!(capture.tables.tls_probes.is_empty());
    capture.host.libraries.insert(
        CLIENT,
        vec![tls_library("/tmp/libnetty_tcnative_linux_x86_64123.so")],
    );
    capture.tables.map_library(CLIENT);
    capture.tables.map_library(CLIENT);
    events(&mut capture);
    assert_eq!(capture.tables.tls_probes.len(), 4, "each function once");
    assert_eq!(capture.tls_probes_per_process().get(&CLIENT), Some(&4));

    let ssl = 0x7f55_0000_1000;
    let hello = [&[0x16, 0x03, 0x01, 0x01, 0x00][..], &[0xa5; 40]].concat();
    capture.tables.connect(CLIENT, 7, 21, KernelOrigin::Connect);
    capture.tables.tls_ciphertext(CLIENT, ssl, &hello);
    capture
        .tables
        .transfer((CLIENT, 7, 21), Direction::Egress, 0, &hello);
    capture
        .tables
        .tls_plaintext((CLIENT, ssl), Direction::Egress, 0, b"PRI * HTTP/2.0\r\n");
    let out = events(&mut capture);
    let plaintext = crate::sources::tls::plaintext_id(ConnectionId(21));
    let opened: Vec<(ConnectionId, SeenAs)> = out
        .iter()
        .filter_map(|e| match e {
            SourceEvent::Opened(c) => Some((c.id, c.seen_as)),
            _ => None,
        })
        .collect();
    assert_eq!(
        opened,
        [
            (ConnectionId(21), SeenAs::Plain),
            (plaintext, SeenAs::TlsUprobe)
        ]
    );
    let data: Vec<&SourceEvent> = out
        .iter()
        .filter(|e| matches!(e, SourceEvent::Data(_)))
        .collect();
    assert!(
        matches!(data.as_slice(), [SourceEvent::Data(chunk)] if chunk.connection == plaintext && chunk.bytes.as_ref() == b"PRI * HTTP/2.0\r\n"),
        "{out:?}"
    );
    assert_eq!(
        capture.tables.sockets[&SocketKey { pid: CLIENT, fd: 7 }].flags,
        SOCKET_PAYLOAD_IGNORED
    );
    assert_eq!(capture.tls_counters().binding.connections_bound, 1);

    // The pipeline lets the plaintext stream go: the object's plaintext is no longer copied,
    // the socket leaves the table, both end.
    let plaintext_connection = out
        .iter()
        .find_map(|e| match e {
            SourceEvent::Opened(c) if c.id == plaintext => Some(c.clone()),
            _ => None,
        })
        .unwrap();
    capture.stop_copying(&plaintext_connection).unwrap();
    assert_eq!(
        capture.tables.ignored_tls_objects,
        [TlsKey {
            pid: CLIENT,
            _pad: 0,
            ssl
        }]
    );
    assert!(
        !capture
            .tables
            .sockets
            .contains_key(&SocketKey { pid: CLIENT, fd: 7 })
    );
    let ended: Vec<ConnectionId> = events(&mut capture)
        .iter()
        .filter_map(|e| match e {
            SourceEvent::Closed { connection, .. } => Some(*connection),
            _ => None,
        })
        .collect();
    assert_eq!(ended, [plaintext, ConnectionId(21)]);

    capture.tables.exit(CLIENT);
    events(&mut capture);
    assert!(capture.tables.tls_probes.is_empty());
    assert_eq!(capture.tls_counters().probes, 0);
}

/// A TLS connection open before the agent started (an upgrade, a restart: gRPC clients keep
/// theirs for hours) is bound by the ciphertext written on it, as a new one is: the binder
/// knows the connections found in /proc too.
#[test]
fn a_tls_connection_open_before_the_agent_started_is_bound() {
    let mut host = host();
    host.libraries.insert(
        CLIENT,
        vec![tls_library("/tmp/libnetty_tcnative_linux_x86_64123.so")],
    );
    let mut capture = capture(true, host);
    assert_eq!(opened_ids(&events(&mut capture)).len(), 2);
    let id = capture.tables.sockets[&SocketKey { pid: CLIENT, fd: 3 }].connection_id;
    let ssl = 0x7f55_0000_2000;
    let record = [&[0x17, 0x03, 0x03, 0x00, 0x40][..], &[0x5a; 40]].concat();
    capture.tables.tls_ciphertext(CLIENT, ssl, &record);
    capture
        .tables
        .transfer((CLIENT, 3, id), Direction::Egress, 0, &record);
    capture
        .tables
        .tls_plaintext((CLIENT, ssl), Direction::Egress, 0, b"frame");
    let out = events(&mut capture);
    assert_eq!(
        capture.tls_counters().binding.connections_bound,
        1,
        "{out:?}"
    );
    let plaintext = crate::sources::tls::plaintext_id(ConnectionId(id));
    assert!(
        out.iter().any(|e| matches!(e, SourceEvent::Data(chunk)
            if chunk.connection == plaintext && chunk.bytes.as_ref() == b"frame")),
        "{out:?}"
    );
}

/// Tracing every process, a program's probes serve each process that runs it: attached once,
/// counted for each.
#[test]
fn tracing_all_a_programs_probes_serve_every_process_that_runs_it() {
    let mut host = host();
    let other = CLIENT + 1;
    host.processes.insert(other, Vec::new());
    let mut program = tls_library("/usr/local/bin/go-producer");
    program.file.deleted = false;
    program.file.executable = true;
    host.libraries.insert(CLIENT, vec![program.clone()]);
    host.libraries.insert(other, vec![program]);
    let mut capture = capture(true, host);
    let probes = capture.tables.tls_probes.clone();
    assert_eq!(probes.len(), 4, "attached once, at start: {probes:?}");
    assert!(
        probes.iter().all(|(pid, _, _)| *pid == 0),
        "for every process"
    );
    assert_eq!(capture.tls_probes_per_process().get(&CLIENT), Some(&4));
    assert_eq!(capture.tls_probes_per_process().get(&other), Some(&4));
    capture.tables.map_library(other);
    events(&mut capture);
    assert_eq!(capture.tables.tls_probes.len(), 4);
    assert_eq!(capture.tls_counters().probes, 4);
}

/// A process the kernel stopped at exec is continued once its program has been looked at:
/// probed when it carries TLS, at once when it does not; each hold counted.
#[test]
fn a_process_held_at_exec_is_continued_once_probed() {
    let mut host = host();
    let plain = CLIENT + 1;
    host.processes.insert(plain, Vec::new());
    let mut capture = capture(false, host);
    capture.set_selection(CLIENT, Selection::ByPid).unwrap();
    capture.set_selection(plain, Selection::ByPid).unwrap();
    events(&mut capture); // their connections picked up
    // Each then execs a program: CLIENT's carries TLS.
    let mut program = tls_library("/usr/local/bin/go-producer");
    program.file.deleted = false;
    program.file.executable = true;
    capture.host.libraries.insert(CLIENT, vec![program]);
    capture.tables.exec_held(CLIENT);
    capture.tables.exec_held(plain);
    // Probed at once; still held while the stages after the capture read who each is.
    assert_eq!(
        events(&mut capture),
        [
            SourceEvent::ProcessStarted { pid: CLIENT },
            SourceEvent::ProcessStarted { pid: plain }
        ]
    );
    assert_eq!(capture.tables.tls_probes.len(), 4);
    assert!(capture.host.resumed.lock().unwrap().is_empty());
    // Continued at the next read.
    events(&mut capture);
    assert_eq!(*capture.host.resumed.lock().unwrap(), [CLIENT, plain]);
    assert_eq!(capture.tls_counters().capture.processes_held, 2);

    // One still in the ring when the agent stops is continued, and no more are held.
    capture.tables.exec_held(plain);
    capture.tables.holding = true;
    capture.release_held();
    assert_eq!(
        *capture.host.resumed.lock().unwrap(),
        [CLIENT, plain, plain]
    );
    assert!(!capture.tables.holding);
}

/// A held process the agent may not signal (a security module's rule) is said, counted, and
/// switches holding off: every later one would stay stopped too.
#[test]
fn a_held_process_that_cannot_be_continued_switches_holding_off() {
    let mut host = host();
    host.unsignalled.push(CLIENT);
    let mut capture = capture(false, host);
    capture.tables.holding = true;
    capture.set_selection(CLIENT, Selection::ByPid).unwrap();
    capture.tables.exec_held(CLIENT);
    events(&mut capture);
    events(&mut capture);
    assert!(!capture.tables.holding);
    assert_eq!(capture.tls_counters().capture.resume_failures, 1);
}

/// An exec read early, while connections are ended (a sweep, a deselection), waits with the
/// events read then: its process is continued only once those events have been handed on
/// and the next read comes.
#[test]
fn a_process_held_at_exec_read_early_waits_for_its_start_to_be_handed_on() {
    let mut capture = capture(false, host());
    capture.set_selection(CLIENT, Selection::ByPid).unwrap();
    events(&mut capture);
    capture.tables.exec_held(CLIENT);
    capture.sweep_stale_sockets().unwrap();
    assert!(capture.host.resumed.lock().unwrap().is_empty());
    let handed = events(&mut capture);
    assert!(handed.contains(&SourceEvent::ProcessStarted { pid: CLIENT }));
    assert!(capture.host.resumed.lock().unwrap().is_empty());
    events(&mut capture);
    assert_eq!(*capture.host.resumed.lock().unwrap(), [CLIENT]);
}
