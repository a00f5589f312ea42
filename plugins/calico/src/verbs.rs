//! ADD, DEL, CHECK, GC and STATUS of the `calico` plugin, over a datastore and a dataplane
//! passed in (so the orchestration, rollbacks included, is testable with stand-ins).
//!
//! ADD overlaps the kernel work with the datastore work: the veth pair is created on a
//! second thread while the main thread reads the datastore (TLS handshake included) and
//! commits the allocation together with the WorkloadEndpoint in one transaction; the pod's
//! addresses and routes follow once both are done. Any failure undoes everything made.

use crate::annotations;
use crate::endpoint::{PodMeta, network_profile, workload_endpoint};
use crate::workload::{Context, format_mac, parse_mac, random_mac};
use calico_dataplane::workload::{GATEWAY_V4, GATEWAY_V6, HOST_MAC};
use calico_dataplane::{Dataplane, DataplaneError, Links, WorkloadSpec};
use calico_datastore::model::{ClusterInformation, Profile, WorkloadEndpoint, keys};
use calico_datastore::{Guard, Kv, KvStore, Write};
use calico_ipam::allocator::Extra;
use calico_ipam::cni::{Overrides, store_error};
use calico_ipam::{IpamError, Snapshot};
use cni_protocol::{
    CniError, CniResult, Command, ErrorCode, Interface, IpConfig, Request, Route, delegate,
};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::SystemTime;

/// Where Calico's readiness flag lives.
pub fn cluster_information_key() -> String {
    keys::resource("clusterinformations", "default")
}

fn profile_key(network: &str) -> String {
    keys::resource("profiles", network)
}

/// Kernel failures as CNI errors: a vanished namespace is "unknown container".
pub fn dataplane_error(e: DataplaneError) -> CniError {
    let code = match e {
        DataplaneError::NetnsMissing(_) => ErrorCode::UNKNOWN_CONTAINER,
        _ => ErrorCode::DATAPLANE,
    };
    CniError::new(code, e.to_string())
}

/// `datastoreReady: false` in `clusterinformations/default` (Calico's upgrade switch) means
/// "try again later". A missing object does not block.
fn check_ready(current: Option<&Kv>) -> Result<(), CniError> {
    let Some(kv) = current else {
        return Ok(());
    };
    let ci = ClusterInformation::from_kv(kv).map_err(|e| {
        CniError::new(
            ErrorCode::DATASTORE,
            format!("cannot decode {}: {e}", kv.key),
        )
    })?;
    if ci.spec.datastore_ready == Some(false) {
        return Err(CniError::try_again_later(
            "Calico is currently not ready to process requests (datastoreReady is false)",
        ));
    }
    Ok(())
}

/// What Calico's pod annotations change, read from the pod and its namespace.
struct PodOverrides {
    ipam: Overrides,
    /// `ipAddrsNoIpam`: addresses used as given, no IPAM at all.
    no_ipam: Vec<IpAddr>,
    mac: Option<[u8; 6]>,
    /// `allowedSourcePrefixes`, normalised.
    source_prefixes: Vec<String>,
    /// `floatingIPs`, validated (the feature is on): they become the endpoint's `ipNATs`.
    floating_ips: Vec<String>,
}

fn json_list(v: Option<&String>, what: &str) -> Result<Option<Vec<String>>, CniError> {
    v.map(|s| {
        serde_json::from_str::<Vec<String>>(s).map_err(|e| {
            CniError::invalid_config(format!("annotation {what} is not a JSON list: {e}"))
        })
    })
    .transpose()
}

fn addresses_of(list: Vec<String>, what: &str) -> Result<Vec<IpAddr>, CniError> {
    list.iter()
        .map(|s| {
            s.split('/')
                .next()
                .unwrap_or(s)
                .parse::<IpAddr>()
                .map_err(|_| CniError::invalid_config(format!("{what}: {s:?} is not an address")))
        })
        .collect()
}

fn pod_overrides(ctx: &Context, deps: &Deps<'_>) -> Result<PodOverrides, CniError> {
    let mut out = PodOverrides {
        ipam: Overrides {
            namespace_labels: deps.namespace_labels.clone().unwrap_or_default(),
            ..Overrides::default()
        },
        no_ipam: Vec::new(),
        mac: None,
        source_prefixes: Vec::new(),
        floating_ips: Vec::new(),
    };
    let Some(pod) = deps.pod.as_ref() else {
        return Ok(out);
    };
    const P: &str = annotations::PREFIX;
    // The pod's annotation if set (non-empty), else the namespace's, as CmdAddK8s.
    let pick = |name: &str| {
        let key = format!("{P}{name}");
        pod.annotations
            .get(&key)
            .filter(|v| !v.is_empty())
            .or_else(|| pod.namespace_annotations.get(&key))
            .filter(|v| !v.is_empty())
    };
    out.ipam.v4_pools = json_list(pick("ipv4pools"), "ipv4pools")?;
    out.ipam.v6_pools = json_list(pick("ipv6pools"), "ipv6pools")?;
    // Like the pool annotations, only Calico IPAM reads ipFamilies.
    if ctx.ipam_in_process() {
        out.ipam.families = pick("ipFamilies")
            .map(|v| annotations::ip_families(v))
            .transpose()?;
    }
    out.ipam.namespace_labels = pod.namespace_labels.clone();
    let own = |name: &str| {
        pod.annotations
            .get(&format!("{P}{name}"))
            .map_or("", String::as_str)
    };
    out.source_prefixes = annotations::allowed_source_prefixes(own("allowedSourcePrefixes"))?;
    out.floating_ips =
        annotations::floating_ips(own("floatingIPs"), ctx.conf.feature_control.floating_ips)?;
    let ip_addrs = json_list(pod.annotations.get(&format!("{P}ipAddrs")), "ipAddrs")?;
    let no_ipam = json_list(
        pod.annotations.get(&format!("{P}ipAddrsNoIpam")),
        "ipAddrsNoIpam",
    )?;
    match (ip_addrs, no_ipam) {
        (Some(_), Some(_)) => {
            return Err(CniError::invalid_config(
                "annotations ipAddrs and ipAddrsNoIpam cannot both be set",
            ));
        }
        (Some(list), None) => {
            if !ctx.ipam_in_process() {
                return Err(CniError::invalid_config(
                    "annotation ipAddrs needs ipam.type calico-ipam",
                ));
            }
            out.ipam.addresses = addresses_of(list, "ipAddrs")?;
        }
        (None, Some(list)) => {
            if !ctx.conf.feature_control.ip_addrs_no_ipam {
                return Err(CniError::invalid_config(
                    "annotation ipAddrsNoIpam needs feature_control.ip_addrs_no_ipam",
                ));
            }
            out.no_ipam = addresses_of(list, "ipAddrsNoIpam")?;
        }
        (None, None) => {}
    }
    if let Some(m) = pod.annotations.get(&format!("{P}hwAddr")) {
        out.mac = Some(parse_mac(m).ok_or_else(|| {
            CniError::invalid_config(format!("annotation hwAddr {m:?} is not a MAC address"))
        })?);
    }
    Ok(out)
}

/// The endpoint (and, without `policy.type`, the network's profile if missing) as writes
/// guarded on what the snapshot saw.
#[allow(clippy::too_many_arguments)]
fn endpoint_writes(
    ctx: &Context,
    req: &Request,
    addresses: &[IpNet],
    mac: &[u8; 6],
    pod: Option<&PodMeta>,
    ov: &PodOverrides,
    current: impl Fn(&str) -> Option<Kv>,
) -> Result<Extra, CniError> {
    let mut wep = workload_endpoint(
        ctx,
        &req.env.ifname,
        addresses,
        &format_mac(mac),
        &req.network_name,
        pod,
    );
    wep.spec.allow_spoofed_source_prefixes = ov.source_prefixes.clone();
    wep.spec.ip_nats = annotations::ip_nats(&ov.floating_ips, addresses)?;
    let existing = current(&ctx.wep_key);
    match existing
        .as_ref()
        .and_then(|kv| WorkloadEndpoint::from_kv(kv).ok())
    {
        // An update keeps the object's identity, as libcalico-go's Update does.
        Some(old) => {
            wep.metadata.uid = old.metadata.uid;
            wep.metadata.creation_timestamp = old.metadata.creation_timestamp;
        }
        None => wep.stamp_created(SystemTime::now()),
    }
    let encode = |what: &str, e: serde_json::Error| {
        CniError::new(
            ErrorCode::INTERNAL,
            format!("cannot encode the {what}: {e}"),
        )
    };
    let mut extra = Extra {
        guards: vec![Guard::for_current(&ctx.wep_key, existing.as_ref())],
        writes: vec![Write::Put(
            ctx.wep_key.clone(),
            wep.to_stored().map_err(|e| encode("endpoint", e))?,
        )],
    };
    if ctx.conf.policy.policy_type.is_empty() {
        let key = profile_key(&req.network_name);
        if current(&key).is_none() {
            let mut profile: Profile =
                network_profile(&req.network_name, ctx.workload.orchestrator == "k8s");
            profile.stamp_created(SystemTime::now());
            extra.guards.push(Guard::Absent(key.clone()));
            extra.writes.push(Write::Put(
                key,
                profile.to_stored().map_err(|e| encode("profile", e))?,
            ));
        }
    }
    Ok(extra)
}

/// Deletes the endpoint record if it belongs to this container (a newer sandbox of the same
/// pod must keep its record).
fn endpoint_delete(ctx: &Context, current: Option<&Kv>) -> Extra {
    let Some(kv) = current else {
        return Extra::default();
    };
    let ours = WorkloadEndpoint::from_kv(kv)
        .map(|w| w.spec.container_id.is_empty() || w.spec.container_id == ctx.workload.container_id)
        .unwrap_or(true);
    if !ours {
        log::info!(
            "endpoint {} belongs to another container; kept",
            ctx.wep_name
        );
        return Extra::default();
    }
    Extra {
        guards: vec![Guard::Revision(kv.key.clone(), kv.mod_revision)],
        writes: vec![Write::Delete(kv.key.clone())],
    }
}

fn snapshot_key(snap: &Snapshot, key: &str) -> Option<Kv> {
    snap.extra.get(key).cloned().flatten()
}

/// The result Calico prints: the host end (name only), the pod interface, every address as
/// /32 or /128 on interface 1, and the IPAM result's routes.
fn result(
    req: &Request,
    ctx: &Context,
    mac: &[u8; 6],
    mtu: Option<u32>,
    addrs: &[IpNet],
    routes: Vec<Route>,
) -> CniResult {
    CniResult {
        interfaces: vec![
            Interface {
                name: ctx.host_ifname.clone(),
                ..Interface::default()
            },
            Interface {
                name: req.env.ifname.clone(),
                mac: Some(format_mac(mac)),
                mtu,
                sandbox: req.env.netns.as_ref().map(|p| p.display().to_string()),
                ..Interface::default()
            },
        ],
        ips: addrs
            .iter()
            .map(|a| IpConfig {
                interface: Some(1),
                address: IpNet::from(a.addr()),
                gateway: None,
            })
            .collect(),
        routes,
        ..CniResult::default()
    }
}

/// Everything ADD needs besides the request.
pub struct Deps<'a> {
    pub store: &'a dyn KvStore,
    pub dataplane: &'a (dyn Dataplane + Sync),
    /// Calico's `/var/lib/calico/mtu`.
    pub mtu_file: &'a Path,
    /// From the Kubernetes API when `policy.type` is `k8s`.
    pub pod: Option<PodMeta>,
    /// The namespace's labels when there is no `pod` but Calico IPAM reads them (a
    /// kubeconfig is set): the pools' `namespaceSelector`.
    pub namespace_labels: Option<BTreeMap<String, String>>,
}

/// ADD.
pub fn add(req: &Request, ctx: &Context, deps: &Deps<'_>) -> Result<CniResult, CniError> {
    let started = std::time::Instant::now();
    let netns = req
        .env
        .netns
        .clone()
        .ok_or_else(|| CniError::invalid_env("CNI_NETNS is missing"))?;
    let pod = deps.pod.as_ref();
    let ov = pod_overrides(ctx, deps)?;
    let mac = ov.mac.unwrap_or_else(random_mac);
    let mtu = ctx.mtu(deps.mtu_file)?;
    let requested: Vec<IpAddr> = ov
        .ipam
        .addresses
        .iter()
        .chain(&ov.no_ipam)
        .copied()
        .chain(calico_ipam::cni::requested_addresses(req)?)
        .collect();
    let (v4, v6) = if requested.is_empty() {
        let families = ov.ipam.families;
        if families == Some((false, false)) && ctx.ipam_in_process() && ov.no_ipam.is_empty() {
            return Err(CniError::invalid_config(format!(
                "annotation {}ipFamilies lists no address family: nothing to assign",
                annotations::PREFIX
            )));
        }
        families.unwrap_or((ctx.conf.ipam.assign_ipv4(), ctx.conf.ipam.assign_ipv6()))
    } else {
        (
            requested.iter().any(IpAddr::is_ipv4),
            requested.iter().any(IpAddr::is_ipv6),
        )
    };
    let spec = WorkloadSpec {
        netns: netns.clone(),
        ifname: req.env.ifname.clone(),
        host_ifname: ctx.host_ifname.clone(),
        mtu,
        num_queues: ctx.num_queues()?,
        pod_mac: mac,
        v4,
        v6,
        routes: crate::host_local::routes_for(ctx, req)?,
        allow_ip_forwarding: ctx.conf.container_settings.allow_ip_forwarding,
    };
    let mut extra_keys = vec![cluster_information_key(), ctx.wep_key.clone()];
    if ctx.conf.policy.policy_type.is_empty() {
        extra_keys.push(profile_key(&req.network_name));
    }

    // The kernel half runs on its own thread (see `KernelThread`); the datastore half reads
    // (and connects) meanwhile and commits nothing before the veth pair exists, so a pod
    // that cannot have its interface leaves the datastore untouched.
    let outcome = std::thread::scope(|s| -> Result<(Vec<IpNet>, Vec<Route>), (CniError, bool)> {
        let mut kernel = KernelThread::start(s, deps.dataplane, &spec, started);
        let committed = if ctx.ipam_in_process() && ov.no_ipam.is_empty() {
            calico_ipam::cni::allocate(
                deps.store,
                &ctx.conf,
                req,
                &ctx.node,
                &ov.ipam,
                &extra_keys,
                &mut |addrs: &[IpNet], snap: &Snapshot| {
                    check_ready(snapshot_key(snap, &cluster_information_key()).as_ref())
                        .map_err(IpamError::Caller)?;
                    kernel.wait_paired().map_err(IpamError::Caller)?;
                    // The addresses go on while the transaction is in flight (the slowest
                    // step: etcd's fsync). The host lock keeps any other pod of this node
                    // from holding them meanwhile; if a conflict makes the allocation choose
                    // others, the kernel thread swaps them; a failed commit removes the
                    // whole interface anyway.
                    kernel.configure(addrs);
                    endpoint_writes(ctx, req, addrs, &mac, pod, &ov, |k| snapshot_key(snap, k))
                        .map_err(IpamError::Caller)
                },
            )
            .map(|addrs| {
                let routes = addrs
                    .iter()
                    .map(IpNet::trunc)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .map(Route::to)
                    .collect();
                (addrs, routes)
            })
        } else {
            add_delegated(req, ctx, deps, &ov, &extra_keys, &mac, pod, &mut || {
                kernel.wait_paired()
            })
            .inspect(|(addrs, _)| kernel.configure(addrs))
        };
        let done = kernel.finish();
        // On failure remove what we made, unless the names belonged to someone else.
        let theirs = matches!(done.links, Err((_, true)));
        let (addrs, routes) = committed.map_err(|e| (e, !theirs))?;
        // Committed: whatever the kernel thread could not do undoes the commit too.
        let kernel_failure = match (&done.links, &done.configured) {
            (Err((e, _)), _) | (Ok(_), Err(e)) => Some(e.clone()),
            (Ok(_), Ok(on)) if *on != addrs => Some(CniError::new(
                ErrorCode::DATAPLANE,
                format!("the pod has {on:?}, not the allocated {addrs:?}"),
            )),
            _ => None,
        };
        if let Some(e) = kernel_failure {
            remove_quietly(deps, &spec);
            undo_datastore(req, ctx, deps, ov.no_ipam.is_empty());
            return Err((e, false));
        }
        Ok((addrs, routes))
    });
    let (addrs, routes) = match outcome {
        Ok(done) => done,
        Err((e, remove)) => {
            if remove {
                remove_quietly(deps, &spec);
            }
            return Err(e);
        }
    };
    log::debug!("committed and configured after {:?}", started.elapsed());
    Ok(result(req, ctx, &mac, mtu, &addrs, routes))
}

/// The kernel half of an ADD, on its own thread: it makes the veth pair and says so, finishes
/// the interfaces (settings, links up, the pod's routes), then puts on each set of addresses
/// the datastore half sends (the last one wins: an earlier one is taken off again).
struct KernelThread<'scope> {
    handle: Option<std::thread::ScopedJoinHandle<'scope, KernelDone>>,
    paired: std::sync::mpsc::Receiver<()>,
    is_paired: bool,
    addresses: Option<std::sync::mpsc::Sender<Vec<IpNet>>>,
    done: Option<KernelDone>,
}

/// What the kernel thread made: the links (or why not, and whether the names were someone
/// else's), and the addresses it put on them.
struct KernelDone {
    links: Result<Links, (CniError, bool)>,
    configured: Result<Vec<IpNet>, CniError>,
}

impl<'scope> KernelThread<'scope> {
    fn start<'env>(
        s: &'scope std::thread::Scope<'scope, 'env>,
        dataplane: &'env (dyn Dataplane + Sync),
        spec: &'env WorkloadSpec,
        started: std::time::Instant,
    ) -> Self {
        let (paired_tx, paired) = std::sync::mpsc::channel();
        let (addresses, wanted) = std::sync::mpsc::channel::<Vec<IpNet>>();
        let handle = s.spawn(move || {
            let links = dataplane.create_then(spec, &mut || {
                let _ = paired_tx.send(());
            });
            // Whatever `create_then` did, nobody may wait for the signal any longer.
            drop(paired_tx);
            log::debug!("veth ready after {:?}", started.elapsed());
            let l = match links {
                Ok(l) => l,
                Err(e) => {
                    let theirs = matches!(e, DataplaneError::Exists { .. });
                    return KernelDone {
                        links: Err((dataplane_error(e), theirs)),
                        configured: Ok(Vec::new()),
                    };
                }
            };
            let mut on: Vec<IpNet> = Vec::new();
            let mut failed = None;
            // Until the datastore half is done.
            for next in wanted {
                if failed.is_some() || next == on {
                    continue;
                }
                let swapped = if on.is_empty() {
                    Ok(())
                } else {
                    dataplane.unconfigure(spec, &l, &on)
                };
                match swapped.and_then(|()| dataplane.configure(spec, &l, &next)) {
                    Ok(()) => on = next,
                    Err(e) => failed = Some(e),
                }
            }
            KernelDone {
                links: Ok(l),
                configured: failed.map_or(Ok(on), |e| Err(dataplane_error(e))),
            }
        });
        KernelThread {
            handle: Some(handle),
            paired,
            is_paired: false,
            addresses: Some(addresses),
            done: None,
        }
    }

    /// Waits until the veth pair exists; the error if it never will.
    fn wait_paired(&mut self) -> Result<(), CniError> {
        if !self.is_paired && self.done.is_none() && self.paired.recv().is_ok() {
            self.is_paired = true;
        }
        if self.is_paired {
            return Ok(());
        }
        match &self.finish().links {
            Err((e, _)) => Err(e.clone()),
            Ok(_) => Ok(()),
        }
    }

    /// Has these addresses put on the pod (and its host routes).
    fn configure(&self, addresses: &[IpNet]) {
        if let Some(tx) = &self.addresses {
            let _ = tx.send(addresses.to_vec());
        }
    }

    /// Lets the thread finish and returns what it did.
    fn finish(&mut self) -> &KernelDone {
        self.addresses = None;
        self.done.get_or_insert_with(|| {
            self.handle
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or(KernelDone {
                    links: Err((
                        CniError::new(ErrorCode::DATAPLANE, "the kernel thread panicked"),
                        false,
                    )),
                    configured: Ok(Vec::new()),
                })
        })
    }
}

/// ADD with a delegated IPAM plugin (or `ipAddrsNoIpam`): readiness and the records first,
/// then the IPAM plugin (while the veth is being made), then the endpoint record.
#[allow(clippy::too_many_arguments)]
fn add_delegated(
    req: &Request,
    ctx: &Context,
    deps: &Deps<'_>,
    ov: &PodOverrides,
    extra_keys: &[String],
    mac: &[u8; 6],
    pod: Option<&PodMeta>,
    wait_created: &mut dyn FnMut() -> Result<(), CniError>,
) -> Result<(Vec<IpNet>, Vec<Route>), CniError> {
    let reads: Vec<calico_datastore::Read> = extra_keys
        .iter()
        .map(|k| calico_datastore::Read::Key(k.clone()))
        .collect();
    let got = deps.store.read(&reads).map_err(store_error)?;
    let current = |k: &str| {
        extra_keys
            .iter()
            .position(|x| x == k)
            .and_then(|i| got.get(i))
            .and_then(|v| v.first().cloned())
    };
    check_ready(current(&cluster_information_key()).as_ref())?;
    let used_ipam = ov.no_ipam.is_empty();
    let (addrs, routes) = if used_ipam {
        let r = delegate::add(
            &req.env,
            &ctx.conf.ipam.ipam_type,
            &req.stdin,
            req.cni_version,
        )?;
        (
            r.ips.iter().map(|i| i.address).collect::<Vec<_>>(),
            r.routes,
        )
    } else {
        (
            ov.no_ipam.iter().map(|a| IpNet::from(*a)).collect(),
            Vec::new(),
        )
    };
    let fail = |e: CniError| {
        undo_delegated_ipam(req, ctx, used_ipam);
        e
    };
    wait_created().map_err(fail)?;
    let extra = endpoint_writes(ctx, req, &addrs, mac, pod, ov, current).map_err(fail)?;
    match deps.store.txn(&extra.guards, &extra.writes) {
        Ok(o) if o.applied() => Ok((addrs, routes)),
        Ok(_) => Err(fail(CniError::try_again_later(format!(
            "endpoint {} changed while it was being written",
            ctx.wep_name
        )))),
        Err(e) => Err(fail(store_error(e))),
    }
}

fn remove_quietly(deps: &Deps<'_>, spec: &WorkloadSpec) {
    if let Err(e) = deps.dataplane.remove(Some(&spec.netns), &spec.ifname) {
        log::error!("rolling back: cannot remove {}: {e}", spec.host_ifname);
    }
}

/// Releases a delegated IPAM allocation (DEL to the IPAM plugin).
fn undo_delegated_ipam(req: &Request, ctx: &Context, used_ipam: bool) {
    if !used_ipam || ctx.ipam_in_process() {
        return;
    }
    let mut env = req.env.clone();
    env.command = Command::Del;
    if let Err(e) = delegate::run(&env, Command::Del, &ctx.conf.ipam.ipam_type, &req.stdin) {
        log::error!("rolling back: IPAM DEL failed: {e}");
    }
}

/// Takes back a committed ADD: the allocation and the endpoint record (if still ours).
fn undo_datastore(req: &Request, ctx: &Context, deps: &Deps<'_>, used_ipam: bool) {
    let undo = if ctx.ipam_in_process() && used_ipam {
        calico_ipam::cni::release(
            deps.store,
            &ctx.conf,
            req,
            &ctx.node,
            std::slice::from_ref(&ctx.wep_key),
            &mut |_, snap| {
                Ok(endpoint_delete(
                    ctx,
                    snapshot_key(snap, &ctx.wep_key).as_ref(),
                ))
            },
        )
        .map(|_| ())
    } else {
        undo_delegated_ipam(req, ctx, used_ipam);
        delete_endpoint(deps.store, ctx)
    };
    if let Err(e) = undo {
        log::error!(
            "rolling back: cannot release the allocation of {}: {e}",
            ctx.handle
        );
    }
}

/// Deletes the endpoint record if ours (outside an IPAM transaction).
fn delete_endpoint(store: &dyn KvStore, ctx: &Context) -> Result<(), CniError> {
    let current = store.get(&ctx.wep_key).map_err(store_error)?;
    let extra = endpoint_delete(ctx, current.as_ref());
    if extra.is_empty() {
        return Ok(());
    }
    // A concurrent change means someone else owns it now: leave it.
    store
        .txn(&extra.guards, &extra.writes)
        .map(|_| ())
        .map_err(store_error)
}

/// DEL: the pod's interface, the endpoint record (if ours), the allocation. Idempotent; all
/// three are attempted, and every failure is reported.
pub fn del(req: &Request, ctx: &Context, deps: &Deps<'_>) -> Result<(), CniError> {
    let netns = req.env.netns.clone();
    let (removed, released) = std::thread::scope(|s| {
        let removing = s.spawn(|| {
            deps.dataplane
                .remove_detached(netns.as_deref(), &req.env.ifname)
        });
        let released = if ctx.ipam_in_process() {
            calico_ipam::cni::release(
                deps.store,
                &ctx.conf,
                req,
                &ctx.node,
                std::slice::from_ref(&ctx.wep_key),
                &mut |_, snap| {
                    Ok(endpoint_delete(
                        ctx,
                        snapshot_key(snap, &ctx.wep_key).as_ref(),
                    ))
                },
            )
            .map(|_| ())
        } else {
            let ipam = delegate::run(&req.env, Command::Del, &ctx.conf.ipam.ipam_type, &req.stdin);
            let wep = delete_endpoint(deps.store, ctx);
            ipam.and(wep)
        };
        let removed = removing.join().unwrap_or_else(|_| {
            Err(DataplaneError::netlink(
                "remove",
                "the dataplane thread panicked",
            ))
        });
        (removed, released)
    });
    match (removed.map_err(dataplane_error), released) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(CniError::new(a.code, format!("{}; and {}", a.msg, b.msg))),
    }
}

fn mismatch(what: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::CHECK_FAILED, what)
}

/// CHECK: the host end, the pod interface, its addresses and routes, the host routes, the
/// endpoint record and the IPAM allocation are all as the ADD left them.
pub fn check(req: &Request, ctx: &Context, deps: &Deps<'_>) -> Result<(), CniError> {
    let prev = req.prev_result()?.ok_or_else(|| {
        CniError::invalid_config("CHECK needs prevResult (the result of the ADD)")
    })?;
    let netns = req
        .env
        .netns
        .clone()
        .ok_or_else(|| CniError::invalid_env("CNI_NETNS is missing"))?;
    // The pod's addresses: those on the pod interface, or all if indices are absent.
    let pod_index = prev
        .interfaces
        .iter()
        .position(|i| i.name == req.env.ifname && i.sandbox.is_some());
    let addrs: Vec<IpNet> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == pod_index)
        .map(|ip| IpNet::from(ip.address.addr()))
        .collect();
    let spec = WorkloadSpec {
        netns,
        ifname: req.env.ifname.clone(),
        host_ifname: ctx.host_ifname.clone(),
        mtu: None,
        num_queues: 1,
        pod_mac: [0; 6],
        v4: addrs.iter().any(|a| a.addr().is_ipv4()),
        v6: addrs.iter().any(|a| a.addr().is_ipv6()),
        routes: crate::host_local::routes_for(ctx, req)?,
        allow_ip_forwarding: false,
    };
    let seen = deps
        .dataplane
        .inspect(&spec, &addrs)
        .map_err(dataplane_error)?;
    let host = seen
        .host
        .as_ref()
        .ok_or_else(|| mismatch(format!("host interface {} does not exist", ctx.host_ifname)))?;
    if host.mac != Some(HOST_MAC) {
        return Err(mismatch(format!(
            "host interface {} has MAC {:?}, expected ee:ee:ee:ee:ee:ee",
            ctx.host_ifname,
            host.mac.map(|m| format_mac(&m))
        )));
    }
    if !host.up {
        return Err(mismatch(format!(
            "host interface {} is down",
            ctx.host_ifname
        )));
    }
    let pod_link = seen.pod.as_ref().ok_or_else(|| {
        mismatch(format!(
            "interface {} does not exist in the pod",
            req.env.ifname
        ))
    })?;
    let have: BTreeSet<IpNet> = seen.pod_addresses.iter().copied().collect();
    let want: BTreeSet<IpNet> = addrs.iter().copied().collect();
    if have != want {
        return Err(mismatch(format!(
            "interface {} in the pod has addresses {have:?}, expected {want:?}",
            req.env.ifname
        )));
    }
    let route_there = |dst: &IpNet, gw: Option<IpAddr>| {
        seen.pod_routes
            .iter()
            .any(|r| r.dst == *dst && r.gateway == gw)
    };
    if spec.v4 && !route_there(&IpNet::from(IpAddr::V4(GATEWAY_V4)), None) {
        return Err(mismatch("the pod has no route to 169.254.1.1"));
    }
    for dst in &spec.routes {
        let gw = match dst {
            IpNet::V4(_) if spec.v4 => IpAddr::V4(GATEWAY_V4),
            IpNet::V6(_) if spec.v6 => IpAddr::V6(GATEWAY_V6),
            _ => continue,
        };
        if !route_there(dst, Some(gw)) {
            return Err(mismatch(format!("the pod has no route to {dst} via {gw}")));
        }
    }
    for a in &addrs {
        let ok = seen
            .host_routes
            .iter()
            .any(|r| r.dst == *a && r.oif == Some(host.index));
        if !ok {
            return Err(mismatch(format!(
                "the host has no route to {a} through {}",
                ctx.host_ifname
            )));
        }
    }
    // The endpoint record.
    let kv = deps
        .store
        .get(&ctx.wep_key)
        .map_err(store_error)?
        .ok_or_else(|| mismatch(format!("endpoint record {} does not exist", ctx.wep_name)))?;
    let wep = WorkloadEndpoint::from_kv(&kv).map_err(|e| {
        mismatch(format!(
            "endpoint record {} is unreadable: {e}",
            ctx.wep_name
        ))
    })?;
    if wep.spec.container_id != ctx.workload.container_id {
        return Err(mismatch(format!(
            "endpoint record {} belongs to container {}",
            ctx.wep_name, wep.spec.container_id
        )));
    }
    let recorded: BTreeSet<String> = wep.spec.ip_networks.iter().cloned().collect();
    let expected: BTreeSet<String> = addrs.iter().map(ToString::to_string).collect();
    if recorded != expected || wep.spec.interface_name != ctx.host_ifname {
        return Err(mismatch(format!(
            "endpoint record {} has {recorded:?} on {}, expected {expected:?} on {}",
            ctx.wep_name, wep.spec.interface_name, ctx.host_ifname
        )));
    }
    if pod_link.mac.map(|m| format_mac(&m)).as_deref() != Some(wep.spec.mac.as_str()) {
        return Err(mismatch(format!(
            "endpoint record {} has MAC {}, the pod interface has {:?}",
            ctx.wep_name,
            wep.spec.mac,
            pod_link.mac.map(|m| format_mac(&m))
        )));
    }
    if ctx.ipam_in_process() {
        calico_ipam::cni::check(deps.store, req, &ctx.node)
    } else {
        delegate::run(
            &req.env,
            Command::Check,
            &ctx.conf.ipam.ipam_type,
            &req.stdin,
        )
    }
}

/// GC: this network's allocations on this node whose container is not in
/// `cni.dev/valid-attachments` and which the kernel shows dead, each released in one
/// transaction with the endpoint records that carry its addresses (see [`calico_ipam::gc`]).
///
/// What is alive is kept whatever the list says: an endpoint whose host interface still
/// exists (its pod's namespace exists), an allocation whose address is still in use on the
/// host (routed to a pod, or on an interface in some namespace). Interfaces are
/// never deleted: a veth goes with its namespace. An endpoint is this network's only through
/// its allocation (the handle `<network>.<container>` holds its addresses), so with a
/// delegated IPAM plugin only that plugin's GC runs.
pub fn gc(req: &Request, ctx: &Context, deps: &Deps<'_>) -> Result<(), CniError> {
    if !ctx.ipam_in_process() {
        return delegate::run(&req.env, Command::Gc, &ctx.conf.ipam.ipam_type, &req.stdin);
    }
    // The endpoints and interfaces are read once the candidates have been listed (the first
    // judgement asks for them): an ADD that commits after the listing is no candidate, and
    // one that committed before has its endpoint (committed with the allocation, once its
    // veth existed) in this view. So an allocation without a live endpoint or an address
    // in use is not an ADD in flight, and needs no grace period.
    let view = std::cell::OnceCell::new();
    let view = || -> Result<&GcView, String> {
        if let Some(v) = view.get() {
            return Ok(v);
        }
        let v = GcView::read(ctx, deps).map_err(|e| e.to_string())?;
        Ok(view.get_or_init(|| v))
    };
    let ask = || deps.dataplane.addresses_in_use().map_err(|e| e.to_string());
    let in_use = calico_ipam::gc::InUse::new(&ask);
    let alive = |c: &calico_ipam::gc::Candidate| -> Result<bool, String> {
        let v = view()?;
        if v.endpoints_of(c)
            .any(|(_, w)| v.host_interfaces.contains(&w.spec.interface_name))
        {
            return Ok(true);
        }
        in_use.any(&c.addresses)
    };
    let liveness = calico_ipam::gc::Liveness {
        alive: &alive,
        grace: std::time::Duration::ZERO,
        now: SystemTime::now(),
    };
    let keys_of = |c: &calico_ipam::gc::Candidate| match view() {
        Ok(v) => v.endpoints_of(c).map(|(kv, _)| kv.key.clone()).collect(),
        Err(_) => Vec::new(),
    };
    calico_ipam::cni::gc_with(
        deps.store,
        &ctx.conf,
        req,
        &ctx.node,
        &liveness,
        &keys_of,
        &mut |c, _, snap| {
            let mut extra = Extra::default();
            let v = view().map_err(IpamError::Other)?;
            for (listed, w) in v.endpoints_of(c) {
                // Only the record as it was judged: one rewritten since (a new sandbox of
                // the same pod took the key over) is not this container's any more.
                match snapshot_key(snap, &listed.key) {
                    Some(now) if now.mod_revision == listed.mod_revision => {
                        extra
                            .guards
                            .push(Guard::Revision(now.key.clone(), now.mod_revision));
                        extra.writes.push(Write::Delete(now.key.clone()));
                        log::info!("GC removes endpoint {}", w.metadata.name);
                    }
                    _ => log::info!("GC keeps endpoint {}: changed since", w.metadata.name),
                }
            }
            Ok(extra)
        },
    )
}

/// What GC reads of this node: its endpoint records and its host interfaces.
struct GcView {
    endpoints: Vec<(Kv, WorkloadEndpoint)>,
    host_interfaces: BTreeSet<String>,
}

impl GcView {
    fn read(ctx: &Context, deps: &Deps<'_>) -> Result<GcView, CniError> {
        let prefix = crate::workload::interface_prefix(|k| std::env::var(k).ok());
        Ok(GcView {
            endpoints: node_endpoints(deps.store, &ctx.node)?,
            host_interfaces: deps
                .dataplane
                .host_interfaces(&prefix)
                .map_err(dataplane_error)?
                .into_iter()
                .collect(),
        })
    }

    /// The endpoints that carry a candidate's addresses (all of theirs among the handle's).
    fn endpoints_of<'v>(
        &'v self,
        c: &'v calico_ipam::gc::Candidate,
    ) -> impl Iterator<Item = &'v (Kv, WorkloadEndpoint)> + 'v {
        self.endpoints.iter().filter(|(_, w)| {
            let ips = w.addresses();
            w.spec.container_id == c.container_id
                && !ips.is_empty()
                && ips.iter().all(|ip| c.addresses.contains(ip))
        })
    }
}

/// This node's endpoint records.
fn node_endpoints(
    store: &dyn KvStore,
    node: &str,
) -> Result<Vec<(Kv, WorkloadEndpoint)>, CniError> {
    Ok(store
        .list(&keys::resources_prefix("workloadendpoints"))
        .map_err(store_error)?
        .into_iter()
        .filter_map(|kv| {
            let w = WorkloadEndpoint::from_kv(&kv).ok()?;
            (w.spec.node == node).then_some((kv, w))
        })
        .collect())
}

/// STATUS: 50 if the datastore cannot be reached; then IPAM's answer.
pub fn status(req: &Request, ctx: &Context, store: &dyn KvStore) -> Result<(), CniError> {
    store
        .get(&cluster_information_key())
        .map_err(|e| CniError::new(ErrorCode::PLUGIN_NOT_AVAILABLE, e.to_string()))?;
    if ctx.ipam_in_process() {
        calico_ipam::cni::status(store, &ctx.conf, &ctx.node)
    } else {
        delegate::run(
            &req.env,
            Command::Status,
            &ctx.conf.ipam.ipam_type,
            &req.stdin,
        )
    }
}

#[cfg(test)]
#[path = "gc_tests.rs"]
mod gc_tests;
