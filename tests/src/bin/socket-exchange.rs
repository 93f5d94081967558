//! Helper for the kernel capture tests: exchanges known bytes over loopback TCP with each
//! syscall family, in steps the test drives over stdin/stdout.
//!
//! usage: socket-exchange all|phases|cap SEED
//!        socket-exchange udp SOCKETS   (connected UDP sockets, then one TCP exchange)
//!        socket-exchange echo ROUNDS   (64-byte round trips; prints "elapsed_ns N")

use std::{
    io::{BufRead, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
};

use mqtrace_tests::{Exchange, Family, MAX_READ, all_families_plan, cap_plan, phase_plan};

fn check(ret: isize, what: &str) -> usize {
    if ret < 0 {
        panic!("{what}: {}", std::io::Error::last_os_error());
    }
    ret as usize
}

/// Sends all of `data` with one family's send call, at most `max_send` bytes per call.
fn send_all(fd: i32, family: Family, data: &[u8], max_send: usize) {
    let mut sent = 0;
    while sent < data.len() {
        let piece = &data[sent..data.len().min(sent + max_send)];
        let n = unsafe {
            match family {
                Family::WriteRead => libc::write(fd, piece.as_ptr().cast(), piece.len()),
                Family::SendtoRecvfrom => libc::sendto(
                    fd,
                    piece.as_ptr().cast(),
                    piece.len(),
                    0,
                    std::ptr::null(),
                    0,
                ),
                Family::WritevReadv => {
                    // Many small uneven segments, as a gathering write of queued frames
                    // (Netty's) makes: up to the kernel's limit of iovecs per call.
                    let iov = gather_segments(piece);
                    libc::writev(fd, iov.as_ptr(), iov.len() as i32)
                }
                Family::SendmsgRecvmsg => {
                    // Three uneven segments.
                    let a = piece.len() / 7;
                    let b = piece.len() / 2;
                    let iov = [
                        libc::iovec {
                            iov_base: piece.as_ptr() as *mut _,
                            iov_len: a,
                        },
                        libc::iovec {
                            iov_base: piece[a..].as_ptr() as *mut _,
                            iov_len: b - a,
                        },
                        libc::iovec {
                            iov_base: piece[b..].as_ptr() as *mut _,
                            iov_len: piece.len() - b,
                        },
                    ];
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_iov = iov.as_ptr() as *mut _;
                    msg.msg_iovlen = 3;
                    libc::sendmsg(fd, &msg, 0)
                }
            }
        };
        sent += check(n, "send");
    }
}

/// Iovecs the kernel takes per call at most (UIO_MAXIOV).
const MAX_IOVECS: usize = 1024;

/// `data` cut into segments of 1 to 200 bytes, the last one taking what is left once the
/// kernel's iovec limit is reached.
fn gather_segments(data: &[u8]) -> Vec<libc::iovec> {
    let mut iov = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let len = if iov.len() == MAX_IOVECS - 1 {
            data.len() - at
        } else {
            (iov.len() * 37 % 200 + 1).min(data.len() - at)
        };
        iov.push(libc::iovec {
            iov_base: data[at..].as_ptr() as *mut _,
            iov_len: len,
        });
        at += len;
    }
    iov
}

/// Receives exactly `len` bytes with one family's receive call, at most MAX_READ per call.
fn recv_exact(fd: i32, family: Family, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let want = (len - got).min(MAX_READ);
        let buf = &mut out[got..got + want];
        let n = unsafe {
            match family {
                Family::WriteRead => libc::read(fd, buf.as_mut_ptr().cast(), want),
                Family::SendtoRecvfrom => libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    want,
                    0,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                ),
                Family::WritevReadv | Family::SendmsgRecvmsg => {
                    let first = want.min(1000);
                    let iov = [
                        libc::iovec {
                            iov_base: buf.as_mut_ptr().cast(),
                            iov_len: first,
                        },
                        libc::iovec {
                            iov_base: buf[first..].as_mut_ptr().cast(),
                            iov_len: want - first,
                        },
                    ];
                    if family == Family::WritevReadv {
                        libc::readv(fd, iov.as_ptr(), 2)
                    } else {
                        let mut msg: libc::msghdr = std::mem::zeroed();
                        msg.msg_iov = iov.as_ptr() as *mut _;
                        msg.msg_iovlen = 2;
                        libc::recvmsg(fd, &mut msg, 0)
                    }
                }
            }
        };
        let n = check(n, "recv");
        assert!(n > 0, "peer closed early");
        got += n;
    }
    out
}

fn connected_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

fn run(exchange: &Exchange, pair: &(TcpStream, TcpStream)) {
    let server_fd = pair.1.as_raw_fd();
    let client_fd = pair.0.as_raw_fd();
    let ex = *exchange;
    let server = thread::spawn(move || {
        let request = recv_exact(server_fd, ex.family, ex.request_len);
        assert!(
            request == ex.request(),
            "server received other bytes than were sent"
        );
        send_all(server_fd, ex.family, &ex.reply(), ex.max_send);
    });
    send_all(client_fd, ex.family, &exchange.request(), exchange.max_send);
    let reply = recv_exact(client_fd, ex.family, ex.reply_len);
    assert!(
        reply == ex.reply(),
        "client received other bytes than were sent"
    );
    server.join().unwrap();
}

fn run_plan(plan: &[Exchange], existing: &(TcpStream, TcpStream)) {
    for exchange in plan {
        if exchange.on_existing {
            run(exchange, existing);
        } else {
            run(exchange, &connected_pair());
        }
    }
}

fn wait_for(line: &str) {
    let mut buf = String::new();
    loop {
        buf.clear();
        if std::io::stdin().lock().read_line(&mut buf).unwrap() == 0 {
            panic!("stdin closed while waiting for {line:?}");
        }
        if buf.trim_end() == line {
            return;
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(seed)) = (args.get(1), args.get(2).and_then(|s| s.parse::<u64>().ok()))
    else {
        eprintln!("usage: socket-exchange all|phases|cap SEED");
        std::process::exit(2);
    };
    let existing = connected_pair();
    say("ready");
    wait_for("go");
    match mode.as_str() {
        "all" => run_plan(&all_families_plan(seed), &existing),
        "phases" => {
            run_plan(&phase_plan(seed, 1), &existing);
            say("phase1");
            wait_for("go2");
            run_plan(&phase_plan(seed, 2), &existing);
        }
        "echo" => {
            // One thread does all four syscalls of a round trip: loopback TCP delivers within
            // the sender's syscall, so each read finds its data and the measure is the
            // syscalls' own cost, not scheduler wake-ups. The seed argument is the round count.
            let (client, server) = connected_pair();
            let (client_fd, server_fd) = (client.as_raw_fd(), server.as_raw_fd());
            let message = [42u8; 64];
            let started = std::time::Instant::now();
            for _ in 0..seed {
                send_all(client_fd, Family::WriteRead, &message, usize::MAX);
                let request = recv_exact(server_fd, Family::WriteRead, 64);
                send_all(server_fd, Family::WriteRead, &request, usize::MAX);
                recv_exact(client_fd, Family::WriteRead, 64);
            }
            say(&format!("elapsed_ns {}", started.elapsed().as_nanos()));
        }
        "cap" => {
            let (big, small) = cap_plan(seed);
            let (client, server) = connected_pair();
            let server_fd = server.as_raw_fd();
            let total = big.len() + small.len();
            let reader = thread::spawn(move || recv_exact(server_fd, Family::WriteRead, total));
            // One write larger than the capture cap, then a small one.
            send_all(client.as_raw_fd(), Family::WriteRead, &big, usize::MAX);
            send_all(client.as_raw_fd(), Family::WriteRead, &small, usize::MAX);
            assert!(reader.join().unwrap() == [big, small].concat());
        }
        "udp" => {
            // Connected UDP sockets (as resolvers make them) exchanging datagrams, kept open;
            // then one TCP exchange. The seed argument is the number of UDP sockets.
            let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let senders: Vec<std::net::UdpSocket> = (0..seed)
                .map(|_| {
                    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                    socket.connect(receiver.local_addr().unwrap()).unwrap();
                    socket.send(b"datagram").unwrap();
                    socket
                })
                .collect();
            let mut buf = [0u8; 16];
            for _ in &senders {
                receiver.recv(&mut buf).unwrap();
            }
            let (client, server) = connected_pair();
            send_all(
                client.as_raw_fd(),
                Family::WriteRead,
                b"tcp bytes",
                usize::MAX,
            );
            recv_exact(server.as_raw_fd(), Family::WriteRead, 9);
            say("exchanged");
            wait_for("go2");
        }
        other => panic!("unknown mode {other}"),
    }
    say("done");
}
