//! Installs the eBPF toolchain by whichever route this host allows, and nothing when it is
//! there already.
//!
//! The kernel programs need a Rust compiler that can build `core` for `bpfel-unknown-none`
//! (`-Z build-std=core`, so the library source must be present) and bpf-linker built against
//! the same LLVM major as that compiler (22 for rustc 1.95/1.96).
//!
//! Routes, in order: rustup's nightly with `rust-src` if present; else Debian's rustc, which
//! ships its library source (`rust-web-src`), installed with apt.

use std::{path::Path, process::Command};

use anyhow::{Context, bail};

use crate::step;

const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libzstd-dev",
];
const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library/core";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> anyhow::Result<()> {
    if !nightly_has_rust_src() && !Path::new(DEBIAN_RUST_SRC).exists() {
        step(&format!(
            "no compiler with the core library source for the BPF target: installing Debian's ({})",
            DEBIAN_PACKAGES.join(" ")
        ));
        apt_install(DEBIAN_PACKAGES)?;
    }
    if !bpf_linker_ok() {
        if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
            step(
                "bpf-linker needs LLVM 22's development files: installing llvm-22-dev libzstd-dev",
            );
            apt_install(&["llvm-22-dev", "libzstd-dev"])?;
        }
        step(&format!(
            "installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        ));
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .status()
            .context("running cargo install bpf-linker")?;
        if !status.success() {
            bail!("installing bpf-linker failed ({status})");
        }
    }
    Ok(())
}

fn nightly_has_rust_src() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src"))
        })
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// What the tests use besides the toolchain: promtool and Prometheus (Debian's `prometheus`
/// package) check the agent's metrics and alert rules. Debian starts the package's service
/// at install; the tests run their own, so it is stopped again.
pub fn test_tools() -> anyhow::Result<()> {
    let present = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if present("promtool") && present("prometheus") {
        return Ok(());
    }
    step("the tests check metrics and alert rules with Prometheus: installing Debian's prometheus");
    // Without its recommends: no node exporter service beside it.
    apt_install(&["--no-install-recommends", "prometheus"])?;
    if Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "prometheus.service"])
            .status();
    }
    Ok(())
}

pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get (setup needs root on a Debian-family host)")?;
        if !status.success() {
            bail!("`apt-get {}` failed ({status})", args.join(" "));
        }
        Ok(())
    };
    run(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q"];
    args.extend_from_slice(packages);
    run(&args)
}
