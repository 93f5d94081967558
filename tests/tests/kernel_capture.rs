//! Real kernel probes against a real process exchanging known bytes over loopback TCP.
//! Needs root (every session and CI run as root); fails, never skips, without it.

use std::{process::Command, time::Duration};

use mqtrace::sources::{
    Direction, SourceEvent,
    capture::Capture,
    kernel::{CaptureOptions, KernelCapture},
};
use mqtrace_common::Counter;
use mqtrace_tests::{
    all_families_plan, cap_plan,
    capture::{collect_until_exit, drain},
    phase_plan,
    process::Driven,
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// `socket-exchange MODE SEED`, once it says it is ready (its first connection is open).
fn helper(mode: &str, seed: u64) -> Driven {
    let mut command = Command::new(env!("CARGO_BIN_EXE_socket-exchange"));
    command.args([mode, &seed.to_string()]);
    let mut child = Driven::spawn(command).expect("start socket-exchange");
    child.expect_line("ready").unwrap();
    child
}

/// Equality of long byte strings, reported by first difference instead of a megabyte dump.
fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let first = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: got {} bytes, want {}; first difference at offset {first}",
            got.len(),
            want.len()
        );
    }
}

fn assert_no_loss(capture: &KernelCapture) {
    let counters = capture.counters().unwrap();
    for counter in [
        Counter::RecordsLost,
        Counter::BytesNotCopied,
        Counter::UserReadFailures,
        Counter::SocketTableFull,
    ] {
        assert_eq!(
            counters.get(counter),
            0,
            "{} must be 0: {counters:?}",
            counter.name()
        );
    }
    assert_eq!(capture.malformed_records(), 0);
}

#[tokio::test]
async fn every_syscall_family_is_rebuilt_byte_for_byte() {
    let seed = 7;
    let mut child = helper("all", seed);
    // The child's first connection is open already: it must be picked up from /proc.
    let mut capture = KernelCapture::start(CaptureOptions::default()).expect("start capture");
    capture.select(child.pid()).unwrap();
    child.say("go").unwrap();
    let captured = collect_until_exit(&mut capture, child.pid(), TIMEOUT)
        .await
        .unwrap();
    child.wait_success().unwrap();

    let plan = all_families_plan(seed);
    let mut want = Vec::new();
    for exchange in &plan {
        want.push((exchange.request(), exchange.reply())); // client side
        want.push((exchange.reply(), exchange.request())); // server side
    }
    want.sort();
    let got = captured.exchanges();
    assert_eq!(got.len(), want.len(), "connections with traffic");
    for (i, ((got_out, got_in), (want_out, want_in))) in got.iter().zip(&want).enumerate() {
        assert_same(&format!("connection {i} egress"), got_out, want_out);
        assert_same(&format!("connection {i} ingress"), got_in, want_in);
    }
    for streams in captured.connections.values() {
        assert!(
            streams.iter().all(|s| s.gaps.is_empty()),
            "no gaps expected: {:?}",
            streams.iter().map(|s| &s.gaps).collect::<Vec<_>>()
        );
    }
    assert!(
        captured.pids.values().all(|&pid| pid == child.pid()),
        "only the selected process"
    );
    assert_no_loss(&capture);
}

#[tokio::test]
async fn a_write_over_the_cap_leaves_an_exact_gap_and_the_stream_goes_on() {
    let seed = 11;
    let cap = 64 * 1024;
    let mut child = helper("cap", seed);
    let options = CaptureOptions {
        max_bytes_per_syscall: cap,
        ..CaptureOptions::default()
    };
    let mut capture = KernelCapture::start(options).expect("start capture");
    capture.select(child.pid()).unwrap();
    child.say("go").unwrap();
    let captured = collect_until_exit(&mut capture, child.pid(), TIMEOUT)
        .await
        .unwrap();
    child.wait_success().unwrap();

    let (big, small) = cap_plan(seed);
    let cap = cap as usize;
    let writer = captured
        .direction(&big[..cap], Direction::Egress)
        .expect("writer's connection");
    assert_eq!(
        writer.gaps,
        vec![(cap as u64, (big.len() - cap) as u64)],
        "gap at the cap, of the uncopied size"
    );
    assert_same(
        "writer egress around the gap",
        &writer.bytes,
        &[&big[..cap], &small[..]].concat(),
    );
    let reader = captured
        .connections
        .values()
        .find(|c| {
            c[Direction::Ingress as usize]
                .bytes
                .starts_with(&big[..cap])
        })
        .expect("reader's connection");
    assert_same(
        "reader ingress (reads of 64 KiB, under the cap)",
        &reader[Direction::Ingress as usize].bytes,
        &[&big[..], &small[..]].concat(),
    );
    assert!(reader[Direction::Ingress as usize].gaps.is_empty());

    let counters = capture.counters().unwrap();
    assert_eq!(
        counters.get(Counter::BytesNotCopied),
        (big.len() - cap) as u64
    );
    assert_eq!(counters.get(Counter::RecordsLost), 0);
}

#[tokio::test]
async fn unselected_process_yields_nothing_until_selected() {
    let seed = 13;
    let mut child = helper("phases", seed);
    let mut capture = KernelCapture::start(CaptureOptions::default()).expect("start capture");
    child.say("go").unwrap();
    child.expect_line("phase1").unwrap();
    let before = drain(&mut capture);
    assert!(
        before.is_empty(),
        "an unselected process produced {} events: {:?}",
        before.len(),
        before.first()
    );
    assert_eq!(capture.counters().unwrap().get(Counter::RecordsEmitted), 0);

    // Selected while running: its open connection and a new one are captured from now on.
    capture.select(child.pid()).unwrap();
    child.say("go2").unwrap();
    let captured = collect_until_exit(&mut capture, child.pid(), TIMEOUT)
        .await
        .unwrap();
    child.wait_success().unwrap();
    let mut want: Vec<_> = phase_plan(seed, 2)
        .iter()
        .flat_map(|e| [(e.request(), e.reply()), (e.reply(), e.request())])
        .collect();
    want.sort();
    assert_eq!(captured.exchanges(), want, "exactly the phase-2 exchanges");
    assert_no_loss(&capture);
}

#[tokio::test]
async fn connected_udp_sockets_take_no_slot() {
    let udp_sockets = 50;
    let mut child = helper("udp", udp_sockets);
    let mut capture = KernelCapture::start(CaptureOptions::default()).expect("start capture");
    capture.select(child.pid()).unwrap();
    child.say("go").unwrap();
    child.expect_line("exchanged").unwrap();
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while capture.non_tcp_sockets() < udp_sockets {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {udp_sockets} UDP sockets let go",
            capture.non_tcp_sockets()
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), capture.next_events(&mut events))
            .await;
    }
    capture.drain_now(&mut events);
    // The UDP sockets are still open, yet none holds a slot: only the two TCP pairs (the one
    // found open at selection and the new one) do, and only their bytes are seen.
    assert_eq!(capture.non_tcp_sockets(), udp_sockets);
    assert_eq!(
        capture.sockets_per_process().unwrap().get(&child.pid()),
        Some(&4)
    );
    let opened = events
        .iter()
        .filter(|e| matches!(e, SourceEvent::Opened(_)))
        .count();
    assert_eq!(opened, 4, "{events:?}");
    let data: Vec<&[u8]> = events
        .iter()
        .filter_map(|e| match e {
            SourceEvent::Data(chunk) => Some(&chunk.bytes[..]),
            _ => None,
        })
        .collect();
    assert_eq!(data, [b"tcp bytes"; 2], "only the TCP exchange, both ends");
    child.say("go2").unwrap();
    child.wait_success().unwrap();
}
