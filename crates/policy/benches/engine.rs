//! `cargo bench -p calico-policy`: the engine at the scale (one node of 50 with 200
//! local endpoints, 10,000 endpoints cluster-wide, 2,000 policies, about 2,000 selector
//! sets). Prints the time of a cold build, of one policy change and of one endpoint add
//! (update + `desired()`), as the median and worst of several runs. A plain harness (no
//! criterion in the workspace).

use calico_datastore::model::policy::{
    EntityRule, NetworkPolicy, NetworkPolicySpec, Port, Protocol, Rule,
};
use calico_datastore::model::resources::{
    Profile, ProfileSpec, WorkloadEndpoint, WorkloadEndpointPort, WorkloadEndpointSpec,
};
use calico_policy::{EngineConfig, PolicyEngine};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const NODES: usize = 50;
const NAMESPACES: usize = 100;
const ENDPOINTS_PER_NS: usize = 100;
const POLICIES_PER_NS: usize = 20;

fn endpoint(ns: usize, i: usize) -> WorkloadEndpoint {
    let node = i % NODES;
    let mut labels = BTreeMap::new();
    // Every namespace has two local endpoints (i = 0 and 50), one of each app, so that all
    // 2,000 policies apply on this node (10 per local endpoint and direction).
    labels.insert("app".to_string(), format!("app{}", (i / NODES) % 2));
    labels.insert("role".to_string(), format!("r{}", i % 7));
    labels.insert("projectcalico.org/namespace".to_string(), format!("ns{ns}"));
    let mut wep = WorkloadEndpoint::new(
        "WorkloadEndpoint",
        &format!("node{node}-k8s-pod{i}-eth0"),
        WorkloadEndpointSpec {
            orchestrator: "k8s".into(),
            node: format!("node{node}"),
            pod: format!("pod{i}"),
            endpoint: "eth0".into(),
            ip_networks: vec![format!(
                "10.{}.{}.{}/32",
                64 + ns / 50,
                (ns % 50) * 4 + i / 250,
                i % 250 + 1
            )],
            profiles: vec![format!("kns.ns{ns}")],
            interface_name: format!("cali{ns:04}{i:04}"),
            mac: "ee:ee:ee:ee:ee:ee".into(),
            ports: vec![WorkloadEndpointPort {
                name: "http".into(),
                protocol: serde_json::json!("TCP"),
                port: 8080,
                host_port: 0,
                host_ip: String::new(),
            }],
            ..Default::default()
        },
    );
    wep.metadata.namespace = format!("ns{ns}");
    wep.metadata.labels = labels;
    wep
}

fn policy(ns: usize, j: usize, port: u16) -> NetworkPolicy {
    let mut ingress = Rule::allow();
    ingress.protocol = Some(Protocol::Name("TCP".into()));
    ingress.source = Some(EntityRule {
        selector: format!("role == 'r{}' && app != 'x{j}'", j % 7),
        ..Default::default()
    });
    ingress.destination = Some(EntityRule {
        ports: vec![
            Port::single(port),
            Port::Range {
                min: 8000,
                max: 8080,
            },
        ],
        ..Default::default()
    });
    let mut egress = Rule::allow();
    egress.destination = Some(EntityRule {
        namespace_selector: format!("team == 't{}'", ns % 10),
        ..Default::default()
    });
    let mut p = NetworkPolicy::new(
        "NetworkPolicy",
        &format!("default.p{j}"),
        NetworkPolicySpec {
            order: Some(j as f64),
            selector: format!("app == 'app{}'", j % 2),
            ingress: vec![ingress],
            egress: vec![egress],
            ..Default::default()
        },
    );
    p.metadata.namespace = format!("ns{ns}");
    p
}

fn profile(ns: usize) -> Profile {
    let mut labels = BTreeMap::new();
    labels.insert("pcns.team".to_string(), format!("t{}", ns % 10));
    Profile::new(
        "Profile",
        &format!("kns.ns{ns}"),
        ProfileSpec {
            ingress: vec![Rule::allow()],
            egress: vec![Rule::allow()],
            labels_to_apply: labels,
            ..Default::default()
        },
    )
}

fn cold() -> (PolicyEngine, Duration) {
    cold_with(EngineConfig::default())
}

fn cold_with(config: EngineConfig) -> (PolicyEngine, Duration) {
    let t = Instant::now();
    let mut e = PolicyEngine::new("node0", config);
    for ns in 0..NAMESPACES {
        e.upsert_profile(&profile(ns)).expect("profile");
    }
    for ns in 0..NAMESPACES {
        for j in 0..POLICIES_PER_NS {
            e.upsert_network_policy(&policy(ns, j, 80)).expect("policy");
        }
    }
    let steps = std::env::var_os("MEM_STEPS").is_some();
    if steps {
        println!("  after profiles and policies: {} MiB", rss_kib() / 1024);
    }
    for ns in 0..NAMESPACES {
        for i in 0..ENDPOINTS_PER_NS {
            e.upsert_workload_endpoint(&endpoint(ns, i))
                .expect("endpoint");
        }
    }
    if steps {
        println!("  after endpoints: {} MiB", rss_kib() / 1024);
    }
    e.desired();
    if steps {
        println!("  after desired(): {} MiB", rss_kib() / 1024);
    }
    (e, t.elapsed())
}

fn summary(name: &str, mut runs: Vec<Duration>) {
    runs.sort();
    let median = runs[runs.len() / 2];
    let p99 = runs[(runs.len() * 99 / 100).min(runs.len() - 1)];
    let worst = runs[runs.len() - 1];
    println!(
        "{name:<40} median {median:>10.3?}  p99 {p99:>10.3?}  worst {worst:>10.3?}  ({} runs)",
        runs.len()
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    if std::env::var_os("POLICY_BENCH_KERNEL").is_some() {
        // Alone in the process, so that its resident memory is the agent's picture.
        kernel();
        return;
    }
    let mut colds = Vec::new();
    let before = rss_kib();
    let (first, d) = cold();
    colds.push(d);
    println!(
        "resident memory of one engine at this scale: {} MiB (process {} MiB)",
        (rss_kib().saturating_sub(before)) / 1024,
        rss_kib() / 1024
    );
    let mut engine = Some(first);
    for _ in 0..2 {
        let (e, d) = cold();
        colds.push(d);
        engine = Some(e);
    }
    let Some(mut e) = engine else { return };
    let s = e.stats();
    println!(
        "scale: {} local endpoints, {} active policies, {} sets, {} chains, {} rules",
        s.local_endpoints, s.active_policies, s.sets, s.chains, s.rules
    );
    summary("cold build (all updates + desired)", colds);

    let mut changes = Vec::new();
    for k in 0..200u16 {
        let p = policy(
            (k as usize * 7) % NAMESPACES,
            k as usize % POLICIES_PER_NS,
            81 + k,
        );
        debug_assert!(p.spec.selector.starts_with("app == 'app"));
        let t = Instant::now();
        e.upsert_network_policy(&p).expect("policy");
        e.desired();
        changes.push(t.elapsed());
    }
    summary("one policy change (rule port)", changes);

    // What the agent pays on top if it hands whole tables to the netfilter crate instead of
    // edits (PolicyEngine::write_changes): a clone and a full-table plan.
    let mut clones = Vec::new();
    let mut plans = Vec::new();
    let mut old = e.desired().clone();
    for k in 0..20u16 {
        e.upsert_network_policy(&policy(k as usize % NAMESPACES, 0, 500 + k))
            .expect("policy");
        let t = Instant::now();
        let new = e.desired().clone();
        clones.push(t.elapsed());
        let t = Instant::now();
        let batch = calico_netfilter::ruleset::plan(Some(&old), &new).expect("plan");
        plans.push(t.elapsed());
        assert!(!batch.is_empty());
        old = new;
    }
    summary("  clone of the whole table", clones);
    summary("  full-table plan of one change", plans);

    let mut adds = Vec::new();
    for k in 0..200 {
        // A new local pod (node0) in an existing namespace.
        let mut wep = endpoint(k % NAMESPACES, 10_000 + k * NODES);
        wep.spec.ip_networks = vec![format!("10.99.{}.{}/32", k / 250, k % 250 + 1)];
        let t = Instant::now();
        e.upsert_workload_endpoint(&wep).expect("endpoint");
        e.desired();
        adds.push(t.elapsed());
    }
    summary("one local endpoint add", adds);

    let mut remote = Vec::new();
    for k in 0..200 {
        let mut wep = endpoint(k % NAMESPACES, 20_000 + k * NODES + 1);
        wep.spec.ip_networks = vec![format!("10.98.{}.{}/32", k / 250, k % 250 + 1)];
        let t = Instant::now();
        e.upsert_workload_endpoint(&wep).expect("endpoint");
        e.desired();
        remote.push(t.elapsed());
    }
    summary("one remote endpoint add", remote);
}

/// With `POLICY_BENCH_KERNEL=1` (root): the same scale applied to the kernel in a network
/// namespace through the netfilter crate's programmed table, as the agent does it: one
/// whole replace, then per update an edit with what changed (engine + plan + commit).
fn kernel() {
    use calico_netfilter::NfSocket;
    use calico_netfilter::ruleset::ProgrammedTable;
    let ns = match testkit::NetNs::new("pbench") {
        Ok(ns) => ns,
        Err(err) => {
            println!("kernel timings skipped: {err:#}");
            return;
        }
    };
    let (mut e, build) = cold_with(EngineConfig {
        lean: true,
        ..Default::default()
    });
    let timings = ns
        .within(move || {
            let mut sock = NfSocket::open().expect("nf socket");
            let mut table = ProgrammedTable::new();
            let t = Instant::now();
            table.sync(&mut sock, e.full_table()).expect("whole table");
            let sync = t.elapsed();
            e.take_touched();
            let peak = rss_kib() / 1024;
            // As calico-node does after a large apply: freed memory back to the system.
            calico_malloc::release_free_memory();
            println!(
                "kernel: process resident memory with the engine and the programmed table: \
                 {} MiB after the cold start's transaction was freed ({peak} MiB before)",
                rss_kib() / 1024
            );
            if std::env::var_os("POLICY_BENCH_EXIT_AFTER_COLD").is_some() {
                // The resident mappings of 1 MiB or more (heap, arenas, the binary).
                let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
                let mut mapping = "";
                for line in smaps.lines() {
                    if !line.contains(':') || line.split_whitespace().count() > 3 {
                        mapping = line;
                    } else if let Some(kib) = line.strip_prefix("Rss:") {
                        let kib: u64 = kib
                            .trim()
                            .trim_end_matches("kB")
                            .trim()
                            .parse()
                            .unwrap_or(0);
                        if kib >= 1024 {
                            println!("  {} MiB  {mapping}", kib / 1024);
                        }
                    }
                }
                // What is live now is what a heap profiler (heaptrack) reports as leaked,
                // with its stacks: the steady state's memory by where it was allocated. The
                // process exits once the namespace is gone (below).
                std::mem::forget(e);
                std::mem::forget(table);
                return None;
            }
            let mut step = |e: &mut PolicyEngine| {
                let mut edit = table.edit().expect("applied");
                e.write_changes(&mut edit).expect("edit");
                edit.commit(&mut sock).expect("commit");
            };
            let mut changes = Vec::new();
            for k in 0..100u16 {
                let p = policy(
                    (k as usize * 7) % NAMESPACES,
                    k as usize % POLICIES_PER_NS,
                    700 + k,
                );
                let t = Instant::now();
                e.upsert_network_policy(&p).expect("policy");
                step(&mut e);
                changes.push(t.elapsed());
            }
            let mut adds = Vec::new();
            for k in 0..100 {
                let mut wep = endpoint(k % NAMESPACES, 30_000 + k * NODES);
                wep.spec.ip_networks = vec![format!("10.97.{}.{}/32", k / 250, k % 250 + 1)];
                let t = Instant::now();
                e.upsert_workload_endpoint(&wep).expect("endpoint");
                step(&mut e);
                adds.push(t.elapsed());
            }
            Some((sync, changes, adds))
        })
        .expect("in the namespace");
    let Some((sync, changes, adds)) = timings else {
        drop(ns);
        std::process::exit(0);
    };
    println!(
        "kernel: cold start (engine {build:.3?} + whole-table transaction {sync:.3?}) = {:.3?}",
        build + sync
    );
    summary("kernel: policy change enforced", changes);
    summary("kernel: local endpoint add enforced", adds);
}
