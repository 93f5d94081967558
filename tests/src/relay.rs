//! A plain TCP relay between two addresses of this host, for peers that listen on loopback
//! only. It forwards bytes unchanged, on its own threads; dropping it stops accepting. Each
//! socket keeps its one fd for both directions, as real proxies do (the agent follows a
//! socket by its fd, so a relay reading through dup'ed fds would be invisible to it).

use std::{
    io,
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

pub struct Relay {
    stop: Arc<AtomicBool>,
    listen: std::net::SocketAddr,
}

impl Relay {
    pub fn start(listen: &str, target: &str) -> io::Result<Self> {
        let listener = TcpListener::bind(listen)?;
        let listen = listener.local_addr()?;
        let target = target.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let (Ok(client), Ok(server)) = (client, TcpStream::connect(&target)) else {
                    continue;
                };
                pipe(client, server);
            }
        });
        Ok(Self { stop, listen })
    }
}

/// Copies both ways until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (a, b) = (Arc::new(a), Arc::new(b));
    for (from, to) in [(a.clone(), b.clone()), (b, a)] {
        thread::spawn(move || {
            let _ = io::copy(&mut &*from, &mut &*to);
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag and ends.
        let _ = TcpStream::connect(self.listen);
    }
}
