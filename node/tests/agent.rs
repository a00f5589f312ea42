//! `calico-node run` with the real plugins, driven through libcni on a simulated node,
//! against the seed's mutual-TLS etcd: the plugins use the agent (its metrics say so), a
//! plugin whose etcd settings differ dials etcd itself, the agent killed under a call, a
//! stale socket replaced, a caller that is not root refused, SIGTERM finishing the work
//! accepted, and no plugin call leaving a process behind, with and without the agent.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;
use testkit::{Agent, CallOpts, Cluster, NetNs, eventually, require};

const NET: &str = "k8s-pod-network";

fn cluster() -> Cluster {
    let c = Cluster::start(1, &[]).unwrap();
    // calico-ipam under another name, so calico runs it as a delegated IPAM plugin (it
    // does Calico IPAM in-process when the type is `calico-ipam`).
    c.cni_path
        .add(
            "calico-ipam-bin",
            &testkit::bins::built("calico-ipam").unwrap(),
        )
        .unwrap();
    c.add_pool("default-ipv4-ippool", "10.244.0.0/16", Some(26))
        .unwrap();
    c
}

/// The seed chain (calico + portmap), IPv4 only.
fn seed() -> Value {
    let mut list = testkit::cluster::seed_without_kubernetes().unwrap();
    list["cniVersion"] = json!("1.0.0");
    list["plugins"][0]["ipam"]["assign_ipv6"] = json!("false");
    list
}

/// calico alone with the calico-ipam binary as a delegated IPAM plugin.
fn with_calico_ipam_binary() -> Value {
    let mut list = seed();
    list["name"] = json!("calico-ipam-binary");
    list["plugins"][0]["ipam"]["type"] = json!("calico-ipam-bin");
    list["plugins"] = json!([list["plugins"][0].clone()]);
    list
}

fn pod(id: &str, mappings: Value) -> CallOpts {
    CallOpts {
        cni_args: Some(format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={id}"
        )),
        cap_args: (!mappings.is_null()).then(|| json!({ "portMappings": mappings })),
        container_id: Some(id.to_string()),
        ..CallOpts::default()
    }
}

fn udp_mapping() -> Value {
    json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
           {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
}

fn metric(agent: &Agent, name: &str, labels: &[&str]) -> f64 {
    agent.metric(name, labels).unwrap()
}

/// Waits (10 s at most) for a metric to reach `at_least`.
fn wait_metric(agent: &Agent, name: &str, labels: &[&str], at_least: f64) {
    assert!(
        eventually(Duration::from_secs(10), || metric(agent, name, labels)
            >= at_least),
        "{name}{labels:?} stayed below {at_least}:\n{}",
        agent.metrics().unwrap_or_default()
    );
}

/// Our plugin binaries, by (device, inode).
fn plugin_binaries() -> Vec<(u64, u64)> {
    ["calico", "calico-ipam", "portmap"]
        .iter()
        .map(|b| {
            let m = std::fs::metadata(testkit::bins::built(b).unwrap()).unwrap();
            (m.dev(), m.ino())
        })
        .collect()
}

/// Processes running one of our plugin binaries in the network namespace `netns` (where
/// the runtime on that node runs them; other tests' nodes have their own namespaces).
fn plugin_processes(netns: &Path) -> Vec<String> {
    let ours = plugin_binaries();
    let want = std::fs::metadata(netns).unwrap().ino();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == want)
                && std::fs::metadata(format!("/proc/{pid}/exe"))
                    .is_ok_and(|m| ours.contains(&(m.dev(), m.ino())))
        })
        .map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            )
        })
        .collect()
}

/// Asserts that no plugin process is left on node 0 after `what`.
fn nothing_left_running(c: &Cluster, what: &str) {
    let left = plugin_processes(&c.node(0).netns().path());
    assert!(left.is_empty(), "after {what}, still running: {left:?}");
}

/// Every call of every plugin (calico ADD/DEL, calico-ipam ADD/DEL, portmap ADD/DEL):
/// nothing started by it is running once the runtime has its answer.
fn every_plugin_call_ends_with_its_process(c: &Cluster, tag: &str) {
    let rt = c.runtime(0);
    c.install(0, &seed()).unwrap();
    c.install(0, &with_calico_ipam_binary()).unwrap();
    let a = NetNs::new("pa").unwrap();
    let id = format!("{tag}-a");
    rt.add(NET, &a.path(), &pod(&id, udp_mapping()))
        .unwrap()
        .unwrap();
    nothing_left_running(c, "calico and portmap ADD");
    rt.del(NET, &a.path(), &pod(&id, udp_mapping()))
        .unwrap()
        .unwrap();
    nothing_left_running(c, "calico and portmap DEL");
    let b = NetNs::new("pb").unwrap();
    let id = format!("{tag}-b");
    rt.add("calico-ipam-binary", &b.path(), &pod(&id, Value::Null))
        .unwrap()
        .unwrap();
    nothing_left_running(c, "calico-ipam ADD");
    rt.del("calico-ipam-binary", &b.path(), &pod(&id, Value::Null))
        .unwrap()
        .unwrap();
    nothing_left_running(c, "calico-ipam DEL");
}

#[test]
fn without_an_agent_no_plugin_call_leaves_a_process() {
    require!(root; "etcd", "go", "ip");
    let c = cluster();
    every_plugin_call_ends_with_its_process(&c, "alone");
    // Everything was done in the calls: the pods' interfaces are gone already.
    assert!(
        c.node(0)
            .sh("ip -o link show | grep cali || true")
            .unwrap()
            .trim()
            .is_empty()
    );
}

#[test]
fn plugins_use_the_agent_and_leave_no_process() {
    require!(root; "etcd", "go", "ip");
    let c = cluster();
    let agent = Agent::on_node(&c, 0).unwrap();
    every_plugin_call_ends_with_its_process(&c, "agent");
    let ok = ["service=\"etcd\"", "outcome=\"ok\""];
    // calico's ADD and DEL and calico-ipam's: every etcd request went through the agent.
    assert!(metric(&agent, "calico_node_requests_total", &ok) >= 4.0);
    assert_eq!(
        metric(
            &agent,
            "calico_node_requests_total",
            &["outcome=\"other_etcd\""]
        ),
        0.0
    );
    // portmap's ADD and DEL handed their sockets (and UDP flushes) over, calico's two DELs
    // their veths; the agent did the work.
    let netfilter = ["service=\"netfilter\"", "outcome=\"accepted\""];
    assert_eq!(
        metric(&agent, "calico_node_requests_total", &netfilter),
        2.0
    );
    let link = ["service=\"link\"", "outcome=\"accepted\""];
    assert_eq!(metric(&agent, "calico_node_requests_total", &link), 2.0);
    wait_metric(
        &agent,
        "calico_node_deferred_work_total",
        &["kind=\"link\"", "outcome=\"deleted\""],
        2.0,
    );
    wait_metric(
        &agent,
        "calico_node_deferred_work_total",
        &["kind=\"netfilter\""],
        2.0,
    );
    assert!(
        c.node(0)
            .sh("ip -o link show | grep cali || true")
            .unwrap()
            .trim()
            .is_empty()
    );
    // The sockets are closed once the node is quiet.
    wait_metric(
        &agent,
        "calico_node_deferred_work_total",
        &["kind=\"close\""],
        1.0,
    );
    assert_eq!(
        metric(&agent, "calico_node_netfilter_sockets_held", &[]),
        0.0
    );
}

/// A copy of the node's TLS files at another path, with the seed conflist pointing there.
fn seed_with_tls_copy(c: &Cluster) -> Value {
    let copy = c.node(0).host_path("/etc/cni/net.d/other-tls").unwrap();
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["etcd-ca", "etcd-cert", "etcd-key"] {
        std::fs::copy(c.tls_dir(0).join(f), copy.join(f)).unwrap();
    }
    let mut list = seed();
    for (field, file) in [
        ("etcd_ca_cert_file", "etcd-ca"),
        ("etcd_cert_file", "etcd-cert"),
        ("etcd_key_file", "etcd-key"),
    ] {
        list["plugins"][0][field] = json!(format!("/etc/cni/net.d/other-tls/{file}"));
    }
    list
}

#[test]
fn a_plugin_whose_etcd_settings_differ_dials_etcd_itself() {
    require!(root; "etcd", "go", "ip");
    let c = cluster();
    let agent = Agent::on_node(&c, 0).unwrap();
    let rt = c.runtime(0);
    // The same files under other paths are the same settings: served.
    c.install(0, &seed_with_tls_copy(&c)).unwrap();
    let pod_ns = NetNs::new("same").unwrap();
    rt.add(NET, &pod_ns.path(), &pod("same", Value::Null))
        .unwrap()
        .unwrap();
    let served = metric(
        &agent,
        "calico_node_requests_total",
        &["service=\"etcd\"", "outcome=\"ok\""],
    );
    assert!(served >= 1.0);
    // Another endpoint list (the same etcd named twice) is other settings: the agent
    // declines and the plugin does the whole call over its own connection.
    let mut list = seed();
    list["plugins"][0]["etcd_endpoints"] =
        json!("https://10.10.0.174:2379,https://10.10.0.174:2379");
    c.install(0, &list).unwrap();
    let other = NetNs::new("other").unwrap();
    let result = rt
        .add(NET, &other.path(), &pod("other", Value::Null))
        .unwrap()
        .unwrap();
    assert_eq!(result["ips"].as_array().unwrap().len(), 1);
    assert_eq!(
        metric(
            &agent,
            "calico_node_requests_total",
            &["service=\"etcd\"", "outcome=\"other_etcd\""]
        ),
        1.0,
        "one refusal, then the call keeps to its own connection"
    );
    assert_eq!(
        metric(
            &agent,
            "calico_node_requests_total",
            &["service=\"etcd\"", "outcome=\"ok\""]
        ),
        served
    );
    rt.del(NET, &other.path(), &pod("other", Value::Null))
        .unwrap()
        .unwrap();
    c.install(0, &seed()).unwrap();
    rt.del(NET, &pod_ns.path(), &pod("same", Value::Null))
        .unwrap()
        .unwrap();
}

/// What a pod leaves on node 0 and in etcd: cali links, host routes to the pool, IPAM
/// handles and allocations, workload endpoints.
fn leftovers(c: &Cluster) -> (String, String, Vec<String>) {
    let node = c.node(0);
    let keys = c
        .etcd
        .get_prefix("/calico/")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.contains("/ipam/v2/handle/") || k.contains("workloadendpoints"))
        .collect();
    let allocated: Vec<String> = c
        .values("/calico/ipam/v2/assignment/")
        .unwrap()
        .into_iter()
        .filter(|(_, v)| {
            v["allocations"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| !x.is_null()))
        })
        .map(|(k, _)| k)
        .collect();
    (
        node.sh("ip -o link show | grep cali || true").unwrap(),
        node.sh("ip route show | grep 10.244 | grep -v blackhole || true")
            .unwrap(),
        [keys, allocated].concat(),
    )
}

/// Pauses a process (SIGSTOP) until dropped (SIGCONT).
struct Paused(u32);

impl Paused {
    fn new(pid: u32) -> Paused {
        signal(pid, nix::sys::signal::Signal::SIGSTOP);
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, sig).unwrap();
}

#[test]
fn the_agent_killed_under_a_call_then_restarted_over_its_stale_socket() {
    require!(root; "etcd", "go", "ip");
    let c = cluster();
    let mut agent = Agent::on_node(&c, 0).unwrap();
    c.install(0, &seed()).unwrap();
    let pod_ns = NetNs::new("kill").unwrap();
    let opts = pod("kill", udp_mapping());
    let outcome = std::thread::scope(|s| {
        // etcd stops answering, so the call's first request waits in the agent.
        let paused = Paused::new(c.etcd.pid());
        let call = s.spawn(|| c.runtime(0).add(NET, &pod_ns.path(), &opts).unwrap());
        wait_metric(
            &agent,
            "calico_node_requests_in_flight",
            &["service=\"etcd\""],
            1.0,
        );
        agent.kill().unwrap();
        drop(paused);
        call.join().unwrap()
    });
    let rt = c.runtime(0);
    match outcome {
        // The read whose answer was lost went again over the call's own connection.
        Ok(result) => {
            assert_eq!(result["ips"].as_array().unwrap().len(), 1, "{result}");
            rt.check(NET, &pod_ns.path(), &opts).unwrap().unwrap();
            rt.del(NET, &pod_ns.path(), &opts).unwrap().unwrap();
        }
        // Or it failed cleanly, rolled back.
        Err(e) => assert!(e.code.is_some(), "{e}"),
    }
    let nothing = (String::new(), String::new(), Vec::<String>::new());
    assert_eq!(leftovers(&c), nothing);
    nothing_left_running(&c, "the call the agent died under");

    // The crashed agent's socket file is still there; a new agent replaces it.
    let socket = agent.socket().to_path_buf();
    assert!(socket.exists(), "a killed agent cannot remove its socket");
    drop(agent);
    let agent = Agent::on_node(&c, 0).unwrap();
    assert!(
        agent.log().contains("replacing the stale socket"),
        "{}",
        agent.log()
    );
    let again = NetNs::new("again").unwrap();
    rt.add(NET, &again.path(), &pod("again", udp_mapping()))
        .unwrap()
        .unwrap();
    rt.del(NET, &again.path(), &pod("again", udp_mapping()))
        .unwrap()
        .unwrap();
    assert!(
        metric(
            &agent,
            "calico_node_requests_total",
            &["service=\"etcd\"", "outcome=\"ok\""]
        ) >= 2.0
    );
    wait_metric(
        &agent,
        "calico_node_deferred_work_total",
        &["kind=\"link\"", "outcome=\"deleted\""],
        1.0,
    );
    assert_eq!(leftovers(&c), nothing);
}

/// `calico-node health --live` on node 0 as `uid` (and group `uid`, no others), through
/// `setpriv` (the node's namespaces are joined first, as root).
fn health_as(c: &Cluster, uid: u32) -> std::process::Output {
    let mut cmd = c.node(0).command("setpriv").unwrap();
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(testkit::bins::built("calico-node").unwrap())
        .args(["health", "--live"])
        .env_remove("CALICO_NODE_SOCKET");
    cmd.output().unwrap()
}

#[test]
fn a_caller_that_is_not_root_is_refused() {
    require!(root; "etcd", "go", "ip", "setpriv");
    let c = cluster();
    let agent = Agent::on_node(&c, 0).unwrap();
    const NOBODY: u32 = 65534;
    let mode = std::fs::metadata(agent.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // The file's mode keeps others out.
    let out = health_as(&c, NOBODY);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("denied"),
        "{out:?}"
    );
    // Opened wider by mistake, the socket still serves root only.
    std::fs::set_permissions(agent.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = health_as(&c, NOBODY);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{out:?}"
    );
    assert_eq!(
        metric(
            &agent,
            "calico_node_connections_total",
            &["outcome=\"refused\""]
        ),
        1.0
    );
    assert!(health_as(&c, 0).status.success());
}

#[test]
fn health_answers_from_the_daemon_and_sigterm_finishes_the_work_taken() {
    require!(root; "etcd", "go", "ip");
    let c = cluster();
    let mut agent = Agent::on_node(&c, 0).unwrap();
    let probe = |what: &str| {
        c.node(0)
            .command(testkit::bins::built("calico-node").unwrap())
            .unwrap()
            .args(["health", what])
            .output()
            .unwrap()
    };
    assert!(probe("--live").status.success());
    // Ready once etcd has answered (the agent checks it at start).
    assert!(
        eventually(Duration::from_secs(10), || probe("--ready")
            .status
            .success()),
        "{:?}",
        probe("--ready")
    );
    c.install(0, &seed()).unwrap();
    let rt = c.runtime(0);
    let pod_ns = NetNs::new("term").unwrap();
    rt.add(NET, &pod_ns.path(), &pod("term", Value::Null))
        .unwrap()
        .unwrap();
    rt.del(NET, &pod_ns.path(), &pod("term", Value::Null))
        .unwrap()
        .unwrap();
    // The DEL handed the veth over; SIGTERM at once: the agent deletes it before exiting.
    let status = agent.stop().unwrap();
    assert!(status.success(), "{status:?}: {}", agent.log());
    assert!(
        pod_ns.sh("ip link show eth0").is_err(),
        "the veth handed over was deleted before the agent exited: {}",
        agent.log()
    );
    assert!(!agent.socket().exists(), "the socket is removed at exit");
    assert!(!probe("--live").status.success());
}

/// Bad-input finding #7 on the agent's side: a plugin (or anything root that speaks the
/// protocol) passing the agent's own network namespace with DeleteLink would have the
/// agent delete a node interface by index. The agent checks the descriptor it receives as
/// the plugins check `CNI_NETNS` (`netns::check_pod`): refused, and the interface stays.
#[test]
fn a_link_deletion_in_the_agents_own_namespace_is_refused() {
    use calico_agent_protocol::{Connection, Reply, Request};
    use std::os::fd::AsFd;
    require!(root; "etcd", "go", "ip");
    let c = cluster();
    let agent = Agent::on_node(&c, 0).unwrap();
    let node = c.node(0).netns();
    let victim = format!("v{}", &testkit::unique_name("x")[2..]);
    let victim = &victim[..victim.len().min(14)];
    node.sh(&format!(
        "ip link add {victim} type veth peer name {victim}p"
    ))
    .unwrap();
    let index: u32 = node
        .sh(&format!("ip -o link show {victim}"))
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let own = std::fs::File::open(node.path()).unwrap();
    let mut conn = Connection::open(agent.socket(), Duration::from_secs(5)).unwrap();
    let request = Request::DeleteLink {
        netns: node.path().display().to_string(),
        index,
        ifname: victim.to_string(),
    };
    let reply = conn
        .call(&request, &[own.as_fd()], Duration::from_secs(5))
        .unwrap();
    match reply {
        Reply::Rejected(why) => assert!(why.contains("own network namespace"), "{why}"),
        other => panic!("accepted a deletion in the agent's namespace: {other:?}"),
    }
    // A regular file is no namespace either.
    let file = tempfile::NamedTempFile::new().unwrap();
    let reply = conn
        .call(&request, &[file.as_file().as_fd()], Duration::from_secs(5))
        .unwrap();
    match reply {
        Reply::Rejected(why) => assert!(why.contains("not a network namespace"), "{why}"),
        other => panic!("accepted a deletion in a regular file: {other:?}"),
    }
    node.sh(&format!("ip link show {victim}")).unwrap();
    assert_eq!(
        metric(
            &agent,
            "calico_node_requests_total",
            &["outcome=\"rejected\""]
        ),
        2.0
    );
}

/// Bad-input finding #8's remaining gap: the agent's socket path comes from the runtime's
/// environment, so a socket there may be anyone's. One served by a user other than root
/// (nobody, at the node's default path) gets nothing from the plugins: they check the
/// listener (`SO_PEERCRED`) before sending a byte, then do their work alone.
#[test]
fn a_socket_served_by_another_user_gets_nothing_and_the_plugins_work_alone() {
    use std::io::{BufRead, BufReader};
    require!(root; "etcd", "go", "ip", "setpriv", "/usr/bin/python3");
    let c = cluster();
    c.install(0, &seed()).unwrap();
    let socket_dir = c.node(0).host_path("/run/calico").unwrap();
    std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Counts the connections and the bytes they bring until its stdin closes.
    let mut listener = c
        .node(0)
        .command("setpriv")
        .unwrap()
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            // Not root's pyenv shim, which nobody may read.
            "/usr/bin/python3",
            "-c",
        ])
        .arg(
            "import socket, sys, threading\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.bind(sys.argv[1]); s.listen(64)\n\
             print('listening', flush=True)\n\
             seen = [0, 0]\n\
             def serve():\n\
             \x20   while True:\n\
             \x20       c, _ = s.accept(); seen[0] += 1\n\
             \x20       while True:\n\
             \x20           d = c.recv(65536)\n\
             \x20           if not d: break\n\
             \x20           seen[1] += len(d)\n\
             \x20       c.close()\n\
             threading.Thread(target=serve, daemon=True).start()\n\
             sys.stdin.read()\n\
             print(seen[0], seen[1], flush=True)",
        )
        .arg(calico_agent_protocol::DEFAULT_SOCKET)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(listener.stdout.take().unwrap());
    let mut line = String::new();
    said.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    let rt = c.runtime(0);
    let pod_ns = NetNs::new("nobody").unwrap();
    let opts = pod("nobody", udp_mapping());
    let added = rt.add(NET, &pod_ns.path(), &opts).unwrap();
    let deleted = rt.del(NET, &pod_ns.path(), &opts).unwrap();
    // Done alone: the interface is gone when DEL returns.
    let eth0_left = pod_ns.sh("ip link show eth0").is_ok();
    drop(listener.stdin.take());
    line.clear();
    said.read_line(&mut line).unwrap();
    let _ = listener.wait();
    added.unwrap();
    deleted.unwrap();
    assert!(!eth0_left, "DEL deleted the pod's interface itself");
    let counts: Vec<u64> = line
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(counts[0] >= 1, "the plugins tried the socket: {line}");
    assert_eq!(counts[1], 0, "and sent it nothing: {line}");
}
