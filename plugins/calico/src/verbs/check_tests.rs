//! CHECK's comparisons without root: every mismatch, each from a state that matches with one
//! thing changed (the verb against the real kernel is tested in tests/cni/gc_check.rs).

use super::*;
use calico_dataplane::fake::route;
use calico_dataplane::netlink::Link;
use calico_dataplane::workload::default_routes;
use serde_json::json;

const HOST_IF: &str = "calic440f455693";
const POD_MAC: [u8; 6] = [0x02, 0x42, 0, 0, 0, 7];
const HOST_INDEX: u32 = 7;
const POD_INDEX: u32 = 2;

fn net(s: &str) -> IpNet {
    s.parse().expect("CIDR")
}

/// A dual-stack pod with Calico's default routes.
fn wanted() -> Wanted {
    Wanted {
        spec: WorkloadSpec {
            netns: "/run/netns/pod".into(),
            ifname: "eth0".into(),
            host_ifname: HOST_IF.into(),
            mtu: None,
            num_queues: 1,
            pod_mac: [0; 6],
            v4: true,
            v6: true,
            routes: default_routes(),
            allow_ip_forwarding: false,
        },
        addresses: vec![net("10.0.0.5/32"), net("fd00::5/128")],
        wep_name: "n1-k8s-pod0-eth0".into(),
        container_id: "c1".into(),
    }
}

fn link(index: u32, name: &str, mac: [u8; 6]) -> Link {
    Link {
        index,
        name: name.into(),
        mac: Some(mac),
        up: true,
        mtu: None,
        peer: None,
    }
}

/// What an ADD of [`wanted`] leaves in the kernel.
fn found() -> Observed {
    Observed {
        host: Some(link(HOST_INDEX, HOST_IF, HOST_MAC)),
        pod: Some(link(POD_INDEX, "eth0", POD_MAC)),
        pod_addresses: vec![net("fd00::5/128"), net("10.0.0.5/32")],
        pod_routes: vec![
            route(net("169.254.1.1/32"), None, POD_INDEX, true),
            route(
                net("0.0.0.0/0"),
                Some(IpAddr::V4(GATEWAY_V4)),
                POD_INDEX,
                false,
            ),
            route(net("::/0"), Some(IpAddr::V6(GATEWAY_V6)), POD_INDEX, false),
        ],
        host_routes: vec![
            route(net("10.0.0.5/32"), None, HOST_INDEX, true),
            route(net("fd00::5/128"), None, HOST_INDEX, true),
        ],
    }
}

/// The endpoint record an ADD of [`wanted`] writes, with `spec` changed.
fn record(spec: serde_json::Value) -> Kv {
    let mut wep = json!({"kind": "WorkloadEndpoint", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "n1-k8s-pod0-eth0", "namespace": "default"},
        "spec": {"orchestrator": "k8s", "node": "n1", "containerID": "c1", "pod": "pod0",
                 "endpoint": "eth0", "ipNetworks": ["10.0.0.5/32", "fd00::5/128"],
                 "interfaceName": HOST_IF, "mac": "02:42:00:00:00:07"}});
    for (k, v) in spec.as_object().expect("object") {
        wep["spec"][k] = v.clone();
    }
    Kv {
        key: "/calico/resources/v3/projectcalico.org/workloadendpoints/default/n1-k8s-pod0-eth0"
            .into(),
        value: wep.to_string().into_bytes(),
        mod_revision: 3,
    }
}

/// The mismatch's message; panics unless it is code 106.
fn kernel_says(wanted: &Wanted, seen: &Observed) -> String {
    let e = wanted.kernel_mismatch(seen).expect_err("a mismatch");
    assert_eq!(e.code, ErrorCode::CHECK_FAILED, "{}", e.msg);
    e.msg
}

fn record_says(record: Option<&Kv>, pod_mac: Option<[u8; 6]>) -> String {
    let e = wanted()
        .record_mismatch(record, pod_mac)
        .expect_err("a mismatch");
    assert_eq!(e.code, ErrorCode::CHECK_FAILED, "{}", e.msg);
    e.msg
}

#[test]
fn what_the_add_made_matches() {
    wanted().kernel_mismatch(&found()).expect("kernel matches");
    wanted()
        .record_mismatch(Some(&record(json!({}))), Some(POD_MAC))
        .expect("record matches");
    // Routes of a family the pod does not have are not looked for.
    let v4_only = Wanted {
        spec: WorkloadSpec {
            v6: false,
            ..wanted().spec
        },
        addresses: vec![net("10.0.0.5/32")],
        ..wanted()
    };
    let mut seen = found();
    seen.pod_addresses.retain(|a| a.addr().is_ipv4());
    seen.pod_routes.retain(|r| r.dst.addr().is_ipv4());
    v4_only.kernel_mismatch(&seen).expect("IPv4 only matches");
}

#[test]
fn the_host_end_must_exist_with_calicos_mac_and_be_up() {
    let mut seen = found();
    seen.host = None;
    assert_eq!(
        kernel_says(&wanted(), &seen),
        "host interface calic440f455693 does not exist"
    );
    let mut seen = found();
    seen.host = Some(link(HOST_INDEX, HOST_IF, [2, 0, 0, 0, 0, 1]));
    assert_eq!(
        kernel_says(&wanted(), &seen),
        "host interface calic440f455693 has MAC Some(\"02:00:00:00:00:01\"), expected \
         ee:ee:ee:ee:ee:ee"
    );
    let mut seen = found();
    seen.host.as_mut().expect("host").up = false;
    assert_eq!(
        kernel_says(&wanted(), &seen),
        "host interface calic440f455693 is down"
    );
}

#[test]
fn the_pod_interface_must_carry_exactly_the_addresses() {
    let mut seen = found();
    seen.pod = None;
    assert_eq!(
        kernel_says(&wanted(), &seen),
        "interface eth0 does not exist in the pod"
    );
    let mut seen = found();
    seen.pod_addresses.pop();
    assert_eq!(
        kernel_says(&wanted(), &seen),
        "interface eth0 in the pod has addresses {fd00::5/128}, expected {10.0.0.5/32, \
         fd00::5/128}"
    );
    let mut seen = found();
    seen.pod_addresses.push(net("10.0.0.6/32"));
    assert!(kernel_says(&wanted(), &seen).contains("has addresses {10.0.0.5/32, 10.0.0.6/32"));
}

#[test]
fn the_pods_routes_must_be_there_via_the_gateways() {
    let mut seen = found();
    seen.pod_routes.remove(0);
    assert_eq!(
        kernel_says(&wanted(), &seen),
        "the pod has no route to 169.254.1.1"
    );
    let mut seen = found();
    seen.pod_routes.remove(1);
    assert_eq!(
        kernel_says(&wanted(), &seen),
        "the pod has no route to 0.0.0.0/0 via 169.254.1.1"
    );
    let mut seen = found();
    seen.pod_routes[2].gateway = Some(IpAddr::V6("fe80::1".parse().expect("ip")));
    assert_eq!(
        kernel_says(&wanted(), &seen),
        "the pod has no route to ::/0 via fe80::ecee:eeff:feee:eeee"
    );
    // Configured routes (host-local's `routes`) instead of the defaults.
    let custom = Wanted {
        spec: WorkloadSpec {
            routes: vec![net("10.96.0.0/12")],
            ..wanted().spec
        },
        ..wanted()
    };
    assert_eq!(
        kernel_says(&custom, &found()),
        "the pod has no route to 10.96.0.0/12 via 169.254.1.1"
    );
}

#[test]
fn the_host_must_route_each_address_through_the_host_end() {
    let mut seen = found();
    seen.host_routes.pop();
    assert_eq!(
        kernel_says(&wanted(), &seen),
        "the host has no route to fd00::5/128 through calic440f455693"
    );
    let mut seen = found();
    seen.host_routes[0].oif = Some(99);
    assert_eq!(
        kernel_says(&wanted(), &seen),
        "the host has no route to 10.0.0.5/32 through calic440f455693"
    );
}

#[test]
fn the_endpoint_record_must_exist_be_readable_and_be_this_containers() {
    assert_eq!(
        record_says(None, Some(POD_MAC)),
        "endpoint record n1-k8s-pod0-eth0 does not exist"
    );
    let mut garbage = record(json!({}));
    garbage.value = b"{not json".to_vec();
    assert!(
        record_says(Some(&garbage), Some(POD_MAC))
            .starts_with("endpoint record n1-k8s-pod0-eth0 is unreadable: ")
    );
    assert_eq!(
        record_says(Some(&record(json!({"containerID": "c2"}))), Some(POD_MAC)),
        "endpoint record n1-k8s-pod0-eth0 belongs to container c2"
    );
}

#[test]
fn the_endpoint_record_must_have_the_addresses_interface_and_mac() {
    assert_eq!(
        record_says(
            Some(&record(json!({"ipNetworks": ["10.0.0.5/32"]}))),
            Some(POD_MAC)
        ),
        "endpoint record n1-k8s-pod0-eth0 has {\"10.0.0.5/32\"} on calic440f455693, expected \
         {\"10.0.0.5/32\", \"fd00::5/128\"} on calic440f455693"
    );
    assert_eq!(
        record_says(
            Some(&record(json!({"interfaceName": "cali0"}))),
            Some(POD_MAC)
        ),
        "endpoint record n1-k8s-pod0-eth0 has {\"10.0.0.5/32\", \"fd00::5/128\"} on cali0, \
         expected {\"10.0.0.5/32\", \"fd00::5/128\"} on calic440f455693"
    );
    assert_eq!(
        record_says(Some(&record(json!({}))), Some([2, 0, 0, 0, 0, 9])),
        "endpoint record n1-k8s-pod0-eth0 has MAC 02:42:00:00:00:07, the pod interface has \
         Some(\"02:00:00:00:00:09\")"
    );
}
