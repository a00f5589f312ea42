//! A simulated physical network between hosts: a "switch" namespace with a Linux bridge that
//! is also every host's gateway, and one veth port per attached host.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail, ensure};

use crate::netns::NetNs;

/// The bridge and its namespace; hosts are attached with [`Underlay::attach`].
///
/// IPv4 uses the subnet given (10.10.0.0/24 by default). IPv6 uses `fd00:10:10::/64`, each
/// host's IPv6 address carrying its IPv4 address in the low 32 bits (see
/// [`Underlay::ipv6_for`]). Dropping the underlay deletes the switch namespace and with it the
/// bridge and the switch ends of every port.
pub struct Underlay {
    switch: NetNs,
    gateway: Ipv4Addr,
    prefix_len: u8,
    next_port: AtomicU32,
}

impl Underlay {
    /// 10.10.0.0/24 with the switch at 10.10.0.1.
    pub fn new() -> Result<Self> {
        Self::with_gateway(Ipv4Addr::new(10, 10, 0, 1), 24)
    }

    /// A subnet of `prefix_len` bits with the switch (bridge, gateway) at `gateway`.
    pub fn with_gateway(gateway: Ipv4Addr, prefix_len: u8) -> Result<Self> {
        ensure!((1..=30).contains(&prefix_len), "prefix length {prefix_len}");
        let switch = NetNs::new("sw")?;
        let gw6 = Self::ipv6_for(gateway);
        ip_batch(
            &switch,
            &format!(
                "link set lo up\n\
                 link add br0 type bridge forward_delay 0\n\
                 link set br0 up\n\
                 addr add {gateway}/{prefix_len} dev br0\n\
                 addr add {gw6}/64 dev br0 nodad\n"
            ),
        )?;
        // The switch routes between subnets, like the gateway of a real network.
        switch.within(set_forwarding)??;
        Ok(Self {
            switch,
            gateway,
            prefix_len,
            next_port: AtomicU32::new(0),
        })
    }

    /// The switch's address: the bridge's, every host's default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The switch's IPv6 address, the IPv6 default gateway.
    pub fn gateway6(&self) -> Ipv6Addr {
        Self::ipv6_for(self.gateway)
    }

    /// The IPv4 prefix length of the subnet.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The namespace holding the bridge `br0`.
    pub fn switch(&self) -> &NetNs {
        &self.switch
    }

    /// The IPv6 address paired with an IPv4 address: `fd00:10:10::` plus its 32 bits.
    pub fn ipv6_for(ip: Ipv4Addr) -> Ipv6Addr {
        Ipv6Addr::from(0xfd00_0010_0010_0000_0000_0000_0000_0000_u128 | u128::from(u32::from(ip)))
    }

    /// A new namespace wired to the switch: its `eth0` has `ip` (and [`Underlay::ipv6_for`]
    /// it), default routes via the switch, and `lo` is up.
    pub fn attach(&self, name_hint: &str, ip: Ipv4Addr) -> Result<NetNs> {
        let mask = u32::MAX << (32 - self.prefix_len);
        ensure!(
            u32::from(ip) & mask == u32::from(self.gateway) & mask && ip != self.gateway,
            "{ip} is not a host address in {}/{}",
            self.gateway,
            self.prefix_len
        );
        let host = NetNs::new(name_hint)?;
        let port = format!("p{}", self.next_port.fetch_add(1, Ordering::Relaxed));
        // Creating the peer directly in the host's namespace avoids the ~20 ms that moving
        // a device between namespaces costs.
        ip_batch(
            &self.switch,
            &format!(
                "link add {port} type veth peer name eth0 netns {host}\n\
                 link set {port} master br0 up\n",
                host = host.name()
            ),
        )?;
        let (prefix_len, gw, ip6, gw6) = (
            self.prefix_len,
            self.gateway,
            Self::ipv6_for(ip),
            self.gateway6(),
        );
        ip_batch(
            &host,
            &format!(
                "link set lo up\n\
                 link set eth0 up\n\
                 addr add {ip}/{prefix_len} dev eth0\n\
                 addr add {ip6}/64 dev eth0 nodad\n\
                 route add default via {gw} dev eth0\n\
                 route add default via {gw6} dev eth0\n"
            ),
        )?;
        Ok(host)
    }
}

/// Turns on IPv4 and IPv6 forwarding in the calling thread's network namespace.
pub(crate) fn set_forwarding() -> Result<()> {
    for (file, value) in [
        ("/proc/sys/net/ipv4/ip_forward", "1"),
        ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
    ] {
        std::fs::write(file, value).with_context(|| format!("writing {file}"))?;
    }
    Ok(())
}

/// Runs `ip -batch` commands (one per line) in `ns`, in a single process.
fn ip_batch(ns: &NetNs, commands: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    child
        .stdin
        .take()
        .context("ip's stdin")?
        .write_all(commands.as_bytes())
        .context("writing to ip -batch")?;
    let out = child.wait_with_output().context("waiting for ip -batch")?;
    if !out.status.success() {
        bail!(
            "ip -n {} -batch failed: {}\ncommands:\n{commands}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
