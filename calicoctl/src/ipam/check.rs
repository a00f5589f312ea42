//! `calicoctl ipam check`: cross-checks the IPAM data in etcd (no Kubernetes needed).
//!
//! Output follows calicoctl 3.32's `commands/ipam/check.go` line for line where it applies.
//! Differences:
//! - no Kubernetes: the service load-balancer section says it is skipped;
//! - "allocated but not in use" (leaked IPs) is only checked when the datastore holds at least
//!   one WorkloadEndpoint; without any (the IPAM used on its own, no calico plugin recording
//!   endpoints) that check is skipped and says so;
//! - more problems are found and counted: allocations whose handle is missing (Calico prints
//!   but does not count them), handle counts that disagree with the blocks, the same IP
//!   allocated in two blocks, allocations without a handle, and block affinities that
//!   disagree with the blocks;
//! - everything Calico prints in map order is printed sorted (IPs numerically).
//!
//! The `-o` report has Calico's shape (`version`, `clusterGUID`, `datastoreLocked`,
//! `clusterInformationRevision`, `clusterType`, `allocations`, `leakedHandles`) plus, as ours:
//! - `workloadCheckSkipped`: true when there were no WorkloadEndpoints (see above);
//! - `missingHandles`: `[{handle, ips}]`, handles named by allocations but not stored;
//! - `handleCountMismatches`: `[{handle, block, handleCount, blockCount}]`;
//! - `overlappingIPs`: `[{ip, blocks}]`, IPs allocated in more than one block;
//! - `allocationsWithoutHandle`: `[{ip, block}]`;
//! - `inUseNotAllocated`: `[{ip, owners, inActivePool}]`, IPs a workload or node uses that
//!   IPAM has not allocated;
//! - `affinityProblems`: `[{host, block, problem}]`, problem `blockMissing` (a confirmed
//!   affinity whose block does not exist) or `affinityMissing` (a block affine to a host
//!   that has no affinity for it).

use crate::error::{CmdError, CmdResult};
use crate::gofmt;
use crate::resources::validate::parse_cidr;
use crate::resources::validate::parse_cidr_or_ip;
use calico_datastore::model::NodeSpec;
use calico_datastore::model::{
    AllocationAttribute, AllocationBlock, BlockAffinity, ClusterInformation, IpPool, IpamHandle,
    Resource, keys,
};
use calico_datastore::{KvStore, Read};
use calico_ipam::block;
use calico_ipam::host::WINDOWS_RESERVED_HANDLE;
use ipnet::IpNet;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

/// The version written into reports.
pub const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));

/// A workload endpoint as the check uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wep {
    pub namespace: String,
    pub name: String,
    pub ip_networks: Vec<String>,
}

/// Everything the check reads, in one consistent snapshot.
#[derive(Debug, Clone, Default)]
pub struct CheckData {
    /// ClusterInformation `default` and its revision.
    pub cluster: Option<(ClusterInformation, i64)>,
    /// Blocks in key order.
    pub blocks: Vec<AllocationBlock>,
    /// Pools in name order.
    pub pools: Vec<IpPool>,
    /// Node names and specs, in name order.
    pub nodes: Vec<(String, NodeSpec)>,
    pub weps: Vec<Wep>,
    /// Handle ID -> (value, revision).
    pub handles: BTreeMap<String, (IpamHandle, i64)>,
    /// (host, block CIDR, affinity).
    pub affinities: Vec<(String, IpNet, BlockAffinity)>,
}

/// Reads the snapshot. Values that do not decode are skipped, as Calico's lists skip them.
pub fn load(store: &dyn KvStore) -> CmdResult<CheckData> {
    let reads = [
        Read::Key(keys::resource("clusterinformations", "default")),
        Read::Prefix("/calico/ipam/v2/assignment/".into()),
        Read::Prefix(keys::resources_prefix("ippools")),
        Read::Prefix(keys::resources_prefix("nodes")),
        Read::Prefix(keys::resources_prefix("workloadendpoints")),
        Read::Prefix(keys::HANDLES.into()),
        Read::Prefix("/calico/ipam/v2/host/".into()),
    ];
    let mut got = store.read(&reads)?.into_iter();
    let mut next = || got.next().unwrap_or_default();
    let cluster = next().pop().and_then(|kv| {
        ClusterInformation::from_kv(&kv)
            .ok()
            .map(|c| (c, kv.mod_revision))
    });
    let blocks = next()
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    let pools = next()
        .iter()
        .filter_map(|kv| IpPool::from_kv(kv).ok())
        .collect();
    let nodes = next()
        .iter()
        .filter_map(|kv| Resource::<NodeSpec>::from_kv(kv).ok())
        .map(|n| (n.metadata.name, n.spec))
        .collect();
    let weps = next()
        .iter()
        .filter_map(|kv| {
            let v: Value = serde_json::from_slice(&kv.value).ok()?;
            let mut parts = kv.key.rsplit('/');
            let key_name = parts.next().unwrap_or_default();
            let key_ns = parts.next().unwrap_or_default();
            let text = |p: &str, fallback: &str| {
                v["metadata"][p]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or(fallback)
                    .to_string()
            };
            Some(Wep {
                namespace: text("namespace", key_ns),
                name: text("name", key_name),
                ip_networks: v["spec"]["ipNetworks"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect();
    let handles = next()
        .iter()
        .filter_map(|kv| {
            let id = kv.key.strip_prefix(keys::HANDLES)?.to_string();
            let h: IpamHandle = serde_json::from_slice(&kv.value).ok()?;
            Some((id, (h, kv.mod_revision)))
        })
        .collect();
    let affinities = next()
        .iter()
        .filter_map(|kv| {
            let (host, cidr) = keys::parse_affinity(&kv.key)?;
            Some((host, cidr, BlockAffinity::from_bytes(&kv.value).ok()?))
        })
        .collect();
    Ok(CheckData {
        cluster,
        blocks,
        pools,
        nodes,
        weps,
        handles,
        affinities,
    })
}

/// The flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    pub show_all_ips: bool,
    pub show_problem_ips: bool,
}

/// What the check found.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    pub text: String,
    pub problems: usize,
    pub report: Value,
}

/// One allocation (`check.go: Allocation`).
#[derive(Debug, Clone)]
struct Allocation {
    ip: IpAddr,
    block: IpNet,
    handle: String,
    sequence_number: u64,
    pod: String,
    namespace: String,
    node: String,
    kind: String,
    creation_timestamp: String,
    in_use: bool,
    borrowed: bool,
    owners: Vec<String>,
    attrs: String,
    has_handle: bool,
}

impl Allocation {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("ip".into(), json!(self.ip.to_string()));
        if !self.handle.is_empty() {
            m.insert("handle".into(), json!(self.handle));
        }
        m.insert("sequenceNumber".into(), json!(self.sequence_number));
        for (k, v) in [
            ("pod", &self.pod),
            ("namespace", &self.namespace),
            ("node", &self.node),
            ("type", &self.kind),
            ("creationTimestamp", &self.creation_timestamp),
        ] {
            if !v.is_empty() {
                m.insert(k.into(), json!(v));
            }
        }
        m.insert("inUse".into(), json!(self.in_use));
        if self.borrowed {
            m.insert("borrowed".into(), json!(true));
        }
        m.insert(
            "owners".into(),
            if self.owners.is_empty() {
                Value::Null
            } else {
                json!(self.owners)
            },
        );
        Value::Object(m)
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

/// Runs the check over a snapshot.
pub fn run(data: &CheckData, opts: CheckOptions) -> Result<CheckOutcome, String> {
    let show_all = opts.show_all_ips;
    let show_problems = show_all || opts.show_problem_ips;
    let mut t = String::new();
    // Writing to a String cannot fail.
    macro_rules! line {
        ($($arg:tt)*) => { let _ = writeln!(t, $($arg)*); };
    }

    line!("Checking IPAM for inconsistencies...");
    line!();

    let mut allocations: BTreeMap<IpAddr, Vec<Allocation>> = BTreeMap::new();
    let mut in_use: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    let mut in_use_handles: BTreeSet<String> = BTreeSet::new();
    // Per handle and block: how many allocations the block holds for it.
    let mut block_counts: BTreeMap<(String, IpNet), i64> = BTreeMap::new();

    line!("Loading all IPAM blocks...");
    line!("Found {} IPAM blocks.", data.blocks.len());
    let mut num_allocs = 0;
    for b in &data.blocks {
        line!(
            " IPAM block {} affinity={}:",
            b.cidr,
            b.affinity.as_deref().unwrap_or("<none>")
        );
        let affinity_host = b
            .affinity
            .as_deref()
            .and_then(|a| a.strip_prefix("host:"))
            .unwrap_or_default()
            .to_string();
        for (ord, idx) in b.allocations.iter().enumerate() {
            let Some(idx) = idx else { continue };
            num_allocs += 1;
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
            if let Some(a) = attr {
                match a.handle_id.as_deref() {
                    Some(WINDOWS_RESERVED_HANDLE) => {
                        if show_all {
                            line!("  {ip} belongs to Reserved for Windows");
                        }
                        in_use
                            .entry(ip)
                            .or_default()
                            .push("Reserved for Windows".into());
                        for other in allocations.get_mut(&ip).into_iter().flatten() {
                            other.in_use = true;
                            other.owners.push("Reserved for Windows".into());
                        }
                        alloc.has_handle = true;
                    }
                    Some(h) => {
                        alloc.handle = h.to_string();
                        alloc.has_handle = true;
                        in_use_handles.insert(h.to_string());
                        *block_counts.entry((h.to_string(), b.cidr)).or_default() += 1;
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
            if show_all {
                line!("  {ip} allocated; attrs {}", alloc.attrs);
            }
            allocations.entry(ip).or_default().push(alloc);
        }
    }
    line!("IPAM blocks record {num_allocs} allocations.");
    line!();

    line!("Loading all IPAM pools...");
    let mut active: Vec<IpNet> = Vec::new();
    for p in &data.pools {
        if p.spec.disabled {
            continue;
        }
        line!("  {}", p.spec.cidr);
        if let Some((_, n)) = parse_cidr(&p.spec.cidr) {
            active.push(n);
        }
    }
    line!("Found {} active IP pools.", active.len());
    line!();

    let mut record_in_use = |t: &mut String, ip: IpAddr, owner: String| {
        if show_all {
            let _ = writeln!(t, "  {ip} belongs to {owner}");
        }
        for a in allocations.get_mut(&ip).into_iter().flatten() {
            a.in_use = true;
            a.owners.push(owner.clone());
        }
        in_use.entry(ip).or_default().push(owner);
    };

    line!("Loading all nodes.");
    let mut node_ips = 0;
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
            record_in_use(&mut t, ip, format!("Node({name})"));
            node_ips += 1;
        }
    }
    line!("Found {node_ips} node tunnel IPs.");
    line!();

    line!("Loading all service load balancer IPs.");
    line!("No Kubernetes API in etcd-only mode, skipping service check");
    line!();

    line!("Loading all workload endpoints.");
    let mut wep_ips = 0;
    for w in &data.weps {
        for a in &w.ip_networks {
            let ip = normalise_ip(a).ok_or_else(|| {
                format!(
                    "failed to parse IP ({a}) of workload {}/{}: invalid CIDR or IP",
                    w.namespace, w.name
                )
            })?;
            record_in_use(&mut t, ip, format!("Workload({}/{})", w.namespace, w.name));
            wep_ips += 1;
        }
    }
    line!("Found {wep_ips} workload IPs.");
    line!("Workloads and nodes are using {} IPs.", in_use.len());
    let skip_workload_check = data.weps.is_empty();
    if skip_workload_check {
        line!(
            "No workload endpoints in the datastore (IPAM-only use): the check of allocated IPs \
             against workloads is skipped."
        );
    }
    line!();

    line!("Loading all handles");
    const TOP: usize = 20;
    line!("Looking for top (up to {TOP}) nodes by allocations...");
    let mut by_node: BTreeMap<&str, usize> = BTreeMap::new();
    for a in allocations.values().flatten() {
        *by_node.entry(a.node.as_str()).or_default() += 1;
    }
    let mut nodes: Vec<(&str, usize)> = by_node.into_iter().collect();
    nodes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (n, c) in nodes.iter().take(TOP) {
        line!("  {n} has {c} allocations");
    }
    if let (Some(first), Some(mid)) = (nodes.first(), nodes.get(nodes.len() / 2)) {
        line!(
            "Node with most allocations has {}; median is {}",
            first.1,
            mid.1
        );
    }
    line!();

    let mut problems = 0;
    line!("Scanning for IPs that are allocated but not actually in use...");
    if skip_workload_check {
        line!("Skipped: there are no workload endpoints to check allocations against.");
    } else {
        let mut leaked = 0;
        for (ip, allocs) in &allocations {
            if in_use.contains_key(ip) {
                continue;
            }
            if show_problems {
                for a in allocs {
                    line!("  {ip} leaked; attrs {}", a.attrs);
                }
            }
            leaked += 1;
        }
        problems += leaked;
        line!("Found {leaked} IPs that are allocated in IPAM but not actually in use.");
    }

    line!("Scanning for IPs that are in use by a workload or node but not allocated in IPAM...");
    let mut not_in_pool = 0;
    let mut in_pool_unallocated = 0;
    let mut in_use_not_allocated = Vec::new();
    for (ip, owners) in &in_use {
        if show_problems && owners.len() > 1 {
            line!("  {ip} has multiple owners.");
        }
        if allocations.contains_key(ip) {
            continue;
        }
        let in_active = active.iter().any(|p| p.contains(ip));
        if show_problems {
            for o in owners {
                if in_active {
                    line!(
                        "  {ip} in use by {o} and in active IPAM pool but has no IPAM allocation."
                    );
                } else {
                    line!("  {ip} in use by {o} is not in any active IP pool.");
                }
            }
        }
        if in_active {
            in_pool_unallocated += 1;
        } else {
            not_in_pool += 1;
        }
        in_use_not_allocated
            .push(json!({"ip": ip.to_string(), "owners": owners, "inActivePool": in_active}));
    }
    problems += not_in_pool + in_pool_unallocated;
    line!("Found {not_in_pool} in-use IPs that are not in active IP pools.");
    line!(
        "Found {in_pool_unallocated} in-use IPs that are in active IP pools but have no corresponding IPAM allocation."
    );
    line!();

    line!("Scanning for IPAM handles with no matching IPs...");
    let mut leaked_handles = Vec::new();
    let mut good_handles = 0;
    for (id, (_, rev)) in &data.handles {
        if in_use_handles.contains(id) {
            good_handles += 1;
            continue;
        }
        if show_all {
            line!("  {id} doesn't have any active IPs.");
        }
        leaked_handles.push(json!({"ID": id, "UID": null, "Revision": rev.to_string()}));
    }
    problems += leaked_handles.len();
    line!(
        "Found {} handles with no matching IPs (and {good_handles} handles with matches).",
        leaked_handles.len()
    );

    line!("Scanning for IPs with missing handle...");
    let mut missing_handles = Vec::new();
    for h in &in_use_handles {
        if data.handles.contains_key(h) {
            continue;
        }
        if show_problems {
            line!("  {h} is in use in a block but doesn't exist.");
        }
        let ips: Vec<String> = allocations
            .values()
            .flatten()
            .filter(|a| &a.handle == h)
            .map(|a| a.ip.to_string())
            .collect();
        missing_handles.push(json!({"handle": h, "ips": ips}));
    }
    problems += missing_handles.len();
    line!(
        "Found {} handles mentioned in blocks with no matching handle resource.",
        missing_handles.len()
    );

    line!("Scanning for handles whose block counts do not match the blocks...");
    let mut mismatches = Vec::new();
    for (id, (h, _)) in &data.handles {
        if !in_use_handles.contains(id) {
            continue; // a leaked handle, counted above
        }
        let mut pairs: BTreeMap<IpNet, (i64, i64)> = BTreeMap::new();
        for (cidr, n) in &h.block {
            let Ok(c) = cidr.parse::<IpNet>() else {
                continue;
            };
            pairs.entry(c.trunc()).or_default().0 += n;
        }
        for ((hid, c), n) in &block_counts {
            if hid == id {
                pairs.entry(*c).or_default().1 += n;
            }
        }
        for (c, (handle_count, block_count)) in pairs {
            if handle_count == block_count {
                continue;
            }
            if show_problems {
                line!(
                    "  handle {id} records {handle_count} IPs in block {c}, which holds {block_count} of its IPs."
                );
            }
            mismatches.push(json!({"handle": id, "block": c.to_string(), "handleCount": handle_count, "blockCount": block_count}));
        }
    }
    problems += mismatches.len();
    line!(
        "Found {} handle block counts that do not match the blocks.",
        mismatches.len()
    );

    line!("Scanning for IPs allocated in more than one block...");
    let mut overlapping = Vec::new();
    for (ip, allocs) in &allocations {
        if allocs.len() < 2 {
            continue;
        }
        let blocks: Vec<String> = allocs.iter().map(|a| a.block.to_string()).collect();
        if show_problems {
            line!("  {ip} is allocated in blocks {}.", blocks.join(", "));
        }
        overlapping.push(json!({"ip": ip.to_string(), "blocks": blocks}));
    }
    problems += overlapping.len();
    line!(
        "Found {} IPs allocated in more than one block.",
        overlapping.len()
    );

    line!("Scanning for allocations without a handle...");
    let mut no_handle = Vec::new();
    for a in allocations.values().flatten() {
        if a.has_handle {
            continue;
        }
        if show_problems {
            line!(
                "  {} in block {} has no handle; attrs {}",
                a.ip,
                a.block,
                a.attrs
            );
        }
        no_handle.push(json!({"ip": a.ip.to_string(), "block": a.block.to_string()}));
    }
    problems += no_handle.len();
    line!("Found {} allocations without a handle.", no_handle.len());

    line!("Scanning block affinities...");
    let mut affinity_problems = Vec::new();
    let block_cidrs: BTreeSet<IpNet> = data.blocks.iter().map(|b| b.cidr).collect();
    let affinity_keys: BTreeSet<(&str, IpNet)> = data
        .affinities
        .iter()
        .map(|(h, c, _)| (h.as_str(), *c))
        .collect();
    for (host, cidr, aff) in &data.affinities {
        if aff.is_confirmed() && !aff.deleted && !block_cidrs.contains(cidr) {
            if show_problems {
                line!(
                    "  host {host} has a confirmed affinity for block {cidr}, which does not exist."
                );
            }
            affinity_problems
                .push(json!({"host": host, "block": cidr.to_string(), "problem": "blockMissing"}));
        }
    }
    for b in &data.blocks {
        let Some(host) = block::affine_node(b) else {
            continue;
        };
        if !affinity_keys.contains(&(host, b.cidr)) {
            if show_problems {
                line!(
                    "  block {} is affine to host {host}, which has no affinity for it.",
                    b.cidr
                );
            }
            affinity_problems.push(
                json!({"host": host, "block": b.cidr.to_string(), "problem": "affinityMissing"}),
            );
        }
    }
    problems += affinity_problems.len();
    line!("Found {} block affinity problems.", affinity_problems.len());

    line!("Check complete; found {problems} problems.");

    let (guid, ctype, locked, rev) = match &data.cluster {
        Some((c, rev)) => (
            c.spec.cluster_guid.clone(),
            c.spec.cluster_type.clone(),
            c.spec.datastore_ready == Some(false),
            rev.to_string(),
        ),
        None => (String::new(), String::new(), false, String::new()),
    };
    // Go sorts map keys as strings.
    let by_text: BTreeMap<String, Vec<Value>> = allocations
        .iter()
        .map(|(ip, v)| (ip.to_string(), v.iter().map(Allocation::to_json).collect()))
        .collect();
    let mut report = Map::new();
    report.insert("version".into(), json!(VERSION));
    report.insert("clusterGUID".into(), json!(guid));
    report.insert("datastoreLocked".into(), json!(locked));
    report.insert("clusterInformationRevision".into(), json!(rev));
    report.insert("clusterType".into(), json!(ctype));
    report.insert("allocations".into(), json!(by_text));
    if !leaked_handles.is_empty() {
        report.insert("leakedHandles".into(), Value::Array(leaked_handles));
    }
    report.insert("workloadCheckSkipped".into(), json!(skip_workload_check));
    report.insert("missingHandles".into(), Value::Array(missing_handles));
    report.insert("handleCountMismatches".into(), Value::Array(mismatches));
    report.insert("overlappingIPs".into(), Value::Array(overlapping));
    report.insert("allocationsWithoutHandle".into(), Value::Array(no_handle));
    report.insert(
        "inUseNotAllocated".into(),
        Value::Array(in_use_not_allocated),
    );
    report.insert("affinityProblems".into(), Value::Array(affinity_problems));
    Ok(CheckOutcome {
        text: t,
        problems,
        report: Value::Object(report),
    })
}

/// `ipam check`: prints the findings, writes the report if asked; exits 0 with problems too.
pub fn check(
    store: &dyn KvStore,
    opts: CheckOptions,
    report_file: Option<&std::path::Path>,
    out: &mut dyn std::io::Write,
) -> CmdResult {
    let data = load(store)?;
    let outcome = run(&data, opts).map_err(CmdError::Failed)?;
    out.write_all(outcome.text.as_bytes())?;
    if let Some(path) = report_file {
        std::fs::write(path, gofmt::json_indent(&outcome.report)).map_err(|e| {
            CmdError::failed(format!("cannot write the report {}: {e}", path.display()))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_datastore::model::IpPoolSpec;
    use std::time::UNIX_EPOCH;

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A block on n1 with ordinals 0..n allocated to handle `h` (pod p<i>).
    fn block_for(cidr: &str, handle: &str, n: usize) -> AllocationBlock {
        let mut b = block::new_block(net(cidr), "n1", UNIX_EPOCH);
        let mut list = Vec::new();
        for o in 0..n {
            list.push(AllocationAttribute::new(
                handle,
                attrs(&[
                    ("node", "n1"),
                    ("pod", &format!("p{o}")),
                    ("namespace", "default"),
                ]),
            ));
            b.allocations[o] = Some(o);
            b.sequence_number_for_allocation.insert(o.to_string(), 7);
        }
        b.unallocated.drain(..n);
        b.attributes = Some(list);
        b
    }

    fn clean() -> CheckData {
        let b = block_for("10.0.0.0/30", "h1", 2);
        let mut handle = IpamHandle::default();
        handle.block.insert("10.0.0.0/30".into(), 2);
        CheckData {
            cluster: None,
            blocks: vec![b],
            pools: vec![IpPool::new(
                "IPPool",
                "p",
                IpPoolSpec::for_cidr("10.0.0.0/24"),
            )],
            nodes: vec![],
            weps: vec![Wep {
                namespace: "default".into(),
                name: "w".into(),
                ip_networks: vec!["10.0.0.0/32".into(), "10.0.0.1/32".into()],
            }],
            handles: [("h1".to_string(), (handle, 5))].into_iter().collect(),
            affinities: vec![("n1".into(), net("10.0.0.0/30"), BlockAffinity::confirmed())],
        }
    }

    #[test]
    fn clean_data_has_no_problems() {
        let out = run(&clean(), CheckOptions::default()).expect("runs");
        assert_eq!(out.problems, 0, "{}", out.text);
        assert!(out.text.starts_with(
            "Checking IPAM for inconsistencies...\n\nLoading all IPAM blocks...\nFound 1 IPAM blocks.\n IPAM block 10.0.0.0/30 affinity=host:n1:\nIPAM blocks record 2 allocations.\n\n"
        ), "{}", out.text);
        assert!(
            out.text
                .contains("  10.0.0.0/24\nFound 1 active IP pools.\n")
        );
        assert!(
            out.text
                .contains("Found 2 workload IPs.\nWorkloads and nodes are using 2 IPs.\n")
        );
        assert!(
            out.text.contains(
                "  n1 has 2 allocations\nNode with most allocations has 2; median is 2\n"
            )
        );
        assert!(
            out.text.ends_with("Check complete; found 0 problems.\n"),
            "{}",
            out.text
        );
        let a = &out.report["allocations"]["10.0.0.1"][0];
        assert_eq!(
            a,
            &json!({"ip":"10.0.0.1","handle":"h1","sequenceNumber":7,"pod":"p1","namespace":"default",
                    "node":"n1","inUse":true,"owners":["Workload(default/w)"]})
        );
        assert!(out.report.get("leakedHandles").is_none());
    }

    #[test]
    fn every_problem_kind_is_found() {
        let mut d = clean();
        // (a) h2 has no handle resource; h1's count is off (says 3, block holds 2).
        d.handles
            .get_mut("h1")
            .expect("h1")
            .0
            .block
            .insert("10.0.0.0/30".into(), 3);
        let mut b2 = block_for("10.0.1.0/30", "h2", 1);
        // (d) an allocation without a handle in b2.
        b2.allocations[1] = Some(1);
        b2.unallocated.retain(|o| *o != 1);
        if let Some(a) = b2.attributes.as_mut() {
            a.push(AllocationAttribute {
                handle_id: None,
                secondary: None,
                alternate_owner_attrs: None,
                extra: Map::new(),
            });
        }
        d.blocks.push(b2);
        // (b) a handle with no IPs.
        d.handles
            .insert("leaked".into(), (IpamHandle::default(), 9));
        // (c) 10.0.0.1 also allocated in an overlapping /31.
        let mut overlap = block_for("10.0.0.0/31", "h1", 0);
        overlap.allocations[1] = Some(0);
        overlap.unallocated.retain(|o| *o != 1);
        overlap.attributes = Some(vec![AllocationAttribute::new("h1", attrs(&[]))]);
        overlap.affinity = None;
        d.blocks.push(overlap);
        // (f) a workload IP that is not allocated.
        d.weps.push(Wep {
            namespace: "default".into(),
            name: "x".into(),
            ip_networks: vec!["10.0.0.9/32".into()],
        });
        // (g) a confirmed affinity without block, and b2 without affinity.
        d.affinities
            .push(("n2".into(), net("10.0.2.0/30"), BlockAffinity::confirmed()));

        let out = run(
            &d,
            CheckOptions {
                show_all_ips: false,
                show_problem_ips: true,
            },
        )
        .expect("runs");
        let t = &out.text;
        // (e) 10.0.1.0 and 10.0.1.1 are allocated but no workload uses them.
        assert!(
            t.contains("Found 2 IPs that are allocated in IPAM but not actually in use."),
            "{t}"
        );
        assert!(
            t.contains("  10.0.1.0 leaked; attrs Main:h2 Extra:namespace=default,node=n1,pod=p0\n"),
            "{t}"
        );
        assert!(t.contains("Found 1 in-use IPs that are in active IP pools but have no corresponding IPAM allocation."), "{t}");
        assert!(
            t.contains("Found 1 handles with no matching IPs (and 1 handles with matches)."),
            "{t}"
        );
        assert!(
            t.contains("Found 1 handles mentioned in blocks with no matching handle resource."),
            "{t}"
        );
        assert!(
            t.contains("Found 2 handle block counts that do not match the blocks."),
            "{t}"
        );
        assert!(
            t.contains("Found 1 IPs allocated in more than one block."),
            "{t}"
        );
        assert!(t.contains("Found 1 allocations without a handle."), "{t}");
        assert!(t.contains("Found 2 block affinity problems."), "{t}");
        assert_eq!(out.problems, 2 + 1 + 1 + 1 + 2 + 1 + 1 + 2, "{t}");
        assert!(t.ends_with(&format!(
            "Check complete; found {} problems.\n",
            out.problems
        )));
        let r = &out.report;
        assert_eq!(
            r["leakedHandles"],
            json!([{"ID":"leaked","UID":null,"Revision":"9"}])
        );
        assert_eq!(
            r["missingHandles"],
            json!([{"handle":"h2","ips":["10.0.1.0"]}])
        );
        assert_eq!(r["overlappingIPs"][0]["ip"], "10.0.0.1");
        assert_eq!(
            r["allocationsWithoutHandle"],
            json!([{"ip":"10.0.1.1","block":"10.0.1.0/30"}])
        );
        assert_eq!(r["affinityProblems"].as_array().map(Vec::len), Some(2));
        assert_eq!(r["inUseNotAllocated"][0]["ip"], "10.0.0.9");
    }

    #[test]
    fn without_workload_endpoints_leaks_are_not_counted() {
        let mut d = clean();
        d.weps.clear();
        let out = run(&d, CheckOptions::default()).expect("runs");
        assert_eq!(out.problems, 0, "{}", out.text);
        assert!(out.text.contains("(IPAM-only use)"), "{}", out.text);
        assert!(
            !out.text
                .contains("allocated in IPAM but not actually in use")
        );
        assert_eq!(out.report["workloadCheckSkipped"], true);
    }

    #[test]
    fn node_tunnel_addresses_count_as_in_use() {
        let mut d = clean();
        d.weps = vec![Wep {
            namespace: "default".into(),
            name: "w".into(),
            ip_networks: vec!["10.0.0.0/32".into()],
        }];
        let spec = NodeSpec {
            ipv4_vxlan_tunnel_addr: "10.0.0.1".into(),
            ..NodeSpec::default()
        };
        d.nodes = vec![("n1".into(), spec)];
        let out = run(
            &d,
            CheckOptions {
                show_all_ips: true,
                show_problem_ips: false,
            },
        )
        .expect("runs");
        assert_eq!(out.problems, 0, "{}", out.text);
        assert!(out.text.contains("Found 1 node tunnel IPs."));
        assert!(out.text.contains("  10.0.0.1 belongs to Node(n1)\n"));
        assert!(out.text.contains(
            "  10.0.0.1 allocated; attrs Main:h1 Extra:namespace=default,node=n1,pod=p1\n"
        ));
    }
}
