//! `calico-node startup` for real: the built binary run on a simulated node (its own network
//! and mount namespaces, so `/var/lib/calico` is the node's) against a mutual-TLS etcd on the
//! simulated underlay, with interfaces made in the node's namespace (veth pairs: there is no
//! dummy module here).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::Output;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use testkit::{Etcd, NetNs, SimNode, Underlay, require};

const ETCD_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 174);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 11);
const NODE_KEY: &str = "/calico/resources/v3/projectcalico.org/nodes/node-1";
const POOL_KEY: &str = "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool";

/// An underlay with a mutual-TLS etcd and one node whose `/etc/calico/tls` holds the client
/// identity. Field order is drop order.
struct Lab {
    node: SimNode,
    etcd: Etcd,
    _etcd_ns: NetNs,
    _underlay: Underlay,
}

impl Lab {
    fn new() -> Result<Lab> {
        let underlay = Underlay::new()?;
        let etcd_ns = underlay.attach("etcd", ETCD_IP)?;
        let etcd = Etcd::builder()
            .tls()
            .netns(&etcd_ns)
            .listen(IpAddr::V4(ETCD_IP), 2379)
            .start()?;
        let node = SimNode::new(&underlay, "n1", NODE_IP)?;
        let tls = node.conf_dir().join("calico-tls");
        std::fs::create_dir_all(&tls)?;
        let pki = etcd.pki().context("TLS etcd has a PKI")?;
        std::fs::copy(pki.ca_path(), tls.join("etcd-ca"))?;
        std::fs::copy(pki.client_cert_path(), tls.join("etcd-cert"))?;
        std::fs::copy(pki.client_key_path(), tls.join("etcd-key"))?;
        Ok(Lab {
            node,
            etcd,
            _etcd_ns: etcd_ns,
            _underlay: underlay,
        })
    }

    /// `calico-node startup` on the node with only `vars` (and the etcd settings) set.
    fn startup(&self, vars: &[(&str, &str)]) -> Result<Output> {
        let mut cmd = self.node.command(env!("CARGO_BIN_EXE_calico-node"))?;
        cmd.arg("startup")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("ETCD_ENDPOINTS", format!("https://{ETCD_IP}:2379"))
            .env("ETCD_CA_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-ca")
            .env("ETCD_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-cert")
            .env("ETCD_KEY_FILE", "/etc/cni/net.d/calico-tls/etcd-key")
            .envs(vars.iter().copied());
        Ok(cmd.output()?)
    }

    /// As [`Lab::startup`], and it must succeed; its log (stderr).
    fn startup_ok(&self, vars: &[(&str, &str)]) -> Result<String> {
        let out = self.startup(vars)?;
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(out.status.success(), "startup {vars:?} failed:\n{log}");
        Ok(log)
    }

    fn json(&self, key: &str) -> Result<Value> {
        let v = self
            .etcd
            .get(key)?
            .with_context(|| format!("{key} missing"))?;
        Ok(serde_json::from_str(&v)?)
    }

    /// etcd's current revision: unchanged means nothing was written.
    fn revision(&self) -> Result<i64> {
        let out = self.etcd.ctl().run(&["endpoint", "status", "-w", "json"])?;
        let v: Value = serde_json::from_str(&out)?;
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .context("a revision")
    }

    fn node_file(&self, name: &str) -> Result<String> {
        let path = self.node.calico_lib_dir().join(name);
        std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))
    }
}

/// The whole start-up on an empty datastore (mirrors startup.go `Run`, allocateip.go's
/// reconcile and Felix's MTU file): Node, pools, cluster information, tunnel address,
/// nodename and MTU files. A rerun changes nothing (etcd's revision stays); labels and the
/// route reflector cluster ID set by others survive an update.
#[test]
fn empty_datastore_then_rerun_then_others_fields_kept() -> Result<()> {
    require!(root; "etcd", "etcdctl", "ip");
    let lab = Lab::new()?;
    let vars = [
        ("NODENAME", "node-1"),
        ("CALICO_IPV4POOL_CIDR", "10.244.0.0/16"),
        ("CALICO_IPV4POOL_IPIP", "Always"),
        ("CALICO_IPV6POOL_CIDR", "fd00:10:244::/48"),
        ("CLUSTER_TYPE", "bgp"),
    ];
    lab.startup_ok(&vars)?;
    let node = lab.json(NODE_KEY)?;
    assert_eq!(node["spec"]["bgp"]["ipv4Address"], format!("{NODE_IP}/24"));
    let tunnel = node["spec"]["bgp"]["ipv4IPIPTunnelAddr"]
        .as_str()
        .context("a tunnel address")?;
    assert!(tunnel.starts_with("10.244."), "{tunnel}");
    assert!(
        lab.etcd
            .get("/calico/ipam/v2/handle/ipip-tunnel-addr-node-1")?
            .is_some()
    );
    assert_eq!(
        lab.json(POOL_KEY)?["spec"],
        json!({"cidr":"10.244.0.0/16","vxlanMode":"Never","ipipMode":"Always","natOutgoing":true,
               "blockSize":26,"nodeSelector":"all()","allowedUses":["Workload","Tunnel"],
               "assignmentMode":"Automatic"})
    );
    let v6 = lab.json("/calico/resources/v3/projectcalico.org/ippools/default-ipv6-ippool")?;
    assert_eq!(v6["spec"]["cidr"], "fd00:10:244::/48");
    let ci = lab.json("/calico/resources/v3/projectcalico.org/clusterinformations/default")?;
    assert_eq!(ci["spec"]["datastoreReady"], true);
    assert_eq!(ci["spec"]["clusterType"], "bgp");
    assert_eq!(
        ci["spec"]["clusterGUID"].as_str().unwrap_or_default().len(),
        32
    );
    assert_eq!(lab.node_file("nodename")?, "node-1");
    // eth0 (MTU 1500) less IPIP's 20.
    assert_eq!(lab.node_file("mtu")?, "1480");

    let rev = lab.revision()?;
    lab.startup_ok(&vars)?;
    assert_eq!(lab.revision()?, rev, "a rerun writes nothing");

    // Someone labels the node and makes it a route reflector; the next start-up (with an AS
    // number now) keeps both.
    let mut node = lab.json(NODE_KEY)?;
    node["metadata"]["labels"] = json!({"rack": "r1"});
    node["spec"]["bgp"]["routeReflectorClusterID"] = json!("224.0.0.1");
    lab.etcd.put(NODE_KEY, &node.to_string())?;
    let mut with_as = vars.to_vec();
    with_as.push(("AS", "64513"));
    lab.startup_ok(&with_as)?;
    let node = lab.json(NODE_KEY)?;
    assert_eq!(node["metadata"]["labels"], json!({"rack": "r1"}));
    assert_eq!(node["spec"]["bgp"]["routeReflectorClusterID"], "224.0.0.1");
    assert_eq!(node["spec"]["bgp"]["asNumber"], 64513);
    assert_eq!(node["spec"]["bgp"]["ipv4IPIPTunnelAddr"], tunnel);
    let rev = lab.revision()?;
    lab.startup_ok(&with_as)?;
    assert_eq!(lab.revision()?, rev, "AS set: still nothing to write");
    Ok(())
}

/// Each autodetection method (mirrors autodetection_methods.go `AutoDetectCIDR`) against
/// interfaces made in the node's namespace: `ethA`/`dummy7` first, then `ens9`/`vethB`
/// (higher ifindexes), `dummy*` and `veth*` being excluded by default.
#[test]
fn each_autodetection_method_on_a_simulated_node() -> Result<()> {
    require!(root; "etcd", "etcdctl", "ip");
    let lab = Lab::new()?;
    lab.node
        .sh("ip link add ethA type veth peer name dummy7 && \
         ip addr add 192.168.50.5/24 dev ethA && ip addr add 192.168.60.5/24 dev dummy7 && \
         ip link set ethA up && ip link set dummy7 up && \
         ip link add ens9 type veth peer name vethB && \
         ip addr add 172.30.1.5/24 dev ens9 && ip addr add 172.31.1.5/24 dev vethB && \
         ip link set ens9 up && ip link set vethB up")?;
    // first-found, with Calico's default pool choice: a host address is in 192.168.0.0/16,
    // so the pool moves to the first free 172.16-31.0.0/16.
    lab.startup_ok(&[
        ("NODENAME", "node-1"),
        ("IP", "autodetect"),
        ("IP6", "autodetect"),
    ])?;
    let node = lab.json(NODE_KEY)?;
    assert_eq!(node["spec"]["bgp"]["ipv4Address"], "172.30.1.5/24");
    assert_eq!(
        node["spec"]["bgp"]["ipv6Address"],
        format!("{}/64", Underlay::ipv6_for(NODE_IP)),
        "veths have only link-local IPv6 addresses"
    );
    assert_eq!(lab.json(POOL_KEY)?["spec"]["cidr"], "172.16.0.0/16");
    let names: Vec<&str> = node["spec"]["interfaces"]
        .as_array()
        .context("interfaces")?
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["ens9", "eth0", "ethA"],
        "default exclusions, by name"
    );

    for (method, want) in [
        ("first-found", "172.30.1.5/24"),
        ("skip-interface=ens9", "192.168.50.5/24"),
        ("interface=eth0", &format!("{NODE_IP}/24")),
        ("interface=dummy.*", "192.168.60.5/24"),
        ("cidr=172.31.0.0/16", "172.31.1.5/24"),
        ("can-reach=192.168.50.9", "192.168.50.5/24"),
        ("can-reach=10.10.0.1", &format!("{NODE_IP}/24")),
    ] {
        lab.startup_ok(&[
            ("NODENAME", "node-1"),
            ("IP", "autodetect"),
            ("IP_AUTODETECTION_METHOD", method),
        ])?;
        assert_eq!(
            lab.json(NODE_KEY)?["spec"]["bgp"]["ipv4Address"],
            want,
            "{method}"
        );
    }
    // A method that finds nothing on a node with an address keeps it, with a warning.
    let log = lab.startup_ok(&[
        ("NODENAME", "node-1"),
        ("IP", "autodetect"),
        ("IP_AUTODETECTION_METHOD", "interface=wlan.*"),
    ])?;
    assert!(log.contains("keeping the existing value"), "{log}");
    assert_eq!(
        lab.json(NODE_KEY)?["spec"]["bgp"]["ipv4Address"],
        format!("{NODE_IP}/24")
    );
    Ok(())
}

/// Mirrors startup.go `checkConflictingNodes`: Calico's warning naming the other node, and
/// the start-up stops (exit 1) without writing the Node or the nodename file, unless
/// `DISABLE_NODE_IP_CHECK=true`.
#[test]
fn an_address_clash_is_warned() -> Result<()> {
    require!(root; "etcd", "etcdctl", "ip");
    let lab = Lab::new()?;
    let other = json!({"kind":"Node","apiVersion":"projectcalico.org/v3",
                       "metadata":{"name":"node-2"},
                       "spec":{"bgp":{"ipv4Address":format!("{NODE_IP}/24")}}});
    lab.etcd.put(
        "/calico/resources/v3/projectcalico.org/nodes/node-2",
        &other.to_string(),
    )?;
    let out = lab.startup(&[("NODENAME", "node-1")])?;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "Calico node 'node-2' is already using the IPv4 address {NODE_IP}."
        )),
        "{log}"
    );
    assert!(log.contains("conflicting node detected"), "{log}");
    assert!(lab.etcd.get(NODE_KEY)?.is_none());
    assert!(lab.node_file("nodename").is_err());
    lab.startup_ok(&[("NODENAME", "node-1"), ("DISABLE_NODE_IP_CHECK", "true")])?;
    assert_eq!(lab.node_file("nodename")?, "node-1");
    Ok(())
}

/// Mirrors allocateip.go: the IPIP address goes when no IPIP pool selects the node any more;
/// a VXLAN pool then gives a VXLAN address (with Felix's VTEP MAC) and the MTU file follows
/// (Felix's 50 bytes of VXLAN overhead).
#[test]
fn tunnel_addresses_follow_the_pools() -> Result<()> {
    require!(root; "etcd", "etcdctl", "ip");
    let lab = Lab::new()?;
    let vars = [
        ("NODENAME", "node-1"),
        ("CALICO_IPV4POOL_CIDR", "10.244.0.0/16"),
        ("CALICO_IPV4POOL_IPIP", "CrossSubnet"),
    ];
    lab.startup_ok(&vars)?;
    assert!(lab.json(NODE_KEY)?["spec"]["bgp"]["ipv4IPIPTunnelAddr"].is_string());
    let mut pool = lab.json(POOL_KEY)?;
    pool["spec"]["nodeSelector"] = json!("zone == 'x'");
    lab.etcd.put(POOL_KEY, &pool.to_string())?;
    lab.startup_ok(&vars)?;
    let node = lab.json(NODE_KEY)?;
    assert!(
        node["spec"]["bgp"].get("ipv4IPIPTunnelAddr").is_none(),
        "{node}"
    );
    assert!(
        lab.etcd
            .get("/calico/ipam/v2/handle/ipip-tunnel-addr-node-1")?
            .is_none()
    );
    pool["spec"]["nodeSelector"] = json!("all()");
    pool["spec"]["ipipMode"] = json!("Never");
    pool["spec"]["vxlanMode"] = json!("Always");
    lab.etcd.put(POOL_KEY, &pool.to_string())?;
    lab.startup_ok(&vars)?;
    let node = lab.json(NODE_KEY)?;
    let vxlan = node["spec"]["ipv4VXLANTunnelAddr"]
        .as_str()
        .context("a VXLAN address")?;
    assert!(vxlan.starts_with("10.244."), "{vxlan}");
    assert!(
        node["spec"]["vxlanTunnelMACAddr"]
            .as_str()
            .is_some_and(|m| m.starts_with("66:")),
        "{node}"
    );
    assert_eq!(lab.node_file("mtu")?, "1450");
    Ok(())
}

/// Two nodes starting at once on an empty datastore: both succeed, one set of pools and one
/// ClusterInformation (create-if-absent; the loser keeps the winner's).
#[test]
fn two_start_ups_at_once() -> Result<()> {
    require!(root; "etcd", "etcdctl", "ip");
    let lab = Lab::new()?;
    let mut runs = Vec::new();
    for (name, ip) in [("node-1", "10.10.0.11/24"), ("node-2", "10.10.0.99/24")] {
        let mut cmd = lab.node.command(env!("CARGO_BIN_EXE_calico-node"))?;
        cmd.arg("startup")
            .env_clear()
            .env("ETCD_ENDPOINTS", format!("https://{ETCD_IP}:2379"))
            .env("ETCD_CA_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-ca")
            .env("ETCD_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-cert")
            .env("ETCD_KEY_FILE", "/etc/cni/net.d/calico-tls/etcd-key")
            .env("NODENAME", name)
            .env("IP", ip)
            .env("CALICO_VAR_LIB_DIR", format!("/var/lib/calico/{name}"))
            .env("CALICO_IPV4POOL_CIDR", "10.244.0.0/16")
            .stderr(std::process::Stdio::piped());
        runs.push((name, cmd.spawn()?));
    }
    for (name, child) in runs {
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(lab.node_file(&format!("{name}/nodename"))?, name);
    }
    let pools = lab
        .etcd
        .get_prefix("/calico/resources/v3/projectcalico.org/ippools/")?;
    assert_eq!(pools.len(), 1, "{pools:?}");
    for name in ["node-1", "node-2"] {
        assert!(
            lab.etcd
                .get(&format!(
                    "/calico/resources/v3/projectcalico.org/nodes/{name}"
                ))?
                .is_some()
        );
    }
    Ok(())
}

/// On a plain etcd (loopback, so in the test's own namespace, where detection only reads):
/// `CALICO_VAR_LIB_DIR` moves both files, `IP` as a CIDR is used verbatim.
#[test]
fn plain_etcd_and_the_files_moved() -> Result<()> {
    require!(root; "etcd");
    let etcd = Etcd::start()?;
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_calico-node"))
        .arg("startup")
        .env_clear()
        .env("ETCD_ENDPOINTS", etcd.endpoints())
        .env("NODENAME", "plain-1")
        .env("IP", "10.99.0.1/24")
        .env("CALICO_VAR_LIB_DIR", dir.path())
        .output()?;
    let log = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{log}");
    assert!(
        log.contains("unable to confirm IPv4 address 10.99.0.1/24"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("nodename"))?,
        "plain-1"
    );
    assert!(dir.path().join("mtu").is_file());
    let node: Value = serde_json::from_str(
        &etcd
            .get("/calico/resources/v3/projectcalico.org/nodes/plain-1")?
            .context("the Node")?,
    )?;
    assert_eq!(node["spec"]["bgp"]["ipv4Address"], "10.99.0.1/24");
    Ok(())
}

/// A malformed value: one line naming the variable, exit 1, before any datastore is used.
#[test]
fn a_bad_value_is_one_line_naming_the_variable() {
    for (var, value) in [
        ("IP", "10.0.0"),
        ("CALICO_IPV4POOL_BLOCK_SIZE", "33"),
        ("IP_AUTODETECTION_METHOD", "nearest"),
        ("NO_DEFAULT_POOLS", "maybe"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_calico-node"))
            .arg("startup")
            .env_clear()
            .env(var, value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{var}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&format!("calico-node: {var}: ")), "{err}");
    }
}
