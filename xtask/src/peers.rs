//! The real RocketMQ peers the end-to-end tests run against: the rocketmq-rust name server and
//! broker, and our mq-client over rocketmq-client-rust. Built once per machine into a cache
//! outside the checkout (about 20 minutes on 2 cores), reused afterwards.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::{step, workspace_root};

const ROCKETMQ_VERSION: &str = "1.0.0";

/// `$MQTRACE_PEERS`, or `$XDG_CACHE_HOME/mqtrace/peers-1.0.0` (`~/.cache/...`).
pub fn dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MQTRACE_PEERS") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    cache
        .join("mqtrace")
        .join(format!("peers-{ROCKETMQ_VERSION}"))
}

pub fn binaries(dir: &Path) -> [PathBuf; 3] {
    ["rocketmq-namesrv-rust", "rocketmq-broker-rust", "mq-client"].map(|b| dir.join("bin").join(b))
}

/// Builds whatever of the peers is missing, and says where they are.
pub fn ensure() -> anyhow::Result<PathBuf> {
    let dir = dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build_dir = dir.join("build");
    let install = |what: &[&str], label: &str| -> anyhow::Result<()> {
        step(&format!(
            "building the real RocketMQ peer {label} into {}",
            dir.display()
        ));
        let status = Command::new(&cargo)
            .arg("install")
            .args(what)
            .arg("--root")
            .arg(&dir)
            .env("CARGO_TARGET_DIR", &build_dir)
            .status()
            .context("running cargo install")?;
        if !status.success() {
            bail!("building {label} failed ({status})");
        }
        Ok(())
    };
    let [namesrv, broker, client] = binaries(&dir);
    if !namesrv.exists() {
        install(
            &[
                "--locked",
                "rocketmq-namesrv",
                "--version",
                ROCKETMQ_VERSION,
            ],
            "name server (once per machine)",
        )?;
    }
    if !broker.exists() {
        install(
            &["--locked", "rocketmq-broker", "--version", ROCKETMQ_VERSION],
            "broker (once per machine)",
        )?;
    }
    // The client is ours: rebuilt when its source changes (cargo install compares versions only).
    let client_src = workspace_root().join("tests/peers/rust-client");
    let stale = || -> Option<bool> {
        let built = client.metadata().ok()?.modified().ok()?;
        let source = client_src
            .join("src/main.rs")
            .metadata()
            .ok()?
            .modified()
            .ok()?;
        Some(source > built)
    };
    if !client.exists() || stale().unwrap_or(true) {
        let path = client_src.to_string_lossy().into_owned();
        install(
            &["--locked", "--force", "--path", &path],
            "client mq-client (its source is newer than its build)",
        )?;
    }
    Ok(dir)
}
