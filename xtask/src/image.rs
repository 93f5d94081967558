//! `cargo xtask image`: the container image from `deploy/Dockerfile`, built with buildah.
//!
//! The Dockerfile's base is Debian 12. When docker.io is reachable its `debian:bookworm-slim`
//! is used; when it is not (as on machines that reach only package registries), an equivalent
//! base is made here with debootstrap from Debian's own mirror, security updates included.

use std::{path::Path, process::Command};

use anyhow::{Context, bail};

use crate::{setup::apt_install, step, workspace_root};

const IMAGE: &str = concat!("localhost/mqtrace:", env!("CARGO_PKG_VERSION"));
const REGISTRY_BASE: &str = "docker.io/library/debian:bookworm-slim";
const LOCAL_BASE: &str = "localhost/mqtrace-base:bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub fn run() -> anyhow::Result<()> {
    if !available("buildah") {
        step("installing buildah (Debian's OCI image builder)");
        apt_install(&["buildah"])?;
    }
    let base = if buildah(&["inspect", "--type", "image", LOCAL_BASE]).is_ok() {
        LOCAL_BASE
    } else if buildah(&["pull", "--quiet", REGISTRY_BASE]).is_ok() {
        REGISTRY_BASE
    } else {
        step(&format!(
            "{REGISTRY_BASE} cannot be pulled from here: making {LOCAL_BASE} with debootstrap from {MIRROR}"
        ));
        make_base()?;
        LOCAL_BASE
    };
    step(&format!(
        "building {IMAGE} from deploy/Dockerfile on {base}"
    ));
    let root = workspace_root();
    // The build stage downloads crates; it trusts what this host trusts (networks that
    // intercept TLS add their own authority here). Mounted for the build only, not kept.
    let dockerfile = root
        .join("deploy/Dockerfile")
        .to_string_lossy()
        .into_owned();
    let context = root.to_string_lossy().into_owned();
    let base_arg = format!("BASE_IMAGE={base}");
    let host_cas = format!("{HOST_CA_BUNDLE}:/run/host-ca.crt:ro");
    let mut args = vec!["bud", "--isolation", "chroot"];
    if Path::new(HOST_CA_BUNDLE).exists() {
        args.extend([
            "--volume",
            &host_cas,
            "--build-arg",
            "EXTRA_CA=/run/host-ca.crt",
        ]);
    }
    args.extend([
        "--build-arg",
        &base_arg,
        "--file",
        &dockerfile,
        "--tag",
        IMAGE,
        &context,
    ]);
    buildah(&args)?;
    step("checking that the image's mqtrace runs");
    let container = buildah_output(&["from", "--quiet", IMAGE])?;
    let version = buildah_output(&[
        "run",
        "--isolation",
        "chroot",
        &container,
        "--",
        "/usr/local/bin/mqtrace",
        "--version",
    ]);
    buildah(&["rm", &container])?;
    println!("{}", version?);
    let size = buildah_output(&["images", "--format", "{{.Size}}", IMAGE])?;
    step(&format!("built {IMAGE} ({size})"));
    Ok(())
}

/// A Debian 12 minimal root filesystem with its update and security sources, as an image.
fn make_base() -> anyhow::Result<()> {
    if !available("debootstrap") {
        apt_install(&["debootstrap"])?;
    }
    let rootfs = std::env::temp_dir().join(format!("mqtrace-rootfs-{}", std::process::id()));
    let result = (|| {
        run_checked(
            Command::new("debootstrap")
                .args(["--variant=minbase", "bookworm"])
                .arg(&rootfs)
                .arg(MIRROR),
        )?;
        std::fs::write(
            rootfs.join("etc/apt/sources.list"),
            format!(
                "deb {MIRROR} bookworm main\ndeb {MIRROR} bookworm-updates main\n\
                 deb http://deb.debian.org/debian-security bookworm-security main\n"
            ),
        )?;
        // Device nodes come from the container runtime, not from the image.
        for entry in std::fs::read_dir(rootfs.join("dev"))? {
            let path = entry?.path();
            let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
        }
        let container = buildah_output(&["from", "scratch"])?;
        buildah(&["copy", &container, &format!("{}/", rootfs.display()), "/"])?;
        buildah(&["commit", "--quiet", &container, LOCAL_BASE])?;
        buildah(&["rm", &container])
    })();
    let _ = std::fs::remove_dir_all(&rootfs);
    result
}

fn available(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| Path::new(&dir).join(program).exists())
    })
}

fn run_checked(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

fn buildah(args: &[&str]) -> anyhow::Result<()> {
    run_checked(Command::new("buildah").args(args))
}

fn buildah_output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("buildah")
        .args(args)
        .output()
        .context("starting buildah")?;
    if !out.status.success() {
        bail!(
            "buildah {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
