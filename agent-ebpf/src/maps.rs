//! The maps and the small helpers every program uses on them.

use core::intrinsics::AtomicOrdering;

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use mqtrace_common::{
    COMM_LEN, COUNTER_SLOTS, Config, Counter, DataRecord, MAX_RULES, MAX_SOCKETS, Selection,
    SocketKey, SocketState,
};

/// Set by user space before attaching; absent means "trace nothing".
#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Processes traced (or excluded) whatever `Config::trace_all` says, with a `Selection` value.
#[map(name = "SELECTED_PROCESSES")]
pub static SELECTED_PROCESSES: HashMap<u32, u8> = HashMap::with_max_entries(16_384, 0);

/// Command name (NUL-padded) to the `Selection` a process gets when it execs it.
#[map(name = "COMM_RULES")]
pub static COMM_RULES: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(MAX_RULES, 0);

/// Cgroup (v2) id to the `Selection` a process gets when it execs inside it or below it.
#[map(name = "CGROUP_RULES")]
pub static CGROUP_RULES: HashMap<u64, u8> = HashMap::with_max_entries(MAX_RULES, 0);

/// Sockets whose payloads are copied, with their stream positions.
#[map(name = "SOCKETS")]
pub static SOCKETS: HashMap<SocketKey, SocketState> = HashMap::with_max_entries(MAX_SOCKETS, 0);

/// Size set by user space at load time.
#[map(name = "RECORDS")]
pub static RECORDS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Records the ring had no room for, over all CPUs (COUNTERS keeps them per CPU, for the
/// totals): data and close records carry this count as they are written, so that user space
/// knows where in the stream records went missing, not only how many.
#[map(name = "LOST_RECORDS")]
pub static LOST_RECORDS: Array<u64> = Array::with_max_entries(1, 0);

/// Where a data record is assembled before it is copied into the ring buffer at its exact
/// length: reserving a full chunk for every small write would waste the ring.
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<DataRecord> = PerCpuArray::with_max_entries(1, 0);

/// Source of kernel-assigned connection ids.
#[map(name = "NEXT_CONNECTION_ID")]
pub static NEXT_CONNECTION_ID: Array<u64> = Array::with_max_entries(1, 0);

/// Arguments of the syscall each thread is inside, from enter to exit.
#[map(name = "ACTIVE")]
pub static ACTIVE: HashMap<u64, ActiveSyscall> = HashMap::with_max_entries(16_384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ActiveSyscall {
    /// The data buffer, the iovec array, or the sockaddr of connect/accept.
    pub buf: u64,
    /// Buffer length, or iovec count.
    pub len: u64,
    pub fd: i32,
    pub syscall: u8,
    pub vectored: u8,
    pub _pad: u16,
}

/// Remembers a syscall of interest until its exit; a full table is counted, since that
/// syscall's bytes then go by unseen and uncounted by the stream positions.
#[inline(always)]
pub fn stash_active(pid_tgid: u64, active: ActiveSyscall) {
    if ACTIVE.insert(pid_tgid, active, 0).is_err() {
        count(Counter::SyscallTableFull, 1);
    }
}

/// Removes and returns the calling thread's stashed syscall.
#[inline(always)]
pub fn take_active() -> Option<ActiveSyscall> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the entry belongs to this thread; nothing else writes it meanwhile.
    let active = unsafe { *ACTIVE.get_ptr(pid_tgid)? };
    let _ = ACTIVE.remove(pid_tgid);
    Some(active)
}

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

#[inline(always)]
pub fn process_selected(pid: u32) -> bool {
    let Some(config) = config() else {
        return false;
    };
    if pid == config.agent_pid {
        return false;
    }
    match selection(pid) {
        Some(selection) => selection != Selection::Excluded as u8,
        None => config.trace_all != 0,
    }
}

/// The process's entry in SELECTED_PROCESSES, if it has one.
#[inline(always)]
pub fn selection(pid: u32) -> Option<u8> {
    // SAFETY: a u8 read from a live map value.
    SELECTED_PROCESSES
        .get_ptr(pid)
        .map(|value| unsafe { *value })
}

/// The ring had no room for a record.
#[inline(always)]
pub fn record_lost() {
    count(Counter::RecordsLost, 1);
    if let Some(total) = LOST_RECORDS.get_ptr_mut(0) {
        // SAFETY: a live, aligned u64 map value.
        unsafe { fetch_add(total, 1) };
    }
}

/// Records lost so far, for the record being written.
#[inline(always)]
pub fn records_lost() -> u64 {
    // SAFETY: a live, aligned u64 map value, read once.
    LOST_RECORDS
        .get_ptr(0)
        .map_or(0, |total| unsafe { core::ptr::read_volatile(total) })
}

#[inline(always)]
pub fn count(counter: Counter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Atomic: a preempted program and the one that preempted it may share this CPU's slot.
        // SAFETY: the pointer is a live, aligned map value.
        unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, n) };
    }
}

/// Atomic add returning the previous value. The BPF target offers no `AtomicU64::fetch_add`,
/// but the instruction exists (BPF_ATOMIC | BPF_FETCH, kernel 5.12). SeqCst, because LLVM 22
/// lowers a relaxed add to the non-fetching BPF_ADD even when the result is used.
///
/// # Safety
/// `ptr` must point to a live, 8-byte aligned u64 in a map value.
#[inline(always)]
pub unsafe fn fetch_add(ptr: *mut u64, n: u64) -> u64 {
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(ptr, n) }
}
