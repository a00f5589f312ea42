//! Reads the whole IPAM state and lists every inconsistency: an address in two blocks, an
//! allocation without its handle, a handle whose counts do not match its allocations, a
//! handle with no address, an affinity without its block or the reverse.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use calico_datastore::model::{AllocationBlock, IpamHandle, keys};
use calico_datastore::{KvStore, Read};

#[derive(Debug, Default)]
pub struct Audit {
    /// Every allocated address with its handle and node attribute.
    pub allocations: BTreeMap<IpAddr, (String, String)>,
    pub handles: BTreeSet<String>,
    pub problems: Vec<String>,
}

pub fn audit(db: &dyn KvStore) -> Audit {
    let mut a = Audit::default();
    let mut counted: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut affine_blocks = BTreeSet::new();
    // One transaction: blocks, handles and affinities at one revision (separate reads could
    // straddle a write and see half of it).
    let mut read = db
        .read(&[
            Read::Prefix(keys::blocks_prefix(true)),
            Read::Prefix(keys::blocks_prefix(false)),
            Read::Prefix(keys::HANDLES.to_string()),
            Read::Prefix("/calico/ipam/v2/host/".to_string()),
        ])
        .unwrap()
        .into_iter();
    let mut next = || read.next().unwrap_or_default();
    let (blocks_v4, blocks_v6, handles, affinities) = (next(), next(), next(), next());
    for blocks in [blocks_v4, blocks_v6] {
        for kv in blocks {
            let b: AllocationBlock = serde_json::from_slice(&kv.value).unwrap();
            if let Some(node) = b.affinity.as_deref().and_then(|x| x.strip_prefix("host:")) {
                affine_blocks.insert((node.to_string(), b.cidr));
            }
            let attrs = b.attributes.clone().unwrap_or_default();
            for (ord, slot) in b.allocations.iter().enumerate() {
                let Some(i) = slot else { continue };
                let ip = calico_ipam::block::address(&b.cidr, ord);
                let attr = &attrs[*i];
                let Some(h) = attr.handle() else {
                    a.problems.push(format!("{ip} has no handle"));
                    continue;
                };
                for needed in ["node", "timestamp"] {
                    if attr.owner(needed).is_none() {
                        a.problems.push(format!("{ip} lacks attribute {needed}"));
                    }
                }
                let node = attr.owner("node").unwrap_or_default().to_string();
                if a.allocations.insert(ip, (h.to_string(), node)).is_some() {
                    a.problems.push(format!("{ip} is allocated twice"));
                }
                *counted
                    .entry((h.to_string(), b.cidr.to_string()))
                    .or_default() += 1;
            }
            if b.unallocated.len() + b.allocations.iter().flatten().count() != b.allocations.len() {
                a.problems
                    .push(format!("block {} free list does not add up", b.cidr));
            }
        }
    }
    let mut recorded: BTreeMap<(String, String), i64> = BTreeMap::new();
    for kv in handles {
        let id = kv.key[keys::HANDLES.len()..].to_string();
        let h: IpamHandle = serde_json::from_slice(&kv.value).unwrap();
        if h.block.values().all(|n| *n <= 0) {
            a.problems
                .push(format!("handle {id} holds nothing (leaked)"));
        }
        for (cidr, n) in h.block {
            recorded.insert((id.clone(), cidr), n);
        }
        a.handles.insert(id);
    }
    if counted != recorded {
        let diff: Vec<_> = counted
            .iter()
            .filter(|(k, v)| recorded.get(*k) != Some(*v))
            .chain(recorded.iter().filter(|(k, v)| counted.get(*k) != Some(*v)))
            .collect();
        a.problems
            .push(format!("handle counts differ from allocations: {diff:?}"));
    }
    for kv in affinities {
        if let Some((node, cidr)) = keys::parse_affinity(&kv.key)
            && !affine_blocks.remove(&(node.clone(), cidr))
        {
            a.problems
                .push(format!("affinity {node} {cidr} has no block"));
        }
    }
    for (node, cidr) in affine_blocks {
        a.problems
            .push(format!("block {cidr} affine to {node} has no affinity key"));
    }
    a
}
