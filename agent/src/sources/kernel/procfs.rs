//! Sockets that were open before a process was selected, found through /proc. RocketMQ clients
//! keep their connections for hours: without this an agent restart would miss them all.

use std::net::SocketAddr;

use procfs::{
    net::TcpState,
    process::{FDTarget, Process},
};

/// One established TCP socket of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSocket {
    pub fd: i32,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// The established TCP sockets of `pid`, read from its fd table and its network namespace's
/// TCP tables (so a process in a container is read correctly).
pub fn established_sockets(pid: u32) -> anyhow::Result<Vec<OpenSocket>> {
    let process = Process::new(pid as i32)?;
    let mut table = process.tcp()?;
    table.extend(process.tcp6().unwrap_or_default());
    let mut sockets = Vec::new();
    for fd in process.fd()? {
        let Ok(fd) = fd else { continue }; // closed while we read
        let FDTarget::Socket(inode) = fd.target else {
            continue;
        };
        if let Some(entry) = table
            .iter()
            .find(|e| e.inode == inode && e.state == TcpState::Established)
        {
            sockets.push(OpenSocket {
                fd: fd.fd,
                local: entry.local_address,
                peer: entry.remote_address,
            });
        }
    }
    Ok(sockets)
}

/// Ids of every process on the host, for the trace-everything mode.
pub fn all_pids() -> Vec<u32> {
    procfs::process::all_processes()
        .map(|all| all.filter_map(|p| p.ok().map(|p| p.pid as u32)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_established_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let sockets = established_sockets(std::process::id()).unwrap();
        use std::os::fd::AsRawFd;
        let found = sockets
            .iter()
            .find(|s| s.fd == client.as_raw_fd())
            .expect("client socket");
        assert_eq!(found.peer, listener.local_addr().unwrap());
        assert_eq!(found.local, client.local_addr().unwrap());
    }
}
