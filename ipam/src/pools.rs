//! Which pools an allocation may use, and in which order their blocks are tried.
//!
//! A stored pool IPAM cannot use (an unparsable CIDR or selector, a block size out of range,
//! being deleted) is an [`UnusablePool`]: it is left out of every choice, so one bad pool
//! anywhere in the datastore never stops allocations from the others; a request that names
//! it gets the reason.

use crate::error::IpamError;
use calico_datastore::model::IpPool;
use calico_selector::Selector;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Whether a pool of `cidr` with blocks of `block_size` would overlap an existing block of
/// another size in the same family (`clientv3/ippool.go`: "IPPool blocksSize conflicts with
/// existing allocations that use a different blockSize"): blocks never change size.
pub fn block_size_conflict(cidr: &IpNet, block_size: u8, blocks: &[IpNet]) -> bool {
    blocks.iter().any(|b| {
        b.prefix_len() != block_size
            && matches!(
                (b, cidr),
                (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
            )
            && (b.contains(&cidr.network()) || cidr.contains(&b.network()))
    })
}

/// An IP pool as IPAM uses it: defaults applied, CIDR and selectors parsed.
#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub cidr: IpNet,
    pub block_size: u8,
    pub disabled: bool,
    pub automatic: bool,
    pub allows_workloads: bool,
    /// `allowedUses` holds `Tunnel` (the nodes' IPIP/VXLAN tunnel addresses).
    pub allows_tunnel: bool,
    pub node_selector: Selector,
    pub namespace_selector: Selector,
}

/// A stored pool IPAM cannot use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusablePool {
    pub name: String,
    /// Its CIDR, if that much parses (so a request naming the CIDR finds it).
    pub cidr: Option<IpNet>,
    pub reason: String,
    /// The pool itself is malformed (rather than being deleted or not allocatable): a
    /// request naming it is a configuration error.
    pub invalid: bool,
}

impl Pool {
    /// Reads a stored pool; an [`UnusablePool`] for one IPAM cannot use at all (bad CIDR or
    /// selector, block size out of range, being deleted, marked not allocatable).
    pub fn from_resource(p: &IpPool) -> Result<Pool, UnusablePool> {
        let spec = p.spec.with_defaults();
        let name = p.metadata.name.clone();
        let unusable = |cidr: Option<IpNet>, reason: String, invalid: bool| UnusablePool {
            name: name.clone(),
            cidr,
            reason,
            invalid,
        };
        let Some(cidr) = spec.network() else {
            return Err(unusable(
                None,
                format!("has an invalid cidr {:?}", spec.cidr),
                true,
            ));
        };
        // Calico's pool validation (validator.go validateIPPool; our calicoctl validate.rs)
        // allows IPv4 blocks /20../32 and IPv6 /116../128 only; a block of another size would
        // be refused by block validation after it was claimed, costing a block per pod.
        let (lo, hi) = match cidr {
            IpNet::V4(_) => (20, 32),
            IpNet::V6(_) => (116, 128),
        };
        if !(lo..=hi).contains(&spec.block_size) {
            return Err(unusable(
                Some(cidr),
                format!(
                    "has a blockSize ({}) outside Calico's {lo}..={hi}",
                    spec.block_size
                ),
                true,
            ));
        }
        if spec.block_size < cidr.prefix_len() {
            return Err(unusable(
                Some(cidr),
                format!(
                    "has a blockSize ({}) outside {}..={}",
                    spec.block_size,
                    cidr.prefix_len(),
                    cidr.max_prefix_len()
                ),
                true,
            ));
        }
        let node_selector = Selector::parse(&spec.node_selector).map_err(|e| {
            unusable(
                Some(cidr),
                format!("has an invalid nodeSelector: {e}"),
                true,
            )
        })?;
        let namespace_selector = Selector::parse(&spec.namespace_selector).map_err(|e| {
            unusable(
                Some(cidr),
                format!("has an invalid namespaceSelector: {e}"),
                true,
            )
        })?;
        if p.metadata.extra.contains_key("deletionTimestamp") {
            return Err(unusable(Some(cidr), "is being deleted".into(), false));
        }
        let not_allocatable = p
            .status
            .as_ref()
            .and_then(|s| s.get("conditions"))
            .and_then(|c| c.as_array())
            .is_some_and(|conds| {
                conds
                    .iter()
                    .any(|c| c["type"] == "Allocatable" && c["status"] == "False")
            });
        if not_allocatable {
            return Err(unusable(
                Some(cidr),
                "is not allocatable (status condition Allocatable is False)".into(),
                false,
            ));
        }
        Ok(Pool {
            name,
            cidr,
            block_size: spec.block_size,
            disabled: spec.disabled,
            automatic: spec.assignment_mode.as_deref() != Some("Manual"),
            allows_workloads: spec.allowed_uses.iter().any(|u| u == "Workload"),
            allows_tunnel: spec.allowed_uses.iter().any(|u| u == "Tunnel"),
            node_selector,
            namespace_selector,
        })
    }

    pub fn is_v4(&self) -> bool {
        matches!(self.cidr, IpNet::V4(_))
    }

    /// The block containing `ip`.
    pub fn block_of(&self, ip: IpAddr) -> Option<IpNet> {
        IpNet::new(ip, self.block_size).ok().map(|n| n.trunc())
    }

    /// Number of blocks in the pool (saturating).
    pub fn block_count(&self) -> u128 {
        1u128
            .checked_shl(u32::from(self.block_size - self.cidr.prefix_len()))
            .unwrap_or(u128::MAX)
    }

    /// Block `i` of the pool.
    pub fn block_at(&self, i: u128) -> Option<IpNet> {
        let host_bits = u32::from(self.cidr.max_prefix_len() - self.block_size);
        let base = match self.cidr.network() {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        let addr = base.checked_add(i.checked_shl(host_bits)?)?;
        let ip = if self.is_v4() {
            IpAddr::V4(u32::try_from(addr).ok()?.into())
        } else {
            IpAddr::V6(addr.into())
        };
        IpNet::new(ip, self.block_size).ok()
    }

    /// The pool's blocks starting at a per-node offset and wrapping around, so nodes claiming
    /// at the same time start far apart (Calico seeds the start with FNV-1 of the host name;
    /// the property, not Go's exact sequence, is what matters).
    pub fn blocks_from_node_offset(&self, node: &str) -> impl Iterator<Item = IpNet> + '_ {
        let n = self.block_count();
        let start = if n == 0 {
            0
        } else {
            spread(fnv1_32(node.as_bytes())) % n
        };
        (0..n).filter_map(move |k| self.block_at((start + k) % n))
    }
}

/// 32-bit FNV-1 (multiply, then xor), Calico's seed for the start block.
pub fn fnv1_32(data: &[u8]) -> u32 {
    data.iter().fold(2_166_136_261u32, |h, b| {
        h.wrapping_mul(16_777_619) ^ u32::from(*b)
    })
}

/// Spreads a 32-bit seed over 128 bits (splitmix64 twice), so large pools use all of it.
fn spread(seed: u32) -> u128 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let a = mix(u64::from(seed));
    let b = mix(a);
    (u128::from(a) << 64) | u128::from(b)
}

/// What an allocation is for: a pool serves it only if its `allowedUses` lists it (Go's
/// `IPPoolAllowedUse`, `filterPoolsByUse`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PoolUse {
    /// A pod's address.
    #[default]
    Workload,
    /// A node's IPIP or VXLAN tunnel address (calico-node's `allocateip`).
    Tunnel,
}

impl PoolUse {
    /// Calico's name of the use, as `allowedUses` spells it.
    pub fn name(self) -> &'static str {
        match self {
            PoolUse::Workload => "Workload",
            PoolUse::Tunnel => "Tunnel",
        }
    }

    /// Whether `pool` may serve this use.
    pub fn allowed_by(self, pool: &Pool) -> bool {
        match self {
            PoolUse::Workload => pool.allows_workloads,
            PoolUse::Tunnel => pool.allows_tunnel,
        }
    }
}

/// Chooses the pools for one family, for pods' addresses ([`choose_for`] with
/// [`PoolUse::Workload`]).
pub fn choose<'p>(
    pools: &'p [Pool],
    unusable: &[UnusablePool],
    requested: &[String],
    v4: bool,
    node: &str,
    node_labels: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<Vec<&'p Pool>, IpamError> {
    choose_for(
        PoolUse::Workload,
        pools,
        unusable,
        requested,
        v4,
        node,
        node_labels,
        namespace_labels,
    )
}

/// Chooses the pools for one family and one use.
///
/// Requested pools (names or CIDRs, from the config or annotations) are used as given, in
/// the order given, selectors ignored, but they must exist, be usable (not in `unusable`),
/// be enabled and allow workloads. Otherwise every enabled `Automatic` pool of the family whose node selector matches the
/// node's labels and whose namespace selector matches the namespace's, in name order. Either
/// way a pool must allow the use.
#[allow(clippy::too_many_arguments)]
pub fn choose_for<'p>(
    usage: PoolUse,
    pools: &'p [Pool],
    unusable: &[UnusablePool],
    requested: &[String],
    v4: bool,
    node: &str,
    node_labels: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<Vec<&'p Pool>, IpamError> {
    let family = if v4 { "IPv4" } else { "IPv6" };
    if !requested.is_empty() {
        let mut out = Vec::new();
        for want in requested {
            let as_cidr = want.parse::<IpNet>().ok().map(|n| n.trunc());
            let found = pools
                .iter()
                .find(|p| p.name == *want || Some(p.cidr) == as_cidr);
            let Some(p) = found else {
                let bad = unusable
                    .iter()
                    .find(|u| u.name == *want || (as_cidr.is_some() && u.cidr == as_cidr));
                return Err(match bad {
                    Some(u) if u.invalid => IpamError::PoolInvalid {
                        pool: want.clone(),
                        reason: format!("pool {} {}", u.name, u.reason),
                    },
                    Some(u) => IpamError::PoolNotUsable {
                        pool: want.clone(),
                        reason: u.reason.clone(),
                    },
                    None => IpamError::PoolNotUsable {
                        pool: want.clone(),
                        reason: "does not exist".into(),
                    },
                });
            };
            if p.disabled {
                return Err(IpamError::PoolNotUsable {
                    pool: want.clone(),
                    reason: "is not enabled (disabled: true)".into(),
                });
            }
            if p.is_v4() != v4 {
                return Err(IpamError::PoolNotUsable {
                    pool: want.clone(),
                    reason: format!("is not an {family} pool"),
                });
            }
            if !usage.allowed_by(p) {
                return Err(IpamError::PoolNotUsable {
                    pool: want.clone(),
                    reason: format!("does not allow {} use", usage.name()),
                });
            }
            out.push(p);
        }
        return Ok(out);
    }
    let chosen: Vec<&Pool> = pools
        .iter()
        .filter(|p| p.is_v4() == v4 && !p.disabled && p.automatic && usage.allowed_by(p))
        .filter(|p| p.node_selector.matches(node_labels))
        .filter(|p| p.namespace_selector.matches(namespace_labels))
        .collect();
    if chosen.is_empty() {
        return Err(IpamError::NoPools {
            family,
            node: node.to_string(),
        });
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_datastore::model::{IpPoolSpec, Resource};
    use serde_json::json;

    fn pool(name: &str, f: impl FnOnce(&mut IpPoolSpec), cidr: &str) -> Pool {
        let mut spec = IpPoolSpec::for_cidr(cidr);
        f(&mut spec);
        Pool::from_resource(&Resource::new("IPPool", name, spec)).expect("usable")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn automatic_choice_filters_family_state_use_and_selectors() {
        let pools = vec![
            pool("a-v4", |_| {}, "10.1.0.0/16"),
            pool("b-disabled", |s| s.disabled = true, "10.2.0.0/16"),
            pool(
                "c-manual",
                |s| s.assignment_mode = Some("Manual".into()),
                "10.3.0.0/16",
            ),
            pool(
                "d-tunnel",
                |s| s.allowed_uses = vec!["Tunnel".into()],
                "10.4.0.0/16",
            ),
            pool(
                "e-zone",
                |s| s.node_selector = "zone == 'a'".into(),
                "10.5.0.0/16",
            ),
            pool("f-v6", |_| {}, "fd00::/48"),
            pool(
                "g-ns",
                |s| s.namespace_selector = "team == 'x'".into(),
                "10.7.0.0/16",
            ),
        ];
        let none = BTreeMap::new();
        let names = |ps: Vec<&Pool>| ps.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        let got = choose(&pools, &[], &[], true, "n1", &none, &none).expect("pools");
        assert_eq!(names(got), ["a-v4"]);
        let got = choose(
            &pools,
            &[],
            &[],
            true,
            "n1",
            &labels(&[("zone", "a")]),
            &labels(&[("team", "x")]),
        )
        .expect("pools");
        assert_eq!(names(got), ["a-v4", "e-zone", "g-ns"]);
        let got = choose(&pools, &[], &[], false, "n1", &none, &none).expect("pools");
        assert_eq!(names(got), ["f-v6"]);
        let e = choose(&pools[1..5], &[], &[], false, "n1", &none, &none).expect_err("none");
        assert!(
            e.to_string()
                .contains("no configured Calico IPv6 pools for node n1"),
            "{e}"
        );
    }

    #[test]
    fn requested_pools_by_name_or_cidr_ignore_selectors() {
        let pools = vec![
            pool(
                "manual",
                |s| s.assignment_mode = Some("Manual".into()),
                "10.3.0.0/16",
            ),
            pool(
                "zone",
                |s| s.node_selector = "zone == 'b'".into(),
                "10.5.0.0/16",
            ),
            pool("off", |s| s.disabled = true, "10.6.0.0/16"),
            pool("v6", |_| {}, "fd00::/48"),
        ];
        let none = BTreeMap::new();
        let got = choose(
            &pools,
            &[],
            &["10.5.0.0/16".into(), "manual".into()],
            true,
            "n",
            &none,
            &none,
        )
        .expect("pools");
        assert_eq!(got[0].name, "zone");
        assert_eq!(got[1].name, "manual");
        for (bad, why) in [
            ("off", "is not enabled"),
            ("missing", "does not exist"),
            ("v6", "not an IPv4"),
        ] {
            let e = choose(&pools, &[], &[bad.into()], true, "n", &none, &none).expect_err(bad);
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    /// Mirrors ipam.go `filterPoolsByUse`: a tunnel address comes only from pools whose
    /// `allowedUses` lists `Tunnel`, requested or chosen.
    #[test]
    fn tunnel_use_needs_pools_that_allow_it() {
        let pools = vec![
            pool("both", |_| {}, "10.1.0.0/16"),
            pool(
                "pods",
                |s| s.allowed_uses = vec!["Workload".into()],
                "10.2.0.0/16",
            ),
            pool(
                "tunnels",
                |s| s.allowed_uses = vec!["Tunnel".into()],
                "10.3.0.0/16",
            ),
        ];
        let none = BTreeMap::new();
        let names = |ps: Vec<&Pool>| ps.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        let got = choose_for(PoolUse::Tunnel, &pools, &[], &[], true, "n", &none, &none);
        assert_eq!(names(got.expect("pools")), ["both", "tunnels"]);
        let e = choose_for(
            PoolUse::Tunnel,
            &pools,
            &[],
            &["pods".into()],
            true,
            "n",
            &none,
            &none,
        )
        .expect_err("not for tunnels");
        assert!(e.to_string().contains("does not allow Tunnel use"), "{e}");
        let got = choose(&pools, &[], &[], true, "n", &none, &none).expect("pools");
        assert_eq!(names(got), ["both", "pods"]);
    }

    #[test]
    fn unusable_pools_are_dropped_on_read() {
        let mut spec = IpPoolSpec::for_cidr("10.0.0.0/16");
        spec.block_size = 12;
        let e = Pool::from_resource(&Resource::new("IPPool", "p", spec)).expect_err("size");
        assert!(e.invalid && e.reason.contains("blockSize"), "{e:?}");
        let mut r = Resource::new("IPPool", "p", IpPoolSpec::for_cidr("10.0.0.0/16"));
        r.status = Some(json!({"conditions":[{"type":"Allocatable","status":"False"}]}));
        let e = Pool::from_resource(&r).expect_err("not allocatable");
        assert!(!e.invalid, "{e:?}");
        let mut r = Resource::new("IPPool", "p", IpPoolSpec::for_cidr("10.0.0.0/16"));
        r.metadata
            .extra
            .insert("deletionTimestamp".into(), json!("2026-01-01T00:00:00Z"));
        assert!(Pool::from_resource(&r).is_err());
    }

    /// Issue 12 #2: a pool whose selector cannot be parsed (here nested 10k deep) is left
    /// out of the automatic choice without stopping it; a request naming it, by name or
    /// CIDR, gets code 7 with the reason.
    #[test]
    fn a_pool_with_an_unparsable_selector_is_skipped_and_named_requests_fail() {
        let mut spec = IpPoolSpec::for_cidr("10.9.0.0/24");
        spec.node_selector = format!("{}all(){}", "(".repeat(10_000), ")".repeat(10_000));
        let deep = Pool::from_resource(&Resource::new("IPPool", "deep", spec)).expect_err("deep");
        assert!(deep.invalid, "{deep:?}");
        assert!(deep.reason.contains("nested too deeply"), "{deep:?}");
        assert!(
            deep.reason.len() < 500,
            "the reason cuts the selector short"
        );
        let pools = vec![pool("good", |_| {}, "10.1.0.0/16")];
        let unusable = vec![deep];
        let none = BTreeMap::new();
        let got = choose(&pools, &unusable, &[], true, "n", &none, &none).expect("pools");
        assert_eq!(got.len(), 1);
        for want in ["deep", "10.9.0.0/24"] {
            let e =
                choose(&pools, &unusable, &[want.into()], true, "n", &none, &none).expect_err(want);
            assert!(e.to_string().contains("nodeSelector"), "{e}");
            let cni = cni_protocol::CniError::from(e);
            assert_eq!(cni.code, cni_protocol::ErrorCode::INVALID_NETWORK_CONFIG);
        }
    }

    #[test]
    fn block_walk_covers_every_block_once_from_a_node_offset() {
        let p = pool("p", |s| s.block_size = 26, "10.0.0.0/22");
        assert_eq!(p.block_count(), 16);
        let walk: Vec<IpNet> = p.blocks_from_node_offset("node-a").collect();
        assert_eq!(walk.len(), 16);
        let mut sorted = walk.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 16);
        assert!(
            walk.iter()
                .all(|b| b.prefix_len() == 26 && p.cidr.contains(b))
        );
        // Different nodes start at different places (for these names).
        let starts: std::collections::BTreeSet<IpNet> = ["node-a", "node-b", "node-c", "node-d"]
            .iter()
            .filter_map(|n| p.blocks_from_node_offset(n).next())
            .collect();
        assert!(starts.len() >= 3, "{starts:?}");
        // A huge IPv6 pool is walked lazily.
        let big = pool("v6", |_| {}, "fd00::/48");
        assert_eq!(big.block_count(), 1 << 74);
        assert_eq!(big.blocks_from_node_offset("n").take(3).count(), 3);
        assert_eq!(fnv1_32(b""), 2_166_136_261);
        assert_eq!(fnv1_32(b"a"), 0x050c_5d7e);
    }

    /// Mirrors clientv3/ippool.go's check of existing blocks against a pool's blockSize.
    #[test]
    fn blocks_of_another_size_inside_the_pool_conflict() {
        let net = |s: &str| s.parse::<IpNet>().expect("cidr");
        let pool = net("10.244.0.0/16");
        let blocks = [net("10.244.1.0/26"), net("fd00::/122")];
        assert!(!block_size_conflict(&pool, 26, &blocks));
        assert!(block_size_conflict(&pool, 24, &blocks));
        // Another family, or outside the pool: no conflict.
        assert!(!block_size_conflict(&net("10.0.0.0/16"), 24, &blocks));
        assert!(!block_size_conflict(&net("fd01::/64"), 120, &blocks));
        assert!(block_size_conflict(&net("fd00::/64"), 120, &blocks));
        // A pool inside a bigger block still overlaps it.
        assert!(block_size_conflict(&net("10.244.1.0/28"), 28, &blocks));
    }
}
