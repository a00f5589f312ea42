//! The driver proves itself on Debian's reference chain (`ptp` + `host-local`): add, check
//! and del of a pod on a simulated node, as a container runtime would run them.

use std::net::Ipv4Addr;

use serde_json::json;
use testkit::{CallOpts, CniPathDir, NetNs, Runtime, SimNode, Underlay, require};

#[test]
fn ptp_and_host_local_add_check_del_through_libcni() {
    require!(root; "ip", "go", "/usr/lib/cni/ptp", "/usr/lib/cni/host-local");
    let underlay = Underlay::new().unwrap();
    let node = SimNode::new(&underlay, "ref", Ipv4Addr::new(10, 10, 0, 31)).unwrap();
    let pod = NetNs::new("pod").unwrap();
    let path = CniPathDir::new().unwrap();
    path.add_reference("ptp").unwrap();
    path.add_reference("host-local").unwrap();

    let rt = Runtime::on_node(&node, path.path());
    rt.install_conflist(
        "10-ref.conflist",
        &json!({
            "cniVersion": "1.0.0",
            "name": "refnet",
            "plugins": [{
                "type": "ptp", "ipMasq": false, "mtu": 1400,
                "ipam": {"type": "host-local", "subnet": "10.99.7.0/24",
                         "routes": [{"dst": "0.0.0.0/0"}],
                         "dataDir": "/var/lib/cni/host-local"}
            }]
        }),
    )
    .unwrap();

    let result = rt
        .add("refnet", &pod.path(), &CallOpts::default())
        .unwrap()
        .unwrap();
    assert_eq!(result["cniVersion"], "1.0.0");
    let ip = result["ips"][0]["address"].as_str().unwrap();
    assert!(ip.starts_with("10.99.7."), "{result}");
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(
        result["interfaces"][1]["sandbox"],
        pod.path().to_str().unwrap()
    );
    // The address is really on the pod's eth0, and the node routes to it.
    let addrs = pod.sh("ip -4 -o addr show dev eth0").unwrap();
    assert!(addrs.contains(ip), "{addrs}");
    let host_ip = ip.split('/').next().unwrap();
    let route = node.sh(&format!("ip route get {host_ip}")).unwrap();
    assert!(route.contains("dev veth"), "{route}");
    // libcni cached the result inside the node, not on the host.
    let cached = std::fs::read_dir(node.cni_lib_dir().join("results"))
        .unwrap()
        .count();
    assert_eq!(cached, 1);

    rt.check("refnet", &pod.path(), &CallOpts::default())
        .unwrap()
        .unwrap();
    rt.del("refnet", &pod.path(), &CallOpts::default())
        .unwrap()
        .unwrap();
    assert!(pod.sh("ip link show eth0").is_err(), "eth0 still there");
    // DEL is idempotent.
    rt.del("refnet", &pod.path(), &CallOpts::default())
        .unwrap()
        .unwrap();
    // A 0.3.1 list cannot CHECK: libcni refuses before any plugin runs.
    rt.install_conflist(
        "20-old.conflist",
        &json!({"cniVersion":"0.3.1","name":"oldnet","plugins":[{"type":"ptp",
            "ipam":{"type":"host-local","subnet":"10.99.8.0/24","dataDir":"/var/lib/cni/hl2"}}]}),
    )
    .unwrap();
    let err = rt
        .check("oldnet", &pod.path(), &CallOpts::default())
        .unwrap()
        .unwrap_err();
    assert!(
        err.stderr.contains("does not support the CHECK command"),
        "{err}"
    );
}
