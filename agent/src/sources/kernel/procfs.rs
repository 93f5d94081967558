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

/// A process's command name (`comm`, at most 15 bytes), if it still runs.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end_matches('\n').to_string())
}

/// A process's cgroup in the v2 hierarchy (the `0::` line of /proc/PID/cgroup), e.g.
/// `/kubepods.slice/kubepods-pod1234.slice/cri-containerd-ab12.scope`.
pub fn cgroup_v2(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(String::from)
}

/// When a process started (clock ticks after boot, field 22 of /proc/PID/stat): with the pid,
/// it names one process even after the pid is reused.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses, starttime is the 20th field.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// A process's supplementary groups (the `Groups:` line of /proc/PID/status).
pub fn groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("Groups:").map(|ids| {
                    ids.split_whitespace()
                        .filter_map(|id| id.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

/// Whether socket `fd` of `pid` is a stream (TCP) socket, asked of a duplicate of it
/// (`pidfd_getfd`, Linux 5.6): a UDP socket can be connected too, as resolvers do, yet carries
/// no RocketMQ. The duplicate is closed at once.
pub fn is_stream_socket(pid: u32, fd: i32) -> std::io::Result<bool> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain syscalls; each fd returned is owned (and closed) by an OwnedFd.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if pidfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let socket = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if socket < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let socket = unsafe { OwnedFd::from_raw_fd(socket as i32) };
    let mut kind: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the sizes given.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut kind).cast(),
            &raw mut length,
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(kind == libc::SOCK_STREAM)
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid hosts).
pub fn cgroup_v2_mount() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&"cgroup2")).then(|| fields[1].into())
    })
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

    #[test]
    fn tells_stream_sockets_from_datagram_ones() {
        use std::os::fd::AsRawFd;
        let me = std::process::id();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.connect("127.0.0.1:53").unwrap();
        // Duplicating another process's fd needs ptrace rights; one's own needs none.
        assert!(is_stream_socket(me, listener.as_raw_fd()).unwrap());
        assert!(!is_stream_socket(me, udp.as_raw_fd()).unwrap());
        assert!(is_stream_socket(me, 100_000).is_err());
    }
}
