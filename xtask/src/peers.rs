//! The real RocketMQ peers the end-to-end tests run against: the rocketmq-rust name server,
//! broker and gRPC proxy, our mq-client over rocketmq-client-rust (remoting) and our mq5-client
//! over Apache's Rust 5.x client (gRPC, through the proxy), and Apache's own Java servers and
//! clients (`apache_peers`). Built once per machine into a cache outside the checkout (about 20
//! minutes on 2 cores, and as much again for the proxy), reused afterwards.

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

pub fn binaries(dir: &Path) -> [PathBuf; 5] {
    [
        "rocketmq-namesrv-rust",
        "rocketmq-broker-rust",
        "rocketmq-proxy-rust",
        "mq-client",
        "mq5-client",
    ]
    .map(|b| dir.join("bin").join(b))
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
    let [namesrv, broker, proxy, client, client5] = binaries(&dir);
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
    if !proxy.exists() {
        // Its gRPC stubs are generated at build time by protoc.
        if !on_path("protoc") {
            step("the proxy's build needs protoc: installing protobuf-compiler");
            crate::setup::apt_install(&["protobuf-compiler"])?;
        }
        // Cluster mode only (in front of the name server and broker): local mode would build a
        // broker into it too.
        install(
            &[
                "--locked",
                "rocketmq-proxy",
                "--version",
                ROCKETMQ_VERSION,
                "--no-default-features",
                "--features",
                "cluster-mode",
            ],
            "gRPC proxy (once per machine)",
        )?;
    }
    // The clients are ours: rebuilt when their source changes (cargo install compares versions
    // only).
    for (binary, source, label) in [
        (
            &client,
            "tests/peers/rust-client",
            "client mq-client (its source is newer than its build)",
        ),
        (
            &client5,
            "tests/peers/rust5-client",
            "client mq5-client (its source is newer than its build)",
        ),
    ] {
        let source = workspace_root().join(source);
        if !binary.exists() || newer(&source, binary).unwrap_or(true) {
            let path = source.to_string_lossy().into_owned();
            install(&["--locked", "--force", "--path", &path], label)?;
        }
    }
    crate::apache_peers::ensure(&dir)?;
    Ok(dir)
}

/// Whether the package at `source` (its main.rs or its manifest) changed after `built` was.
fn newer(source: &Path, built: &Path) -> Option<bool> {
    let modified = |path: &Path| path.metadata().ok()?.modified().ok();
    let built = modified(built)?;
    let mut latest = modified(&source.join("src/main.rs"))?;
    latest = latest.max(modified(&source.join("Cargo.toml"))?);
    Some(latest > built)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
