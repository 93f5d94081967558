//! The socket table: which (process, fd) pairs are copied, learned at connect and accept, and
//! forgotten at close. User space adds the sockets that existed before a process was selected.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    maps::ring_buf::RingBufEntry,
};
use mqtrace_common::{
    ConnectionClosed, ConnectionOpened, Counter, Origin, ProcessRecord, RecordKind,
    SOCKET_PAYLOAD_IGNORED, SocketKey, SocketState, Syscall,
};

use crate::maps::{
    ActiveSyscall, NEXT_CONNECTION_ID, RECORDS, SOCKETS, count, fetch_add, process_selected,
};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = 115;

/// Whether the socket's payload is copied: tracked, and not left to its TLS library's probes.
#[inline(always)]
pub fn is_copied(pid: u32, fd: i32) -> bool {
    // SAFETY: a field read from a live map value.
    SOCKETS
        .get_ptr(SocketKey { pid, fd })
        .is_some_and(|state| unsafe { (*state).flags } & SOCKET_PAYLOAD_IGNORED == 0)
}

/// At connect/accept enter: remember the sockaddr pointer, for selected processes only.
#[inline(always)]
pub fn stash_open(syscall: Syscall, fd: u64, sockaddr: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !process_selected((pid_tgid >> 32) as u32) {
        return;
    }
    let active = ActiveSyscall {
        buf: sockaddr,
        len: 0,
        fd: fd as i32,
        syscall: syscall as u8,
        vectored: 0,
        _pad: 0,
    };
    crate::maps::stash_active(pid_tgid, active);
}

/// Peer address from a user sockaddr: (family, port in host order, address bytes).
#[inline(always)]
fn read_sockaddr(ptr: u64) -> Option<(u16, u16, [u8; 16])> {
    if ptr == 0 {
        return Some((0, 0, [0; 16]));
    }
    // SAFETY: user pointers read through the helper, which fails cleanly.
    let family: u16 = unsafe { bpf_probe_read_user(ptr as *const u16) }.ok()?;
    let port = u16::from_be(unsafe { bpf_probe_read_user((ptr + 2) as *const u16) }.ok()?);
    let mut addr = [0u8; 16];
    match family {
        AF_INET => {
            let v4: [u8; 4] = unsafe { bpf_probe_read_user((ptr + 4) as *const [u8; 4]) }.ok()?;
            addr[..4].copy_from_slice(&v4);
        }
        AF_INET6 => {
            addr = unsafe { bpf_probe_read_user((ptr + 8) as *const [u8; 16]) }.ok()?;
        }
        _ => {}
    }
    Some((family, port, addr))
}

/// At connect/accept exit: track the new socket and tell user space about it.
#[inline(always)]
pub fn on_open_exit(active: &ActiveSyscall, ret: i64) {
    let (fd, origin) = match Syscall::from_u8(active.syscall) {
        // A non-blocking connect is tracked from EINPROGRESS: its data follows once connected.
        Some(Syscall::Connect) if ret == 0 || ret == -EINPROGRESS => (active.fd, Origin::Connect),
        Some(Syscall::Accept | Syscall::Accept4) if ret >= 0 => (ret as i32, Origin::Accept),
        _ => return,
    };
    let Some((family, peer_port, peer_addr)) = read_sockaddr(active.buf) else {
        count(Counter::UserReadFailures, 1);
        return;
    };
    // Only TCP/IP is of interest; an accept without an address buffer is kept and user space
    // drops it if /proc says it is not TCP.
    if family == AF_UNIX || (family != 0 && family != AF_INET && family != AF_INET6) {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let Some(next) = NEXT_CONNECTION_ID.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a live, aligned map value shared by all CPUs, hence atomic.
    let connection_id = unsafe { fetch_add(next, 1) } + 1;
    let state = SocketState {
        connection_id,
        positions: [0, 0],
        flags: 0,
    };
    if SOCKETS.insert(SocketKey { pid, fd }, state, 0).is_err() {
        count(Counter::SocketTableFull, 1);
        return;
    }
    let Some(mut entry): Option<RingBufEntry<ConnectionOpened>> = RECORDS.reserve(0) else {
        crate::maps::record_lost();
        return;
    };
    entry.write(ConnectionOpened {
        kind: RecordKind::ConnectionOpened as u32,
        origin: origin as u8,
        _pad: 0,
        family,
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        connection_id,
        pid,
        tid: pid_tgid as u32,
        fd,
        peer_port,
        _pad2: 0,
        peer_addr,
    });
    entry.submit(0);
}

/// At close enter: stop tracking and report the final positions. One lookup for other fds.
#[inline(always)]
pub fn on_close(pid: u32, fd: i32) {
    let key = SocketKey { pid, fd };
    // SAFETY: copied out before the entry is removed.
    let Some(state) = SOCKETS.get_ptr(key).map(|p| unsafe { *p }) else {
        return;
    };
    let _ = SOCKETS.remove(key);
    // Read before the reservation: a loss after it must not be told as before this close.
    let records_lost = crate::maps::records_lost() as u32;
    let Some(mut entry): Option<RingBufEntry<ConnectionClosed>> = RECORDS.reserve(0) else {
        crate::maps::record_lost();
        return;
    };
    entry.write(ConnectionClosed {
        kind: RecordKind::ConnectionClosed as u32,
        records_lost,
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        connection_id: state.connection_id,
        pid,
        fd,
        egress_pos: state.positions[0],
        ingress_pos: state.positions[1],
    });
    entry.submit(0);
}

/// Tells user space of a process's exit (`RecordKind::ProcessExited`) or of a file it mapped
/// (`RecordKind::LibraryMapped`); `flags` say whether to wake the reader. With `stop` the
/// process is stopped until user space continues it: only once its record is sure to reach
/// user space (a full ring would leave it stopped for good), and before the record is
/// submitted (user space could continue it before the stop, which would then stay). Returns
/// whether it was stopped.
#[inline(always)]
pub fn emit_process_record(kind: RecordKind, pid: u32, exec: bool, stop: bool, flags: u64) -> bool {
    let Some(mut entry): Option<RingBufEntry<ProcessRecord>> = RECORDS.reserve(0) else {
        crate::maps::record_lost();
        return false;
    };
    let held = stop && crate::hold::stop_current();
    entry.write(ProcessRecord {
        kind: kind as u32,
        pid,
        // SAFETY: a helper without arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        held: held as u32,
        exec: exec as u32,
    });
    entry.submit(flags);
    held
}
