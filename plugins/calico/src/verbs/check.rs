//! CHECK: what the ADD should have made ([`Wanted`], from the request and its `prevResult`)
//! compared with what is found: the kernel's side ([`Observed`]), then the endpoint record.
//! The comparisons are pure ([`Wanted::kernel_mismatch`], [`Wanted::record_mismatch`]); the
//! verb only gathers what they compare, in that order, and ends with the IPAM's CHECK.

use super::{Deps, dataplane_error, delegated_ipam};
use crate::workload::{Context, format_mac};
use calico_dataplane::workload::{GATEWAY_V4, GATEWAY_V6, HOST_MAC};
use calico_dataplane::{Observed, WorkloadSpec};
use calico_datastore::Kv;
use calico_datastore::model::WorkloadEndpoint;
use calico_ipam::cni::store_error;
use cni_protocol::{CniError, Command, ErrorCode, Request};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// What the ADD should have made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The interfaces and the pod's routes (addresses and MAC aside).
    pub spec: WorkloadSpec,
    /// `prevResult`'s addresses of the pod interface, as /32 and /128.
    pub addresses: Vec<IpNet>,
    /// The endpoint record: its name (for messages) and the container it belongs to.
    pub wep_name: String,
    pub container_id: String,
}

fn mismatch(what: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::CHECK_FAILED, what)
}

impl Wanted {
    /// From the request's `prevResult`: the pod's addresses are those on the pod interface,
    /// or all if the result names no interfaces.
    pub fn from_request(req: &Request, ctx: &Context) -> Result<Wanted, CniError> {
        let prev = req.prev_result()?.ok_or_else(|| {
            CniError::invalid_config("CHECK needs prevResult (the result of the ADD)")
        })?;
        let netns = req
            .env
            .netns
            .clone()
            .ok_or_else(|| CniError::invalid_env("CNI_NETNS is missing"))?;
        let pod_index = prev
            .interfaces
            .iter()
            .position(|i| i.name == req.env.ifname && i.sandbox.is_some());
        let addresses: Vec<IpNet> = prev
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
            v4: addresses.iter().any(|a| a.addr().is_ipv4()),
            v6: addresses.iter().any(|a| a.addr().is_ipv6()),
            routes: crate::host_local::routes_for(ctx, req)?,
            allow_ip_forwarding: false,
        };
        Ok(Wanted {
            spec,
            addresses,
            wep_name: ctx.wep_name.clone(),
            container_id: ctx.workload.container_id.clone(),
        })
    }

    /// The first difference between the kernel as found and as wanted, as code 106: the
    /// host end (exists, Calico's MAC, up), the pod interface and exactly its addresses,
    /// the pod's routes, the host's route to each address through the host end.
    pub fn kernel_mismatch(&self, seen: &Observed) -> Result<(), CniError> {
        let spec = &self.spec;
        let host_ifname = &spec.host_ifname;
        let host = seen
            .host
            .as_ref()
            .ok_or_else(|| mismatch(format!("host interface {host_ifname} does not exist")))?;
        if host.mac != Some(HOST_MAC) {
            return Err(mismatch(format!(
                "host interface {host_ifname} has MAC {:?}, expected ee:ee:ee:ee:ee:ee",
                host.mac.map(|m| format_mac(&m))
            )));
        }
        if !host.up {
            return Err(mismatch(format!("host interface {host_ifname} is down")));
        }
        if seen.pod.is_none() {
            return Err(mismatch(format!(
                "interface {} does not exist in the pod",
                spec.ifname
            )));
        }
        let have: BTreeSet<IpNet> = seen.pod_addresses.iter().copied().collect();
        let want: BTreeSet<IpNet> = self.addresses.iter().copied().collect();
        if have != want {
            return Err(mismatch(format!(
                "interface {} in the pod has addresses {have:?}, expected {want:?}",
                spec.ifname
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
        for a in &self.addresses {
            let ok = seen
                .host_routes
                .iter()
                .any(|r| r.dst == *a && r.oif == Some(host.index));
            if !ok {
                return Err(mismatch(format!(
                    "the host has no route to {a} through {host_ifname}"
                )));
            }
        }
        Ok(())
    }

    /// The first difference between the endpoint record as found (`None`: absent) and as
    /// wanted, as code 106: it exists and is readable, belongs to this container, has these
    /// addresses on this host end, and the pod interface's MAC (`pod_mac`, as found).
    pub fn record_mismatch(
        &self,
        record: Option<&Kv>,
        pod_mac: Option<[u8; 6]>,
    ) -> Result<(), CniError> {
        let (name, host_ifname) = (&self.wep_name, &self.spec.host_ifname);
        let kv =
            record.ok_or_else(|| mismatch(format!("endpoint record {name} does not exist")))?;
        let wep = WorkloadEndpoint::from_kv(kv)
            .map_err(|e| mismatch(format!("endpoint record {name} is unreadable: {e}")))?;
        if wep.spec.container_id != self.container_id {
            return Err(mismatch(format!(
                "endpoint record {name} belongs to container {}",
                wep.spec.container_id
            )));
        }
        let recorded: BTreeSet<String> = wep.spec.ip_networks.iter().cloned().collect();
        let expected: BTreeSet<String> = self.addresses.iter().map(ToString::to_string).collect();
        if recorded != expected || wep.spec.interface_name != *host_ifname {
            return Err(mismatch(format!(
                "endpoint record {name} has {recorded:?} on {}, expected {expected:?} on \
                 {host_ifname}",
                wep.spec.interface_name
            )));
        }
        if pod_mac.map(|m| format_mac(&m)).as_deref() != Some(wep.spec.mac.as_str()) {
            return Err(mismatch(format!(
                "endpoint record {name} has MAC {}, the pod interface has {:?}",
                wep.spec.mac,
                pod_mac.map(|m| format_mac(&m))
            )));
        }
        Ok(())
    }
}

/// CHECK: the host end, the pod interface, its addresses and routes, the host routes, the
/// endpoint record and the IPAM allocation are all as the ADD left them.
pub fn check(req: &Request, ctx: &Context, deps: &Deps<'_>) -> Result<(), CniError> {
    let wanted = Wanted::from_request(req, ctx)?;
    let seen = deps
        .dataplane
        .inspect(&wanted.spec, &wanted.addresses)
        .map_err(dataplane_error)?;
    wanted.kernel_mismatch(&seen)?;
    // Only once the kernel matches: a kernel mismatch costs no datastore round trip.
    let record = deps.store.get(&ctx.wep_key).map_err(store_error)?;
    wanted.record_mismatch(record.as_ref(), seen.pod.as_ref().and_then(|l| l.mac))?;
    if ctx.ipam_in_process() {
        calico_ipam::cni::check(deps.store, req, &ctx.node)
    } else {
        delegated_ipam(req, ctx, Command::Check)
    }
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
