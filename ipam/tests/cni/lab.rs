//! A lab for IPAM tests: an etcd (mutual TLS by default), a CNI_PATH with our plugins, a
//! config directory and a libcni cache, all removed on drop.

use std::path::{Path, PathBuf};

use calico_datastore::model::{IpPoolSpec, Resource, keys};
use calico_datastore::{Etcd, EtcdConfig, Guard, Write};
use serde_json::{Value, json};
use tempfile::TempDir;
use testkit::{CallOpts, CniPathDir, DriverError, Runtime};

pub struct Lab {
    pub etcd: testkit::Etcd,
    pub dir: TempDir,
    pub path: CniPathDir,
    pub tls: bool,
}

impl Lab {
    pub fn new() -> Lab {
        Self::with_tls(true)
    }

    pub fn with_tls(tls: bool) -> Lab {
        let etcd = if tls {
            testkit::Etcd::start_tls().unwrap()
        } else {
            testkit::Etcd::start().unwrap()
        };
        let path = CniPathDir::new().unwrap();
        path.add_ours("calico-ipam").unwrap();
        path.add_ours("cni-noop").unwrap();
        let dir = tempfile::tempdir().unwrap();
        for sub in ["net.d", "cache", "pods", "logs"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        Lab {
            etcd,
            dir,
            path,
            tls,
        }
    }

    /// A client on the same etcd, as the plugin connects.
    pub fn db(&self) -> Etcd {
        let mut c = EtcdConfig::new(vec![self.etcd.endpoints()]);
        if self.tls {
            c.ca_cert_file = Some(self.etcd.ca_path());
            c.cert_file = Some(self.etcd.cert_path());
            c.key_file = Some(self.etcd.key_path());
        }
        Etcd::connect(&c).unwrap()
    }

    pub fn add_pool(&self, name: &str, cidr: &str, f: impl FnOnce(&mut IpPoolSpec)) {
        let mut spec = IpPoolSpec::for_cidr(cidr);
        f(&mut spec);
        let pool = Resource::new("IPPool", name, spec);
        self.db()
            .put(&keys::resource("ippools", name), pool.to_stored().unwrap())
            .unwrap();
    }

    /// Writes the Calico Node resource of `node` unless it exists, as calico-node does when
    /// it starts (automatic assignment needs it).
    pub fn register_node(&self, node: &str) {
        let key = keys::resource("nodes", node);
        let mut n = Resource::new("Node", node, json!({}));
        n.stamp_created(std::time::SystemTime::now());
        self.db()
            .txn(
                &[Guard::Absent(key.clone())],
                &[Write::Put(key, n.to_stored().unwrap())],
            )
            .unwrap();
    }

    /// The `calico-ipam` plugin config for `node` (registered first, see
    /// [`Lab::register_node`]), with `ipam` merged into its ipam section.
    pub fn plugin(&self, node: &str, ipam: Value) -> Value {
        self.register_node(node);
        let mut section = json!({"type": "calico-ipam"});
        for (k, v) in ipam.as_object().unwrap() {
            section[k] = v.clone();
        }
        let mut p = json!({
            "type": "calico-ipam",
            "etcd_endpoints": self.etcd.endpoints(),
            "nodename": node,
            "ipam_lock_file": self.dir.path().join(format!("{node}.lock")),
            "log_file_path": self.dir.path().join("logs/cni.log"),
            "log_level": "debug",
            "ipam": section,
        });
        if self.tls {
            p["etcd_ca_cert_file"] = json!(self.etcd.ca_path());
            p["etcd_cert_file"] = json!(self.etcd.cert_path());
            p["etcd_key_file"] = json!(self.etcd.key_path());
        }
        p
    }

    /// Installs a one-plugin conflist `net` (cniVersion 1.0.0; 1.1.0 offered for GC/STATUS).
    pub fn install(&self, net: &str, plugin: Value) {
        let list = json!({"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"],
                          "name": net, "plugins": [plugin]});
        std::fs::write(
            self.dir.path().join(format!("net.d/{net}.conflist")),
            serde_json::to_vec_pretty(&list).unwrap(),
        )
        .unwrap();
    }

    pub fn runtime(&self) -> Runtime<'static> {
        Runtime::local(
            &self.dir.path().join("net.d"),
            self.path.path(),
            &self.dir.path().join("cache"),
        )
    }

    /// Installs a one-plugin conflist `net` on a node of its own (its own config directory
    /// and libcni cache, see [`Lab::node_runtime`]): two nodes can then run the same network.
    pub fn install_on(&self, node: &str, net: &str, plugin: Value) {
        let dir = self.dir.path().join("nodes").join(node);
        for sub in ["net.d", "cache"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let list = json!({"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"],
                          "name": net, "plugins": [plugin]});
        std::fs::write(
            dir.join(format!("net.d/{net}.conflist")),
            serde_json::to_vec_pretty(&list).unwrap(),
        )
        .unwrap();
    }

    /// The runtime of a node set up by [`Lab::install_on`].
    pub fn node_runtime(&self, node: &str) -> Runtime<'static> {
        let dir = self.dir.path().join("nodes").join(node);
        Runtime::local(&dir.join("net.d"), self.path.path(), &dir.join("cache"))
    }

    /// Writes a value at `key` as JSON.
    pub fn put_json(&self, key: &str, value: &Value) {
        self.db().put(key, value.to_string().into_bytes()).unwrap();
    }

    /// The JSON at `key`, if any.
    pub fn get_json(&self, key: &str) -> Option<Value> {
        self.etcd
            .get(key)
            .unwrap()
            .map(|v| serde_json::from_str(&v).unwrap())
    }

    /// A pod sandbox path (IPAM never enters it; the driver derives the container ID).
    pub fn pod(&self, name: &str) -> PathBuf {
        self.dir.path().join("pods").join(name)
    }

    pub fn add(&self, net: &str, pod: &Path) -> Result<Value, DriverError> {
        self.runtime().add(net, pod, &CallOpts::default()).unwrap()
    }

    pub fn del(&self, net: &str, pod: &Path) -> Result<(), DriverError> {
        self.runtime().del(net, pod, &CallOpts::default()).unwrap()
    }

    pub fn check(&self, net: &str, pod: &Path) -> Result<(), DriverError> {
        self.runtime()
            .check(net, pod, &CallOpts::default())
            .unwrap()
    }

    /// Every key under /calico/, for before/after comparisons.
    pub fn dump(&self) -> Vec<(String, String)> {
        self.etcd.get_prefix("/calico/").unwrap()
    }

    /// The addresses (without mask) in an ADD result.
    pub fn addresses(result: &Value) -> Vec<String> {
        testkit::result_ips(result)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    pub fn handle_exists(&self, id: &str) -> bool {
        self.db().get(&keys::handle(id)).unwrap().is_some()
    }
}
