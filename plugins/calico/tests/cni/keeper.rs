//! The node's keeper of warm etcd connections (calico_datastore::keeper), as the plugin
//! starts and uses it: through libcni, against the cluster's mutual-TLS etcd.

use crate::common::{addresses, cluster, conflist, pod_args};
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};
use testkit::{NetNs, require};

/// Pids of keepers running in the network namespace at `netns`.
fn keepers_in(netns: &std::path::Path) -> Vec<u32> {
    let want = std::fs::metadata(netns).unwrap().ino();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmd.split(|b| *b == 0).next() == Some(b"calico-etcd-keeper".as_slice())
                && std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == want)
        })
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many calls of the log took their connection from the keeper, and how many dialled.
fn connections(log: &std::path::Path) -> (usize, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    (
        text.matches("etcd connection from the keeper").count(),
        text.matches("etcd connection made").count(),
    )
}

/// One node with the seed conflist at debug level (the log says where each call's etcd
/// connection came from), `etcd_keeper` set as given.
fn debug_cluster(keeper: Option<bool>) -> testkit::Cluster {
    let c = cluster(1);
    let mut list = conflist("1.0.0", json!({}));
    list["plugins"][0]["log_level"] = json!("debug");
    if let Some(k) = keeper {
        list["plugins"][0]["etcd_keeper"] = json!(k);
    }
    c.install(0, &list).unwrap();
    c
}

#[test]
fn calls_after_the_first_use_the_keeper_and_get_the_same_results() {
    require!(root; "etcd", "go", "ip");
    let c = debug_cluster(None);
    let rt = c.runtime(0);
    let netns = c.node(0).netns().path();
    assert!(keepers_in(&netns).is_empty());

    let first = NetNs::new("keeper-a").unwrap();
    let r = rt
        .add("k8s-pod-network", &first.path(), &pod_args("default", "a"))
        .unwrap()
        .unwrap();
    assert_eq!(addresses(&r).len(), 1, "{r}");
    assert_eq!(connections(&c.log_of(0)), (0, 1), "the first call dials");
    wait_for("a keeper", || keepers_in(&netns).len() == 1);

    // Every later call is served by it (it keeps connections ready for them), and the
    // results and records are what a direct connection gives.
    let pods: Vec<NetNs> = (0..4)
        .map(|i| NetNs::new(&format!("keeper-{i}")).unwrap())
        .collect();
    for (i, pod) in pods.iter().enumerate() {
        // Time for the keeper to make up its pool (at the lowest CPU priority).
        std::thread::sleep(Duration::from_millis(100));
        let opts = pod_args("default", &format!("p{i}"));
        let r = rt
            .add("k8s-pod-network", &pod.path(), &opts)
            .unwrap()
            .unwrap();
        assert!(addresses(&r)[0].starts_with("10.244."), "{r}");
        rt.check("k8s-pod-network", &pod.path(), &opts)
            .unwrap()
            .unwrap();
    }
    let weps = c
        .values("/calico/resources/v3/projectcalico.org/workloadendpoints/default/")
        .unwrap();
    assert_eq!(weps.len(), 5);
    for (i, pod) in pods.iter().enumerate() {
        rt.del(
            "k8s-pod-network",
            &pod.path(),
            &pod_args("default", &format!("p{i}")),
        )
        .unwrap()
        .unwrap();
    }
    rt.del("k8s-pod-network", &first.path(), &pod_args("default", "a"))
        .unwrap()
        .unwrap();
    let (served, dialled) = connections(&c.log_of(0));
    assert_eq!(served + dialled, 1 + 4 * 2 + 5, "every call connected once");
    // On a loaded machine the keeper may now and then have nothing ready (then the call
    // dials itself, as the first did): most calls must have been served all the same.
    assert!(
        served >= 9,
        "{served} of 13 calls after the first were served"
    );
    assert_eq!(
        keepers_in(&netns).len(),
        1,
        "one keeper per node and settings"
    );
    assert!(
        c.values("/calico/resources/v3/projectcalico.org/workloadendpoints/")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_keeper_serves_only_callers_that_could_read_the_key_themselves() {
    require!(root; "etcd", "go", "ip", "nsenter", "setpriv", "/usr/bin/python3");
    let c = cluster(1);
    c.install(0, &conflist("1.0.0", json!({}))).unwrap();
    let pod = NetNs::new("keeper-uid").unwrap();
    let rt = c.runtime(0);
    rt.add("k8s-pod-network", &pod.path(), &pod_args("default", "u"))
        .unwrap()
        .unwrap();
    let netns = c.node(0).netns().path();
    wait_for("a keeper", || keepers_in(&netns).len() == 1);
    let pid = keepers_in(&netns)[0];
    let unix = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap();
    let name = unix
        .split_whitespace()
        .find_map(|w| w.strip_prefix("@calico-etcd-keeper-"))
        .map(|h| format!("calico-etcd-keeper-{h}"))
        .expect("the keeper listens");
    // Asks for a connection (again while the keeper has none ready, b'n'), in the node's
    // network namespace and, if `node_files`, its mount namespace (its /etc/cni/net.d).
    let mount_ns = c.node(0).mount_ns_path();
    let ask = |node_files: bool, user: &[&str]| -> String {
        let script = format!(
            "import socket,time\n\
             for _ in range(50):\n\
             \x20   s=socket.socket(socket.AF_UNIX)\n\
             \x20   s.connect('\\0{name}')\n\
             \x20   s.settimeout(2)\n\
             \x20   got=s.recv(1)\n\
             \x20   if got != b'n': break\n\
             \x20   time.sleep(0.1)\n\
             print(repr(got))"
        );
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(node_files.then(|| format!("--mount={}", mount_ns.display())))
            .args(user)
            .args(["/usr/bin/python3", "-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    assert_eq!(
        ask(true, &nobody),
        "b''",
        "another user is turned away without a word"
    );
    assert_eq!(
        ask(false, &[]),
        "b''",
        "root in a mount namespace where the key's path is another file (or none) too"
    );
    assert_eq!(
        ask(true, &[]),
        "b'k'",
        "root seeing the same key file is served"
    );
    rt.del("k8s-pod-network", &pod.path(), &pod_args("default", "u"))
        .unwrap()
        .unwrap();
}

#[test]
fn the_keeper_leaves_when_etcd_goes_and_calls_still_fail_clearly() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.install(0, &conflist("1.0.0", json!({}))).unwrap();
    let rt = c.runtime(0);
    let pod = NetNs::new("keeper-gone").unwrap();
    rt.add("k8s-pod-network", &pod.path(), &pod_args("default", "g"))
        .unwrap()
        .unwrap();
    let netns = c.node(0).netns().path();
    wait_for("a keeper", || keepers_in(&netns).len() == 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.etcd.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Its connections close, no new one can be made: it exits.
    wait_for("the keeper to exit", || keepers_in(&netns).is_empty());
    let e = rt
        .del("k8s-pod-network", &pod.path(), &pod_args("default", "g"))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(11), "{e}");
    assert!(e.msg.contains("10.10.0.174:2379"), "{e}");
}

#[test]
fn etcd_keeper_false_dials_every_call_and_starts_none() {
    require!(root; "etcd", "go", "ip");
    let c = debug_cluster(Some(false));
    let rt = c.runtime(0);
    let pod = NetNs::new("keeper-off").unwrap();
    let opts = pod_args("default", "off");
    rt.add("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap();
    // A keeper would have been started during the call (spawn returns after its exec).
    assert!(keepers_in(&c.node(0).netns().path()).is_empty());
    rt.del("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap();
    assert_eq!(connections(&c.log_of(0)), (0, 2));
    assert!(keepers_in(&c.node(0).netns().path()).is_empty());
}

#[test]
fn a_squatter_on_the_keepers_name_gets_nothing() {
    require!(root; "etcd", "go", "ip", "nsenter", "/usr/bin/python3");
    let c = debug_cluster(None);
    let rt = c.runtime(0);
    let netns = c.node(0).netns().path();
    let first = NetNs::new("squat-a").unwrap();
    rt.add("k8s-pod-network", &first.path(), &pod_args("default", "a"))
        .unwrap()
        .unwrap();
    wait_for("a keeper", || keepers_in(&netns).len() == 1);
    let pid = keepers_in(&netns)[0];
    let unix = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap();
    let name = unix
        .split_whitespace()
        .find_map(|w| w.strip_prefix('@'))
        .filter(|n| n.starts_with("calico-etcd-keeper-"))
        .unwrap()
        .to_string();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Not the process vanishing but the name being free: a dying process is gone from
    // /proc's listing before the kernel has closed its socket.
    let bound = format!("@{name}");
    wait_for("the keeper's name to be released", || {
        !c.node(0)
            .sh("cat /proc/net/unix")
            .unwrap_or_default()
            .contains(&bound)
    });
    // Another program (root, but not ours) takes the name and answers as a keeper would.
    let script = format!(
        "import socket\n\
         s=socket.socket(socket.AF_UNIX)\n\
         s.bind('\\0{name}')\n\
         s.listen(8)\n\
         print('ready', flush=True)\n\
         c,_=s.accept()\n\
         total=0\n\
         try:\n\
         \x20   c.sendall(b'k')\n\
         \x20   c.settimeout(2)\n\
         \x20   while True:\n\
         \x20       d=c.recv(4096)\n\
         \x20       if not d: break\n\
         \x20       total+=len(d)\n\
         except Exception: pass\n\
         print('got', total, flush=True)\n"
    );
    let mut squatter = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["/usr/bin/python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(squatter.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    let second = NetNs::new("squat-b").unwrap();
    let r = rt.add("k8s-pod-network", &second.path(), &pod_args("default", "b"));
    // The squatter reports once the caller has hung up on it.
    let mut got = String::new();
    std::io::BufRead::read_line(&mut out, &mut got).unwrap();
    let _ = squatter.kill();
    let _ = squatter.wait();
    let r = r.unwrap().unwrap();
    assert_eq!(addresses(&r).len(), 1, "{r}");
    assert_eq!(got.trim(), "got 0", "the squatter must not see a byte");
    assert_eq!(
        connections(&c.log_of(0)),
        (0, 2),
        "both calls dialled etcd themselves"
    );
    for (pod, name) in [(&first, "a"), (&second, "b")] {
        rt.del("k8s-pod-network", &pod.path(), &pod_args("default", name))
            .unwrap()
            .unwrap();
    }
}
