//! The MTU file (`/var/lib/calico/mtu`, what the `calico` plugin uses when its `mtu` is 0),
//! computed as Felix computes it when it starts (`int_dataplane.go` `findHostMTU`,
//! `ConfigureDefaultMTUs`, `determinePodMTU`; Calico's start-up does not write it, Felix
//! does):
//!
//! - the host MTU is the smallest MTU of the links that match `mtuIfacePattern` and are
//!   operationally up; none: 1460;
//! - each encapsulation's MTU is its configured value, else the host MTU less its overhead
//!   (IPIP 20, VXLAN 50, IPv6 VXLAN 70);
//! - an encapsulation is on if FelixConfiguration says so (`ipipEnabled`, `vxlanEnabled`),
//!   else if any pool uses it (disabled pools and node selectors included, as Felix);
//! - the pod MTU is the smallest MTU of the encapsulations on, else the host MTU.
//!
//! Felix's settings are read as Felix layers them: `FELIX_*` variables, then
//! `felixconfigurations/node.<name>`, then `felixconfigurations/default`. WireGuard is not
//! counted (this suite does not run it).

use super::host::HostInterface;
use super::settings::{Encapsulation, Settings};
use super::{Report, StartupError};
use calico_datastore::KvStore;
use calico_datastore::model::keys;
use calico_datastore::{Kv, Read};
use regex::Regex;
use serde_json::Value;

pub const IPIP_OVERHEAD: u32 = 20;
pub const VXLAN_OVERHEAD: u32 = 50;
pub const VXLAN_V6_OVERHEAD: u32 = 70;
/// Felix's host MTU when no link matches.
pub const FALLBACK_HOST_MTU: u32 = 1460;

/// What decides the pod MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtuInputs {
    pub host_mtu: u32,
    pub ipip: Option<u32>,
    pub vxlan: Option<u32>,
    pub vxlan_v6: Option<u32>,
    pub ipip_enabled: bool,
    pub vxlan_enabled: bool,
    pub vxlan_v6_enabled: bool,
}

/// Felix's `findHostMTU`; `None` when no link qualifies.
pub fn host_mtu(interfaces: &[HostInterface], pattern: &Regex) -> Option<u32> {
    interfaces
        .iter()
        .filter(|i| pattern.is_match(&i.name) && i.running && i.mtu > 0)
        .map(|i| i.mtu)
        .min()
}

/// Felix's `determinePodMTU` after `ConfigureDefaultMTUs`.
pub fn pod_mtu(i: &MtuInputs) -> u32 {
    let less = |overhead: u32| i.host_mtu.saturating_sub(overhead);
    [
        (
            i.ipip.unwrap_or_else(|| less(IPIP_OVERHEAD)),
            i.ipip_enabled,
        ),
        (
            i.vxlan.unwrap_or_else(|| less(VXLAN_OVERHEAD)),
            i.vxlan_enabled,
        ),
        (
            i.vxlan_v6.unwrap_or_else(|| less(VXLAN_V6_OVERHEAD)),
            i.vxlan_v6_enabled,
        ),
    ]
    .into_iter()
    .filter(|(mtu, on)| *on && *mtu > 0)
    .map(|(mtu, _)| mtu)
    .min()
    .unwrap_or(i.host_mtu)
}

/// A FelixConfiguration's spec, if stored and readable.
fn felix_spec(kv: Option<&Kv>) -> Value {
    kv.and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .map(|v| v["spec"].clone())
        .unwrap_or(Value::Null)
}

/// Computes the pod MTU for node `name` and writes the MTU file if it changed.
pub fn ensure_file(
    settings: &Settings,
    name: &str,
    store: &dyn KvStore,
    interfaces: &[HostInterface],
    report: &mut Report,
) -> Result<u32, StartupError> {
    let got = store.read(&[
        Read::Key(keys::resource(
            "felixconfigurations",
            &format!("node.{name}"),
        )),
        Read::Key(keys::resource("felixconfigurations", "default")),
        Read::Prefix(keys::resources_prefix("ippools")),
    ])?;
    let mut got = got.into_iter();
    let per_node = felix_spec(got.next().unwrap_or_default().first());
    let global = felix_spec(got.next().unwrap_or_default().first());
    let pools = got.next().unwrap_or_default();
    // The first layer that sets a field wins.
    let field = |f: &str| {
        [&per_node, &global]
            .into_iter()
            .find_map(|s| s.get(f).filter(|v| !v.is_null()).cloned())
    };
    let number = |f: &str| {
        field(f)
            .and_then(|v| v.as_u64())
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
    };
    let flag = |f: &str| field(f).and_then(|v| v.as_bool());

    let pattern = match (
        &settings.mtu.iface_pattern_from_env,
        field("mtuIfacePattern"),
    ) {
        (false, Some(Value::String(p))) => match Regex::new(&p) {
            Ok(r) => r,
            Err(e) => {
                report.warn(format!(
                    "FelixConfiguration mtuIfacePattern {p:?} is not a regex ({}); using the \
                     default",
                    super::autodetect::one_line(&e)
                ));
                settings.mtu.iface_pattern.clone()
            }
        },
        _ => settings.mtu.iface_pattern.clone(),
    };
    let host = host_mtu(interfaces, &pattern).unwrap_or_else(|| {
        report.warn(format!(
            "failed to detect the host MTU: no running interface matches {}; using {FALLBACK_HOST_MTU}",
            pattern.as_str()
        ));
        FALLBACK_HOST_MTU
    });
    let (mut pool_ipip, mut pool_vxlan, mut pool_vxlan_v6) = (false, false, false);
    for kv in &pools {
        let Ok(p) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        let mode = |f: &str| {
            p.pointer(&format!("/spec/{f}"))
                .and_then(Value::as_str)
                .is_some_and(Encapsulation::stored_is_on)
        };
        let v6 = p
            .pointer("/spec/cidr")
            .and_then(Value::as_str)
            .is_some_and(|c| c.contains(':'));
        pool_ipip |= mode("ipipMode");
        if mode("vxlanMode") {
            if v6 {
                pool_vxlan_v6 = true;
            } else {
                pool_vxlan = true;
            }
        }
    }
    let m = &settings.mtu;
    let inputs = MtuInputs {
        host_mtu: host,
        ipip: m.ipip_mtu.or_else(|| number("ipipMTU")),
        vxlan: m.vxlan_mtu.or_else(|| number("vxlanMTU")),
        vxlan_v6: m.vxlan_mtu_v6.or_else(|| number("vxlanMTUV6")),
        ipip_enabled: m
            .ipip_enabled
            .or_else(|| flag("ipipEnabled"))
            .unwrap_or(pool_ipip),
        vxlan_enabled: m
            .vxlan_enabled
            .or_else(|| flag("vxlanEnabled"))
            .unwrap_or(pool_vxlan),
        vxlan_v6_enabled: pool_vxlan_v6,
    };
    let mtu = pod_mtu(&inputs);
    if mtu > host {
        report.warn(format!(
            "the configured MTU {mtu} is larger than the host interfaces' MTU {host}"
        ));
    }
    if super::nodename::write_if_changed(&settings.mtu_file, &mtu.to_string())? {
        report.changed(format!(
            "wrote {} = {mtu} (host MTU {host})",
            settings.mtu_file.display()
        ));
    }
    Ok(mtu)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::startup::host::{Host, StaticHost};
    use calico_datastore::MemKv;
    use serde_json::json;

    fn inputs(host: u32) -> MtuInputs {
        MtuInputs {
            host_mtu: host,
            ipip: None,
            vxlan: None,
            vxlan_v6: None,
            ipip_enabled: false,
            vxlan_enabled: false,
            vxlan_v6_enabled: false,
        }
    }

    /// Mirrors int_dataplane.go `determinePodMTU` and `ConfigureDefaultMTUs`.
    #[test]
    fn pod_mtu_is_felixs() {
        assert_eq!(pod_mtu(&inputs(1500)), 1500);
        let ipip = MtuInputs {
            ipip_enabled: true,
            ..inputs(1500)
        };
        assert_eq!(pod_mtu(&ipip), 1480);
        let vxlan = MtuInputs {
            vxlan_enabled: true,
            ..inputs(1500)
        };
        assert_eq!(pod_mtu(&vxlan), 1450);
        let v6 = MtuInputs {
            vxlan_v6_enabled: true,
            ..inputs(1500)
        };
        assert_eq!(pod_mtu(&v6), 1430);
        let both = MtuInputs {
            ipip_enabled: true,
            vxlan_v6_enabled: true,
            ..inputs(9000)
        };
        assert_eq!(pod_mtu(&both), 8930);
        let set = MtuInputs {
            ipip_enabled: true,
            ipip: Some(1400),
            ..inputs(1500)
        };
        assert_eq!(pod_mtu(&set), 1400);
    }

    /// Mirrors int_dataplane.go `findHostMTU`: matching, running links only; 1460 without.
    #[test]
    fn host_mtu_from_matching_running_links() {
        let mut h = StaticHost::default()
            .with_interface("lo", &[])
            .with_interface("eth0", &[])
            .with_interface("ens5", &[])
            .with_interface("docker0", &[]);
        h.interfaces[0].mtu = 65536;
        h.interfaces[1].mtu = 9001;
        h.interfaces[2].mtu = 1400;
        h.interfaces[2].running = false;
        h.interfaces[3].mtu = 1000;
        let pattern = Regex::new(crate::startup::settings::DEFAULT_MTU_IFACE_PATTERN).unwrap();
        assert_eq!(host_mtu(&h.interfaces().unwrap(), &pattern), Some(9001));
        assert_eq!(host_mtu(&h.interfaces[3..], &pattern), None);
    }

    use crate::startup::settings::test_settings as settings;

    #[test]
    fn the_file_follows_pools_felix_configuration_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let m = MemKv::new();
        let h = StaticHost::default().with_interface("eth0", &[]).interfaces;
        let file = dir.path().join("mtu");
        let mut r = Report::default();
        assert_eq!(
            ensure_file(&settings(dir.path(), &[]), "n1", &m, &h, &mut r).unwrap(),
            1500
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1500");
        m.put(
            &keys::resource("ippools", "p"),
            json!({"spec":{"cidr":"10.0.0.0/16","vxlanMode":"Always","disabled":true}})
                .to_string()
                .as_bytes(),
        );
        let s = settings(dir.path(), &[]);
        assert_eq!(ensure_file(&s, "n1", &m, &h, &mut r).unwrap(), 1450);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1450");
        m.put(
            &keys::resource("felixconfigurations", "default"),
            json!({"spec":{"vxlanMTU":1400}}).to_string().as_bytes(),
        );
        assert_eq!(ensure_file(&s, "n1", &m, &h, &mut r).unwrap(), 1400);
        m.put(
            &keys::resource("felixconfigurations", "node.n1"),
            json!({"spec":{"vxlanEnabled":false}})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(ensure_file(&s, "n1", &m, &h, &mut r).unwrap(), 1500);
        let env = settings(
            dir.path(),
            &[("FELIX_VXLANENABLED", "true"), ("FELIX_VXLANMTU", "1300")],
        );
        assert_eq!(ensure_file(&env, "n1", &m, &h, &mut r).unwrap(), 1300);
        let mut r = Report::default();
        assert_eq!(ensure_file(&env, "n1", &m, &h, &mut r).unwrap(), 1300);
        assert!(r.changes.is_empty(), "unchanged file not rewritten");
    }
}
