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
//!
//! In three steps: `gather` reads the datastore once ([`CheckData`]), `analyse` finds the
//! problems without I/O (unit-tested), `render` prints them as calicoctl does and builds the
//! report.

mod analyse;
mod gather;
mod render;

pub use gather::gather;

use crate::error::{CmdError, CmdResult};
use crate::gofmt;
use calico_datastore::KvStore;
use calico_datastore::model::{
    AllocationBlock, BlockAffinity, ClusterInformation, IpPool, IpamHandle, NodeSpec,
};
use ipnet::IpNet;
use serde_json::Value;
use std::collections::BTreeMap;

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

/// Runs the check over a snapshot: the findings, printed and reported.
pub fn run(data: &CheckData, opts: CheckOptions) -> Result<CheckOutcome, String> {
    let findings = analyse::analyse(data)?;
    Ok(CheckOutcome {
        text: render::text(&findings, opts),
        problems: findings.problems(),
        report: render::report(data, &findings),
    })
}

/// `ipam check`: prints the findings, writes the report if asked; exits 0 with problems too.
pub fn check(
    store: &dyn KvStore,
    opts: CheckOptions,
    report_file: Option<&std::path::Path>,
    out: &mut dyn std::io::Write,
) -> CmdResult {
    let data = gather(store)?;
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
    use calico_datastore::model::AllocationAttribute;
    use calico_datastore::model::IpPoolSpec;
    use calico_ipam::block;
    use serde_json::{Map, json};
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
