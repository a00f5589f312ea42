//! Analysing: the check's findings from the gathered data, as plain values in the order they
//! are printed. No I/O and no formatting of the report: [`super::render`] does both.

use super::CheckData;
use crate::resources::validate::{parse_cidr, parse_cidr_or_ip};
use calico_datastore::model::AllocationAttribute;
use calico_ipam::block;
use calico_ipam::host::WINDOWS_RESERVED_HANDLE;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Who uses the Windows-reserved addresses, as Calico names it.
const WINDOWS_OWNER: &str = "Reserved for Windows";

/// One allocation (`check.go: Allocation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub block: IpNet,
    pub handle: String,
    pub sequence_number: u64,
    pub pod: String,
    pub namespace: String,
    pub node: String,
    pub kind: String,
    pub creation_timestamp: String,
    pub in_use: bool,
    pub borrowed: bool,
    pub owners: Vec<String>,
    /// `formatAttrs` of its attribute entry.
    pub attrs: String,
    pub has_handle: bool,
}

/// One block as scanned: its allocations in ordinal order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedBlock {
    pub cidr: IpNet,
    pub affinity: Option<String>,
    /// Each allocation: its address, whether it is Windows-reserved, its attributes.
    pub allocations: Vec<(IpAddr, bool, String)>,
}

/// An address a node or a workload uses, and who (`Node(n1)`, `Workload(ns/name)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    pub ip: IpAddr,
    pub owner: String,
}

/// An address in use, with what IPAM knows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    pub ip: IpAddr,
    pub owners: Vec<String>,
    pub allocated: bool,
    pub in_active_pool: bool,
}

/// A handle whose per-block count disagrees with the blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountMismatch {
    pub handle: String,
    pub block: IpNet,
    pub handle_count: i64,
    pub block_count: i64,
}

/// An affinity without its block, or a block without its affinity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityProblem {
    pub host: String,
    pub block: IpNet,
    /// A confirmed affinity whose block does not exist (else: a block affine to a host that
    /// has no affinity for it).
    pub block_missing: bool,
}

/// Everything the check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub blocks: Vec<ScannedBlock>,
    /// Every allocation by address (several when blocks overlap).
    pub allocations: BTreeMap<IpAddr, Vec<Allocation>>,
    /// The enabled pools' CIDRs as written, and those that parse.
    pub enabled_pools: Vec<String>,
    pub active_pools: Vec<IpNet>,
    pub node_uses: Vec<Use>,
    pub workload_uses: Vec<Use>,
    /// Every address in use, in address order.
    pub in_use: Vec<InUse>,
    /// Nodes by allocations, most first (then by name).
    pub nodes_by_allocations: Vec<(String, usize)>,
    /// Allocated addresses nobody uses, with each allocation's attributes; `None` when
    /// there are no WorkloadEndpoints to check against.
    pub leaked: Option<Vec<(IpAddr, Vec<String>)>>,
    /// Handles no block names, with their revision.
    pub leaked_handles: Vec<(String, i64)>,
    pub good_handles: usize,
    /// Handles blocks name but that do not exist, with their addresses.
    pub missing_handles: Vec<(String, Vec<IpAddr>)>,
    pub count_mismatches: Vec<CountMismatch>,
    /// Addresses allocated in more than one block.
    pub overlapping: Vec<(IpAddr, Vec<IpNet>)>,
    /// Allocations without a handle: address, block, attributes.
    pub without_handle: Vec<(IpAddr, IpNet, String)>,
    pub affinity_problems: Vec<AffinityProblem>,
}

impl Findings {
    pub fn workload_check_skipped(&self) -> bool {
        self.leaked.is_none()
    }

    pub fn num_allocations(&self) -> usize {
        self.blocks.iter().map(|b| b.allocations.len()).sum()
    }

    /// In-use addresses outside every active pool, and inside one but not allocated.
    pub fn unallocated(&self) -> (usize, usize) {
        let missing = self.in_use.iter().filter(|u| !u.allocated);
        let in_pool = missing.clone().filter(|u| u.in_active_pool).count();
        (missing.count() - in_pool, in_pool)
    }

    /// Every problem counted (Calico counts leaks, unallocated uses and leaked handles; we
    /// count the other kinds too).
    pub fn problems(&self) -> usize {
        let (not_in_pool, in_pool) = self.unallocated();
        self.leaked.as_ref().map_or(0, Vec::len)
            + not_in_pool
            + in_pool
            + self.leaked_handles.len()
            + self.missing_handles.len()
            + self.count_mismatches.len()
            + self.overlapping.len()
            + self.without_handle.len()
            + self.affinity_problems.len()
    }
}

/// `formatAttrs`: `Main:<handle> Extra:k=v,k=v[ Alternate:k=v]`.
fn attr_string(a: Option<&AllocationAttribute>) -> String {
    let Some(a) = a else {
        return "<missing>".into();
    };
    let kvs = |m: Option<&BTreeMap<String, String>>| {
        m.map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
    };
    let mut s = format!(
        "Main:{} Extra:{}",
        a.handle_id.as_deref().unwrap_or("<none>"),
        kvs(a.secondary.as_ref())
    );
    if a.alternate_owner_attrs
        .as_ref()
        .is_some_and(|m| !m.is_empty())
    {
        s.push_str(&format!(
            " Alternate:{}",
            kvs(a.alternate_owner_attrs.as_ref())
        ));
    }
    s
}

fn normalise_ip(addr: &str) -> Option<IpAddr> {
    parse_cidr_or_ip(addr).map(|(ip, _)| ip)
}

/// What the scan of the blocks, nodes and workloads collects as it goes.
#[derive(Default)]
struct Scan {
    allocations: BTreeMap<IpAddr, Vec<Allocation>>,
    in_use: BTreeMap<IpAddr, Vec<String>>,
    handles_in_use: BTreeSet<String>,
    /// Per handle and block: how many allocations the block holds for it.
    block_counts: BTreeMap<(String, IpNet), i64>,
}

impl Scan {
    /// `ip` is used by `owner`: every allocation of it seen so far is in use.
    fn record_use(&mut self, ip: IpAddr, owner: &str) {
        for a in self.allocations.get_mut(&ip).into_iter().flatten() {
            a.in_use = true;
            a.owners.push(owner.to_string());
        }
        self.in_use.entry(ip).or_default().push(owner.to_string());
    }

    fn blocks(&mut self, data: &CheckData) -> Vec<ScannedBlock> {
        let mut scanned = Vec::new();
        for b in &data.blocks {
            let affinity_host = b
                .affinity
                .as_deref()
                .and_then(|a| a.strip_prefix("host:"))
                .unwrap_or_default()
                .to_string();
            let mut entries = Vec::new();
            for (ord, idx) in b.allocations.iter().enumerate() {
                let Some(idx) = idx else { continue };
                let ip = block::address(&b.cidr, ord);
                let attr = b.attributes.as_ref().and_then(|a| a.get(*idx));
                let mut alloc = Allocation {
                    ip,
                    block: b.cidr,
                    handle: String::new(),
                    sequence_number: b
                        .sequence_number_for_allocation
                        .get(&ord.to_string())
                        .copied()
                        .unwrap_or(0),
                    pod: String::new(),
                    namespace: String::new(),
                    node: affinity_host.clone(),
                    kind: String::new(),
                    creation_timestamp: String::new(),
                    in_use: false,
                    borrowed: false,
                    owners: Vec::new(),
                    attrs: attr_string(attr),
                    has_handle: false,
                };
                let mut windows = false;
                if let Some(a) = attr {
                    match a.handle_id.as_deref() {
                        Some(WINDOWS_RESERVED_HANDLE) => {
                            windows = true;
                            self.record_use(ip, WINDOWS_OWNER);
                            alloc.has_handle = true;
                        }
                        Some(h) => {
                            alloc.handle = h.to_string();
                            alloc.has_handle = true;
                            self.handles_in_use.insert(h.to_string());
                            *self
                                .block_counts
                                .entry((h.to_string(), b.cidr))
                                .or_default() += 1;
                        }
                        None => {}
                    }
                    let owner = |k: &str| a.owner(k).unwrap_or_default().to_string();
                    if !owner("node").is_empty() {
                        alloc.node = owner("node");
                    }
                    alloc.pod = owner("pod");
                    alloc.namespace = owner("namespace");
                    alloc.kind = owner("type");
                    alloc.creation_timestamp = owner("timestamp");
                }
                alloc.borrowed = alloc.node != affinity_host;
                entries.push((ip, windows, alloc.attrs.clone()));
                self.allocations.entry(ip).or_default().push(alloc);
            }
            scanned.push(ScannedBlock {
                cidr: b.cidr,
                affinity: b.affinity.clone(),
                allocations: entries,
            });
        }
        scanned
    }

    /// The nodes' tunnel addresses (IPIP, VXLAN, WireGuard), as uses.
    fn nodes(&mut self, data: &CheckData) -> Result<Vec<Use>, String> {
        let mut uses = Vec::new();
        for (name, spec) in &data.nodes {
            let mut addrs = Vec::new();
            if !spec.ipv4_vxlan_tunnel_addr.is_empty() {
                addrs.push(("IPv4VXLANTunnelAddr", &spec.ipv4_vxlan_tunnel_addr));
            }
            if let Some(wg) = &spec.wireguard
                && !wg.interface_ipv4_address.is_empty()
            {
                addrs.push(("Wireguard.InterfaceIPv4Address", &wg.interface_ipv4_address));
            }
            if let Some(bgp) = &spec.bgp
                && !bgp.ipv4_ipip_tunnel_addr.is_empty()
            {
                addrs.push(("IPv4IPIPTunnelAddr", &bgp.ipv4_ipip_tunnel_addr));
            }
            for (field, a) in addrs {
                let ip = normalise_ip(a).ok_or_else(|| {
                    format!("failed to parse {field} ({a}) of node {name}: invalid CIDR or IP")
                })?;
                let owner = format!("Node({name})");
                self.record_use(ip, &owner);
                uses.push(Use { ip, owner });
            }
        }
        Ok(uses)
    }

    /// The WorkloadEndpoints' addresses, as uses.
    fn workloads(&mut self, data: &CheckData) -> Result<Vec<Use>, String> {
        let mut uses = Vec::new();
        for w in &data.weps {
            for a in &w.ip_networks {
                let ip = normalise_ip(a).ok_or_else(|| {
                    format!(
                        "failed to parse IP ({a}) of workload {}/{}: invalid CIDR or IP",
                        w.namespace, w.name
                    )
                })?;
                let owner = format!("Workload({}/{})", w.namespace, w.name);
                self.record_use(ip, &owner);
                uses.push(Use { ip, owner });
            }
        }
        Ok(uses)
    }
}

/// Cross-checks the blocks, pools, nodes, workloads, handles and affinities (Calico's
/// `check.go` and our extra problem kinds). Fails only on an address that does not parse.
pub fn analyse(data: &CheckData) -> Result<Findings, String> {
    let mut scan = Scan::default();
    let blocks = scan.blocks(data);
    let enabled: Vec<&str> = data
        .pools
        .iter()
        .filter(|p| !p.spec.disabled)
        .map(|p| p.spec.cidr.as_str())
        .collect();
    let active_pools: Vec<IpNet> = enabled
        .iter()
        .filter_map(|c| parse_cidr(c).map(|(_, n)| n))
        .collect();
    let node_uses = scan.nodes(data)?;
    let workload_uses = scan.workloads(data)?;
    let Scan {
        allocations,
        in_use,
        handles_in_use,
        block_counts,
    } = scan;

    let mut by_node: BTreeMap<&str, usize> = BTreeMap::new();
    for a in allocations.values().flatten() {
        *by_node.entry(a.node.as_str()).or_default() += 1;
    }
    let mut nodes_by_allocations: Vec<(String, usize)> = by_node
        .into_iter()
        .map(|(n, c)| (n.to_string(), c))
        .collect();
    nodes_by_allocations.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));

    let leaked = (!data.weps.is_empty()).then(|| {
        allocations
            .iter()
            .filter(|(ip, _)| !in_use.contains_key(ip))
            .map(|(ip, allocs)| (*ip, allocs.iter().map(|a| a.attrs.clone()).collect()))
            .collect()
    });
    let in_use: Vec<InUse> = in_use
        .into_iter()
        .map(|(ip, owners)| InUse {
            ip,
            owners,
            allocated: allocations.contains_key(&ip),
            in_active_pool: active_pools.iter().any(|p| p.contains(&ip)),
        })
        .collect();

    let mut leaked_handles = Vec::new();
    let mut good_handles = 0;
    for (id, (_, rev)) in &data.handles {
        if handles_in_use.contains(id) {
            good_handles += 1;
        } else {
            leaked_handles.push((id.clone(), *rev));
        }
    }
    let missing_handles = handles_in_use
        .iter()
        .filter(|h| !data.handles.contains_key(*h))
        .map(|h| {
            let ips = allocations
                .values()
                .flatten()
                .filter(|a| &a.handle == h)
                .map(|a| a.ip)
                .collect();
            (h.clone(), ips)
        })
        .collect();
    let count_mismatches = count_mismatches(data, &handles_in_use, &block_counts);
    let overlapping = allocations
        .iter()
        .filter(|(_, allocs)| allocs.len() >= 2)
        .map(|(ip, allocs)| (*ip, allocs.iter().map(|a| a.block).collect()))
        .collect();
    let without_handle = allocations
        .values()
        .flatten()
        .filter(|a| !a.has_handle)
        .map(|a| (a.ip, a.block, a.attrs.clone()))
        .collect();
    Ok(Findings {
        blocks,
        enabled_pools: enabled.into_iter().map(str::to_string).collect(),
        active_pools,
        node_uses,
        workload_uses,
        in_use,
        nodes_by_allocations,
        leaked,
        leaked_handles,
        good_handles,
        missing_handles,
        count_mismatches,
        overlapping,
        without_handle,
        affinity_problems: affinity_problems(data),
        allocations,
    })
}

/// Handles in use whose per-block counts disagree with what the blocks hold for them.
fn count_mismatches(
    data: &CheckData,
    handles_in_use: &BTreeSet<String>,
    block_counts: &BTreeMap<(String, IpNet), i64>,
) -> Vec<CountMismatch> {
    let mut mismatches = Vec::new();
    for (id, (h, _)) in &data.handles {
        if !handles_in_use.contains(id) {
            continue; // a leaked handle, counted as such
        }
        let mut pairs: BTreeMap<IpNet, (i64, i64)> = BTreeMap::new();
        for (cidr, n) in &h.block {
            let Ok(c) = cidr.parse::<IpNet>() else {
                continue;
            };
            pairs.entry(c.trunc()).or_default().0 += n;
        }
        for ((hid, c), n) in block_counts {
            if hid == id {
                pairs.entry(*c).or_default().1 += n;
            }
        }
        mismatches.extend(
            pairs
                .into_iter()
                .filter(|(_, (handle_count, block_count))| handle_count != block_count)
                .map(|(block, (handle_count, block_count))| CountMismatch {
                    handle: id.clone(),
                    block,
                    handle_count,
                    block_count,
                }),
        );
    }
    mismatches
}

/// Confirmed affinities whose block is missing, then blocks affine to a host without the
/// affinity.
fn affinity_problems(data: &CheckData) -> Vec<AffinityProblem> {
    let block_cidrs: BTreeSet<IpNet> = data.blocks.iter().map(|b| b.cidr).collect();
    let affinity_keys: BTreeSet<(&str, IpNet)> = data
        .affinities
        .iter()
        .map(|(h, c, _)| (h.as_str(), *c))
        .collect();
    let missing_blocks = data
        .affinities
        .iter()
        .filter(|(_, cidr, aff)| aff.is_confirmed() && !aff.deleted && !block_cidrs.contains(cidr))
        .map(|(host, cidr, _)| AffinityProblem {
            host: host.clone(),
            block: *cidr,
            block_missing: true,
        });
    let missing_affinities = data.blocks.iter().filter_map(|b| {
        let host = block::affine_node(b)?;
        (!affinity_keys.contains(&(host, b.cidr))).then(|| AffinityProblem {
            host: host.to_string(),
            block: b.cidr,
            block_missing: false,
        })
    });
    missing_blocks.chain(missing_affinities).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::check::Wep;
    use calico_datastore::model::{AllocationBlock, BlockAffinity, IpamHandle, NodeSpec};

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// A block of `cidr` affine to `node` with its first `n` addresses allocated to `handle`.
    fn block_with(cidr: &str, node: &str, handle: &str, n: usize) -> AllocationBlock {
        let mut b = calico_ipam::block::new_block(net(cidr), node, std::time::UNIX_EPOCH);
        for o in 0..n {
            b.allocations[o] = Some(0);
        }
        b.unallocated.drain(..n);
        b.attributes = Some(vec![AllocationAttribute::new(handle, BTreeMap::new())]);
        b
    }

    fn handle(block: &str, n: i64) -> (IpamHandle, i64) {
        let mut h = IpamHandle::default();
        h.block.insert(block.to_string(), n);
        (h, 7)
    }

    fn wep(name: &str, addr: &str) -> Wep {
        Wep {
            namespace: "default".into(),
            name: name.into(),
            ip_networks: vec![addr.into()],
        }
    }

    #[test]
    fn a_consistent_datastore_has_no_findings() {
        let data = CheckData {
            blocks: vec![block_with("10.0.0.0/30", "n1", "h1", 1)],
            weps: vec![wep("w", "10.0.0.0/32")],
            handles: BTreeMap::from([("h1".to_string(), handle("10.0.0.0/30", 1))]),
            affinities: vec![("n1".into(), net("10.0.0.0/30"), BlockAffinity::confirmed())],
            ..CheckData::default()
        };
        let f = analyse(&data).expect("analyses");
        assert_eq!(f.problems(), 0, "{f:?}");
        assert_eq!(f.leaked, Some(Vec::new()));
        assert_eq!(f.good_handles, 1);
        assert_eq!(f.nodes_by_allocations, [("n1".to_string(), 1)]);
        let a = &f.allocations[&ip("10.0.0.0")][0];
        assert!(a.in_use && !a.borrowed);
        assert_eq!(a.owners, ["Workload(default/w)"]);
    }

    #[test]
    fn leaks_count_mismatches_and_affinity_problems_are_found() {
        let data = CheckData {
            // Two addresses allocated to h1, one of them used; h1 records 3.
            blocks: vec![block_with("10.0.0.0/30", "n1", "h1", 2)],
            weps: vec![wep("w", "10.0.0.0"), wep("stray", "10.9.9.9/32")],
            handles: BTreeMap::from([
                ("h1".to_string(), handle("10.0.0.0/30", 3)),
                ("orphan".to_string(), handle("10.0.0.4/30", 1)),
            ]),
            // n1 lacks the affinity for its block; n2 has one for a block that is gone.
            affinities: vec![("n2".into(), net("10.0.0.8/30"), BlockAffinity::confirmed())],
            ..CheckData::default()
        };
        let f = analyse(&data).expect("analyses");
        assert_eq!(
            f.leaked,
            Some(vec![(ip("10.0.0.1"), vec!["Main:h1 Extra:".to_string()])])
        );
        assert_eq!(f.unallocated(), (1, 0), "10.9.9.9 is in no active pool");
        assert_eq!(f.leaked_handles, [("orphan".to_string(), 7)]);
        assert_eq!(
            f.count_mismatches,
            [CountMismatch {
                handle: "h1".into(),
                block: net("10.0.0.0/30"),
                handle_count: 3,
                block_count: 2,
            }]
        );
        assert_eq!(
            f.affinity_problems,
            [
                AffinityProblem {
                    host: "n2".into(),
                    block: net("10.0.0.8/30"),
                    block_missing: true,
                },
                AffinityProblem {
                    host: "n1".into(),
                    block: net("10.0.0.0/30"),
                    block_missing: false,
                },
            ]
        );
        assert_eq!(f.problems(), 6);
    }

    #[test]
    fn overlaps_missing_handles_and_node_addresses() {
        let mut no_handle = block_with("10.0.1.0/30", "n1", "x", 1);
        no_handle.attributes = Some(vec![AllocationAttribute {
            handle_id: None,
            secondary: None,
            alternate_owner_attrs: None,
            extra: Default::default(),
        }]);
        let spec = NodeSpec {
            ipv4_vxlan_tunnel_addr: "10.0.1.0".into(),
            ..NodeSpec::default()
        };
        let data = CheckData {
            blocks: vec![
                block_with("10.0.0.0/30", "n1", "gone", 1),
                block_with("10.0.0.0/31", "n2", "gone", 1),
                no_handle,
            ],
            nodes: vec![("n1".into(), spec)],
            ..CheckData::default()
        };
        let f = analyse(&data).expect("analyses");
        assert!(f.workload_check_skipped());
        assert_eq!(
            f.overlapping,
            [(ip("10.0.0.0"), vec![net("10.0.0.0/30"), net("10.0.0.0/31")])]
        );
        assert_eq!(
            f.missing_handles,
            [("gone".to_string(), vec![ip("10.0.0.0"), ip("10.0.0.0")])]
        );
        assert_eq!(
            f.without_handle,
            [(
                ip("10.0.1.0"),
                net("10.0.1.0/30"),
                "Main:<none> Extra:".to_string()
            )]
        );
        assert_eq!(
            f.node_uses,
            [Use {
                ip: ip("10.0.1.0"),
                owner: "Node(n1)".into()
            }]
        );
        assert!(f.allocations[&ip("10.0.1.0")][0].in_use);
        let bad = CheckData {
            weps: vec![wep("w", "not-an-ip")],
            ..CheckData::default()
        };
        assert_eq!(
            analyse(&bad).expect_err("bad address"),
            "failed to parse IP (not-an-ip) of workload default/w: invalid CIDR or IP"
        );
    }
}
