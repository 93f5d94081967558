//! Copying the bytes a data syscall moved into the ring buffer.

use core::mem::size_of;

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf,
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
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let Some(state) = SOCKETS.get_ptr_mut(SocketKey { pid, fd: active.fd }) else {
        return; // closed by another thread meanwhile
    };
    // SAFETY: a live map value; positions are shared with other threads using the same socket.
    let (syscall_pos, connection_id) = unsafe {
        let position = &raw mut (*state).positions[direction & 1];
        (fetch_add(position, moved), (*state).connection_id)
    };
    let cap = config().map_or(0, |c| c.max_bytes_per_syscall as u64);
    let wanted = if moved < cap { moved } else { cap };
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch value; nothing else runs on it until this program returns.
    let record: &mut DataRecord = unsafe { &mut *record };
    record.header = DataHeader {
        kind: RecordKind::Data as u32,
        direction: direction as u8,
        syscall: active.syscall,
        _pad: 0,
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        connection_id,
        pid,
        tid: pid_tgid as u32,
        fd: active.fd,
        copied_len: 0,
        syscall_len: moved,
        syscall_pos,
        chunk_offset: 0,
    };

    // A plain buffer is a single segment; a vectored call walks the caller's iovec array.
    let mut segment = IoVec {
        base: active.buf,
        len: moved,
    };
    let mut segment_index = 0u64;
    let mut segment_offset = 0u64;
    let mut done = 0u64;
    for _ in 0..MAX_RECORDS_PER_SYSCALL {
        if done >= wanted {
            break;
        }
        if active.vectored != 0 {
            if segment_offset == 0 {
                if segment_index >= active.len {
                    break;
                }
                let at = active.buf + segment_index * size_of::<IoVec>() as u64;
                // SAFETY: a user pointer read through the helper.
                match unsafe { bpf_probe_read_user(at as *const IoVec) } {
                    Ok(read) => segment = read,
                    Err(_) => {
                        count(Counter::UserReadFailures, 1);
                        break;
                    }
                }
            }
            if segment_offset >= segment.len {
                segment_index += 1;
                segment_offset = 0;
                continue;
            }
        }
        let mut piece = segment.len - segment_offset;
        if piece > wanted - done {
            piece = wanted - done;
        }
        if piece > CHUNK_SIZE as u64 {
            piece = CHUNK_SIZE as u64;
        }
        emit(record, segment.base + segment_offset, piece as usize, done);
        done += piece;
        segment_offset += piece;
        if active.vectored != 0 && segment_offset >= segment.len {
            segment_index += 1;
            segment_offset = 0;
        }
    }
    if moved > done {
        count(Counter::BytesNotCopied, moved - done);
    }
}

/// Copies `len` user bytes at `src` into the scratch record and outputs header plus payload.
#[inline(always)]
fn emit(record: &mut DataRecord, src: u64, len: usize, chunk_offset: u64) {
    if len == 0 || len > CHUNK_SIZE {
        return;
    }
    // SAFETY: a user pointer read through the helper into a bounded slice of the scratch map.
    if unsafe { bpf_probe_read_user_buf(src as *const u8, &mut record.payload[..len]) }.is_err() {
        count(Counter::UserReadFailures, 1);
        return;
    }
    record.header.copied_len = len as u32;
    record.header.chunk_offset = chunk_offset;
    // SAFETY: DataRecord is plain repr(C) data; the slice stays inside the map value.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            (record as *const DataRecord).cast::<u8>(),
            size_of::<DataRecord>(),
        )
    };
    let Some(bytes) = bytes.get(..HEADER_SIZE + len) else {
        return;
    };
    if RECORDS.output::<[u8]>(bytes, 0).is_ok() {
        count(Counter::RecordsEmitted, 1);
        count(Counter::BytesCopied, len as u64);
    } else {
        count(Counter::RecordsLost, 1);
    }
}
