//! KubeVirt VMs keep their addresses across their pods, through the `calico-ipam` binary and
//! libcni, with the Kubernetes API stand-in serving the recorded virt-launcher pods, VMIs and
//! VM (testdata/k8s/kubevirt; there is no API server on these machines).

use calico_datastore::model::keys;
use serde_json::{Value, json};
use testkit::k8s::K8sApiStandIn;
use testkit::{CallOpts, require};

use crate::lab::Lab;

const NET: &str = "k8s-pod-network";
const VM_HANDLE: &str = "k8s-pod-network.vmi.vms.vm1";
const SOURCE: &str = "virt-launcher-vm1-abcde";
const TARGET: &str = "virt-launcher-vm1-fghij";

fn fixtures() -> std::path::PathBuf {
    testkit::driver::repo_root().join("testdata/k8s/kubevirt")
}

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A lab with dual-stack pools, the API stand-in and the network on node-1 and node-2,
/// both configured with the stand-in's kubeconfig.
fn vm_lab() -> (Lab, K8sApiStandIn) {
    let lab = Lab::new();
    lab.add_pool("v4", "10.244.0.0/16", |_| {});
    lab.add_pool("v6", "fd00:10:244::/48", |_| {});
    let api = K8sApiStandIn::start(None, "127.0.0.1".parse().unwrap()).unwrap();
    api.load_dir(&fixtures()).unwrap();
    let kubeconfig = lab.dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    for node in ["node-1", "node-2"] {
        let mut p = lab.plugin(node, json!({"assign_ipv6": "true"}));
        p["kubernetes"] = json!({"kubeconfig": kubeconfig});
        lab.install_on(node, NET, p);
    }
    (lab, api)
}

fn pod_args(pod: &str) -> CallOpts {
    CallOpts::args(&format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=vms;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID=x"
    ))
}

/// The attribute entry of every allocation of `handle`, per address.
fn attributes_of(lab: &Lab, handle: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (_, text) in lab.etcd.get_prefix("/calico/ipam/v2/assignment/").unwrap() {
        let b: Value = serde_json::from_str(&text).unwrap();
        let cidr: ipnet::IpNet = b["cidr"].as_str().unwrap().parse().unwrap();
        for (ord, a) in b["allocations"].as_array().unwrap().iter().enumerate() {
            let Some(i) = a.as_u64() else { continue };
            let attr = &b["attributes"][i as usize];
            if attr["handle_id"] == handle {
                let ip = calico_ipam::block::address(&cidr, ord);
                out.push((ip.to_string(), attr.clone()));
            }
        }
    }
    out
}

/// Mirrors ipam_plugin.go cmdAdd/handleVirtLauncherPod/cmdDel across two nodes: the VM's
/// first pod on node-1 is assigned under the VM's handle with the VMI attributes; the live
/// migration target on node-2 gets the same addresses as alternate owner and no routes;
/// the source's DEL only gives up its claim; with the VM being deleted, the last pod's DEL
/// releases the addresses.
#[test]
fn a_vm_keeps_its_addresses_across_a_live_migration_to_another_node() {
    require!("etcd", "go");
    let (lab, api) = vm_lab();
    let (n1, n2) = (lab.node_runtime("node-1"), lab.node_runtime("node-2"));
    let (src, dst) = (lab.pod(SOURCE), lab.pod(TARGET));

    let r = n1.add(NET, &src, &pod_args(SOURCE)).unwrap().unwrap();
    let addrs = Lab::addresses(&r);
    assert_eq!(addrs.len(), 2, "{r}");
    assert_eq!(r["routes"].as_array().unwrap().len(), 2, "{r}");
    assert!(lab.handle_exists(VM_HANDLE));
    let attrs = attributes_of(&lab, VM_HANDLE);
    assert_eq!(attrs.len(), 2);
    for (_, a) in &attrs {
        let s = &a["secondary"];
        assert_eq!(s["pod"], SOURCE);
        assert_eq!(s["node"], "node-1");
        assert_eq!(s["vmi-name"], "vm1");
        assert_eq!(s["vmi-uid"], "7c1d2e3f-4a5b-4c6d-9e7f-000000000002");
        assert_eq!(s["vm-uid"], "0b7a6f3e-1c2d-4e5f-8a9b-000000000001");
        assert!(s.get("vmim-uid").is_none());
    }
    n1.check(NET, &src, &pod_args(SOURCE)).unwrap().unwrap();
    assert!(
        api.requests()
            .iter()
            .any(|r| r.contains("/virtualmachineinstances/vm1")),
        "{:?}",
        api.requests()
    );

    // The migration target on node-2: same addresses, alternate owner, no routes.
    let r = n2.add(NET, &dst, &pod_args(TARGET)).unwrap().unwrap();
    assert_eq!(Lab::addresses(&r), addrs);
    assert_eq!(
        r["routes"],
        json!(null),
        "no routes for a migration target: {r}"
    );
    for (_, a) in attributes_of(&lab, VM_HANDLE) {
        assert_eq!(a["secondary"]["pod"], SOURCE, "still the active owner");
        let alt = &a["alternateOwnerAttrs"];
        assert_eq!(alt["pod"], TARGET);
        assert_eq!(alt["node"], "node-2");
        assert_eq!(alt["vmim-uid"], "3e2d1c0b-aaaa-4bbb-8ccc-000000000003");
    }
    let handle = lab.get_json(&keys::handle(VM_HANDLE)).unwrap();
    assert_eq!(
        handle["block"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_i64().unwrap())
            .sum::<i64>(),
        2,
        "nothing new allocated: {handle}"
    );

    // The source pod goes (the VM lives on): its claim goes, the addresses stay.
    n1.del(NET, &src, &pod_args(SOURCE)).unwrap().unwrap();
    assert!(lab.handle_exists(VM_HANDLE));
    for (_, a) in attributes_of(&lab, VM_HANDLE) {
        assert!(a.get("secondary").is_none(), "{a}");
        assert_eq!(a["alternateOwnerAttrs"]["pod"], TARGET);
    }

    // The VM is deleted: the target's DEL releases everything.
    let mut vm = fixture("recorded-vm-vms-vm1.json");
    vm["metadata"]["deletionTimestamp"] = json!("2026-05-01T11:00:00Z");
    api.add_object(vm);
    n2.del(NET, &dst, &pod_args(TARGET)).unwrap().unwrap();
    assert!(!lab.handle_exists(VM_HANDLE));
    assert!(attributes_of(&lab, VM_HANDLE).is_empty());
    // DEL again: idempotent.
    n2.del(NET, &dst, &pod_args(TARGET)).unwrap().unwrap();
}

/// Mirrors cmdAdd with kubeVirtVMAddressPersistence Disabled in the IPAMConfiguration (the
/// object Calico's CNI reads, getKubeVirtVMAddressPersistence): a migration target is
/// refused, and the VM's pods are ordinary pods (container handles, no VMI attributes).
#[test]
fn with_persistence_disabled_migration_targets_are_refused() {
    require!("etcd", "go");
    let (lab, _api) = vm_lab();
    lab.put_json(
        &keys::resource("ipamconfigurations", "default"),
        &json!({"kind": "IPAMConfiguration", "apiVersion": "projectcalico.org/v3",
                "metadata": {"name": "default"},
                "spec": {"strictAffinity": false, "autoAllocateBlocks": true,
                         "kubeVirtVMAddressPersistence": "Disabled"}}),
    );
    let (n1, n2) = (lab.node_runtime("node-1"), lab.node_runtime("node-2"));
    let before = lab.dump();
    let e = n2
        .add(NET, &lab.pod(TARGET), &pod_args(TARGET))
        .unwrap()
        .unwrap_err();
    assert!(
        e.msg.contains("KubeVirtVMAddressPersistence is disabled"),
        "{e}"
    );
    assert_eq!(lab.dump(), before, "nothing written");
    let src = lab.pod(SOURCE);
    n1.add(NET, &src, &pod_args(SOURCE)).unwrap().unwrap();
    assert!(!lab.handle_exists(VM_HANDLE));
    let handles = lab.etcd.get_prefix("/calico/ipam/v2/handle/").unwrap();
    assert_eq!(handles.len(), 1);
    let handle = handles[0]
        .0
        .trim_start_matches("/calico/ipam/v2/handle/")
        .to_string();
    assert!(!handle.contains(".vmi."), "{handle}");
    for (_, a) in attributes_of(&lab, &handle) {
        assert!(a["secondary"].get("vmi-uid").is_none(), "{a}");
    }
    n1.del(NET, &src, &pod_args(SOURCE)).unwrap().unwrap();
    assert!(
        lab.etcd
            .get_prefix("/calico/ipam/v2/handle/")
            .unwrap()
            .is_empty()
    );
}

/// Mirrors cmdDel's errPodNotFound (a parallel DEL during a migration): a virt-launcher pod
/// the API no longer has releases nothing, and succeeds; its ADD fails. A standalone VMI's
/// addresses go with the VMI.
#[test]
fn a_deleted_virt_launcher_pod_releases_nothing_and_a_standalone_vmi_decides_itself() {
    require!("etcd", "go");
    let (lab, api) = vm_lab();
    let n1 = lab.node_runtime("node-1");
    let src = lab.pod(SOURCE);
    n1.add(NET, &src, &pod_args(SOURCE)).unwrap().unwrap();
    let pod = fixture("recorded-pod-vms-virt-launcher-vm1-abcde.json");
    api.remove_object(&pod);
    n1.del(NET, &src, &pod_args(SOURCE)).unwrap().unwrap();
    assert_eq!(attributes_of(&lab, VM_HANDLE).len(), 2, "still the VM's");
    let e = n1
        .add(NET, &lab.pod("again"), &pod_args(SOURCE))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(3), "{e}");

    // A VMI without a VM: its own deletion releases.
    let solo = "virt-launcher-solo-klmno";
    let p = lab.pod(solo);
    n1.add(NET, &p, &pod_args(solo)).unwrap().unwrap();
    let solo_handle = "k8s-pod-network.vmi.vms.solo";
    assert!(lab.handle_exists(solo_handle));
    n1.del(NET, &p, &pod_args(solo)).unwrap().unwrap();
    assert!(lab.handle_exists(solo_handle), "the VMI lives on");
    n1.add(NET, &p, &pod_args(solo)).unwrap().unwrap();
    let mut vmi = fixture("recorded-vmi-vms-solo.json");
    vmi["metadata"]["deletionTimestamp"] = json!("2026-05-01T11:00:00Z");
    api.add_object(vmi);
    n1.del(NET, &p, &pod_args(solo)).unwrap().unwrap();
    assert!(!lab.handle_exists(solo_handle));
}

/// A VM whose first pod ran on a node with Calico's Go plugins (its allocation as
/// ipam_plugin.go cmdAdd stores it: testdata/calico/kubevirt-vm-block-v3.32.json) migrates to
/// a node running ours: the target gets the same address as alternate owner
/// (handleVirtLauncherPod), and what Go wrote is kept as it was.
#[test]
fn a_vm_started_by_calicos_go_plugin_migrates_to_our_node() {
    require!("etcd", "go");
    let (lab, _api) = vm_lab();
    let block = std::fs::read_to_string(
        testkit::driver::repo_root().join("testdata/calico/kubevirt-vm-block-v3.32.json"),
    )
    .unwrap();
    let cidr: ipnet::IpNet = "10.244.64.0/26".parse().unwrap();
    lab.etcd.put(&keys::block(&cidr), block.trim()).unwrap();
    lab.etcd
        .put(
            &keys::handle(VM_HANDLE),
            r#"{"block":{"10.244.64.0/26":1},"deleted":false}"#,
        )
        .unwrap();
    lab.etcd
        .put(
            &keys::affinity("node-1", &cidr),
            r#"{"state":"confirmed","deleted":false}"#,
        )
        .unwrap();

    let n2 = lab.node_runtime("node-2");
    let dst = lab.pod(TARGET);
    let r = n2.add(NET, &dst, &pod_args(TARGET)).unwrap().unwrap();
    assert_eq!(Lab::addresses(&r), ["10.244.64.5"], "{r}");
    let attrs = attributes_of(&lab, VM_HANDLE);
    assert_eq!(attrs.len(), 1);
    let (_, a) = &attrs[0];
    let go: Value = serde_json::from_str(&block).unwrap();
    assert_eq!(
        a["secondary"], go["attributes"][0]["secondary"],
        "Go's owner kept"
    );
    let alt = &a["alternateOwnerAttrs"];
    assert_eq!(alt["pod"], TARGET);
    assert_eq!(alt["node"], "node-2");
    assert_eq!(alt["vmi-name"], "vm1");
    assert_eq!(alt["vmim-uid"], "3e2d1c0b-aaaa-4bbb-8ccc-000000000003");
    let handle = lab.get_json(&keys::handle(VM_HANDLE)).unwrap();
    assert_eq!(handle["block"], json!({"10.244.64.0/26": 1}), "{handle}");
}
