//! Test "hosts": network namespaces joined to this one by a veth pair, removed on drop (the
//! veth goes with them). Addresses are 10.213.<index>.0/30, on links only these tests create.

use std::process::Command;

use anyhow::{Context, bail};

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub struct NetNs {
    pub name: String,
    /// This namespace's side of the link.
    pub host_ip: String,
    /// The test host's own address.
    pub ns_ip: String,
}

impl NetNs {
    /// Creates namespace `mqt<pid>-<index>` with a veth to this namespace and a default route
    /// back through it, so that it reaches this namespace's addresses.
    pub fn create(index: u8) -> anyhow::Result<Self> {
        let name = format!("mqt{}-{index}", std::process::id());
        let (host_if, ns_if) = (
            format!("mqh{}{index}", std::process::id() % 10_000),
            format!("mqn{}{index}", std::process::id() % 10_000),
        );
        let ns = Self {
            name: name.clone(),
            host_ip: format!("10.213.{index}.1"),
            ns_ip: format!("10.213.{index}.2"),
        };
        ip(&["netns", "add", &name])?;
        // From here on, drop removes the namespace whatever fails next.
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &host_if,
        ])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{}/30", ns.ns_ip),
            "dev",
            &ns_if,
        ])?;
        ip(&["-n", &name, "link", "set", &ns_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        ip(&["-n", &name, "route", "add", "default", "via", &ns.host_ip])?;
        Ok(ns)
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
