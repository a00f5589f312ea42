//! The concurrent runs themselves.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use calico_datastore::model::{IpPoolSpec, Resource, keys};
use calico_datastore::{Etcd, EtcdConfig};
use serde_json::{Value, json};
use testkit::bins::built;
use testkit::{EtcdCluster, require};

use crate::audit::audit;

const NODES: usize = 8;
const PODS: usize = 400;

struct Run {
    dir: tempfile::TempDir,
    endpoints: String,
}

impl Run {
    fn new(endpoints: String) -> Run {
        let db = connect(&endpoints);
        // A /20 in /26 blocks: 64 blocks for 8 nodes of 50 pods each.
        let pool = Resource::new("IPPool", "pool", IpPoolSpec::for_cidr("10.50.0.0/20"));
        db.put(
            &keys::resource("ippools", "pool"),
            pool.to_stored().unwrap(),
        )
        .unwrap();
        // The nodes are registered, as calico-node does.
        for node in 0..NODES {
            let name = format!("node-{node}");
            let n = Resource::new("Node", &name, json!({}));
            db.put(&keys::resource("nodes", &name), n.to_stored().unwrap())
                .unwrap();
        }
        Run {
            dir: tempfile::tempdir().unwrap(),
            endpoints,
        }
    }

    fn conf(&self, node: usize) -> Value {
        json!({"cniVersion": "1.0.0", "name": "stress", "type": "calico-ipam",
            "etcd_endpoints": self.endpoints, "nodename": format!("node-{node}"),
            "ipam_lock_file": self.dir.path().join(format!("node-{node}.lock")),
            "log_file_path": self.dir.path().join("cni.log"),
            "ipam": {"type": "calico-ipam"}})
    }

    /// Starts the plugin for pod `i` (node `i % NODES`).
    fn spawn(&self, command: &str, i: usize) -> Child {
        let mut child = Command::new(built("calico-ipam").unwrap())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("pod{i}"))
            .env("CNI_NETNS", "/run/netns/none")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/nonexistent")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let conf = self.conf(i % NODES).to_string();
        let _ = child.stdin.take().unwrap().write_all(conf.as_bytes());
        child
    }

    /// Runs `command` for every pod in `pods`, all at once; returns (pod, stdout JSON) of
    /// the ones that exited 0, and the ones that did not.
    fn all(&self, command: &str, pods: &[usize]) -> (Vec<(usize, Value)>, Vec<usize>) {
        let children: Vec<(usize, Child)> =
            pods.iter().map(|i| (*i, self.spawn(command, *i))).collect();
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        for (i, c) in children {
            let out = c.wait_with_output().unwrap();
            if out.status.success() {
                ok.push((
                    i,
                    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
                ));
            } else {
                failed.push(i);
            }
        }
        (ok, failed)
    }

    fn gc(&self, valid: &[usize]) {
        let mut conf = self.conf(0);
        conf["cniVersion"] = json!("1.1.0");
        conf["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|i| json!({"containerID": format!("pod{i}"), "ifname": "eth0"}))
            .collect();
        for node in 0..NODES {
            conf["nodename"] = json!(format!("node-{node}"));
            conf["ipam_lock_file"] = json!(self.dir.path().join(format!("node-{node}.lock")));
            let mut child = Command::new(built("calico-ipam").unwrap())
                .env("CNI_COMMAND", "GC")
                .env("CNI_PATH", "/nonexistent")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(conf.to_string().as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

fn connect(endpoints: &str) -> Etcd {
    Etcd::connect(&EtcdConfig::new(
        endpoints.split(',').map(str::to_string).collect(),
    ))
    .unwrap()
}

fn address_of(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().to_string()
}

/// `calicoctl ipam check` against `endpoints`: the number of problems it reports.
fn calicoctl_problems(endpoints: &str) -> usize {
    let out = Command::new(built("calicoctl").unwrap())
        .args(["ipam", "check"])
        .env("ETCD_ENDPOINTS", endpoints)
        .env("DATASTORE_TYPE", "etcdv3")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| {
            l.strip_prefix("Check complete; found ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no summary line in: {text}"))
}

/// After the run: the audit and `calicoctl ipam check` are clean, and the handles are
/// exactly the pods still alive.
fn assert_consistent(db: &Etcd, endpoints: &str, alive: &BTreeSet<usize>) {
    let a = audit(db);
    assert!(a.problems.is_empty(), "{:#?}", a.problems);
    assert_eq!(calicoctl_problems(endpoints), 0, "calicoctl ipam check");
    let expected: BTreeSet<String> = alive.iter().map(|i| format!("stress.pod{i}")).collect();
    assert_eq!(a.handles, expected);
    assert_eq!(a.allocations.len(), alive.len());
}

#[test]
fn eight_nodes_allocate_400_addresses_at_once_without_duplicates() {
    require!("etcd");
    let etcd = testkit::Etcd::start().unwrap();
    let run = Run::new(etcd.endpoints());
    let pods: Vec<usize> = (0..PODS).collect();
    let started = Instant::now();
    let (ok, failed) = run.all("ADD", &pods);
    let took = started.elapsed();
    assert!(failed.is_empty(), "failed ADDs: {failed:?}");
    let addrs: BTreeSet<String> = ok.iter().map(|(_, r)| address_of(r)).collect();
    assert_eq!(addrs.len(), PODS, "every address distinct");
    let db = connect(&etcd.endpoints());
    assert_consistent(&db, &etcd.endpoints(), &pods.iter().copied().collect());
    // Each node kept to its own blocks where it could.
    let a = audit(&db);
    let per_node_blocks: BTreeSet<(String, String)> = a
        .allocations
        .iter()
        .map(|(ip, (_, node))| {
            (
                node.clone(),
                ipnet::IpNet::new(*ip, 26).unwrap().trunc().to_string(),
            )
        })
        .collect();
    assert!(per_node_blocks.len() <= NODES * 2, "{per_node_blocks:?}");
    eprintln!(
        "400 ADDs on 8 nodes in {took:?}: {:.0} allocations/s",
        PODS as f64 / took.as_secs_f64()
    );

    let (_, failed) = run.all("DEL", &pods);
    assert!(failed.is_empty(), "failed DELs: {failed:?}");
    assert_consistent(&db, &etcd.endpoints(), &BTreeSet::new());
}

#[test]
fn killing_adds_at_random_points_leaves_nothing_owned_twice_and_del_plus_gc_clean_up() {
    require!("etcd");
    let etcd = testkit::Etcd::start().unwrap();
    let run = Run::new(etcd.endpoints());
    let mut children: Vec<(usize, Child)> = (0..PODS).map(|i| (i, run.spawn("ADD", i))).collect();
    // Kill every third process after a pseudo-random delay of 0-20 ms.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut killed = BTreeSet::new();
    for (i, c) in children.iter_mut() {
        if *i % 3 == 0 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_micros(seed % 20_000 / 20));
            let _ = c.kill();
            killed.insert(*i);
        }
    }
    let mut alive = BTreeSet::new();
    let mut addrs = BTreeSet::new();
    for (i, c) in children {
        let out = c.wait_with_output().unwrap();
        if out.status.success() {
            let r: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(
                addrs.insert(address_of(&r)),
                "address handed out twice: {r}"
            );
            alive.insert(i);
        } else {
            assert!(killed.contains(&i), "pod {i} failed without being killed");
        }
    }
    let db = connect(&etcd.endpoints());
    // Whatever the kills hit, no address is owned twice and every allocation is whole.
    let a = audit(&db);
    assert!(a.problems.is_empty(), "{:#?}", a.problems);
    // The runtime DELs the sandboxes whose ADD failed; then GC sweeps anything left.
    // A killed ADD may have sent its transaction before it died: etcd can still apply it
    // after the process is reaped, and after its DEL. As a runtime retries DEL, the dead
    // pods are DELed again until what is left is exactly the live pods' (bounded; each
    // round after the first is reported).
    let dead: Vec<usize> = (0..PODS).filter(|i| !alive.contains(i)).collect();
    let expected: BTreeSet<String> = alive.iter().map(|i| format!("stress.pod{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 0.. {
        let (_, failed) = run.all("DEL", &dead);
        assert!(failed.is_empty(), "{failed:?}");
        run.gc(&alive.iter().copied().collect::<Vec<_>>());
        let a = audit(&db);
        if a.problems.is_empty() && a.handles == expected && a.allocations.len() == alive.len() {
            break;
        }
        eprintln!(
            "after DEL round {round}: {:?}; handles beyond the live pods': {:?}",
            a.problems,
            a.handles.difference(&expected).collect::<Vec<_>>()
        );
        assert!(
            Instant::now() < deadline,
            "still not clean after 30 s of DEL rounds"
        );
    }
    assert_consistent(&db, &etcd.endpoints(), &alive);
    eprintln!(
        "killed {} of {PODS} ADDs; {} completed",
        dead.len(),
        alive.len()
    );
}

#[test]
fn the_etcd_leader_stopping_mid_run_loses_and_duplicates_nothing() {
    require!("etcd");
    let cluster = EtcdCluster::start(3).unwrap();
    let run = Run::new(cluster.endpoints());
    let stop = Arc::new(AtomicBool::new(false));
    let restarted = Arc::new(Mutex::new(None));
    let chaos = {
        let stop = stop.clone();
        let restarted = restarted.clone();
        let cluster = &cluster;
        move || {
            std::thread::sleep(Duration::from_millis(50));
            let leader = cluster.leader_index().unwrap();
            cluster.member(leader).stop().unwrap();
            std::thread::sleep(Duration::from_millis(400));
            cluster.member(leader).restart().unwrap();
            *restarted.lock().unwrap() = Some(leader);
            stop.store(true, Ordering::SeqCst);
        }
    };
    let pods: Vec<usize> = (0..PODS).collect();
    let (ok, failed) = std::thread::scope(|s| {
        let chaos = s.spawn(chaos);
        let out = run.all("ADD", &pods);
        chaos.join().unwrap();
        out
    });
    assert!(restarted.lock().unwrap().is_some());
    let addrs: BTreeSet<String> = ok.iter().map(|(_, r)| address_of(r)).collect();
    assert_eq!(addrs.len(), ok.len(), "no address handed out twice");
    // Failed ADDs (code 11 while the cluster elected a leader) are DELed by the runtime.
    let (_, del_failed) = run.all("DEL", &failed);
    assert!(del_failed.is_empty(), "{del_failed:?}");
    let alive: BTreeSet<usize> = ok.iter().map(|(i, _)| *i).collect();
    run.gc(&alive.iter().copied().collect::<Vec<_>>());
    assert_consistent(&connect(&cluster.endpoints()), &cluster.endpoints(), &alive);
    eprintln!(
        "leader stopped mid-run: {} ADDs completed, {} failed",
        ok.len(),
        failed.len()
    );
}
