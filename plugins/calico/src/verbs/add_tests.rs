//! ADD without root, against the in-memory store and the fake kernel: what a success leaves,
//! and every rollback, each failure injected at one step (the veth, the kernel thread's
//! settings and addresses, the datastore's transaction, a delegated IPAM plugin, a conflict
//! that makes the allocation choose other addresses), checked to leave the kernel and the
//! store as they were. The kernel tests of the same (tests/cni/failures.rs) run the real
//! thing.

use crate::verbs::testing::{CONTAINER, NODE, POD_NETNS, POOL, Pod};
use calico_dataplane::fake::{Netns, Step, route};
use calico_datastore::model::keys;
use calico_datastore::{Guard, Kv, KvStore, MemKv, Read, StoreError, TxnOutcome, Write};
use calico_ipam::{AssignRequest, Ipam};
use cni_protocol::ErrorCode;
use ipnet::IpNet;
use serde_json::json;
use std::net::IpAddr;
use std::sync::Mutex;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("CIDR")
}

fn pod_netns() -> Netns {
    Netns::at(POD_NETNS)
}

fn wep_key() -> String {
    keys::namespaced_resource("workloadendpoints", "default", "n1-k8s-pod0-eth0")
}

fn handle_key() -> String {
    keys::handle(&format!("net.{CONTAINER}"))
}

/// The store as an ADD sees it while another pod of the node commits first: `meanwhile`
/// runs against the same store just before the ADD's first transaction.
struct Racing<'a> {
    store: &'a MemKv,
    meanwhile: Mutex<Option<fn(&MemKv)>>,
}

impl KvStore for Racing<'_> {
    fn read(&self, reads: &[Read]) -> Result<Vec<Vec<Kv>>, StoreError> {
        self.store.read(reads)
    }

    fn txn(&self, guards: &[Guard], writes: &[Write]) -> Result<TxnOutcome, StoreError> {
        let meanwhile = self.meanwhile.lock().ok().and_then(|mut m| m.take());
        if let Some(f) = meanwhile {
            f(self.store);
        }
        self.store.txn(guards, writes)
    }

    fn describe(&self) -> String {
        self.store.describe()
    }
}

/// Another pod of this node taking the lowest free address (the one the ADD planned).
fn another_pod_first(store: &MemKv) {
    Ipam::new(store, NODE)
        .auto_assign(&AssignRequest {
            handle: "net.other".into(),
            attrs: [("node".to_string(), NODE.to_string())].into(),
            num_v4: 1,
            ..AssignRequest::default()
        })
        .expect("the other pod's address");
}

/// The address the ADD put on the pod first.
fn first_choice(pod: &Pod) -> IpAddr {
    pod.dataplane
        .steps()
        .iter()
        .find_map(|s| match s {
            Step::PodAddress(a) => Some(*a),
            _ => None,
        })
        .expect("an address went on")
}

fn others_addresses(pod: &Pod) -> Vec<IpAddr> {
    Ipam::new(&*pod.store, NODE)
        .addresses_of_handle("net.other")
        .expect("read")
}

#[test]
fn an_add_wires_the_pod_records_it_checks_and_is_deleted() {
    let pod = Pod::new();
    let before = pod.state();
    let result = pod.add().expect("added");
    let addresses: Vec<IpNet> = result.ips.iter().map(|i| i.address).collect();
    assert_eq!(addresses.len(), 1);
    assert!(net(POOL).contains(&addresses[0]), "{addresses:?}");
    let kernel = pod.dataplane.kernel();
    let eth0 = kernel
        .netns(&pod_netns())
        .and_then(|n| n.link("eth0"))
        .expect("the pod's interface");
    assert_eq!(eth0.addresses, addresses);
    let (_, host_index) = eth0.peer.clone().expect("a veth");
    assert_eq!(
        kernel.host().routes,
        vec![route(addresses[0], None, host_index, true)],
        "the host routes the address to the host end"
    );
    let stored = pod.store.get(&wep_key()).expect("get").expect("the record");
    let recorded = format!("\"ipNetworks\":[\"{}\"]", addresses[0]);
    assert!(String::from_utf8_lossy(&stored.value).contains(&recorded));
    assert!(pod.store.get(&handle_key()).expect("get").is_some());
    pod.check(&result).expect("CHECK agrees");
    pod.del().expect("deleted");
    pod.assert_left_as(&before);
    pod.del().expect("DEL again is fine");
}

#[test]
fn the_veth_failing_leaves_nothing() {
    let pod = Pod::new();
    pod.dataplane.fail(Step::CreatePair);
    let msg = pod.add_fails_leaving_nothing(ErrorCode::DATAPLANE);
    assert!(msg.contains("injected failure"), "{}", msg);
}

#[test]
fn a_missing_namespace_is_unknown_container_and_leaves_nothing() {
    let pod = Pod::new();
    pod.dataplane.remove_netns(std::path::Path::new(POD_NETNS));
    let _ = pod.add_fails_leaving_nothing(ErrorCode::UNKNOWN_CONTAINER);
}

#[test]
fn an_interface_name_taken_in_the_pod_stays_and_nothing_is_left() {
    // Not ours: the rollback must not remove it.
    let pod = Pod::new();
    pod.dataplane.add_link(&pod_netns(), "eth0").expect("link");
    let msg = pod.add_fails_leaving_nothing(ErrorCode::DATAPLANE);
    assert!(msg.contains("already exists"), "{}", msg);
    assert!(!pod.dataplane.steps().contains(&Step::Remove));
}

#[test]
fn finishing_the_veth_failing_after_the_commit_takes_everything_back() {
    // The pair existed, so the datastore half committed: the commit is released too.
    let pod = Pod::new();
    pod.dataplane.fail(Step::FinishPair);
    let msg = pod.add_fails_leaving_nothing(ErrorCode::DATAPLANE);
    assert!(msg.contains("FinishPair"), "{}", msg);
}

#[test]
fn the_kernel_thread_panicking_takes_everything_back() {
    for step in [Step::CreatePair, Step::FinishPair] {
        let pod = Pod::new();
        pod.dataplane.panic_at(step.clone());
        let msg = pod.add_fails_leaving_nothing(ErrorCode::DATAPLANE);
        assert!(msg.contains("panicked"), "{step:?}: {msg}");
    }
}

#[test]
fn an_address_failing_on_the_pod_takes_everything_back() {
    // The first address is on when the second fails.
    let pod = Pod::new().asking_for("10.0.0.9,10.0.0.10");
    pod.dataplane.fail(Step::PodAddress(ip("10.0.0.10")));
    pod.add_fails_leaving_nothing(ErrorCode::DATAPLANE);
    let first_on = Step::PodAddress(ip("10.0.0.9"));
    assert!(pod.dataplane.steps().contains(&first_on));
}

#[test]
fn a_host_route_failing_takes_everything_back() {
    let pod = Pod::new().asking_for("10.0.0.9");
    pod.dataplane.fail(Step::HostRoute(ip("10.0.0.9")));
    pod.add_fails_leaving_nothing(ErrorCode::DATAPLANE);
}

#[test]
fn a_host_route_through_another_interface_is_a_conflict_and_stays() {
    let pod = Pod::new().asking_for("10.0.0.9");
    let other = pod
        .dataplane
        .add_link(&Netns::Host, "other0")
        .expect("link");
    pod.dataplane
        .add_route(&Netns::Host, route(net("10.0.0.9/32"), None, other, true))
        .expect("route");
    let msg = pod.add_fails_leaving_nothing(ErrorCode::DATAPLANE);
    assert!(msg.contains("'other0'"), "{}", msg);
}

#[test]
fn the_transaction_failing_removes_the_veth() {
    let pod = Pod::new();
    pod.store.fail_next_txns(1);
    let _ = pod.add_fails_leaving_nothing(ErrorCode::TRY_AGAIN_LATER);
    assert!(pod.dataplane.steps().contains(&Step::Remove));
}

#[test]
fn a_cluster_not_ready_removes_the_veth() {
    let pod = Pod::new();
    pod.store.put(
        &crate::verbs::cluster_information_key(),
        json!({"kind": "ClusterInformation", "apiVersion": "projectcalico.org/v3",
               "metadata": {"name": "default"}, "spec": {"datastoreReady": false}})
        .to_string()
        .as_bytes(),
    );
    let msg = pod.add_fails_leaving_nothing(ErrorCode::TRY_AGAIN_LATER);
    assert!(msg.contains("not ready"), "{}", msg);
}

#[test]
fn a_conflict_that_chooses_other_addresses_swaps_them_on_the_pod() {
    let pod = Pod::new();
    let racing = Racing {
        store: &pod.store,
        meanwhile: Mutex::new(Some(another_pod_first)),
    };
    let result = pod.add_through(&racing).expect("added");
    let addresses: Vec<IpNet> = result.ips.iter().map(|i| i.address).collect();
    let first = first_choice(&pod);
    assert_eq!(
        others_addresses(&pod),
        vec![first],
        "the other pod took the first choice"
    );
    assert_eq!(addresses.len(), 1);
    assert_ne!(addresses[0].addr(), first, "planned again");
    let kernel = pod.dataplane.kernel();
    let eth0 = kernel
        .netns(&pod_netns())
        .and_then(|n| n.link("eth0"))
        .expect("the pod's interface");
    assert_eq!(eth0.addresses, addresses, "the first choice taken off");
    let routed: Vec<IpNet> = kernel.host().routes.iter().map(|r| r.dst).collect();
    assert_eq!(routed, addresses);
    assert!(pod.dataplane.steps().contains(&Step::Unconfigure));
    pod.check(&result).expect("CHECK agrees");
}

#[test]
fn a_swap_failing_takes_everything_back() {
    let pod = Pod::new();
    let before = pod.state();
    let racing = Racing {
        store: &pod.store,
        meanwhile: Mutex::new(Some(another_pod_first)),
    };
    pod.dataplane.fail(Step::Unconfigure);
    let e = pod.add_through(&racing).expect_err("not swapped");
    assert_eq!(e.code, ErrorCode::DATAPLANE, "{}", e.msg);
    pod.assert_left_as_but(&before, &[keys::handle("net.other")]);
    assert_eq!(
        others_addresses(&pod),
        vec![first_choice(&pod)],
        "the other pod keeps its address"
    );
}

#[test]
fn a_rollback_that_cannot_remove_the_veth_still_releases_and_reports_the_first_failure() {
    let pod = Pod::new();
    let before = pod.state();
    pod.dataplane.fail(Step::FinishPair);
    pod.dataplane.fail(Step::Remove);
    let e = pod.add().expect_err("not finished");
    assert!(e.msg.contains("FinishPair"), "{}", e.msg);
    assert!(pod.store.get(&wep_key()).expect("get").is_none());
    assert!(pod.store.get(&handle_key()).expect("get").is_none());
    // The interface is left (the error log names it); only a removal works then.
    pod.dataplane.heal();
    pod.del().expect("deleted");
    pod.assert_left_as(&before);
}

#[test]
fn addresses_without_ipam_failing_in_the_kernel_delete_the_record_only() {
    let mut pod = Pod::new();
    pod.conf["feature_control"] = json!({"ip_addrs_no_ipam": true});
    if let Some(meta) = pod.meta.as_mut() {
        meta.annotations.insert(
            "cni.projectcalico.org/ipAddrsNoIpam".into(),
            "[\"10.5.0.7\"]".into(),
        );
    }
    pod.dataplane.fail(Step::HostRoute(ip("10.5.0.7")));
    pod.add_fails_leaving_nothing(ErrorCode::DATAPLANE);
}

#[test]
fn a_delegated_ipam_failing_removes_the_veth() {
    testkit::require!("/usr/lib/cni/host-local");
    // Its only address leased to another container already.
    let pod = Pod::new().with_host_local("10.1.0.9", "10.1.0.9");
    let leases = pod.dir.path().join("host-local").join("net");
    std::fs::create_dir_all(&leases).expect("mkdir");
    std::fs::write(leases.join("10.1.0.9"), "another\r\neth0").expect("lease");
    let msg = pod.add_fails_leaving_nothing(ErrorCode(999));
    assert!(msg.contains("no IP addresses available"), "{msg}");
    assert_eq!(pod.host_local_leases(), ["10.1.0.9"]);
}

#[test]
fn the_veth_failing_after_a_delegated_add_releases_its_lease() {
    testkit::require!("/usr/lib/cni/host-local");
    let pod = Pod::new().with_host_local("10.1.0.9", "10.1.0.20");
    pod.dataplane.fail(Step::CreatePair);
    let _ = pod.add_fails_leaving_nothing(ErrorCode::DATAPLANE);
    assert_eq!(pod.host_local_leases(), Vec::<String>::new());
}

#[test]
fn the_record_failing_after_a_delegated_add_releases_its_lease() {
    testkit::require!("/usr/lib/cni/host-local");
    let pod = Pod::new().with_host_local("10.1.0.9", "10.1.0.20");
    pod.store.fail_next_txns(1);
    let _ = pod.add_fails_leaving_nothing(ErrorCode::TRY_AGAIN_LATER);
    assert_eq!(pod.host_local_leases(), Vec::<String>::new());
}

#[test]
fn the_kernel_failing_after_a_delegated_commit_takes_everything_back() {
    testkit::require!("/usr/lib/cni/host-local");
    let pod = Pod::new().with_host_local("10.1.0.9", "10.1.0.20");
    pod.dataplane.fail(Step::PodAddress(ip("10.1.0.9")));
    let _ = pod.add_fails_leaving_nothing(ErrorCode::DATAPLANE);
    assert_eq!(pod.host_local_leases(), Vec::<String>::new());
}

#[test]
fn a_delegated_add_is_deleted_with_its_lease() {
    testkit::require!("/usr/lib/cni/host-local");
    let pod = Pod::new().with_host_local("10.1.0.9", "10.1.0.20");
    let before = pod.state();
    let result = pod.add().expect("added");
    assert_eq!(result.ips[0].address, net("10.1.0.9/32"));
    assert_eq!(pod.host_local_leases(), ["10.1.0.9"]);
    pod.del().expect("deleted");
    pod.assert_left_as(&before);
    assert_eq!(pod.host_local_leases(), Vec::<String>::new());
}

/// Mirrors k8s.go `CmdAddK8s`'s "invalid pod startup delay" for a negative
/// `policy_setup_timeout_seconds`, here refused before anything is made.
#[test]
fn a_negative_policy_setup_timeout_is_refused_before_anything_is_made() {
    let mut pod = Pod::new();
    pod.conf["policy_setup_timeout_seconds"] = serde_json::json!(-1);
    let msg = pod.add_fails_leaving_nothing(ErrorCode::INVALID_NETWORK_CONFIG);
    assert_eq!(msg, "invalid pod startup delay of -1");
}

/// Mirrors k8s.go `CmdAddK8s` → wait.go `ForEndpointReadyWithTimeout`: the ADD returns once
/// the endpoint's status file is there (written up front here, by the test standing in for
/// the policy agent), and after the timeout with a warning when it never comes.
#[test]
fn the_policy_gate_waits_for_the_status_file_or_the_timeout() {
    let mut pod = Pod::new();
    let status = tempfile::tempdir().expect("tempdir");
    pod.conf["policy_setup_timeout_seconds"] = serde_json::json!(1);
    pod.conf["endpoint_status_dir"] = serde_json::json!(status.path());
    let key = calico_epstatus::EndpointKey::new("k8s", "default/pod0", "eth0");
    calico_epstatus::write(status.path(), &key, &Default::default()).expect("written");
    let t = std::time::Instant::now();
    pod.add().expect("added");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    pod.del().expect("deleted");

    calico_epstatus::remove(status.path(), &key).expect("removed");
    let t = std::time::Instant::now();
    pod.add().expect("added all the same");
    assert!(
        t.elapsed() >= std::time::Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    pod.del().expect("deleted");
}

#[test]
fn the_veth_failing_while_the_transaction_is_in_flight_takes_the_commit_back() {
    // The pair is still being made when the plan is ready, so the transaction goes ahead;
    // the pair then fails (held until the commit is in the store): the commit is released.
    let pod = Pod::new();
    let store = pod.store.clone();
    pod.dataplane.on(Step::CreatePair, move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !store
            .dump()
            .iter()
            .any(|(k, _)| k.contains("/workloadendpoints/"))
        {
            assert!(std::time::Instant::now() < deadline, "no commit");
            std::thread::yield_now();
        }
    });
    pod.dataplane.fail(Step::CreatePair);
    let msg = pod.add_fails_leaving_nothing(ErrorCode::DATAPLANE);
    assert!(msg.contains("injected failure"), "{}", msg);
}

#[test]
fn a_repeated_add_whose_interface_fails_leaves_the_live_attachment_as_it_was() {
    // The attachment exists (its endpoint and handle), so the transaction waits for the pair.
    // The pair's failure is held back a little (an injected delay, not a wait for state): a
    // transaction that did not wait would commit meanwhile and its rollback would take the
    // live attachment's allocation and endpoint with it.
    let pod = Pod::new();
    pod.add().expect("first ADD");
    pod.dataplane.on(Step::CreatePair, || {
        std::thread::sleep(std::time::Duration::from_millis(200));
    });
    pod.dataplane.fail(Step::CreatePair);
    let before = pod.store.dump();
    let e = pod.add().expect_err("the pair fails");
    assert!(e.msg.contains("injected failure"), "{}", e.msg);
    assert_eq!(pod.store.dump(), before, "the datastore is as it was");
}
