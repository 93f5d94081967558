//! Copying the bytes a data syscall moved into the ring buffer.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf,
    generated::bpf_loop,
};
use mqtrace_common::{
    CHUNK_SIZE, Counter, DataHeader, DataRecord, MAX_RECORDS_PER_SYSCALL, RecordKind, SocketKey,
    Syscall,
};

use crate::maps::{ActiveSyscall, RECORDS, SCRATCH, SOCKETS, config, count, fetch_add};

const HEADER_SIZE: usize = size_of::<DataHeader>();

/// One `struct iovec` of the caller.
#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

/// Emits the `moved` bytes of a finished syscall as records of at most `CHUNK_SIZE`, up to the
/// configured per-syscall cap, and advances the socket's stream position by all of `moved`.
#[inline(always)]
pub fn copy_out(active: &ActiveSyscall, moved: u64) {
    let Some(syscall) = Syscall::from_u8(active.syscall) else {
        return;
    };
    let direction = syscall.direction() as usize;
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(state) = SOCKETS.get_ptr_mut(SocketKey { pid, fd: active.fd }) else {
        return; // closed by another thread meanwhile
    };
    // SAFETY: a live map value; positions are shared with other threads using the same socket.
    let (position, connection_id) = unsafe {
        (
            &raw mut (*state).positions[direction & 1],
            (*state).connection_id,
        )
    };
    let stream = Stream {
        kind: RecordKind::Data,
        syscall,
        fd: active.fd,
        connection_id,
        position,
    };
    copy_stream(&stream, active.buf, active.len, active.vectored != 0, moved);
}

/// Where copied bytes belong: a socket (by fd), or a TLS library's connection object.
pub struct Stream {
    pub kind: RecordKind,
    pub syscall: Syscall,
    pub fd: i32,
    pub connection_id: u64,
    /// The stream position of this direction, in a live map value, advanced by every call.
    pub position: *mut u64,
}

/// Emits the `moved` bytes at `buf` (or, `vectored`, in the `len` iovec entries at `buf`) as
/// records of `stream`, up to the per-syscall cap, and advances its position by all of them.
#[inline(always)]
pub fn copy_stream(stream: &Stream, buf: u64, len: u64, vectored: bool, moved: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the caller's live map value; shared with other threads, hence the atomic add.
    let syscall_pos = unsafe { fetch_add(stream.position, moved) };
    let cap = config().map_or(0, |c| c.max_bytes_per_syscall as u64);
    let wanted = if moved < cap { moved } else { cap };
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch value; nothing else runs on it until this program returns.
    unsafe { &mut *record }.header = DataHeader {
        kind: stream.kind as u32,
        direction: stream.syscall.direction() as u8,
        syscall: stream.syscall as u8,
        // Once per syscall, not per chunk: a loss among its chunks shows at the next syscall's
        // record, which only places it later (more cautious).
        records_lost: crate::maps::records_lost() as u16,
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        connection_id: stream.connection_id,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd: stream.fd,
        copied_len: 0,
        syscall_len: moved,
        syscall_pos,
        chunk_offset: 0,
    };

    // bpf_loop (Linux 5.17) has the verifier check one step instead of every unrolled
    // iteration. The per-chunk step only reads its context and derives everything from the
    // loop index: with state carried from step to step the verifier, which simulates the
    // callback until its state converges, never converged.
    if vectored {
        let mut walk = IovWalk {
            iov_array: buf,
            iov_count: len,
            wanted,
            done: 0,
        };
        // SAFETY: the callback only touches `walk`, which outlives the call.
        unsafe {
            bpf_loop(
                MAX_IOVECS,
                copy_iovec as *mut c_void,
                (&raw mut walk).cast(),
                0,
            )
        };
    } else {
        let mut segment = Segment {
            base: buf,
            len: moved,
            stream_offset: 0,
            wanted,
        };
        copy_segment(&mut segment);
    }
    if moved > wanted {
        count(Counter::BytesNotCopied, moved - wanted);
    }
}

/// iovec entries walked at most: the kernel's own limit per call (UIO_MAXIOV), so that every
/// entry of a call the kernel accepted is walked. Gathering writers (Netty flushing queued
/// frames) pass hundreds of entries; a lower bound lost the bytes of every further entry.
const MAX_IOVECS: u32 = 1024;

/// One user buffer, at `stream_offset` within the syscall's bytes, of which the first
/// `wanted` are to be copied.
#[repr(C)]
struct Segment {
    base: u64,
    len: u64,
    stream_offset: u64,
    wanted: u64,
}

#[inline(always)]
fn copy_segment(segment: &mut Segment) {
    // SAFETY: the callback only reads `segment`, which outlives the call.
    unsafe {
        bpf_loop(
            MAX_RECORDS_PER_SYSCALL,
            copy_chunk as *mut c_void,
            (segment as *mut Segment).cast(),
            0,
        )
    };
}

/// Emits chunk `index` of a segment. Returns 1 to stop the loop.
extern "C" fn copy_chunk(index: u64, segment: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given to it in copy_segment.
    let segment = unsafe { &*segment.cast::<Segment>() };
    let offset = index * CHUNK_SIZE as u64;
    let at = segment.stream_offset + offset;
    if offset >= segment.len || at >= segment.wanted {
        return 1;
    }
    let mut piece = segment.len - offset;
    if piece > segment.wanted - at {
        piece = segment.wanted - at;
    }
    if piece > CHUNK_SIZE as u64 {
        piece = CHUNK_SIZE as u64;
    }
    if emit(segment.base + offset, piece as usize, at) {
        0
    } else {
        1
    }
}

/// Progress through a vectored call's iovec array.
#[repr(C)]
struct IovWalk {
    iov_array: u64,
    iov_count: u64,
    wanted: u64,
    /// Bytes of the syscall before the current iovec entry.
    done: u64,
}

/// Copies iovec entry `index`. Returns 1 to stop the loop.
extern "C" fn copy_iovec(index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given to it in copy_out.
    let walk = unsafe { &mut *walk.cast::<IovWalk>() };
    if index >= walk.iov_count || walk.done >= walk.wanted {
        return 1;
    }
    let at = walk.iov_array + index * size_of::<IoVec>() as u64;
    // SAFETY: a user pointer read through the helper.
    let Ok(iov) = (unsafe { bpf_probe_read_user(at as *const IoVec) }) else {
        count(Counter::UserReadFailures, 1);
        return 1;
    };
    let mut segment = Segment {
        base: iov.base,
        len: iov.len,
        stream_offset: walk.done,
        wanted: walk.wanted,
    };
    copy_segment(&mut segment);
    walk.done += iov.len;
    0
}

/// Waking the reader for every record costs a context switch per syscall; the agent polls on
/// a short timer instead, and is woken only once a backlog builds up.
const WAKEUP_BACKLOG: u64 = 256 * 1024;

#[inline(always)]
pub fn wakeup_flags() -> u64 {
    if RECORDS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BACKLOG {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Copies `len` user bytes at `src` into this CPU's scratch record, whose header copy_out
/// filled, and outputs header plus payload. False when the bytes could not be read: the rest
/// of the segment is then left out, and the gap shows at the next record.
#[inline(always)]
fn emit(src: u64, len: usize, chunk_offset: u64) -> bool {
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch value; nothing else runs on it until this program returns.
    let record: &mut DataRecord = unsafe { &mut *record };
    if len == 0 || len > CHUNK_SIZE {
        return false;
    }
    record.header.copied_len = len as u32;
    record.header.chunk_offset = chunk_offset;
    // SAFETY: a user pointer read through the helper into a bounded slice of the scratch map.
    if unsafe { bpf_probe_read_user_buf(src as *const u8, &mut record.payload[..len]) }.is_err() {
        count(Counter::UserReadFailures, 1);
        return false;
    }
    // SAFETY: DataRecord is plain repr(C) data; the slice stays inside the map value.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            (record as *const DataRecord).cast::<u8>(),
            size_of::<DataRecord>(),
        )
    };
    let Some(bytes) = bytes.get(..HEADER_SIZE + len) else {
        return false;
    };
    if RECORDS.output::<[u8]>(bytes, wakeup_flags()).is_ok() {
        count(Counter::RecordsEmitted, 1);
        count(Counter::BytesCopied, len as u64);
    } else {
        // The bytes are gone but the walk goes on: later records still carry their positions.
        crate::maps::record_lost();
    }
    true
}
