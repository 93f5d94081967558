//! TLS plaintext where the library takes it in and gives it out: uprobes on `SSL_write` and
//! `SSL_read` of the TLS libraries a selected process has mapped (user space finds them and
//! attaches per process). The plaintext is stamped with a stream position per connection
//! object (`SSL *`); which socket that object talks over is learned from the ciphertext: the
//! first bytes the library hands to its write BIO (`BIO_write`) are reported, and user space
//! finds them again in a write syscall on a socket. That works whether the library writes the
//! socket itself or hands its buffers to the caller (memory BIOs).

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, ring_buf::RingBufEntry},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use mqtrace_common::{
    CIPHERTEXT_PREFIX, Counter, RecordKind, Syscall, TLS_STREAM_IGNORED, TlsCiphertext, TlsKey,
    TlsStream,
};

use crate::{
    arg,
    maps::{RECORDS, count, process_selected},
    transfer::{Stream, copy_stream, wakeup_flags},
};

/// The `SSL_write` or `SSL_read` each thread is inside, from entry to return.
#[map(name = "TLS_CALLS")]
static TLS_CALLS: HashMap<u64, TlsCall> = HashMap::with_max_entries(16_384, 0);

/// Stream positions (egress, ingress) of each connection object. LRU: a library frees its
/// objects without telling, and a forgotten one only restarts its positions.
#[map(name = "TLS_STREAMS")]
static TLS_STREAMS: LruHashMap<TlsKey, TlsStream> = LruHashMap::with_max_entries(65_536, 0);

/// The connection object a write BIO belongs to (`SSL_set_bio`), keyed by (pid, BIO): the
/// handshake writes through it outside any `SSL_write`.
#[map(name = "BIO_OWNERS")]
static BIO_OWNERS: LruHashMap<TlsKey, u64> = LruHashMap::with_max_entries(65_536, 0);

/// Go's `crypto/tls` calls, keyed by (pid, goroutine): a goroutine may resume on another
/// thread, and returns are seen by probes on each RET instruction (a return probe would
/// rewrite a return address on a stack that Go moves).
#[map(name = "GO_TLS_CALLS")]
static GO_TLS_CALLS: HashMap<TlsKey, TlsCall> = HashMap::with_max_entries(16_384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct TlsCall {
    ssl: u64,
    buf: u64,
    /// `SSL_write_ex` and `SSL_read_ex`: where the call stores the bytes it moved (0 for the
    /// calls that return them).
    moved_at: u64,
    started_ns: u64,
    syscall: u8,
    _pad: [u8; 7],
}

#[inline(always)]
fn enter(ctx: &ProbeContext, syscall: Syscall) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !process_selected((pid_tgid >> 32) as u32) {
        return;
    }
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    stash_thread_call(pid_tgid, call(ssl, buf, syscall));
}

/// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)` and its read twin:
/// 1 on success, the bytes moved stored at the fourth argument.
#[inline(always)]
fn enter_ex(ctx: &ProbeContext, syscall: Syscall) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !process_selected((pid_tgid >> 32) as u32) {
        return;
    }
    let (Some(ssl), Some(buf), Some(moved_at)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(3))
    else {
        return;
    };
    stash_thread_call(
        pid_tgid,
        TlsCall {
            moved_at,
            ..call(ssl, buf, syscall)
        },
    );
}

#[inline(always)]
fn call(ssl: u64, buf: u64, syscall: Syscall) -> TlsCall {
    TlsCall {
        ssl,
        buf,
        moved_at: 0,
        // SAFETY: a helper without arguments.
        started_ns: unsafe { bpf_ktime_get_ns() },
        syscall: syscall as u8,
        _pad: [0; 7],
    }
}

#[inline(always)]
fn stash_thread_call(pid_tgid: u64, call: TlsCall) {
    if TLS_CALLS.insert(pid_tgid, call, 0).is_err() {
        count(Counter::SyscallTableFull, 1);
    }
}

/// A socket write made within a TLS write (the library writes the socket itself: OpenSSL's
/// socket BIO, Go's `crypto/tls`) carries that object's ciphertext: its first bytes are
/// reported as the object's, for user space to find in the write's record. Only a call begun
/// within the last millisecond counts: a Go goroutine parked in its write leaves its thread
/// to others.
#[inline(always)]
pub fn nested_write(buf: u64, len: u64, vectored: bool) {
    const RECENT_NS: u64 = 1_000_000;
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the entry is read by value.
    let Some(call) = (unsafe { TLS_CALLS.get(&pid_tgid) }).copied() else {
        return;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if call.syscall != Syscall::SslWrite as u8 || now.wrapping_sub(call.started_ns) > RECENT_NS {
        return;
    }
    let (data, length) = if vectored {
        // The first iovec entry: { base, len }.
        // SAFETY: user pointers read through the helper.
        match unsafe {
            (
                bpf_probe_read_user(buf as *const u64),
                bpf_probe_read_user((buf + 8) as *const u64),
            )
        } {
            (Ok(base), Ok(len)) => (base, len),
            _ => return,
        }
    } else {
        (buf, len)
    };
    report_ciphertext((pid_tgid >> 32) as u32, call.ssl, data, length as i64);
}

/// `int SSL_write(SSL *ssl, const void *buf, int num)`.
#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, Syscall::SslWrite);
    0
}

/// `int SSL_read(SSL *ssl, void *buf, int num)`.
#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, Syscall::SslRead);
    0
}

/// `SSL_write_ex`.
#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter_ex(&ctx, Syscall::SslWrite);
    0
}

/// `SSL_read_ex`.
#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter_ex(&ctx, Syscall::SslRead);
    0
}

/// The return of `SSL_write`, `SSL_read` and their `_ex` twins: as many plaintext bytes as the
/// call returned (an `int`: the upper half of the register is not part of it), or for an
/// `_ex` call that succeeded (1), as many as it stored.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the entry belongs to this thread; nothing else writes it meanwhile.
    let Some(call) = (unsafe { TLS_CALLS.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = TLS_CALLS.remove(&pid_tgid);
    let returned = ctx.ret::<u64>() as u32 as i32 as i64;
    let moved = if call.moved_at == 0 {
        returned
    } else if returned == 1 {
        // SAFETY: a user pointer read through the helper.
        unsafe { bpf_probe_read_user(call.moved_at as *const u64) }.map_or(0, |n| n as i64)
    } else {
        0
    };
    copy_plaintext((pid_tgid >> 32) as u32, &call, moved);
    0
}

/// The goroutine running: Go's register ABI keeps it in R14.
#[inline(always)]
fn goroutine(ctx: &ProbeContext) -> u64 {
    // SAFETY: the probe's registers, read through its context.
    unsafe { (*ctx.regs).r14 }
}

/// `func (c *Conn) Write(b []byte) (int, error)` of `crypto/tls`, register ABI: c in RAX,
/// b's pointer in RBX.
#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, Syscall::SslWrite);
    0
}

/// `func (c *Conn) Read(b []byte) (int, error)`.
#[uprobe]
pub fn go_tls_read(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, Syscall::SslRead);
    0
}

#[inline(always)]
fn go_enter(ctx: &ProbeContext, syscall: Syscall) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if !process_selected(pid) {
        return;
    }
    // SAFETY: the probe's registers, read through its context.
    let (conn, buf) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx) };
    let key = TlsKey {
        pid,
        _pad: 0,
        ssl: goroutine(ctx),
    };
    let entry = call(conn, buf, syscall);
    if GO_TLS_CALLS.insert(&key, &entry, 0).is_err() {
        count(Counter::SyscallTableFull, 1);
    }
    if syscall == Syscall::SslWrite {
        stash_thread_call(pid_tgid, entry);
    }
}

/// At each RET instruction of Go's `(*Conn).Write` and `(*Conn).Read`: n in RAX.
#[uprobe]
pub fn go_tls_return(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let key = TlsKey {
        pid,
        _pad: 0,
        ssl: goroutine(&ctx),
    };
    // SAFETY: the entry is read by value.
    let Some(call) = (unsafe { GO_TLS_CALLS.get(&key) }).copied() else {
        return 0;
    };
    let _ = GO_TLS_CALLS.remove(&key);
    // SAFETY: the entry is read by value.
    if unsafe { TLS_CALLS.get(&pid_tgid) }.is_some_and(|c| c.ssl == call.ssl) {
        let _ = TLS_CALLS.remove(&pid_tgid);
    }
    // SAFETY: the probe's registers, read through its context.
    copy_plaintext(pid, &call, unsafe { (*ctx.regs).rax } as i64);
    0
}

/// Copies the `moved` plaintext bytes of a finished call into the ring as the object's.
#[inline(always)]
fn copy_plaintext(pid: u32, call: &TlsCall, moved: i64) {
    let Some(syscall) = Syscall::from_u8(call.syscall) else {
        return;
    };
    if moved <= 0 {
        return;
    }
    let key = TlsKey {
        pid,
        _pad: 0,
        ssl: call.ssl,
    };
    if TLS_STREAMS.get_ptr_mut(&key).is_none() {
        let fresh = TlsStream {
            positions: [0, 0],
            flags: 0,
        };
        let _ = TLS_STREAMS.insert(&key, &fresh, 0);
    }
    let Some(stream_state) = TLS_STREAMS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: a field of a live map value.
    if unsafe { (*stream_state).flags } & TLS_STREAM_IGNORED != 0 {
        return;
    }
    let direction = syscall.direction() as usize;
    let stream = Stream {
        kind: RecordKind::TlsData,
        syscall,
        fd: -1,
        connection_id: call.ssl,
        // SAFETY: a live map value.
        position: unsafe { &raw mut (*stream_state).positions[direction & 1] },
    };
    copy_stream(&stream, call.buf, 0, false, moved as u64);
}

/// `void SSL_set_bio(SSL *ssl, BIO *rbio, BIO *wbio)`: remembers whose the write BIO is.
#[uprobe]
pub fn ssl_set_bio(ctx: ProbeContext) -> u32 {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !process_selected(pid) {
        return 0;
    }
    if let (Some(ssl), Some(wbio)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(2)) {
        let key = TlsKey {
            pid,
            _pad: 0,
            ssl: wbio,
        };
        let _ = BIO_OWNERS.insert(&key, &ssl, 0);
    }
    0
}

/// `int BIO_write(BIO *bio, const void *data, int len)`: reports the first bytes of the
/// ciphertext with its connection object (the thread's `SSL_write` or `SSL_read`, else the
/// BIO's owner).
#[uprobe]
pub fn bio_write(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if !process_selected(pid) {
        return 0;
    }
    let (Some(bio), Some(data), Some(len)) = (
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(1),
        ctx.arg::<u64>(2).map(|len| len as u32 as i32),
    ) else {
        return 0;
    };
    // SAFETY: entries read by value.
    let ssl = match unsafe { TLS_CALLS.get(&pid_tgid) } {
        Some(call) => call.ssl,
        None => match unsafe {
            BIO_OWNERS.get(&TlsKey {
                pid,
                _pad: 0,
                ssl: bio,
            })
        } {
            Some(&ssl) => ssl,
            None => return 0,
        },
    };
    report_ciphertext(pid, ssl, data, len as i64);
    0
}

/// Reports the first bytes of `length` bytes of ciphertext at `data` as `ssl`'s.
#[inline(always)]
fn report_ciphertext(pid: u32, ssl: u64, data: u64, length: i64) {
    if length <= 0 {
        return;
    }
    let Some(mut entry): Option<RingBufEntry<TlsCiphertext>> = RECORDS.reserve(0) else {
        crate::maps::record_lost();
        return;
    };
    let record = entry.as_mut_ptr();
    let n = if (length as usize) < CIPHERTEXT_PREFIX {
        length as usize
    } else {
        CIPHERTEXT_PREFIX
    };
    // SAFETY: the reserved entry is ours until submitted; the prefix read is bounded by its
    // array.
    unsafe {
        (*record).kind = RecordKind::TlsCiphertext as u32;
        (*record).pid = pid;
        (*record).timestamp_ns = bpf_ktime_get_ns();
        (*record).ssl = ssl;
        (*record).len = length as u32;
        (*record).prefix = [0; CIPHERTEXT_PREFIX];
        let copied = match (*record).prefix.get_mut(..n) {
            Some(prefix) => bpf_probe_read_user_buf(data as *const u8, prefix).is_ok(),
            None => false,
        };
        (*record).prefix_len = if copied { n as u32 } else { 0 };
    }
    entry.submit(wakeup_flags());
}

const PROT_EXEC: u64 = 4;

/// `sys_enter_mmap`: a selected process maps a file executable (a library being loaded).
/// User space looks for TLS libraries in the process at once, to attach before the library's
/// first connection.
#[tracepoint]
pub fn enter_mmap(ctx: TracePointContext) -> u32 {
    let fd = arg(&ctx, 4) as i64 as i32;
    if arg(&ctx, 2) & PROT_EXEC == 0 || fd < 0 {
        return 0;
    }
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if process_selected(pid) {
        report_mapped(pid, false, false);
    }
    0
}

/// Tells user space that `pid` mapped an executable file (a library, or at `exec` its
/// program), stopping it until probed if asked to (`stop`); returns whether it was stopped.
/// The first connection may follow within milliseconds: the reader is woken now.
#[inline(always)]
pub fn report_mapped(pid: u32, exec: bool, stop: bool) -> bool {
    crate::sockets::emit_process_record(
        RecordKind::LibraryMapped,
        pid,
        exec,
        stop,
        aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP as u64,
    )
}
