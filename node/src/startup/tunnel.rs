//! The node's tunnel addresses, as Calico's `allocateip` reconciles them once after start-up:
//! for each of IPIP, VXLAN and IPv6 VXLAN, when an enabled pool with that encapsulation
//! selects the node (and allows `Tunnel` use), the node holds one address from such a pool
//! under the handle `ipip-tunnel-addr-<node>` (`vxlan-tunnel-addr-<node>`,
//! `vxlan-v6-tunnel-addr-<node>`), with the attributes `{node, type}`, recorded on the Node
//! (`spec.bgp.ipv4IPIPTunnelAddr`, `spec.ipv4VXLANTunnelAddr`, `spec.ipv6VXLANTunnelAddr`);
//! when no such pool selects it any more, the address is released and the field cleared.
//!
//! Ours: the allocation (or the release) and the Node's field are one etcd transaction,
//! guarded on the Node as read (Calico writes them one after the other and releases the
//! new address when the Node write fails), and a VXLAN address comes with the VTEP MAC Felix
//! would derive for the node (`vxlanTunnelMACAddr`, `66:` and the first five bytes of the
//! SHA-1 of the node's name), which Calico leaves empty on Linux.

use super::guarded;
use super::node;
use super::{Report, StartupError};
use calico_datastore::model::{
    AllocationBlock, IpPool, Node, NodeBgpSpec, NodeSpec, Resource, keys,
};
use calico_datastore::{Guard, KvStore, Write};
use calico_ipam::allocator::{Extra, SnapshotRequest};
use calico_ipam::pools::{Pool, PoolUse};
use calico_ipam::{AssignRequest, Ipam, IpamError, Snapshot};
use sha1::{Digest, Sha1};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// One kind of tunnel address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKind {
    Ipip,
    Vxlan,
    VxlanV6,
}

impl TunnelKind {
    pub const ALL: [TunnelKind; 3] = [TunnelKind::Ipip, TunnelKind::Vxlan, TunnelKind::VxlanV6];

    pub fn is_v4(self) -> bool {
        self != TunnelKind::VxlanV6
    }

    /// The `type` attribute of the allocation (libcalico-go's `AttributeType*`).
    pub fn attr_type(self) -> &'static str {
        match self {
            TunnelKind::Ipip => "ipipTunnelAddress",
            TunnelKind::Vxlan => "vxlanTunnelAddress",
            TunnelKind::VxlanV6 => "vxlanV6TunnelAddress",
        }
    }

    /// The IPAM handle of the node's address.
    pub fn handle(self, node: &str) -> String {
        match self {
            TunnelKind::Ipip => format!("ipip-tunnel-addr-{node}"),
            TunnelKind::Vxlan => format!("vxlan-tunnel-addr-{node}"),
            TunnelKind::VxlanV6 => format!("vxlan-v6-tunnel-addr-{node}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            TunnelKind::Ipip => "IPIP",
            TunnelKind::Vxlan => "VXLAN",
            TunnelKind::VxlanV6 => "IPv6 VXLAN",
        }
    }

    /// Whether a pool's stored mode asks for this encapsulation (`Always`, `CrossSubnet`).
    fn wanted_by(self, pool: &IpPool) -> bool {
        let on = |m: &str| matches!(m, "Always" | "CrossSubnet");
        match self {
            TunnelKind::Ipip => on(&pool.spec.ipip_mode),
            TunnelKind::Vxlan | TunnelKind::VxlanV6 => on(&pool.spec.vxlan_mode),
        }
    }

    /// The address recorded on the Node ("" if none).
    pub fn recorded(self, spec: &NodeSpec) -> &str {
        match self {
            TunnelKind::Ipip => spec
                .bgp
                .as_ref()
                .map_or("", |b| b.ipv4_ipip_tunnel_addr.as_str()),
            TunnelKind::Vxlan => &spec.ipv4_vxlan_tunnel_addr,
            TunnelKind::VxlanV6 => &spec.ipv6_vxlan_tunnel_addr,
        }
    }

    /// Records `addr` on the Node (`None`: clears it), with the VTEP MAC for VXLAN.
    pub fn record(self, spec: &mut NodeSpec, node: &str, addr: Option<IpAddr>) {
        let value = addr.map(|a| a.to_string()).unwrap_or_default();
        match self {
            TunnelKind::Ipip => {
                let bgp = spec.bgp.get_or_insert_with(NodeBgpSpec::default);
                bgp.ipv4_ipip_tunnel_addr = value;
                if *bgp == NodeBgpSpec::default() {
                    spec.bgp = None;
                }
            }
            TunnelKind::Vxlan => {
                spec.ipv4_vxlan_tunnel_addr = value;
                set_mac(&mut spec.vxlan_tunnel_mac_addr, node, false, addr.is_some());
            }
            TunnelKind::VxlanV6 => {
                spec.ipv6_vxlan_tunnel_addr = value;
                set_mac(
                    &mut spec.vxlan_tunnel_mac_addr_v6,
                    node,
                    true,
                    addr.is_some(),
                );
            }
        }
    }
}

/// A MAC field: our derived MAC when an address is recorded and the field is empty; cleared
/// with the address only if it is ours (a MAC set by someone else stays).
fn set_mac(field: &mut String, node: &str, v6: bool, recorded: bool) {
    let mac = vtep_mac(node, v6);
    if recorded && field.is_empty() {
        *field = mac;
    } else if !recorded && *field == mac {
        field.clear();
    }
}

/// Felix's `vtepMACForHost`: `66` then the first five bytes of SHA-1 of the node's name
/// (`<name>-v6` for IPv6).
pub fn vtep_mac(node: &str, v6: bool) -> String {
    let name = if v6 {
        format!("{node}-v6")
    } else {
        node.to_string()
    };
    let sha = Sha1::digest(name.as_bytes());
    std::iter::once(0x66u8)
        .chain(sha.iter().take(5).copied())
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Who holds an address, per its block.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    /// Allocated to this node's tunnel of this kind (Calico's attribute check).
    Us,
    Unallocated,
    Other,
}

fn holder(
    store: &dyn KvStore,
    ip: IpAddr,
    kind: TunnelKind,
    node: &str,
) -> Result<Holder, StartupError> {
    let block = store
        .list_keys(&keys::blocks_prefix(ip.is_ipv4()))?
        .iter()
        .filter_map(|k| keys::block_cidr_of(k))
        .find(|c| c.contains(&ip));
    let Some(cidr) = block else {
        return Ok(Holder::Unallocated);
    };
    let key = keys::block(&cidr);
    let Some(kv) = store.get(&key)? else {
        return Ok(Holder::Unallocated);
    };
    let block: AllocationBlock =
        serde_json::from_slice(&kv.value).map_err(|e| StartupError::Corrupt {
            key,
            reason: e.to_string(),
        })?;
    Ok(match calico_ipam::block::attribute_of(&block, ip) {
        None => Holder::Unallocated,
        Some(a) if a.owner("type") == Some(kind.attr_type()) && a.owner("node") == Some(node) => {
            Holder::Us
        }
        Some(_) => Holder::Other,
    })
}

/// The Node in a snapshot.
fn node_in(snap: &Snapshot, key: &str) -> Result<Option<(Node, i64)>, IpamError> {
    match snap.extra.get(key).and_then(Option::as_ref) {
        None => Ok(None),
        Some(kv) => Node::from_kv(kv)
            .map(|n| Some((n, kv.mod_revision)))
            .map_err(|e| IpamError::corrupt(key, e)),
    }
}

/// The Node's field change as writes in the IPAM's transaction, guarded on the Node as the
/// snapshot read it.
fn node_change(
    snap: &Snapshot,
    node_key: &str,
    node_name: &str,
    kind: TunnelKind,
    addr: Option<IpAddr>,
) -> Result<Extra, IpamError> {
    let Some((mut node, rev)) = node_in(snap, node_key)? else {
        return Err(IpamError::NodeNotFound {
            node: node_name.to_string(),
        });
    };
    let before = node.clone();
    kind.record(&mut node.spec, node_name, addr);
    if node == before {
        return Ok(Extra::default());
    }
    let bytes = node
        .to_stored()
        .map_err(|e| IpamError::corrupt(node_key, e))?;
    Ok(Extra {
        guards: vec![Guard::Revision(node_key.to_string(), rev)],
        writes: vec![Write::Put(node_key.to_string(), bytes)],
    })
}

/// Records `addr` on the Node alone (no IPAM change), guarded. Whether it wrote.
fn record_only(
    store: &dyn KvStore,
    node_key: &str,
    node_name: &str,
    kind: TunnelKind,
    addr: Option<IpAddr>,
) -> Result<bool, StartupError> {
    let outcome = guarded::converge(store, node_key, |current| {
        let corrupt = |e: serde_json::Error| StartupError::Corrupt {
            key: node_key.to_string(),
            reason: e.to_string(),
        };
        let Some(kv) = current else {
            return Err(StartupError::Node(format!(
                "the Node {node_name} vanished before its tunnel addresses were set"
            )));
        };
        let stored = Node::from_kv(kv).map_err(corrupt)?;
        let mut node = stored.clone();
        kind.record(&mut node.spec, node_name, addr);
        if node == stored {
            return Ok(None);
        }
        node.to_stored().map(Some).map_err(corrupt)
    })?;
    Ok(outcome != guarded::Outcome::Unchanged)
}

/// The pools a tunnel of `kind` may take its address from, for a node with `labels`
/// (`allocateip.go` `getIPPoolsForTunnel` / IPAM's `SelectsNode`).
fn eligible_pools(
    pools: &[IpPool],
    kind: TunnelKind,
    labels: &BTreeMap<String, String>,
) -> Vec<Pool> {
    pools
        .iter()
        .filter(|p| kind.wanted_by(p))
        .filter_map(|p| {
            Pool::from_resource(p)
                .map_err(|u| log::warn!("IP pool {} skipped: it {}", u.name, u.reason))
                .ok()
        })
        .filter(|p| {
            p.is_v4() == kind.is_v4()
                && !p.disabled
                && PoolUse::Tunnel.allowed_by(p)
                && p.node_selector.matches(labels)
        })
        .collect()
}

/// Reconciles every kind of tunnel address of node `name`.
pub fn reconcile(store: &dyn KvStore, name: &str, report: &mut Report) -> Result<(), StartupError> {
    let pools: Vec<IpPool> = store
        .list(&keys::resources_prefix("ippools"))?
        .iter()
        .filter_map(|kv| Resource::from_kv(kv).ok())
        .collect();
    for kind in TunnelKind::ALL {
        reconcile_one(store, name, kind, &pools, report)?;
    }
    Ok(())
}

fn reconcile_one(
    store: &dyn KvStore,
    name: &str,
    kind: TunnelKind,
    pools: &[IpPool],
    report: &mut Report,
) -> Result<(), StartupError> {
    let node_key = node::key(name);
    let handle = kind.handle(name);
    let ipam = Ipam::new(store, name);
    let own_keys = [node_key.clone()];
    let request = SnapshotRequest {
        handles: &[handle.as_str()],
        keys: &own_keys,
        ..SnapshotRequest::default()
    };
    let snap = ipam.read_snapshot(&request)?;
    let Some((node, _)) = node_in(&snap, &node_key)? else {
        return Err(StartupError::Node(format!(
            "the Node {name} vanished before its tunnel addresses were set"
        )));
    };
    let eligible = eligible_pools(pools, kind, &node.metadata.labels);
    let recorded = kind.recorded(&node.spec).to_string();
    let handle_exists = snap.handles.get(&handle).is_some_and(Option::is_some);
    let what = kind.name();

    if eligible.is_empty() {
        if recorded.is_empty() && !handle_exists {
            return Ok(());
        }
        if handle_exists {
            let freed = ipam.release_handles_with(&snap, None, &mut |_, snap| {
                node_change(snap, &node_key, name, kind, None)
            })?;
            report.changed(format!(
                "released the {what} tunnel address {} (no {what} pool selects this node)",
                freed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        } else {
            // Recorded but not held under our handle: only the record goes.
            record_only(store, &node_key, name, kind, None)?;
            report.changed(format!(
                "cleared the {what} tunnel address {recorded} (not held under {handle})"
            ));
        }
        return Ok(());
    }

    if !recorded.is_empty() {
        match recorded.parse::<IpAddr>() {
            Ok(ip) => {
                let held = holder(store, ip, kind, name)?;
                let in_pool = eligible.iter().any(|p| p.cidr.contains(&ip));
                if held == Holder::Us && in_pool {
                    // Still valid; only a missing VTEP MAC may need recording.
                    if record_only(store, &node_key, name, kind, Some(ip))? {
                        report.changed(format!("recorded the VTEP MAC of {what} on the Node"));
                    }
                    return Ok(());
                }
                log::info!(
                    "the {what} tunnel address {ip} is {}; assigning a new one",
                    match held {
                        Holder::Us => "not in a pool that selects this node any more",
                        Holder::Unallocated => "not allocated",
                        Holder::Other => "held by something else",
                    }
                );
            }
            Err(_) => report.warn(format!(
                "the Node's {what} tunnel address {recorded:?} is not an address; assigning a new \
                 one"
            )),
        }
    }
    // Whatever the handle holds is stale (a crash between allocation and record, or an
    // address no longer valid): released first, as Calico does.
    if handle_exists {
        ipam.release_by_handle(&handle)?;
    }
    let snap = ipam.read_snapshot(&request)?;
    let attrs: BTreeMap<String, String> = [
        ("node".to_string(), name.to_string()),
        ("type".to_string(), kind.attr_type().to_string()),
    ]
    .into();
    let names: Vec<String> = eligible.iter().map(|p| p.name.clone()).collect();
    let req = AssignRequest {
        handle: handle.clone(),
        attrs,
        num_v4: usize::from(kind.is_v4()),
        num_v6: usize::from(!kind.is_v4()),
        v4_pools: if kind.is_v4() {
            names.clone()
        } else {
            Vec::new()
        },
        v6_pools: if kind.is_v4() { Vec::new() } else { names },
        intended_use: PoolUse::Tunnel,
        ..AssignRequest::default()
    };
    let got = ipam.auto_assign_with(&snap, &req, &mut |assigned, snap| {
        let ip = assigned.all().first().map(|n| n.addr());
        node_change(snap, &node_key, name, kind, ip)
    })?;
    let ip = got
        .all()
        .first()
        .map(|n| n.addr().to_string())
        .unwrap_or_default();
    report.changed(format!(
        "assigned the {what} tunnel address {ip} ({handle})"
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use calico_datastore::MemKv;
    use serde_json::{Value, json};

    fn put_pool(m: &MemKv, name: &str, spec: Value) {
        m.put(
            &keys::resource("ippools", name),
            json!({"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":name},"spec":spec})
                .to_string()
                .as_bytes(),
        );
    }

    fn put_node(m: &MemKv, labels: Value) {
        m.put(
            &node::key("node-1"),
            json!({"kind":"Node","apiVersion":"projectcalico.org/v3",
                   "metadata":{"name":"node-1","labels":labels},
                   "spec":{"bgp":{"ipv4Address":"10.0.0.5/24"}}})
            .to_string()
            .as_bytes(),
        );
    }

    fn spec(m: &MemKv) -> Value {
        let v: Value =
            serde_json::from_slice(&m.get(&node::key("node-1")).unwrap().unwrap().value).unwrap();
        v["spec"].clone()
    }

    fn run(m: &MemKv) -> Report {
        let mut r = Report::default();
        reconcile(m, "node-1", &mut r).unwrap();
        r
    }

    fn handle_exists(m: &MemKv, h: &str) -> bool {
        m.get(&keys::handle(h)).unwrap().is_some()
    }

    /// Mirrors allocateip.go `reconcileTunnelAddrs`: an IPIP pool selecting the node gives
    /// it an address under `ipip-tunnel-addr-<node>`; a rerun keeps it; when the pool stops
    /// selecting the node, the address is released and the field cleared.
    #[test]
    fn ipip_address_assigned_kept_and_released() {
        let m = MemKv::new();
        put_node(&m, json!({"zone": "a"}));
        put_pool(
            &m,
            "p",
            json!({"cidr":"10.244.0.0/16","ipipMode":"Always","nodeSelector":"zone == 'a'"}),
        );
        let r = run(&m);
        assert_eq!(r.changes.len(), 1, "{:?}", r.changes);
        let ip = spec(&m)["bgp"]["ipv4IPIPTunnelAddr"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(ip.starts_with("10.244."), "{ip}");
        assert_eq!(spec(&m)["bgp"]["ipv4Address"], "10.0.0.5/24");
        let block = m
            .list("/calico/ipam/v2/assignment/ipv4/block/")
            .unwrap()
            .pop()
            .unwrap();
        let block: Value = serde_json::from_slice(&block.value).unwrap();
        assert_eq!(
            block["attributes"][0],
            json!({"handle_id":"ipip-tunnel-addr-node-1",
                   "secondary":{"node":"node-1","type":"ipipTunnelAddress"}})
        );
        let before = m.dump();
        assert!(run(&m).changes.is_empty());
        assert_eq!(m.dump(), before, "a rerun writes nothing");
        // The node leaves zone a: no pool selects it.
        let mut n: Value =
            serde_json::from_slice(&m.get(&node::key("node-1")).unwrap().unwrap().value).unwrap();
        n["metadata"]["labels"] = json!({"zone": "b"});
        m.put(&node::key("node-1"), n.to_string().as_bytes());
        let r = run(&m);
        assert!(r.changes[0].contains("released"), "{:?}", r.changes);
        assert_eq!(spec(&m), json!({"bgp":{"ipv4Address":"10.0.0.5/24"}}));
        assert!(!handle_exists(&m, "ipip-tunnel-addr-node-1"));
    }

    #[test]
    fn vxlan_records_the_vtep_mac_and_clears_it_with_the_address() {
        let m = MemKv::new();
        put_node(&m, json!({}));
        put_pool(
            &m,
            "v4",
            json!({"cidr":"10.244.0.0/16","vxlanMode":"CrossSubnet"}),
        );
        put_pool(
            &m,
            "v6",
            json!({"cidr":"fd00:10:244::/48","vxlanMode":"Always"}),
        );
        put_pool(&m, "plain", json!({"cidr":"10.9.0.0/16"}));
        run(&m);
        let s = spec(&m);
        assert!(
            s["ipv4VXLANTunnelAddr"]
                .as_str()
                .unwrap()
                .starts_with("10.244.")
        );
        assert!(
            s["ipv6VXLANTunnelAddr"]
                .as_str()
                .unwrap()
                .starts_with("fd00:10:244:")
        );
        assert_eq!(s["vxlanTunnelMACAddr"], vtep_mac("node-1", false));
        assert_eq!(s["vxlanTunnelMACAddrV6"], vtep_mac("node-1", true));
        assert!(s["bgp"].get("ipv4IPIPTunnelAddr").is_none());
        // VXLAN switched off on the IPv4 pool.
        put_pool(
            &m,
            "v4",
            json!({"cidr":"10.244.0.0/16","vxlanMode":"Never"}),
        );
        run(&m);
        let s = spec(&m);
        assert!(s.get("ipv4VXLANTunnelAddr").is_none());
        assert!(s.get("vxlanTunnelMACAddr").is_none());
        assert!(s["ipv6VXLANTunnelAddr"].is_string());
        assert!(!handle_exists(&m, "vxlan-tunnel-addr-node-1"));
        assert!(handle_exists(&m, "vxlan-v6-tunnel-addr-node-1"));
    }

    /// Felix's `vtepMACForHost`: 0x66, then SHA-1("node-1")[0..5].
    #[test]
    fn the_vtep_mac_is_felixs() {
        // SHA-1("node-1") = 4f54b1b4...
        let sha = Sha1::digest(b"node-1");
        let want = format!(
            "66:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            sha[0], sha[1], sha[2], sha[3], sha[4]
        );
        assert_eq!(vtep_mac("node-1", false), want);
        assert_ne!(vtep_mac("node-1", true), want);
    }

    /// Pools that do not allow `Tunnel` use, disabled pools and pools without the
    /// encapsulation give no tunnel address.
    #[test]
    fn ineligible_pools_give_nothing() {
        let m = MemKv::new();
        put_node(&m, json!({}));
        put_pool(
            &m,
            "pods",
            json!({"cidr":"10.1.0.0/16","ipipMode":"Always","allowedUses":["Workload"]}),
        );
        put_pool(
            &m,
            "off",
            json!({"cidr":"10.2.0.0/16","ipipMode":"Always","disabled":true}),
        );
        put_pool(
            &m,
            "never",
            json!({"cidr":"10.3.0.0/16","ipipMode":"Never"}),
        );
        let before = m.dump();
        assert!(run(&m).changes.is_empty());
        assert_eq!(m.dump(), before);
    }

    /// An address recorded but no longer allocated (or allocated to something else) is
    /// replaced; a handle left without a record (a crash) is cleaned up first.
    #[test]
    fn stale_records_and_handles_are_replaced() {
        let m = MemKv::new();
        put_pool(&m, "p", json!({"cidr":"10.244.0.0/16","ipipMode":"Always"}));
        put_node(&m, json!({}));
        let mut n: Value =
            serde_json::from_slice(&m.get(&node::key("node-1")).unwrap().unwrap().value).unwrap();
        n["spec"]["bgp"]["ipv4IPIPTunnelAddr"] = json!("10.244.9.9");
        m.put(&node::key("node-1"), n.to_string().as_bytes());
        // A leftover allocation under our handle, with no record of it.
        let ipam = Ipam::new(&m, "node-1");
        ipam.auto_assign(&AssignRequest {
            handle: "ipip-tunnel-addr-node-1".into(),
            num_v4: 1,
            ..AssignRequest::default()
        })
        .unwrap();
        run(&m);
        let ip = spec(&m)["bgp"]["ipv4IPIPTunnelAddr"]
            .as_str()
            .unwrap()
            .to_string();
        assert_ne!(ip, "10.244.9.9");
        let held = ipam.addresses_of_handle("ipip-tunnel-addr-node-1").unwrap();
        assert_eq!(held.len(), 1, "the leftover went: {held:?}");
        assert_eq!(held[0].to_string(), ip);
    }
}
