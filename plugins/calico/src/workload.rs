//! Who a call is for and what its pieces are named: the host interface, the
//! WorkloadEndpoint's name and key, the handle, the MTU and the pod's MAC.

use calico_datastore::model::{keys, names};
use calico_ipam::cni::Workload;
use calico_netconf::NetConf;
use cni_protocol::{CniError, Request};
use sha1::{Digest, Sha1};
use std::path::Path;

/// Felix's interface prefix: the first entry of `FELIX_INTERFACEPREFIX`, else `cali`.
pub fn interface_prefix(env: impl Fn(&str) -> Option<String>) -> String {
    env("FELIX_INTERFACEPREFIX")
        .and_then(|v| v.split(',').next().map(str::trim).map(str::to_string))
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "cali".to_string())
}

/// The host end's name. For pods, `prefix + sha1("<namespace>.<pod>")[..11]`, bit-exact with
/// Calico since Felix recomputes it; otherwise `cali` + the container ID's first 11
/// characters.
pub fn host_interface(w: &Workload, prefix: &str) -> String {
    if w.orchestrator == "k8s" {
        let digest = Sha1::digest(format!("{}.{}", w.namespace, w.pod).as_bytes());
        let hex = hex::encode(digest);
        format!("{prefix}{}", &hex[..11])
    } else {
        let cid: String = w.container_id.chars().take(11).collect();
        format!("cali{cid}")
    }
}

/// Calico's sign that calico-node runs on this node: ADD and DEL fail while the nodename
/// file (`nodename_file`, default `/var/lib/calico/nodename`) does not exist, even when
/// `nodename` is set, unless `nodename_file_optional` is true. Otherwise endpoints and block
/// affinities could land under a node name no agent serves. Mirrors the check at the top of
/// `cmdAdd`/`cmdDel` in Calico's `cni-plugin/pkg/plugin/plugin.go`.
pub fn require_nodename_file(
    conf: &NetConf,
    exists: impl Fn(&Path) -> bool,
) -> Result<(), CniError> {
    let file = conf.nodename_file();
    if conf.nodename_file_optional || exists(&file) {
        return Ok(());
    }
    Err(CniError::try_again_later(format!(
        "{} does not exist: check that calico-node is running on this node and has written \
         it (or set nodename_file_optional)",
        file.display()
    )))
}

/// Everything derived from the request that the verbs share.
#[derive(Debug, Clone)]
pub struct Context {
    pub conf: NetConf,
    pub node: String,
    pub workload: Workload,
    pub host_ifname: String,
    /// The WorkloadEndpoint's name and etcd key.
    pub wep_name: String,
    pub wep_key: String,
    /// `<network>.<container ID>`.
    pub handle: String,
}

impl Context {
    pub fn new(req: &Request) -> Result<Context, CniError> {
        let conf = NetConf::from_request(req)?;
        let node = calico_ipam::cni::node_name(&conf)?;
        let workload = Workload::from_request(req, &node)?;
        let host_ifname = host_interface(&workload, &interface_prefix(|k| std::env::var(k).ok()));
        let workload_part = if workload.orchestrator == "k8s" {
            workload.pod.clone()
        } else {
            workload.container_id.clone()
        };
        let wep_name = names::workload_endpoint(
            &node,
            workload.orchestrator,
            &workload_part,
            &req.env.ifname,
        );
        let wep_key =
            keys::namespaced_resource("workloadendpoints", &workload.namespace, &wep_name);
        let handle = workload.handle(&req.network_name);
        Ok(Context {
            conf,
            node,
            workload,
            host_ifname,
            wep_name,
            wep_key,
            handle,
        })
    }

    /// Whether IPAM runs in-process (Calico's own IPAM, one datastore connection and one
    /// transaction) or is delegated to the plugin `ipam.type` names.
    pub fn ipam_in_process(&self) -> bool {
        self.conf.ipam.ipam_type == "calico-ipam"
    }

    /// The MTU: `mtu`, else `/var/lib/calico/mtu` (written by calico-node), else the kernel's
    /// default. `require_mtu_file` makes a missing file an error.
    pub fn mtu(&self, mtu_file: &Path) -> Result<Option<u32>, CniError> {
        if self.conf.mtu > 0 {
            return u32::try_from(self.conf.mtu).map(Some).map_err(|_| {
                CniError::invalid_config(format!("mtu {} is out of range", self.conf.mtu))
            });
        }
        // Bounded and non-blocking, as every file a call reads (calico-fsbound).
        match calico_fsbound::read_config_string(
            mtu_file,
            calico_fsbound::SMALL_FILE_LIMIT,
            "the MTU file",
        ) {
            Ok(s) => Ok(s.trim().parse::<u32>().ok().filter(|m| *m > 0)),
            Err(e) if self.conf.require_mtu_file => Err(CniError::invalid_config(format!(
                "require_mtu_file is set but {} cannot be read: {e}",
                mtu_file.display()
            ))),
            Err(_) => Ok(None),
        }
    }
}

/// The kernel's limit on a link's transmit or receive queues.
const MAX_QUEUES: i64 = 4096;

impl Context {
    /// `num_queues`: the queues of each veth end. Calico sets 1 for 0 or less (`cmdAdd`);
    /// more than the kernel's 4096 is code 7 here rather than the kernel's EINVAL later.
    pub fn num_queues(&self) -> Result<u32, CniError> {
        match self.conf.num_queues {
            n if n <= 0 => Ok(1),
            n if n > MAX_QUEUES => Err(CniError::invalid_config(format!(
                "num_queues {n} is out of range: the kernel allows 1 to {MAX_QUEUES}"
            ))),
            n => u32::try_from(n)
                .map_err(|_| CniError::invalid_config(format!("num_queues {n} is out of range"))),
        }
    }
}

/// A random, locally administered, unicast MAC for the pod's interface (what the kernel
/// would pick; chosen here so the endpoint record can be written before the veth exists).
pub fn random_mac() -> [u8; 6] {
    let b = uuid::Uuid::new_v4().into_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    <[u8; 6]>::try_from(parts.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(orch: &'static str, ns: &str, pod: &str, cid: &str) -> Workload {
        Workload {
            node: "n".into(),
            orchestrator: orch,
            namespace: ns.into(),
            pod: pod.into(),
            container_id: cid.into(),
        }
    }

    #[test]
    fn host_interface_names_are_calicos() {
        // Calico's own test vectors.
        assert_eq!(
            host_interface(&workload("k8s", "default", "nginx", "x"), "cali"),
            "calic440f455693"
        );
        assert_eq!(
            host_interface(&workload("k8s", "namespace", "podname", "x"), "eni"),
            "eni82111e10a96"
        );
        let n = host_interface(&workload("cni", "default", "", "0123456789abcdef"), "cali");
        assert_eq!(n, "cali0123456789a");
        assert_eq!(n.len(), 15);
        assert_eq!(interface_prefix(|_| Some("tap,cali".into())), "tap");
        assert_eq!(interface_prefix(|_| None), "cali");
    }

    /// Mirrors plugin.go `cmdAdd` (`if conf.NumQueues <= 0 { conf.NumQueues = 1 }`).
    #[test]
    fn num_queues_default_to_one() {
        let ctx = |n: i64| Context {
            conf: NetConf {
                num_queues: n,
                ..NetConf::default()
            },
            node: "n".into(),
            workload: workload("k8s", "default", "p", "c"),
            host_ifname: "cali0".into(),
            wep_name: String::new(),
            wep_key: String::new(),
            handle: String::new(),
        };
        assert_eq!(ctx(0).num_queues().unwrap(), 1);
        assert_eq!(ctx(-3).num_queues().unwrap(), 1);
        assert_eq!(ctx(4).num_queues().unwrap(), 4);
        assert_eq!(ctx(4096).num_queues().unwrap(), 4096);
        let e = ctx(4097).num_queues().unwrap_err();
        assert_eq!(e.code, cni_protocol::ErrorCode::INVALID_NETWORK_CONFIG);
        assert!(e.msg.contains("num_queues"), "{}", e.msg);
    }

    #[test]
    fn the_nodename_file_is_required_unless_optional() {
        // Mirrors cmdAdd/cmdDel in cni-plugin/pkg/plugin/plugin.go: the file must exist,
        // even with `nodename` set, unless nodename_file_optional.
        let conf = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "calico",
                                           "nodename": "pinned"});
            for (k, v) in extra.as_object().expect("object") {
                c[k] = v.clone();
            }
            NetConf::from_value(c.as_object().expect("object")).expect("valid")
        };
        let none = |_: &Path| false;
        let e = require_nodename_file(&conf(serde_json::json!({})), none).expect_err("gated");
        assert_eq!(e.code, cni_protocol::ErrorCode::TRY_AGAIN_LATER);
        assert!(e.msg.contains("/var/lib/calico/nodename"), "{}", e.msg);
        let e = require_nodename_file(&conf(serde_json::json!({"nodename_file": "/x/name"})), none)
            .expect_err("gated");
        assert!(e.msg.contains("/x/name"), "{}", e.msg);
        let only_x = |p: &Path| p == Path::new("/x/name");
        require_nodename_file(
            &conf(serde_json::json!({"nodename_file": "/x/name"})),
            only_x,
        )
        .expect("present");
        require_nodename_file(
            &conf(serde_json::json!({"nodename_file_optional": true})),
            none,
        )
        .expect("optional");
    }

    #[test]
    fn macs() {
        let m = random_mac();
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
        assert_eq!(parse_mac(&format_mac(&m)), Some(m));
        assert_eq!(format_mac(&[0xee; 6]), "ee:ee:ee:ee:ee:ee");
        assert_eq!(parse_mac("zz:00:00:00:00:00"), None);
    }
}
