//! The records the plugin keeps in the datastore: the WorkloadEndpoint (Calico's, field for
//! field, so Felix and calicoctl read it) and the per-network Profile.

use crate::workload::Context;
use calico_datastore::model::{
    EntityRule, Profile, ProfileSpec, Rule, WorkloadEndpoint, WorkloadEndpointPort,
    WorkloadEndpointSpec,
};
use ipnet::IpNet;
use std::collections::BTreeMap;

/// What `policy.type: k8s` learns from the Kubernetes API about the pod and its namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub service_account: String,
    pub generate_name: String,
    pub ports: Vec<WorkloadEndpointPort>,
    pub namespace_labels: BTreeMap<String, String>,
    pub namespace_annotations: BTreeMap<String, String>,
}

/// Calico's label for the service account, only if short enough to be a label value.
const SA_LABEL: &str = "projectcalico.org/serviceaccount";

/// The endpoint record for this attachment.
pub fn workload_endpoint(
    ctx: &Context,
    ifname: &str,
    addresses: &[IpNet],
    mac: &str,
    network: &str,
    pod: Option<&PodMeta>,
) -> WorkloadEndpoint {
    let w = &ctx.workload;
    let k8s = w.orchestrator == "k8s";
    let mut spec = WorkloadEndpointSpec {
        orchestrator: w.orchestrator.to_string(),
        node: ctx.node.clone(),
        container_id: w.container_id.clone(),
        pod: if k8s { w.pod.clone() } else { String::new() },
        endpoint: ifname.to_string(),
        ip_networks: addresses
            .iter()
            .map(|a| IpNet::from(a.addr()).to_string())
            .collect(),
        profiles: vec![network.to_string()],
        interface_name: ctx.host_ifname.clone(),
        mac: mac.to_string(),
        ..WorkloadEndpointSpec::default()
    };
    let mut labels = BTreeMap::new();
    let mut generate_name = String::new();
    if let Some(p) = pod {
        labels.extend(p.labels.clone());
        spec.profiles = vec![format!("kns.{}", w.namespace)];
        if !p.service_account.is_empty() {
            spec.service_account_name = p.service_account.clone();
            spec.profiles
                .push(format!("ksa.{}.{}", w.namespace, p.service_account));
            if p.service_account.len() < 63 {
                labels.insert(SA_LABEL.to_string(), p.service_account.clone());
            }
        }
        spec.ports = p.ports.clone();
        generate_name = p.generate_name.clone();
    }
    // Stored with every endpoint, as libcalico-go does.
    labels.insert(
        "projectcalico.org/namespace".to_string(),
        w.namespace.clone(),
    );
    labels.insert(
        "projectcalico.org/orchestrator".to_string(),
        w.orchestrator.to_string(),
    );
    let mut wep = WorkloadEndpoint::new("WorkloadEndpoint", &ctx.wep_name, spec);
    wep.metadata.namespace = w.namespace.clone();
    wep.metadata.labels = labels;
    wep.metadata.generate_name = generate_name;
    wep
}

/// The profile Calico creates per network when there is no `policy.type`: members may talk
/// to each other (any source for Kubernetes pods), and may send anywhere.
pub fn network_profile(network: &str, k8s: bool) -> Profile {
    let ingress = if k8s {
        Rule::allow()
    } else {
        Rule {
            source: Some(EntityRule {
                selector: format!("has({network})"),
                ..EntityRule::default()
            }),
            ..Rule::allow()
        }
    };
    Profile::new(
        "Profile",
        network,
        ProfileSpec {
            ingress: vec![ingress],
            egress: vec![Rule::allow()],
            labels_to_apply: [(network.to_string(), String::new())].into_iter().collect(),
            extra: serde_json::Map::new(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_ipam::cni::Workload;
    use serde_json::json;

    fn ctx(orch: &'static str) -> Context {
        Context {
            conf: calico_netconf::NetConf::default(),
            node: "node-1".into(),
            workload: Workload {
                node: "node-1".into(),
                orchestrator: orch,
                namespace: "default".into(),
                pod: if orch == "k8s" {
                    "nginx".into()
                } else {
                    String::new()
                },
                container_id: "abc123".into(),
            },
            host_ifname: "calic440f455693".into(),
            wep_name: "node--1-k8s-nginx-eth0".into(),
            wep_key: String::new(),
            handle: "net.abc123".into(),
        }
    }

    #[test]
    fn cni_endpoint_without_policy() {
        let addrs: Vec<IpNet> = vec!["10.244.1.5/26".parse().expect("cidr")];
        let wep = workload_endpoint(
            &ctx("cni"),
            "eth0",
            &addrs,
            "02:00:00:00:00:01",
            "mynet",
            None,
        );
        let v = serde_json::to_value(&wep).expect("encodes");
        assert_eq!(
            v,
            json!({"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3",
                "metadata":{"name":"node--1-k8s-nginx-eth0","namespace":"default",
                    "labels":{"projectcalico.org/namespace":"default","projectcalico.org/orchestrator":"cni"}},
                "spec":{"orchestrator":"cni","node":"node-1","containerID":"abc123","endpoint":"eth0",
                    "ipNetworks":["10.244.1.5/32"],"profiles":["mynet"],"interfaceName":"calic440f455693",
                    "mac":"02:00:00:00:00:01"}})
        );
    }

    #[test]
    fn k8s_endpoint_with_pod_metadata() {
        let pod = PodMeta {
            labels: [("app".to_string(), "nginx".to_string())]
                .into_iter()
                .collect(),
            service_account: "default".into(),
            generate_name: "nginx-".into(),
            ..PodMeta::default()
        };
        let addrs: Vec<IpNet> = vec!["fd00::5/122".parse().expect("cidr")];
        let wep = workload_endpoint(
            &ctx("k8s"),
            "eth0",
            &addrs,
            "02:00:00:00:00:01",
            "net",
            Some(&pod),
        );
        assert_eq!(wep.spec.pod, "nginx");
        assert_eq!(wep.spec.ip_networks, ["fd00::5/128"]);
        assert_eq!(wep.spec.profiles, ["kns.default", "ksa.default.default"]);
        assert_eq!(wep.spec.service_account_name, "default");
        assert_eq!(wep.metadata.generate_name, "nginx-");
        assert_eq!(wep.metadata.labels["app"], "nginx");
        assert_eq!(wep.metadata.labels[SA_LABEL], "default");
        assert_eq!(wep.metadata.labels["projectcalico.org/orchestrator"], "k8s");
    }

    #[test]
    fn network_profiles() {
        let v = serde_json::to_value(network_profile("mynet", false)).expect("encodes");
        assert_eq!(
            v["spec"],
            json!({"ingress":[{"action":"Allow","source":{"selector":"has(mynet)"}}],
                   "egress":[{"action":"Allow"}],"labelsToApply":{"mynet":""}})
        );
        let v = serde_json::to_value(network_profile("k8s-pod-network", true)).expect("encodes");
        assert_eq!(v["spec"]["ingress"], json!([{"action":"Allow"}]));
    }
}
