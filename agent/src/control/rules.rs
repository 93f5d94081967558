//! The rule book: what `enable` and `disable` did, applied to the kernel's selection. A pid
//! rule changes one process; a comm or cgroup rule changes the processes that match now and,
//! through the exec probe, every one that starts later.

use std::{collections::BTreeMap, os::unix::fs::MetadataExt, path::PathBuf};

use anyhow::{Context, bail};
use mqtrace_common::{COMM_LEN, Selection};

use super::{ListedProcess, Listing, Rule, Target};
use crate::sources::{capture::Capture, kernel::procfs};

#[derive(Default)]
pub struct Rules {
    /// Comm and cgroup rules, the latest word on each target.
    rules: BTreeMap<Target, bool>,
    /// Pid rules, with the process's start time (a pid may be reused by another program).
    pids: BTreeMap<u32, (bool, Option<u64>)>,
}

/// A rule as the state file keeps it, to apply it again when the daemon restarts.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedRule {
    pub target: Target,
    pub enabled: bool,
    /// A pid rule's process start time: the rule is applied again only to that process.
    #[serde(default)]
    pub start_time: Option<u64>,
}

/// What an enable or disable changed.
pub struct Applied {
    pub processes: Vec<u32>,
    pub note: Option<String>,
}

impl Rules {
    pub fn apply(
        &mut self,
        capture: &mut impl Capture,
        target: &Target,
        enabled: bool,
    ) -> anyhow::Result<Applied> {
        let trace_all = capture.trace_all();
        // In trace-all mode a disable must be remembered (an exclusion); in selected mode it
        // is the default and the rule simply goes.
        let kernel_rule = |selection| match (enabled, trace_all) {
            (true, _) => Some(selection),
            (false, true) => Some(Selection::Excluded),
            (false, false) => None,
        };
        let (target, selection, matching, note): (_, _, Vec<u32>, _) = match target {
            Target::Pid(pid) => {
                if enabled {
                    capture.set_selection(*pid, Selection::ByPid)?;
                } else {
                    capture.deselect(*pid)?;
                }
                self.pids.insert(*pid, (enabled, procfs::start_time(*pid)));
                return Ok(Applied {
                    processes: vec![*pid],
                    note: None,
                });
            }
            Target::Comm(name) => {
                let (key, note) = comm_key(name)?;
                capture.set_comm_rule(key, kernel_rule(Selection::ByComm))?;
                // Kept as the kernel sees it, so that both spellings are one rule.
                let comm = comm_name(&key);
                let pids = procfs::all_pids()
                    .into_iter()
                    .filter(|&pid| procfs::comm(pid).as_deref() == Some(comm.as_str()))
                    .collect();
                (Target::Comm(comm), Selection::ByComm, pids, note)
            }
            Target::Cgroup(path) => {
                let (relative, id) = cgroup(path)?;
                capture.set_cgroup_rule(id, kernel_rule(Selection::ByCgroup))?;
                let inside = |cgroup: &str| {
                    relative == "/"
                        || cgroup == relative
                        || cgroup.starts_with(&format!("{relative}/"))
                };
                let pids = procfs::all_pids()
                    .into_iter()
                    .filter(|&pid| procfs::cgroup_v2(pid).is_some_and(|c| inside(&c)))
                    .collect();
                (target.clone(), Selection::ByCgroup, pids, None)
            }
        };
        let me = std::process::id();
        let mut changed = Vec::new();
        for pid in matching.into_iter().filter(|&pid| pid != me) {
            // A process may end while we look: that is not an error.
            let result = match (enabled, capture.is_traced(pid)) {
                (true, Ok(false)) => capture.set_selection(pid, selection),
                (false, Ok(true)) => capture.deselect(pid),
                _ => continue,
            };
            if result.is_ok() {
                changed.push(pid);
            }
        }
        self.rules.insert(target, enabled);
        Ok(Applied {
            processes: changed,
            note,
        })
    }

    /// The rules to keep across a restart: every comm and cgroup rule, and the pid rules of
    /// processes that still run.
    pub fn saved(&self) -> Vec<SavedRule> {
        let pids = self
            .pids
            .iter()
            .filter(|(pid, (_, started))| {
                started.is_some() && procfs::start_time(**pid) == *started
            })
            .map(|(&pid, &(enabled, start_time))| SavedRule {
                target: Target::Pid(pid),
                enabled,
                start_time,
            });
        let others = self.rules.iter().map(|(target, &enabled)| SavedRule {
            target: target.clone(),
            enabled,
            start_time: None,
        });
        pids.chain(others).collect()
    }

    /// Applies saved rules again; returns how many were, and why the others were not.
    pub fn restore(
        &mut self,
        capture: &mut impl Capture,
        saved: &[SavedRule],
    ) -> (usize, Vec<String>) {
        let mut applied = 0;
        let mut skipped = Vec::new();
        for rule in saved {
            if let Target::Pid(pid) = rule.target
                && procfs::start_time(pid) != rule.start_time
            {
                skipped.push(format!("{}: that process is gone", rule.target));
                continue;
            }
            match self.apply(capture, &rule.target, rule.enabled) {
                Ok(_) => applied += 1,
                Err(error) => skipped.push(format!("{}: {error:#}", rule.target)),
            }
        }
        (applied, skipped)
    }

    pub fn listing(&self, capture: &impl Capture) -> anyhow::Result<Listing> {
        let connections = capture.sockets_per_process()?;
        let tls_probes = capture.tls_probes_per_process();
        let processes = capture
            .selections()?
            .into_iter()
            .map(|(pid, selection)| ListedProcess {
                pid,
                comm: procfs::comm(pid).unwrap_or_default(),
                selection,
                connections: connections.get(&pid).copied().unwrap_or(0),
                tls_probes: tls_probes.get(&pid).copied().unwrap_or(0),
            })
            .collect();
        Ok(Listing {
            mode: mode_name(capture.trace_all()).into(),
            rules: self
                .rules
                .iter()
                .map(|(target, &enabled)| Rule {
                    target: target.clone(),
                    enabled,
                })
                .collect(),
            processes,
        })
    }
}

pub fn mode_name(trace_all: bool) -> &'static str {
    if trace_all { "all" } else { "selected" }
}

/// The kernel's key for a command name: NUL-padded, cut to 15 bytes as the kernel cuts it.
fn comm_key(name: &str) -> anyhow::Result<([u8; COMM_LEN], Option<String>)> {
    if name.is_empty() {
        bail!("--comm needs a command name, e.g. java");
    }
    let bytes = name.as_bytes();
    let kept = bytes.len().min(COMM_LEN - 1);
    let mut key = [0u8; COMM_LEN];
    key[..kept].copy_from_slice(&bytes[..kept]);
    let note = (kept < bytes.len()).then(|| {
        format!(
            "the kernel keeps 15 bytes of a command name: matching {:?}",
            String::from_utf8_lossy(&bytes[..kept])
        )
    });
    Ok((key, note))
}

fn comm_name(key: &[u8; COMM_LEN]) -> String {
    String::from_utf8_lossy(key)
        .trim_end_matches('\0')
        .to_string()
}

/// A cgroup given as a path under the v2 mount or as /proc/PID/cgroup shows it: its path
/// relative to the hierarchy's root, and its id (the directory's inode number).
fn cgroup(path: &str) -> anyhow::Result<(String, u64)> {
    let mount = procfs::cgroup_v2_mount()
        .context("no cgroup v2 hierarchy is mounted: --cgroup needs one")?;
    let given = PathBuf::from(path);
    let relative = match given.strip_prefix(&mount) {
        Ok(rest) => format!("/{}", rest.display()),
        Err(_) => format!("/{}", path.trim_start_matches('/')),
    };
    let relative = match relative.trim_end_matches('/') {
        "" => "/".to_string(),
        trimmed => trimmed.to_string(),
    };
    let dir = mount.join(relative.trim_start_matches('/'));
    let metadata = std::fs::metadata(&dir).with_context(|| {
        format!(
            "no cgroup {relative} (looked for {}; give a path under {} or as /proc/PID/cgroup \
             shows it)",
            dir.display(),
            mount.display()
        )
    })?;
    Ok((relative, metadata.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_are_cut_as_the_kernel_cuts_them() {
        let (key, note) = comm_key("java").unwrap();
        assert_eq!(&key[..5], b"java\0");
        assert!(note.is_none());
        let (key, note) = comm_key("rocketmq-broker-rust").unwrap();
        assert_eq!(&key[..15], b"rocketmq-broker");
        assert_eq!(key[15], 0);
        assert!(note.unwrap().contains("\"rocketmq-broker\""));
        assert!(comm_key("").is_err());
    }

    #[test]
    fn cgroups_are_found_by_either_spelling() {
        let Some(mount) = procfs::cgroup_v2_mount() else {
            panic!("this machine mounts cgroup v2 (the test relies on it)");
        };
        let root_id = std::fs::metadata(&mount).unwrap().ino();
        assert_eq!(cgroup("/").unwrap(), ("/".to_string(), root_id));
        assert_eq!(
            cgroup(&mount.to_string_lossy()).unwrap(),
            ("/".to_string(), root_id)
        );
        let error = cgroup("/no/such/cgroup").unwrap_err().to_string();
        assert!(error.contains("no cgroup /no/such/cgroup"), "{error}");
    }
}
