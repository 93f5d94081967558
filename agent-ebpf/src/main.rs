//! mqtrace kernel programs.
//!
//! Syscall tracepoints only: the kernels we target may have no kprobes and refuse fentry. At
//! `sys_enter_*` a data syscall on a tracked socket stashes its arguments; at `sys_exit_*` the
//! bytes the syscall really moved are copied into the ring buffer, each record stamped with its
//! stream position so that user space knows exactly what it did not get. Parsing is user space's
//! job: nothing here looks inside the payload.
#![no_std]
#![no_main]
// Atomic read-modify-write on map values (see maps::fetch_add).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod hold;
mod maps;
mod rules;
mod sockets;
mod tls;
mod transfer;

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use mqtrace_common::Syscall;

use crate::maps::{ACTIVE, ActiveSyscall, process_selected};

/// Offset of the first syscall argument in a `syscalls:sys_enter_*` record, and of the return
/// value in a `sys_exit_*` record (after the 8-byte common header and the syscall number).
const ARGS_OFFSET: usize = 16;
const MSG_PEEK: u64 = 2;

#[inline(always)]
pub(crate) fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: syscall tracepoint records hold six u64 arguments after ARGS_OFFSET; the verifier
    // checks context accesses.
    unsafe {
        *(ctx.as_ptr() as *const u8)
            .add(ARGS_OFFSET + n * 8)
            .cast::<u64>()
    }
}

#[inline(always)]
fn return_value(ctx: &TracePointContext) -> i64 {
    arg(ctx, 0) as i64
}

#[inline(always)]
fn current_pid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// Whether a data syscall on `fd` is to be copied: a copied socket of a selected process. For
/// every other fd this is one hash lookup.
#[inline(always)]
fn wanted(fd: u64) -> bool {
    let pid = current_pid();
    sockets::is_copied(pid, fd as i32) && process_selected(pid)
}

#[inline(always)]
fn stash_transfer(syscall: Syscall, fd: u64, buf: u64, len: u64, vectored: bool) {
    if !wanted(fd) {
        return;
    }
    if syscall.direction() == mqtrace_common::Direction::Egress {
        tls::nested_write(buf, len, vectored);
    }
    stash(syscall, fd, buf, len, vectored);
}

#[inline(always)]
fn stash(syscall: Syscall, fd: u64, buf: u64, len: u64, vectored: bool) {
    let fd = fd as i32;
    let active = ActiveSyscall {
        buf,
        len,
        fd,
        syscall: syscall as u8,
        vectored: vectored as u8,
        _pad: 0,
    };
    maps::stash_active(bpf_get_current_pid_tgid(), active);
}

/// `struct user_msghdr`: msg_iov at 16, msg_iovlen at 24.
#[inline(always)]
fn stash_msghdr(syscall: Syscall, fd: u64, msghdr: u64) {
    if !wanted(fd) {
        return;
    }
    // SAFETY: a user pointer read through the helper, which fails cleanly on bad addresses.
    let iov = unsafe { bpf_probe_read_user((msghdr + 16) as *const u64) };
    let iovlen = unsafe { bpf_probe_read_user((msghdr + 24) as *const u64) };
    if let (Ok(iov), Ok(iovlen)) = (iov, iovlen) {
        if syscall.direction() == mqtrace_common::Direction::Egress {
            tls::nested_write(iov, iovlen, true);
        }
        stash(syscall, fd, iov, iovlen, true);
    } else {
        maps::count(mqtrace_common::Counter::UserReadFailures, 1);
    }
}

#[tracepoint]
pub fn enter_write(ctx: TracePointContext) -> u32 {
    stash_transfer(
        Syscall::Write,
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        false,
    );
    0
}

#[tracepoint]
pub fn enter_read(ctx: TracePointContext) -> u32 {
    stash_transfer(
        Syscall::Read,
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        false,
    );
    0
}

#[tracepoint]
pub fn enter_writev(ctx: TracePointContext) -> u32 {
    stash_transfer(
        Syscall::Writev,
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        true,
    );
    0
}

#[tracepoint]
pub fn enter_readv(ctx: TracePointContext) -> u32 {
    stash_transfer(
        Syscall::Readv,
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        true,
    );
    0
}

#[tracepoint]
pub fn enter_sendto(ctx: TracePointContext) -> u32 {
    stash_transfer(
        Syscall::Sendto,
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        false,
    );
    0
}

#[tracepoint]
pub fn enter_recvfrom(ctx: TracePointContext) -> u32 {
    // A peek leaves the bytes in the socket: they are copied when really read.
    if arg(&ctx, 3) & MSG_PEEK == 0 {
        stash_transfer(
            Syscall::Recvfrom,
            arg(&ctx, 0),
            arg(&ctx, 1),
            arg(&ctx, 2),
            false,
        );
    }
    0
}

#[tracepoint]
pub fn enter_sendmsg(ctx: TracePointContext) -> u32 {
    stash_msghdr(Syscall::Sendmsg, arg(&ctx, 0), arg(&ctx, 1));
    0
}

#[tracepoint]
pub fn enter_recvmsg(ctx: TracePointContext) -> u32 {
    if arg(&ctx, 2) & MSG_PEEK == 0 {
        stash_msghdr(Syscall::Recvmsg, arg(&ctx, 0), arg(&ctx, 1));
    }
    0
}

/// Attached to the `sys_exit_*` of every data syscall.
#[tracepoint]
pub fn exit_transfer(ctx: TracePointContext) -> u32 {
    if let Some(active) = maps::take_active() {
        let moved = return_value(&ctx);
        if moved > 0 {
            transfer::copy_out(&active, moved as u64);
        }
    }
    0
}

#[tracepoint]
pub fn enter_connect(ctx: TracePointContext) -> u32 {
    sockets::stash_open(Syscall::Connect, arg(&ctx, 0), arg(&ctx, 1));
    0
}

#[tracepoint]
pub fn enter_accept(ctx: TracePointContext) -> u32 {
    sockets::stash_open(Syscall::Accept, arg(&ctx, 0), arg(&ctx, 1));
    0
}

#[tracepoint]
pub fn enter_accept4(ctx: TracePointContext) -> u32 {
    sockets::stash_open(Syscall::Accept4, arg(&ctx, 0), arg(&ctx, 1));
    0
}

/// Attached to `sys_exit_connect`.
#[tracepoint]
pub fn exit_open(ctx: TracePointContext) -> u32 {
    if let Some(active) = maps::take_active() {
        sockets::on_open_exit(&active, return_value(&ctx));
    }
    0
}

/// Attached to `sys_exit_accept` and `sys_exit_accept4`. A server thread usually waits inside
/// accept: when tracing began meanwhile, its enter was never seen. The connection is tracked
/// all the same (without the peer address, which user space learns from /proc).
#[tracepoint]
pub fn exit_accept(ctx: TracePointContext) -> u32 {
    let active = maps::take_active().or_else(|| {
        process_selected(current_pid()).then_some(ActiveSyscall {
            buf: 0,
            len: 0,
            fd: -1,
            syscall: Syscall::Accept4 as u8,
            vectored: 0,
            _pad: 0,
        })
    });
    if let Some(active) = active {
        sockets::on_open_exit(&active, return_value(&ctx));
    }
    0
}

#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    sockets::on_close(current_pid(), arg(&ctx, 0) as i32);
    0
}

/// `sched:sched_process_exit`: forget the thread's stashed syscall (it may have died inside
/// one) and tell user space when a whole process ends.
#[tracepoint]
pub fn process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let _ = ACTIVE.remove(pid_tgid);
    let pid = (pid_tgid >> 32) as u32;
    // Whole processes only (a thread's exit is one lookup less), and also an excluded one:
    // user space removes its entry.
    if pid == pid_tgid as u32
        && (maps::config().is_some_and(|c| c.trace_all != 0) || maps::selection(pid).is_some())
    {
        sockets::emit_process_record(
            mqtrace_common::RecordKind::ProcessExited,
            pid,
            false,
            false,
            0,
        );
    }
    0
}

/// `sched:sched_process_exec`: a process starts a program. Rules on command names and cgroups
/// select (or exclude) it here, before it can open a connection; a selected one has its
/// program looked at for TLS (a Go program carries its own), held until then if need be.
#[tracepoint]
pub fn process_exec(ctx: TracePointContext) -> u32 {
    let pid = current_pid();
    if let Some(selection) = rules::matching() {
        let _ = maps::SELECTED_PROCESSES.insert(pid, selection, 0);
    }
    if process_selected(pid) {
        let hold = hold::wanted(&ctx);
        let held = tls::report_mapped(pid, true, hold.is_some());
        if let Some(key) = hold
            && !held
        {
            hold::forget(key);
        }
    }
    0
}

/// Does nothing. The benchmarks attach it to the same tracepoints to measure the floor: what
/// running any program there costs, before mqtrace's own work.
#[tracepoint]
pub fn noop(_ctx: TracePointContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual BSD/GPL\0";
