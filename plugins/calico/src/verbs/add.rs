//! ADD: the veth pair made on a second thread ([`KernelThread`]) while this one reads the
//! datastore and commits the allocation with the endpoint record in one transaction (or,
//! with a delegated IPAM plugin or `ipAddrsNoIpam`, runs the plugin and writes the record);
//! the transaction does not wait for the pair (unless it has failed already), and the
//! addresses go on while the transaction is in flight. Any failure undoes everything
//! made: the interface unless its names were someone else's, the commit once made. Once
//! everything is in, `policy_setup_timeout_seconds` may hold the answer until the policy
//! agent reports the endpoint programmed ([`crate::policy_gate`]).

use super::Deps;
use super::kernel_thread::KernelThread;
use super::overrides::{PodOverrides, pod_overrides};
use super::records::{
    check_ready, cluster_information_key, endpoint_writes, profile_key, snapshot_key,
};
use super::release::{undo_datastore, undo_delegated_ipam};
use crate::annotations;
use crate::endpoint::PodMeta;
use crate::policy_gate::PolicyGate;
use crate::workload::{Context, format_mac, random_mac};
use calico_dataplane::WorkloadSpec;
use calico_ipam::cni::store_error;
use calico_ipam::{IpamError, Snapshot};
use cni_protocol::{CniError, CniResult, ErrorCode, Interface, IpConfig, Request, Route, delegate};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::IpAddr;

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

/// ADD.
pub fn add(req: &Request, ctx: &Context, deps: &Deps<'_>) -> Result<CniResult, CniError> {
    let started = std::time::Instant::now();
    let netns = req
        .env
        .netns
        .clone()
        .ok_or_else(|| CniError::invalid_env("CNI_NETNS is missing"))?;
    let pod = deps.pod.as_ref();
    // Checked before anything is made (a negative timeout is a config error).
    let gate = PolicyGate::of(ctx, req)?;
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
    // (and connects) meanwhile. It commits unless the veth pair has failed already (a pod
    // whose interface fails at once leaves the datastore untouched); a pair failing while
    // the transaction is in flight has the commit taken back (the node keeps any block it
    // claimed, empty, as Calico's release does).
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
                    // A veth pair that has already failed stops the commit; one still being
                    // made does not hold it up (the transaction and the pair take about as
                    // long; if the pair then fails, the commit is taken back below).
                    // Only for a new attachment (its endpoint and handle absent, which the
                    // transaction's guards check): taking back a commit that changed what a
                    // live attachment had (a repeated ADD) would take that away too.
                    let new_attachment = snapshot_key(snap, &ctx.wep_key).is_none()
                        && snap.handles.values().all(Option::is_none);
                    if new_attachment {
                        kernel.failed_already().map_err(IpamError::Caller)?;
                    } else {
                        kernel.wait_paired().map_err(IpamError::Caller)?;
                    }
                    // The addresses go on once the pair exists, while the transaction is in
                    // flight (the slowest step: etcd's fsync). The host lock keeps any other
                    // pod of this node from holding them meanwhile; if a conflict makes the
                    // allocation choose others, they are swapped in once it is committed
                    // (`KernelThread::finish`); a failed commit removes the whole interface
                    // anyway.
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
            // Interfaces whose names were someone else's stay.
            if !theirs {
                remove_quietly(deps, &spec);
            }
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
    if let Some(gate) = gate {
        gate.wait();
        log::debug!("policy gate passed after {:?}", started.elapsed());
    }
    Ok(result(req, ctx, &mac, mtu, &addrs, routes))
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
    // From the moment the IPAM plugin has run, every failure (its own included: it may have
    // allocated before failing) is rolled back with an IPAM DEL.
    let fail = |e: CniError| {
        undo_delegated_ipam(req, ctx, used_ipam);
        e
    };
    let (addrs, routes) = if used_ipam {
        // add_ipam refuses a result without addresses (or an error object printed with exit
        // status 0), as Calico's "IPAM plugin returned missing IP config".
        let r = delegate::add_ipam(
            &req.env,
            &ctx.conf.ipam.ipam_type,
            &req.stdin,
            req.cni_version,
        )
        .map_err(fail)?;
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

#[cfg(test)]
#[path = "add_tests.rs"]
mod tests;
