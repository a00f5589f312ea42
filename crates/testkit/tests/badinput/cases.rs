//! The rows: every reproduction of /work/shared/reference/bad-input-findings.md (defects #1 to
//! #17, tagged), then the classes the findings list under "What held up well", so that they
//! keep behaving. Expected codes are those of the fixes in the issue 12 plan.

use serde_json::{Value, json};

use crate::runner::{Bed, Ctx, Plugin, Row, Verb, affinity_key, block_key, merge, one_object, row};
use testkit::limits::Outcome;

use Plugin::{Calico, Calicoctl, Ipam, Portmap};
use Verb::{Add, Check, Del, Status};

const POOLS: &str = "/calico/resources/v3/projectcalico.org/ippools/";
const HANDLES: &str = "/calico/ipam/v2/handle/";
const WEPS: &str = "/calico/resources/v3/projectcalico.org/workloadendpoints/";

/// Every row of the table.
pub fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    rows.extend(defects());
    rows.extend(stdin_rows());
    rows.extend(config_rows());
    rows.extend(env_rows());
    rows.extend(portmap_rows());
    rows.extend(datastore_rows());
    rows.extend(calicoctl_rows());
    rows
}

fn ctl(args: &[&str]) -> Verb {
    Verb::Ctl(args.iter().map(|a| (*a).to_string()).collect())
}

/// An IPPool resource as stored.
fn pool(name: &str, cidr: &str, extra: Value) -> String {
    let mut spec = json!({"cidr": cidr, "ipipMode": "Never", "vxlanMode": "Never"});
    merge(&mut spec, &extra);
    json!({"kind": "IPPool", "apiVersion": "projectcalico.org/v3",
           "metadata": {"name": name}, "spec": spec})
    .to_string()
}

/// A block of the node: `size` ordinals, the given allocations and free list.
fn block(cidr: &str, allocations: Value, unallocated: Value, attributes: Value) -> String {
    json!({"cidr": cidr, "affinity": format!("host:{}", crate::runner::NODE),
           "allocations": allocations, "unallocated": unallocated, "attributes": attributes,
           "deleted": false})
    .to_string()
}

/// CNI_ARGS of a Kubernetes pod: with `policy.type: k8s` the plugin reads the pod (and so
/// the kubeconfig) only for these (mirrors `k8s.go` `CmdAddK8s`' orchestrator check).
const K8S_POD: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p";

const CONFIRMED: &str = r#"{"state":"confirmed","deleted":false}"#;

/// The addresses of an ADD's result.
fn result_ips(out: &Outcome) -> Vec<std::net::IpAddr> {
    one_object(&out.stdout)
        .map(|v| testkit::result_ips(&v))
        .unwrap_or_default()
}

fn in_pool(_: &Bed, _: &Ctx, out: &Outcome) -> Result<(), String> {
    let pool: ipnet::IpNet = crate::runner::POOL.parse().unwrap();
    let ips = result_ips(out);
    if ips.is_empty() || ips.iter().any(|ip| !pool.contains(ip)) {
        return Err(format!("addresses {ips:?} are not inside {pool}"));
    }
    Ok(())
}

/// After a repeated ADD: one address held, not two.
fn one_allocation(bed: &Bed, _: &Ctx, _: &Outcome) -> Result<(), String> {
    let held: usize = bed
        .cluster
        .etcd
        .get_prefix("/calico/ipam/v2/assignment/")
        .map_err(|e| e.to_string())?
        .iter()
        .filter_map(|(_, v)| serde_json::from_str::<Value>(v).ok())
        .map(|b| {
            b["allocations"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|x| !x.is_null()).count())
        })
        .sum();
    if held == 1 {
        Ok(())
    } else {
        Err(format!("{held} addresses held after a repeated ADD"))
    }
}

fn small_stdout(_: &Bed, _: &Ctx, out: &Outcome) -> Result<(), String> {
    if out.stdout.len() > 16 << 10 {
        return Err(format!("{} bytes on stdout", out.stdout.len()));
    }
    Ok(())
}

fn few_pids(_: &Bed, _: &Ctx, out: &Outcome) -> Result<(), String> {
    if out.peak_pids > 3 || out.hit_pids_limit {
        return Err(format!("{} tasks: it delegated to itself", out.peak_pids));
    }
    Ok(())
}

/// Overwrites every key under `prefix` with text that is not JSON.
fn corrupt(bed: &Bed, prefix: &str) -> anyhow::Result<()> {
    for (k, _) in bed.cluster.etcd.get_prefix(prefix)? {
        bed.cluster.etcd.put(&k, "{not json")?;
    }
    Ok(())
}

fn dummy_eth9(bed: &Bed, _: &Ctx) -> anyhow::Result<()> {
    bed.node()
        .sh("ip link add eth9 type veth peer name eth9p")
        .map(drop)
}

fn remove_eth9(bed: &Bed, _: &Ctx) -> anyhow::Result<()> {
    bed.node()
        .sh("ip link del eth9 2>/dev/null; true")
        .map(drop)
}

/// Runs portmap `verb` for another container (`holder-<CID>`) that maps host port 50299, so
/// that the row's ADD meets a port already taken.
fn portmap_holder(bed: &Bed, ctx: &Ctx, verb: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let conf = json!({
        "cniVersion": "1.0.0", "name": "badnet", "type": "portmap", "snat": true,
        "runtimeConfig": {"portMappings": [{"hostPort": 50299, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": {"cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": ctx.pod.path()}],
            "ips": [{"address": "10.244.200.6/32", "interface": 0}]}
    });
    let mut cmd = bed.node().command(testkit::bins::built("portmap")?)?;
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", format!("holder-{}", ctx.cid))
        .env("CNI_NETNS", ctx.pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bed.cluster.cni_path.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "portmap {verb} of the holder: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

/// Refuses the node's connections to etcd (a TCP reset), as if etcd were down, with a table
/// of its own that `unblock_etcd` deletes (so nothing else of the node's rules changes).
fn block_etcd(bed: &Bed, _: &Ctx) -> anyhow::Result<()> {
    bed.node()
        .sh(&format!("nft add table inet badinput_block; \
             nft add chain inet badinput_block out '{{ type filter hook output priority 0; }}'; \
             nft add rule inet badinput_block out ip daddr {ip} tcp dport {port} reject with tcp reset",
             ip = testkit::cluster::ETCD_IP, port = testkit::cluster::ETCD_PORT))
        .map(drop)
}

fn unblock_etcd(bed: &Bed, _: &Ctx) -> anyhow::Result<()> {
    bed.node()
        .sh("nft delete table inet badinput_block 2>/dev/null; true")
        .map(drop)
}

fn stop_etcd(bed: &Bed, _: &Ctx) -> anyhow::Result<()> {
    signal_etcd(bed, nix::sys::signal::Signal::SIGSTOP)
}

fn cont_etcd(bed: &Bed, _: &Ctx) -> anyhow::Result<()> {
    signal_etcd(bed, nix::sys::signal::Signal::SIGCONT)
}

fn signal_etcd(bed: &Bed, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(bed.cluster.etcd.pid())?);
    nix::sys::signal::kill(pid, sig)?;
    Ok(())
}

/// `n` port mappings from 50000 up.
fn mappings(n: u16) -> Value {
    (0..n)
        .map(|i| json!({"hostPort": 50000 + u32::from(i), "containerPort": 80, "protocol": "tcp"}))
        .collect()
}

/// Rows reproducing each defect of the findings (`#n`).
fn defects() -> Vec<Row> {
    let deep = |sel: String| pool("deep", "198.41.0.0/24", json!({"nodeSelector": sel}));
    let deep_parens = deep(format!("{}all(){}", "(".repeat(10_000), ")".repeat(10_000)));
    let deep_nots = deep(format!("{}all()", "!".repeat(10_000)));
    let deep_key = format!("{POOLS}deep");
    let script_empty_ips = "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && \
        echo '{\"cniVersion\":\"1.0.0\",\"ips\":[]}'\nexit 0\n";
    let script_error_exit0 = "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && \
        echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"no\"}'\nexit 0\n";
    let script_chatty = "#!/bin/sh\nhead -c 200000 /dev/zero >&2\ncat >/dev/null\n\
        [ \"$CNI_COMMAND\" = ADD ] && \
        echo '{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"203.0.113.9/32\"}]}'\nexit 0\n";
    let delegate_path = "{TMP}/plug:{BIN}";
    vec![
        // #1: large mapping sets work, and DEL (run after every successful ADD) finishes.
        row("portmap ADD with 300 mappings", Portmap, Add)
            .defect("#1")
            .edit(|mut c| {
                c["runtimeConfig"]["portMappings"] = mappings(300);
                c
            })
            .within_ms(3000),
        row("portmap ADD with 2000 mappings", Portmap, Add)
            .defect("#1")
            .edit(|mut c| {
                c["runtimeConfig"]["portMappings"] = mappings(2000);
                c
            })
            .within_ms(5000),
        // A failed large ADD (the 300th port is held by another container) leaves nothing.
        row("portmap ADD of 300 mappings, the last one taken", Portmap, Add)
            .defect("#1")
            .edit(|mut c| {
                c["runtimeConfig"]["portMappings"] = mappings(300);
                c
            })
            .setup(|bed, ctx| portmap_holder(bed, ctx, "ADD"))
            .teardown(|bed, ctx| portmap_holder(bed, ctx, "DEL"))
            .code(7)
            .msg("50299")
            .del_after_failure()
            .within_ms(3000),
        // #2: a deep nodeSelector anywhere in etcd.
        // The deep pool is unusable, not a match for every node: the address comes from the
        // node's own pool (a fix reading the selector as `all()` fails `in_pool`).
        row("deep (((…))) pool in etcd: calico ADD", Calico, Add)
            .defect("#2")
            .seed(&deep_key, deep_parens.clone())
            .check(in_pool),
        row("deep !!!… pool in etcd: calico ADD", Calico, Add)
            .defect("#2")
            .seed(&deep_key, deep_nots)
            .check(in_pool),
        row("deep pool in etcd: calico DEL after ADD", Calico, Del)
            .defect("#2")
            .add_first()
            .seed(&deep_key, deep_parens.clone()),
        row("deep pool in etcd: calico-ipam ADD", Ipam, Add)
            .defect("#2")
            .seed(&deep_key, deep_parens.clone())
            .check(in_pool),
        row("calicoctl apply of a deep pool is refused", Calicoctl, ctl(&["apply", "-f", "{TMP}/deep.json"]))
            .defect("#2")
            .file("deep.json", deep_parens)
            .exit(1)
            .msg("selector"),
        // Found by the selector property (tests/props): a non-ASCII character after a key.
        row("pool nodeSelector with a non-ASCII character: calico ADD", Calico, Add)
            .defect("selector-utf8")
            .seed(
                &format!("{POOLS}utf"),
                pool("utf", "198.42.0.0/24", json!({"nodeSelector": "a\u{800}"})),
            )
            .check(in_pool),
        // #3: rule injection through externalSetMarkChain, and control characters in conditions.
        row("portmap externalSetMarkChain with a newline", Portmap, Add)
            .defect("#3")
            .patch(json!({"backend": "iptables", "externalSetMarkChain":
                "ACCEPT\n-I OUTPUT 1 -p tcp --dport 9 -m comment --comment X -j DNAT --to-destination 127.0.0.1:1"}))
            .code(7)
            .msg("externalSetMarkChain"),
        row("portmap conditionsV4 with a newline", Portmap, Add)
            .defect("#3")
            .patch(json!({"backend": "iptables", "conditionsV4": ["-s 1.2.3.4\n-A OUTPUT -j ACCEPT"]}))
            .code(7)
            .msg("conditionsV4"),
        // #4: the nodename file named in the config is missing (nodename_file_optional false).
        row("nodename_file missing", Calico, Add)
            .defect("#4")
            .patch(json!({"nodename_file": "/nonexistent"}))
            .code(11),
        // #5: a delegated IPAM that returns no address.
        row("delegate returns ips []", Calico, Add)
            .defect("#5")
            .patch(json!({"ipam": {"type": "host-local"}}))
            .env("CNI_PATH", delegate_path)
            .script("plug/host-local", script_empty_ips)
            // "IPAM plugin returned missing IP config": code 105, our delegation code (Calico
            // reports it as 999; README "Differences from Calico", error codes).
            .code(105),
        row("delegate prints an error with exit 0", Calico, Add)
            .defect("#5")
            .patch(json!({"ipam": {"type": "host-local"}}))
            .env("CNI_PATH", delegate_path)
            .script("plug/host-local", script_error_exit0)
            // The delegate's own error, passed on as it printed it.
            .code(11),
        // #6: a delegate that writes 200 KB before reading a 300 KB config.
        row("delegate writes before it reads", Calico, Add)
            .defect("#6")
            .edit(|mut c| {
                c["ipam"] = json!({"type": "host-local"});
                c["junk"] = json!("j".repeat(300_000));
                c
            })
            .env("CNI_PATH", delegate_path)
            .script("plug/host-local", script_chatty)
            .within_ms(3000),
        // #7: CNI_NETNS naming the caller's own namespace.
        // eth9, not eth0: the node's uplink is eth0, and a plugin that took the host's
        // namespace for the pod's would move or delete it.
        row("ADD with CNI_NETNS=/proc/self/ns/net", Calico, Add)
            .defect("#7")
            .env("CNI_NETNS", "/proc/self/ns/net")
            .env("CNI_IFNAME", "eth9")
            .setup(dummy_eth9)
            .teardown(remove_eth9)
            .code(4)
            .msg("CNI_NETNS"),
        row("DEL with CNI_NETNS=/proc/self/ns/net keeps the node's eth9", Calico, Del)
            .defect("#7")
            .env("CNI_NETNS", "/proc/self/ns/net")
            .env("CNI_IFNAME", "eth9")
            .setup(dummy_eth9)
            .teardown(remove_eth9)
            .code(4),
        // #8: the old helper-mode variables in a runtime's environment change nothing.
        row("helper variables on ADD are ignored", Calico, Add)
            .defect("#8")
            .env("CALICO_DATAPLANE_REAP_NETNS", "{NETNS}")
            .env("CALICO_DATAPLANE_REAP_IFNAME", "eth0")
            .env("CALICO_DATAPLANE_REAP_HOST_IFNAME", "x")
            .env("CALICO_ETCD_KEEPER", "1"),
        row("CALICO_NETFILTER_LINGER on portmap ADD is ignored", Portmap, Add)
            .defect("#8")
            .env("CALICO_NETFILTER_LINGER", "1"),
        // #9: files named in the config that are no regular files.
        row("etcd_ca_cert_file is /dev/zero", Calico, Add)
            .defect("#9")
            .patch(json!({"etcd_ca_cert_file": "/dev/zero"}))
            .codes(&[7, 102])
            .within_ms(1000),
        row("etcd_cert_file is a FIFO", Calico, Add)
            .defect("#9")
            .patch(json!({"etcd_cert_file": "{TMP}/fifo"}))
            .codes(&[7, 102])
            .within_ms(1000),
        row("etcd_key_file is /dev/zero", Calico, Add)
            .defect("#9")
            .patch(json!({"etcd_key_file": "/dev/zero"}))
            .codes(&[7, 102])
            .within_ms(1000),
        // Already refused before the fix (reading a directory fails at once): a guard.
        row("etcd_ca_cert_file is a directory", Calico, Add)
            .patch(json!({"etcd_ca_cert_file": "{TMP}/dir"}))
            .codes(&[7, 102])
            .within_ms(1000),
        row("calico-ipam: etcd_ca_cert_file is a FIFO", Ipam, Add)
            .defect("#9")
            .patch(json!({"etcd_ca_cert_file": "{TMP}/fifo"}))
            .codes(&[7, 102])
            .within_ms(1000),
        row("nodename_file is /dev/zero", Calico, Add)
            .defect("#9")
            .patch(json!({"nodename_file": "/dev/zero"}))
            .codes(&[7, 11, 102])
            .within_ms(1000),
        row("nodename_file is a FIFO", Calico, Add)
            .defect("#9")
            .patch(json!({"nodename_file": "{TMP}/fifo"}))
            .codes(&[7, 11, 102])
            .within_ms(1000),
        row("kubeconfig is /dev/zero", Calico, Add)
            .defect("#9")
            .patch(json!({"policy": {"type": "k8s"}, "kubernetes": {"kubeconfig": "/dev/zero"}}))
            // A Kubernetes pod (orchestrator k8s): what makes the plugin read the kubeconfig.
            .env("CNI_ARGS", K8S_POD)
            .codes(&[7, 102])
            .within_ms(1000),
        row("kubeconfig is a FIFO", Calico, Add)
            .defect("#9")
            .patch(json!({"policy": {"type": "k8s"}, "kubernetes": {"kubeconfig": "{TMP}/fifo"}}))
            // A Kubernetes pod (orchestrator k8s): what makes the plugin read the kubeconfig.
            .env("CNI_ARGS", K8S_POD)
            .codes(&[7, 102])
            .within_ms(1000),
        row("calicoctl -f /dev/zero", Calicoctl, ctl(&["apply", "-f", "/dev/zero"]))
            .defect("#9")
            .exit(1)
            .msg("/dev/zero")
            .within_ms(1000),
        row("calicoctl -f FIFO", Calicoctl, ctl(&["apply", "-f", "{TMP}/fifo"]))
            .defect("#9")
            .exit(1)
            .msg("fifo")
            .within_ms(1000),
        row("calicoctl --config /dev/zero", Calicoctl, ctl(&["get", "ippools", "--config", "/dev/zero"]))
            .defect("#9")
            .exit(1)
            .msg("/dev/zero")
            .within_ms(1000),
        // #10: ipam.type "calico" delegates to itself.
        row("ipam.type calico delegates to itself", Calico, Add)
            .defect("#10")
            .patch(json!({"ipam": {"type": "calico"}}))
            .code(7)
            .pids(3, 64)
            .check(few_pids),
        // #11: names that would write keys outside their prefix.
        row("nodename a/b", Calico, Add)
            .defect("#11")
            .patch(json!({"nodename": "a/b"}))
            .code(7)
            .msg("node name"),
        row("nodename ../../x", Calico, Add)
            .defect("#11")
            .patch(json!({"nodename": "../../x"}))
            .code(7),
        row("nodename of 5000 characters", Calico, Add)
            .defect("#11")
            .edit(|mut c| {
                c["nodename"] = json!("n".repeat(5000));
                c
            })
            .code(7),
        row("calico-ipam nodename a/b", Ipam, Add)
            .defect("#11")
            .patch(json!({"nodename": "a/b"}))
            .code(7),
        row("K8S_POD_NAMESPACE a/b", Calico, Add)
            .defect("#11")
            .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=a/b;K8S_POD_NAME=p")
            .code(4)
            .msg("K8S_POD_NAMESPACE"),
        row("K8S_POD_NAMESPACE ..", Calico, Add)
            .defect("#11")
            .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=p")
            .code(4),
        row("K8S_POD_NAME a/b", Calico, Add)
            .defect("#11")
            .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a/b")
            .code(4),
        // #12: a repeated ADD returns the first address.
        row("calico ADD twice with one container ID", Calico, Add)
            .defect("#12")
            .add_first()
            .check(one_allocation),
        row("calico-ipam ADD twice with one container ID", Ipam, Add)
            .defect("#12")
            .add_first()
            .check(one_allocation),
        // #13: corrupt datastore content. The corrupt block is the pool's only block (a /26
        // pool equal to it), so the row shows it is skipped, not repaired or read around: an
        // invalid block is never allocated from (plan #13), which leaves the pool exhausted.
        row("block with ordinal 9999 in its free list", Calico, Add)
            .defect("#13")
            .seed(&format!("{POOLS}bad-pool"), pool("bad-pool", "10.244.0.0/26", json!({"blockSize": 26})))
            .seed(
                &block_key("10.244.0.0/26"),
                block("10.244.0.0/26", json!(vec![Value::Null; 64]),
                      json!([9999, 1, 2, 3]), json!([])),
            )
            .seed(&affinity_key("10.244.0.0/26"), CONFIRMED)
            .code(104),
        row("block whose cidr differs from its key", Calico, Add)
            .defect("#13")
            .seed(&format!("{POOLS}bad-pool"), pool("bad-pool", "10.244.0.0/26", json!({"blockSize": 26})))
            .seed(
                &block_key("10.244.0.0/26"),
                block("10.0.0.0/26", json!(vec![Value::Null; 64]),
                      json!((0..64).collect::<Vec<u32>>()), json!([])),
            )
            .seed(&affinity_key("10.244.0.0/26"), CONFIRMED)
            .code(104),
        row("DEL with a corrupt handle", Calico, Del)
            .defect("#13")
            .add_first()
            .between(|bed, _| corrupt(bed, HANDLES)),
        row("DEL with a corrupt IPAM config", Calico, Del)
            .defect("#13")
            .add_first()
            .between(|bed, _| bed.cluster.etcd.put("/calico/ipam/v2/config", "{bad"))
            .allow_key("/calico/ipam/v2/config"),
        // Already works before the fix (the endpoint is deleted unread): a guard.
        row("DEL with a corrupt endpoint", Calico, Del)
            .add_first()
            .between(|bed, _| corrupt(bed, WEPS)),
        // #14: arrays for struct fields.
        row("policy: []", Calico, Add).defect("#14").patch(json!({"policy": []})).code(7).msg("policy"),
        row("policy: [\"k8s\"]", Calico, Add).defect("#14").patch(json!({"policy": ["k8s"]})).code(7).msg("policy"),
        row("kubernetes: []", Calico, Add).defect("#14").patch(json!({"kubernetes": []})).code(7).msg("kubernetes"),
        row("feature_control: []", Calico, Add).defect("#14").patch(json!({"feature_control": []})).code(7),
        row("container_settings: []", Calico, Add).defect("#14").patch(json!({"container_settings": []})).code(7),
        row("calico-ipam ipam: []", Ipam, Add).defect("#14").patch(json!({"ipam": []})).code(7).msg("ipam"),
        // #15: misleading codes and messages.
        row("mtu 67", Calico, Add).defect("#15").patch(json!({"mtu": 67})).code(7).msg("mtu"),
        row("mtu 65536", Calico, Add).defect("#15").patch(json!({"mtu": 65536})).code(7).msg("mtu"),
        row("mtu -1", Calico, Add).defect("#15").patch(json!({"mtu": -1})).code(7).msg("mtu"),
        row("CNI_NETNS is a regular file", Calico, Add)
            .defect("#15")
            .file("plain", "x")
            .env("CNI_NETNS", "{TMP}/plain")
            .code(4)
            .msg("CNI_NETNS"),
        row("CNI_NETNS is a directory", Calico, Add).defect("#15").env("CNI_NETNS", "{TMP}/dir").code(4),
        row("CNI_NETNS is /dev/null", Calico, Add).defect("#15").env("CNI_NETNS", "/dev/null").code(4),
        // Found in review: opening a FIFO without a writer blocked ADD and DEL for good.
        row("CNI_NETNS is a FIFO", Calico, Add).defect("#15").env("CNI_NETNS", "{TMP}/fifo").code(4).within_ms(1000),
        row("DEL with CNI_NETNS a FIFO", Calico, Del).defect("#15").env("CNI_NETNS", "{TMP}/fifo").within_ms(1000),
        row("CNI_NETNS is a mount namespace", Calico, Add)
            .defect("#15")
            .env("CNI_NETNS", "/proc/self/ns/mnt")
            .code(4),
        row("CNI_IFNAME eth%d", Calico, Add).defect("#15").env("CNI_IFNAME", "eth%d").code(4).msg("CNI_IFNAME"),
        row("IP= with a prefix", Ipam, Add)
            .defect("#15")
            .env("CNI_ARGS", "IgnoreUnknown=1;IP=10.244.77.3/24")
            .code(7),
        row("IP= twice the same address", Ipam, Add)
            .defect("#15")
            .env("CNI_ARGS", "IgnoreUnknown=1;IP=10.244.77.3,10.244.77.3")
            .code(7),
        row("etcd endpoint with user:pass@", Calico, Add)
            .defect("#15")
            .patch(json!({"etcd_endpoints": format!("https://user:pass@{}:{}", testkit::cluster::ETCD_IP, testkit::cluster::ETCD_PORT)}))
            .code(7),
        row("ipam_lock_file is a directory", Calico, Add)
            .defect("#15")
            .patch(json!({"ipam_lock_file": "{TMP}/dir"}))
            .code(7)
            .msg("ipam_lock_file"),
        row("cniVersion of 100k characters is not echoed in full", Calico, Add)
            .defect("#15")
            .edit(|mut c| {
                c["cniVersion"] = json!("9".repeat(100_000));
                c
            })
            .code(1)
            .check(small_stdout),
        row("a pool with an invalid selector, named by the config", Calico, Add)
            .defect("#15")
            .seed(
                &format!("{POOLS}badsel"),
                pool("badsel", "198.43.0.0/24", json!({"nodeSelector": "has("})),
            )
            .patch(json!({"ipam": {"type": "calico-ipam", "ipv4_pools": ["badsel"]}}))
            .code(7)
            .msg("selector"),
        // #16: wrong-typed capability args.
        row("args.cni.ips as a string", Ipam, Add)
            .defect("#16")
            .patch(json!({"args": {"cni": {"ips": "10.244.1.1"}}}))
            .code(7),
        row("runtimeConfig.ips: [5]", Ipam, Add)
            .defect("#16")
            .patch(json!({"runtimeConfig": {"ips": [5]}}))
            .code(7),
        // #17: nonsense portmap targets.
        row("two mappings of one host port", Portmap, Add)
            .defect("#17")
            .patch(json!({"runtimeConfig": {"portMappings": [
                {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 18080, "containerPort": 81, "protocol": "tcp"}]}}))
            .code(7),
        row("prevResult address 0.0.0.0/0", Portmap, Add)
            .defect("#17")
            .patch(json!({"prevResult": {"ips": [{"address": "0.0.0.0/0", "interface": 0}]}}))
            .code(7),
        row("prevResult address 127.0.0.1/8", Portmap, Add)
            .defect("#17")
            .patch(json!({"prevResult": {"ips": [{"address": "127.0.0.1/8", "interface": 0}]}}))
            .code(7),
    ]
}

/// Malformed stdin, for each CNI plugin: code 6 (decoding) and one error object, whatever
/// the kind (none of them is a config that decodes but is wrong, code 7).
fn stdin_rows() -> Vec<Row> {
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let kinds: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("not JSON", b"not json".to_vec()),
        ("a top-level array", b"[]".to_vec()),
        ("a top-level string", b"\"calico\"".to_vec()),
        ("null", b"null".to_vec()),
        (
            "invalid UTF-8",
            b"{\"cniVersion\":\"1.0.0\",\"name\":\"\xff\xfe\"}".to_vec(),
        ),
        (
            "a raw NUL",
            b"{\"cniVersion\":\"1.0.0\",\0\"name\":\"x\"}".to_vec(),
        ),
        (
            "a BOM",
            b"\xef\xbb\xbf{\"cniVersion\":\"1.0.0\",\"name\":\"x\"}".to_vec(),
        ),
        (
            "trailing data",
            b"{\"cniVersion\":\"1.0.0\",\"name\":\"x\",\"type\":\"calico\"} x".to_vec(),
        ),
        ("100k nested arrays", nested.into_bytes()),
        (
            "a truncated object",
            b"{\"cniVersion\":\"1.0.0\",\"name\":".to_vec(),
        ),
    ];
    let mut rows = Vec::new();
    for plugin in [Calico, Ipam, Portmap] {
        for (what, bytes) in &kinds {
            rows.push(
                row(
                    format!("{} stdin: {what}", plugin_name(plugin)),
                    plugin,
                    Add,
                )
                .raw(bytes.clone())
                .code(6),
            );
        }
    }
    // A 10 MB config is read (and its unknown field ignored) within the bound.
    rows.push(
        row("calico stdin: a 10 MB config", Calico, Add)
            .edit(|mut c| {
                c["junk"] = json!("j".repeat(10 << 20));
                c
            })
            .within_ms(3000),
    );
    rows
}

fn plugin_name(p: Plugin) -> &'static str {
    match p {
        Calico => "calico",
        Ipam => "calico-ipam",
        Portmap => "portmap",
        Calicoctl => "calicoctl",
    }
}

/// Bad cniVersion values and wrong scalar types: codes 1 and 7, naming the field.
fn config_rows() -> Vec<Row> {
    vec![
        row("cniVersion 9.9.9", Calico, Add)
            .patch(json!({"cniVersion": "9.9.9"}))
            .code(1),
        row("cniVersion abc", Calico, Add)
            .patch(json!({"cniVersion": "abc"}))
            .code(1),
        row("cniVersion as a number", Calico, Add)
            .patch(json!({"cniVersion": 1}))
            .code(7),
        row("portmap cniVersion 9.9.9", Portmap, Add)
            .patch(json!({"cniVersion": "9.9.9"}))
            .code(1),
        row("calico-ipam cniVersion abc", Ipam, Add)
            .patch(json!({"cniVersion": "abc"}))
            .code(1),
        row("mtu as a string", Calico, Add)
            .patch(json!({"mtu": "big"}))
            .code(7)
            .msg("mtu"),
        row("etcd_endpoints as a number", Calico, Add)
            .patch(json!({"etcd_endpoints": 5}))
            .code(7)
            .msg("etcd_endpoints"),
        row("ipam.type as a number", Calico, Add)
            .patch(json!({"ipam": {"type": 5}}))
            .code(7)
            .msg("type"),
        row("nodename as a number", Calico, Add)
            .patch(json!({"nodename": 5}))
            .code(7)
            .msg("nodename"),
        row("log_level as an object", Calico, Add)
            .patch(json!({"log_level": {}}))
            .code(7)
            .msg("log_level"),
        row("portmap snat as a string", Portmap, Add)
            .patch(json!({"snat": "yes"}))
            .code(7)
            .msg("snat"),
        row("CHECK without prevResult", Calico, Check).code(7),
    ]
}

/// Missing and malformed CNI_* variables: code 4 naming the variable.
fn env_rows() -> Vec<Row> {
    let id1000 = "c".repeat(1000);
    vec![
        row("CNI_COMMAND missing", Calico, Add)
            .unset("CNI_COMMAND")
            .code(4)
            .msg("CNI_COMMAND"),
        row("CNI_COMMAND lower case", Calico, Add)
            .env("CNI_COMMAND", "add")
            .code(4)
            .msg("CNI_COMMAND"),
        row("CNI_COMMAND with a newline", Calico, Add)
            .env("CNI_COMMAND", "ADD\n")
            .code(4),
        row("CNI_COMMAND unknown", Calico, Add)
            .env("CNI_COMMAND", "FOO")
            .code(4),
        row("portmap CNI_COMMAND unknown", Portmap, Add)
            .env("CNI_COMMAND", "FOO")
            .code(4),
        row("CNI_CONTAINERID missing", Calico, Add)
            .unset("CNI_CONTAINERID")
            .code(4)
            .msg("CNI_CONTAINERID"),
        row("calico-ipam CNI_CONTAINERID missing", Ipam, Add)
            .unset("CNI_CONTAINERID")
            .code(4),
        row("CNI_NETNS missing on ADD", Calico, Add)
            .unset("CNI_NETNS")
            .code(4)
            .msg("CNI_NETNS"),
        row("CNI_IFNAME missing", Calico, Add)
            .unset("CNI_IFNAME")
            .code(4)
            .msg("CNI_IFNAME"),
        row("CNI_CONTAINERID with /", Calico, Add)
            .env("CNI_CONTAINERID", "a/b")
            .code(4),
        row("CNI_CONTAINERID ..", Calico, Add)
            .env("CNI_CONTAINERID", "..")
            .code(4),
        row("CNI_CONTAINERID with a space", Calico, Add)
            .env("CNI_CONTAINERID", "a b")
            .code(4),
        row("CNI_CONTAINERID of 1000 characters", Calico, Add).env("CNI_CONTAINERID", &id1000),
        row("CNI_IFNAME of 16 bytes", Calico, Add)
            .env("CNI_IFNAME", "abcdefghijklmnop")
            .code(4),
        row("CNI_IFNAME with /", Calico, Add)
            .env("CNI_IFNAME", "a/b")
            .code(4),
        row("CNI_IFNAME empty", Calico, Add)
            .env("CNI_IFNAME", "")
            .code(4),
        row("CNI_ARGS without =", Calico, Add)
            .env("CNI_ARGS", "foo")
            .code(4)
            .msg("CNI_ARGS"),
        row("CNI_ARGS with an empty key", Calico, Add)
            .env("CNI_ARGS", "=x")
            .code(4),
        row("calico-ipam CNI_ARGS without =", Ipam, Add)
            .env("CNI_ARGS", "a=b;c")
            .code(4),
    ]
}

/// Malformed portMappings: code 7, nothing installed.
fn portmap_rows() -> Vec<Row> {
    let bad: Vec<(&str, Value)> = vec![
        ("hostPort 0", json!({"hostPort": 0, "containerPort": 80})),
        (
            "hostPort 65536",
            json!({"hostPort": 65536, "containerPort": 80}),
        ),
        ("hostPort -1", json!({"hostPort": -1, "containerPort": 80})),
        (
            "hostPort \"80\"",
            json!({"hostPort": "80", "containerPort": 80}),
        ),
        (
            "hostPort 80.5",
            json!({"hostPort": 80.5, "containerPort": 80}),
        ),
        (
            "hostPort 1e20",
            json!({"hostPort": 1e20, "containerPort": 80}),
        ),
        (
            "protocol icmp",
            json!({"hostPort": 18080, "containerPort": 80, "protocol": "icmp"}),
        ),
        (
            "hostIP not an address",
            json!({"hostPort": 18080, "containerPort": 80, "hostIP": "bad"}),
        ),
        (
            "IPv6 hostIP for an IPv4 pod",
            json!({"hostPort": 18080, "containerPort": 80, "hostIP": "fd00::1"}),
        ),
    ];
    let mut rows: Vec<Row> = bad
        .into_iter()
        .map(|(what, m)| {
            row(format!("portMappings: {what}"), Portmap, Add)
                .patch(json!({"runtimeConfig": {"portMappings": [m]}}))
                .code(7)
        })
        .collect();
    rows.push(row("portmap DEL of an unknown container", Portmap, Del));
    rows.push(row("portmap DEL twice", Portmap, Del).add_first());
    rows
}

/// etcd unreachable, frozen or refusing our identity; pool exhaustion; DEL edge cases.
fn datastore_rows() -> Vec<Row> {
    let full = |n: usize| -> String {
        block(
            "10.9.9.0/30",
            json!(vec![json!(0); n]),
            json!([]),
            json!([{"handle_id": "someone-else", "secondary": {}}]),
        )
    };
    vec![
        row("/30 pool exhausted: code 104", Calico, Add)
            .seed(
                &format!("{POOLS}bad-pool"),
                pool("bad-pool", "10.9.9.0/30", json!({"blockSize": 30})),
            )
            .seed(&block_key("10.9.9.0/30"), full(4))
            .seed(&affinity_key("10.9.9.0/30"), CONFIRMED)
            .seed(
                &format!("{HANDLES}someone-else"),
                r#"{"block":{"10.9.9.0/30":4},"deleted":false}"#,
            )
            .code(104),
        row("calico-ipam: /30 pool exhausted", Ipam, Add)
            .seed(
                &format!("{POOLS}bad-pool"),
                pool("bad-pool", "10.9.9.0/30", json!({"blockSize": 30})),
            )
            .seed(&block_key("10.9.9.0/30"), full(4))
            .seed(&affinity_key("10.9.9.0/30"), CONFIRMED)
            .seed(
                &format!("{HANDLES}someone-else"),
                r#"{"block":{"10.9.9.0/30":4},"deleted":false}"#,
            )
            .code(104),
        row("etcd unreachable: ADD", Calico, Add)
            .patch(json!({"etcd_endpoints": "http://127.0.0.1:1"}))
            .code(11)
            .within_ms(1000),
        row("etcd unreachable: DEL", Calico, Del)
            .patch(json!({"etcd_endpoints": "http://127.0.0.1:1"}))
            .code(11)
            .within_ms(1000),
        row("etcd unreachable: calico-ipam ADD", Ipam, Add)
            .patch(json!({"etcd_endpoints": "http://127.0.0.1:1"}))
            .code(11)
            .within_ms(1000),
        row("etcd unreachable: STATUS", Calico, Status)
            .patch(json!({"cniVersion": "1.1.0", "etcd_endpoints": "http://127.0.0.1:1"}))
            .code(50)
            .within_ms(1000),
        row("etcd frozen (SIGSTOP): code 11, bounded", Calico, Add)
            .between(stop_etcd)
            .teardown(cont_etcd)
            // The snapshot after the call needs etcd: thaw it as soon as the call is over.
            .check(|bed, ctx, _| cont_etcd(bed, ctx).map_err(|e| e.to_string()))
            // Calico's etcd client gives up after its 5 s dial/request timeout; 7 s leaves
            // room for a loaded machine and still tells a bound from a hang.
            .code(11)
            .within_ms(7000),
        row("client certificate from another CA", Calico, Add)
            .patch(json!({"etcd_cert_file": "{WRONGCERT}", "etcd_key_file": "{WRONGKEY}"}))
            .code(102),
        // Our TLS settings are wrong, not etcd unreachable: 102 (never 11).
        row("no client certificate", Calico, Add)
            .patch(json!({"etcd_cert_file": null, "etcd_key_file": null}))
            .code(102),
        row("CA file missing", Calico, Add)
            .patch(json!({"etcd_ca_cert_file": "/nonexistent/ca.pem"}))
            .code(102),
        row("key file missing", Calico, Add)
            .patch(json!({"etcd_key_file": "/nonexistent/key.pem"}))
            .code(102),
        row("http to the TLS etcd", Calico, Add)
            .patch(
                json!({"etcd_endpoints": format!("http://{}:{}", testkit::cluster::ETCD_IP, testkit::cluster::ETCD_PORT), "etcd_ca_cert_file": null,
                          "etcd_cert_file": null, "etcd_key_file": null}),
            )
            // A connection failure (TLS etcd closes on plain HTTP/2): 11.
            .code(11)
            .within_ms(6000),
        // The DEL after this one (with etcd back) must clean up everything.
        row(
            "DEL while etcd refuses, then again once it is back",
            Calico,
            Del,
        )
        .add_first()
        .between(block_etcd)
        .check(|bed, ctx, _| unblock_etcd(bed, ctx).map_err(|e| e.to_string()))
        .teardown(unblock_etcd)
        .code(11)
        .within_ms(1000),
        row("DEL of an unknown container", Calico, Del),
        row("calico-ipam DEL of an unknown container", Ipam, Del),
        row("DEL twice", Calico, Del).add_first(),
        row("DEL after the netns is gone", Calico, Del)
            .env("CNI_NETNS", "/run/netns/ct-gone-for-good"),
        row("calico ADD then DEL (sanity)", Calico, Add),
        row("calico-ipam ADD then DEL (sanity)", Ipam, Add),
    ]
}

/// calicoctl's validation: exit 1 naming what is wrong on stderr, nothing written; and a
/// control row, so that a calicoctl that cannot reach etcd at all (exit 1 too) fails here.
fn calicoctl_rows() -> Vec<Row> {
    let apply = || ctl(&["apply", "-f", "{TMP}/in.yaml"]);
    let p = |spec: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p2\nspec:\n{spec}"
        )
    };
    let mut bomb = String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
    for i in 0..9 {
        let prev = if i == 0 {
            "a".to_string()
        } else {
            format!("l{}", i - 1)
        };
        bomb.push_str(&format!("l{i}: &l{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    let deep = format!("{}x{}", "[".repeat(20_000), "]".repeat(20_000));
    vec![
        row("calicoctl: get ippools (control)", Calicoctl, ctl(&["get", "ippools"])).exit(0),
        row("calicoctl: invalid name", Calicoctl, apply())
            .file("in.yaml", "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: Bad_Name\nspec:\n  cidr: 10.50.0.0/16\n")
            .exit(1)
            .msg("Metadata.Name"),
        row("calicoctl: bad CIDR", Calicoctl, apply()).file("in.yaml", p("  cidr: 10.50.0.0/33\n")).exit(1).msg("CIDR"),
        row("calicoctl: block size 33", Calicoctl, apply())
            .file("in.yaml", p("  cidr: 10.50.0.0/16\n  blockSize: 33\n"))
            .exit(1)
            .msg("BlockSize"),
        row("calicoctl: ipipMode Sometimes", Calicoctl, apply())
            .file("in.yaml", p("  cidr: 10.50.0.0/16\n  ipipMode: Sometimes\n"))
            .exit(1)
            .msg("IPIPMode"),
        row("calicoctl: YAML alias bomb", Calicoctl, apply()).file("in.yaml", bomb).exit(1).msg("repetition limit"),
        row("calicoctl: deep YAML nesting", Calicoctl, apply()).file("in.yaml", deep).exit(1).msg("recursion limit"),
        row("calicoctl: invalid UTF-8", Calicoctl, apply())
            .file("in.yaml", b"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: \xff\xfe\n".to_vec())
            .exit(1)
            .msg("UTF-8"),
        row("calicoctl: multi-document, second bad, nothing written", Calicoctl, apply())
            .file(
                "in.yaml",
                format!("{}---\n{}", p("  cidr: 10.50.0.0/16\n"), p("  cidr: nonsense\n").replace("p2", "p3")),
            )
            .exit(1)
            .msg("nonsense"),
        row("calicoctl: get of an unknown kind", Calicoctl, ctl(&["get", "nosuchkind"])).exit(1).msg("not supported"),
    ]
}
