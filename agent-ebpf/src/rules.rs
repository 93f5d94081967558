//! Selection rules applied when a process execs: by command name, else by cgroup.

use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_comm};
use mqtrace_common::MAX_CGROUP_DEPTH;

use crate::maps::{CGROUP_RULES, COMM_RULES};

/// The `Selection` the current process gets from a rule: a command-name rule first, else the
/// rule of its deepest cgroup that has one.
#[inline(always)]
pub fn matching() -> Option<u8> {
    if let Ok(comm) = bpf_get_current_comm() {
        if let Some(value) = COMM_RULES.get_ptr(&comm) {
            // SAFETY: a u8 read from a live map value.
            return Some(unsafe { *value });
        }
    }
    let mut found = None;
    for level in 0..MAX_CGROUP_DEPTH {
        // SAFETY: a helper call with a plain integer argument; 0 means "no such level".
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        if let Some(value) = CGROUP_RULES.get_ptr(&id) {
            // SAFETY: as above.
            found = Some(unsafe { *value });
        }
    }
    found
}
