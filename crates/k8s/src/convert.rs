//! The JSON of a Pod, a Namespace and the metadata of any object (KubeVirt's VMI and VM),
//! reduced to what Calico uses.
//!
//! Only the fields read are declared; every one may be absent or `null` (the API server omits
//! empty ones), so a field never fails the read unless it has the wrong type.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::{Namespace, Pod, PodPort};

/// A Pod as `GET /api/v1/namespaces/{ns}/pods/{name}` returns it (the fields Calico reads).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodObject {
    #[serde(deserialize_with = "or_default")]
    pub metadata: ObjectMeta,
    #[serde(deserialize_with = "or_default")]
    pub spec: PodSpec,
}

/// Any object of which only the metadata is read: a Namespace, a KubeVirt VMI or VM, a pod
/// for its owners.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MetadataObject {
    #[serde(deserialize_with = "or_default")]
    pub metadata: ObjectMeta,
}

/// A Namespace as `GET /api/v1/namespaces/{ns}` returns it: Calico reads its metadata.
pub type NamespaceObject = MetadataObject;

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(deserialize_with = "or_default")]
    pub name: String,
    #[serde(deserialize_with = "or_default")]
    pub namespace: String,
    #[serde(deserialize_with = "or_default")]
    pub uid: String,
    #[serde(deserialize_with = "or_default")]
    pub generate_name: String,
    #[serde(deserialize_with = "or_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "or_default")]
    pub annotations: BTreeMap<String, String>,
    /// What the KubeVirt checks follow from a pod to its VMI and from a VMI to its VM.
    #[serde(deserialize_with = "or_default")]
    pub owner_references: Vec<OwnerReference>,
    /// Empty unless the object is being deleted (RFC 3339 otherwise; only its presence is
    /// read).
    #[serde(deserialize_with = "or_default")]
    pub deletion_timestamp: String,
}

/// `metadata.ownerReferences[]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct OwnerReference {
    #[serde(deserialize_with = "or_default")]
    pub api_version: String,
    #[serde(deserialize_with = "or_default")]
    pub kind: String,
    #[serde(deserialize_with = "or_default")]
    pub name: String,
    #[serde(deserialize_with = "or_default")]
    pub uid: String,
    #[serde(deserialize_with = "or_default")]
    pub controller: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(deserialize_with = "or_default")]
    pub service_account_name: String,
    #[serde(deserialize_with = "or_default")]
    pub containers: Vec<Container>,
    #[serde(deserialize_with = "or_default")]
    pub init_containers: Vec<Container>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Container {
    #[serde(deserialize_with = "or_default")]
    pub ports: Vec<ContainerPort>,
}

/// `spec.containers[].ports[]`. The numbers are read wide so that an out-of-range value is
/// dropped (see [`endpoint_ports`]) rather than failing the whole pod.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(deserialize_with = "or_default")]
    pub name: String,
    #[serde(deserialize_with = "or_default")]
    pub protocol: String,
    #[serde(deserialize_with = "or_default")]
    pub container_port: i64,
    #[serde(deserialize_with = "or_default")]
    pub host_port: i64,
    #[serde(rename = "hostIP", deserialize_with = "or_default")]
    pub host_ip: String,
}

fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The ports a WorkloadEndpoint gets, as Calico's `appendEndpointPorts`: the containers'
/// ports, then the init containers', each kept only if `containerPort != 0` and it has a
/// `hostPort` or a name.
///
/// The protocol must be exactly `TCP` (or empty, Kubernetes' default), `UDP` or `SCTP`, as
/// Calico compares with the `v1.Protocol` constants (the API server accepts nothing else);
/// any other value skips the port. The result carries the canonical upper-case name.
///
/// Calico truncates the numbers to 16 bits; ports outside 1..=65535 (host port 0..=65535)
/// cannot pass the API server's validation, and are skipped here.
pub fn endpoint_ports(containers: &[Container], init_containers: &[Container]) -> Vec<PodPort> {
    containers
        .iter()
        .chain(init_containers)
        .flat_map(|c| &c.ports)
        .filter_map(endpoint_port)
        .collect()
}

fn endpoint_port(port: &ContainerPort) -> Option<PodPort> {
    if port.container_port == 0 || (port.host_port == 0 && port.name.is_empty()) {
        return None;
    }
    let protocol = match port.protocol.as_str() {
        "TCP" | "" => "TCP",
        "UDP" => "UDP",
        "SCTP" => "SCTP",
        _ => return None,
    };
    Some(PodPort {
        name: port.name.clone(),
        protocol: protocol.to_string(),
        container_port: u16::try_from(port.container_port).ok()?,
        host_port: u16::try_from(port.host_port).ok()?,
        host_ip: port.host_ip.clone(),
    })
}

impl PodObject {
    /// The pod, its namespace and name falling back to the requested ones if the answer
    /// left them out.
    pub fn into_pod(self, namespace: &str, name: &str) -> Pod {
        let ports = endpoint_ports(&self.spec.containers, &self.spec.init_containers);
        let meta = self.metadata;
        Pod {
            name: if meta.name.is_empty() {
                name.to_string()
            } else {
                meta.name
            },
            namespace: if meta.namespace.is_empty() {
                namespace.to_string()
            } else {
                meta.namespace
            },
            uid: meta.uid,
            generate_name: meta.generate_name,
            labels: meta.labels,
            annotations: meta.annotations,
            service_account: self.spec.service_account_name,
            ports,
        }
    }
}

impl MetadataObject {
    /// The namespace, its name falling back to the requested one.
    pub fn into_namespace(self, name: &str) -> Namespace {
        let meta = self.metadata;
        Namespace {
            name: if meta.name.is_empty() {
                name.to_string()
            } else {
                meta.name
            },
            labels: meta.labels,
            annotations: meta.annotations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn port(name: &str, protocol: &str, container: i64, host: i64) -> ContainerPort {
        ContainerPort {
            name: name.to_string(),
            protocol: protocol.to_string(),
            container_port: container,
            host_port: host,
            host_ip: String::new(),
        }
    }

    fn container(ports: Vec<ContainerPort>) -> Container {
        Container { ports }
    }

    fn summary(ports: &[PodPort]) -> Vec<(String, String, u16, u16)> {
        ports
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.protocol.clone(),
                    p.container_port,
                    p.host_port,
                )
            })
            .collect()
    }

    #[test]
    fn keeps_named_or_host_ports_with_a_container_port() {
        let ports = endpoint_ports(
            &[container(vec![
                port("http", "TCP", 80, 0), // named: kept
                port("", "TCP", 8443, 0),   // neither name nor host port: dropped
                port("", "UDP", 53, 5353),  // host port: kept
                port("zero", "TCP", 0, 0),  // container port 0: dropped
                port("", "TCP", 0, 9000),   // container port 0: dropped
            ])],
            &[],
        );
        assert_eq!(
            summary(&ports),
            vec![
                ("http".into(), "TCP".into(), 80, 0),
                ("".into(), "UDP".into(), 53, 5353)
            ]
        );
    }

    #[test]
    fn containers_come_before_init_containers() {
        let ports = endpoint_ports(
            &[
                container(vec![port("a", "TCP", 1, 0)]),
                container(vec![port("b", "TCP", 2, 0)]),
            ],
            &[container(vec![port("init", "TCP", 3, 0)])],
        );
        let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "init"]);
    }

    #[test]
    fn protocols_as_calico_compares_them() {
        let ports = endpoint_ports(
            &[container(vec![
                port("empty", "", 1, 0),
                port("tcp", "TCP", 2, 0),
                port("udp", "UDP", 3, 0),
                port("sctp", "SCTP", 4, 0),
                port("icmp", "ICMP", 5, 0),
                // Not a v1.Protocol constant: Calico's switch skips it too.
                port("lower", "udp", 6, 0),
            ])],
            &[],
        );
        let got: Vec<(&str, &str)> = ports
            .iter()
            .map(|p| (p.name.as_str(), p.protocol.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("empty", "TCP"),
                ("tcp", "TCP"),
                ("udp", "UDP"),
                ("sctp", "SCTP")
            ]
        );
    }

    #[test]
    fn out_of_range_numbers_are_skipped() {
        let ports = endpoint_ports(
            &[container(vec![
                port("big", "TCP", 70000, 0),
                port("neg", "TCP", -1, 0),
                port("badhost", "TCP", 80, 65536),
                port("max", "TCP", 65535, 65535),
            ])],
            &[],
        );
        assert_eq!(
            summary(&ports),
            vec![("max".into(), "TCP".into(), 65535, 65535)]
        );
    }

    #[test]
    fn reads_a_pod_with_missing_and_null_fields() {
        let object: PodObject = serde_json::from_value(json!({
            "kind": "Pod",
            "metadata": {"name": "p", "labels": null, "annotations": {"a": "b"}},
            "spec": {
                "containers": [
                    {"name": "c", "ports": null},
                    {"name": "d", "ports": [{"containerPort": 80, "hostPort": 8080, "hostIP": "10.0.0.1"}]}
                ],
                "initContainers": null
            },
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        let pod = object.into_pod("ns", "p");
        assert_eq!(pod.name, "p");
        assert_eq!(pod.namespace, "ns");
        assert!(pod.labels.is_empty());
        assert_eq!(pod.annotations.get("a").map(String::as_str), Some("b"));
        assert_eq!(pod.service_account, "");
        assert_eq!(
            pod.ports,
            vec![PodPort {
                name: String::new(),
                protocol: "TCP".into(),
                container_port: 80,
                host_port: 8080,
                host_ip: "10.0.0.1".into(),
            }]
        );
    }

    #[test]
    fn reads_a_namespace() {
        let object: NamespaceObject = serde_json::from_value(json!({
            "metadata": {"name": "team-a", "labels": {"team": "a"}},
            "spec": {"finalizers": ["kubernetes"]}
        }))
        .unwrap();
        let ns = object.into_namespace("team-a");
        assert_eq!(ns.name, "team-a");
        assert_eq!(ns.labels.get("team").map(String::as_str), Some("a"));
        assert!(ns.annotations.is_empty());
    }

    #[test]
    fn a_wrong_type_is_an_error() {
        let r: Result<PodObject, _> =
            serde_json::from_value(json!({"metadata": {"labels": ["not", "a", "map"]}}));
        assert!(r.is_err());
    }
}
