//! Holding a process at exec until its TLS probes are placed. A program that begins TLS within
//! milliseconds of its start (a Go client) would otherwise encrypt its first bytes (the HTTP/2
//! preface, the first headers) before user space has read its symbols and attached. The
//! process is stopped with SIGSTOP as it leaves exec; user space looks at it, probes it and
//! sends SIGCONT. Tracing every process, probes serve every later process of a program, so a
//! program is held once per cgroup (a new container may bring a new file under the same path).
//! A process with a controlling terminal is never held: its shell, doing job control, would
//! report it stopped as if the user had pressed Ctrl-Z.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, bpf_send_signal,
    },
    macros::map,
    maps::LruHashMap,
    programs::TracePointContext,
};

use mqtrace_common::Config;

use crate::maps::config;

const SIGSTOP: u32 = 19;
/// Offset of `__data_loc char[] filename` in `sched:sched_process_exec`.
const FILENAME_LOC_OFFSET: usize = 8;
/// Path bytes read and hashed: longer paths are told apart by their first 255 bytes and their
/// cgroup. The path is as given to exec (a relative `./server` is its own key).
const PATH_WORDS: usize = 32;

/// Programs already held once, by a hash of (cgroup, path): not held again.
#[map(name = "KNOWN_PROGRAMS")]
static KNOWN_PROGRAMS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16_384, 0);

/// Whether the process exec'ing now is to wait for its probes: holding is on and, tracing
/// every process, its program is new in its cgroup (selected one by one, each process gets
/// probes of its own, so each is held). Some(its program's key, or 0 when not kept).
#[inline(always)]
pub fn wanted(ctx: &TracePointContext) -> Option<u64> {
    let config = config()?;
    if config.hold_at_exec == 0 || on_a_terminal(config) {
        return None;
    }
    if config.trace_all == 0 {
        return Some(0);
    }
    let key = program_key(ctx);
    // BPF_NOEXIST: only the exec that adds the program holds.
    KNOWN_PROGRAMS.insert(&key, &1, 1).ok().map(|_| key)
}

/// A program that was to be held but was not (no room in the ring): held at its next exec.
#[inline(always)]
pub fn forget(key: u64) {
    if key != 0 {
        let _ = KNOWN_PROGRAMS.remove(&key);
    }
}

/// Whether the current process has a controlling terminal (`task->signal->tty`).
#[inline(always)]
fn on_a_terminal(config: &Config) -> bool {
    // SAFETY: reads of kernel memory through the helper, which fails cleanly on a bad
    // address; the offsets come from this kernel's BTF.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let Ok(signal) =
            bpf_probe_read_kernel(task.add(config.task_signal_offset as usize) as *const u64)
        else {
            return true;
        };
        let tty = (signal as *const u8).add(config.signal_tty_offset as usize) as *const u64;
        // Unreadable: taken for a terminal, since a process is held only when sure.
        bpf_probe_read_kernel(tty).map_or(true, |tty| tty != 0)
    }
}

/// Stops the current process (as it returns to user space); it runs again when user space
/// continues it. False when the kernel refused (the host's init).
#[inline(always)]
pub fn stop_current() -> bool {
    // SAFETY: a helper with a plain integer argument; it signals the current process.
    unsafe { bpf_send_signal(SIGSTOP) == 0 }
}

/// FNV-1a over the cgroup id and the exec'd path (NUL-padded to 256 bytes).
#[inline(always)]
fn program_key(ctx: &TracePointContext) -> u64 {
    let mut path = [0u64; PATH_WORDS];
    // SAFETY: a u32 inside the tracepoint's record.
    let loc: u32 = unsafe { ctx.read_at(FILENAME_LOC_OFFSET) }.unwrap_or(0);
    // SAFETY: the filename lies inside the tracepoint's record at the offset its __data_loc
    // gives; the destination is this stack array, viewed as bytes.
    unsafe {
        let source = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
        let bytes = core::slice::from_raw_parts_mut(path.as_mut_ptr().cast::<u8>(), PATH_WORDS * 8);
        let _ = bpf_probe_read_kernel_str_bytes(source, bytes);
    }
    const FNV_PRIME: u64 = 0x100_0000_01b3;
    // SAFETY: a helper without arguments.
    let mut key = 0xcbf2_9ce4_8422_2325 ^ unsafe { bpf_get_current_cgroup_id() };
    for word in path {
        key = (key ^ word).wrapping_mul(FNV_PRIME);
    }
    key
}
