//! Reads of one object: a Namespace alone (its labels feed the IP pools'
//! `namespaceSelector`, which Calico IPAM reads whenever a kubeconfig is set, see
//! `ipam_plugin.go`) and a Node (its pod CIDRs replace host-local's `usePodCidr`, see
//! `k8s.go` `getPodCidrs`). Same client, runtime and error sorting as
//! [`fetch_pod_and_namespace`](crate::fetch_pod_and_namespace).

use serde::Deserialize;

use crate::convert::{NamespaceObject, ObjectMeta};
use crate::fetch::{get, segment, with_client};
use crate::{K8sConfig, K8sError, Namespace, Node};

/// A Node as `GET /api/v1/nodes/{name}` returns it (the fields Calico reads).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NodeObject {
    pub metadata: Option<ObjectMeta>,
    pub spec: Option<NodeSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NodeSpec {
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Option<Vec<String>>,
}

impl NodeObject {
    /// The node, its name falling back to the requested one.
    pub fn into_node(self, name: &str) -> Node {
        let meta = self.metadata.unwrap_or_default();
        let spec = self.spec.unwrap_or_default();
        Node {
            name: if meta.name.is_empty() {
                name.to_string()
            } else {
                meta.name
            },
            pod_cidr: spec.pod_cidr.unwrap_or_default(),
            pod_cidrs: spec.pod_cidrs.unwrap_or_default(),
        }
    }
}

/// Reads the namespace `namespace` (for its labels), as Calico IPAM's `getNamespace`.
pub fn fetch_namespace(cfg: &K8sConfig, namespace: &str) -> Result<Namespace, K8sError> {
    if namespace.is_empty() {
        return Err(K8sError::Config(
            "an empty namespace name cannot be read".into(),
        ));
    }
    with_client(cfg, |client, url| async move {
        let path = format!("/api/v1/namespaces/{}", segment(namespace));
        let object: NamespaceObject = get(&client, &url, &path, ("Namespace", namespace)).await?;
        Ok(object.into_namespace(namespace))
    })
}

/// Reads the node `name` (for its pod CIDRs), as Calico's `getPodCidrs`.
pub fn fetch_node(cfg: &K8sConfig, name: &str) -> Result<Node, K8sError> {
    if name.is_empty() {
        return Err(K8sError::Config("an empty node name cannot be read".into()));
    }
    with_client(cfg, |client, url| async move {
        let path = format!("/api/v1/nodes/{}", segment(name));
        let object: NodeObject = get(&client, &url, &path, ("Node", name)).await?;
        Ok(object.into_node(name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_a_node_with_missing_and_null_fields() {
        let object: NodeObject = serde_json::from_value(json!({
            "kind": "Node",
            "metadata": {"name": "node-1"},
            "spec": {"podCIDR": "10.85.0.0/24", "podCIDRs": ["10.85.0.0/24", "fd85::/64"]}
        }))
        .unwrap();
        let node = object.into_node("node-1");
        assert_eq!(node.pod_cidr, "10.85.0.0/24");
        assert_eq!(node.pod_cidrs, ["10.85.0.0/24", "fd85::/64"]);
        let object: NodeObject =
            serde_json::from_value(json!({"metadata": {}, "spec": {"podCIDRs": null}})).unwrap();
        let node = object.into_node("n");
        assert_eq!(node.name, "n");
        assert!(node.pod_cidrs.is_empty() && node.pod_cidr.is_empty());
    }
}
