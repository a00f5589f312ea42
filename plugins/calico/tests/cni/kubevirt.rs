//! A KubeVirt VM keeps its addresses across a live migration between two nodes, with the
//! `calico` plugin running the IPAM in-process. Each node reaches its own stand-in for the
//! Kubernetes API (there is no API server on these machines) serving the recorded
//! virt-launcher pods, VMI and VM (testdata/k8s/kubevirt).

use crate::common::*;
use serde_json::{Value, json};
use testkit::k8s::K8sApiStandIn;
use testkit::{NetNs, require};

const NET: &str = "k8s-pod-network";
const VM_HANDLE: &str = "k8s-pod-network.vmi.vms.vm1";
const SOURCE: &str = "virt-launcher-vm1-abcde";
const TARGET: &str = "virt-launcher-vm1-fghij";

fn fixtures() -> std::path::PathBuf {
    testkit::driver::repo_root().join("testdata/k8s/kubevirt")
}

/// The stand-in on node `i`, with the kubeconfig the conflist names.
fn start_api(c: &testkit::Cluster, i: usize) -> K8sApiStandIn {
    let api = K8sApiStandIn::start(Some(c.node(i).netns()), "127.0.0.1".parse().unwrap()).unwrap();
    api.load_dir(&fixtures()).unwrap();
    api.write_kubeconfig(&c.node(i).conf_dir().join("calico-kubeconfig"))
        .unwrap();
    api
}

fn weps(c: &testkit::Cluster) -> Vec<(String, Value)> {
    c.values("/calico/resources/v3/projectcalico.org/workloadendpoints/vms/")
        .unwrap()
}

/// Mirrors Calico's calico + calico-ipam (ipam_plugin.go cmdAdd/handleVirtLauncherPod and
/// cmdDel) for the VM's pods: the source pod on node-1 and the migration target on node-2
/// get the same addresses under the VM's handle, each its own endpoint; the source's DEL
/// keeps the addresses; the target's DEL with the VM being deleted releases them.
#[test]
fn a_vm_keeps_its_addresses_when_it_migrates_to_another_node() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(2);
    let _api1 = start_api(&c, 0);
    let api2 = start_api(&c, 1);
    let mut list = conflist("1.0.0", json!({"assign_ipv6": "true"}));
    list["plugins"][0]["kubernetes"] = json!({"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"});
    for i in 0..2 {
        c.install(i, &list).unwrap();
    }
    let (rt1, rt2) = (c.runtime(0), c.runtime(1));
    let (src, dst) = (NetNs::new("vm-src").unwrap(), NetNs::new("vm-dst").unwrap());

    let r = rt1
        .add(NET, &src.path(), &pod_args("vms", SOURCE))
        .unwrap()
        .unwrap();
    let addrs = addresses(&r);
    assert_eq!(addrs.len(), 2, "{r}");
    assert!(
        c.values(&format!("/calico/ipam/v2/handle/{VM_HANDLE}"))
            .unwrap()
            .len()
            == 1
    );
    let ip4 = addrs[0].trim_end_matches("/32");
    assert!(
        sh(&src, "ip -o -4 addr show dev eth0").contains(&format!("{ip4}/32")),
        "the source pod has the VM's address"
    );

    let r = rt2
        .add(NET, &dst.path(), &pod_args("vms", TARGET))
        .unwrap()
        .unwrap();
    assert_eq!(addresses(&r), addrs, "the target gets the same addresses");
    assert!(sh(&dst, "ip -o -4 addr show dev eth0").contains(&format!("{ip4}/32")));
    let endpoints = weps(&c);
    assert_eq!(endpoints.len(), 2, "an endpoint per pod");
    for (_, w) in &endpoints {
        let nets: Vec<&str> = w["spec"]["ipNetworks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(nets, addrs, "{w}");
    }
    let blocks = c.values("/calico/ipam/v2/assignment/").unwrap();
    let alternates = blocks
        .iter()
        .flat_map(|(_, b)| b["attributes"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["handle_id"] == VM_HANDLE)
        .map(|a| a["alternateOwnerAttrs"]["pod"].clone())
        .collect::<Vec<_>>();
    assert_eq!(alternates, [json!(TARGET), json!(TARGET)]);

    rt1.del(NET, &src.path(), &pod_args("vms", SOURCE))
        .unwrap()
        .unwrap();
    assert_eq!(weps(&c).len(), 1, "the source's endpoint goes");
    assert_eq!(
        c.values(&format!("/calico/ipam/v2/handle/{VM_HANDLE}"))
            .unwrap()
            .len(),
        1,
        "the addresses stay with the VM"
    );

    let text = std::fs::read_to_string(fixtures().join("recorded-vm-vms-vm1.json")).unwrap();
    let mut vm: Value = serde_json::from_str(&text).unwrap();
    vm["metadata"]["deletionTimestamp"] = json!("2026-05-01T11:00:00Z");
    api2.add_object(vm);
    rt2.del(NET, &dst.path(), &pod_args("vms", TARGET))
        .unwrap()
        .unwrap();
    assert!(weps(&c).is_empty());
    assert!(c.values("/calico/ipam/v2/handle/").unwrap().is_empty());
}
