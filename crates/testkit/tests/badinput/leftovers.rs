//! What a row may not leave behind: a snapshot of the node (links, routes, `ip_forward`,
//! iptables and nftables rules, portmap's state directory) and of etcd under `/calico`,
//! taken before and after the row.
//!
//! In etcd, blocks and affinities may stay (Calico keeps a node's affine block after its last
//! address is released), so they are compared by the number of addresses they hold, and a
//! new one is allowed only for the table's node ([`NODE`]) inside its pool ([`POOL`]): a
//! block claimed anywhere else (a pool the call should have refused) is a leftover. Every
//! other key (handles, endpoints, nodes, pools, config) must be exactly as before.

use serde_json::Value;

use crate::runner::{Bed, NODE, POOL};

/// The node's state as text, one section per kind, and etcd's keys.
pub struct Snapshot {
    node: String,
    keys: Vec<(String, String)>,
}

/// One `sh` in the node prints every section.
const NODE_STATE: &str = r#"
echo '## links'; ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort
echo '## routes'; ip route show; ip -6 route show
echo '## ip_forward'; cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf/all/forwarding
echo '## iptables'; iptables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9:]*\]//'
echo '## ip6tables'; ip6tables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9:]*\]//'
echo '## nft'; nft list ruleset 2>/dev/null | sed 's/counter packets [0-9]* bytes [0-9]*/counter/'
echo '## rules'; ip rule show; ip -6 rule show
echo '## portmap state'; find /run/calico/portmap -mindepth 1 ! -name lock ! -path '*/portmap/ports' 2>/dev/null | sort
"#;

impl Snapshot {
    /// Both halves at once (each is a process or two; together they are most of a row's
    /// time).
    pub fn take(bed: &Bed) -> anyhow::Result<Self> {
        let (node, keys) = std::thread::scope(|s| {
            let keys = s.spawn(|| bed.cluster.etcd.get_prefix("/calico"));
            let node = bed.node().sh(NODE_STATE);
            (node, keys.join())
        });
        Ok(Self {
            node: node?,
            keys: keys.map_err(|_| anyhow::anyhow!("the etcd snapshot panicked"))??,
        })
    }
}

/// Keys that may change as long as they hold no more addresses than before.
fn is_block_or_affinity(key: &str) -> bool {
    key.starts_with("/calico/ipam/v2/assignment/") || key.starts_with("/calico/ipam/v2/host/")
}

/// Whether a block or affinity key that was not there before may stay: an IPv4 block, or the
/// table node's affinity for one, inside [`POOL`].
fn new_key_allowed(key: &str) -> bool {
    let Ok(pool) = POOL.parse::<ipnet::IpNet>() else {
        return false;
    };
    let cidr = key
        .strip_prefix("/calico/ipam/v2/assignment/ipv4/block/")
        .or_else(|| {
            key.strip_prefix("/calico/ipam/v2/host/")?
                .strip_prefix(NODE)?
                .strip_prefix("/ipv4/block/")
        });
    cidr.and_then(|c| c.replacen('-', "/", 1).parse::<ipnet::IpNet>().ok())
        .is_some_and(|block| pool.contains(&block))
}

/// Addresses held in the blocks of a snapshot (a value that does not decode counts as its
/// text, so a changed corrupt block is still seen).
fn held(keys: &[(String, String)]) -> (usize, Vec<String>) {
    let mut count = 0;
    let mut undecodable = Vec::new();
    for (k, v) in keys
        .iter()
        .filter(|(k, _)| k.starts_with("/calico/ipam/v2/assignment/"))
    {
        match serde_json::from_str::<Value>(v)
            .ok()
            .and_then(|b| b["allocations"].as_array().cloned())
        {
            Some(a) => count += a.iter().filter(|x| !x.is_null()).count(),
            None => undecodable.push(format!("{k}={v}")),
        }
    }
    (count, undecodable)
}

/// Everything that differs, as problems.
pub fn compare(before: &Snapshot, after: &Snapshot, allowed: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    if before.node != after.node {
        problems.push(format!(
            "the node changed:\n{}",
            line_diff(&before.node, &after.node)
        ));
    }
    let plain = |s: &Snapshot| -> Vec<(String, String)> {
        s.keys
            .iter()
            .filter(|(k, _)| !is_block_or_affinity(k) && !allowed.iter().any(|p| k.starts_with(p)))
            .cloned()
            .collect()
    };
    let (b, a) = (plain(before), plain(after));
    if b != a {
        let only = |x: &[(String, String)], y: &[(String, String)]| -> Vec<String> {
            x.iter()
                .filter(|kv| !y.contains(kv))
                .map(|(k, v)| format!("{k}={}", &v[..v.len().min(120)]))
                .collect()
        };
        problems.push(format!(
            "etcd changed: gone {:?}, new {:?}",
            only(&b, &a),
            only(&a, &b)
        ));
    }
    let foreign: Vec<&str> = after
        .keys
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| is_block_or_affinity(k) && !allowed.iter().any(|p| k.starts_with(p)))
        .filter(|k| !before.keys.iter().any(|(b, _)| b == k) && !new_key_allowed(k))
        .collect();
    if !foreign.is_empty() {
        problems.push(format!(
            "new blocks or affinities outside {NODE}'s pool {POOL}: {foreign:?}"
        ));
    }
    let (hb, ub) = held(&before.keys);
    let (ha, ua) = held(&after.keys);
    if ha > hb {
        problems.push(format!("{} addresses still allocated", ha - hb));
    }
    if ua.iter().any(|u| !ub.contains(u)) {
        problems.push(format!("undecodable blocks changed: {ua:?}"));
    }
    problems
}

/// Lines only in `a` (`-`) and only in `b` (`+`).
fn line_diff(a: &str, b: &str) -> String {
    let al: Vec<&str> = a.lines().collect();
    let bl: Vec<&str> = b.lines().collect();
    let mut out = String::new();
    for l in &al {
        if !bl.contains(l) {
            out.push_str(&format!("    - {l}\n"));
        }
    }
    for l in &bl {
        if !al.contains(l) {
            out.push_str(&format!("    + {l}\n"));
        }
    }
    if out.is_empty() {
        out.push_str("    (same lines, other order)\n");
    }
    out
}

/// The node's nat tables (iptables-save form), to put back after a failing row.
pub fn save_nat(bed: &Bed) -> anyhow::Result<(String, String)> {
    Ok((
        bed.node().sh("iptables-save -t nat")?,
        bed.node().sh("ip6tables-save -t nat")?,
    ))
}

/// After a failing row: removes the pod links a plugin left on the node, portmap's state and
/// set elements, puts the nat tables back as they were after the warm-up, and turns
/// forwarding back on, so that one failure does not spill into the next rows.
pub fn clean_node(bed: &Bed) -> anyhow::Result<()> {
    bed.node().sh(
        "for l in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^cali'); do \
           ip link del \"$l\"; done; \
         rm -rf /run/calico/portmap/CNI-* /run/calico/portmap/ports/*; \
         nft list table inet calico_portmap 2>/dev/null | awk '$1==\"set\"||$1==\"map\"{print $1, $2}' | \
           while read kind name; do nft flush $kind inet calico_portmap $name; done; \
         echo 1 > /proc/sys/net/ipv4/ip_forward; true",
    )?;
    let (v4, v6) = &bed.nat;
    for (tool, saved) in [("iptables-restore", v4), ("ip6tables-restore", v6)] {
        let mut cmd = bed.node().command(tool)?;
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write as _;
            stdin.write_all(saved.as_bytes())?;
        }
        child.wait()?;
    }
    Ok(())
}
