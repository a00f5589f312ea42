//! Calico's wiring of a workload: a veth pair whose host end (`cali…`, MAC
//! `ee:ee:ee:ee:ee:ee`) stays on the host and whose other end is the pod's interface; the pod
//! routes everything via `169.254.1.1` (IPv4) or the host end's link-local address (IPv6),
//! which the host answers by proxy ARP / proxy NDP; the host routes each pod address to the
//! host end.

use crate::error::DataplaneError;
use crate::link_removal::{DeletedBy, LinkRemoval};
use crate::netlink::{Link, Netlink, NewRoute, Route};
use crate::{netns, sysctl};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// The host end's MAC, as Calico sets it.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// The pod's IPv4 next hop: exists nowhere, answered by proxy ARP.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The host end's link-local address (EUI-64 of `ee:ee:ee:ee:ee:ee`), the pod's IPv6 next hop.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

/// One workload's interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// The pod's interface (`CNI_IFNAME`).
    pub ifname: String,
    /// The host end (`cali` + 11 hex digits).
    pub host_ifname: String,
    /// `None` leaves the kernel default (1500).
    pub mtu: Option<u32>,
    /// Transmit and receive queues of each end (`num_queues`; Calico's default is 1).
    pub num_queues: u32,
    pub pod_mac: [u8; 6],
    /// Which families the pod will have (sysctls and routes depend on it).
    pub v4: bool,
    pub v6: bool,
    /// The pod's routes, each via the gateway of its family ([`default_routes`] unless the
    /// config names others); a route of a family the pod does not have is skipped.
    pub routes: Vec<IpNet>,
    /// `container_settings.allow_ip_forwarding`.
    pub allow_ip_forwarding: bool,
}

/// Calico's pod routes (`utils.DefaultRoutes`): everything, in both families.
pub fn default_routes() -> Vec<IpNet> {
    vec![
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ]
}

/// The two ends [`Dataplane::create`] made, by interface index (so configuring them needs no
/// lookups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Links {
    pub host_index: u32,
    pub pod_index: u32,
}

/// The state found, for CHECK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub host: Option<Link>,
    pub pod: Option<Link>,
    pub pod_addresses: Vec<IpNet>,
    pub pod_routes: Vec<Route>,
    /// Host main-table routes whose destination is one of the given addresses.
    pub host_routes: Vec<Route>,
}

/// What the plugin asks of the kernel. [`LinuxDataplane`] is the real thing; the plugin's
/// tests use a recording fake to check rollbacks.
pub trait Dataplane {
    /// Creates the veth pair with its sysctls, brings both ends up, and sets the pod's
    /// routes and forwarding sysctls (all that does not depend on the addresses).
    fn create(&self, spec: &WorkloadSpec) -> Result<Links, DataplaneError> {
        self.create_then(spec, &mut || {})
    }
    /// As [`Dataplane::create`], calling `paired` as soon as the veth pair exists: from then
    /// on nothing can take the names (the rest, settings and links up, rarely fails and is
    /// undone with the interface if it does).
    fn create_then(
        &self,
        spec: &WorkloadSpec,
        paired: &mut dyn FnMut(),
    ) -> Result<Links, DataplaneError>;
    /// The pod's addresses and the host's routes to them, on the links `create` made.
    fn configure(
        &self,
        spec: &WorkloadSpec,
        links: &Links,
        addresses: &[IpNet],
    ) -> Result<(), DataplaneError>;
    /// Undoes [`Dataplane::configure`] for `addresses` (when an allocation had to be
    /// planned again and chose others). What is already gone is fine.
    fn unconfigure(
        &self,
        spec: &WorkloadSpec,
        links: &Links,
        addresses: &[IpNet],
    ) -> Result<(), DataplaneError>;
    /// Removes the pod's interface (and so its host end and the routes through it), found
    /// by name in the pod's namespace. Missing namespace or interface is success. Nothing is
    /// ever deleted by the host end's name: a newer sandbox of the same pod has the same one.
    fn remove(&self, netns: Option<&Path>, ifname: &str) -> Result<(), DataplaneError>;
    /// Reads back what [`Dataplane::create`] and [`Dataplane::configure`] made.
    fn inspect(&self, spec: &WorkloadSpec, addresses: &[IpNet])
    -> Result<Observed, DataplaneError>;
    /// As [`Dataplane::remove`], without waiting for the kernel to free the interface when
    /// the node agent can do that: the host routes to the pod's addresses go at once (so a
    /// new pod may reuse an address immediately), then the agent deletes the interface,
    /// named by the namespace and its index there (see [`crate::link_removal`]); without an
    /// agent it is deleted here. Freeing a veth makes the kernel wait out an RCU grace
    /// period (10-20 ms here), the bulk of a DEL otherwise.
    fn remove_detached(&self, netns: Option<&Path>, ifname: &str) -> Result<(), DataplaneError> {
        self.remove(netns, ifname)
    }
    /// Host interfaces whose name starts with `prefix`.
    fn host_interfaces(&self, prefix: &str) -> Result<Vec<String>, DataplaneError>;
    /// Every address in use on this host, the sign that a pod holding it is alive: routed by
    /// a host route (/32, /128) to an interface (Calico and `ptp` write those), or assigned
    /// to an interface in any network namespace a process holds or a runtime pinned (any
    /// plugin). Costs a visit to every namespace: for GC, not for ADD or DEL.
    fn addresses_in_use(&self) -> Result<BTreeSet<IpAddr>, DataplaneError>;
}

/// The kernel, through netlink and `/proc/sys`.
#[derive(Default)]
pub struct LinuxDataplane {
    /// The netlink sockets [`Dataplane::create_then`] made for a workload, kept for its
    /// [`Dataplane::configure`] (an ADD calls both): each visit to a pod's namespace is a
    /// thread, a `setns` and a socket, ~0.3 ms of the ADD here.
    opened: std::sync::Mutex<Option<Opened>>,
}

impl std::fmt::Debug for LinuxDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinuxDataplane")
    }
}

/// A workload's sockets on the host and in its namespace, for the links made there.
struct Opened {
    netns: PathBuf,
    links: Links,
    host: Netlink,
    pod: Netlink,
}

impl LinuxDataplane {
    /// The sockets kept for `links` in `spec`'s namespace, if these are the links last made.
    fn take_opened(&self, spec: &WorkloadSpec, links: &Links) -> Option<(Netlink, Netlink)> {
        let mut slot = self.opened.lock().ok()?;
        match slot.take() {
            Some(o) if o.netns == spec.netns && o.links == *links => Some((o.host, o.pod)),
            _ => None,
        }
    }

    fn keep_opened(&self, spec: &WorkloadSpec, links: Links, host: Netlink, pod: Netlink) {
        if let Ok(mut slot) = self.opened.lock() {
            *slot = Some(Opened {
                netns: spec.netns.clone(),
                links,
                host,
                pod,
            });
        }
    }

    /// Sockets on the host and in the pod for work on `links`: the kept ones unless
    /// `in_pod` has something to do there, else new ones ([`open_both`]).
    fn sockets_for(
        &self,
        spec: &WorkloadSpec,
        links: &Links,
        nothing_in_pod: bool,
        in_pod: impl FnOnce() -> Result<(), DataplaneError> + Send,
    ) -> Result<(Netlink, Netlink), DataplaneError> {
        if nothing_in_pod && let Some(kept) = self.take_opened(spec, links) {
            return Ok(kept);
        }
        open_both(spec, in_pod)
    }
}

fn host_sysctls(host: &Netlink, index: u32, spec: &WorkloadSpec) -> Result<(), DataplaneError> {
    let h = &spec.host_ifname;
    if spec.v4 {
        // route_localnet lets hostPort traffic to 127.0.0.1 reach the pod (portmap).
        host.enable_ipv4_conf(index, true, true, true)?;
        // Without proxy_delay=0 the first packet waits for the proxy-ARP timer.
        sysctl::set_best_effort(&format!("ipv4/neigh/{h}/proxy_delay"), "0");
    }
    if spec.v6 {
        host_ipv6_sysctls(h, false)?;
    }
    sysctl::set_best_effort(&format!("ipv6/conf/{h}/accept_ra"), "0");
    Ok(())
}

/// The host end's settings for a pod with IPv6 addresses, as Calico's: DAD off before IPv6 is
/// on, so its link-local address (the pod's IPv6 gateway) is never tentative. `up_already`:
/// the address came after the link (a delegated IPAM plugin chose the families), which came
/// up with IPv6 as the node's default has it and DAD running on its link-local address, a
/// second the first packets would wait for; IPv6 goes off and on again with DAD off, which
/// makes the address anew.
fn host_ipv6_sysctls(h: &str, up_already: bool) -> Result<(), DataplaneError> {
    sysctl::set(&format!("ipv6/conf/{h}/accept_dad"), "0")?;
    // EUI-64 link-local, so the host end is always fe80::ecee:eeff:feee:eeee.
    sysctl::set_best_effort(&format!("ipv6/conf/{h}/addr_gen_mode"), "0");
    if up_already {
        sysctl::set(&format!("ipv6/conf/{h}/disable_ipv6"), "1")?;
    }
    sysctl::set(&format!("ipv6/conf/{h}/disable_ipv6"), "0")?;
    sysctl::set(&format!("ipv6/conf/{h}/proxy_ndp"), "1")?;
    sysctl::set(&format!("ipv6/conf/{h}/forwarding"), "1")?;
    Ok(())
}

/// The pod's routes (of the families asked for): each via 169.254.1.1 (IPv4, reached by a
/// link route) or the host end's link-local address (IPv6), as Calico's dataplane adds them.
fn pod_gateways(
    pod: &Netlink,
    index: u32,
    v4: bool,
    v6: bool,
    routes: &[IpNet],
) -> Result<(), DataplaneError> {
    if v4 {
        pod.add_route(&NewRoute {
            dst: IpNet::from(IpAddr::V4(GATEWAY_V4)),
            gateway: None,
            oif: index,
            link_scope: true,
        })?;
    }
    for dst in routes {
        let gateway = match dst {
            IpNet::V4(_) if v4 => IpAddr::V4(GATEWAY_V4),
            IpNet::V6(_) if v6 => IpAddr::V6(GATEWAY_V6),
            _ => continue,
        };
        pod.add_route(&NewRoute {
            dst: *dst,
            gateway: Some(gateway),
            oif: index,
            link_scope: false,
        })?;
    }
    Ok(())
}

/// `container_settings.allow_ip_forwarding`, written inside the pod either way (as Calico),
/// from inside the pod's namespace.
fn forwarding_here(spec: &WorkloadSpec, v4: bool, v6: bool) -> Result<(), DataplaneError> {
    let forward = if spec.allow_ip_forwarding { "1" } else { "0" };
    // Asked first (over netlink, see `forwarding`): a new namespace usually has the wanted
    // value already, and a write spins on the rtnl lock while the kernel frees old
    // namespaces.
    let set = |v6: bool, path: &str| {
        if crate::forwarding::forwarding_all(v6) == Some(spec.allow_ip_forwarding) {
            return Ok(());
        }
        sysctl::set(path, forward)
    };
    if v4 {
        set(false, "ipv4/ip_forward")?;
    }
    if v6 {
        set(true, "ipv6/conf/all/forwarding")?;
    }
    Ok(())
}

/// Netlink sockets on the host and in the pod; in the same visit to the pod's namespace,
/// `in_pod` (settings written from there).
fn open_both(
    spec: &WorkloadSpec,
    in_pod: impl FnOnce() -> Result<(), DataplaneError> + Send,
) -> Result<(Netlink, Netlink), DataplaneError> {
    let ns = netns::open_pod_to_enter(&spec.netns)?;
    let host = Netlink::host()?;
    let pod = netns::within(&ns, &spec.netns, || {
        in_pod()?;
        Netlink::host()
    })??;
    Ok((host, pod))
}

/// The pod's namespace for a removal, and a netlink socket there; `None` if there is nothing
/// to remove from: the path is
/// gone, or is no network namespace any more (a runtime's pin file left after the namespace
/// was unmounted). The caller's own namespace is still refused: the interface of that name
/// there is the node's.
fn open_for_removal(path: &Path) -> Result<Option<(std::fs::File, Netlink)>, DataplaneError> {
    let opened =
        netns::open_pod_to_enter(path).and_then(|ns| Ok((Netlink::in_netns(&ns, path)?, ns)));
    match opened {
        Ok((pod, ns)) => Ok(Some((ns, pod))),
        Err(DataplaneError::NetnsMissing(_)) => Ok(None),
        Err(e @ DataplaneError::NotPodNetns { reason, .. }) if reason == netns::NOT_A_NETNS => {
            log::warn!("nothing to remove: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// [`Dataplane::configure`]'s work, on sockets on the host and in the pod.
fn configure_with(
    spec: &WorkloadSpec,
    links: &Links,
    addresses: &[IpNet],
    host: &Netlink,
    pod: &Netlink,
    v4: bool,
    v6: bool,
) -> Result<(), DataplaneError> {
    pod_gateways(pod, links.pod_index, v4, v6, &spec.routes)?;
    for a in addresses {
        // Calico puts /32 and /128 on the pod: everything else goes via the gateway.
        pod.add_address(links.pod_index, IpNet::from(a.addr()))?;
    }
    for a in addresses {
        let dst = IpNet::from(a.addr());
        let route = NewRoute {
            dst,
            gateway: None,
            oif: links.host_index,
            link_scope: true,
        };
        if !host.add_route(&route)? {
            // Felix may have programmed the same route already: fine. A route through
            // another interface is a conflict to report, naming both.
            let existing = host
                .routes(dst.addr().is_ipv4())?
                .into_iter()
                .find(|r| r.dst == dst);
            match existing {
                Some(r) if r.oif == Some(links.host_index) => {}
                Some(r) => {
                    let other = r
                        .oif
                        .and_then(|i| {
                            host.links()
                                .ok()?
                                .into_iter()
                                .find(|l| l.index == i)
                                .map(|l| l.name)
                        })
                        .unwrap_or_else(|| format!("{:?}", r.oif));
                    return Err(DataplaneError::RouteConflict {
                        dst: dst.to_string(),
                        wanted: spec.host_ifname.clone(),
                        existing: other,
                    });
                }
                None => {}
            }
        }
    }
    Ok(())
}

impl Dataplane for LinuxDataplane {
    fn create_then(
        &self,
        spec: &WorkloadSpec,
        paired: &mut dyn FnMut(),
    ) -> Result<Links, DataplaneError> {
        // Asked whether it is a network namespace, which for a pinned one (a bind mount:
        // its descriptor links to the path) costs a thread that enters it. The kernel would
        // refuse another type when the pair is made with its descriptor, so the question
        // could wait for a failure; measured, that ADD was 0.09-0.17 ms slower (four
        // interleaved runs of 200 pods, session 29): the pair then comes ~0.3 ms earlier,
        // while calico-node and etcd serve the transaction on the same two cores.
        let ns = netns::open_pod(&spec.netns)?;
        let host = Netlink::host()?;
        // The host end comes up in the creating request, except with IPv6: DAD must be off
        // before it comes up (its link-local address is the pod's gateway, and a tentative
        // one would stall the pod's first packets).
        let up_at_once = !spec.v6;
        let add = || {
            host.add_veth(
                &spec.host_ifname,
                HOST_MAC,
                &spec.ifname,
                spec.pod_mac,
                &ns,
                spec.mtu,
                spec.num_queues,
                up_at_once,
            )
        };
        let mut created = add()?;
        if !created {
            // A host end left by an earlier sandbox of the same pod blocks the name.
            if let Some(stale) = host.link(&spec.host_ifname)? {
                host.delete_link(stale.index)?;
                created = add()?;
            }
        }
        if !created {
            return Err(DataplaneError::Exists {
                ifname: spec.ifname.clone(),
                host_ifname: spec.host_ifname.clone(),
            });
        }
        paired();
        // One visit to the pod's namespace: a netlink socket there, the interface's index (by
        // ioctl: no rtnl lock, unlike a netlink lookup), its IPv6 settings and forwarding.
        let (pod, pod_index) = netns::within(&ns, &spec.netns, || {
            let index = nix::net::if_::if_nametoindex(spec.ifname.as_str())
                .map_err(|e| DataplaneError::netlink("find the pod interface", e))?;
            if spec.v6 {
                for conf in ["all", "default", "lo"] {
                    sysctl::set_best_effort(&format!("ipv6/conf/{conf}/disable_ipv6"), "0");
                }
                sysctl::set(&format!("ipv6/conf/{}/accept_dad", spec.ifname), "0")?;
            }
            forwarding_here(spec, spec.v4, spec.v6)?;
            Ok::<_, DataplaneError>((Netlink::host()?, index))
        })??;
        // The host end's index by ioctl: no rtnl lock, unlike a netlink lookup.
        let host_index = nix::net::if_::if_nametoindex(spec.host_ifname.as_str())
            .map_err(|e| DataplaneError::netlink("find the host interface", e))?;
        host_sysctls(&host, host_index, spec)?;
        if !up_at_once {
            host.set_up(host_index)?;
        }
        pod.set_up(pod_index)?;
        // The pod's routes do not depend on its addresses: set them now, while the
        // allocation is still being committed, so only the addresses are left for later.
        pod_gateways(&pod, pod_index, spec.v4, spec.v6, &spec.routes)?;
        let links = Links {
            host_index,
            pod_index,
        };
        self.keep_opened(spec, links, host, pod);
        Ok(links)
    }

    fn configure(
        &self,
        spec: &WorkloadSpec,
        links: &Links,
        addresses: &[IpNet],
    ) -> Result<(), DataplaneError> {
        // A family the addresses have but `create` was not told about (a delegated IPAM
        // plugin decides the families) gets its routes and forwarding now.
        let v4 = addresses.iter().any(|a| a.addr().is_ipv4()) && !spec.v4;
        let v6 = addresses.iter().any(|a| a.addr().is_ipv6()) && !spec.v6;
        if v6 {
            host_ipv6_sysctls(&spec.host_ifname, true)?;
        }
        let (host, pod) =
            self.sockets_for(spec, links, !v4 && !v6, || forwarding_here(spec, v4, v6))?;
        let outcome = configure_with(spec, links, addresses, &host, &pod, v4, v6);
        self.keep_opened(spec, *links, host, pod);
        outcome
    }

    fn unconfigure(
        &self,
        spec: &WorkloadSpec,
        links: &Links,
        addresses: &[IpNet],
    ) -> Result<(), DataplaneError> {
        let (host, pod) = self.sockets_for(spec, links, true, || Ok(()))?;
        let outcome = addresses.iter().try_for_each(|a| {
            host.delete_route(IpNet::from(a.addr()), links.host_index)?;
            pod.delete_address(links.pod_index, IpNet::from(a.addr()))
        });
        self.keep_opened(spec, *links, host, pod);
        outcome
    }

    fn remove(&self, netns: Option<&Path>, ifname: &str) -> Result<(), DataplaneError> {
        let Some(path) = netns else {
            // No namespace named: its interfaces go with it.
            return Ok(());
        };
        let Some((_, pod)) = open_for_removal(path)? else {
            return Ok(());
        };
        if let Some(link) = pod.link(ifname)? {
            pod.delete_link(link.index)?;
        }
        Ok(())
    }

    fn remove_detached(&self, netns: Option<&Path>, ifname: &str) -> Result<(), DataplaneError> {
        let Some(path) = netns else {
            return Ok(());
        };
        let Some((ns, pod)) = open_for_removal(path)? else {
            return Ok(());
        };
        let Some(link) = pod.link(ifname)? else {
            return Ok(());
        };
        // The host routes to the pod's addresses go now, through the veth's peer by index
        // (found from the pod's interface, not by dumping the node's whole routing table,
        // which grows with the pods, nor by the host end's name, which a newer sandbox of
        // the same pod shares).
        if let Some(peer) = link.peer {
            let host = Netlink::host()?;
            for a in pod.addresses(link.index)? {
                host.delete_route(IpNet::from(a.addr()), peer)?;
            }
        }
        let removal = LinkRemoval {
            netns: ns,
            netns_path: path.to_path_buf(),
            index: link.index,
            ifname: ifname.to_string(),
        };
        match removal.hand_over()? {
            DeletedBy::Agent => {
                log::debug!("{ifname} (index {}) handed to calico-node", link.index)
            }
            DeletedBy::Us(outcome) => log::debug!("{ifname} (index {}): {outcome:?}", link.index),
        }
        Ok(())
    }

    fn inspect(
        &self,
        spec: &WorkloadSpec,
        addresses: &[IpNet],
    ) -> Result<Observed, DataplaneError> {
        let host = Netlink::host()?;
        let mut seen = Observed {
            host: host.link(&spec.host_ifname)?,
            ..Observed::default()
        };
        for v4 in [true, false] {
            seen.host_routes.extend(
                host.routes(v4)?
                    .into_iter()
                    .filter(|r| addresses.iter().any(|a| IpNet::from(a.addr()) == r.dst)),
            );
        }
        let ns = netns::open_pod_to_enter(&spec.netns)?;
        let pod = Netlink::in_netns(&ns, &spec.netns)?;
        seen.pod = pod.link(&spec.ifname)?;
        if let Some(l) = &seen.pod {
            seen.pod_addresses = pod.addresses(l.index)?;
            for v4 in [true, false] {
                seen.pod_routes.extend(
                    pod.routes(v4)?
                        .into_iter()
                        .filter(|r| r.oif == Some(l.index)),
                );
            }
        }
        Ok(seen)
    }

    fn host_interfaces(&self, prefix: &str) -> Result<Vec<String>, DataplaneError> {
        Ok(Netlink::host()?
            .links()?
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    fn addresses_in_use(&self) -> Result<BTreeSet<IpAddr>, DataplaneError> {
        let host = Netlink::host()?;
        let mut used = BTreeSet::new();
        for v4 in [true, false] {
            for r in host.routes(v4)? {
                if r.dst.prefix_len() == r.dst.max_prefix_len() && r.oif.is_some() {
                    used.insert(r.dst.addr());
                }
            }
        }
        // One namespace open at a time (a node may have thousands); any failure but "gone
        // meanwhile" is an error, so GC keeps everything rather than free a live address.
        let mut seen = BTreeSet::new();
        for path in netns::visible_paths() {
            let Some(ns) = netns::open_visible(&path)? else {
                continue;
            };
            let id = netns::identity(&ns, &path)?;
            if !seen.insert((id.dev, id.ino)) {
                continue;
            }
            let addrs = Netlink::in_netns(&ns, &path)?.all_addresses()?;
            used.extend(addrs.iter().map(IpNet::addr));
        }
        Ok(used)
    }
}
