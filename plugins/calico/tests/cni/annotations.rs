//! Calico's pod annotations beyond the pools: `ipFamilies`, `floatingIPs` and
//! `allowedSourcePrefixes`, with the seed conflist (`policy.type: k8s`) against the
//! Kubernetes API stand-in (there is no API server here), real namespaces and etcd.

use crate::common::*;
use serde_json::{Value, json};
use testkit::{Cluster, NetNs, require};

const NET: &str = "k8s-pod-network";

fn pod_families(r: &Value) -> (usize, usize) {
    let ips = testkit::result_ips(r);
    (
        ips.iter().filter(|a| a.is_ipv4()).count(),
        ips.iter().filter(|a| a.is_ipv6()).count(),
    )
}

/// An ADD that must fail with code 7 naming `needle`, leaving the node and etcd as they were
/// and no interface in the pod.
fn fails_cleanly(c: &Cluster, ns: &str, pod: &str, needle: &str) {
    let before = node_state(c);
    let netns = NetNs::new("bad").unwrap();
    let e = c
        .runtime(0)
        .add(NET, &netns.path(), &pod_args(ns, pod))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(7), "{pod}: {e}");
    assert!(e.msg.contains(needle), "{pod}: {e}");
    assert_eq!(node_state(c), before, "{pod}: nothing left behind");
    assert!(
        netns.sh("ip link show eth0").is_err(),
        "{pod}: no interface"
    );
    c.runtime(0)
        .del(NET, &netns.path(), &pod_args(ns, pod))
        .unwrap()
        .unwrap();
}

/// Mirrors k8s.go `CmdAddK8s`: `cni.projectcalico.org/ipFamilies` (pod, else namespace)
/// replaces `assign_ipv4`/`assign_ipv6` for Calico IPAM; only "IPv4" and "IPv6" are valid;
/// the pool annotations still choose the pools; explicit `ipAddrs` are not affected.
#[test]
fn ip_families_choose_the_address_families() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.add_pool("v6-b", "fd00:99::/48", None).unwrap();
    let api = start_api(&c);
    api.add_object(namespace_object(
        "fam",
        json!({"kubernetes.io/metadata.name": "fam"}),
        json!({"cni.projectcalico.org/ipFamilies": "[\"IPv6\"]"}),
    ));
    let fam = |v: &str| json!({"cni.projectcalico.org/ipFamilies": v});
    api.add_object(pod_object("default", "v6only", fam("[\"IPv6\"]")));
    api.add_object(pod_object("default", "dual", fam("[\"IPv4\",\"IPv6\"]")));
    api.add_object(pod_object("fam", "from-ns", json!({})));
    api.add_object(pod_object("fam", "pod-wins", fam("[\"IPv4\"]")));
    api.add_object(pod_object(
        "default",
        "v6pool",
        json!({"cni.projectcalico.org/ipFamilies": "[\"IPv6\"]",
               "cni.projectcalico.org/ipv6pools": "[\"v6-b\"]"}),
    ));
    api.add_object(pod_object(
        "default",
        "explicit",
        json!({"cni.projectcalico.org/ipFamilies": "[\"IPv6\"]",
               "cni.projectcalico.org/ipAddrs": "[\"10.244.200.20\"]"}),
    ));
    api.add_object(pod_object("default", "lower", fam("[\"ipv6\"]")));
    api.add_object(pod_object("default", "none", fam("[]")));
    api.add_object(pod_object("default", "notjson", fam("IPv6")));
    c.install(0, &testkit::cluster::seed_conflist().unwrap())
        .unwrap();
    let rt = c.runtime(0);

    let mut made = Vec::new();
    for (ns, pod, want) in [
        ("default", "v6only", (0, 1)),
        ("default", "dual", (1, 1)),
        ("fam", "from-ns", (0, 1)),
        ("fam", "pod-wins", (1, 0)),
        ("default", "v6pool", (0, 1)),
        ("default", "explicit", (1, 0)),
    ] {
        let netns = NetNs::new(pod).unwrap();
        let r = rt
            .add(NET, &netns.path(), &pod_args(ns, pod))
            .unwrap()
            .unwrap_or_else(|e| panic!("{pod}: {e}"));
        assert_eq!(pod_families(&r), want, "{pod}: {r}");
        // The pod's interface has exactly those families, with their routes.
        let v4 = netns.sh("ip -4 -o addr show dev eth0").unwrap();
        let v6 = netns
            .sh("ip -6 -o addr show dev eth0 scope global")
            .unwrap();
        assert_eq!(
            (v4.lines().count(), v6.lines().count()),
            want,
            "{pod}: {v4}{v6}"
        );
        let default6 = netns.sh("ip -6 route show default").unwrap();
        assert_eq!(default6.contains("fe80::ecee:eeff:feee:eeee"), want.1 == 1);
        let wep = endpoint_of(&c, ns, pod);
        assert_eq!(
            wep["spec"]["ipNetworks"].as_array().unwrap().len(),
            want.0 + want.1
        );
        made.push((ns, pod, netns, r));
    }
    let ips = |pod: &str| {
        testkit::result_ips(&made.iter().find(|m| m.1 == pod).unwrap().3)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    assert!(
        ips("v6pool")[0].starts_with("fd00:99:"),
        "{:?}",
        ips("v6pool")
    );
    assert_eq!(ips("explicit"), ["10.244.200.20"]);

    fails_cleanly(&c, "default", "lower", "ipFamilies");
    fails_cleanly(&c, "default", "none", "ipFamilies");
    fails_cleanly(&c, "default", "notjson", "ipFamilies");

    for (ns, pod, netns, _) in &made {
        rt.del(NET, &netns.path(), &pod_args(ns, pod))
            .unwrap()
            .unwrap();
    }
    assert!(c.values("/calico/ipam/v2/handle/").unwrap().is_empty());
}

/// Mirrors k8s.go `CmdAddK8s`, the floatingIPs block: without `feature_control.floating_ips`
/// the ADD fails ("requested feature is not enabled: floating_ips"); with it each address
/// becomes an `ipNATs` entry `{internalIP: the pod's address of that family, externalIP}`.
#[test]
fn floating_ips_become_ip_nats() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    let api = start_api(&c);
    let float = |v: &str| json!({"cni.projectcalico.org/floatingIPs": v});
    api.add_object(pod_object("default", "float", float("[\"172.16.5.5\"]")));
    api.add_object(pod_object(
        "default",
        "float-dual",
        json!({"cni.projectcalico.org/floatingIPs": "[\"2001:db8::7\",\"172.16.5.7\"]",
               "cni.projectcalico.org/ipFamilies": "[\"IPv4\",\"IPv6\"]"}),
    ));
    api.add_object(pod_object(
        "default",
        "float-v6",
        float("[\"2001:db8::8\"]"),
    ));
    api.add_object(pod_object("default", "float-bad", float("[\"172.16.5\"]")));
    let mut seed = testkit::cluster::seed_conflist().unwrap();
    c.install(0, &seed).unwrap();

    // The seed does not enable the feature: a clear error, and nothing left anywhere.
    fails_cleanly(&c, "default", "float", "floating_ips");

    seed["plugins"][0]["feature_control"] = json!({"floating_ips": true});
    c.install(0, &seed).unwrap();
    let rt = c.runtime(0);
    let mut made = Vec::new();
    for pod in ["float", "float-dual"] {
        let netns = NetNs::new(pod).unwrap();
        let r = rt
            .add(NET, &netns.path(), &pod_args("default", pod))
            .unwrap()
            .unwrap_or_else(|e| panic!("{pod}: {e}"));
        let ips = testkit::result_ips(&r);
        let of = |v6: bool| ips.iter().find(|a| a.is_ipv6() == v6).unwrap().to_string();
        let wep = endpoint_of(&c, "default", pod);
        let want = if pod == "float" {
            json!([{"internalIP": of(false), "externalIP": "172.16.5.5"}])
        } else {
            json!([{"internalIP": of(true), "externalIP": "2001:db8::7"},
                   {"internalIP": of(false), "externalIP": "172.16.5.7"}])
        };
        assert_eq!(wep["spec"]["ipNATs"], want, "{pod}");
        made.push((pod, netns));
    }
    // An IPv6 floating IP for an IPv4-only pod, and a floating IP that is no address.
    fails_cleanly(&c, "default", "float-v6", "no IPv6 address");
    fails_cleanly(&c, "default", "float-bad", "not an IP address");
    for (pod, netns) in &made {
        rt.del(NET, &netns.path(), &pod_args("default", pod))
            .unwrap()
            .unwrap();
    }
}

/// Mirrors libcalico-go `HandleSourceIPSpoofingAnnotation` (called from k8s.go
/// `CmdAddK8s`): each entry is parsed as a CIDR and stored normalised; a bad one fails the
/// ADD.
#[test]
fn allowed_source_prefixes_are_checked_and_normalised() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    let api = start_api(&c);
    let prefixes = |v: &str| json!({"cni.projectcalico.org/allowedSourcePrefixes": v});
    api.add_object(pod_object(
        "default",
        "spoof",
        prefixes("[\"192.168.7.9/16\",\"2001:db8::5/64\",\"10.1.2.3/32\"]"),
    ));
    api.add_object(pod_object(
        "default",
        "spoof-bad",
        prefixes("[\"192.168.0.0\"]"),
    ));
    api.add_object(pod_object(
        "default",
        "spoof-json",
        prefixes("192.168.0.0/16"),
    ));
    c.install(0, &testkit::cluster::seed_conflist().unwrap())
        .unwrap();
    let rt = c.runtime(0);
    let netns = NetNs::new("spoof").unwrap();
    rt.add(NET, &netns.path(), &pod_args("default", "spoof"))
        .unwrap()
        .unwrap();
    assert_eq!(
        endpoint_of(&c, "default", "spoof")["spec"]["allowSpoofedSourcePrefixes"],
        json!(["192.168.0.0/16", "2001:db8::/64", "10.1.2.3/32"])
    );
    fails_cleanly(&c, "default", "spoof-bad", "192.168.0.0");
    fails_cleanly(&c, "default", "spoof-json", "allowedSourcePrefixes");
    rt.del(NET, &netns.path(), &pod_args("default", "spoof"))
        .unwrap()
        .unwrap();
}
