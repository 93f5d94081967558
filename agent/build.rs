//! Builds the kernel programs (`agent-ebpf`) for the BPF target and hands the object to the
//! agent, which embeds it. The BPF build needs a compiler with the `core` library source and
//! bpf-linker: `cargo xtask setup` installs them.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// Where Debian's rustc keeps the library source that `-Z build-std=core` compiles.
const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library/core";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest_dir.join("../agent-ebpf");
    for watched in ["src", "Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            ebpf_dir.join(watched).display()
        );
    }
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../common/src").display()
    );
    println!("cargo:rerun-if-env-changed=MQTRACE_EBPF_CARGO");

    let mut cargo = bpf_cargo();
    cargo
        .current_dir(&ebpf_dir)
        .args(["build", "--release", "--locked"])
        // Build-script variables of the outer build must not leak into the BPF build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_MAKEFLAGS");
    let status = cargo.status().unwrap_or_else(|e| {
        panic!("cannot run the eBPF build ({cargo:?}): {e}. Run `cargo xtask setup` first.")
    });
    if !status.success() {
        panic!(
            "building the eBPF programs in {} failed ({status}). `cargo xtask setup` installs \
             the compiler and bpf-linker they need.",
            ebpf_dir.display()
        );
    }
    let object = ebpf_dir.join("target/bpfel-unknown-none/release/mqtrace");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("mqtrace-ebpf.o");
    std::fs::copy(&object, &out)
        .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", object.display(), out.display()));
}

/// The cargo that builds for `bpfel-unknown-none`: `MQTRACE_EBPF_CARGO` if set, else Debian's
/// compiler (which ships the `core` source), else rustup's nightly with `rust-src`.
fn bpf_cargo() -> Command {
    if let Ok(cargo) = env::var("MQTRACE_EBPF_CARGO") {
        let mut command = Command::new(cargo);
        command.env("RUSTC_BOOTSTRAP", "1").env_remove("RUSTC");
        return command;
    }
    if Path::new(DEBIAN_RUST_SRC).exists() && Path::new("/usr/bin/cargo").exists() {
        let mut command = Command::new("/usr/bin/cargo");
        command
            .env("RUSTC", "/usr/bin/rustc")
            .env("RUSTC_BOOTSTRAP", "1");
        return command;
    }
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo"])
        .env_remove("RUSTC");
    command
}
