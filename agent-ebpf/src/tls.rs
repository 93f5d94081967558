//! TLS plaintext where the library takes it in and gives it out: uprobes on `SSL_write` and
//! `SSL_read` of the TLS libraries a selected process has mapped (user space finds them and
//! attaches per process). The plaintext is stamped with a stream position per connection
//! object (`SSL *`); which socket that object talks over is learned from the ciphertext: the
//! first bytes the library hands to its write BIO (`BIO_write`) are reported, and user space
//! finds them again in a write syscall on a socket. That works whether the library writes the
//! socket itself or hands its buffers to the caller (memory BIOs).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user_buf},
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, ring_buf::RingBufEntry},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use mqtrace_common::{
    CIPHERTEXT_PREFIX, Counter, LibraryMapped, RecordKind, Syscall, TlsCiphertext, TlsKey,
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
static TLS_STREAMS: LruHashMap<TlsKey, [u64; 2]> = LruHashMap::with_max_entries(65_536, 0);

/// The connection object a write BIO belongs to (`SSL_set_bio`), keyed by (pid, BIO): the
/// handshake writes through it outside any `SSL_write`.
#[map(name = "BIO_OWNERS")]
static BIO_OWNERS: LruHashMap<TlsKey, u64> = LruHashMap::with_max_entries(65_536, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct TlsCall {
    ssl: u64,
    buf: u64,
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
    let call = TlsCall {
        ssl,
        buf,
        syscall: syscall as u8,
        _pad: [0; 7],
    };
    if TLS_CALLS.insert(pid_tgid, call, 0).is_err() {
        count(Counter::SyscallTableFull, 1);
    }
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

/// The return of `SSL_write` and `SSL_read`: as many plaintext bytes as the call returned
/// (an `int`: the upper half of the register is not part of it).
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the entry belongs to this thread; nothing else writes it meanwhile.
    let Some(call) = (unsafe { TLS_CALLS.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = TLS_CALLS.remove(&pid_tgid);
    let moved = ctx.ret::<u64>() as u32 as i32;
    let Some(syscall) = Syscall::from_u8(call.syscall) else {
        return 0;
    };
    if moved <= 0 {
        return 0;
    }
    let key = TlsKey {
        pid: (pid_tgid >> 32) as u32,
        _pad: 0,
        ssl: call.ssl,
    };
    if TLS_STREAMS.get_ptr_mut(&key).is_none() {
        let _ = TLS_STREAMS.insert(&key, &[0, 0], 0);
    }
    let Some(positions) = TLS_STREAMS.get_ptr_mut(&key) else {
        return 0;
    };
    let direction = syscall.direction() as usize;
    let stream = Stream {
        kind: RecordKind::TlsData,
        syscall,
        fd: -1,
        connection_id: call.ssl,
        // SAFETY: a live map value.
        position: unsafe { &raw mut (*positions)[direction & 1] },
    };
    copy_stream(&stream, call.buf, 0, false, moved as u64);
    0
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
    if len <= 0 {
        return 0;
    }
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
    let Some(mut entry): Option<RingBufEntry<TlsCiphertext>> = RECORDS.reserve(0) else {
        count(Counter::RecordsLost, 1);
        return 0;
    };
    let record = entry.as_mut_ptr();
    let n = if (len as usize) < CIPHERTEXT_PREFIX {
        len as usize
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
        (*record).len = len as u32;
        (*record).prefix = [0; CIPHERTEXT_PREFIX];
        let copied = match (*record).prefix.get_mut(..n) {
            Some(prefix) => bpf_probe_read_user_buf(data as *const u8, prefix).is_ok(),
            None => false,
        };
        (*record).prefix_len = if copied { n as u32 } else { 0 };
    }
    entry.submit(wakeup_flags());
    0
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
    if !process_selected(pid) {
        return 0;
    }
    let Some(mut entry): Option<RingBufEntry<LibraryMapped>> = RECORDS.reserve(0) else {
        count(Counter::RecordsLost, 1);
        return 0;
    };
    entry.write(LibraryMapped {
        kind: RecordKind::LibraryMapped as u32,
        pid,
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
    });
    // The library's first connection may follow within milliseconds: wake the reader now.
    entry.submit(aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP as u64);
    0
}
