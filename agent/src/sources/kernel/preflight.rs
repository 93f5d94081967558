//! What the host must allow before probes can load, each failure with a message that says
//! what to do.

use std::path::Path;

use anyhow::{Context, bail};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

const CAP_KILL: u32 = 5;
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

/// Where the kernel keeps a process's controlling terminal: the byte offsets of
/// `task_struct.signal` and `signal_struct.tty`, from the kernel's BTF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TerminalOffsets {
    pub task_signal: u32,
    pub signal_tty: u32,
}

/// What holding processes at exec needs: to see the host's processes under their own ids (the
/// kernel stops them; the agent continues them by pid), CAP_KILL and no security module's rule
/// against signalling them (tried on the host's init), and where the kernel keeps a process's
/// controlling terminal (a process on a terminal is never held).
pub fn check_hold_at_exec() -> anyhow::Result<TerminalOffsets> {
    use std::os::unix::fs::MetadataExt;
    // The initial pid namespace's inode number (PROC_PID_INIT_INO).
    const INITIAL_PID_NAMESPACE: u64 = 0xEFFF_FFFC;
    let namespace = std::fs::metadata("/proc/self/ns/pid")
        .context("reading /proc/self/ns/pid")?
        .ino();
    if namespace != INITIAL_PID_NAMESPACE {
        bail!("the agent runs in a pid namespace of its own (a container without hostPID)");
    }
    if effective_capabilities() & (1 << CAP_KILL) == 0 {
        bail!("continuing another user's process needs CAP_KILL");
    }
    // SAFETY: kill(2) with signal 0 only checks that the signal may be sent.
    if unsafe { libc::kill(1, 0) } != 0 {
        bail!(
            "signalling the host's processes is refused ({}): a security module's profile \
             (AppArmor, SELinux) confines the agent",
            std::io::Error::last_os_error()
        );
    }
    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
    let btf = btf_rs::Btf::from_file(VMLINUX)
        .map_err(|e| anyhow::anyhow!("reading the kernel's BTF at {VMLINUX}: {e}"))?;
    Ok(TerminalOffsets {
        task_signal: member_offset(&btf, "task_struct", "signal")?,
        signal_tty: member_offset(&btf, "signal_struct", "tty")?,
    })
}

/// The byte offset of `member` in the kernel's `structure`.
fn member_offset(btf: &btf_rs::Btf, structure: &str, member: &str) -> anyhow::Result<u32> {
    let types = btf
        .resolve_types_by_name(structure)
        .map_err(|e| anyhow::anyhow!("no struct {structure} in the kernel's BTF: {e}"))?;
    for found in types {
        let btf_rs::Type::Struct(found) = found else {
            continue;
        };
        for field in &found.members {
            if btf.resolve_name(field).is_ok_and(|name| name == member) {
                anyhow::ensure!(
                    field.bit_offset() % 8 == 0,
                    "{structure}.{member} is a bit field"
                );
                return Ok(field.bit_offset() / 8);
            }
        }
    }
    bail!("no {structure}.{member} in the kernel's BTF")
}
