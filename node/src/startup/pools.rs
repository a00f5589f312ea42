//! The default IP pools (Calico's `configureIPPools`): `default-ipv4-ippool` and
//! `default-ipv6-ippool`, each created only when the datastore holds no pool of its family
//! at all (disabled pools and pools for other nodes count), with a create-if-absent write:
//! when another node's start-up creates it first, theirs stands.
//!
//! The IPv4 CIDR, unless given, is Calico's choice: 192.168.0.0/16, or the first of
//! 172.16.0.0/16 ... 172.31.0.0/16 holding no host address when a host address is inside
//! 192.168.0.0/16. The IPv6 pool is made only when `CALICO_IPV6POOL_CIDR` names one (Calico
//! makes a random ULA /48 otherwise; see README's "Differences from Calico").

use super::host::HostInterface;
use super::settings::{PoolSettings, Settings};
use super::{Report, StartupError};
use calico_datastore::model::{IpPool, IpPoolSpec, keys};
use calico_datastore::{Guard, KvStore, TxnOutcome, Write};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::SystemTime;

pub const DEFAULT_IPV4_POOL: &str = "default-ipv4-ippool";
pub const DEFAULT_IPV6_POOL: &str = "default-ipv6-ippool";

/// Calico's `ipv4.GetDefaultIPv4Pool`: 192.168.0.0/16 unless a host address is inside it.
pub fn default_ipv4_cidr(interfaces: &[HostInterface]) -> IpNet {
    let host: Vec<IpAddr> = interfaces
        .iter()
        .flat_map(|i| i.addresses.iter().map(IpNet::addr))
        .collect();
    let free = |net: &IpNet| !host.iter().any(|a| net.contains(a));
    let candidate = |a, b| IpNet::new(IpAddr::V4(Ipv4Addr::new(a, b, 0, 0)), 16).ok();
    let preferred = candidate(192, 168);
    preferred
        .into_iter()
        .chain((16..=31).filter_map(|b| candidate(172, b)))
        .find(free)
        .or(preferred)
        .unwrap_or_else(|| IpNet::V4(ipnet::Ipv4Net::default()))
}

/// The pool as Calico's start-up stores it (defaults written out).
fn pool(name: &str, cidr: IpNet, s: &PoolSettings, now: SystemTime) -> IpPool {
    let mut spec = IpPoolSpec::for_cidr(&cidr.to_string());
    spec.vxlan_mode = s.vxlan.name().into();
    spec.ipip_mode = s.ipip.name().into();
    spec.nat_outgoing = s.nat_outgoing;
    spec.disable_bgp_export = s.disable_bgp_export;
    spec.block_size = s.block_size;
    spec.node_selector = s.node_selector.clone();
    spec.allowed_uses = vec!["Workload".into(), "Tunnel".into()];
    spec.assignment_mode = Some("Automatic".into());
    let mut p = IpPool::new("IPPool", name, spec);
    p.stamp_created(now);
    p
}

/// Creates the default pools that are missing. Whether each family's pool was created.
pub fn ensure_defaults(
    settings: &Settings,
    store: &dyn KvStore,
    interfaces: &[HostInterface],
    now: SystemTime,
    report: &mut Report,
) -> Result<(), StartupError> {
    if settings.ipv4_pool.is_none() && settings.ipv6_pool.is_none() {
        log::info!("no default pools to make");
        return Ok(());
    }
    let existing = store.list(&keys::resources_prefix("ippools"))?;
    let mut present = [false, false];
    for kv in &existing {
        // A pool counts by its CIDR's family, whatever else it says (Calico skips those it
        // cannot parse).
        let cidr = serde_json::from_slice::<serde_json::Value>(&kv.value)
            .ok()
            .and_then(|v| v.pointer("/spec/cidr")?.as_str()?.parse::<IpNet>().ok());
        match cidr {
            Some(IpNet::V4(_)) => present[0] = true,
            Some(IpNet::V6(_)) => present[1] = true,
            None => report.warn(format!("cannot read the CIDR of {}, skipping it", kv.key)),
        }
    }
    for (v4, name, wanted) in [
        (true, DEFAULT_IPV4_POOL, &settings.ipv4_pool),
        (false, DEFAULT_IPV6_POOL, &settings.ipv6_pool),
    ] {
        let family = if v4 { "IPv4" } else { "IPv6" };
        let Some(s) = wanted else {
            continue;
        };
        if present[usize::from(!v4)] {
            log::info!("an {family} pool exists, not making {name}");
            continue;
        }
        let cidr = match s.cidr {
            Some(c) => c,
            None => default_ipv4_cidr(interfaces),
        };
        // Blocks never change size: refuse a pool over blocks of another size.
        let blocks: Vec<IpNet> = store
            .list_keys(&keys::blocks_prefix(v4))?
            .iter()
            .filter_map(|k| keys::block_cidr_of(k))
            .collect();
        if calico_ipam::pools::block_size_conflict(&cidr, s.block_size, &blocks) {
            return Err(StartupError::Node(format!(
                "cannot make {name} ({cidr}, blocks of /{}): existing allocations in it use \
                 another block size",
                s.block_size
            )));
        }
        let key = keys::resource("ippools", name);
        let bytes = pool(name, cidr, s, now)
            .to_stored()
            .map_err(|e| StartupError::Corrupt {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        match store.txn(&[Guard::Absent(key.clone())], &[Write::Put(key, bytes)])? {
            TxnOutcome::Applied(_) => report.changed(format!(
                "created {name} ({cidr}, blocks /{}, IPIP {}, VXLAN {}, NAT outgoing {})",
                s.block_size,
                s.ipip.name(),
                s.vxlan.name(),
                s.nat_outgoing
            )),
            TxnOutcome::Conflict(_) => {
                log::info!("{name} was created by someone else meanwhile; keeping theirs");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::startup::host::StaticHost;
    use calico_datastore::MemKv;
    use serde_json::{Value, json};

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_env(&crate::config::test_env(pairs)).unwrap()
    }

    fn t0() -> SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_777_629_600)
    }

    fn spec(m: &MemKv, name: &str) -> Value {
        let v: Value = serde_json::from_slice(
            &m.get(&keys::resource("ippools", name))
                .unwrap()
                .unwrap()
                .value,
        )
        .unwrap();
        v["spec"].clone()
    }

    /// Mirrors startup.go `createIPPool` with ippool.go's defaults: the stored spec, field
    /// for field.
    #[test]
    fn default_pools_are_stored_as_calicos() {
        let m = MemKv::new();
        let s = settings(&[
            ("CALICO_IPV4POOL_IPIP", "Always"),
            ("CALICO_IPV6POOL_CIDR", "fd00:10:244::/48"),
        ]);
        let mut r = Report::default();
        ensure_defaults(&s, &m, &[], t0(), &mut r).unwrap();
        assert_eq!(
            serde_json::to_string(&spec(&m, DEFAULT_IPV4_POOL)).unwrap(),
            r#"{"cidr":"192.168.0.0/16","vxlanMode":"Never","ipipMode":"Always","natOutgoing":true,"blockSize":26,"nodeSelector":"all()","allowedUses":["Workload","Tunnel"],"assignmentMode":"Automatic"}"#
        );
        assert_eq!(
            spec(&m, DEFAULT_IPV6_POOL),
            json!({"cidr":"fd00:10:244::/48","vxlanMode":"Never","ipipMode":"Never","blockSize":122,
                   "nodeSelector":"all()","allowedUses":["Workload","Tunnel"],"assignmentMode":"Automatic"})
        );
        assert_eq!(r.changes.len(), 2);
        let before = m.dump();
        let mut r = Report::default();
        ensure_defaults(&s, &m, &[], t0(), &mut r).unwrap();
        assert_eq!(m.dump(), before);
        assert!(r.changes.is_empty());
    }

    #[test]
    fn any_pool_of_the_family_stops_the_default() {
        let m = MemKv::new();
        m.put(
            &keys::resource("ippools", "mine"),
            br#"{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"mine"},"spec":{"cidr":"10.1.0.0/16","disabled":true}}"#,
        );
        let s = settings(&[("CALICO_IPV6POOL_CIDR", "fd00::/48")]);
        ensure_defaults(&s, &m, &[], t0(), &mut Report::default()).unwrap();
        assert!(
            m.get(&keys::resource("ippools", DEFAULT_IPV4_POOL))
                .unwrap()
                .is_none()
        );
        assert_eq!(spec(&m, DEFAULT_IPV6_POOL)["cidr"], "fd00::/48");
    }

    /// Mirrors ipv4/poolselector.go `GetDefaultIPv4Pool`.
    #[test]
    fn the_default_ipv4_cidr_avoids_the_hosts_addresses() {
        let h = |addrs: &[&str]| {
            StaticHost::default()
                .with_interface("eth0", addrs)
                .interfaces
        };
        assert_eq!(
            default_ipv4_cidr(&h(&["10.0.0.5/24"])).to_string(),
            "192.168.0.0/16"
        );
        assert_eq!(
            default_ipv4_cidr(&h(&["192.168.1.5/24", "172.16.0.1/24"])).to_string(),
            "172.17.0.0/16"
        );
        let all: Vec<String> = (16..=31).map(|b| format!("172.{b}.0.1/24")).collect();
        let mut addrs: Vec<&str> = all.iter().map(String::as_str).collect();
        addrs.push("192.168.0.9/24");
        assert_eq!(default_ipv4_cidr(&h(&addrs)).to_string(), "192.168.0.0/16");
    }

    #[test]
    fn a_lost_race_keeps_the_winners_pool() {
        let m = MemKv::new();
        // Another node creates the pool between our list and our create.
        struct Late<'a>(&'a MemKv);
        impl KvStore for Late<'_> {
            fn read(
                &self,
                r: &[calico_datastore::Read],
            ) -> Result<Vec<Vec<calico_datastore::Kv>>, calico_datastore::StoreError> {
                self.0.read(r)
            }
            fn txn(
                &self,
                g: &[Guard],
                w: &[Write],
            ) -> Result<TxnOutcome, calico_datastore::StoreError> {
                self.0.put(
                    &keys::resource("ippools", DEFAULT_IPV4_POOL),
                    br#"{"theirs":1}"#,
                );
                self.0.txn(g, w)
            }
            fn describe(&self) -> String {
                "late".into()
            }
        }
        ensure_defaults(&settings(&[]), &Late(&m), &[], t0(), &mut Report::default()).unwrap();
        assert_eq!(
            m.get(&keys::resource("ippools", DEFAULT_IPV4_POOL))
                .unwrap()
                .unwrap()
                .value,
            br#"{"theirs":1}"#
        );
    }
}
