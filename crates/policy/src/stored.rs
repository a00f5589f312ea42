//! One entry point for what the agent's etcd syncer sees: a key's kind (from its path,
//! `/calico/resources/v3/projectcalico.org/<plural>/[<ns>/]<name>`) and its stored JSON.
//! A value that does not decode is skipped as an invalid object is (and an older valid
//! version of it is no longer enforced), so a malformed object in etcd never stops the rest.

use crate::engine::{ObjectRef, PolicyEngine, Skipped};
use serde::de::DeserializeOwned;

/// The resource kinds the engine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    WorkloadEndpoint,
    Profile,
    NetworkPolicy,
    GlobalNetworkPolicy,
    Tier,
    NetworkSet,
    GlobalNetworkSet,
    IpPool,
    Node,
    FelixConfiguration,
}

impl ResourceKind {
    /// All of them, with the plural of their etcd path.
    pub const ALL: [(ResourceKind, &'static str); 10] = [
        (ResourceKind::WorkloadEndpoint, "workloadendpoints"),
        (ResourceKind::Profile, "profiles"),
        (ResourceKind::NetworkPolicy, "networkpolicies"),
        (ResourceKind::GlobalNetworkPolicy, "globalnetworkpolicies"),
        (ResourceKind::Tier, "tiers"),
        (ResourceKind::NetworkSet, "networksets"),
        (ResourceKind::GlobalNetworkSet, "globalnetworksets"),
        (ResourceKind::IpPool, "ippools"),
        (ResourceKind::Node, "nodes"),
        (ResourceKind::FelixConfiguration, "felixconfigurations"),
    ];

    /// From the plural in an etcd key (`networkpolicies`).
    pub fn from_plural(plural: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, p)| *p == plural)
            .map(|(k, _)| *k)
    }

    pub fn plural(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("", |(_, p)| p)
    }

    /// Calico's kind name.
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::WorkloadEndpoint => "WorkloadEndpoint",
            ResourceKind::Profile => "Profile",
            ResourceKind::NetworkPolicy => "NetworkPolicy",
            ResourceKind::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            ResourceKind::Tier => "Tier",
            ResourceKind::NetworkSet => "NetworkSet",
            ResourceKind::GlobalNetworkSet => "GlobalNetworkSet",
            ResourceKind::IpPool => "IPPool",
            ResourceKind::Node => "Node",
            ResourceKind::FelixConfiguration => "FelixConfiguration",
        }
    }

    /// Whether its objects live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(
            self,
            ResourceKind::WorkloadEndpoint | ResourceKind::NetworkPolicy | ResourceKind::NetworkSet
        )
    }
}

fn decode<T: DeserializeOwned>(
    kind: ResourceKind,
    namespace: &str,
    name: &str,
    value: &[u8],
) -> Result<T, Skipped> {
    serde_json::from_slice(value).map_err(|e| Skipped {
        object: ObjectRef {
            kind: kind.name(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        },
        reason: format!("does not decode: {e}"),
    })
}

impl PolicyEngine {
    /// Adds or replaces an object from its stored JSON; `namespace` and `name` are the
    /// key's (they name the object when its value does not decode).
    pub fn upsert_stored(
        &mut self,
        kind: ResourceKind,
        namespace: &str,
        name: &str,
        value: &[u8],
    ) -> Result<(), Skipped> {
        macro_rules! go {
            ($method:ident) => {
                match decode(kind, namespace, name, value) {
                    Ok(obj) => self.$method(&obj),
                    Err(e) => {
                        self.remove_stored(kind, namespace, name);
                        Err(self.record_skip(e))
                    }
                }
            };
        }
        match kind {
            ResourceKind::WorkloadEndpoint => go!(upsert_workload_endpoint),
            ResourceKind::Profile => go!(upsert_profile),
            ResourceKind::NetworkPolicy => go!(upsert_network_policy),
            ResourceKind::GlobalNetworkPolicy => go!(upsert_global_network_policy),
            ResourceKind::Tier => go!(upsert_tier),
            ResourceKind::NetworkSet => go!(upsert_network_set),
            ResourceKind::GlobalNetworkSet => go!(upsert_global_network_set),
            ResourceKind::IpPool => go!(upsert_ip_pool),
            ResourceKind::FelixConfiguration => go!(upsert_felix_configuration),
            ResourceKind::Node => match decode(kind, namespace, name, value) {
                Ok(n) => {
                    self.upsert_node(&n);
                    Ok(())
                }
                Err(e) => {
                    self.remove_node(name);
                    Err(self.record_skip(e))
                }
            },
        }
    }

    /// Removes an object by its key.
    pub fn remove_stored(&mut self, kind: ResourceKind, namespace: &str, name: &str) {
        match kind {
            ResourceKind::WorkloadEndpoint => self.remove_workload_endpoint(namespace, name),
            ResourceKind::Profile => self.remove_profile(name),
            ResourceKind::NetworkPolicy => self.remove_network_policy(namespace, name),
            ResourceKind::GlobalNetworkPolicy => self.remove_global_network_policy(name),
            ResourceKind::Tier => self.remove_tier(name),
            ResourceKind::NetworkSet => self.remove_network_set(namespace, name),
            ResourceKind::GlobalNetworkSet => self.remove_global_network_set(name),
            ResourceKind::IpPool => self.remove_ip_pool(name),
            ResourceKind::Node => self.remove_node(name),
            ResourceKind::FelixConfiguration => self.remove_felix_configuration(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineConfig;

    #[test]
    fn an_undecodable_value_is_skipped_and_replaces_the_old_version() {
        let mut e = PolicyEngine::new("n1", EngineConfig::default());
        let good = br#"{"kind":"GlobalNetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"p"},"spec":{"selector":"all()","ingress":[{"action":"Allow"}]}}"#;
        let wep = br#"{"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3","metadata":{"name":"n1-k8s-a-eth0","namespace":"ns"},"spec":{"node":"n1","interfaceName":"calia","ipNetworks":["10.0.0.1/32"]}}"#;
        e.upsert_stored(ResourceKind::WorkloadEndpoint, "ns", "n1-k8s-a-eth0", wep)
            .expect("wep");
        e.upsert_stored(ResourceKind::GlobalNetworkPolicy, "", "p", good)
            .expect("policy");
        assert!(e.desired().chains.contains_key("filter-cali-pi-gnp/p"));
        let err = e
            .upsert_stored(ResourceKind::GlobalNetworkPolicy, "", "p", b"{not json")
            .expect_err("skipped");
        assert!(err.reason.contains("does not decode"), "{err}");
        assert!(!e.desired().chains.contains_key("filter-cali-pi-gnp/p"));
        assert_eq!(e.skipped().count(), 1);
        assert_eq!(
            ResourceKind::from_plural("ippools"),
            Some(ResourceKind::IpPool)
        );
        assert_eq!(ResourceKind::IpPool.plural(), "ippools");
    }
}
