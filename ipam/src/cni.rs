//! The `calico-ipam` CNI verbs over a datastore connection. The `calico-ipam` binary runs
//! them on its own connection; the `calico` plugin runs them in-process on the one it already
//! has, with the same result and the same datastore state.

use crate::allocator::{AssignRequest, Extra, Ipam, SnapshotRequest};
use crate::block;
use crate::error::IpamError;
use crate::kubevirt::{self, PodKind};
use crate::lock::{DEFAULT_LOCK_WAIT, HostLock};
use crate::snapshot_cache::{CachingStore, PodCall};
use calico_datastore::model::{keys, names};
use calico_datastore::{KvStore, PluginStore, StoreError};
use calico_netconf::NetConf;
use cni_protocol::{CniError, CniResult, ErrorCode, IpConfig, Request, Route};
use ipnet::IpNet;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// Calico's allocation timeout, started once the host lock is held.
pub const ALLOCATION_BUDGET: Duration = Duration::from_secs(90);

/// Who a call is for, from `CNI_ARGS` and the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub node: String,
    /// `k8s` with `K8S_POD_NAMESPACE`/`K8S_POD_NAME`, else `cni`.
    pub orchestrator: &'static str,
    pub namespace: String,
    pub pod: String,
    pub container_id: String,
}

impl Workload {
    /// The workload `CNI_ARGS` name. On ADD `K8S_POD_NAMESPACE`, `K8S_POD_NAME` and
    /// `CNI_TEST_NAMESPACE` must be names Kubernetes accepts (code 4 naming the field): keys
    /// are built from them. DEL, CHECK and GC must always finish for what exists, so there
    /// they need only be key-safe ([`names::key_safe`]).
    pub fn from_request(req: &Request, node: &str) -> Result<Workload, CniError> {
        let args = &req.env.args;
        let strict = req.env.command == cni_protocol::Command::Add;
        let checked = |field: &str, check: fn(&str) -> Result<(), String>| {
            let check = if strict { check } else { names::key_safe };
            args.get_non_empty(field)
                .map(|v| {
                    check(v).map(|()| v).map_err(|why| {
                        CniError::new(
                            ErrorCode::INVALID_ENVIRONMENT,
                            format!("invalid CNI_ARGS {field} {}: {why}", shown(v)),
                        )
                    })
                })
                .transpose()
        };
        let namespace = checked("K8S_POD_NAMESPACE", names::namespace)?;
        let pod = checked("K8S_POD_NAME", names::pod_name)?;
        let test_namespace = checked("CNI_TEST_NAMESPACE", names::namespace)?;
        Ok(match (namespace, pod) {
            (Some(ns), Some(pod)) => Workload {
                node: node.to_string(),
                orchestrator: "k8s",
                namespace: ns.to_string(),
                pod: pod.to_string(),
                container_id: req.env.container_id.clone(),
            },
            _ => Workload {
                node: node.to_string(),
                orchestrator: "cni",
                namespace: test_namespace.unwrap_or("default").to_string(),
                pod: String::new(),
                container_id: req.env.container_id.clone(),
            },
        })
    }

    /// `<network>.<container ID>`.
    pub fn handle(&self, network: &str) -> String {
        format!("{network}.{}", self.container_id)
    }

    /// The Calico v2 handle, still released on DEL: `<namespace>.<pod>`, or the container ID.
    pub fn legacy_handle(&self) -> String {
        if self.orchestrator == "k8s" {
            format!("{}.{}", self.namespace, self.pod)
        } else {
            self.container_id.clone()
        }
    }

    /// The attributes Calico's garbage collector relies on: without `pod` and `namespace`
    /// an allocation counts as in use forever.
    pub fn attributes(&self, now: SystemTime) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        a.insert("node".to_string(), self.node.clone());
        a.insert(
            "timestamp".to_string(),
            calico_datastore::model::time::go_utc_string(now),
        );
        if self.orchestrator == "k8s" {
            a.insert("namespace".to_string(), self.namespace.clone());
            a.insert("pod".to_string(), self.pod.clone());
        }
        a
    }
}

/// The node's name (config, nodename file, hostname); code 7 if none can be found.
pub fn node_name(conf: &NetConf) -> Result<String, CniError> {
    // Bounded and non-blocking: a FIFO or /dev/zero named by nodename_file is an error at
    // once (code 7 naming the setting); a missing file falls through to the host name.
    let unreadable = std::cell::RefCell::new(None);
    let read = |p: &std::path::Path| match calico_fsbound::read_config_string(
        p,
        calico_fsbound::SMALL_FILE_LIMIT,
        "nodename_file",
    ) {
        Ok(s) => Some(s),
        Err(e) if e.is_missing() => None,
        Err(e) => {
            unreadable.replace(Some(e));
            None
        }
    };
    let node = conf.nodename(read, machine_hostname);
    if let Some(e) = unreadable.into_inner() {
        return Err(CniError::invalid_config(e.to_string()));
    }
    let node = node.ok_or_else(|| {
        CniError::invalid_config(format!(
            "cannot determine the node name: set nodename, or write {}",
            conf.nodename_file().display()
        ))
    })?;
    // Keys are built from it (affinities, endpoint names): `a/b` or `..` would land outside
    // their prefix. Nothing stricter: Calico's plugin never validates the node name, and
    // clusters with names such as `Worker1` or `node_1` (a configured nodename is used as
    // is) must keep working, on ADD as on DEL.
    names::key_safe(&node).map_err(|why| {
        CniError::invalid_config(format!("invalid node name {}: {why}", shown(&node)))
    })?;
    Ok(node)
}

/// The OS host name, lower-cased and trimmed as libcalico-go's `names.Hostname` gives it.
fn machine_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_lowercase())
}

/// A name from outside, quoted for an error message and cut short when long.
fn shown(name: &str) -> String {
    const SHOWN: usize = 64;
    match name.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &name[..cut], name.len()),
        None => format!("{name:?}"),
    }
}

/// The datastore per the config: through the node agent's etcd connection when it serves
/// the same etcd, else a connection of the call's own (see calico-datastore's `agent`).
/// Calico's Kubernetes datastore is not supported.
pub fn connect(conf: &NetConf) -> Result<PluginStore, CniError> {
    match conf.datastore_type(|k| std::env::var(k).ok()).as_str() {
        "etcdv3" => {}
        other => {
            return Err(CniError::new(
                ErrorCode::UNSUPPORTED_FIELD,
                format!("datastore_type {other:?} is not supported: set etcd_endpoints (etcdv3)"),
            ));
        }
    }
    let settings = conf.etcd(|k| std::env::var(k).ok());
    calico_netconf::check_etcd(&settings)?;
    PluginStore::connect(&settings).map_err(store_error)
}

/// Datastore failures as CNI errors: unreachable is "try again later" (code 11).
/// Takes the store's error or the etcd client's.
pub fn store_error(e: impl Into<StoreError>) -> CniError {
    CniError::from(IpamError::Store(e.into()))
}

/// Addresses asked for explicitly: `IP=` in CNI_ARGS (comma-separated), the `ips`
/// capability (`runtimeConfig.ips`), `args.cni.ips`, or `ipam.ipAddrs` in the config.
pub fn requested_addresses(req: &Request) -> Result<Vec<IpAddr>, CniError> {
    let mut out = Vec::new();
    // `IP=` takes bare addresses (Go's `net.ParseIP`): a prefix length is refused.
    if let Some(ip) = req.env.args.get_non_empty("IP") {
        let listed: Vec<&str> = ip
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let parsed = listed
            .iter()
            .map(|s| {
                s.parse::<IpAddr>().map_err(|_| {
                    CniError::invalid_config(format!(
                        "CNI_ARGS IP: {s:?} is not an IP address (a bare address, without a \
                         prefix length)"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.extend(no_duplicates("CNI_ARGS IP", parsed)?);
    }
    let sources = [
        (
            "runtimeConfig.ips",
            req.runtime_config().and_then(|r| r.get("ips")),
        ),
        (
            "args.cni.ips",
            req.config
                .get("args")
                .and_then(|a| a.get("cni"))
                .and_then(|c| c.get("ips")),
        ),
        (
            "ipam.ipAddrs",
            req.config.get("ipam").and_then(|i| i.get("ipAddrs")),
        ),
    ];
    for (field, value) in sources {
        let parsed = string_list(value, field)?
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                // The capability's CIDR form (`10.0.0.5/24`) names the address.
                let addr = s.split('/').next().unwrap_or(s);
                addr.parse::<IpAddr>().map_err(|_| {
                    CniError::invalid_config(format!(
                        "{field}: requested address {s:?} is not an IP address"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.extend(no_duplicates(field, parsed)?);
    }
    Ok(out)
}

/// `value` as a list of strings: absent or `null` is empty; anything else than an array of
/// strings is code 7 naming the field (or the element).
fn string_list<'v>(value: Option<&'v Value>, field: &str) -> Result<Vec<&'v str>, CniError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().ok_or_else(|| {
                    CniError::invalid_config(format!(
                        "{field}[{i}] must be a string (an IP address), not {v}"
                    ))
                })
            })
            .collect(),
        Some(other) => Err(CniError::invalid_config(format!(
            "{field} must be a list of IP addresses, not {}",
            json_kind(other)
        ))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Refuses an address listed twice in one field (code 7), rather than failing later with
/// "already assigned" for the request's own duplicate.
fn no_duplicates(field: &str, ips: Vec<IpAddr>) -> Result<Vec<IpAddr>, CniError> {
    let mut seen = BTreeSet::new();
    for ip in &ips {
        if !seen.insert(*ip) {
            return Err(CniError::invalid_config(format!(
                "{field}: address {ip} is listed twice"
            )));
        }
    }
    Ok(ips)
}

/// The node's affine blocks as last seen, kept next to the host lock (and written only
/// under it), so an ADD reads them with everything else in one round trip. Only a hint: the
/// affinities in the same snapshot decide which blocks are used.
mod block_hint {
    use ipnet::IpNet;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    /// Block to "had room when last seen".
    pub type Hint = BTreeMap<IpNet, bool>;

    pub fn path(lock_file: &Path) -> PathBuf {
        crate::snapshot_cache::beside_lock(lock_file, "ipam-affine-blocks")
    }

    /// Lines `<cidr> room` or `<cidr> full` (a bare CIDR counts as room).
    pub fn read(lock_file: &Path) -> Hint {
        std::fs::read_to_string(path(lock_file))
            .map(|s| {
                s.lines()
                    .filter_map(|l| {
                        let mut parts = l.split_whitespace();
                        let cidr = parts.next()?.parse().ok()?;
                        Some((cidr, parts.next() != Some("full")))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn write(lock_file: &Path, hint: &Hint) {
        let target = path(lock_file);
        let text: String = hint
            .iter()
            .map(|(b, room)| format!("{b} {}\n", if *room { "room" } else { "full" }))
            .collect();
        let done = crate::snapshot_cache::overwrite_in_place(&target, text.into_bytes());
        if let Err(e) = done {
            log::debug!("cannot update {}: {e}", target.display());
        }
    }
}

/// The IPAM result: each address with its block's mask, and a route per block (none for a
/// live-migration target pod: Calico's IPAM returns none so that its host routes are left to
/// Felix until the migration completes).
fn result_of(allocation: &Allocation) -> CniResult {
    let addresses = &allocation.addresses;
    let mut blocks = BTreeSet::new();
    let ips = addresses
        .iter()
        .map(|a| {
            blocks.insert(a.trunc());
            IpConfig {
                interface: None,
                address: *a,
                gateway: None,
            }
        })
        .collect();
    let routes = if allocation.host_routes {
        blocks.into_iter().map(Route::to).collect()
    } else {
        Vec::new()
    };
    CniResult {
        ips,
        routes,
        ..CniResult::default()
    }
}

/// What an ADD allocated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    /// With their blocks' masks.
    pub addresses: Vec<IpNet>,
    /// False for a KubeVirt live-migration target pod: the VM's addresses stay routed to
    /// the source pod until the migration completes (Calico's IPAM returns no routes then).
    pub host_routes: bool,
}

/// A VM pod's side of an ADD or DEL: its VMI, and whether the VM keeps its addresses.
struct VmPod {
    vmi: Box<calico_k8s::kubevirt::PodVmi>,
    handle: String,
}

/// What a caller may change about an allocation (Calico's pod annotations do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Replace `ipam.ipv4_pools` / `ipv6_pools`.
    pub v4_pools: Option<Vec<String>>,
    pub v6_pools: Option<Vec<String>>,
    /// Assign exactly these (in addition to what `CNI_ARGS`/config ask for).
    pub addresses: Vec<IpAddr>,
    /// The pod namespace's labels (pools' `namespaceSelector`).
    pub namespace_labels: BTreeMap<String, String>,
    /// Replace `ipam.assign_ipv4` / `assign_ipv6` (the `ipFamilies` annotation).
    pub families: Option<(bool, bool)>,
}

/// Builds writes to commit together with the allocation (or release), from the addresses and
/// the snapshot (which holds the caller's `extra_keys`); called again after a conflict.
pub type CommitWith<'a, T> = dyn FnMut(&[T], &crate::Snapshot) -> Result<Extra, IpamError> + 'a;

/// Allocates under `<network>.<container>` per the config, the addresses asked for and
/// `ov`, committing `with(addresses, snapshot)` in the same transaction; `extra_keys` are
/// read in the same round trip as IPAM's own objects. A KubeVirt VM's pod gets the VM's
/// addresses (see [`kubevirt`]).
#[allow(clippy::too_many_arguments)]
pub fn allocate(
    store: &dyn KvStore,
    conf: &NetConf,
    req: &Request,
    node: &str,
    ov: &Overrides,
    extra_keys: &[String],
    with: &mut CommitWith<'_, IpNet>,
) -> Result<Vec<IpNet>, CniError> {
    allocate_detailed(store, conf, req, node, ov, extra_keys, with).map(|a| a.addresses)
}

/// [`allocate`], saying also whether the pod's host routes are to be set.
#[allow(clippy::too_many_arguments)]
pub fn allocate_detailed(
    store: &dyn KvStore,
    conf: &NetConf,
    req: &Request,
    node: &str,
    ov: &Overrides,
    extra_keys: &[String],
    with: &mut CommitWith<'_, IpNet>,
) -> Result<Allocation, CniError> {
    let workload = Workload::from_request(req, node)?;
    // Before the lock, as Calico does: only `virt-launcher-*` pods cost API calls.
    let vm = match kubevirt::pod_kind(conf, &workload)? {
        PodKind::Ordinary => None,
        PodKind::Vm(vmi) => Some(VmPod {
            handle: kubevirt::vm_handle(&req.network_name, &vmi.vmi_namespace, &vmi.vmi_name),
            vmi,
        }),
        PodKind::Gone => {
            return Err(CniError::new(
                ErrorCode::UNKNOWN_CONTAINER,
                format!(
                    "failed to get VMI info: pod {}/{} not found",
                    workload.namespace, workload.pod
                ),
            ));
        }
    };
    let container_handle = workload.handle(&req.network_name);
    let mut attrs = workload.attributes(SystemTime::now());
    // The attachment's interface: a repeated ADD of this attachment gets its addresses back,
    // another interface of the same container (Multus) its own (the handle alone is the
    // container's).
    let attachment = (
        crate::allocator::ATTACHMENT_ATTRIBUTE.to_string(),
        req.env.ifname.clone(),
    );
    if !req.env.ifname.is_empty() {
        attrs.insert(attachment.0.clone(), attachment.1.clone());
    }
    let mut wanted = requested_addresses(req)?;
    wanted.extend(&ov.addresses);
    let (v4, v6) = ov
        .families
        .unwrap_or((conf.ipam.assign_ipv4(), conf.ipam.assign_ipv6()));
    if wanted.is_empty() && !v4 && !v6 {
        return Err(CniError::invalid_config(
            "ipam.assign_ipv4 is \"false\" and ipam.assign_ipv6 is not \"true\": nothing to assign",
        ));
    }
    let started = std::time::Instant::now();
    let lock_file = conf.ipam_lock_file();
    let lock = HostLock::acquire(&lock_file, DEFAULT_LOCK_WAIT)?;
    // An ordinary pod's ADD may plan from the node's last snapshot (see `snapshot_cache`);
    // one that asks for addresses or is a VM's reads what exists. A failure planned from the
    // snapshot (the Node registered or a pool added since, say) is tried again from the store.
    let mut serve = vm.is_none() && wanted.is_empty();
    let hint = block_hint::read(&lock_file);
    let (all, room, host_routes, affinities, handle, store) = loop {
        let store = CachingStore::new(store, &lock_file, node, serve)
            .for_pod(&container_handle, PodCall::Add);
        let outcome = (|| -> Result<_, CniError> {
            let ipam = Ipam::new(&store, node).with_budget(ALLOCATION_BUDGET);
            // Prefetch the node's blocks that had room: the usual allocation needs no second read.
            let likely: Vec<IpNet> = hint
                .iter()
                .filter(|(_, room)| **room)
                .map(|(b, _)| *b)
                .collect();
            let mut handles = vec![container_handle.as_str()];
            handles.extend(vm.as_ref().map(|v| v.handle.as_str()));
            let snap = ipam.read_snapshot(&SnapshotRequest {
                handles: &handles,
                blocks: &likely,
                keys: extra_keys,
            })?;
            log::debug!(
                "IPAM lock waited {:?}; snapshot {} after {:?}",
                lock.waited,
                if store.served_from_snapshot() {
                    "taken from the node's last one"
                } else {
                    "read"
                },
                started.elapsed()
            );
            if vm.as_ref().is_some_and(|v| v.vmi.is_migration_target())
                && !snap.vm_address_persistence
            {
                return Err(IpamError::MigrationTargetRejected.into());
            }
            let vm = vm.as_ref().filter(|_| snap.vm_address_persistence);
            let handle = vm
                .as_ref()
                .map_or_else(|| container_handle.clone(), |v| v.handle.clone());
            let request = AssignRequest {
                handle: handle.clone(),
                attrs: match &vm {
                    Some(v) => kubevirt::vm_attributes(attrs.clone(), &v.vmi),
                    None => attrs.clone(),
                },
                num_v4: usize::from(v4),
                num_v6: usize::from(v6),
                v4_pools: ov
                    .v4_pools
                    .clone()
                    .unwrap_or_else(|| conf.ipam.ipv4_pools.clone()),
                v6_pools: ov
                    .v6_pools
                    .clone()
                    .unwrap_or_else(|| conf.ipam.ipv6_pools.clone()),
                namespace_labels: ov.namespace_labels.clone(),
                intended_use: crate::pools::PoolUse::Workload,
                reuse_if: Some(attachment.clone()).filter(|(_, ifname)| !ifname.is_empty()),
            };

            let mut host_routes = true;
            let (all, room) = if let Some(v) = vm {
                let target = v.vmi.is_migration_target();
                let got = ipam.assign_vm_with(&snap, &request, &wanted, target, &mut |a, s| {
                    with(&a.addresses, s)
                })?;
                if got.reused {
                    log::info!(
                        "VM {}/{}: its addresses {:?} are reused by pod {}{}",
                        v.vmi.vmi_namespace,
                        v.vmi.vmi_name,
                        got.addresses,
                        workload.pod,
                        if target { " (migration target)" } else { "" }
                    );
                }
                host_routes = !target;
                let room = got.addresses.iter().map(|a| (a.trunc(), true)).collect();
                (got.addresses, room)
            } else if !wanted.is_empty() {
                let got = ipam.assign_ips_with(
                    &snap,
                    &wanted,
                    &handle,
                    &request.attrs,
                    &mut |ips, s| with(ips, s),
                )?;
                let room = got.iter().map(|a| (a.trunc(), true)).collect();
                (got, room)
            } else {
                let a = ipam.auto_assign_with(&snap, &request, &mut |a, s| with(&a.all(), s))?;
                (a.all(), a.room)
            };
            log::debug!("assigned after {:?}", started.elapsed());
            let affinities: Vec<IpNet> = snap.affinities.keys().copied().collect();
            Ok((all, room, host_routes, affinities, handle))
        })();
        match outcome {
            Ok((all, room, host_routes, affinities, handle)) => {
                break (all, room, host_routes, affinities, handle, store);
            }
            Err(e) if store.may_retry_from_the_store() => {
                log::debug!("planned from the node's snapshot: {e}; again from the store");
                store.discard();
                serve = false;
            }
            Err(e) => return Err(e),
        }
    };
    log::info!("assigned {all:?} to {handle} on node {node}");
    // The node's blocks now: its affinities (room as last seen, else assumed), updated with
    // what this allocation saw.
    let mut known: block_hint::Hint = affinities
        .iter()
        .map(|b| (*b, hint.get(b).copied().unwrap_or(true)))
        .collect();
    known.extend(room);
    if known != hint {
        block_hint::write(&lock_file, &known);
    }
    store.finish();
    Ok(Allocation {
        addresses: all,
        host_routes,
    })
}

/// ADD: allocates per the config (or the addresses asked for) under `<network>.<container>`.
pub fn add(
    store: &dyn KvStore,
    conf: &NetConf,
    req: &Request,
    node: &str,
) -> Result<CniResult, CniError> {
    add_with(store, conf, req, node, &Overrides::default())
}

/// As [`add`], with overrides (the binary passes the namespace's labels).
pub fn add_with(
    store: &dyn KvStore,
    conf: &NetConf,
    req: &Request,
    node: &str,
    ov: &Overrides,
) -> Result<CniResult, CniError> {
    let allocation = allocate_detailed(store, conf, req, node, ov, &[], &mut no_extra)?;
    Ok(result_of(&allocation))
}

/// Releases the handle and Calico's legacy handle (missing is success), committing
/// `with(released, snapshot)` in the same transaction; `extra_keys` are read in the same
/// round trip. A KubeVirt VM's pod only gives up its claim on the VM's addresses, which are
/// released with the VM (see [`Ipam::release_vm_with`]); a `virt-launcher-*` pod the
/// Kubernetes API no longer has releases nothing (Calico's DEL).
pub fn release(
    store: &dyn KvStore,
    conf: &NetConf,
    req: &Request,
    node: &str,
    extra_keys: &[String],
    with: &mut CommitWith<'_, IpAddr>,
) -> Result<Vec<IpAddr>, CniError> {
    let workload = Workload::from_request(req, node)?;
    let kind = kubevirt::pod_kind(conf, &workload)?;
    let vm = match &kind {
        PodKind::Vm(vmi) => Some(VmPod {
            handle: kubevirt::vm_handle(&req.network_name, &vmi.vmi_namespace, &vmi.vmi_name),
            vmi: vmi.clone(),
        }),
        _ => None,
    };
    let mut handles = if kind == PodKind::Gone {
        log::info!(
            "pod {}/{} already deleted, nothing to release",
            workload.namespace,
            workload.pod
        );
        Vec::new()
    } else {
        vec![workload.handle(&req.network_name), workload.legacy_handle()]
    };
    handles.extend(vm.as_ref().map(|v| v.handle.clone()));
    let lock_file = conf.ipam_lock_file();
    let _lock = HostLock::acquire(&lock_file, DEFAULT_LOCK_WAIT)?;
    // The handles and the block(s) the pod's addresses are in, in one round trip: the ADD's
    // result (prevResult) says which addresses, the hint which of the node's blocks. An
    // ordinary pod's DEL may take them from the node's snapshot and the record its ADD left
    // (see `snapshot_cache`); a failure planned from them is tried again from the store.
    let hint = block_hint::read(&lock_file);
    let prev: Vec<IpAddr> = req
        .prev_result()
        .ok()
        .flatten()
        .map(|r| r.ips.iter().map(|i| i.address.addr()).collect())
        .unwrap_or_default();
    let likely: Vec<IpNet> = hint
        .keys()
        .filter(|b| prev.is_empty() || prev.iter().any(|ip| b.contains(ip)))
        .copied()
        .collect();
    let handle_refs: Vec<&str> = handles.iter().map(String::as_str).collect();
    let mut serve = vm.is_none() && kind != PodKind::Gone;
    let (released, store) = loop {
        let store = CachingStore::new(store, &lock_file, node, serve)
            .for_pod(&workload.handle(&req.network_name), PodCall::Del);
        let outcome = (|| -> Result<_, CniError> {
            let ipam = Ipam::new(&store, node).with_budget(ALLOCATION_BUDGET);
            let snap = ipam.read_snapshot(&SnapshotRequest {
                handles: &handle_refs,
                blocks: &likely,
                keys: extra_keys,
            })?;
            Ok(match vm.as_ref().filter(|_| snap.vm_address_persistence) {
                Some(v) => {
                    let mut only_vm = snap.clone();
                    only_vm.handles.retain(|h, _| *h == v.handle);
                    ipam.release_vm_with(
                        &only_vm,
                        &v.handle,
                        (&workload.namespace, &workload.pod),
                        v.vmi.vm_being_deleted(),
                        &mut |ips, s| with(ips, s),
                    )?
                }
                None => {
                    // Persistence off: a VM pod is an ordinary pod.
                    let mut pods = snap.clone();
                    if let Some(v) = &vm {
                        pods.handles.remove(&v.handle);
                    }
                    ipam.release_handles_with(&pods, None, &mut |ips, s| with(ips, s))?
                }
            })
        })();
        match outcome {
            Ok(released) => break (released, store),
            Err(e) if store.may_retry_from_the_store() => {
                log::debug!("planned from the node's snapshot: {e}; again from the store");
                store.discard();
                serve = false;
            }
            Err(e) => return Err(e),
        }
    };
    if !released.is_empty() {
        log::info!("released {released:?} of {handles:?}");
        let mut updated = hint.clone();
        for b in updated
            .iter_mut()
            .filter(|(b, _)| released.iter().any(|ip| b.contains(ip)))
        {
            *b.1 = true;
        }
        if updated != hint {
            block_hint::write(&lock_file, &updated);
        }
    }
    store.finish();
    Ok(released)
}

/// DEL: releases the handle and Calico's legacy handle. Missing is success.
pub fn del(store: &dyn KvStore, conf: &NetConf, req: &Request, node: &str) -> Result<(), CniError> {
    release(store, conf, req, node, &[], &mut no_extra).map(|_| ())
}

/// No writes of the caller's own alongside IPAM's.
fn no_extra<T>(_: &[T], _: &crate::Snapshot) -> Result<Extra, IpamError> {
    Ok(Extra::default())
}

/// CHECK: the handle still owns exactly the addresses of `prevResult`.
pub fn check(store: &dyn KvStore, req: &Request, node: &str) -> Result<(), CniError> {
    let prev = req.prev_result()?.ok_or_else(|| {
        CniError::invalid_config("CHECK needs prevResult (the result of the ADD)")
    })?;
    let workload = Workload::from_request(req, node)?;
    let ipam = Ipam::new(store, node);
    // A VM pod's addresses are under the VM's handle (the config only says how to reach the
    // Kubernetes API, and only `virt-launcher-*` pods need it).
    let conf = NetConf::from_request(req)?;
    let handle = match kubevirt::pod_kind(&conf, &workload)? {
        PodKind::Vm(vmi) if ipam.snapshot(&[])?.vm_address_persistence => {
            kubevirt::vm_handle(&req.network_name, &vmi.vmi_namespace, &vmi.vmi_name)
        }
        _ => workload.handle(&req.network_name),
    };
    let owned: BTreeSet<IpAddr> = ipam.addresses_of_handle(&handle)?.into_iter().collect();
    let expected: BTreeSet<IpAddr> = prev.ips.iter().map(|i| i.address.addr()).collect();
    if owned == expected {
        return Ok(());
    }
    let missing: Vec<_> = expected.difference(&owned).collect();
    let extra: Vec<_> = owned.difference(&expected).collect();
    Err(CniError::new(
        ErrorCode::CHECK_FAILED,
        format!("handle {handle} does not own exactly the addresses of prevResult"),
    )
    .with_details(format!(
        "not allocated to it: {missing:?}; allocated to it but not in prevResult: {extra:?}"
    )))
}

/// The writes GC commits with a candidate's release.
pub type GcWith<'a> =
    dyn FnMut(&crate::gc::Candidate, &[IpAddr], &crate::Snapshot) -> Result<Extra, IpamError> + 'a;

/// GC: releases this node's allocations of this network whose container is not among the
/// valid attachments and which `liveness` does not vouch for (see [`crate::gc`]), each with
/// `with`'s writes (the caller's own records of the same container, read in the same round
/// trip as the allocation: `keys_of`) in its transaction.
/// A failure on one handle does not stop the others; all are reported.
pub fn gc_with(
    store: &dyn KvStore,
    conf: &NetConf,
    req: &Request,
    node: &str,
    liveness: &crate::gc::Liveness<'_>,
    keys_of: &dyn Fn(&crate::gc::Candidate) -> Vec<String>,
    with: &mut GcWith<'_>,
) -> Result<(), CniError> {
    let valid: BTreeSet<String> = req
        .valid_attachments()?
        .into_iter()
        .map(|a| a.container_id)
        .collect();
    let candidates = crate::gc::candidates(store, &req.network_name, node, &valid)?;
    // Judged before the host lock is taken: asking the kernel visits every namespace, and
    // must not hold up the node's ADDs and DELs meanwhile. A candidate is a container the
    // runtime no longer has, so nothing can make it alive again.
    let mut errors = Vec::new();
    let mut stale = Vec::new();
    for c in candidates {
        match liveness.judge(&c) {
            Ok(crate::gc::Verdict::Stale) => stale.push(c),
            Ok(kept) => log::info!("GC kept {} ({:?}): {kept:?}", c.handle, c.addresses),
            Err(e) => errors.push(format!("{}: {e}", c.handle)),
        }
    }
    if !stale.is_empty() {
        let lock_file = conf.ipam_lock_file();
        let _lock = HostLock::acquire(&lock_file, DEFAULT_LOCK_WAIT)?;
        // What GC reads and writes keeps the node's snapshot current; a released pod's
        // record goes (its DEL will never come).
        let cache = CachingStore::new(store, &lock_file, node, false);
        let ipam = Ipam::new(&cache, node).with_budget(ALLOCATION_BUDGET);
        for c in stale {
            let keys = keys_of(&c);
            match crate::gc::release(&ipam, &c, &keys, &mut |ips, snap| with(&c, ips, snap)) {
                Ok(ips) => {
                    if !ips.is_empty() {
                        log::info!("GC released {ips:?} of {}", c.handle);
                    }
                    crate::snapshot_cache::forget_pod(&lock_file, &c.handle);
                }
                Err(e) => errors.push(format!("{}: {e}", c.handle)),
            }
        }
        cache.finish();
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::DATASTORE,
            format!("GC failed for {} handle(s)", errors.len()),
        )
        .with_details(errors.join("; ")))
    }
}

/// Every address in use on the host (the kernel's word; see [`crate::gc`]).
pub type InUseFn<'a> = dyn Fn() -> Result<BTreeSet<IpAddr>, String> + 'a;

/// GC for the `calico-ipam` binary: no records of its own; an allocation is alive while one
/// of its addresses is in use on the host (`in_use`, asked once), and young ones get
/// [`crate::gc::DEFAULT_GRACE`].
pub fn gc(
    store: &dyn KvStore,
    conf: &NetConf,
    req: &Request,
    node: &str,
    in_use: &InUseFn<'_>,
) -> Result<(), CniError> {
    let in_use = crate::gc::InUse::new(in_use);
    let alive = |c: &crate::gc::Candidate| in_use.any(&c.addresses);
    let liveness = crate::gc::Liveness {
        alive: &alive,
        grace: crate::gc::DEFAULT_GRACE,
        now: SystemTime::now(),
    };
    gc_with(
        store,
        conf,
        req,
        node,
        &liveness,
        &|_| Vec::new(),
        &mut |_, ips, snap| no_extra(ips, snap),
    )
}

/// STATUS: 50 if the datastore cannot be reached or the node is not registered (no Calico
/// Node resource yet: an ADD would fail), 51 if no pool for this node has a free address in
/// the families the config assigns.
pub fn status(store: &dyn KvStore, conf: &NetConf, node: &str) -> Result<(), CniError> {
    let unavailable = |e: StoreError| CniError::new(ErrorCode::PLUGIN_NOT_AVAILABLE, e.to_string());
    let ipam = Ipam::new(store, node);
    let snap = ipam.snapshot(&[]).map_err(|e| match e {
        IpamError::Store(s) => unavailable(s),
        other => CniError::from(other),
    })?;
    if !snap.node_registered {
        return Err(CniError::new(
            ErrorCode::PLUGIN_NOT_AVAILABLE,
            IpamError::NodeNotFound {
                node: node.to_string(),
            }
            .to_string(),
        ));
    }
    for (v4, wanted, requested) in [
        (true, conf.ipam.assign_ipv4(), &conf.ipam.ipv4_pools),
        (false, conf.ipam.assign_ipv6(), &conf.ipam.ipv6_pools),
    ] {
        if !wanted {
            continue;
        }
        let no_room =
            |why: String| CniError::new(ErrorCode::PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY, why);
        let pools = crate::pools::choose(
            &snap.pools,
            &snap.unusable_pools,
            requested,
            v4,
            node,
            &snap.node_labels,
            &BTreeMap::new(),
        )
        .map_err(|e| no_room(e.to_string()))?;
        let blocks = store.list(&keys::blocks_prefix(v4)).map_err(unavailable)?;
        // The block limit counts the node's blocks in these pools only.
        let ours = snap
            .affinities
            .keys()
            .filter(|c| matches!(c, IpNet::V4(_)) == v4)
            .filter(|c| pools.iter().any(|p| p.cidr.contains(*c)))
            .count();
        let reserved = |ip: IpAddr| snap.is_reserved(ip);
        let now = SystemTime::now();
        let room = pools.iter().any(|pool| {
            let in_pool: Vec<_> = blocks
                .iter()
                .filter_map(|kv| {
                    let mut b: calico_datastore::model::AllocationBlock =
                        serde_json::from_slice(&kv.value).ok()?;
                    // A corrupt block offers no room (allocations never use it).
                    b.validate(keys::block_cidr_of(&kv.key).as_ref()).ok()?;
                    block::collect_cooled(&mut b, snap.settings.ip_cooldown_seconds, now);
                    pool.cidr.contains(&b.cidr).then_some(b)
                })
                .collect();
            let usable_block = in_pool.iter().any(|b| {
                block::free(b, &reserved) > 0
                    && (!snap.settings.strict_affinity || block::affine_node(b) == Some(node))
            });
            // A free block, or an empty one another node claimed long enough ago.
            let reclaimable = |b: &calico_datastore::model::AllocationBlock| {
                block::is_empty(b)
                    && block::free(b, &reserved) > 0
                    && block::affine_node(b).is_some_and(|n| n != node)
                    && b.affinity_claim_time
                        .as_deref()
                        .and_then(calico_datastore::model::time::parse_rfc3339)
                        .is_none_or(|t| {
                            now.duration_since(t).unwrap_or_default()
                                >= crate::allocator::EMPTY_BLOCK_MIN_RECLAIM_AGE
                        })
            };
            let can_claim = snap.settings.auto_allocate_blocks
                && ours < snap.settings.max_blocks_per_host
                && ((in_pool.len() as u128) < pool.block_count()
                    || in_pool.iter().any(reclaimable));
            usable_block || can_claim
        });
        if !room {
            return Err(no_room(format!(
                "no {} pool for node {node} has a free address",
                if v4 { "IPv4" } else { "IPv6" }
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_protocol::Environment;
    use serde_json::json;

    fn request(cni_args: &str, conf: Value) -> Request {
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", cni_args),
        ];
        let env = Environment::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .expect("env");
        let mut c = json!({"cniVersion": "1.0.0", "name": "net", "type": "calico-ipam",
                           "ipam": {"type": "calico-ipam"}});
        for (k, v) in conf.as_object().expect("object") {
            c[k] = v.clone();
        }
        Request::new(env, c.to_string().into_bytes()).expect("request")
    }

    fn refused(cni_args: &str, conf: Value) -> CniError {
        requested_addresses(&request(cni_args, conf)).expect_err("refused")
    }

    /// Issue 12 #9 (findings #9): a nodename_file of /dev/zero read until memory ran out and
    /// a FIFO blocked for good; both are code 7 naming the setting at once. A missing file
    /// still falls through to the host name.
    #[test]
    fn a_nodename_file_that_is_no_small_regular_file_is_code_7() {
        let dir = tempfile::tempdir().expect("tmp");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR).expect("mkfifo");
        for path in [std::path::Path::new("/dev/zero"), &fifo, dir.path()] {
            let conf = NetConf::from_request(&request(
                "",
                json!({"nodename_file": path.to_str().expect("utf-8")}),
            ))
            .expect("conf");
            let started = std::time::Instant::now();
            let e = node_name(&conf).expect_err("refused");
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{e}");
            assert!(e.msg.contains("nodename_file"), "{e}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
        let conf = NetConf::from_request(&request(
            "",
            json!({"nodename_file": dir.path().join("absent").to_str().expect("utf-8")}),
        ))
        .expect("conf");
        assert!(node_name(&conf).is_ok());
    }

    /// Issue 12 #15 (findings #15): `IP=` with a prefix length was read as the address, and
    /// `IP=a,a` failed later as "already assigned"; both are code 7 naming `IP`.
    #[test]
    fn ip_arg_takes_bare_distinct_addresses() {
        let ok = requested_addresses(&request("IP=10.0.0.1,fd00::1", json!({}))).expect("ok");
        assert_eq!(ok.len(), 2);
        for (args, why) in [
            ("IP=198.19.77.3/24", "without a prefix length"),
            ("IP=10.0.0.1,10.0.0.1", "listed twice"),
            ("IP=nonsense", "not an IP address"),
        ] {
            let e = refused(args, json!({}));
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{args}");
            assert!(
                e.msg.contains("CNI_ARGS IP") && e.msg.contains(why),
                "{args}: {}",
                e.msg
            );
        }
        // The capability keeps its CIDR form.
        let cidr = requested_addresses(&request(
            "",
            json!({"runtimeConfig": {"ips": ["10.0.0.5/24"]}}),
        ))
        .expect("cidr form");
        assert_eq!(cidr, ["10.0.0.5".parse::<IpAddr>().expect("ip")]);
    }

    /// Issue 12 #16 (findings #16): wrong-typed `args.cni.ips` / `runtimeConfig.ips` were
    /// ignored and an automatic address assigned; they are code 7 naming the field.
    #[test]
    fn wrong_typed_address_lists_name_the_field() {
        for (conf, field) in [
            (
                json!({"args": {"cni": {"ips": "10.0.0.1"}}}),
                "args.cni.ips must be a list",
            ),
            (
                json!({"args": {"cni": {"ips": [1]}}}),
                "args.cni.ips[0] must be a string",
            ),
            (
                json!({"runtimeConfig": {"ips": [5]}}),
                "runtimeConfig.ips[0] must be a string",
            ),
            (
                json!({"runtimeConfig": {"ips": {"a": 1}}}),
                "runtimeConfig.ips must be a list",
            ),
            (
                json!({"runtimeConfig": {"ips": ["10.0.0.1", "10.0.0.1"]}}),
                "runtimeConfig.ips: address 10.0.0.1 is listed twice",
            ),
        ] {
            let e = refused("", conf.clone());
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{conf}");
            assert!(e.msg.contains(field), "{conf}: {}", e.msg);
        }
        assert!(
            requested_addresses(&request("", json!({"runtimeConfig": {"ips": null}})))
                .expect("null is none")
                .is_empty()
        );
    }
}
