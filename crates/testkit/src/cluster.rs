//! A simulated Calico cluster as the seed conflist expects it: an underlay, a mutual-TLS etcd
//! at `https://10.10.0.174:2379` on it (the seed's `etcd_endpoints`), and nodes whose
//! `/etc/cni/net.d/calico-tls/{etcd-ca,etcd-cert,etcd-key}` hold the client identity, so
//! `conflist/10-calico.conflist` works verbatim on them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::bins::CniPathDir;
use crate::driver::Runtime;
use crate::etcd::{Etcd, Etcdctl};
use crate::netns::NetNs;
use crate::node::SimNode;
use crate::underlay::Underlay;

/// The seed's etcd address.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 174);
pub const ETCD_PORT: u16 = 2379;

/// The repository's seed conflist, verbatim.
pub fn seed_conflist() -> Result<Value> {
    let path = crate::driver::repo_root().join("conflist/10-calico.conflist");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// The seed conflist without the sections that need a Kubernetes API server (`policy`,
/// `kubernetes`), as the demo runs it.
pub fn seed_without_kubernetes() -> Result<Value> {
    let mut list = seed_conflist()?;
    if let Some(calico) = list["plugins"][0].as_object_mut() {
        calico.remove("policy");
        calico.remove("kubernetes");
    }
    Ok(list)
}

/// Underlay, TLS etcd and nodes; removed on drop (nodes first, then etcd, then the network).
pub struct Cluster {
    // Field order is drop order.
    pub nodes: Vec<SimNode>,
    pub etcd: Etcd,
    pub etcd_ns: NetNs,
    pub underlay: Underlay,
    pub cni_path: CniPathDir,
}

impl Cluster {
    /// `nodes` nodes at 10.10.0.11, .12, ... named by their `/var/lib/calico/nodename`
    /// (`node-1`, `node-2`, ...) and registered as Calico Nodes, with our plugins on the CNI
    /// path (plus `extra_reference` reference plugins).
    pub fn start(nodes: usize, extra_reference: &[&str]) -> Result<Cluster> {
        let cluster = Self::start_bare(nodes, extra_reference)?;
        for (i, node) in cluster.nodes.iter().enumerate() {
            node.write_nodename(&format!("node-{}", i + 1))?;
            cluster.register_node(&format!("node-{}", i + 1), node.underlay_ip())?;
        }
        Ok(cluster)
    }

    /// As [`Cluster::start`], but the nodes are neither named nor registered: what
    /// `calico-node startup` does on each of them.
    pub fn start_bare(nodes: usize, extra_reference: &[&str]) -> Result<Cluster> {
        let underlay = Underlay::new()?;
        let etcd_ns = underlay.attach("etcd", ETCD_IP)?;
        let etcd = Etcd::builder()
            .tls()
            .netns(&etcd_ns)
            .listen(IpAddr::V4(ETCD_IP), ETCD_PORT)
            .start()?;
        let cni_path = CniPathDir::new()?;
        for b in ["calico", "calico-ipam", "portmap"] {
            cni_path.add_ours(b)?;
        }
        for b in extra_reference {
            cni_path.add_reference(b)?;
        }
        let mut cluster = Cluster {
            nodes: Vec::new(),
            etcd,
            etcd_ns,
            underlay,
            cni_path,
        };
        for i in 0..nodes {
            let ip = Ipv4Addr::new(10, 10, 0, 11 + u8::try_from(i)?);
            let node = SimNode::new(&cluster.underlay, &format!("n{}", i + 1), ip)?;
            let tls = node.conf_dir().join("calico-tls");
            std::fs::create_dir_all(&tls)?;
            let pki = cluster.etcd.pki().context("TLS etcd has a PKI")?;
            std::fs::copy(pki.ca_path(), tls.join("etcd-ca"))?;
            std::fs::copy(pki.client_cert_path(), tls.join("etcd-cert"))?;
            std::fs::copy(pki.client_key_path(), tls.join("etcd-key"))?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    /// Writes the Calico Node resource of `name` as calico-node does when it starts (name,
    /// creation time, BGP address on the underlay): Calico's IPAM assigns addresses
    /// automatically only to registered nodes.
    pub fn register_node(&self, name: &str, underlay_ip: Ipv4Addr) -> Result<()> {
        let node = json!({"kind": "Node", "apiVersion": "projectcalico.org/v3",
                          "metadata": {"name": name, "creationTimestamp": "2026-05-01T10:00:00Z"},
                          "spec": {"bgp": {"ipv4Address": format!("{underlay_ip}/24")}}});
        self.etcd.put(
            &format!("/calico/resources/v3/projectcalico.org/nodes/{name}"),
            &node.to_string(),
        )
    }

    pub fn node(&self, i: usize) -> &SimNode {
        &self.nodes[i]
    }

    /// etcdctl against the cluster's etcd (it runs inside the etcd namespace).
    pub fn ctl(&self) -> Etcdctl {
        self.etcd.ctl()
    }

    /// Writes an IPPool as calicoctl would store it (defaults applied on read).
    pub fn add_pool(&self, name: &str, cidr: &str, block_size: Option<u8>) -> Result<()> {
        let mut spec = json!({ "cidr": cidr });
        if let Some(b) = block_size {
            spec["blockSize"] = json!(b);
        }
        let pool = json!({"kind": "IPPool", "apiVersion": "projectcalico.org/v3",
                          "metadata": {"name": name}, "spec": spec});
        self.etcd.put(
            &format!("/calico/resources/v3/projectcalico.org/ippools/{name}"),
            &pool.to_string(),
        )
    }

    /// Installs `conflist` in a node's `/etc/cni/net.d` (file name from its network name).
    pub fn install(&self, node: usize, conflist: &Value) -> Result<()> {
        let name = conflist["name"].as_str().context("conflist has a name")?;
        let path = self.nodes[node]
            .conf_dir()
            .join(format!("10-{name}.conflist"));
        std::fs::write(&path, serde_json::to_vec_pretty(conflist)?)
            .with_context(|| format!("{}", path.display()))
    }

    /// A runtime on node `i` using the cluster's plugins.
    pub fn runtime(&self, i: usize) -> Runtime<'_> {
        Runtime::on_node(&self.nodes[i], self.cni_path.path())
    }

    /// Every key under `prefix`, as JSON values.
    pub fn values(&self, prefix: &str) -> Result<Vec<(String, Value)>> {
        self.etcd
            .get_prefix(prefix)?
            .into_iter()
            .map(|(k, v)| Ok((k, serde_json::from_str(&v)?)))
            .collect()
    }

    /// The host-side path of a node's log file.
    pub fn log_of(&self, i: usize) -> PathBuf {
        self.nodes[i].log_dir().join("cni/cni.log")
    }

    /// Where a pod's namespace file is.
    pub fn pod_path(pod: &NetNs) -> PathBuf {
        pod.path()
    }

    /// The seed's TLS files on node `i`, host side.
    pub fn tls_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].conf_dir().join("calico-tls")
    }

    /// A path inside a node, host side.
    pub fn host_path(&self, i: usize, node_path: &Path) -> Result<PathBuf> {
        self.nodes[i].host_path(node_path)
    }
}
