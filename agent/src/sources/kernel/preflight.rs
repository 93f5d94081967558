//! What the host must allow before probes can load, each failure with a message that says
//! what to do.

use std::path::Path;

use anyhow::{Context, bail};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities of this process, from /proc/self/status.
fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Loading tracepoint programs and reading their maps needs CAP_BPF and CAP_PERFMON (or
/// CAP_SYS_ADMIN on kernels before 5.8).
pub fn check_privileges() -> anyhow::Result<()> {
    let caps = effective_capabilities();
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    bail!(
        "mqtrace must load eBPF programs: run it as root, or grant CAP_BPF and CAP_PERFMON \
         (plus CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to read other processes' sockets in /proc). \
         This process runs as uid {euid} with effective capabilities {caps:#x}."
    )
}

/// Tracepoint ids come from tracefs. It is not mounted at boot on some hosts; mount it when
/// we may, else say how.
pub fn ensure_tracefs() -> anyhow::Result<()> {
    if Path::new(TRACEFS).join("events").is_dir()
        || Path::new(DEBUGFS_TRACING).join("events").is_dir()
    {
        return Ok(());
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; mount(2) has no other preconditions.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed ({err}). Mount it with \
             `mount -t tracefs tracefs {TRACEFS}` (in a container: mount the host's \
             /sys/kernel/tracing into it)."
        );
    }
    if !Path::new(TRACEFS).join("events").is_dir() {
        bail!(
            "tracefs mounted at {TRACEFS} has no events directory: kernel built without tracing?"
        );
    }
    Ok(())
}

/// The capture needs BPF ring buffers (Linux 5.8).
pub fn check_ring_buffer() -> anyhow::Result<()> {
    let supported = aya::sys::is_map_supported(aya::maps::MapType::RingBuf)
        .context("probing the kernel for BPF ring buffer support")?;
    if !supported {
        bail!("this kernel has no BPF ring buffer (needs Linux 5.8 or later)");
    }
    Ok(())
}

/// Whether the syscall tracepoint `name` exists, for a precise error before attaching.
pub fn tracepoint_exists(category: &str, name: &str) -> bool {
    [TRACEFS, DEBUGFS_TRACING].iter().any(|root| {
        Path::new(root)
            .join("events")
            .join(category)
            .join(name)
            .is_dir()
    })
}
