//! frame-load: the project's own RocketMQ load generator. A client (this process) and a server
//! (a child process: a process that accepts RocketMQ connections is a broker to the agent, and
//! makes no client spans) exchange real frames (see `mqtrace_tests::frames`) over loopback TCP
//! at a fixed message rate, one write per frame as real clients and brokers do, so that an
//! agent tracing this process sees what it would see of a producer (or consumer) far faster
//! than the real broker here can go.
//!
//! usage: frame-load send|pull RATE SECONDS
//!   prints "server-pid PID" (the server process, for an agent tracing the broker's side) and
//!   "ready", waits for a line on stdin, connects and runs; then prints one JSON line
//!   {"mode","target_per_s","messages","seconds","achieved_per_s"}. RATE counts messages: in
//!   pull mode each response carries 32 of them.
//! (frame-load serve send|pull RUN: the server side, started by the client.)

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use mqtrace_tests::frames::{self, Exchange, FIRST_OPAQUE, message_id};

const PULL_BATCH: usize = 32;

/// Reads one frame (length prefix included) into `buf`; false at the end of the stream.
fn read_frame(reader: &mut impl Read, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    buf.clear();
    buf.extend_from_slice(&len);
    buf.resize(4 + u32::from_be_bytes(len) as usize, 0);
    reader.read_exact(&mut buf[4..])?;
    Ok(true)
}

/// The broker's side: answers every request with the template response, new IDs in pull mode.
fn serve(listener: TcpListener, exchange: &Exchange, run: u64) -> anyhow::Result<()> {
    let (stream, _) = listener.accept()?;
    // One fd for both directions, as brokers do (the agent follows a socket by its fd).
    let mut writer = &stream;
    let mut reader = BufReader::with_capacity(1 << 16, &stream);
    let mut request = Vec::new();
    let mut next_id = 0u64;
    while read_frame(&mut reader, &mut request)? {
        let opaque = exchange
            .request
            .opaque_of(&request)
            .context("a request not made from the template")?;
        let response = exchange.response.render(opaque, |_| {
            next_id += 1;
            message_id(run, 1 << 40 | next_id)
        });
        writer.write_all(&response)?;
    }
    Ok(())
}

/// The frames of `mode`, and the messages each request moves.
fn exchange(mode: &str) -> anyhow::Result<(Exchange, usize)> {
    let captures = Path::new(env!("CARGO_MANIFEST_DIR")).join("captures/rust-client");
    Ok(match mode {
        "send" => (frames::send_exchange(&captures)?, 1),
        "pull" => (frames::pull_exchange(&captures, PULL_BATCH)?, PULL_BATCH),
        other => bail!("mode {other:?}: send or pull"),
    })
}

/// The server process: says where it listens, serves one connection, exits.
fn server_process(mode: &str, run: u64) -> anyhow::Result<()> {
    let (exchange, _) = exchange(mode)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    serve(listener, &exchange, run)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, serve, mode, run] = args.as_slice()
        && serve == "serve"
    {
        return server_process(mode, run.parse()?);
    }
    let (mode, rate, seconds) = match args.as_slice() {
        [_, mode, rate, seconds] => (mode.as_str(), rate.parse::<f64>()?, seconds.parse::<f64>()?),
        _ => bail!("usage: frame-load send|pull RATE SECONDS"),
    };
    let (exchange, per_request) = exchange(mode)?;
    // Tells runs apart, so that no two runs make the same message ID.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as u64;
    let mut server = Command::new(std::env::current_exe()?)
        .args(["serve", mode, &run.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the server process")?;
    let mut address = String::new();
    BufReader::new(server.stdout.take().context("server stdout")?).read_line(&mut address)?;
    let address: std::net::SocketAddr = address
        .trim()
        .parse()
        .with_context(|| format!("the server said {address:?}"))?;
    println!("server-pid {}", server.id());
    println!("ready");
    std::io::stdin().lock().read_line(&mut String::new())?;

    let requests = ((rate * seconds) as usize).div_ceil(per_request);
    // Connected before the server accepts: the listener's backlog holds it.
    let client = TcpStream::connect(address)?;
    client.set_nodelay(true)?;
    let elapsed = std::thread::scope(|scope| -> anyhow::Result<Duration> {
        let client = &client;
        let mut responses = BufReader::with_capacity(1 << 16, client);
        let reader = scope.spawn(move || -> anyhow::Result<usize> {
            let mut frame = Vec::new();
            let mut got = 0;
            while got < requests && read_frame(&mut responses, &mut frame)? {
                got += 1;
            }
            Ok(got)
        });
        let started = Instant::now();
        let per_second = rate / per_request as f64;
        for i in 0..requests {
            // Paced: request i is due at i / per_second; the writer sleeps only when ahead.
            let due = started + Duration::from_secs_f64(i as f64 / per_second);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let opaque = FIRST_OPAQUE + i as u32;
            let frame = exchange
                .request
                .render(opaque, |_| message_id(run, i as u64));
            (&*client).write_all(&frame)?;
        }
        let answered = reader.join().expect("reader thread")?;
        let elapsed = started.elapsed();
        client.shutdown(std::net::Shutdown::Both)?;
        if answered != requests {
            bail!("{answered} of {requests} requests answered");
        }
        Ok(elapsed)
    });
    if elapsed.is_err() {
        let _ = server.kill(); // it may still wait for the connection
    }
    let served = server.wait()?;
    let elapsed = elapsed?;
    if !served.success() {
        bail!("the server process failed: {served}");
    }
    let messages = requests * per_request;
    println!(
        "{}",
        serde_json::json!({
            "mode": mode,
            "target_per_s": rate,
            "messages": messages,
            "seconds": elapsed.as_secs_f64(),
            "achieved_per_s": (messages as f64 / elapsed.as_secs_f64()).round(),
        })
    );
    Ok(())
}
