//! The datastore as the policy agent reads it: which prefixes it watches (Felix's syncer
//! list, `felixsyncerv1.go`, for the resources this suite enforces) and each key turned into
//! a typed object, or into the reason it is skipped. An object that does not parse is
//! logged and left out; everything else stays enforced.

use calico_datastore::Kv;
use calico_datastore::model::keys::resources_prefix;
use calico_datastore::model::{
    ClusterInformation, FelixConfiguration, GlobalNetworkPolicy, GlobalNetworkSet, IpPool,
    NetworkPolicy, NetworkSet, Node, Profile, Resource, Tier, WorkloadEndpoint,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The kinds the agent watches, by their plural in the etcd key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
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
    ClusterInformation,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::WorkloadEndpoint,
        Kind::Profile,
        Kind::NetworkPolicy,
        Kind::GlobalNetworkPolicy,
        Kind::Tier,
        Kind::NetworkSet,
        Kind::GlobalNetworkSet,
        Kind::IpPool,
        Kind::Node,
        Kind::FelixConfiguration,
        Kind::ClusterInformation,
    ];

    pub fn plural(self) -> &'static str {
        match self {
            Kind::WorkloadEndpoint => "workloadendpoints",
            Kind::Profile => "profiles",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::GlobalNetworkPolicy => "globalnetworkpolicies",
            Kind::Tier => "tiers",
            Kind::NetworkSet => "networksets",
            Kind::GlobalNetworkSet => "globalnetworksets",
            Kind::IpPool => "ippools",
            Kind::Node => "nodes",
            Kind::FelixConfiguration => "felixconfigurations",
            Kind::ClusterInformation => "clusterinformations",
        }
    }

    pub fn namespaced(self) -> bool {
        matches!(
            self,
            Kind::WorkloadEndpoint | Kind::NetworkPolicy | Kind::NetworkSet
        )
    }
}

/// The prefixes the policy agent lists and watches.
pub fn prefixes() -> Vec<String> {
    Kind::ALL
        .iter()
        .map(|k| resources_prefix(k.plural()))
        .collect()
}

/// Which object a key names: its kind, namespace (empty for cluster-wide kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectId {
    /// The object an etcd key names, or `None` for a key of no watched kind.
    pub fn from_key(key: &str) -> Option<ObjectId> {
        for kind in Kind::ALL {
            let Some(rest) = key.strip_prefix(&resources_prefix(kind.plural())) else {
                continue;
            };
            let (namespace, name) = if kind.namespaced() {
                let (ns, name) = rest.split_once('/')?;
                (ns.to_string(), name.to_string())
            } else {
                (String::new(), rest.to_string())
            };
            if name.is_empty() || name.contains('/') {
                return None;
            }
            return Some(ObjectId {
                kind,
                namespace,
                name,
            });
        }
        None
    }
}

/// One object, parsed.
#[derive(Debug, Clone)]
pub enum Object {
    WorkloadEndpoint(Box<WorkloadEndpoint>),
    Profile(Box<Profile>),
    NetworkPolicy(Box<NetworkPolicy>),
    GlobalNetworkPolicy(Box<GlobalNetworkPolicy>),
    Tier(Box<Tier>),
    NetworkSet(Box<NetworkSet>),
    GlobalNetworkSet(Box<GlobalNetworkSet>),
    IpPool(Box<IpPool>),
    Node(Box<Node>),
    FelixConfiguration(Box<FelixConfiguration>),
    ClusterInformation(Box<ClusterInformation>),
}

/// A key's object, or why it is skipped.
pub fn parse(id: &ObjectId, kv: &Kv) -> Result<Object, String> {
    fn read<S: Serialize + DeserializeOwned + Clone>(kv: &Kv) -> Result<Box<Resource<S>>, String> {
        Resource::<S>::from_kv(kv)
            .map(Box::new)
            .map_err(|e| e.to_string())
    }
    Ok(match id.kind {
        Kind::WorkloadEndpoint => Object::WorkloadEndpoint(read(kv)?),
        Kind::Profile => Object::Profile(read(kv)?),
        Kind::NetworkPolicy => Object::NetworkPolicy(read(kv)?),
        Kind::GlobalNetworkPolicy => Object::GlobalNetworkPolicy(read(kv)?),
        Kind::Tier => Object::Tier(read(kv)?),
        Kind::NetworkSet => Object::NetworkSet(read(kv)?),
        Kind::GlobalNetworkSet => Object::GlobalNetworkSet(read(kv)?),
        Kind::IpPool => Object::IpPool(read(kv)?),
        Kind::Node => Object::Node(read(kv)?),
        Kind::FelixConfiguration => Object::FelixConfiguration(read(kv)?),
        Kind::ClusterInformation => Object::ClusterInformation(read(kv)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_objects() {
        let id = ObjectId::from_key(
            "/calico/resources/v3/projectcalico.org/networkpolicies/prod/default.web",
        )
        .expect("a policy");
        assert_eq!(id.kind, Kind::NetworkPolicy);
        assert_eq!(id.namespace, "prod");
        assert_eq!(id.name, "default.web");
        let id =
            ObjectId::from_key("/calico/resources/v3/projectcalico.org/globalnetworkpolicies/x")
                .expect("a global policy");
        assert_eq!(
            (id.kind, id.namespace.as_str()),
            (Kind::GlobalNetworkPolicy, "")
        );
        assert!(
            ObjectId::from_key("/calico/resources/v3/projectcalico.org/networkpolicies/x")
                .is_none()
        );
        assert!(ObjectId::from_key("/calico/ipam/v2/host/a").is_none());
        assert_eq!(prefixes().len(), Kind::ALL.len());
    }

    #[test]
    fn a_broken_object_says_why() {
        let id = ObjectId::from_key("/calico/resources/v3/projectcalico.org/tiers/t").expect("id");
        let kv = Kv {
            key: "/calico/resources/v3/projectcalico.org/tiers/t".into(),
            value: b"{not json".to_vec(),
            mod_revision: 3,
        };
        assert!(parse(&id, &kv).is_err());
    }
}
