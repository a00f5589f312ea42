//! The Calico Node resource, created or updated as Calico's start-up does
//! (`configureIPsAndSubnets`, `configureASNumber`, `checkConflictingNodes`): its BGP
//! addresses from `IP`/`IP6` or detection, its AS number, its interfaces, and its
//! `orchRefs`. Everything else on the Node (labels, annotations, the route reflector cluster
//! ID, tunnel addresses, fields of newer writers) is kept: the stored object is read, changed
//! and written back at the revision read, and a concurrent change is read again and the
//! change made anew on top of it. Nothing is written when nothing changes.

use super::autodetect::{self, Detected, Method, default_exclusions};
use super::guarded::{self, Outcome};
use super::host::{Host, HostInterface};
use super::settings::{AddressSetting, Backend, Settings};
use super::{Report, StartupError};
use calico_datastore::KvStore;
use calico_datastore::model::{
    AsNumber, Node, NodeBgpSpec, NodeInterface, NodeSpec, OrchRef, keys,
};
use serde_json::Value;
use std::cell::RefCell;
use std::net::IpAddr;
use std::time::SystemTime;

/// The key of a node's resource.
pub fn key(name: &str) -> String {
    keys::resource("nodes", name)
}

/// Detection is run at most once per family and start-up (the Node may be re-read after a
/// conflict), and only when needed.
struct Detector<'a> {
    settings: &'a Settings,
    host: &'a dyn Host,
    interfaces: Vec<HostInterface>,
    results: RefCell<[Option<Option<Detected>>; 2]>,
}

impl Detector<'_> {
    fn detect(&self, v4: bool, report: &mut Report) -> Result<Option<Detected>, StartupError> {
        let slot = usize::from(!v4);
        if let Some(found) = &self.results.borrow()[slot] {
            return Ok(found.clone());
        }
        let method: &Method = if v4 {
            &self.settings.ipv4_method
        } else {
            &self.settings.ipv6_method
        };
        let (found, why) = autodetect::detect(method, v4, self.host)?;
        let family = if v4 { "IPv4" } else { "IPv6" };
        match &found {
            Some(d) => log::info!(
                "using autodetected {family} address {} on interface {} (method {})",
                d.address,
                d.interface,
                autodetect::describe(method)
            ),
            None => report.warn(format!("unable to auto-detect an {family} address: {why}")),
        }
        self.results.borrow_mut()[slot] = Some(found.clone());
        Ok(found)
    }

    /// Calico's `validateIP`: a warning when no interface carries a configured address.
    fn validate(&self, cidr: &str, report: &mut Report) {
        let ip = cidr
            .split('/')
            .next()
            .and_then(|a| a.parse::<IpAddr>().ok());
        let on_host = ip.is_some_and(|ip| {
            self.interfaces
                .iter()
                .any(|i| i.addresses.iter().any(|a| a.addr() == ip))
        });
        if !on_host {
            let family = if ip.is_some_and(|i| i.is_ipv6()) {
                "IPv6"
            } else {
                "IPv4"
            };
            report.warn(format!(
                "unable to confirm {family} address {cidr} is assigned to this host"
            ));
        }
    }
}

/// One family's address as the settings make it from the stored one.
fn address(
    d: &Detector<'_>,
    v4: bool,
    stored: &str,
    report: &mut Report,
) -> Result<String, StartupError> {
    let (setting, variable, method_var) = if v4 {
        (&d.settings.ipv4, "IP", "IP_AUTODETECTION_METHOD")
    } else {
        (&d.settings.ipv6, "IP6", "IP6_AUTODETECTION_METHOD")
    };
    let family = if v4 { "IPv4" } else { "IPv6" };
    // Calico detects IPv4 when unset on a node without one; IPv6 only when asked.
    let detect = matches!(setting, AddressSetting::Autodetect)
        || (v4 && matches!(setting, AddressSetting::Unset) && stored.is_empty());
    if detect {
        return match d.detect(v4, report)? {
            Some(found) => Ok(found.address.to_string()),
            None if stored.is_empty() => Err(StartupError::Node(format!(
                "failed to autodetect an {family} address: choose another {method_var} or set \
                 {variable} to an address"
            ))),
            None => {
                report.warn(format!(
                    "autodetection of the {family} address failed, keeping the existing value \
                     {stored}"
                ));
                d.validate(stored, report);
                Ok(stored.to_string())
            }
        };
    }
    match setting {
        AddressSetting::Given { address, prefix } => {
            // Calico: a bare IPv4 address takes its interface's prefix (else /32); a bare
            // IPv6 address is a /128.
            let prefix = match (prefix, v4) {
                (Some(p), _) => *p,
                (None, true) => {
                    autodetect::local_prefix(&d.interfaces, *address).unwrap_or_else(|| {
                        report.warn(format!(
                            "unable to find a host interface with the address {address}"
                        ));
                        32
                    })
                }
                (None, false) => 128,
            };
            let cidr = format!("{address}/{prefix}");
            log::info!("using {family} address from the environment: {variable}={cidr}");
            d.validate(&cidr, report);
            Ok(cidr)
        }
        // `none` or unset: what is stored stays (Calico clears nothing).
        _ => {
            if !stored.is_empty() {
                d.validate(stored, report);
            }
            Ok(stored.to_string())
        }
    }
}

/// Calico's `spec.interfaces`: when `IP` or `IP6` asks for an address, every interface not
/// excluded by default, with its addresses of those families, by name.
fn interfaces(d: &Detector<'_>) -> Vec<NodeInterface> {
    let (v4, v6) = (d.settings.ipv4.is_set(), d.settings.ipv6.is_set());
    if !v4 && !v6 {
        return Vec::new();
    }
    let exclude = default_exclusions();
    let mut out: Vec<NodeInterface> = autodetect::selected(&d.interfaces, &[], &exclude)
        .map(|i| NodeInterface {
            name: i.name.clone(),
            addresses: i
                .addresses
                .iter()
                .filter(|a| if a.addr().is_ipv4() { v4 } else { v6 })
                .map(|a| a.addr().to_string())
                .collect(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The addresses of a stored BGP spec, without prefixes.
fn ips_of(node: &Value) -> (Option<IpAddr>, Option<IpAddr>) {
    let ip = |field: &str| {
        node.pointer(&format!("/spec/bgp/{field}"))
            .and_then(Value::as_str)
            .and_then(|s| s.split('/').next())
            .and_then(|s| s.parse::<IpAddr>().ok())
    };
    (ip("ipv4Address"), ip("ipv6Address"))
}

/// Calico's `checkConflictingNodes`: another Node with one of our addresses is an error
/// (after Calico's warning); our own Node with other addresses only a warning.
fn check_conflicts(
    store: &dyn KvStore,
    node: &Node,
    report: &mut Report,
) -> Result<(), StartupError> {
    let bgp = node.spec.bgp.clone().unwrap_or_default();
    let parse = |s: &str| s.split('/').next().and_then(|a| a.parse::<IpAddr>().ok());
    let ours = (parse(&bgp.ipv4_address), parse(&bgp.ipv6_address));
    let mut clash = Vec::new();
    for kv in store.list(&keys::resources_prefix("nodes"))? {
        let Ok(theirs) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        let name = theirs
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let (t4, t6) = ips_of(&theirs);
        for (family, mine, their) in [("IPv4", ours.0, t4), ("IPv6", ours.1, t6)] {
            if name == node.metadata.name {
                if their.is_some() && mine != their {
                    report.warn(format!(
                        "{family} address has changed (from {} to {}): this could happen if \
                         there are multiple nodes with the same name",
                        their.map(|i| i.to_string()).unwrap_or_default(),
                        mine.map(|i| i.to_string()).unwrap_or_default()
                    ));
                }
            } else if mine.is_some() && mine == their {
                let ip = mine.map(|i| i.to_string()).unwrap_or_default();
                report.warn(format!(
                    "Calico node '{name}' is already using the {family} address {ip}."
                ));
                clash.push(format!("{family} address {ip} (node {name})"));
            }
        }
    }
    if clash.is_empty() {
        return Ok(());
    }
    Err(StartupError::Node(format!(
        "conflicting node detected: {}; set DISABLE_NODE_IP_CHECK=true to start anyway",
        clash.join(", ")
    )))
}

/// Creates or updates this node's Node resource.
pub fn ensure(
    settings: &Settings,
    name: &str,
    store: &dyn KvStore,
    host: &dyn Host,
    now: SystemTime,
    report: &mut Report,
) -> Result<Outcome, StartupError> {
    let networking = settings.backend != Backend::None;
    let detector = Detector {
        settings,
        host,
        interfaces: if networking {
            host.interfaces()?
        } else {
            Vec::new()
        },
        results: RefCell::new([None, None]),
    };
    let key = key(name);
    let outcome = guarded::converge(store, &key, |current| {
        let stored = current
            .map(|kv| {
                Node::from_kv(kv).map_err(|e| StartupError::Corrupt {
                    key: key.clone(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        let mut node = stored.clone().unwrap_or_else(|| {
            let mut n = Node::new("Node", name, NodeSpec::default());
            n.stamp_created(now);
            // Calico's Node always carries a status, empty at first.
            n.status = Some(Value::Object(serde_json::Map::new()));
            n
        });
        let mut addresses_changed = false;
        if networking {
            let old = node.spec.bgp.clone().unwrap_or_default();
            let v4 = address(&detector, true, &old.ipv4_address, report)?;
            let v6 = address(&detector, false, &old.ipv6_address, report)?;
            if v4.is_empty() && v6.is_empty() {
                return Err(StartupError::Node(
                    "no IPv4 or IPv6 address configured or detected, required for Calico \
                     networking (set IP or IP6, or CALICO_NETWORKING_BACKEND=none)"
                        .into(),
                ));
            }
            let ifaces = interfaces(&detector);
            addresses_changed =
                v4 != old.ipv4_address || v6 != old.ipv6_address || ifaces != node.spec.interfaces;
            let bgp = node.spec.bgp.get_or_insert_with(NodeBgpSpec::default);
            bgp.ipv4_address = v4;
            bgp.ipv6_address = v6;
            if let Some(n) = settings.as_number {
                bgp.as_number = Some(AsNumber(n));
            }
            node.spec.interfaces = ifaces;
        }
        if let Some(r) = &settings.k8s_node_ref {
            node.spec.orch_refs = vec![OrchRef {
                node_name: r.clone(),
                orchestrator: "k8s".into(),
            }];
        }
        if stored.as_ref() == Some(&node) {
            return Ok(None);
        }
        if addresses_changed && !settings.disable_node_ip_check {
            check_conflicts(store, &node, report)?;
        }
        node.to_stored()
            .map(Some)
            .map_err(|e| StartupError::Corrupt {
                key: key.clone(),
                reason: e.to_string(),
            })
    })?;
    match outcome {
        Outcome::Created => report.changed(format!("created Node {name}")),
        Outcome::Updated => report.changed(format!("updated Node {name}")),
        Outcome::Unchanged => log::info!("Node {name} is up to date"),
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::startup::host::StaticHost;
    use calico_datastore::MemKv;
    use serde_json::json;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_env(&crate::config::test_env(pairs)).unwrap()
    }

    fn host() -> StaticHost {
        StaticHost::default()
            .with_interface("lo", &["127.0.0.1/8"])
            .with_interface("eth0", &["10.0.0.5/24", "fd00::5/64", "fe80::5/64"])
    }

    fn t0() -> SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_777_629_600)
    }

    fn stored(m: &MemKv, name: &str) -> Value {
        serde_json::from_slice(&m.get(&key(name)).unwrap().unwrap().value).unwrap()
    }

    fn run(m: &MemKv, pairs: &[(&str, &str)]) -> Result<(Outcome, Report), StartupError> {
        let mut r = Report::default();
        ensure(&settings(pairs), "node-1", m, &host(), t0(), &mut r).map(|o| (o, r))
    }

    /// Mirrors startup.go `configureIPsAndSubnets` on a new node: IPv4 detected, IPv6 not
    /// (not asked), no interfaces listed (neither IP nor IP6 set), an empty status.
    #[test]
    fn a_new_node_gets_its_detected_address() {
        let m = MemKv::new();
        let (out, _) = run(&m, &[]).unwrap();
        assert_eq!(out, Outcome::Created);
        let n = stored(&m, "node-1");
        assert_eq!(n["spec"], json!({"bgp": {"ipv4Address": "10.0.0.5/24"}}));
        assert_eq!(n["status"], json!({}));
        assert_eq!(n["metadata"]["creationTimestamp"], "2026-05-01T10:00:00Z");
        assert_eq!(n["metadata"]["uid"].as_str().unwrap().len(), 36);
        let (again, _) = run(&m, &[]).unwrap();
        assert_eq!(again, Outcome::Unchanged);
    }

    #[test]
    fn addresses_as_and_interfaces_from_the_environment() {
        const VARS: &[(&str, &str)] = &[
            ("IP", "10.0.0.5"),
            ("IP6", "fd00::5"),
            ("AS", "64513"),
            ("CALICO_K8S_NODE_REF", "worker-1"),
        ];
        let m = MemKv::new();
        run(&m, VARS).unwrap();
        let n = stored(&m, "node-1");
        assert_eq!(
            n["spec"],
            json!({"bgp": {"asNumber": 64513, "ipv4Address": "10.0.0.5/24", "ipv6Address": "fd00::5/128"},
                   "orchRefs": [{"nodeName": "worker-1", "orchestrator": "k8s"}],
                   "interfaces": [{"name": "eth0", "addresses": ["10.0.0.5", "fd00::5", "fe80::5"]}]})
        );
        // Same settings again: nothing written (Calico rewrites when AS is set).
        let rev = m.get(&key("node-1")).unwrap().unwrap().mod_revision;
        let (again, _) = run(&m, VARS).unwrap();
        assert_eq!(again, Outcome::Unchanged);
        assert_eq!(m.get(&key("node-1")).unwrap().unwrap().mod_revision, rev);
    }

    /// Mirrors startup.go: `IP` unset or `none` keeps a stored address; labels, the route
    /// reflector cluster ID and fields we do not know survive an update.
    #[test]
    fn what_others_set_is_kept() {
        let m = MemKv::new();
        m.put(
            &key("node-1"),
            json!({"kind":"Node","apiVersion":"projectcalico.org/v3",
                   "metadata":{"name":"node-1","uid":"u-1","creationTimestamp":"2026-01-01T00:00:00Z",
                               "labels":{"rack":"r1"}},
                   "spec":{"bgp":{"ipv4Address":"10.9.9.9/16","routeReflectorClusterID":"224.0.0.1"},
                           "futureField":{"x":1}},
                   "status":{"podCIDRs":["10.1.0.0/24"]}})
            .to_string()
            .as_bytes(),
        );
        let (out, r) = run(&m, &[]).unwrap();
        assert_eq!(out, Outcome::Unchanged, "IP unset keeps the stored address");
        assert!(r.warnings[0].contains("unable to confirm IPv4 address 10.9.9.9/16"));
        run(&m, &[("IP", "autodetect"), ("AS", "65000")]).unwrap();
        let n = stored(&m, "node-1");
        assert_eq!(n["metadata"]["labels"], json!({"rack": "r1"}));
        assert_eq!(n["metadata"]["uid"], "u-1");
        assert_eq!(n["spec"]["bgp"]["routeReflectorClusterID"], "224.0.0.1");
        assert_eq!(n["spec"]["bgp"]["ipv4Address"], "10.0.0.5/24");
        assert_eq!(n["spec"]["bgp"]["asNumber"], 65000);
        assert_eq!(n["spec"]["futureField"], json!({"x": 1}));
        assert_eq!(n["status"], json!({"podCIDRs": ["10.1.0.0/24"]}));
        run(&m, &[("IP", "none")]).unwrap();
        assert_eq!(
            stored(&m, "node-1")["spec"]["bgp"]["ipv4Address"],
            "10.0.0.5/24"
        );
    }

    /// Mirrors startup.go `checkConflictingNodes`: Calico's warning, and the start-up fails
    /// without writing, unless DISABLE_NODE_IP_CHECK=true.
    #[test]
    fn an_address_clash_is_warned_and_refused() {
        let m = MemKv::new();
        m.put(
            &key("node-2"),
            json!({"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"node-2"},
                   "spec":{"bgp":{"ipv4Address":"10.0.0.5/24"}}})
            .to_string()
            .as_bytes(),
        );
        let mut r = Report::default();
        let e = ensure(&settings(&[]), "node-1", &m, &host(), t0(), &mut r).expect_err("clash");
        assert!(e.to_string().contains("conflicting node detected"), "{e}");
        assert_eq!(
            r.warnings,
            ["Calico node 'node-2' is already using the IPv4 address 10.0.0.5."]
        );
        assert!(m.get(&key("node-1")).unwrap().is_none());
        let (out, _) = run(&m, &[("DISABLE_NODE_IP_CHECK", "true")]).unwrap();
        assert_eq!(out, Outcome::Created);
    }

    #[test]
    fn no_address_is_an_error_unless_policy_only() {
        let m = MemKv::new();
        let e = run(&m, &[("IP", "none")]).expect_err("no address");
        assert!(e.to_string().contains("no IPv4 or IPv6 address"), "{e}");
        let e = run(&m, &[("IP_AUTODETECTION_METHOD", "interface=wlan.*")]).expect_err("none");
        assert!(e.to_string().contains("IP_AUTODETECTION_METHOD"), "{e}");
        let (out, _) = run(&m, &[("IP", "none"), ("CALICO_NETWORKING_BACKEND", "none")]).unwrap();
        assert_eq!(out, Outcome::Created);
        assert_eq!(stored(&m, "node-1")["spec"], json!({}));
    }

    /// A write that loses to a concurrent change is made again on top of it.
    #[test]
    fn a_concurrent_label_change_survives() {
        struct Racing<'a> {
            inner: &'a MemKv,
            raced: std::cell::Cell<bool>,
        }
        impl KvStore for Racing<'_> {
            fn read(
                &self,
                reads: &[calico_datastore::Read],
            ) -> Result<Vec<Vec<calico_datastore::Kv>>, calico_datastore::StoreError> {
                self.inner.read(reads)
            }
            fn txn(
                &self,
                guards: &[calico_datastore::Guard],
                writes: &[calico_datastore::Write],
            ) -> Result<calico_datastore::TxnOutcome, calico_datastore::StoreError> {
                if !self.raced.replace(true) {
                    // calicoctl labels the node between our read and our write.
                    let mut n = stored(self.inner, "node-1");
                    n["metadata"]["labels"] = json!({"zone": "a"});
                    self.inner.put(&key("node-1"), n.to_string().as_bytes());
                }
                self.inner.txn(guards, writes)
            }
            fn describe(&self) -> String {
                "racing".into()
            }
        }
        let m = MemKv::new();
        run(&m, &[]).unwrap();
        let racing = Racing {
            inner: &m,
            raced: std::cell::Cell::new(false),
        };
        let mut r = Report::default();
        ensure(
            &settings(&[("AS", "65001")]),
            "node-1",
            &racing,
            &host(),
            t0(),
            &mut r,
        )
        .unwrap();
        let n = stored(&m, "node-1");
        assert_eq!(n["metadata"]["labels"], json!({"zone": "a"}));
        assert_eq!(n["spec"]["bgp"]["asNumber"], 65001);
    }
}
