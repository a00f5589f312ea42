//! GC's decisions without root: the in-memory store and the fake kernel, which says which
//! host interfaces exist and which addresses are in use (the real kernel is tested in
//! tests/cni/gc.rs).

use super::*;
use crate::verbs::testing::{NODE, store};
use calico_dataplane::fake::{FakeDataplane, Netns, Step};
use calico_datastore::MemKv;
use calico_ipam::{AssignRequest, Ipam};
use cni_protocol::Environment;
use ipnet::IpNet;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

/// The kernel as GC sees it: these host interfaces, and these addresses in use (on an
/// interface of another namespace).
fn kernel(host_interfaces: &[&str], in_use: &[IpAddr]) -> FakeDataplane {
    let dp = FakeDataplane::new();
    for name in host_interfaces {
        dp.add_link(&Netns::Host, name).expect("link");
    }
    let elsewhere = Netns::at("/run/netns/elsewhere");
    dp.add_netns("/run/netns/elsewhere");
    let index = dp.add_link(&elsewhere, "eth0").expect("link");
    for ip in in_use {
        dp.add_address(&elsewhere, index, IpNet::from(*ip))
            .expect("address");
    }
    dp
}

/// GC only reads the kernel: it must not need anything else.
fn only_read(dp: &FakeDataplane) -> bool {
    dp.steps()
        .iter()
        .all(|s| matches!(s, Step::HostInterfaces | Step::AddressesInUse))
}

/// An allocation of `network` for container `cid` on this node, and (if `iface` is given)
/// its endpoint record on that host interface; returns the address.
fn pod(store: &MemKv, network: &str, cid: &str, iface: Option<&str>) -> IpAddr {
    let ipam = Ipam::new(store, NODE);
    let got = ipam
        .auto_assign(&AssignRequest {
            handle: format!("{network}.{cid}"),
            attrs: [("node".to_string(), NODE.to_string())]
                .into_iter()
                .collect(),
            num_v4: 1,
            ..AssignRequest::default()
        })
        .expect("assigned");
    let ip = got.all()[0].addr();
    if let Some(iface) = iface {
        endpoint(store, &format!("{network}-{cid}"), cid, iface, ip);
    }
    ip
}

fn endpoint(store: &MemKv, name: &str, cid: &str, iface: &str, ip: IpAddr) {
    let wep = json!({"kind": "WorkloadEndpoint", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"orchestrator": "cni", "node": NODE, "containerID": cid, "endpoint": "eth0",
                 "ipNetworks": [format!("{ip}/32")], "interfaceName": iface}});
    store.put(&wep_key(name), wep.to_string().as_bytes());
}

fn wep_key(name: &str) -> String {
    keys::namespaced_resource("workloadendpoints", "default", name)
}

fn gc_request(lock: &Path, valid: &[&str]) -> Request {
    let conf = json!({"cniVersion": "1.1.0", "name": "net", "type": "calico", "nodename": NODE,
        "nodename_file_optional": true, "etcd_endpoints": "http://127.0.0.1:1",
        "ipam_lock_file": lock, "ipam": {"type": "calico-ipam"},
        "cni.dev/valid-attachments": valid.iter()
            .map(|c| json!({"containerID": c, "ifname": "eth0"})).collect::<Vec<_>>()});
    let env: BTreeMap<&str, String> =
        [("CNI_COMMAND", "GC".to_string()), ("CNI_PATH", "/x".into())]
            .into_iter()
            .collect();
    let env = Environment::from_lookup(|k| env.get(k).cloned()).expect("env");
    Request::new(env, conf.to_string().into_bytes()).expect("request")
}

fn run_gc(store: &MemKv, dp: &FakeDataplane, valid: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let req = gc_request(&dir.path().join("ipam.lock"), valid);
    let ctx = Context::new(&req).expect("context");
    let deps = Deps {
        store,
        dataplane: dp,
        mtu_file: Path::new("/nonexistent"),
        pod: None,
        namespace_labels: None,
    };
    gc(&req, &ctx, &deps).expect("gc");
}

fn handle_exists(store: &MemKv, id: &str) -> bool {
    store.get(&keys::handle(id)).expect("get").is_some()
}

#[test]
fn gc_releases_only_what_is_dead_and_ours() {
    let store = store();
    pod(&store, "net", "dead", Some("calidead"));
    pod(&store, "net", "live", Some("calilive"));
    let in_use = pod(&store, "net", "inuse", None);
    pod(&store, "net", "valid", Some("calivalid"));
    pod(&store, "other", "dead", Some("caliother"));
    let dp = kernel(&["calilive"], &[in_use]);
    run_gc(&store, &dp, &["valid"]);
    assert!(only_read(&dp));
    assert!(!handle_exists(&store, "net.dead"), "dead: released");
    assert!(
        store.get(&wep_key("net-dead")).expect("get").is_none(),
        "with its endpoint"
    );
    assert!(handle_exists(&store, "net.live"), "its interface exists");
    assert!(store.get(&wep_key("net-live")).expect("get").is_some());
    assert!(store.get(&wep_key("other-dead")).expect("get").is_some());
    assert!(handle_exists(&store, "net.inuse"), "its address is in use");
    assert!(handle_exists(&store, "net.valid"), "in the valid list");
    assert!(handle_exists(&store, "other.dead"), "another network's");
}

#[test]
fn an_endpoint_taken_over_while_gc_judges_is_kept() {
    // A new sandbox of the same pod rewrites the endpoint record (same key) after GC listed
    // it: the old container's allocation goes, the record now belongs to the new one.
    let store = Arc::new(store());
    let ip = pod(&store, "net", "old", Some("calipod"));
    let dp = kernel(&[], &[]);
    let meanwhile = store.clone();
    dp.on(Step::AddressesInUse, move || {
        endpoint(&meanwhile, "net-old", "new", "calipod", ip)
    });
    run_gc(&store, &dp, &[]);
    assert!(
        !handle_exists(&store, "net.old"),
        "the old container's allocation released"
    );
    let kept = store
        .get(&wep_key("net-old"))
        .expect("get")
        .expect("record kept");
    assert!(String::from_utf8_lossy(&kept.value).contains("\"containerID\":\"new\""));
}
