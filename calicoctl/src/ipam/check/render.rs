//! Rendering: the findings as calicoctl 3.32's `ipam check` prints them (line for line where
//! it applies, our extra sections after its own), and the `-o` report.

use super::analyse::{Allocation, Findings};
use super::{CheckData, CheckOptions, VERSION};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// How many nodes the allocation ranking lists.
const TOP: usize = 20;

/// The report text.
pub fn text(f: &Findings, opts: CheckOptions) -> String {
    let show_all = opts.show_all_ips;
    let show_problems = show_all || opts.show_problem_ips;
    let mut t = String::new();
    // Writing to a String cannot fail.
    macro_rules! line {
        ($($arg:tt)*) => { let _ = writeln!(t, $($arg)*); };
    }

    line!("Checking IPAM for inconsistencies...");
    line!();

    line!("Loading all IPAM blocks...");
    line!("Found {} IPAM blocks.", f.blocks.len());
    for b in &f.blocks {
        line!(
            " IPAM block {} affinity={}:",
            b.cidr,
            b.affinity.as_deref().unwrap_or("<none>")
        );
        for (ip, windows, attrs) in &b.allocations {
            if show_all && *windows {
                line!("  {ip} belongs to Reserved for Windows");
            }
            if show_all {
                line!("  {ip} allocated; attrs {attrs}");
            }
        }
    }
    line!("IPAM blocks record {} allocations.", f.num_allocations());
    line!();

    line!("Loading all IPAM pools...");
    for cidr in &f.enabled_pools {
        line!("  {cidr}");
    }
    line!("Found {} active IP pools.", f.active_pools.len());
    line!();

    line!("Loading all nodes.");
    for u in f.node_uses.iter().filter(|_| show_all) {
        line!("  {} belongs to {}", u.ip, u.owner);
    }
    line!("Found {} node tunnel IPs.", f.node_uses.len());
    line!();

    line!("Loading all service load balancer IPs.");
    line!("No Kubernetes API in etcd-only mode, skipping service check");
    line!();

    line!("Loading all workload endpoints.");
    for u in f.workload_uses.iter().filter(|_| show_all) {
        line!("  {} belongs to {}", u.ip, u.owner);
    }
    line!("Found {} workload IPs.", f.workload_uses.len());
    line!("Workloads and nodes are using {} IPs.", f.in_use.len());
    if f.workload_check_skipped() {
        line!(
            "No workload endpoints in the datastore (IPAM-only use): the check of allocated IPs \
             against workloads is skipped."
        );
    }
    line!();

    line!("Loading all handles");
    line!("Looking for top (up to {TOP}) nodes by allocations...");
    let nodes = &f.nodes_by_allocations;
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

    line!("Scanning for IPs that are allocated but not actually in use...");
    match &f.leaked {
        None => {
            line!("Skipped: there are no workload endpoints to check allocations against.");
        }
        Some(leaked) => {
            for (ip, attrs) in leaked.iter().filter(|_| show_problems) {
                for a in attrs {
                    line!("  {ip} leaked; attrs {a}");
                }
            }
            line!(
                "Found {} IPs that are allocated in IPAM but not actually in use.",
                leaked.len()
            );
        }
    }

    line!("Scanning for IPs that are in use by a workload or node but not allocated in IPAM...");
    for u in f.in_use.iter().filter(|_| show_problems) {
        if u.owners.len() > 1 {
            line!("  {} has multiple owners.", u.ip);
        }
        if u.allocated {
            continue;
        }
        for o in &u.owners {
            if u.in_active_pool {
                line!(
                    "  {} in use by {o} and in active IPAM pool but has no IPAM allocation.",
                    u.ip
                );
            } else {
                line!("  {} in use by {o} is not in any active IP pool.", u.ip);
            }
        }
    }
    let (not_in_pool, in_pool_unallocated) = f.unallocated();
    line!("Found {not_in_pool} in-use IPs that are not in active IP pools.");
    line!(
        "Found {in_pool_unallocated} in-use IPs that are in active IP pools but have no corresponding IPAM allocation."
    );
    line!();

    line!("Scanning for IPAM handles with no matching IPs...");
    for (id, _) in f.leaked_handles.iter().filter(|_| show_all) {
        line!("  {id} doesn't have any active IPs.");
    }
    line!(
        "Found {} handles with no matching IPs (and {} handles with matches).",
        f.leaked_handles.len(),
        f.good_handles
    );

    line!("Scanning for IPs with missing handle...");
    for (h, _) in f.missing_handles.iter().filter(|_| show_problems) {
        line!("  {h} is in use in a block but doesn't exist.");
    }
    line!(
        "Found {} handles mentioned in blocks with no matching handle resource.",
        f.missing_handles.len()
    );

    line!("Scanning for handles whose block counts do not match the blocks...");
    for m in f.count_mismatches.iter().filter(|_| show_problems) {
        line!(
            "  handle {} records {} IPs in block {}, which holds {} of its IPs.",
            m.handle,
            m.handle_count,
            m.block,
            m.block_count
        );
    }
    line!(
        "Found {} handle block counts that do not match the blocks.",
        f.count_mismatches.len()
    );

    line!("Scanning for IPs allocated in more than one block...");
    for (ip, blocks) in f.overlapping.iter().filter(|_| show_problems) {
        let blocks: Vec<String> = blocks.iter().map(ToString::to_string).collect();
        line!("  {ip} is allocated in blocks {}.", blocks.join(", "));
    }
    line!(
        "Found {} IPs allocated in more than one block.",
        f.overlapping.len()
    );

    line!("Scanning for allocations without a handle...");
    for (ip, block, attrs) in f.without_handle.iter().filter(|_| show_problems) {
        line!("  {ip} in block {block} has no handle; attrs {attrs}");
    }
    line!(
        "Found {} allocations without a handle.",
        f.without_handle.len()
    );

    line!("Scanning block affinities...");
    for p in f.affinity_problems.iter().filter(|_| show_problems) {
        if p.block_missing {
            line!(
                "  host {} has a confirmed affinity for block {}, which does not exist.",
                p.host,
                p.block
            );
        } else {
            line!(
                "  block {} is affine to host {}, which has no affinity for it.",
                p.block,
                p.host
            );
        }
    }
    line!(
        "Found {} block affinity problems.",
        f.affinity_problems.len()
    );

    line!("Check complete; found {} problems.", f.problems());
    t
}

/// One allocation as the report lists it.
fn allocation_json(a: &Allocation) -> Value {
    let mut m = Map::new();
    m.insert("ip".into(), json!(a.ip.to_string()));
    if !a.handle.is_empty() {
        m.insert("handle".into(), json!(a.handle));
    }
    m.insert("sequenceNumber".into(), json!(a.sequence_number));
    for (k, v) in [
        ("pod", &a.pod),
        ("namespace", &a.namespace),
        ("node", &a.node),
        ("type", &a.kind),
        ("creationTimestamp", &a.creation_timestamp),
    ] {
        if !v.is_empty() {
            m.insert(k.into(), json!(v));
        }
    }
    m.insert("inUse".into(), json!(a.in_use));
    if a.borrowed {
        m.insert("borrowed".into(), json!(true));
    }
    m.insert(
        "owners".into(),
        if a.owners.is_empty() {
            Value::Null
        } else {
            json!(a.owners)
        },
    );
    Value::Object(m)
}

/// The `-o` report: Calico's fields, then ours (see the module doc of `ipam check`).
pub fn report(data: &CheckData, f: &Findings) -> Value {
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
    let by_text: BTreeMap<String, Vec<Value>> = f
        .allocations
        .iter()
        .map(|(ip, v)| (ip.to_string(), v.iter().map(allocation_json).collect()))
        .collect();
    let leaked_handles: Vec<Value> = f
        .leaked_handles
        .iter()
        .map(|(id, rev)| json!({"ID": id, "UID": null, "Revision": rev.to_string()}))
        .collect();
    let missing_handles: Vec<Value> = f
        .missing_handles
        .iter()
        .map(|(h, ips)| {
            let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
            json!({"handle": h, "ips": ips})
        })
        .collect();
    let mismatches: Vec<Value> = f
        .count_mismatches
        .iter()
        .map(|m| {
            json!({"handle": m.handle, "block": m.block.to_string(), "handleCount": m.handle_count, "blockCount": m.block_count})
        })
        .collect();
    let overlapping: Vec<Value> = f
        .overlapping
        .iter()
        .map(|(ip, blocks)| {
            let blocks: Vec<String> = blocks.iter().map(ToString::to_string).collect();
            json!({"ip": ip.to_string(), "blocks": blocks})
        })
        .collect();
    let no_handle: Vec<Value> = f
        .without_handle
        .iter()
        .map(|(ip, block, _)| json!({"ip": ip.to_string(), "block": block.to_string()}))
        .collect();
    let in_use_not_allocated: Vec<Value> = f
        .in_use
        .iter()
        .filter(|u| !u.allocated)
        .map(|u| json!({"ip": u.ip.to_string(), "owners": u.owners, "inActivePool": u.in_active_pool}))
        .collect();
    let affinity_problems: Vec<Value> = f
        .affinity_problems
        .iter()
        .map(|p| {
            let problem = if p.block_missing {
                "blockMissing"
            } else {
                "affinityMissing"
            };
            json!({"host": p.host, "block": p.block.to_string(), "problem": problem})
        })
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
    report.insert(
        "workloadCheckSkipped".into(),
        json!(f.workload_check_skipped()),
    );
    report.insert("missingHandles".into(), Value::Array(missing_handles));
    report.insert("handleCountMismatches".into(), Value::Array(mismatches));
    report.insert("overlappingIPs".into(), Value::Array(overlapping));
    report.insert("allocationsWithoutHandle".into(), Value::Array(no_handle));
    report.insert(
        "inUseNotAllocated".into(),
        Value::Array(in_use_not_allocated),
    );
    report.insert("affinityProblems".into(), Value::Array(affinity_problems));
    Value::Object(report)
}
