//! The rendered tables against the kernel, in a network namespace the test creates: every
//! golden case's table applies whole (an atomic replace), and each step of building it up
//! update by update and tearing it down again applies as an incremental plan from the step
//! before. This checks the lowering to nf_tables expressions, which the golden text (nft's
//! syntax) does not show.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use calico_netfilter::NfSocket;
use calico_netfilter::ruleset::{self, Ruleset};
use calico_policy::{EngineConfig, PolicyEngine};
use common::{NODE, apply, cases, remove, resources};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
use testkit::{NetNs, require};

fn program(ns: &NetNs, old: Option<&Ruleset>, new: &Ruleset, what: &str) {
    let batch = ruleset::plan(old, new).unwrap_or_else(|e| panic!("{what}: plan: {e}"));
    let what = what.to_string();
    ns.within(move || {
        let mut sock = NfSocket::open().unwrap();
        ruleset::apply(&mut sock, &batch).unwrap_or_else(|e| panic!("{what}: apply: {e}"));
    })
    .unwrap();
}

#[test]
fn every_case_applies_whole_and_step_by_step() {
    require!(root; "nft");
    let ns = NetNs::new("pol").unwrap();
    for dir in cases() {
        let input = resources(&dir.join("input.yaml"));
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut e = PolicyEngine::new(NODE, EngineConfig::default());
        for r in &input {
            apply(&mut e, r);
        }
        let whole = e.desired().clone();
        program(&ns, None, &whole, &format!("{name}: whole"));
        let listed = ns.sh("nft list table inet calico").unwrap();
        assert!(listed.contains("chain filter-FORWARD"), "{name}: {listed}");

        let mut e = PolicyEngine::new(NODE, EngineConfig::default());
        let mut prev = e.desired().clone();
        program(&ns, None, &prev, &format!("{name}: empty"));
        let steps = input
            .iter()
            .map(|r| (r, true))
            .chain(input.iter().map(|r| (r, false)));
        for (i, (r, add)) in steps.enumerate() {
            if add {
                apply(&mut e, r);
            } else {
                remove(&mut e, r);
            }
            let next = e.desired().clone();
            program(&ns, Some(&prev), &next, &format!("{name}: step {i}"));
            prev = next;
        }
    }
}

/// Pods a (`calia`) and b (`calib`) behind a router namespace standing for node1, and c on
/// `caliz`, an interface with no endpoint (the `traffic-lab` case's network).
struct Lab {
    router: NetNs,
    a: NetNs,
    b: NetNs,
    c: NetNs,
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            router: NetNs::new("prt").unwrap(),
            a: NetNs::new("ppa").unwrap(),
            b: NetNs::new("ppb").unwrap(),
            c: NetNs::new("ppc").unwrap(),
        };
        lab.router
            .sh("ip link set lo up; sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
            .unwrap();
        for (n, (iface, ep)) in [("calia", &lab.a), ("calib", &lab.b), ("caliz", &lab.c)]
            .into_iter()
            .enumerate()
        {
            let n = n + 1;
            lab.router
                .sh(&format!(
                    "ip link add {iface} type veth peer name eth0 netns {ep}
                     ip addr add 10.65.{n}.1/24 dev {iface}
                     ip addr add fd65:{n}::1/64 dev {iface} nodad
                     ip link set {iface} up",
                    ep = ep.name()
                ))
                .unwrap();
            ep.sh(&format!(
                "ip link set lo up; ip link set eth0 up
                 ip addr add 10.65.{n}.2/24 dev eth0
                 ip addr add fd65:{n}::2/64 dev eth0 nodad
                 ip route add default via 10.65.{n}.1
                 ip -6 route add default via fd65:{n}::1"
            ))
            .unwrap();
        }
        lab
    }
}

/// One echo answered (three tries of 1 s: the first may wait for neighbour discovery).
fn pings(from: &NetNs, to: &str) -> bool {
    (0..3).any(|_| {
        from.run("busybox", ["ping", "-c1", "-W1", to])
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// One echo, not answered within 1 s (neighbours are resolved by the pings before).
fn ping_blocked(from: &NetNs, to: &str) -> bool {
    !from
        .run("busybox", ["ping", "-c1", "-W1", to])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Echo servers on `ports` in `ns`, served from threads that end with the test process.
fn serve(ns: &NetNs, ports: &[u16]) {
    for &port in ports {
        let listener = ns
            .within(move || TcpListener::bind(("::", port)).unwrap())
            .unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut read = conn.try_clone().unwrap();
                    let _ = std::io::copy(&mut read, &mut conn);
                });
            }
        });
    }
}

/// A TCP connection from `ns`, if the handshake completes within 1 s.
fn connect(ns: &NetNs, to: &str, port: u16) -> Option<TcpStream> {
    let addr = SocketAddr::new(to.parse().unwrap(), port);
    ns.within(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
        .unwrap()
}

/// Whether `conn` still carries data both ways (an echo within 1 s).
fn echoes(conn: &mut TcpStream) -> bool {
    use std::io::{Read, Write};
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 4];
    conn.write_all(b"ping").is_ok() && conn.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

fn lab_engine() -> (PolicyEngine, Vec<serde_json::Value>) {
    let dir = cases()
        .into_iter()
        .find(|d| d.ends_with("traffic-lab"))
        .unwrap();
    let input = resources(&dir.join("input.yaml"));
    let mut e = PolicyEngine::new(NODE, EngineConfig::default());
    for r in &input {
        apply(&mut e, r);
    }
    (e, input)
}

/// Real traffic through the rendered table: Calico's semantics end to end (mirrors the
/// connectivity Felix's `felix/fv/policy_test.go` checks), incremental changes keep
/// established connections, unknown `cali*` interfaces carry nothing.
#[test]
fn traffic_obeys_the_rendered_policy() {
    require!(root; "nft", "busybox");
    let lab = Lab::new();
    let (mut e, _) = lab_engine();
    let mut applied = e.desired().clone();
    program(&lab.router, None, &applied, "lab");
    serve(&lab.b, &[8005, 9000]);
    serve(&lab.a, &[8005]);

    // b's ingress: TCP 8000-8010 and echo requests from a, nothing else.
    for to in ["10.65.2.2", "fd65:2::2"] {
        assert!(pings(&lab.a, to), "a pings b at {to}");
        let mut conn = connect(&lab.a, to, 8005).expect("a → b:8005");
        assert!(echoes(&mut conn));
        assert!(connect(&lab.a, to, 9000).is_none(), "a → b:9000 refused");
    }
    // b may start nothing (egress policy without rules); a's profiles let it be reached.
    assert!(
        ping_blocked(&lab.b, "10.65.1.2"),
        "b → a blocked by b's egress"
    );
    assert!(connect(&lab.b, "10.65.1.2", 8005).is_none());
    // Fail closed: caliz is no endpoint's interface.
    assert!(
        ping_blocked(&lab.c, "10.65.2.2"),
        "c (unknown interface) → b"
    );
    assert!(
        ping_blocked(&lab.c, "10.65.1.2"),
        "c (unknown interface) → a"
    );
    assert!(
        ping_blocked(&lab.a, "10.65.3.2"),
        "a → c (unknown interface)"
    );
    // Workload to host: DefaultEndpointToHostAction Drop (Felix's default).
    assert!(
        ping_blocked(&lab.a, "10.65.1.1"),
        "a → its host dropped by default"
    );

    // An established connection survives a change that would refuse it now; the change
    // is applied as an incremental plan.
    let mut kept = connect(&lab.a, "10.65.2.2", 8005).expect("a → b:8005");
    let mut policy: calico_datastore::model::policy::NetworkPolicy = serde_json::from_value(
        serde_json::json!({"kind": "NetworkPolicy", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "default.b-ingress", "namespace": "default"},
            "spec": {"selector": "app == 'b'", "ingress": [{"action": "Allow", "protocol": "TCP",
                "source": {"selector": "app == 'a'"}, "destination": {"ports": [9000]}}]}}),
    )
    .unwrap();
    e.upsert_network_policy(&policy).unwrap();
    let next = e.desired().clone();
    program(&lab.router, Some(&applied), &next, "b-ingress now 9000");
    applied = next;
    assert!(echoes(&mut kept), "the established connection still flows");
    assert!(
        connect(&lab.a, "10.65.2.2", 9000).is_some(),
        "a → b:9000 now"
    );
    assert!(
        connect(&lab.a, "10.65.2.2", 8005).is_none(),
        "a → b:8005 no longer"
    );
    assert!(ping_blocked(&lab.a, "10.65.2.2"), "echo no longer allowed");

    // Deny-all: a policy selecting b with an empty ingress list drops everything new.
    policy.spec.ingress.clear();
    e.upsert_network_policy(&policy).unwrap();
    let next = e.desired().clone();
    program(&lab.router, Some(&applied), &next, "b-ingress deny all");
    applied = next;
    assert!(connect(&lab.a, "10.65.2.2", 9000).is_none());

    // Workload to host: Accept through FelixConfiguration.
    let cfg: calico_datastore::model::policy::FelixConfiguration = serde_json::from_value(
        serde_json::json!({"kind": "FelixConfiguration", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "node.node1"}, "spec": {"defaultEndpointToHostAction": "Accept"}}),
    )
    .unwrap();
    e.upsert_felix_configuration(&cfg).unwrap();
    let next = e.desired().clone();
    program(
        &lab.router,
        Some(&applied),
        &next,
        "endpoint to host Accept",
    );
    assert!(pings(&lab.a, "10.65.1.1"), "a → its host accepted");
    assert!(
        pings(&lab.a, "fd65:1::1"),
        "a → its host over IPv6 (neighbour discovery allowed)"
    );
    assert!(
        ping_blocked(&lab.c, "10.65.3.1"),
        "c (unknown interface) → host still dropped"
    );
    // A source address that is not the endpoint's is dropped (Felix's reverse-path check).
    lab.a.sh("ip addr add 10.65.1.99/24 dev eth0").unwrap();
    let spoofed = lab
        .a
        .run(
            "busybox",
            ["ping", "-c1", "-W1", "-I", "10.65.1.99", "10.65.1.1"],
        )
        .unwrap();
    assert!(!spoofed.status.success(), "a → host from a foreign address");
}

/// The agent's loop as the lead wires it: a whole replace first, then per update an edit of
/// the programmed table with only what changed; the kernel's table ends as the fresh build.
#[test]
fn edits_of_the_programmed_table_follow_the_engine() {
    require!(root; "nft");
    let ns = NetNs::new("ped").unwrap();
    for dir in cases() {
        let input = resources(&dir.join("input.yaml"));
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        // Lean, as the agent runs it: the programmed table holds the only copy of the chains.
        let mut e = PolicyEngine::new(
            NODE,
            EngineConfig {
                lean: true,
                ..Default::default()
            },
        );
        let mut table = ruleset::ProgrammedTable::new();
        let first = e.full_table();
        e.take_touched();
        ns.within(|| {
            let mut sock = NfSocket::open().unwrap();
            table.sync(&mut sock, first).unwrap();
            let steps = input
                .iter()
                .map(|r| (r, true))
                .chain(input.iter().map(|r| (r, false)));
            for (i, (r, add)) in steps.enumerate() {
                if add {
                    apply(&mut e, r);
                } else {
                    remove(&mut e, r);
                }
                let mut edit = table.edit().unwrap();
                e.write_changes(&mut edit)
                    .unwrap_or_else(|err| panic!("{name}: step {i}: {err}"));
                edit.commit(&mut sock)
                    .unwrap_or_else(|err| panic!("{name}: step {i}: {err}"));
                assert!(table.holds(&e.full_table()), "{name}: step {i}");
            }
        })
        .unwrap();
    }
}
