//! Calico's route calculation as pure functions: what confd renders into BIRD's configuration
//! (`confd/pkg/backends/calico/bgp_processor.go`, `client.go` `updatePeersV1`, the
//! `bird*.cfg.template`s of release-v3.32) and what Felix's VXLAN manager programs
//! (`felix/calc/vxlan_resolver.go`, `felix/calc/l3_route_resolver.go`,
//! `felix/dataplane/linux/vxlan_mgr.go`, `route_mgr.go`), computed from a [`ClusterView`] of
//! the datastore's resources.
//!
//! - [`bgp_plan`]: router id, AS, listen address, the peers (mesh, global, node-specific,
//!   `peerSelector` with reverse peering), what this node originates, its blackholes and the
//!   export policy for learned routes.
//! - [`kernel_routes`]: which BGP-learned routes go into the kernel and how (Calico's
//!   `calico_kernel_programming` filter: IPIP `tunl0 onlink`, plain, or left to VXLAN).
//! - [`vxlan_plan`] / [`vxlan_plan_v6`]: the local VTEP, remote VTEPs with their ARP/FDB entries and the routes
//!   `<block> via <VTEP> dev vxlan.calico onlink`.
//! - [`PeerKind::status_label`] / [`peer_kind_from_name`]: `calicoctl node status`'s PEER TYPE.
//!
//! Owns the rules only. No I/O, no async runtime, no kernel: everything is a function of its
//! inputs so it is golden-tested (`testdata/routing/*`). Must not import the BGP speaker
//! (`calico-bgp`), netlink or the etcd client; calico-node maps these types onto them.
//!
//! # Passwords (`secretKeyRef`) in etcd mode
//! Calico reads BGP passwords from Kubernetes Secrets in calico-node's namespace. Without the
//! Kubernetes API (etcd mode) calico-node resolves `secretKeyRef { name, key }` through a
//! [`SecretSource`]; the convention is a file [`secret_file_path`]`(root, name, key)` =
//! `<root>/<name>/<key>` with `root` = [`DEFAULT_SECRETS_DIR`] (`/etc/calico/bgp-secrets`),
//! the layout of a Kubernetes Secret mounted as a volume, trailing newline not stripped
//! (as a mounted Secret). Where a file is unwanted, the environment variable
//! [`secret_env_var`]`(name, key)` (`CALICO_BGP_SECRET_<NAME>_<KEY>`, upper case, other
//! characters as `_`) is the fallback. A reference that does not resolve leaves the peer
//! without a password and adds a warning to the plan, as confd does.
//!
//! # Differences from Calico (release-v3.32)
//! - Mesh peers without their own `asNumber` get the global AS, as Calico's templates did up
//!   to v3.31; v3.32's `processMeshPeers` gives them this node's AS (a session that cannot
//!   come up when only this node has its own AS).
//! - BGPPeers are taken in name order; Go iterates a map, so which of two peerings with the
//!   same key wins is random in Calico and fixed here.
//! - `peerIP` with a port matches a Calico node (reverse peering, port lookup) when the
//!   node's effective `listenPort` (its own, else the global one) equals it; Calico's
//!   `nodesWithIPPortAndAS` can reject a node whose own port matches when a different
//!   global port is set.
//! - `peerIP` without `asNumber` takes the AS of the Calico node with that address; Calico
//!   writes `as 0`. Other such peers are skipped with a warning.
//! - No IPv4 address and no `CALICO_ROUTER_ID`: the router id is the name hash (Calico
//!   writes an empty `router id`, which BIRD refuses).
//! - /32 (/128) blocks are originated unconditionally; BIRD exports them only while the
//!   workload's kernel route exists.
//! - A node's `prefixAdvertisements` replace the global ones when non-empty (Calico: when
//!   the field is present, even empty). Standard communities with a part above 65535 are
//!   skipped with a warning (Calico hands them to BIRD, which refuses the configuration).
//! - [`kernel_routes`] applies the pool rules also when the node has no IPv4 network
//!   (Calico then leaves the IPv4 pool statements out), and `CrossSubnet` counts the
//!   caller's local subnets as well as the node's `ipv4Address` network.
//!
//! # Not computed (yet)
//! BGPFilter resources (names are passed through on [`PeerPlan::filters`]);
//! `localWorkloadSelector` peers (`Local_Workload_*`); per-Service advertisement (confd's
//! route generator: single external/LB IPs of Services with local endpoints); elevated
//! priority more-specific routes (`krt_metric < normalRoutePriority`) and the import
//! preference for live migration; `ignoredInterfaces`; WireGuard next hops; Felix's
//! routes for remote tunnel /32s and borrowed addresses.
//!
//! # For the speaker
//! Node-specific sessions between Calico nodes (`peerSelector`, reverse peering) are active
//! on both sides, as in Calico: connection collisions (RFC 4271 §6.8) must be resolved.
//! iBGP split horizon (no learned iBGP route to another iBGP peer unless it is a route
//! reflector client) is the speaker's rule; [`ExportPolicy`] is Calico's filter on top.

pub mod bgp;
pub mod kernel;
pub mod render;
pub mod view;
pub mod vxlan;

pub use bgp::{
    BGP_PORT, BgpPlan, CommunityRule, ExportAction, ExportPolicy, ExportRule, LogLevel,
    NextHopMode, OriginSource, OriginatedRoute, PeerKind, PeerPlan, bgp_plan, hash_router_id,
    is_passive, peer_kind_from_name, peer_name,
};
pub use kernel::{ImportPool, ImportRules, KernelRoute, NextHops, kernel_routes};
pub use view::{ClusterView, Encap, PlanOptions};
pub use vxlan::{
    LocalVtep, RemoteVtep, VXLAN_DEVICE, VXLAN_DEVICE_V6, VxlanPlan, vtep_mac_for_node, vxlan_plan,
    vxlan_plan_v6,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The IPIP tunnel device (Calico's `tunl0`).
pub const IPIP_DEVICE: &str = "tunl0";

/// Where calico-node looks for BGP password files in etcd mode (see the crate doc).
pub const DEFAULT_SECRETS_DIR: &str = "/etc/calico/bgp-secrets";

/// The file holding key `key` of secret `name` under `root`: `<root>/<name>/<key>`. Names
/// with a `/` or equal to `.`/`..` yield `None` (they would leave the directory).
pub fn secret_file_path(root: &Path, name: &str, key: &str) -> Option<PathBuf> {
    let safe = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0']);
    (safe(name) && safe(key)).then(|| root.join(name).join(key))
}

/// The environment variable holding key `key` of secret `name`:
/// `CALICO_BGP_SECRET_<NAME>_<KEY>`, upper case, every character other than `A-Z0-9` as `_`
/// (`my-secrets-1`/`a` → `CALICO_BGP_SECRET_MY_SECRETS_1_A`).
pub fn secret_env_var(name: &str, key: &str) -> String {
    let part = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("CALICO_BGP_SECRET_{}_{}", part(name), part(key))
}

/// Resolves a BGP password's `secretKeyRef`. calico-node implements it with files (see the
/// crate doc) or the environment; tests with a map.
pub trait SecretSource {
    /// The value of `key` in secret `name`, or `None` when it does not exist.
    fn secret(&self, name: &str, key: &str) -> Option<String>;
}

/// No secrets at all: every password reference stays unresolved.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSecrets;

impl SecretSource for NoSecrets {
    fn secret(&self, _name: &str, _key: &str) -> Option<String> {
        None
    }
}

/// Secrets keyed by `(name, key)`.
impl SecretSource for BTreeMap<(String, String), String> {
    fn secret(&self, name: &str, key: &str) -> Option<String> {
        self.get(&(name.to_string(), key.to_string())).cloned()
    }
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("node {0:?} is not in the datastore")]
    UnknownNode(String),
    #[error("node {node:?}: invalid {field} {value:?}")]
    InvalidNodeField {
        node: String,
        field: &'static str,
        value: String,
    },
    #[error("invalid router id {0:?} (CALICO_ROUTER_ID must be an IPv4 address or \"hash\")")]
    InvalidRouterId(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_paths_stay_inside_the_root() {
        let root = Path::new(DEFAULT_SECRETS_DIR);
        assert_eq!(
            secret_file_path(root, "bgp-secrets", "rr-password"),
            Some(PathBuf::from(
                "/etc/calico/bgp-secrets/bgp-secrets/rr-password"
            ))
        );
        assert_eq!(secret_file_path(root, "..", "x"), None);
        assert_eq!(secret_file_path(root, "a/b", "x"), None);
        assert_eq!(secret_file_path(root, "a", ""), None);
        assert_eq!(
            secret_env_var("my-secrets-1", "a"),
            "CALICO_BGP_SECRET_MY_SECRETS_1_A"
        );
    }
}
