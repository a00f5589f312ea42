//! What the verbs' tests without root start from: the in-memory store (`MemKv`) with a pool
//! and this node, the kernel in memory (`FakeDataplane`) with the pod's namespace, calls
//! built as a runtime makes them, and the check that a failed call left nothing behind.
//! The real kernel and etcd are tested in tests/cni.

use super::{Deps, add, check, del};
use crate::endpoint::PodMeta;
use crate::workload::Context;
use calico_dataplane::fake::{FakeDataplane, Kernel};
use calico_datastore::model::{AllocationBlock, IpPoolSpec, Resource, keys};
use calico_datastore::{KvStore, MemKv};
use calico_ipam::Ipam;
use cni_protocol::{CniError, CniResult, CniVersion, Environment, ErrorCode, Request};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub(super) const NODE: &str = "n1";
pub(super) const POD_NETNS: &str = "/run/netns/fake-pod";
pub(super) const CONTAINER: &str = "c0ffee0123456789";
/// The pool every test allocates from.
pub(super) const POOL: &str = "10.0.0.0/24";
/// The address a pod come and gone had: its block, 10.0.0.0/26, is this node's.
const EARLIER: &str = "10.0.0.1";

/// The in-memory store with the pool and this node.
pub(super) fn store() -> MemKv {
    let store = MemKv::new();
    let pool = Resource::new("IPPool", "p", IpPoolSpec::for_cidr(POOL));
    store.put(
        &keys::resource("ippools", "p"),
        &pool.to_stored().expect("encodes"),
    );
    let node = Resource::new("Node", NODE, json!({}));
    store.put(
        &keys::resource("nodes", NODE),
        &node.to_stored().expect("encodes"),
    );
    store
}

/// `CNI_ARGS` of a Kubernetes pod `default/pod0`, as kubelet's runtime passes them.
pub(super) const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod0";

/// A request as a runtime makes it: `CNI_*` from `env` over the defaults (this container,
/// `eth0` in the pod's namespace, [`POD_ARGS`], Debian's reference plugins on `CNI_PATH`),
/// the config on stdin.
pub(super) fn request(command: &str, conf: &Value, env: &[(&str, &str)]) -> Request {
    let mut vars: BTreeMap<&str, String> = [
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", CONTAINER.into()),
        ("CNI_NETNS", POD_NETNS.into()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_PATH", testkit::bins::REFERENCE_PLUGIN_DIR.into()),
        ("CNI_ARGS", POD_ARGS.into()),
    ]
    .into_iter()
    .collect();
    vars.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    let env = Environment::from_lookup(|k| vars.get(k).cloned()).expect("env");
    Request::new(env, conf.to_string().into_bytes()).expect("request")
}

/// A pod on this node, over the in-memory store and the fake kernel.
pub(super) struct Pod {
    pub store: Arc<MemKv>,
    pub dataplane: Arc<FakeDataplane>,
    /// The IPAM lock and block hints, host-local's leases.
    pub dir: tempfile::TempDir,
    /// The network config (`policy.type: k8s`, Calico IPAM).
    pub conf: Value,
    /// What the Kubernetes API said of the pod.
    pub meta: Option<PodMeta>,
    /// `CNI_ARGS`.
    pub args: String,
}

impl Pod {
    pub fn new() -> Pod {
        let dataplane = FakeDataplane::new();
        dataplane.add_netns(POD_NETNS);
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = json!({"cniVersion": "1.0.0", "name": "net", "type": "calico",
            "nodename": NODE, "nodename_file_optional": true,
            "etcd_endpoints": "http://127.0.0.1:1",
            "ipam_lock_file": dir.path().join("ipam.lock"),
            "policy": {"type": "k8s"}, "ipam": {"type": "calico-ipam"}});
        let store = store();
        // The node's block claimed by a pod come and gone: a commit taken back then leaves
        // the keys as they were (Calico keeps a node's affine block).
        let ipam = Ipam::new(&store, NODE);
        let attrs = [("node".to_string(), NODE.to_string())].into();
        ipam.assign_ip(EARLIER.parse().expect("ip"), "net.earlier", &attrs)
            .expect("assigned");
        ipam.release_by_handle("net.earlier").expect("released");
        Pod {
            store: Arc::new(store),
            dataplane: Arc::new(dataplane),
            dir,
            conf,
            meta: Some(PodMeta::default()),
            args: POD_ARGS.into(),
        }
    }

    /// Asks for this address (`IP=` in `CNI_ARGS`).
    pub fn asking_for(mut self, ip: &str) -> Pod {
        self.args = format!("{POD_ARGS};IP={ip}");
        self
    }

    /// Delegates IPAM to Debian's host-local, leasing from `first` to `last` in 10.1.0.0/24.
    pub fn with_host_local(mut self, first: &str, last: &str) -> Pod {
        self.conf["ipam"] = json!({"type": "host-local",
            "dataDir": self.dir.path().join("host-local"),
            "ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": first, "rangeEnd": last}]]});
        self
    }

    /// host-local's leases of the network (its files named by address).
    pub fn host_local_leases(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("host-local").join("net"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn deps<'a>(&'a self, store: &'a dyn KvStore) -> Deps<'a> {
        Deps {
            store,
            dataplane: &*self.dataplane,
            mtu_file: Path::new("/nonexistent"),
            pod: self.meta.clone(),
            namespace_labels: None,
        }
    }

    /// Runs a verb as the plugin's `main` does (the datastore given).
    fn call<T>(
        &self,
        command: &str,
        conf: &Value,
        store: &dyn KvStore,
        verb: impl FnOnce(&Request, &Context, &Deps<'_>) -> Result<T, CniError>,
    ) -> Result<T, CniError> {
        let req = request(command, conf, &[("CNI_ARGS", &self.args)]);
        let ctx = Context::new(&req)?;
        verb(&req, &ctx, &self.deps(store))
    }

    pub fn add(&self) -> Result<CniResult, CniError> {
        self.add_through(&*self.store)
    }

    /// ADD with another view of the store (one that interferes).
    pub fn add_through(&self, store: &dyn KvStore) -> Result<CniResult, CniError> {
        self.call("ADD", &self.conf, store, add)
    }

    pub fn del(&self) -> Result<(), CniError> {
        self.call("DEL", &self.conf, &*self.store, del)
    }

    /// CHECK of what an ADD answered.
    pub fn check(&self, prev: &CniResult) -> Result<(), CniError> {
        let mut conf = self.conf.clone();
        conf["prevResult"] = prev.to_json(CniVersion::V1_0_0);
        self.call("CHECK", &conf, &*self.store, check)
    }

    /// Runs an ADD that must fail with `code`, and checks that it left the kernel and the
    /// store as they were; returns its message.
    pub fn add_fails_leaving_nothing(&self, code: ErrorCode) -> String {
        let before = self.state();
        let e = self.add().expect_err("a failure");
        assert_eq!(e.code, code, "{}", e.msg);
        self.assert_left_as(&before);
        e.msg
    }

    /// The state a failed ADD must leave as it found.
    pub fn state(&self) -> State {
        State {
            kernel: self.dataplane.kernel(),
            store: self.store.dump(),
        }
    }

    /// Panics unless the kernel is as `before` and the store too, but for blocks (whose
    /// sequence numbers move on with an allocation taken back), which must hold no address
    /// of this pod's handle.
    pub fn assert_left_as(&self, before: &State) {
        self.assert_left_as_but(before, &[]);
    }

    /// As [`Pod::assert_left_as`], but for `written` (keys someone else wrote meanwhile).
    pub fn assert_left_as_but(&self, before: &State, written: &[String]) {
        let now = self.state();
        assert_eq!(now.kernel, before.kernel, "the kernel as it was");
        let blocks = keys::blocks_prefix(true);
        let not_blocks = |s: &[(String, String)]| -> Vec<(String, String)> {
            s.iter()
                .filter(|(k, _)| !k.starts_with(&blocks) && !written.contains(k))
                .cloned()
                .collect()
        };
        assert_eq!(
            not_blocks(&now.store),
            not_blocks(&before.store),
            "the store as it was"
        );
        let handle = format!("net.{CONTAINER}");
        for (key, value) in now.store.iter().filter(|(k, _)| k.starts_with(&blocks)) {
            let block: AllocationBlock = serde_json::from_str(value).expect("a block");
            assert_eq!(
                calico_ipam::block::addresses_of(&block, &handle),
                Vec::<std::net::IpAddr>::new(),
                "{key} holds nothing of {handle}"
            );
        }
    }
}

/// The kernel and the store, to compare.
pub(super) struct State {
    pub kernel: Kernel,
    pub store: Vec<(String, String)>,
}
