//! Garbage collection (CNI 1.1 `GC`) of one network's allocations on one node.
//!
//! A runtime's GC names the attachments *it* knows to be valid. Other networks on the node
//! (Multus, a second Calico network) and other runtimes using the same network (containerd
//! and Podman side by side) are not in its list, so the list alone cannot condemn anything:
//!
//! - only handles of this network are looked at: `<network>.<container ID>` (Calico's handle
//!   names the network; a container ID with a `.` could be another network's handle, since
//!   `net.x` is a valid network name, and is never guessed at);
//! - only allocations whose `node` attribute is this node are released;
//! - whatever the caller's [`Liveness`] says is alive (the kernel still routes the addresses
//!   to a pod, the pod's host interface exists) is kept whatever the list says, and so is an
//!   allocation younger than [`Liveness::grace`] (an ADD in flight in another runtime may
//!   not have routed its addresses yet).

use crate::allocator::{Ipam, SnapshotRequest};
use crate::block;
use crate::cni::CommitWith;
use crate::error::IpamError;
use calico_datastore::model::{AllocationBlock, IpamHandle, keys, time};
use calico_datastore::{KvStore, Read};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// How long a new allocation is safe from GC when only the kernel can vouch for it: the
/// window between an IPAM ADD and the main plugin routing the address.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// An allocation of this network on this node whose container is not in the valid list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `<network>.<container ID>`.
    pub handle: String,
    pub container_id: String,
    /// The addresses the handle holds on this node.
    pub addresses: Vec<IpAddr>,
    /// The newest allocation's `timestamp` attribute, if readable.
    pub allocated_at: Option<SystemTime>,
}

/// What the caller knows of the kernel and the clock.
pub struct Liveness<'a> {
    /// Whether the candidate is still in use on this node.
    pub alive: &'a dyn Fn(&Candidate) -> Result<bool, String>,
    /// Allocations younger than this are kept (zero: no grace).
    pub grace: Duration,
    pub now: SystemTime,
}

/// The kernel's list of addresses in use on the host, asked for once, when first needed
/// (it visits every namespace).
pub struct InUse<'a> {
    ask: &'a dyn Fn() -> Result<BTreeSet<IpAddr>, String>,
    seen: std::cell::OnceCell<BTreeSet<IpAddr>>,
}

impl<'a> InUse<'a> {
    pub fn new(ask: &'a dyn Fn() -> Result<BTreeSet<IpAddr>, String>) -> Self {
        InUse {
            ask,
            seen: std::cell::OnceCell::new(),
        }
    }

    /// Whether any of `addresses` is in use.
    pub fn any(&self, addresses: &[IpAddr]) -> Result<bool, String> {
        let used = match self.seen.get() {
            Some(u) => u,
            None => {
                let u = (self.ask)()?;
                self.seen.get_or_init(|| u)
            }
        };
        Ok(addresses.iter().any(|a| used.contains(a)))
    }
}

/// Why a candidate was kept or released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Alive,
    TooYoung,
    Stale,
}

impl Liveness<'_> {
    pub fn judge(&self, c: &Candidate) -> Result<Verdict, String> {
        if (self.alive)(c)? {
            return Ok(Verdict::Alive);
        }
        let young = c
            .allocated_at
            .and_then(|at| self.now.duration_since(at).ok())
            .is_some_and(|age| age < self.grace);
        // A timestamp in the future is someone else's clock: young too.
        let future = c.allocated_at.is_some_and(|at| at > self.now);
        if !self.grace.is_zero() && (young || future) {
            return Ok(Verdict::TooYoung);
        }
        Ok(Verdict::Stale)
    }
}

/// The container ID of a handle of `network`, unless it could belong to another network.
pub fn container_of<'h>(network: &str, handle: &'h str) -> Option<&'h str> {
    let cid = handle.strip_prefix(network)?.strip_prefix('.')?;
    (!cid.is_empty() && !cid.contains('.')).then_some(cid)
}

/// This node's allocations of `network` whose container is not in `valid`: the handles in
/// one listing, their blocks in one batched read.
pub fn candidates(
    store: &dyn KvStore,
    network: &str,
    node: &str,
    valid: &BTreeSet<String>,
) -> Result<Vec<Candidate>, IpamError> {
    let prefix = keys::handle(&format!("{network}."));
    let mut out = Vec::new();
    let mut wanted_blocks = BTreeSet::new();
    for kv in store.list(&prefix)? {
        let Some(id) = kv.key.strip_prefix(keys::HANDLES) else {
            continue;
        };
        let Some(cid) = container_of(network, id) else {
            continue;
        };
        if valid.contains(cid) {
            continue;
        }
        // One corrupt handle must not stop GC of the others: it is logged and skipped.
        let handle: IpamHandle = match serde_json::from_slice(&kv.value) {
            Ok(h) => h,
            Err(e) => {
                log::warn!("GC: handle {} skipped: it is unreadable ({e})", kv.key);
                continue;
            }
        };
        wanted_blocks.extend(handle.block.keys().filter_map(|c| c.parse::<IpNet>().ok()));
        out.push(Candidate {
            handle: id.to_string(),
            container_id: cid.to_string(),
            addresses: Vec::new(),
            allocated_at: None,
        });
    }
    if out.is_empty() {
        return Ok(out);
    }
    let reads: Vec<Read> = wanted_blocks
        .iter()
        .map(|b| Read::Key(keys::block(b)))
        .collect();
    // A corrupt block is left out (logged), as allocations and releases skip it.
    let blocks: Vec<AllocationBlock> = store
        .read(&reads)?
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let checked = serde_json::from_slice::<AllocationBlock>(&kv.value)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    b.validate(keys::block_cidr_of(&kv.key).as_ref())
                        .map(|()| b)
                });
            checked
                .map_err(|why| log::warn!("GC: block {} skipped: {why}", kv.key))
                .ok()
        })
        .collect();
    for c in &mut out {
        for b in &blocks {
            for (ip, attr) in block::allocations_of(b, &c.handle) {
                if attr.owner("node") != Some(node) {
                    continue;
                }
                c.addresses.push(ip);
                let at = attr.owner("timestamp").and_then(time::parse_go_utc_string);
                c.allocated_at = c.allocated_at.max(at);
            }
        }
    }
    out.retain(|c| !c.addresses.is_empty());
    Ok(out)
}

/// Releases a candidate's allocations on this node, with the caller's writes (`with`) in
/// the same transaction.
pub fn release(
    ipam: &Ipam<'_>,
    c: &Candidate,
    extra_keys: &[String],
    with: &mut CommitWith<'_, IpAddr>,
) -> Result<Vec<IpAddr>, IpamError> {
    let snap = ipam.read_snapshot(&SnapshotRequest {
        handles: &[&c.handle],
        keys: extra_keys,
        ..SnapshotRequest::default()
    })?;
    let node = ipam.node().to_string();
    ipam.release_handles_with(&snap, Some(&node), &mut |ips, s| with(ips, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn cand(at: Option<u64>) -> Candidate {
        Candidate {
            handle: "net.c1".into(),
            container_id: "c1".into(),
            addresses: vec!["10.0.0.1".parse().expect("ip")],
            allocated_at: at.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        }
    }

    #[test]
    fn handles_of_other_networks_are_never_taken_for_ours() {
        assert_eq!(container_of("net", "net.abc"), Some("abc"));
        assert_eq!(container_of("net", "net.x.abc"), None, "network net.x");
        assert_eq!(container_of("net", "netx.abc"), None);
        assert_eq!(container_of("net", "net."), None);
        assert_eq!(container_of("net", "other.abc"), None);
    }

    #[test]
    fn the_kernel_and_the_grace_period_both_keep_an_allocation() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let dead = |_: &Candidate| Ok(false);
        let live = |_: &Candidate| Ok(true);
        let l = Liveness {
            alive: &dead,
            grace: Duration::from_secs(60),
            now,
        };
        assert_eq!(l.judge(&cand(Some(990))), Ok(Verdict::TooYoung));
        assert_eq!(l.judge(&cand(Some(2000))), Ok(Verdict::TooYoung), "future");
        assert_eq!(l.judge(&cand(Some(900))), Ok(Verdict::Stale));
        assert_eq!(l.judge(&cand(None)), Ok(Verdict::Stale), "no timestamp");
        let l = Liveness { alive: &live, ..l };
        assert_eq!(l.judge(&cand(Some(10))), Ok(Verdict::Alive));
        let l = Liveness {
            alive: &dead,
            grace: Duration::ZERO,
            now,
        };
        assert_eq!(l.judge(&cand(Some(999))), Ok(Verdict::Stale));
    }
}
