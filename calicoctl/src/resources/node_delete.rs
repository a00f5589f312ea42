//! `calicoctl delete node`: libcalico-go `clientv3/node.go` Delete, which removes what
//! belongs to the node before the Node itself:
//!
//! 1. each of its WorkloadEndpoints (name prefixed with the escaped node name and
//!    `spec.node` the node), its addresses released **in the same transaction** as the
//!    endpoint is deleted;
//! 2. its block affinities: empty blocks deleted, used ones kept without affinity
//!    (`RemoveIPAMHost`, [`calico_ipam::host::remove_host`]);
//! 3. BGPPeers whose `spec.node` is the node, the FelixConfiguration and BGPConfiguration
//!    `node.<name>`, HostEndpoints whose `spec.node` is the node;
//! 4. the Node, with its tunnel addresses (IPIP, VXLAN, WireGuard) released in the same
//!    transaction.
//!
//! The Node goes last, so whatever stops a run half-way (a crash, etcd going away), running
//! `delete node` again finds the rest and finishes; no step releases an address whose record
//! survives it, so no address is released twice. The IPAM logic is in [`calico_ipam::host`].
//!
//! Differences from Calico, on purpose: an address a record names is released only if its
//! allocation belongs to this node (or names no node), so a stale record cannot free another
//! node's workload address; the IPv6 tunnel addresses (VXLAN, WireGuard) are released too;
//! affinities whose block is missing are deleted; a `resourceVersion` that does not match
//! fails before anything is changed (Calico cleans up first and then fails the Node delete).

use super::ops::{Ctx, DeleteError};
use super::{Kind, Object};
use calico_datastore::model::{WorkloadEndpoint, cidr, keys};
use calico_datastore::{Guard, KvStore, TxnOutcome, Write};
use calico_ipam::IpamError;
use calico_ipam::allocator::{Extra, MAX_RETRIES};
use calico_ipam::host::{self, ReleaseStep};
use serde_json::Value;
use std::net::IpAddr;

impl From<IpamError> for DeleteError {
    fn from(e: IpamError) -> Self {
        DeleteError::Other(e.to_string())
    }
}

/// The tunnel addresses a stored Node records: `bgp.ipv4IPIPTunnelAddr`,
/// `ipv4VXLANTunnelAddr`, `wireguard.interfaceIPv4Address` (what Calico releases) and the
/// IPv6 VXLAN and WireGuard addresses (which Calico leaves allocated).
pub fn tunnel_addresses(node: &Value) -> Vec<IpAddr> {
    let spec = &node["spec"];
    [
        &spec["bgp"]["ipv4IPIPTunnelAddr"],
        &spec["ipv4VXLANTunnelAddr"],
        &spec["ipv6VXLANTunnelAddr"],
        &spec["wireguard"]["interfaceIPv4Address"],
        &spec["wireguard"]["interfaceIPv6Address"],
    ]
    .into_iter()
    .filter_map(Value::as_str)
    .filter_map(|s| cidr::parse_cidr_or_ip(s).map(|c| c.addr))
    .collect()
}

/// Deletes `key` while `keep_going(value)` holds for its current value, guarded on the
/// revision read; a key already gone is fine.
fn delete_if(
    store: &dyn KvStore,
    key: &str,
    keep_going: impl Fn(&Value) -> bool,
) -> Result<(), DeleteError> {
    for _ in 0..MAX_RETRIES {
        let Some(kv) = store.get(key)? else {
            return Ok(());
        };
        let v: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
        if !keep_going(&v) {
            return Ok(());
        }
        let guard = Guard::Revision(key.to_string(), kv.mod_revision);
        if let TxnOutcome::Applied(_) = store.txn(&[guard], &[Write::Delete(key.to_string())])? {
            return Ok(());
        }
    }
    Err(DeleteError::Other(format!(
        "{key} kept changing while it was being deleted"
    )))
}

/// Deletes every resource of `plural` whose `spec.node` is `node`.
fn delete_node_scoped(store: &dyn KvStore, plural: &str, node: &str) -> Result<(), DeleteError> {
    let on_node = |v: &Value| v["spec"]["node"].as_str() == Some(node);
    for kv in store.list(&keys::resources_prefix(plural))? {
        let v: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
        if on_node(&v) {
            delete_if(store, &kv.key, on_node)?;
        }
    }
    Ok(())
}

/// Releases the addresses of each of `node`'s WorkloadEndpoints and deletes it, one
/// transaction per endpoint.
fn delete_endpoints(store: &dyn KvStore, node: &str) -> Result<(), DeleteError> {
    // `CalculateWorkloadEndpointName` of the node alone: its endpoints' name prefix.
    let prefix = format!("{}-", node.replace('-', "--"));
    for kv in store.list(&keys::resources_prefix("workloadendpoints"))? {
        let Ok(w) = WorkloadEndpoint::from_kv(&kv) else {
            continue;
        };
        if !w.metadata.name.starts_with(&prefix) || w.spec.node != node {
            continue;
        }
        let key = kv.key;
        host::release_ips_with(store, node, &mut || {
            let Some(kv) = store.get(&key)? else {
                return Ok(None);
            };
            let w = WorkloadEndpoint::from_kv(&kv).map_err(|e| IpamError::corrupt(&key, e))?;
            if w.spec.node != node {
                return Ok(None);
            }
            Ok(Some(ReleaseStep {
                ips: w.addresses(),
                extra: Extra {
                    guards: vec![Guard::Revision(key.clone(), kv.mod_revision)],
                    writes: vec![Write::Delete(key.clone())],
                },
            }))
        })?;
    }
    Ok(())
}

/// `calicoctl delete node <name>` (or a Node document): see the module docs.
pub fn delete_node(ctx: &Ctx, o: &Object) -> Result<(), DeleteError> {
    let store = ctx.store;
    let name = o.name();
    let rv = o.metadata().resource_version.as_str();
    let node_key = Kind::Node.key("", name);
    let conflict = || DeleteError::Other(format!("update conflict: {}", o.id()));
    if !rv.is_empty()
        && let Some(kv) = store.get(&node_key)?
        && kv.mod_revision.to_string() != rv
    {
        return Err(conflict());
    }

    delete_endpoints(store, name)?;
    host::remove_host(store, name)?;
    delete_node_scoped(store, "bgppeers", name)?;
    let node_config = format!("node.{name}");
    delete_if(
        store,
        &keys::resource("felixconfigurations", &node_config),
        |_| true,
    )?;
    delete_if(
        store,
        &keys::resource("bgpconfigurations", &node_config),
        |_| true,
    )?;
    delete_node_scoped(store, "hostendpoints", name)?;

    // Last: the Node, with its tunnel addresses.
    let mut found = false;
    let mut changed = false;
    host::release_ips_with(store, name, &mut || {
        found = false;
        let Some(kv) = store.get(&node_key)? else {
            return Ok(None);
        };
        if !rv.is_empty() && kv.mod_revision.to_string() != rv {
            changed = true;
            return Ok(None);
        }
        found = true;
        let v: Value =
            serde_json::from_slice(&kv.value).map_err(|e| IpamError::corrupt(&node_key, e))?;
        Ok(Some(ReleaseStep {
            ips: tunnel_addresses(&v),
            extra: Extra {
                guards: vec![Guard::Revision(node_key.clone(), kv.mod_revision)],
                writes: vec![Write::Delete(node_key.clone())],
            },
        }))
    })?;
    if changed {
        return Err(conflict());
    }
    if !found {
        return Err(DeleteError::Missing);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CmdError;
    use crate::resources::ops::delete;
    use calico_datastore::MemKv;
    use calico_datastore::model::Resource;
    use serde_json::json;

    /// A stale `resourceVersion` fails before anything is removed (Calico's Delete cleans up
    /// first and only its final conditional Node delete fails).
    #[test]
    fn a_stale_resource_version_changes_nothing() {
        let store = MemKv::new();
        store.put(
            &keys::resource("nodes", "n1"),
            br#"{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"n1"},"spec":{}}"#,
        );
        store.put(
            &keys::namespaced_resource("workloadendpoints", "ns", "n1-k8s-p-eth0"),
            br#"{"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3","metadata":{"name":"n1-k8s-p-eth0","namespace":"ns"},"spec":{"node":"n1"}}"#,
        );
        store.put(&keys::resource("felixconfigurations", "node.n1"), b"{}");
        let before = store.dump();
        let mut node = Resource::new("Node", "n1", Default::default());
        node.metadata.resource_version = "999".into();
        let ctx = Ctx::new(&store);
        let r = delete(
            &ctx,
            &[Object::Node(node.clone())],
            Some(Kind::Node),
            false,
            &mut Vec::new(),
        );
        assert_eq!(
            r,
            Err(CmdError::Failed(
                "Failed to delete 'Node' resource: update conflict: Node(n1)".into()
            ))
        );
        assert_eq!(store.dump(), before);
        // With the current one, everything goes.
        let rev = store
            .get(&keys::resource("nodes", "n1"))
            .expect("read")
            .expect("node")
            .mod_revision;
        node.metadata.resource_version = rev.to_string();
        delete(
            &ctx,
            &[Object::Node(node)],
            Some(Kind::Node),
            false,
            &mut Vec::new(),
        )
        .expect("deleted");
        assert_eq!(store.dump(), Vec::<(String, String)>::new());
    }

    #[test]
    fn tunnel_addresses_of_every_kind() {
        let node = json!({"spec":{"bgp":{"ipv4IPIPTunnelAddr":"10.0.0.1"},
            "ipv4VXLANTunnelAddr":"10.0.0.2","ipv6VXLANTunnelAddr":"fd00::2",
            "wireguard":{"interfaceIPv4Address":"10.0.0.3/32","interfaceIPv6Address":"fd00::3"}}});
        let got: Vec<String> = tunnel_addresses(&node)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            ["10.0.0.1", "10.0.0.2", "fd00::2", "10.0.0.3", "fd00::3"]
        );
        assert!(tunnel_addresses(&json!({"spec":{}})).is_empty());
    }
}
