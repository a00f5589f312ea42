//! ADD, CHECK, DEL, GC and STATUS of `calico-ipam` through libcni, over mutual-TLS etcd.

use serde_json::{Value, json};
use std::time::Duration;
use testkit::{CallOpts, require};

use crate::lab::Lab;

/// The container ID the driver derives from a sandbox path (cnitool's rule).
fn handle_for(lab: &Lab, net: &str, pod: &std::path::Path) -> String {
    // The plugin logs its handle; reading it back keeps the test independent of the rule.
    let log = std::fs::read_to_string(lab.dir.path().join("logs/cni.log")).unwrap();
    let cid = log
        .lines()
        .rev()
        .find_map(|l| {
            let rest = l.split(&format!(" to {net}.")).nth(1)?;
            Some(rest.split(' ').next()?.to_string())
        })
        .unwrap_or_else(|| panic!("no allocation logged for {}", pod.display()));
    format!("{net}.{cid}")
}

#[test]
fn v4_only_add_check_del() {
    require!("etcd", "go");
    let lab = Lab::new();
    lab.add_pool("default-ipv4-ippool", "10.244.0.0/16", |_| {});
    lab.install("v4net", lab.plugin("node-1", json!({})));
    let pod = lab.pod("p1");

    let r = lab.add("v4net", &pod).unwrap();
    assert_eq!(r["cniVersion"], "1.0.0");
    let addr = r["ips"][0]["address"].as_str().unwrap();
    assert!(
        addr.starts_with("10.244.") && addr.ends_with("/26"),
        "block mask: {r}"
    );
    assert!(
        r["ips"][0].get("version").is_none(),
        "1.0.0 has no ips[].version"
    );
    assert_eq!(r["ips"].as_array().unwrap().len(), 1);
    let block: ipnet::IpNet = addr.parse::<ipnet::IpNet>().unwrap().trunc();
    assert_eq!(
        r["routes"],
        json!([{"dst": block.to_string()}]),
        "a route per block"
    );

    // The handle and the block are in etcd, with Calico's attributes.
    let handle = handle_for(&lab, "v4net", &pod);
    assert!(lab.handle_exists(&handle));
    let stored = lab
        .etcd
        .get(&format!(
            "/calico/ipam/v2/assignment/ipv4/block/{}",
            block.to_string().replace('/', "-")
        ))
        .unwrap()
        .unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    let attrs = &stored["attributes"][0];
    assert_eq!(attrs["handle_id"], handle);
    assert_eq!(attrs["secondary"]["node"], "node-1");
    assert!(
        attrs["secondary"]["timestamp"]
            .as_str()
            .unwrap()
            .ends_with(" +0000 UTC")
    );

    lab.check("v4net", &pod).unwrap();
    lab.del("v4net", &pod).unwrap();
    assert!(!lab.handle_exists(&handle), "released");
    lab.del("v4net", &pod).unwrap(); // idempotent
}

#[test]
fn v6_only_and_dual_stack() {
    require!("etcd", "go");
    let lab = Lab::new();
    lab.add_pool("v4", "10.244.0.0/16", |_| {});
    lab.add_pool("v6", "fd00:10:244::/48", |_| {});
    lab.install(
        "v6net",
        lab.plugin(
            "node-1",
            json!({"assign_ipv4": "false", "assign_ipv6": "true"}),
        ),
    );
    lab.install("dual", lab.plugin("node-1", json!({"assign_ipv6": "true"})));

    let p6 = lab.pod("p6");
    let r = lab.add("v6net", &p6).unwrap();
    let addrs = Lab::addresses(&r);
    assert_eq!(addrs.len(), 1);
    assert!(addrs[0].starts_with("fd00:10:244:"), "{r}");
    assert!(r["ips"][0]["address"].as_str().unwrap().ends_with("/122"));
    lab.check("v6net", &p6).unwrap();

    let pd = lab.pod("pd");
    let r = lab.add("dual", &pd).unwrap();
    let addrs = Lab::addresses(&r);
    assert_eq!(addrs.len(), 2, "{r}");
    assert!(
        addrs[0].starts_with("10.244.") && addrs[1].starts_with("fd00:"),
        "{r}"
    );
    assert_eq!(r["routes"].as_array().unwrap().len(), 2);
    lab.check("dual", &pd).unwrap();

    lab.del("v6net", &p6).unwrap();
    lab.del("dual", &pd).unwrap();
    let left: Vec<_> = lab
        .dump()
        .into_iter()
        .filter(|(k, _)| k.starts_with("/calico/ipam/v2/handle/"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn check_catches_a_changed_allocation() {
    require!("etcd", "go");
    let lab = Lab::new();
    lab.add_pool("p", "10.244.0.0/16", |_| {});
    lab.install("net", lab.plugin("node-1", json!({})));
    let pod = lab.pod("p");
    lab.add("net", &pod).unwrap();
    let handle = handle_for(&lab, "net", &pod);
    // Someone releases the address behind the runtime's back.
    calico_ipam::Ipam::new(&lab.db(), "node-1")
        .release_by_handle(&handle)
        .unwrap();
    let e = lab.check("net", &pod).unwrap_err();
    assert_eq!(e.code, Some(106), "{e}");
    assert!(e.msg.contains(&handle), "{e}");
}

#[test]
fn gc_releases_only_this_nodes_stale_allocations_of_this_network() {
    require!("etcd", "go");
    let lab = Lab::new();
    // A pool of its own: GC asks the whole host which addresses are in use, and tests
    // running in parallel have pods in the usual pools.
    lab.add_pool("p", "10.205.0.0/16", |_| {});
    lab.install("net", lab.plugin("node-1", json!({})));
    lab.install("other", lab.plugin("node-1", json!({})));
    // Allocations the runtime lost track of: made directly, so libcni has no cache entry.
    let direct = |net: &str, node: &str, cid: &str| {
        let conf = {
            let mut p = lab.plugin(node, json!({}));
            p["cniVersion"] = json!("1.0.0");
            p["name"] = json!(net);
            p
        };
        let out = std::process::Command::new(testkit::bins::built("calico-ipam").unwrap())
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", "/run/netns/none")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", lab.path.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(conf.to_string().as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    direct("net", "node-1", "keep");
    direct("net", "node-1", "stale");
    direct("net", "node-2", "stale2");
    direct("other", "node-1", "stale3");
    // A live attachment through the runtime as well.
    let live = lab.pod("live");
    lab.add("net", &live).unwrap();
    let live_handle = handle_for(&lab, "net", &live);

    // GC with only the live pod valid: libcni first DELs stale cached attachments (none),
    // then the plugin's GC. The lost allocations are new: an ADD in flight in another runtime
    // looks the same until its plugin routes the address, so they are kept for a while.
    let gc = || {
        lab.runtime()
            .gc("net", &[&live], &CallOpts::default())
            .unwrap()
            .unwrap()
    };
    gc();
    for h in ["net.keep", "net.stale"] {
        assert!(lab.handle_exists(h), "{h}: within the grace period");
    }
    // Older than the grace period, and nothing on this host routes to them: released.
    lab.etcd
        .backdate_allocations(calico_ipam::gc::DEFAULT_GRACE + Duration::from_secs(5))
        .unwrap();
    gc();
    assert!(lab.handle_exists(&live_handle), "valid attachment kept");
    assert!(
        !lab.handle_exists("net.stale"),
        "stale allocation of this node released"
    );
    assert!(
        !lab.handle_exists("net.keep"),
        "not in the valid list either"
    );
    assert!(
        lab.handle_exists("net.stale2"),
        "another node's allocation untouched"
    );
    assert!(
        lab.handle_exists("other.stale3"),
        "another network's allocation untouched"
    );
}

#[test]
fn status_reports_a_full_pool_and_an_unreachable_datastore() {
    require!("etcd", "go");
    let lab = Lab::new();
    lab.add_pool("tiny", "10.9.0.0/30", |s| s.block_size = 30);
    lab.install("net", lab.plugin("node-1", json!({})));
    lab.runtime().status("net").unwrap().unwrap();
    let pods: Vec<_> = (0..4).map(|i| lab.pod(&format!("p{i}"))).collect();
    for p in &pods {
        lab.add("net", p).unwrap();
    }
    let e = lab.runtime().status("net").unwrap().unwrap_err();
    assert_eq!(e.code, Some(51), "{e}");
    // Exhaustion on ADD names the pool.
    let e = lab.add("net", &lab.pod("p4")).unwrap_err();
    assert_eq!(e.code, Some(104), "{e}");
    assert!(e.msg.contains("10.9.0.0/30"), "{e}");

    let mut p = lab.plugin("node-1", json!({}));
    p["etcd_endpoints"] = json!("https://127.0.0.1:1");
    lab.install("down", p);
    let e = lab.runtime().status("down").unwrap().unwrap_err();
    assert_eq!(e.code, Some(50), "{e}");
}

#[test]
fn etcd_unreachable_is_try_again_later_and_leaves_nothing() {
    require!("etcd", "go");
    let lab = Lab::new();
    lab.add_pool("p", "10.244.0.0/16", |_| {});
    let mut p = lab.plugin("node-1", json!({}));
    p["etcd_endpoints"] = json!("https://127.0.0.1:1");
    lab.install("down", p);
    let before = lab.dump();
    let e = lab.add("down", &lab.pod("x")).unwrap_err();
    assert_eq!(e.code, Some(11), "{e}");
    assert!(
        e.msg.contains("https://127.0.0.1:1"),
        "names the endpoint: {e}"
    );
    let e = lab.del("down", &lab.pod("x")).unwrap_err();
    assert_eq!(e.code, Some(11), "{e}");
    assert_eq!(lab.dump(), before);
}

#[test]
fn a_wrong_client_certificate_is_a_clear_error() {
    require!("etcd", "go");
    let lab = Lab::new();
    lab.add_pool("p", "10.244.0.0/16", |_| {});
    let mut p = lab.plugin("node-1", json!({}));
    p["etcd_cert_file"] = json!(lab.etcd.wrong_cert_path());
    p["etcd_key_file"] = json!(lab.etcd.wrong_key_path());
    lab.install("badcert", p);
    let e = lab.add("badcert", &lab.pod("x")).unwrap_err();
    assert_eq!(e.code, Some(102), "{e}");
    assert!(e.msg.contains("TLS"), "{e}");
    assert!(e.msg.contains(&lab.etcd.endpoints()), "{e}");
}

#[test]
fn a_disabled_pool_is_never_used_and_requested_pools_are_honoured() {
    require!("etcd", "go");
    let lab = Lab::new();
    lab.add_pool("off", "10.1.0.0/16", |s| s.disabled = true);
    lab.add_pool("on", "10.2.0.0/16", |_| {});
    lab.add_pool("manual", "10.3.0.0/16", |s| {
        s.assignment_mode = Some("Manual".into())
    });
    lab.install("net", lab.plugin("node-1", json!({})));
    for i in 0..5 {
        let r = lab.add("net", &lab.pod(&format!("p{i}"))).unwrap();
        assert!(Lab::addresses(&r)[0].starts_with("10.2."), "{r}");
    }
    lab.install(
        "pick",
        lab.plugin("node-1", json!({"ipv4_pools": ["manual"]})),
    );
    let r = lab.add("pick", &lab.pod("m")).unwrap();
    assert!(Lab::addresses(&r)[0].starts_with("10.3."), "{r}");
    lab.install("bad", lab.plugin("node-1", json!({"ipv4_pools": ["off"]})));
    let e = lab.add("bad", &lab.pod("b")).unwrap_err();
    assert!(
        e.msg.contains("off") && e.msg.contains("not enabled"),
        "{e}"
    );
}

#[test]
fn specific_addresses_from_cni_args() {
    require!("etcd", "go");
    let lab = Lab::new();
    lab.add_pool("p", "10.244.0.0/16", |_| {});
    lab.install("net", lab.plugin("node-1", json!({})));
    let rt = lab.runtime();
    let opts = CallOpts::args("IP=10.244.7.7");
    let r = rt.add("net", &lab.pod("a"), &opts).unwrap().unwrap();
    assert_eq!(r["ips"][0]["address"], "10.244.7.7/26");
    let e = rt.add("net", &lab.pod("b"), &opts).unwrap().unwrap_err();
    assert_eq!(e.code, Some(104), "{e}");
    assert!(e.msg.contains("already assigned"), "{e}");
    let e = rt
        .add("net", &lab.pod("c"), &CallOpts::args("IP=192.168.0.1"))
        .unwrap()
        .unwrap_err();
    assert!(e.msg.contains("not in any enabled IP pool"), "{e}");
    // ipam.ipAddrs in the config, as Calico's fixed-address annotation does.
    lab.install(
        "fixed",
        lab.plugin("node-1", json!({"ipAddrs": ["10.244.9.9"]})),
    );
    let r = lab.add("fixed", &lab.pod("d")).unwrap();
    assert_eq!(r["ips"][0]["address"], "10.244.9.9/26");
}

#[test]
fn k8s_pods_get_namespace_and_pod_attributes_and_the_legacy_handle_is_released() {
    require!("etcd", "go");
    let lab = Lab::new();
    lab.add_pool("p", "10.244.0.0/16", |_| {});
    lab.install("net", lab.plugin("node-1", json!({})));
    let opts = CallOpts::args("K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx");
    let rt = lab.runtime();
    let pod = lab.pod("nginx");
    rt.add("net", &pod, &opts).unwrap().unwrap();
    let blocks = lab.etcd.get_prefix("/calico/ipam/v2/assignment/").unwrap();
    let block: Value = serde_json::from_str(&blocks[0].1).unwrap();
    let secondary = &block["attributes"][0]["secondary"];
    assert_eq!(secondary["namespace"], "default");
    assert_eq!(secondary["pod"], "nginx");
    assert_eq!(secondary["node"], "node-1");

    // An allocation under Calico v2's handle (<namespace>.<pod>) is released by DEL too.
    calico_ipam::Ipam::new(&lab.db(), "node-1")
        .assign_ip(
            "10.244.200.1".parse().unwrap(),
            "default.nginx",
            &Default::default(),
        )
        .unwrap();
    rt.del("net", &pod, &opts).unwrap().unwrap();
    assert!(!lab.handle_exists("default.nginx"));
}

/// The allocations in every block, counted from etcd.
fn allocations_in_blocks(lab: &Lab) -> usize {
    lab.dump()
        .iter()
        .filter(|(k, _)| k.starts_with("/calico/ipam/v2/assignment/"))
        .map(|(_, v)| {
            let b: Value = serde_json::from_str(v).unwrap();
            b["allocations"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| !a.is_null())
                .count()
        })
        .sum()
}

/// Issue 12 #12 (findings #12): a second ADD with the same container ID used to take a
/// second address under the same handle. Now it returns the one the handle holds (the CNI
/// spec's idempotence for a repeated ADD; Calico 3.32 takes another, a README difference),
/// and DEL frees it.
#[test]
fn a_repeated_add_returns_the_same_address() {
    require!("etcd", "go");
    let lab = Lab::new();
    lab.add_pool("p", "10.244.0.0/16", |_| {});
    lab.install("net", lab.plugin("node-1", json!({})));
    let pod = lab.pod("dup");
    let first = lab.add("net", &pod).unwrap();
    let again = lab.add("net", &pod).unwrap();
    assert_eq!(Lab::addresses(&again), Lab::addresses(&first));
    assert_eq!(allocations_in_blocks(&lab), 1);
    let handle = handle_for(&lab, "net", &pod);
    lab.del("net", &pod).unwrap();
    assert!(!lab.handle_exists(&handle), "released");
    assert_eq!(allocations_in_blocks(&lab), 0, "the block is empty");

    // The same with a specific address (`IP=`): the second ADD gets it back rather than
    // "already assigned" (whose rollback would free the first ADD's address).
    let rt = lab.runtime();
    let opts = CallOpts::args("IP=10.244.7.7");
    let fixed = lab.pod("fixed");
    for _ in 0..2 {
        let r = rt.add("net", &fixed, &opts).unwrap().unwrap();
        assert_eq!(r["ips"][0]["address"], "10.244.7.7/26");
    }
    assert_eq!(allocations_in_blocks(&lab), 1);
    rt.del("net", &fixed, &opts).unwrap().unwrap();
    assert_eq!(allocations_in_blocks(&lab), 0);

    // Issue 12 review #2: the handle is the network and container ID only, so a second
    // interface of the same container (Multus) gets its own address, and a repeat of each
    // attachment gets its own back (the interface is recorded as the `ifname` attribute).
    let multi = lab.pod("multi");
    let eth0 = CallOpts::default();
    let net1 = CallOpts {
        ifname: Some("net1".into()),
        ..CallOpts::default()
    };
    let a = rt.add("net", &multi, &eth0).unwrap().unwrap();
    let b = rt.add("net", &multi, &net1).unwrap().unwrap();
    assert_ne!(a["ips"][0]["address"], b["ips"][0]["address"]);
    for (opts, first) in [(&eth0, &a), (&net1, &b)] {
        let again = rt.add("net", &multi, opts).unwrap().unwrap();
        assert_eq!(again["ips"][0]["address"], first["ips"][0]["address"]);
    }
    assert_eq!(allocations_in_blocks(&lab), 2);
    rt.del("net", &multi, &net1).unwrap().unwrap();
    rt.del("net", &multi, &eth0).unwrap().unwrap();
    assert_eq!(allocations_in_blocks(&lab), 0);
}

/// Issue 12 #11 (findings #11): a node name `a/b` or `../../x` wrote affinity keys outside
/// `/calico/ipam/v2/host/`, and `K8S_POD_NAMESPACE=a/b` endpoint keys outside theirs. Names
/// are checked: a node name that is not key-safe is code 7, a `K8S_POD_*` Kubernetes would
/// refuse is code 4 on ADD naming the field, and no key is written.
#[test]
fn names_that_would_escape_their_keys_are_refused() {
    require!("etcd", "go");
    let lab = Lab::new();
    lab.add_pool("p", "10.244.0.0/16", |_| {});
    let good = lab.plugin("node-1", json!({}));
    let before = lab.dump();
    let long = "a".repeat(5000);
    // `Node_1` is not refused: Calico's plugin never validates the node name (see
    // plugins/calico verbs::del::tests::upper_case_and_underscore_node_names_work).
    for node in ["a/b", "..", "../../x", long.as_str()] {
        let mut bad = good.clone();
        bad["nodename"] = json!(node);
        lab.install("badnode", bad);
        let e = lab.add("badnode", &lab.pod("p1")).unwrap_err();
        assert_eq!(e.code, Some(7), "{node:.20}: {e}");
        assert!(e.msg.contains("invalid node name"), "{e}");
        assert!(e.msg.len() < 500, "the name is cut short: {}", e.msg.len());
        assert_eq!(lab.dump(), before, "{node:.20}: nothing written");
    }
    lab.install("net", good);
    let rt = lab.runtime();
    for (args, field) in [
        ("K8S_POD_NAMESPACE=a/b;K8S_POD_NAME=p", "K8S_POD_NAMESPACE"),
        ("K8S_POD_NAMESPACE=..;K8S_POD_NAME=p", "K8S_POD_NAMESPACE"),
        (
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=../x",
            "K8S_POD_NAME",
        ),
        ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=a/b", "K8S_POD_NAME"),
    ] {
        let e = rt
            .add("net", &lab.pod("p2"), &CallOpts::args(args))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, Some(4), "{args}: {e}");
        assert!(e.msg.contains(field), "{args}: {e}");
        assert_eq!(lab.dump(), before, "{args}: nothing written");
    }
}
