//! Block maths and the allocation rules inside one block, on Calico's block model: pure
//! functions, no datastore.
//!
//! Addresses are taken from the head of `unallocated` and released to its tail, so the
//! address free longest is reused first. All addresses of one owner in one call share one
//! attribute entry; identical entries are shared.
//!
//! Calico 3.33's IP cooldown: a released address can instead point at an entry holding
//! only `releasedAt`; it stays taken until [`collect_cooled`] frees it once the cooldown has
//! passed (`ipam_block.go` `releaseByHandle`, `release`, `garbageCollect`).

use calico_datastore::model::time::{parse_rfc3339, rfc3339_seconds, unix_nanos};
use calico_datastore::model::{AllocationAttribute, AllocationBlock};
use ipnet::IpNet;
use serde_json::Map;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

/// The handle of the addresses Calico reserves in the blocks of Windows nodes (Go's
/// `WindowsReservedHandle`): they do not keep a block in use (see [`is_empty`]).
pub const WINDOWS_RESERVED_HANDLE: &str = "windows-reserved-ipam-handle";

/// The owner recorded with an allocation: its handle and attributes (`node`, `namespace`,
/// `pod`, `timestamp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub handle: String,
    pub attrs: BTreeMap<String, String>,
}

/// Addresses in a block of this CIDR (2^(bits - prefix)).
pub fn capacity(cidr: &IpNet) -> usize {
    let host_bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
    1usize.checked_shl(host_bits).unwrap_or(usize::MAX)
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v4: bool, n: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(u32::try_from(n).unwrap_or(u32::MAX).into())
    } else {
        IpAddr::V6(n.into())
    }
}

/// The position of `ip` in the block, if it is inside.
pub fn ordinal(cidr: &IpNet, ip: IpAddr) -> Option<usize> {
    if !cidr.contains(&ip) {
        return None;
    }
    usize::try_from(to_u128(ip) - to_u128(cidr.network())).ok()
}

/// The address at `ord`.
pub fn address(cidr: &IpNet, ord: usize) -> IpAddr {
    from_u128(
        matches!(cidr, IpNet::V4(_)),
        to_u128(cidr.network()) + ord as u128,
    )
}

/// `ip` with the block's prefix length (what IPAM returns, e.g. `10.244.1.5/26`).
pub fn with_block_mask(cidr: &IpNet, ip: IpAddr) -> IpNet {
    IpNet::new(ip, cidr.prefix_len()).unwrap_or_else(|_| IpNet::from(ip))
}

/// `host:<node>`, the affinity string of a node.
pub fn host_affinity(node: &str) -> String {
    format!("host:{node}")
}

/// A new block affine to `node`, every ordinal free in order.
pub fn new_block(cidr: IpNet, node: &str, now: SystemTime) -> AllocationBlock {
    let n = capacity(&cidr);
    AllocationBlock {
        cidr,
        affinity: Some(host_affinity(node)),
        affinity_claim_time: Some(rfc3339_seconds(now)),
        allocations: vec![None; n],
        unallocated: (0..n).collect(),
        attributes: None,
        sequence_number: unix_nanos(now),
        sequence_number_for_allocation: BTreeMap::new(),
        deleted: false,
        host_affinity: None,
        extra: Map::new(),
    }
}

/// The node a block is affine to, if any.
pub fn affine_node(block: &AllocationBlock) -> Option<&str> {
    block
        .affinity
        .as_deref()
        .and_then(|a| a.strip_prefix("host:"))
}

pub fn in_use(block: &AllocationBlock) -> usize {
    block.allocations.iter().filter(|a| a.is_some()).count()
}

/// Calico's `allocationBlock.empty()` (`ipam_block.go`): no allocation is left but
/// Windows-reserved ones (handle [`WINDOWS_RESERVED_HANDLE`], any case). An address in its
/// 3.33 cooldown has no handle, so it keeps the block in use.
pub fn is_empty(block: &AllocationBlock) -> bool {
    let attrs = block.attributes.as_deref().unwrap_or_default();
    block.allocations.iter().flatten().all(|i| {
        attrs
            .get(*i)
            .and_then(AllocationAttribute::handle)
            .is_some_and(|h| h.eq_ignore_ascii_case(WINDOWS_RESERVED_HANDLE))
    })
}

/// How many allocations each handle still holds in the block: what the handles lose when
/// the block is deleted or made anew (in an empty block, only Windows-reserved ones).
pub fn handle_counts(block: &AllocationBlock) -> BTreeMap<String, i64> {
    let attrs = block.attributes.as_deref().unwrap_or_default();
    let mut counts = BTreeMap::new();
    for i in block.allocations.iter().flatten() {
        if let Some(h) = attrs.get(*i).and_then(AllocationAttribute::handle) {
            *counts.entry(h.to_string()).or_default() += 1;
        }
    }
    counts
}

/// Free addresses that are not reserved.
pub fn free(block: &AllocationBlock, reserved: &impl Fn(IpAddr) -> bool) -> usize {
    block
        .unallocated
        .iter()
        .filter(|o| !reserved(address(&block.cidr, **o)))
        .count()
}

/// The index of an attribute entry equal to `owner`'s, added if missing. Equal means the
/// whole entry, as Go's `findOrAddAttribute` compares it: an entry with alternate owner
/// attributes or a `releasedAt` is never shared with a new allocation.
fn attribute_index(block: &mut AllocationBlock, owner: &Owner) -> usize {
    let wanted = AllocationAttribute::new(&owner.handle, owner.attrs.clone());
    let attrs = block.attributes.get_or_insert_with(Vec::new);
    if let Some(i) = attrs.iter().position(|a| {
        a.handle_id == wanted.handle_id
            && a.secondary == wanted.secondary
            && a.alternate_owner_attrs
                .as_ref()
                .is_none_or(BTreeMap::is_empty)
            && a.extra.is_empty()
    }) {
        return i;
    }
    attrs.push(wanted);
    attrs.len() - 1
}

fn record(block: &mut AllocationBlock, ord: usize, attr: usize) {
    if let Some(slot) = block.allocations.get_mut(ord) {
        *slot = Some(attr);
    }
    block
        .sequence_number_for_allocation
        .insert(ord.to_string(), block.sequence_number);
}

/// Takes up to `n` free, unreserved addresses from the head of `unallocated` for `owner`.
pub fn assign_next(
    block: &mut AllocationBlock,
    n: usize,
    owner: &Owner,
    reserved: &impl Fn(IpAddr) -> bool,
) -> Vec<IpAddr> {
    let mut taken = Vec::new();
    let mut kept = Vec::with_capacity(block.unallocated.len());
    for ord in std::mem::take(&mut block.unallocated) {
        if taken.len() < n && !reserved(address(&block.cidr, ord)) {
            taken.push(ord);
        } else {
            kept.push(ord);
        }
    }
    block.unallocated = kept;
    if taken.is_empty() {
        return Vec::new();
    }
    let attr = attribute_index(block, owner);
    taken
        .into_iter()
        .map(|ord| {
            record(block, ord, attr);
            address(&block.cidr, ord)
        })
        .collect()
}

/// Why a specific address cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecificError {
    NotInBlock,
    AlreadyAssigned,
}

/// Takes `ip` for `owner` if it is free.
pub fn assign_specific(
    block: &mut AllocationBlock,
    ip: IpAddr,
    owner: &Owner,
) -> Result<(), SpecificError> {
    let ord = ordinal(&block.cidr, ip).ok_or(SpecificError::NotInBlock)?;
    let Some(pos) = block.unallocated.iter().position(|o| *o == ord) else {
        return Err(SpecificError::AlreadyAssigned);
    };
    block.unallocated.remove(pos);
    let attr = attribute_index(block, owner);
    record(block, ord, attr);
    Ok(())
}

/// The attribute entry of the allocation at `ip`, unless the address is free or in its
/// cooldown (Go's `allocationAttributesForIP`).
pub fn attribute_of(block: &AllocationBlock, ip: IpAddr) -> Option<&AllocationAttribute> {
    let ord = ordinal(&block.cidr, ip)?;
    let idx = (*block.allocations.get(ord)?)?;
    let attr = block.attributes.as_ref()?.get(idx)?;
    attr.released_at().is_none().then_some(attr)
}

/// Which owner attributes of an allocation: `secondary` (the pod using the address) or
/// `alternateOwnerAttrs` (a KubeVirt migration target waiting to take it over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerRole {
    Active,
    Alternate,
}

/// Sets (or, with `None`, clears) one owner of the allocation at `ip`, which must belong to
/// `handle`, in place, as Go's `setOwnerAttributes` does (an entry shared by several
/// addresses changes for all of them). False if `ip` is not `handle`'s.
pub fn set_owner(
    block: &mut AllocationBlock,
    ip: IpAddr,
    handle: &str,
    role: OwnerRole,
    attrs: Option<BTreeMap<String, String>>,
) -> bool {
    let Some(idx) =
        ordinal(&block.cidr, ip).and_then(|o| block.allocations.get(o).copied().flatten())
    else {
        return false;
    };
    let Some(attr) = block.attributes.as_mut().and_then(|a| a.get_mut(idx)) else {
        return false;
    };
    if attr.handle() != Some(handle) || attr.released_at().is_some() {
        return false;
    }
    match role {
        OwnerRole::Active => attr.secondary = attrs,
        OwnerRole::Alternate => attr.alternate_owner_attrs = attrs,
    }
    true
}

/// The addresses `handle` holds in the block.
pub fn addresses_of(block: &AllocationBlock, handle: &str) -> Vec<IpAddr> {
    allocations_of(block, handle)
        .into_iter()
        .map(|(ip, _)| ip)
        .collect()
}

/// The addresses `handle` holds in the block, each with its attribute.
pub fn allocations_of<'b>(
    block: &'b AllocationBlock,
    handle: &str,
) -> Vec<(IpAddr, &'b AllocationAttribute)> {
    let attrs = block.attributes.as_deref().unwrap_or_default();
    block
        .allocations
        .iter()
        .enumerate()
        .filter_map(|(ord, a)| {
            let attr = attrs.get((*a)?)?;
            (attr.handle() == Some(handle)).then(|| (address(&block.cidr, ord), attr))
        })
        .collect()
}

/// Frees the ordinals for which `select(ord, attribute)` is true; returns the freed
/// addresses with the handle each belonged to. Unreferenced attributes are dropped and the
/// rest renumbered, as Calico does.
pub fn release_where(
    block: &mut AllocationBlock,
    select: impl Fn(usize, Option<&AllocationAttribute>) -> bool,
) -> Vec<(IpAddr, Option<String>)> {
    let attrs = block.attributes.clone().unwrap_or_default();
    let mut freed = Vec::new();
    for ord in 0..block.allocations.len() {
        let Some(idx) = block.allocations[ord] else {
            continue;
        };
        let attr = attrs.get(idx);
        // An address in its 3.33 cooldown is released already.
        if attr.is_none_or(|a| a.released_at().is_none()) && select(ord, attr) {
            block.allocations[ord] = None;
            block.unallocated.push(ord);
            block
                .sequence_number_for_allocation
                .remove(&ord.to_string());
            freed.push((
                address(&block.cidr, ord),
                attr.and_then(|a| a.handle()).map(str::to_string),
            ));
        }
    }
    if !freed.is_empty() {
        compact_attributes(block);
    }
    freed
}

/// Calico 3.33's release with a cooldown: the ordinals for which `select(ord, attribute)` is
/// true are moved to one new entry holding only `releasedAt = now` and stay taken until
/// [`collect_cooled`] frees them. `mark_sequence` records the block's sequence number for
/// them (Go's release by address does, its release by handle does not). Returns the
/// addresses with the handle each belonged to.
pub fn release_into_cooldown(
    block: &mut AllocationBlock,
    select: impl Fn(usize, Option<&AllocationAttribute>) -> bool,
    now: SystemTime,
    mark_sequence: bool,
) -> Vec<(IpAddr, Option<String>)> {
    let attrs = block.attributes.clone().unwrap_or_default();
    let mut freed = Vec::new();
    let mut cooldown_index = None;
    for ord in 0..block.allocations.len() {
        let Some(idx) = block.allocations[ord] else {
            continue;
        };
        let attr = attrs.get(idx);
        if attr.is_some_and(|a| a.released_at().is_some()) || !select(ord, attr) {
            continue;
        }
        let target = *cooldown_index.get_or_insert_with(|| {
            let list = block.attributes.get_or_insert_with(Vec::new);
            list.push(AllocationAttribute::released(rfc3339_seconds(now)));
            list.len() - 1
        });
        block.allocations[ord] = Some(target);
        if mark_sequence {
            block
                .sequence_number_for_allocation
                .insert(ord.to_string(), block.sequence_number);
        }
        freed.push((
            address(&block.cidr, ord),
            attr.and_then(|a| a.handle()).map(str::to_string),
        ));
    }
    freed
}

/// Calico 3.33's `garbageCollect`: frees every address whose `releasedAt` is more than
/// `cooldown_seconds` before `now` (any, if negative; an unreadable time counts as long
/// ago), in ordinal order to the tail of `unallocated`, then drops the entries nothing
/// points at. True if the block changed.
pub fn collect_cooled(block: &mut AllocationBlock, cooldown_seconds: i64, now: SystemTime) -> bool {
    let Some(attrs) = block.attributes.as_ref() else {
        return false;
    };
    if !attrs.iter().any(|a| a.released_at().is_some()) {
        return false;
    }
    let deadline = now.checked_sub(std::time::Duration::from_secs(
        u64::try_from(cooldown_seconds).unwrap_or(0),
    ));
    let cooled = |a: &AllocationAttribute| match a.released_at() {
        None => false,
        Some(_) if cooldown_seconds < 0 => true,
        Some(t) => match (parse_rfc3339(t), deadline) {
            (Some(at), Some(deadline)) => at < deadline,
            (None, _) => true,
            (Some(_), None) => false,
        },
    };
    let expired: Vec<bool> = attrs.iter().map(cooled).collect();
    let mut changed = false;
    for ord in 0..block.allocations.len() {
        if let Some(idx) = block.allocations[ord]
            && expired.get(idx).copied().unwrap_or(false)
        {
            block.allocations[ord] = None;
            block.unallocated.push(ord);
            block
                .sequence_number_for_allocation
                .remove(&ord.to_string());
            changed = true;
        }
    }
    let used = block.attributes.as_ref().map_or(0, Vec::len);
    let referenced: std::collections::BTreeSet<usize> =
        block.allocations.iter().flatten().copied().collect();
    if referenced.len() < used {
        compact_attributes(block);
        changed = true;
    }
    changed
}

/// Releases everything `handle` holds in the block.
pub fn release_handle(block: &mut AllocationBlock, handle: &str) -> Vec<IpAddr> {
    release_where(block, |_, a| a.and_then(|a| a.handle()) == Some(handle))
        .into_iter()
        .map(|(ip, _)| ip)
        .collect()
}

/// Drops attribute entries no allocation points at and renumbers the others (after a
/// release Calico rebuilds the list, so it is written as `[]` rather than `null`).
fn compact_attributes(block: &mut AllocationBlock) {
    let old = block.attributes.take().unwrap_or_default();
    let mut used = vec![false; old.len()];
    for a in block.allocations.iter().flatten() {
        if let Some(u) = used.get_mut(*a) {
            *u = true;
        }
    }
    let mut new_index = vec![0; old.len()];
    let mut kept = Vec::new();
    for (i, attr) in old.into_iter().enumerate() {
        if used[i] {
            new_index[i] = kept.len();
            kept.push(attr);
        }
    }
    for a in block.allocations.iter_mut().flatten() {
        *a = new_index.get(*a).copied().unwrap_or(*a);
    }
    block.attributes = Some(kept);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn owner(h: &str) -> Owner {
        Owner {
            handle: h.into(),
            attrs: [("node".to_string(), "n1".to_string())]
                .into_iter()
                .collect(),
        }
    }

    fn none(_: IpAddr) -> bool {
        false
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_777_629_600)
    }

    #[test]
    fn block_maths() {
        let b = net("10.244.1.64/26");
        assert_eq!(capacity(&b), 64);
        assert_eq!(capacity(&net("fd00::/122")), 64);
        assert_eq!(ordinal(&b, ip("10.244.1.70")), Some(6));
        assert_eq!(ordinal(&b, ip("10.244.1.0")), None);
        assert_eq!(address(&b, 63), ip("10.244.1.127"));
        assert_eq!(address(&net("fd00::40/122"), 1), ip("fd00::41"));
        assert_eq!(
            with_block_mask(&b, ip("10.244.1.70")).to_string(),
            "10.244.1.70/26"
        );
    }

    #[test]
    fn fifo_order_and_reuse_of_the_longest_free() {
        let mut b = new_block(net("10.0.0.0/29"), "n1", t0());
        assert_eq!(b.sequence_number, 1_777_629_600_000_000_000);
        assert_eq!(
            b.affinity_claim_time.as_deref(),
            Some("2026-05-01T10:00:00Z")
        );
        let a = assign_next(&mut b, 2, &owner("a"), &none);
        assert_eq!(a, [ip("10.0.0.0"), ip("10.0.0.1")]);
        let c = assign_next(&mut b, 1, &owner("c"), &none);
        assert_eq!(c, [ip("10.0.0.2")]);
        assert_eq!(release_handle(&mut b, "a"), a);
        // Freed addresses go to the tail: the next allocation is .3, not .0.
        assert_eq!(assign_next(&mut b, 1, &owner("d"), &none), [ip("10.0.0.3")]);
        assert_eq!(&b.unallocated[b.unallocated.len() - 2..], [0, 1]);
        assert_eq!(in_use(&b), 2);
    }

    #[test]
    fn attributes_are_shared_deduplicated_and_compacted() {
        let mut b = new_block(net("10.0.0.0/29"), "n1", t0());
        assign_next(&mut b, 2, &owner("a"), &none);
        assign_next(&mut b, 1, &owner("b"), &none);
        assign_next(&mut b, 1, &owner("a"), &none);
        let attrs = b.attributes.clone().expect("attributes");
        assert_eq!(attrs.len(), 2, "identical owners share an entry");
        assert_eq!(b.allocations[..4], [Some(0), Some(0), Some(1), Some(0)]);
        release_handle(&mut b, "a");
        assert_eq!(b.allocations[2], Some(0), "b renumbered to 0");
        assert_eq!(b.attributes.as_ref().expect("attrs")[0].handle(), Some("b"));
        release_handle(&mut b, "b");
        assert_eq!(
            b.attributes,
            Some(vec![]),
            "[] after release, as Calico writes"
        );
        assert!(is_empty(&b));
    }

    #[test]
    fn sequence_numbers_record_the_block_at_allocation_time() {
        let mut b = new_block(net("10.0.0.0/30"), "n1", t0());
        b.sequence_number = 7;
        assign_next(&mut b, 1, &owner("a"), &none);
        assert_eq!(b.sequence_number_for_allocation.get("0"), Some(&7));
        release_handle(&mut b, "a");
        assert!(b.sequence_number_for_allocation.is_empty());
    }

    #[test]
    fn reserved_addresses_are_skipped_but_stay_free() {
        let mut b = new_block(net("10.0.0.0/29"), "n1", t0());
        let reserved = |a: IpAddr| a == ip("10.0.0.0") || a == ip("10.0.0.2");
        assert_eq!(free(&b, &reserved), 6);
        let got = assign_next(&mut b, 2, &owner("a"), &reserved);
        assert_eq!(got, [ip("10.0.0.1"), ip("10.0.0.3")]);
        assert_eq!(
            b.unallocated[..2],
            [0, 2],
            "skipped ordinals keep their place"
        );
    }

    #[test]
    fn specific_addresses() {
        let mut b = new_block(net("10.0.0.0/29"), "n1", t0());
        assert_eq!(assign_specific(&mut b, ip("10.0.0.5"), &owner("a")), Ok(()));
        assert_eq!(
            assign_specific(&mut b, ip("10.0.0.5"), &owner("b")),
            Err(SpecificError::AlreadyAssigned)
        );
        assert_eq!(
            assign_specific(&mut b, ip("10.0.1.5"), &owner("b")),
            Err(SpecificError::NotInBlock)
        );
        assert_eq!(addresses_of(&b, "a"), [ip("10.0.0.5")]);
        assert!(!b.unallocated.contains(&5));
    }

    /// Mirrors 3.33's ipam_block.go releaseByHandle (one releasedAt entry for the call) and
    /// garbageCollect (freed in ordinal order once older than the cooldown, entries dropped).
    #[test]
    fn cooldown_release_and_collection() {
        let mut b = new_block(net("10.0.0.0/29"), "n1", t0());
        assign_next(&mut b, 2, &owner("a"), &none);
        assign_next(&mut b, 1, &owner("b"), &none);
        let out = release_into_cooldown(
            &mut b,
            |_, a| a.and_then(|a| a.handle()) == Some("a"),
            t0(),
            false,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(b.allocations[..3], [Some(2), Some(2), Some(1)]);
        assert_eq!(
            b.attributes.as_ref().expect("attrs")[2].released_at(),
            Some("2026-05-01T10:00:00Z")
        );
        // Collected at once, as Go's release does: a's old entry is dropped.
        assert!(collect_cooled(&mut b, 30, t0()));
        assert_eq!(b.allocations[..3], [Some(1), Some(1), Some(0)]);
        assert!(addresses_of(&b, "a").is_empty());
        assert!(attribute_of(&b, ip("10.0.0.0")).is_none(), "in cooldown");
        assert!(!is_empty(&b), "a block with cooling addresses is not empty");
        // Not yet (the stored time has whole seconds; Go's Before is strict).
        assert!(!collect_cooled(&mut b, 30, t0() + Duration::from_secs(30)));
        assert!(collect_cooled(&mut b, 30, t0() + Duration::from_secs(31)));
        assert_eq!(b.allocations[..3], [None, None, Some(0)]);
        assert_eq!(&b.unallocated[b.unallocated.len() - 2..], [0, 1]);
        assert_eq!(
            b.attributes.as_ref().expect("attrs").len(),
            1,
            "the cooldown entry gone"
        );
        // A negative cooldown frees at once; releasing a cooling address does nothing.
        release_into_cooldown(&mut b, |_, _| true, t0(), true);
        assert!(release_where(&mut b, |_, _| true).is_empty());
        assert!(collect_cooled(&mut b, -1, t0()));
        assert!(is_empty(&b));
    }

    /// Mirrors ipam_block.go empty(): a block is empty when every allocation left is
    /// Windows-reserved (the handle compared case-insensitively); any other allocation, or
    /// one without a handle (an address in its cooldown), keeps it in use.
    #[test]
    fn only_windows_reserved_allocations_leave_a_block_empty() {
        let mut b = new_block(net("10.0.0.0/29"), "n1", t0());
        assert!(is_empty(&b));
        assign_next(&mut b, 2, &owner("Windows-Reserved-IPAM-Handle"), &none);
        assign_next(&mut b, 1, &owner(WINDOWS_RESERVED_HANDLE), &none);
        assert!(is_empty(&b), "only reserved addresses");
        assert_eq!(
            handle_counts(&b),
            [
                ("Windows-Reserved-IPAM-Handle".to_string(), 2),
                (WINDOWS_RESERVED_HANDLE.to_string(), 1)
            ]
            .into_iter()
            .collect()
        );
        assign_next(&mut b, 1, &owner("a"), &none);
        assert!(!is_empty(&b), "a workload's address");
        release_into_cooldown(
            &mut b,
            |_, a| a.and_then(|a| a.handle()) == Some("a"),
            t0(),
            false,
        );
        assert!(!is_empty(&b), "an address in its cooldown");
        collect_cooled(&mut b, -1, t0());
        assert!(is_empty(&b));
    }

    /// Go's findOrAddAttribute compares whole entries: one with an alternate owner (a VM's
    /// migration target) is not shared by a new allocation of the same owner.
    #[test]
    fn owner_changes_are_in_place_and_such_entries_are_not_shared() {
        let mut b = new_block(net("10.0.0.0/29"), "n1", t0());
        assign_next(&mut b, 1, &owner("vm"), &none);
        let mut alt = BTreeMap::new();
        alt.insert("pod".to_string(), "target".to_string());
        assert!(set_owner(
            &mut b,
            ip("10.0.0.0"),
            "vm",
            OwnerRole::Alternate,
            Some(alt)
        ));
        assert!(!set_owner(
            &mut b,
            ip("10.0.0.0"),
            "other",
            OwnerRole::Active,
            None
        ));
        assert!(!set_owner(
            &mut b,
            ip("10.0.0.5"),
            "vm",
            OwnerRole::Active,
            None
        ));
        assign_next(&mut b, 1, &owner("vm"), &none);
        assert_eq!(b.allocations[..2], [Some(0), Some(1)]);
        assert!(set_owner(
            &mut b,
            ip("10.0.0.0"),
            "vm",
            OwnerRole::Active,
            None
        ));
        let a = attribute_of(&b, ip("10.0.0.0")).expect("allocated");
        assert!(a.secondary.is_none() && a.alternate_owner_attrs.is_some());
    }
}
