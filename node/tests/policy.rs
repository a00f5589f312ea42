//! Network policy for real: `calico-node run` on simulated nodes enforces Calico's policy
//! model, read from the seed's mutual-TLS etcd, with nftables, on pods added through libcni;
//! every expectation is a real connection (TCP, UDP, ICMP; IPv4 and IPv6) between pods.
//! Expectations follow Calico's documented semantics (felix/calc, felix/rules).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod policy_lab;

use policy_lab::{Lab, Pod, Proto, Servers, assert_matrix, probe};
use serde_json::{Value, json};
use std::net::IpAddr;
use testkit::{eventually, require};

use Proto::{Icmp, Tcp, Udp};

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"kind": "NetworkPolicy", "apiVersion": "projectcalico.org/v3",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn gnp(name: &str, spec: Value) -> Value {
    json!({"kind": "GlobalNetworkPolicy", "apiVersion": "projectcalico.org/v3",
           "metadata": {"name": name}, "spec": spec})
}

const TCP_PORTS: [u16; 6] = [80, 5432, 8080, 8081, 9000, 9001];
const UDP_PORTS: [u16; 1] = [53];

/// Three namespaces' worth of pods on two nodes, labelled as Kubernetes would.
struct World {
    lab: Lab,
    web: Pod,
    db: Pod,
    dbg: Pod,
    tool: Pod,
    _servers: Vec<Servers>,
}

fn world(v6: bool) -> World {
    let lab = Lab::start(2, v6, &[]);
    lab.namespace("prod", &[("team", "a")]);
    lab.namespace("dev", &[("team", "b")]);
    lab.service_account("prod", "web-sa", &[]);
    lab.service_account("prod", "db-sa", &[]);
    lab.service_account("dev", "default", &[]);
    let web = lab.pod(0, "prod", "web");
    let db = lab.pod(1, "prod", "db");
    let dbg = lab.pod(0, "dev", "dbg");
    let tool = lab.pod(1, "dev", "tool");
    lab.label_pod(&web, &[("role", "web")], "web-sa", &[]);
    lab.label_pod(&db, &[("role", "db")], "db-sa", &[("pg", "TCP", 5432)]);
    lab.label_pod(&dbg, &[("role", "debug")], "default", &[]);
    let rev = lab.label_pod(&tool, &[("role", "tool")], "default", &[]);
    lab.wait_applied(rev);
    let servers = [&web, &db, &dbg, &tool]
        .iter()
        .map(|p| Servers::start(p, &TCP_PORTS, &UDP_PORTS))
        .collect();
    World {
        lab,
        web,
        db,
        dbg,
        tool,
        _servers: servers,
    }
}

/// The Calico semantics, one step at a time on one set of pods: profiles only, then
/// policies added one by one, each step's whole matrix asserted.
#[test]
fn calico_policy_semantics_step_by_step_across_two_nodes() {
    require!(root; "etcd", "go", "ip", "busybox", "nft");
    let w = world(false);
    let (web, db, dbg, tool) = (&w.web, &w.db, &w.dbg, &w.tool);
    let lab = &w.lab;

    // 1. Profiles only: kns.<ns> allows both ways, so everything reaches everything.
    let mut all = Vec::new();
    for from in [web, db, dbg, tool] {
        for to in [web, db, dbg, tool] {
            if from.name != to.name {
                all.push((from, to.v4(), Tcp(80), true));
                all.push((from, to.v4(), Udp(53), true));
                all.push((from, to.v4(), Icmp, true));
            }
        }
    }
    assert_matrix(lab, &all);

    // 2. Deny all ingress in prod: a policy selects the prod pods for ingress and has no
    //    rule, so the default tier's end drops ("no policy passed the packet"). Egress is
    //    not selected: prod pods still send.
    lab.apply(np(
        "prod",
        "default.deny-ingress",
        json!({"selector": "all()", "types": ["Ingress"]}),
    ));
    assert_matrix(
        lab,
        &[
            (dbg, web.v4(), Tcp(80), false),
            (dbg, db.v4(), Udp(53), false),
            (web, db.v4(), Icmp, false),
            (db, web.v4(), Tcp(80), false),
            (web, dbg.v4(), Tcp(80), true),
            (db, tool.v4(), Udp(53), true),
            (dbg, tool.v4(), Icmp, true),
        ],
    );

    // 3. Allow by pod label (the selector is scoped to the policy's namespace).
    lab.apply(np(
        "prod",
        "default.db-from-web",
        json!({"selector": "role == 'db'", "ingress": [{"action": "Allow", "protocol": "TCP",
               "source": {"selector": "role == 'web'"}, "destination": {"ports": [5432]}}]}),
    ));
    assert_matrix(
        lab,
        &[
            (web, db.v4(), Tcp(5432), true),
            (web, db.v4(), Tcp(80), false),
            (web, db.v4(), Udp(53), false),
            (dbg, db.v4(), Tcp(5432), false),
        ],
    );

    // 4. By namespace label: dev has team=b.
    lab.apply(np(
        "prod",
        "default.db-from-team-b",
        json!({"selector": "role == 'db'", "ingress": [{"action": "Allow", "protocol": "TCP",
               "source": {"namespaceSelector": "team == 'b'"}, "destination": {"ports": [8080]}}]}),
    ));
    assert_matrix(
        lab,
        &[
            (dbg, db.v4(), Tcp(8080), true),
            (tool, db.v4(), Tcp(8080), true),
            (web, db.v4(), Tcp(8080), false),
            (dbg, db.v4(), Tcp(80), false),
        ],
    );

    // 5. By service account.
    lab.apply(np(
        "prod",
        "default.web-from-db-sa",
        json!({"selector": "role == 'web'", "ingress": [{"action": "Allow", "protocol": "TCP",
               "source": {"serviceAccounts": {"names": ["db-sa"]}}, "destination": {"ports": [80]}}]}),
    ));
    assert_matrix(
        lab,
        &[
            (db, web.v4(), Tcp(80), true),
            (dbg, web.v4(), Tcp(80), false),
        ],
    );

    // 6. By CIDR with notNets: the pool, but not web's address.
    lab.apply(np(
        "dev",
        "default.debug-from-pool",
        json!({"selector": "role == 'debug'", "ingress": [{"action": "Allow", "protocol": "TCP",
               "source": {"nets": ["10.244.0.0/16"], "notNets": [format!("{}/32", web.v4())]},
               "destination": {"ports": [80]}}]}),
    ));
    assert_matrix(
        lab,
        &[
            (db, dbg.v4(), Tcp(80), true),
            (tool, dbg.v4(), Tcp(80), true),
            (web, dbg.v4(), Tcp(80), false),
            (db, dbg.v4(), Udp(53), false),
        ],
    );

    // 7. Port ranges and named ports ("pg" is db's 5432/TCP).
    lab.apply(np(
        "prod",
        "default.db-ranges",
        json!({"selector": "role == 'db'", "ingress": [
            {"action": "Allow", "protocol": "TCP", "source": {"selector": "role == 'web'"},
             "destination": {"ports": ["8081:9000"]}},
            {"action": "Allow", "protocol": "TCP", "source": {"namespaceSelector": "all()"},
             "destination": {"ports": ["pg"]}}]}),
    ));
    assert_matrix(
        lab,
        &[
            (web, db.v4(), Tcp(8081), true),
            (web, db.v4(), Tcp(9000), true),
            (web, db.v4(), Tcp(9001), false),
            (dbg, db.v4(), Tcp(5432), true),
            (dbg, db.v4(), Tcp(9000), false),
        ],
    );

    // 8. Egress: debug may only send DNS (UDP 53).
    lab.apply(np(
        "dev",
        "default.debug-egress",
        json!({"selector": "role == 'debug'", "types": ["Egress"],
               "egress": [{"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}}]}),
    ));
    assert_matrix(
        lab,
        &[
            (dbg, tool.v4(), Udp(53), true),
            (dbg, tool.v4(), Tcp(80), false),
            (dbg, tool.v4(), Icmp, false),
            (tool, dbg.v4(), Tcp(80), true),
        ],
    );

    // 9. ICMP types: tool answers echo requests (type 8) and nothing else.
    lab.apply(np(
        "dev",
        "default.tool-ping-only",
        json!({"selector": "role == 'tool'", "ingress": [
            {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}}]}),
    ));
    assert_matrix(
        lab,
        &[
            (web, tool.v4(), Icmp, true),
            (web, tool.v4(), Tcp(80), false),
            (db, tool.v4(), Udp(53), false),
        ],
    );

    // 10. Two tiers: "security" (order 100) runs first. Its policy passes db's traffic to
    //     the next tier (where step 5's policy allows it) and denies the rest into web.
    lab.apply(json!({"kind": "Tier", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "security"}, "spec": {"order": 100}}));
    lab.apply(gnp(
        "security.web-guard",
        json!({"tier": "security", "order": 10, "selector": "role == 'web'", "ingress": [
            {"action": "Pass", "source": {"selector": "role == 'db'"}},
            {"action": "Deny"}]}),
    ));
    assert_matrix(
        lab,
        &[
            (db, web.v4(), Tcp(80), true),
            (db, web.v4(), Tcp(8080), false),
            (dbg, web.v4(), Tcp(80), false),
        ],
    );
    // A tier whose policy selects an endpoint but matches nothing ends in a drop, unless
    // the tier's default action is Pass.
    lab.apply(gnp(
        "security.web-guard",
        json!({"tier": "security", "order": 10, "selector": "role == 'web'", "ingress": [
            {"action": "Deny", "protocol": "UDP"}]}),
    ));
    assert_matrix(lab, &[(db, web.v4(), Tcp(80), false)]);
    lab.apply(json!({"kind": "Tier", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "security"}, "spec": {"order": 100, "defaultAction": "Pass"}}));
    assert_matrix(lab, &[(db, web.v4(), Tcp(80), true)]);

    // 11. Removing the policies restores the profiles' allow-all.
    for (ns, name) in [
        ("prod", "default.deny-ingress"),
        ("prod", "default.db-from-web"),
        ("prod", "default.db-from-team-b"),
        ("prod", "default.web-from-db-sa"),
        ("dev", "default.debug-from-pool"),
        ("prod", "default.db-ranges"),
        ("dev", "default.debug-egress"),
        ("dev", "default.tool-ping-only"),
    ] {
        lab.delete("NetworkPolicy", ns, name);
    }
    let rev = lab.delete("GlobalNetworkPolicy", "", "security.web-guard");
    lab.wait_applied(rev);
    assert_matrix(
        lab,
        &[
            (dbg, web.v4(), Tcp(80), true),
            (web, db.v4(), Udp(53), true),
            (dbg, tool.v4(), Icmp, true),
        ],
    );
}

/// IPv6 gets the same treatment: a dual-stack pair, a label policy, both families.
#[test]
fn ipv6_traffic_is_enforced_like_ipv4() {
    require!(root; "etcd", "go", "ip", "busybox", "nft");
    let w = world(true);
    let (web, db, dbg) = (&w.web, &w.db, &w.dbg);
    let lab = &w.lab;
    assert_matrix(
        lab,
        &[
            (web, db.v6(), Tcp(80), true),
            (dbg, db.v6(), Udp(53), true),
            (dbg, web.v6(), Icmp, true),
        ],
    );
    lab.apply(np(
        "prod",
        "default.db-from-web",
        json!({"selector": "role == 'db'", "ingress": [{"action": "Allow", "protocol": "TCP",
               "source": {"selector": "role == 'web'"}, "destination": {"ports": [5432]}}]}),
    ));
    assert_matrix(
        lab,
        &[
            (web, db.v6(), Tcp(5432), true),
            (web, db.v4(), Tcp(5432), true),
            (web, db.v6(), Tcp(80), false),
            (dbg, db.v6(), Tcp(5432), false),
            (dbg, db.v6(), Udp(53), false),
        ],
    );
    // ipVersion 4 only: the IPv6 path is no longer allowed.
    lab.apply(np(
        "prod",
        "default.db-from-web",
        json!({"selector": "role == 'db'", "ingress": [{"action": "Allow", "protocol": "TCP",
               "ipVersion": 4, "source": {"selector": "role == 'web'"},
               "destination": {"ports": [5432]}}]}),
    ));
    assert_matrix(
        lab,
        &[
            (web, db.v4(), Tcp(5432), true),
            (web, db.v6(), Tcp(5432), false),
        ],
    );
}

/// A `cali*` interface the agent knows nothing of carries nothing: a veth made by hand
/// with a route to it gets no traffic through the node.
#[test]
fn an_unknown_cali_interface_carries_nothing() {
    require!(root; "etcd", "go", "ip", "busybox", "nft");
    let lab = Lab::start(1, false, &[]);
    let known = lab.pod(0, "default", "known");
    let _s = Servers::start(&known, &[80], &[]);
    let rogue = testkit::NetNs::new("rogue").unwrap();
    let node = lab.c.node(0).netns();
    let host_if = format!("calirogue{}", std::process::id() % 10000);
    node.sh(&format!(
        "ip link add {host_if} type veth peer name eth0 netns {ns} && ip link set {host_if} up && \
         ip route add 10.99.0.5/32 dev {host_if} && sysctl -qw net.ipv4.conf.{host_if}.proxy_arp=1",
        ns = rogue.name()
    ))
    .unwrap();
    rogue
        .sh(
            "ip addr add 10.99.0.5/32 dev eth0 && ip link set eth0 up && ip link set lo up && \
             ip route add 169.254.1.1 dev eth0 && ip route add default via 169.254.1.1",
        )
        .unwrap();
    // The rogue pod sends to a known pod: dropped on the way in ("Unknown interface").
    let ok = rogue
        .within(|| {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::new(known.v4(), 80),
                std::time::Duration::from_millis(400),
            )
            .is_ok()
        })
        .unwrap();
    assert!(!ok, "an unknown cali interface carried traffic");
    // And the known pod cannot reach it either.
    let out = known
        .netns
        .run("busybox", ["ping", "-c1", "-W1", "10.99.0.5"])
        .unwrap();
    assert!(
        !out.status.success(),
        "traffic reached an unknown cali interface"
    );
}

/// An invalid policy written by another tool is skipped; every other policy stays enforced,
/// and the agent says so.
#[test]
fn a_malformed_policy_in_etcd_does_not_stop_the_others() {
    require!(root; "etcd", "go", "ip", "busybox", "nft");
    let lab = Lab::start(1, false, &[]);
    lab.namespace("default", &[]);
    let a = lab.pod(0, "default", "a");
    let b = lab.pod(0, "default", "b");
    lab.label_pod(&a, &[("app", "a")], "default", &[]);
    let rev = lab.label_pod(&b, &[("app", "b")], "default", &[]);
    lab.wait_applied(rev);
    let _s = [
        Servers::start(&a, &[80], &[]),
        Servers::start(&b, &[80], &[]),
    ];
    lab.apply(np(
        "default",
        "default.b-deny",
        json!({"selector": "app == 'b'", "types": ["Ingress"]}),
    ));
    // Broken JSON, a bad selector, a bad port: each skipped.
    lab.put_raw(
        "/calico/resources/v3/projectcalico.org/networkpolicies/default/broken-json",
        "{not json",
    );
    lab.put(&np(
        "default",
        "default.bad-selector",
        json!({"selector": "app ==", "ingress": [{"action": "Allow"}]}),
    ));
    lab.put(&np(
        "default",
        "default.bad-port",
        json!({"selector": "app == 'b'", "ingress": [{"action": "Allow", "protocol": "TCP",
               "destination": {"ports": ["nope nope"]}}]}),
    ));
    // Valid JSON with a valid selector, but Calico's validator refuses it (a port without
    // a protocol): it would open b's port 80 if it were enforced.
    lab.put(&np(
        "default",
        "default.port-without-protocol",
        json!({"selector": "app == 'b'", "ingress": [{"action": "Allow",
               "destination": {"ports": [80]}}]}),
    ));
    let rev = lab.put(&np(
        "default",
        "default.a-deny",
        json!({"selector": "app == 'a'", "types": ["Ingress"]}),
    ));
    lab.wait_applied(rev);
    assert_matrix(
        &lab,
        &[(&a, b.v4(), Tcp(80), false), (&b, a.v4(), Tcp(80), false)],
    );
    let skipped = lab.agents[0]
        .metric("calico_node_policy_skipped_objects", &[])
        .unwrap();
    assert_eq!(skipped, 4.0, "{}", lab.logs());
    assert!(lab.agents[0].log().contains("port-without-protocol"));
}

/// Enforcement stays while the agent is down (the table is the kernel's), and a new agent
/// replaces the table atomically with what the datastore says now.
#[test]
fn enforcement_survives_an_agent_restart_and_etcd_loss() {
    require!(root; "etcd", "go", "ip", "busybox", "nft");
    let mut lab = Lab::start(1, false, &[]);
    lab.namespace("default", &[]);
    let a = lab.pod(0, "default", "a");
    let b = lab.pod(0, "default", "b");
    lab.label_pod(&a, &[("app", "a")], "default", &[]);
    let rev = lab.label_pod(&b, &[("app", "b")], "default", &[]);
    lab.wait_applied(rev);
    let _s = [
        Servers::start(&a, &[80], &[]),
        Servers::start(&b, &[80], &[]),
    ];
    lab.apply(np(
        "default",
        "default.b-deny",
        json!({"selector": "app == 'b'", "types": ["Ingress"]}),
    ));
    assert_matrix(&lab, &[(&a, b.v4(), Tcp(80), false)]);

    // The agent killed: the rules stay.
    lab.agents[0].kill().unwrap();
    assert_matrix(
        &lab,
        &[(&a, b.v4(), Tcp(80), false), (&b, a.v4(), Tcp(80), true)],
    );
    // Junk in our table while the agent is down (an accept-all at the top of the forward
    // chain, a chain of someone else's): nothing left is trusted, the new agent's first
    // apply replaces the table whole.
    lab.c
        .node(0)
        .netns()
        .sh("nft insert rule inet calico filter-FORWARD accept && \
             nft add chain inet calico junk-chain")
        .unwrap();
    assert_matrix(&lab, &[(&a, b.v4(), Tcp(80), true)]);
    let rev = lab.put(&np(
        "default",
        "default.a-deny",
        json!({"selector": "app == 'a'", "types": ["Ingress"]}),
    ));
    lab.agents[0] = testkit::Agent::on_node_with(&lab.c, 0, &[("NODENAME", "node-1")]).unwrap();
    lab.wait_applied(rev);
    assert_matrix(
        &lab,
        &[(&a, b.v4(), Tcp(80), false), (&b, a.v4(), Tcp(80), false)],
    );
    let table = lab
        .c
        .node(0)
        .netns()
        .sh("nft list table inet calico")
        .unwrap();
    assert!(!table.contains("junk-chain"), "{table}");
    lab.agents[0].kill().unwrap();
    // A change while it is down, then a new agent: it applies the datastore's state.
    lab.delete("NetworkPolicy", "default", "default.a-deny");
    let rev = lab.delete("NetworkPolicy", "default", "default.b-deny");
    lab.agents[0] = testkit::Agent::on_node_with(&lab.c, 0, &[("NODENAME", "node-1")]).unwrap();
    lab.wait_applied(rev);
    assert_matrix(&lab, &[(&a, b.v4(), Tcp(80), true)]);

    // etcd stopped: what is enforced stays enforced.
    lab.apply(np(
        "default",
        "default.b-deny",
        json!({"selector": "app == 'b'", "types": ["Ingress"]}),
    ));
    {
        let _frozen = Frozen::new(lab.c.etcd.pid());
        assert_matrix(
            &lab,
            &[(&a, b.v4(), Tcp(80), false), (&b, a.v4(), Tcp(80), true)],
        );
    }
    let rev = lab.delete("NetworkPolicy", "default", "default.b-deny");
    lab.wait_applied(rev);
    assert_matrix(&lab, &[(&a, b.v4(), Tcp(80), true)]);
}

/// The endpoint status file appears once the endpoint's rules are in, with Calico's JSON,
/// and goes with the endpoint.
#[test]
fn endpoint_status_files_follow_programmed_endpoints() {
    require!(root; "etcd", "go", "ip", "busybox", "nft");
    let lab = Lab::start(1, false, &[]);
    let a = lab.pod(0, "default", "a");
    let dir = lab
        .c
        .host_path(0, std::path::Path::new("/var/run/calico/endpoint-status"))
        .unwrap();
    let found = eventually(policy_lab::WAIT, || {
        std::fs::read_dir(&dir).is_ok_and(|d| d.count() == 1)
    });
    assert!(found, "no status file in {}\n{}", dir.display(), lab.logs());
    let file = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap();
    let name = file.file_name().to_string_lossy().to_string();
    // Calico's name: orchestrator, workload and endpoint IDs path-escaped, space-separated.
    assert_eq!(name, "k8s default%2Fa eth0");
    let status: Value = serde_json::from_slice(&std::fs::read(file.path()).unwrap()).unwrap();
    assert_eq!(
        status["ipv4Nets"],
        json!([format!("{}/32", a.v4())]),
        "{status}"
    );
    assert!(
        status["ifaceName"]
            .as_str()
            .is_some_and(|i| i.starts_with("cali"))
    );
    // The endpoint goes (CNI DEL): so does its file.
    lab.c
        .runtime(0)
        .del(policy_lab::NET, &a.netns.path(), &a.opts())
        .unwrap()
        .unwrap();
    let gone = eventually(policy_lab::WAIT, || {
        std::fs::read_dir(&dir).is_ok_and(|d| d.count() == 0)
    });
    assert!(
        gone,
        "the status file outlived its endpoint\n{}",
        lab.logs()
    );
}

/// A process stopped (SIGSTOP) for the guard's life: etcd not answering.
struct Frozen(nix::unistd::Pid);

impl Frozen {
    fn new(pid: u32) -> Frozen {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// The Kubernetes documentation's NetworkPolicy example, converted as kube-controllers
/// does (`calico_k8s::netpol`) and written to etcd as `knp.default.<name>`.
#[test]
fn the_kubernetes_documentation_example_through_the_conversion() {
    require!(root; "etcd", "go", "ip", "busybox", "nft");
    let lab = Lab::start(2, false, &[]);
    lab.namespace("default", &[]);
    lab.namespace("myproject", &[("project", "myproject")]);
    lab.service_account("default", "default", &[]);
    lab.service_account("myproject", "default", &[]);
    let db = lab.pod(0, "default", "db");
    let frontend = lab.pod(1, "default", "frontend");
    let other = lab.pod(0, "default", "other");
    let mp = lab.pod(1, "myproject", "mp");
    lab.label_pod(&db, &[("role", "db")], "default", &[]);
    lab.label_pod(&frontend, &[("role", "frontend")], "default", &[]);
    lab.label_pod(&other, &[("role", "other")], "default", &[]);
    let rev = lab.label_pod(&mp, &[("role", "other")], "default", &[]);
    lab.wait_applied(rev);
    let _s: Vec<Servers> = [&db, &frontend, &other, &mp]
        .iter()
        .map(|p| Servers::start(p, &[80, 6379], &[]))
        .collect();
    let knp = |case: &str| -> Value {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/knp");
        let text = std::fs::read_to_string(dir.join(case).join("input.yaml")).unwrap();
        let k: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_norway::from_str(&text).unwrap();
        let conv = calico_k8s::netpol::k8s_network_policy_to_calico(&k);
        serde_json::to_value(&conv.policy).unwrap()
    };
    lab.apply(knp("docs-test-network-policy"));
    assert_matrix(
        &lab,
        &[
            (&frontend, db.v4(), Tcp(6379), true),
            (&mp, db.v4(), Tcp(6379), true),
            (&other, db.v4(), Tcp(6379), false),
            (&frontend, db.v4(), Tcp(80), false),
            // Egress only to 10.0.0.0/24:5978.
            (&db, frontend.v4(), Tcp(80), false),
            (&db, other.v4(), Icmp, false),
            // Other pods are not selected.
            (&other, frontend.v4(), Tcp(80), true),
        ],
    );
    // "Default deny all ingress traffic" in default: nothing reaches default's pods, myproject's
    // pod is untouched.
    lab.apply(knp("docs-default-deny-ingress"));
    assert_matrix(
        &lab,
        &[
            (&other, frontend.v4(), Tcp(80), false),
            (&mp, other.v4(), Tcp(80), false),
            (&frontend, mp.v4(), Tcp(80), true),
        ],
    );
    // "Allow all ingress traffic" next to it: allowed again (policies are unions).
    lab.apply(knp("docs-allow-all-ingress"));
    assert_matrix(
        &lab,
        &[
            (&other, frontend.v4(), Tcp(80), true),
            (&mp, other.v4(), Tcp(80), true),
        ],
    );
}

/// `DefaultEndpointToHostAction`: Felix's default drops what a workload sends to its own
/// host (after its egress policy); `Accept` lets it in.
#[test]
fn workload_to_host_follows_default_endpoint_to_host_action() {
    require!(root; "etcd", "go", "ip", "busybox", "nft");
    let lab = Lab::start(1, false, &[]);
    let a = lab.pod(0, "default", "a");
    let host = IpAddr::V4(lab.c.node(0).underlay_ip());
    let host_listener = Servers::on_node(lab.c.node(0).netns(), host, &[7070]);
    assert!(!probe(&a, host, Tcp(7070), false), "Drop is the default");
    let rev = lab.put(
        &json!({"kind": "FelixConfiguration", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "default"}, "spec": {"defaultEndpointToHostAction": "Accept"}}),
    );
    lab.wait_applied(rev);
    assert!(
        probe(&a, host, Tcp(7070), true),
        "Accept lets it in\n{}",
        lab.logs()
    );
    drop(host_listener);
}

/// Log rules: a packet matching a Log rule is counted by the kernel's log statement and then
/// goes on to the next rule (Log is not a verdict).
#[test]
fn a_log_rule_logs_and_lets_the_next_rule_decide() {
    require!(root; "etcd", "go", "ip", "busybox", "nft");
    let lab = Lab::start(1, false, &[]);
    lab.namespace("default", &[]);
    let a = lab.pod(0, "default", "a");
    let b = lab.pod(0, "default", "b");
    lab.label_pod(&a, &[("app", "a")], "default", &[]);
    let rev = lab.label_pod(&b, &[("app", "b")], "default", &[]);
    lab.wait_applied(rev);
    let _s = [Servers::start(&b, &[80, 81], &[])];
    lab.apply(np(
        "default",
        "default.log-then-allow-80",
        json!({"selector": "app == 'b'", "ingress": [
            {"action": "Log", "protocol": "TCP"},
            {"action": "Allow", "protocol": "TCP", "destination": {"ports": [80]}}]}),
    ));
    assert_matrix(
        &lab,
        &[(&a, b.v4(), Tcp(80), true), (&a, b.v4(), Tcp(81), false)],
    );
    let table = lab
        .c
        .node(0)
        .netns()
        .sh("nft list table inet calico")
        .unwrap();
    assert!(
        table.contains("log prefix \"calico-packet"),
        "no log statement:\n{table}"
    );
}

/// The plugin's gate (`policy_setup_timeout_seconds`): ADD returns only once the agent has
/// the pod's rules in and its status file written.
#[test]
fn the_plugin_waits_until_the_agent_has_programmed_the_pod() {
    require!(root; "etcd", "go", "ip", "busybox", "nft");
    let lab = Lab::start(1, false, &[]);
    let mut conf = policy_lab::seed(false);
    conf["plugins"][0]["policy_setup_timeout_seconds"] = json!(10);
    lab.c.install(0, &conf).unwrap();
    let started = std::time::Instant::now();
    let _a = lab.pod(0, "default", "a");
    let took = started.elapsed();
    // Checked right after ADD returned, with no wait: the gate already waited.
    let dir = lab
        .c
        .host_path(0, std::path::Path::new("/var/run/calico/endpoint-status"))
        .unwrap();
    let file = dir.join("k8s default%2Fa eth0");
    let status: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let iface = status["ifaceName"].as_str().unwrap().to_string();
    let table = lab
        .c
        .node(0)
        .netns()
        .sh("nft list table inet calico")
        .unwrap();
    assert!(
        table.contains(&format!("filter-cali-tw-{iface}")),
        "no chain for {iface} when ADD returned:\n{table}"
    );
    assert!(
        took < std::time::Duration::from_secs(10),
        "ADD waited out the timeout ({took:?})"
    );
}

/// A compaction past the agent's watch forces a re-list; the changes made meanwhile are
/// applied (no gap). The agent is stopped (SIGSTOP) while enough is written to overflow
/// what etcd and the connection buffer for its watch (large values fill the HTTP/2 and TCP
/// windows, then more revisions than etcd's per-stream queue), then etcd compacts: etcd
/// must tell the resumed watch it is behind, and the agent must list again.
#[test]
fn a_compaction_forces_a_relist_without_a_gap() {
    require!(root; "etcd", "go", "ip", "busybox", "nft");
    let lab = Lab::start(1, false, &[]);
    lab.namespace("default", &[]);
    let a = lab.pod(0, "default", "a");
    let b = lab.pod(0, "default", "b");
    lab.label_pod(&a, &[("app", "a")], "default", &[]);
    let rev = lab.label_pod(&b, &[("app", "b")], "default", &[]);
    lab.wait_applied(rev);
    let _s = [
        Servers::start(&a, &[80], &[]),
        Servers::start(&b, &[80], &[]),
    ];
    let rev = {
        let _stopped = Frozen::new(lab.agents[0].pid());
        let big = "x".repeat(90_000);
        for i in 0..80 {
            lab.put(
                &json!({"kind": "GlobalNetworkSet", "apiVersion": "projectcalico.org/v3",
                "metadata": {"name": format!("filler-big-{i}"), "annotations": {"pad": big}},
                "spec": {"nets": ["192.0.2.0/24"]}}),
            );
        }
        for i in 0..200 {
            lab.put(
                &json!({"kind": "GlobalNetworkSet", "apiVersion": "projectcalico.org/v3",
                "metadata": {"name": format!("filler-{i}")}, "spec": {"nets": ["192.0.2.0/24"]}}),
            );
        }
        let rev = lab.put(&np(
            "default",
            "default.b-deny",
            json!({"selector": "app == 'b'", "types": ["Ingress"]}),
        ));
        lab.c.ctl().run(&["compact", &rev.to_string()]).unwrap();
        rev
    };
    lab.wait_applied(rev);
    assert_matrix(&lab, &[(&a, b.v4(), Tcp(80), false)]);
    assert!(
        lab.agents[0].log().contains("listing again"),
        "no re-list after the compaction:\n{}",
        lab.logs()
    );
}

/// `natOutgoing` (the default pool asks for it): what a pod sends outside every pool leaves
/// with the node's address; pod to pod keeps the pod's.
#[test]
fn nat_outgoing_masquerades_only_traffic_leaving_the_pools() {
    require!(root; "etcd", "go", "ip", "busybox", "nft");
    let lab = Lab::start(2, false, &[]);
    let a = lab.pod(0, "default", "a");
    let b = lab.pod(1, "default", "b");
    // Outside the cluster: etcd's namespace on the underlay.
    let outside = std::net::SocketAddr::new(std::net::IpAddr::from([10, 10, 0, 174]), 7171);
    let rec = policy_lab::PeerRecorder::start(&lab.c.etcd_ns, outside);
    assert!(probe(&a, outside.ip(), Tcp(7171), true), "{}", lab.logs());
    let node_ip = IpAddr::V4(lab.c.node(0).underlay_ip());
    assert_eq!(rec.peers.lock().unwrap()[0].ip(), node_ip);
    // Pod to pod across nodes: no masquerade.
    let peer = policy_lab::PeerRecorder::start(&b.netns, std::net::SocketAddr::new(b.v4(), 7272));
    assert!(probe(&a, b.v4(), Tcp(7272), true));
    assert_eq!(peer.peers.lock().unwrap()[0].ip(), a.v4());
}

/// Policy applies to hostPort traffic after portmap's DNAT (Calico's order), and neither an
/// iptables (nf_tables) FORWARD accept nor kube-proxy's nftables table (an accepting forward
/// chain at -110) opens what it denies.
#[test]
fn policy_applies_to_host_ports_beside_portmap_iptables_and_kube_proxys_nftables() {
    require!(root; "etcd", "go", "ip", "busybox", "nft", "iptables");
    let lab = Lab::start(2, false, &[]);
    lab.namespace("default", &[]);
    let web = lab.pod_with_ports(
        0,
        "default",
        "web",
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    let client = lab.pod(1, "default", "client");
    let other = lab.pod(1, "default", "other");
    lab.label_pod(&web, &[("app", "web")], "default", &[]);
    lab.label_pod(&client, &[("app", "client")], "default", &[]);
    let rev = lab.label_pod(&other, &[("app", "other")], "default", &[]);
    lab.wait_applied(rev);
    let _s = Servers::start(&web, &[80], &[]);
    let host0 = IpAddr::V4(lab.c.node(0).underlay_ip());
    lab.c
        .node(0)
        .netns()
        .sh("iptables -A FORWARD -j ACCEPT")
        .unwrap();
    // kube-proxy's nftables mode: its own table with a filter chain before ours (-110)
    // that accepts; an accept ends only its own chain, so ours still decides.
    lab.c
        .node(0)
        .netns()
        .sh("nft add table ip kube-proxy && \
             nft add chain ip kube-proxy filter-forward '{ type filter hook forward priority -110; policy accept; }' && \
             nft add rule ip kube-proxy filter-forward accept")
        .unwrap();
    assert_matrix(
        &lab,
        &[
            (&client, host0, Tcp(8080), true),
            (&other, host0, Tcp(8080), true),
        ],
    );
    // Only the client pod may reach web. A pod on another node reaching the hostPort is
    // masqueraded by its own node (natOutgoing: the node address is outside the pools), so
    // web's policy sees node-2's address, as in Calico.
    lab.apply(np(
        "default",
        "default.web-from-client",
        json!({"selector": "app == 'web'", "ingress": [{"action": "Allow", "protocol": "TCP",
               "source": {"selector": "app == 'client'"}, "destination": {"ports": [80]}}]}),
    ));
    assert_matrix(
        &lab,
        &[
            (&client, web.v4(), Tcp(80), true),
            (&other, web.v4(), Tcp(80), false),
            (&client, host0, Tcp(8080), false),
            (&other, host0, Tcp(8080), false),
        ],
    );
    // Allowing node-2's address opens the hostPort (after portmap's DNAT) to its pods.
    let node2 = format!("{}/32", lab.c.node(1).underlay_ip());
    lab.apply(np(
        "default",
        "default.web-from-client",
        json!({"selector": "app == 'web'", "ingress": [
            {"action": "Allow", "protocol": "TCP", "source": {"selector": "app == 'client'"},
             "destination": {"ports": [80]}},
            {"action": "Allow", "protocol": "TCP", "source": {"nets": [node2]},
             "destination": {"ports": [80]}}]}),
    ));
    assert_matrix(
        &lab,
        &[
            (&other, host0, Tcp(8080), true),
            (&other, web.v4(), Tcp(80), false),
        ],
    );
}
