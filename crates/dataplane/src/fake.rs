//! [`FakeDataplane`]: the kernel in memory, for testing the logic above [`Dataplane`]
//! without root (the real thing, [`crate::LinuxDataplane`], is tested in namespaces).
//!
//! It keeps what the trait's callers can see: network namespaces by path, their links by
//! index and name (veth pairs joined across namespaces: deleting one end deletes the other
//! and every route through either), the addresses on each link and each namespace's main
//! routes. Sysctls are not modelled. It behaves as [`crate::LinuxDataplane`] does where the
//! callers depend on it: a missing namespace, a pod interface name already taken, a stale
//! host end left by an earlier sandbox, a host route through another interface, what is
//! already gone on removal.
//!
//! Every call passes through named [`Step`]s, which it records in order; a test can make any
//! step fail ([`FakeDataplane::fail`]) or panic ([`FakeDataplane::panic_at`]), or run some
//! code when it is reached ([`FakeDataplane::on`]: what happens meanwhile elsewhere).

use crate::error::DataplaneError;
use crate::netlink::{Link, ROUTE_PROTOCOL, Route};
use crate::workload::{Dataplane, GATEWAY_V4, GATEWAY_V6, HOST_MAC, Links, Observed, WorkloadSpec};
use ipnet::IpNet;
use nix::libc::{RT_SCOPE_LINK, RT_SCOPE_UNIVERSE};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// A point in a [`Dataplane`] call where a test can inject a failure or run code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `create_then` before anything exists: a failure leaves nothing.
    CreatePair,
    /// `create_then` once the pair exists and `paired` has been called (links up, the pod's
    /// routes): a failure leaves the pair, down, as the kernel would.
    FinishPair,
    /// `configure`, before it changes anything.
    Configure,
    /// `configure` putting this address on the pod's interface.
    PodAddress(IpAddr),
    /// `configure` routing this address to the host end.
    HostRoute(IpAddr),
    /// `unconfigure`, before it changes anything.
    Unconfigure,
    Remove,
    RemoveDetached,
    Inspect,
    HostInterfaces,
    AddressesInUse,
}

/// A network namespace: the host's, or one at a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Netns {
    Host,
    At(PathBuf),
}

impl Netns {
    pub fn at(path: impl Into<PathBuf>) -> Netns {
        Netns::At(path.into())
    }
}

/// One link and what is on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeLink {
    pub link: Link,
    /// Global addresses, as [`crate::netlink::Netlink::addresses`] reads them.
    pub addresses: Vec<IpNet>,
    /// The other end of a veth: its namespace and index there.
    pub peer: Option<(Netns, u32)>,
}

/// A namespace's links (by index) and main-table routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    pub links: BTreeMap<u32, FakeLink>,
    pub routes: Vec<Route>,
}

impl Namespace {
    /// The link of that name.
    pub fn link(&self, name: &str) -> Option<&FakeLink> {
        self.links.values().find(|l| l.link.name == name)
    }
}

/// The whole fake kernel: comparable, so a test can check that a failed call left it as it
/// was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub namespaces: BTreeMap<Netns, Namespace>,
}

impl Default for Kernel {
    fn default() -> Self {
        Kernel {
            namespaces: [(Netns::Host, Namespace::default())].into_iter().collect(),
        }
    }
}

impl Kernel {
    /// A namespace, if it exists.
    pub fn netns(&self, ns: &Netns) -> Option<&Namespace> {
        self.namespaces.get(ns)
    }

    /// The host's namespace (always there).
    pub fn host(&self) -> &Namespace {
        self.namespaces
            .get(&Netns::Host)
            .unwrap_or_else(|| unreachable!("the host namespace is never removed"))
    }

    fn ns_mut(&mut self, ns: &Netns) -> Result<&mut Namespace, DataplaneError> {
        self.namespaces.get_mut(ns).ok_or_else(|| missing(ns))
    }

    fn index_of(&self, ns: &Netns, name: &str) -> Option<u32> {
        self.netns(ns)?.link(name).map(|l| l.link.index)
    }

    /// Deletes a link, its veth peer and every route through either.
    fn delete_link(&mut self, ns: &Netns, index: u32) {
        let Some(space) = self.namespaces.get_mut(ns) else {
            return;
        };
        let Some(gone) = space.links.remove(&index) else {
            return;
        };
        space.routes.retain(|r| r.oif != Some(index));
        if let Some((peer_ns, peer)) = gone.peer {
            self.delete_link(&peer_ns, peer);
        }
    }

    /// Adds a route; false if one to that destination exists already (EEXIST).
    fn add_route(&mut self, ns: &Netns, route: Route) -> Result<bool, DataplaneError> {
        let space = self.ns_mut(ns)?;
        if route.oif.is_some_and(|i| !space.links.contains_key(&i)) {
            return Err(DataplaneError::netlink(
                format!("add route {}", route.dst),
                "no such device",
            ));
        }
        if space.routes.iter().any(|r| r.dst == route.dst) {
            return Ok(false);
        }
        space.routes.push(route);
        Ok(true)
    }

    fn link_mut(&mut self, ns: &Netns, index: u32) -> Result<&mut FakeLink, DataplaneError> {
        self.ns_mut(ns)?
            .links
            .get_mut(&index)
            .ok_or_else(|| DataplaneError::netlink(format!("link {index}"), "no such device"))
    }
}

fn missing(ns: &Netns) -> DataplaneError {
    match ns {
        Netns::At(p) => DataplaneError::NetnsMissing(p.clone()),
        Netns::Host => DataplaneError::netlink("open the host namespace", "gone"),
    }
}

/// A route of ours (protocol [`ROUTE_PROTOCOL`]) as the kernel reads it back.
pub fn route(dst: IpNet, gateway: Option<IpAddr>, oif: u32, link_scope: bool) -> Route {
    Route {
        dst,
        gateway,
        oif: Some(oif),
        scope: if link_scope {
            RT_SCOPE_LINK
        } else {
            RT_SCOPE_UNIVERSE
        },
        protocol: ROUTE_PROTOCOL,
    }
}

/// What a step does when reached.
enum Fault {
    Fail,
    Panic,
}

type Hook = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    kernel: Kernel,
    next_index: u32,
    faults: Vec<(Step, Fault)>,
    hooks: Vec<(Step, Hook)>,
    steps: Vec<Step>,
}

/// The kernel in memory (see the module docs).
#[derive(Default)]
pub struct FakeDataplane {
    state: Mutex<State>,
}

impl FakeDataplane {
    /// A host namespace with no links; no other namespace.
    pub fn new() -> Self {
        FakeDataplane::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic injected by a test never holds the lock, so the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates an empty namespace at `path` (a pod's, before its ADD).
    pub fn add_netns(&self, path: impl Into<PathBuf>) {
        self.lock()
            .kernel
            .namespaces
            .entry(Netns::At(path.into()))
            .or_default();
    }

    /// Removes a namespace and everything in it (veth peers elsewhere go too).
    pub fn remove_netns(&self, path: &Path) {
        let ns = Netns::at(path);
        let mut s = self.lock();
        let indices: Vec<u32> = s
            .kernel
            .netns(&ns)
            .map(|n| n.links.keys().copied().collect())
            .unwrap_or_default();
        for i in indices {
            s.kernel.delete_link(&ns, i);
        }
        s.kernel.namespaces.remove(&ns);
    }

    /// Adds a link that is up and is nobody's veth (a host end left behind, a foreign
    /// interface); returns its index.
    pub fn add_link(&self, ns: &Netns, name: &str) -> Result<u32, DataplaneError> {
        let mut s = self.lock();
        let index = s.new_index();
        s.kernel.ns_mut(ns)?.links.insert(
            index,
            FakeLink {
                link: Link {
                    index,
                    name: name.to_string(),
                    mac: None,
                    up: true,
                    mtu: None,
                    peer: None,
                },
                addresses: Vec::new(),
                peer: None,
            },
        );
        Ok(index)
    }

    /// Puts an address on a link.
    pub fn add_address(
        &self,
        ns: &Netns,
        index: u32,
        address: IpNet,
    ) -> Result<(), DataplaneError> {
        let mut s = self.lock();
        let link = s.kernel.link_mut(ns, index)?;
        if !link.addresses.contains(&address) {
            link.addresses.push(address);
        }
        Ok(())
    }

    /// Adds a main-table route (an existing one to the same destination stays).
    pub fn add_route(&self, ns: &Netns, route: Route) -> Result<(), DataplaneError> {
        self.lock().kernel.add_route(ns, route).map(|_| ())
    }

    /// Makes `step` fail every time it is reached, until [`FakeDataplane::heal`].
    pub fn fail(&self, step: Step) {
        self.lock().faults.push((step, Fault::Fail));
    }

    /// Makes `step` panic every time it is reached, until [`FakeDataplane::heal`].
    pub fn panic_at(&self, step: Step) {
        self.lock().faults.push((step, Fault::Panic));
    }

    /// Takes back every failure and panic injected.
    pub fn heal(&self) {
        self.lock().faults.clear();
    }

    /// Runs `hook` the first time `step` is reached, before the step acts (and before an
    /// injected failure).
    pub fn on(&self, step: Step, hook: impl FnOnce() + Send + 'static) {
        self.lock().hooks.push((step, Box::new(hook)));
    }

    /// A copy of the kernel's state.
    pub fn kernel(&self) -> Kernel {
        self.lock().kernel.clone()
    }

    /// Every step reached so far, in order.
    pub fn steps(&self) -> Vec<Step> {
        self.lock().steps.clone()
    }

    /// Passes `step`: records it, runs its hook, then fails or panics if told to. The lock
    /// is not held while the hook runs (it may use the fake) nor when panicking.
    fn step(&self, step: Step) -> Result<(), DataplaneError> {
        let hook = {
            let mut s = self.lock();
            s.steps.push(step.clone());
            let at = s.hooks.iter().position(|(h, _)| *h == step);
            at.map(|i| s.hooks.remove(i).1)
        };
        if let Some(hook) = hook {
            hook();
        }
        let fault = self
            .lock()
            .faults
            .iter()
            .find(|(f, _)| *f == step)
            .map(|(_, f)| matches!(f, Fault::Panic));
        match fault {
            Some(true) => panic!("injected panic at {step:?}"),
            Some(false) => Err(DataplaneError::netlink(
                format!("{step:?}"),
                "injected failure",
            )),
            None => Ok(()),
        }
    }
}

impl State {
    fn new_index(&mut self) -> u32 {
        // 1 is every namespace's loopback.
        self.next_index = self.next_index.max(1) + 1;
        self.next_index
    }

    /// The pod's routes of the families asked for, each via its family's gateway (as
    /// `workload::pod_gateways`).
    fn pod_gateways(
        &mut self,
        pod: &Netns,
        index: u32,
        v4: bool,
        v6: bool,
        routes: &[IpNet],
    ) -> Result<(), DataplaneError> {
        if v4 {
            let gw = IpNet::from(IpAddr::V4(GATEWAY_V4));
            self.kernel.add_route(pod, route(gw, None, index, true))?;
        }
        for dst in routes {
            let gateway = match dst {
                IpNet::V4(_) if v4 => IpAddr::V4(GATEWAY_V4),
                IpNet::V6(_) if v6 => IpAddr::V6(GATEWAY_V6),
                _ => continue,
            };
            self.kernel
                .add_route(pod, route(*dst, Some(gateway), index, false))?;
        }
        Ok(())
    }

    fn remove(&mut self, netns: Option<&Path>, ifname: &str) {
        let Some(path) = netns else {
            return;
        };
        let ns = Netns::at(path);
        if let Some(index) = self.kernel.index_of(&ns, ifname) {
            self.kernel.delete_link(&ns, index);
        }
    }
}

impl Dataplane for FakeDataplane {
    fn create_then(
        &self,
        spec: &WorkloadSpec,
        paired: &mut dyn FnMut(),
    ) -> Result<Links, DataplaneError> {
        self.step(Step::CreatePair)?;
        let pod_ns = Netns::at(&spec.netns);
        let links = {
            let mut s = self.lock();
            if s.kernel.netns(&pod_ns).is_none() {
                return Err(missing(&pod_ns));
            }
            let stale = s.kernel.index_of(&Netns::Host, &spec.host_ifname);
            // The kernel refuses the pair if either name is taken; LinuxDataplane then
            // deletes a host end left by an earlier sandbox and tries once more.
            if let Some(stale) = stale {
                s.kernel.delete_link(&Netns::Host, stale);
            }
            if s.kernel.index_of(&pod_ns, &spec.ifname).is_some() {
                return Err(DataplaneError::Exists {
                    ifname: spec.ifname.clone(),
                    host_ifname: spec.host_ifname.clone(),
                });
            }
            let (host_index, pod_index) = (s.new_index(), s.new_index());
            let end = |index, name: &str, mac, peer| FakeLink {
                link: Link {
                    index,
                    name: name.to_string(),
                    mac: Some(mac),
                    up: false,
                    mtu: spec.mtu,
                    peer: Some(peer),
                },
                addresses: Vec::new(),
                peer: None,
            };
            let mut host = end(host_index, &spec.host_ifname, HOST_MAC, pod_index);
            host.peer = Some((pod_ns.clone(), pod_index));
            let mut pod = end(pod_index, &spec.ifname, spec.pod_mac, host_index);
            pod.peer = Some((Netns::Host, host_index));
            s.kernel
                .ns_mut(&Netns::Host)?
                .links
                .insert(host_index, host);
            s.kernel.ns_mut(&pod_ns)?.links.insert(pod_index, pod);
            Links {
                host_index,
                pod_index,
            }
        };
        paired();
        self.step(Step::FinishPair)?;
        let mut s = self.lock();
        s.kernel.link_mut(&Netns::Host, links.host_index)?.link.up = true;
        s.kernel.link_mut(&pod_ns, links.pod_index)?.link.up = true;
        s.pod_gateways(&pod_ns, links.pod_index, spec.v4, spec.v6, &spec.routes)?;
        Ok(links)
    }

    fn configure(
        &self,
        spec: &WorkloadSpec,
        links: &Links,
        addresses: &[IpNet],
    ) -> Result<(), DataplaneError> {
        self.step(Step::Configure)?;
        let pod_ns = Netns::at(&spec.netns);
        {
            let mut s = self.lock();
            if s.kernel.netns(&pod_ns).is_none() {
                return Err(missing(&pod_ns));
            }
            // A family the addresses have but `create` was not told about gets its routes.
            let v4 = addresses.iter().any(|a| a.addr().is_ipv4()) && !spec.v4;
            let v6 = addresses.iter().any(|a| a.addr().is_ipv6()) && !spec.v6;
            s.pod_gateways(&pod_ns, links.pod_index, v4, v6, &spec.routes)?;
        }
        for a in addresses {
            self.step(Step::PodAddress(a.addr()))?;
            self.add_address(&pod_ns, links.pod_index, IpNet::from(a.addr()))?;
        }
        for a in addresses {
            self.step(Step::HostRoute(a.addr()))?;
            let dst = IpNet::from(a.addr());
            let mut s = self.lock();
            let wanted = route(dst, None, links.host_index, true);
            if s.kernel.add_route(&Netns::Host, wanted)? {
                continue;
            }
            // As LinuxDataplane: the same route is fine, one through another interface is
            // a conflict naming both.
            let host = s.kernel.host();
            let existing = host
                .routes
                .iter()
                .find(|r| r.dst == dst)
                .and_then(|r| r.oif);
            if existing == Some(links.host_index) {
                continue;
            }
            let other = existing
                .and_then(|i| host.links.get(&i))
                .map(|l| l.link.name.clone())
                .unwrap_or_else(|| format!("{existing:?}"));
            return Err(DataplaneError::RouteConflict {
                dst: dst.to_string(),
                wanted: spec.host_ifname.clone(),
                existing: other,
            });
        }
        Ok(())
    }

    fn unconfigure(
        &self,
        spec: &WorkloadSpec,
        links: &Links,
        addresses: &[IpNet],
    ) -> Result<(), DataplaneError> {
        self.step(Step::Unconfigure)?;
        let pod_ns = Netns::at(&spec.netns);
        let mut s = self.lock();
        if s.kernel.netns(&pod_ns).is_none() {
            return Err(missing(&pod_ns));
        }
        for a in addresses {
            let dst = IpNet::from(a.addr());
            s.kernel
                .ns_mut(&Netns::Host)?
                .routes
                .retain(|r| !(r.dst == dst && r.oif == Some(links.host_index)));
            if let Ok(link) = s.kernel.link_mut(&pod_ns, links.pod_index) {
                link.addresses.retain(|x| *x != dst);
            }
        }
        Ok(())
    }

    fn remove(&self, netns: Option<&Path>, ifname: &str) -> Result<(), DataplaneError> {
        self.step(Step::Remove)?;
        self.lock().remove(netns, ifname);
        Ok(())
    }

    fn remove_detached(&self, netns: Option<&Path>, ifname: &str) -> Result<(), DataplaneError> {
        self.step(Step::RemoveDetached)?;
        self.lock().remove(netns, ifname);
        Ok(())
    }

    fn inspect(
        &self,
        spec: &WorkloadSpec,
        addresses: &[IpNet],
    ) -> Result<Observed, DataplaneError> {
        self.step(Step::Inspect)?;
        let s = self.lock();
        let host = s.kernel.host();
        let mut seen = Observed {
            host: host.link(&spec.host_ifname).map(|l| l.link.clone()),
            host_routes: host
                .routes
                .iter()
                .filter(|r| addresses.iter().any(|a| IpNet::from(a.addr()) == r.dst))
                .cloned()
                .collect(),
            ..Observed::default()
        };
        let pod_ns = Netns::at(&spec.netns);
        let pod = s.kernel.netns(&pod_ns).ok_or_else(|| missing(&pod_ns))?;
        if let Some(l) = pod.link(&spec.ifname) {
            seen.pod = Some(l.link.clone());
            seen.pod_addresses = l.addresses.clone();
            seen.pod_routes = pod
                .routes
                .iter()
                .filter(|r| r.oif == Some(l.link.index))
                .cloned()
                .collect();
        }
        Ok(seen)
    }

    fn host_interfaces(&self, prefix: &str) -> Result<Vec<String>, DataplaneError> {
        self.step(Step::HostInterfaces)?;
        Ok(self
            .lock()
            .kernel
            .host()
            .links
            .values()
            .map(|l| l.link.name.clone())
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    fn addresses_in_use(&self) -> Result<BTreeSet<IpAddr>, DataplaneError> {
        self.step(Step::AddressesInUse)?;
        let s = self.lock();
        let routed = s
            .kernel
            .host()
            .routes
            .iter()
            .filter(|r| r.dst.prefix_len() == r.dst.max_prefix_len() && r.oif.is_some())
            .map(|r| r.dst.addr());
        let assigned = s
            .kernel
            .namespaces
            .values()
            .flat_map(|n| n.links.values())
            .flat_map(|l| l.addresses.iter().map(IpNet::addr));
        Ok(routed.chain(assigned).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "/run/netns/fake-pod";

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            netns: POD.into(),
            ifname: "eth0".into(),
            host_ifname: "cali0123456789a".into(),
            mtu: Some(1450),
            num_queues: 1,
            pod_mac: [2, 0, 0, 0, 0, 1],
            v4: true,
            v6: false,
            routes: crate::workload::default_routes(),
            allow_ip_forwarding: false,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("address")
    }

    #[test]
    fn a_workload_is_wired_and_removed_as_by_the_kernel() {
        let dp = FakeDataplane::new();
        dp.add_netns(POD);
        let pristine = dp.kernel();
        let links = dp.create(&spec()).expect("created");
        dp.configure(&spec(), &links, &[net("10.0.0.5/26")])
            .expect("configured");
        let seen = dp.inspect(&spec(), &[net("10.0.0.5/26")]).expect("seen");
        let host = seen.host.expect("host end");
        assert_eq!(
            (host.mac, host.up, host.mtu),
            (Some(HOST_MAC), true, Some(1450))
        );
        assert_eq!(seen.pod.expect("pod end").peer, Some(links.host_index));
        assert_eq!(seen.pod_addresses, vec![net("10.0.0.5/32")]);
        assert_eq!(
            seen.pod_routes,
            vec![
                route(net("169.254.1.1/32"), None, links.pod_index, true),
                route(
                    net("0.0.0.0/0"),
                    Some(IpAddr::V4(GATEWAY_V4)),
                    links.pod_index,
                    false
                ),
            ],
            "IPv4 only: no IPv6 default"
        );
        assert_eq!(
            seen.host_routes,
            vec![route(net("10.0.0.5/32"), None, links.host_index, true)]
        );
        assert_eq!(
            dp.addresses_in_use().expect("in use"),
            ["10.0.0.5".parse::<IpAddr>().expect("ip")].into()
        );
        assert_eq!(
            dp.host_interfaces("cali").expect("listed"),
            ["cali0123456789a"]
        );
        dp.remove(Some(Path::new(POD)), "eth0").expect("removed");
        assert_eq!(dp.kernel(), pristine, "the pair and its routes are gone");
        dp.remove(Some(Path::new(POD)), "eth0")
            .expect("gone is fine");
        dp.remove(Some(Path::new("/run/netns/none")), "eth0")
            .expect("a missing namespace is fine");
    }

    #[test]
    fn names_and_routes_taken_are_refused_as_by_the_kernel() {
        let dp = FakeDataplane::new();
        let e = dp.create(&spec()).expect_err("no namespace");
        assert!(matches!(e, DataplaneError::NetnsMissing(_)), "{e}");
        dp.add_netns(POD);
        // A host end left by an earlier sandbox is replaced.
        let stale = dp.add_link(&Netns::Host, "cali0123456789a").expect("link");
        let links = dp.create(&spec()).expect("created");
        assert!(!dp.kernel().host().links.contains_key(&stale));
        // Again: the host end is taken by the first pair, deleted with its pod end.
        let again = dp.create(&spec()).expect("created again");
        assert_eq!(dp.kernel().host().links.len(), 1);
        assert!(!dp.kernel().host().links.contains_key(&links.host_index));
        // The pod's name taken by an interface that is not ours: refused.
        let other_pod = Path::new("/run/netns/fake-other");
        dp.add_netns(other_pod);
        dp.add_link(&Netns::at(other_pod), "eth0").expect("link");
        let e = dp
            .create(&WorkloadSpec {
                netns: other_pod.into(),
                host_ifname: "cali1".into(),
                ..spec()
            })
            .expect_err("taken");
        assert!(matches!(e, DataplaneError::Exists { .. }), "{e}");
        let links = again;
        // A route to the address through another interface is a conflict naming it.
        let other = dp.add_link(&Netns::Host, "other0").expect("link");
        dp.add_route(&Netns::Host, route(net("10.0.0.7/32"), None, other, true))
            .expect("route");
        let e = dp
            .configure(&spec(), &links, &[net("10.0.0.7/32")])
            .expect_err("conflict");
        assert!(e.to_string().contains("'other0'"), "{e}");
    }

    #[test]
    fn steps_fail_panic_and_run_hooks_when_told() {
        let dp = std::sync::Arc::new(FakeDataplane::new());
        dp.add_netns(POD);
        let pristine = dp.kernel();
        dp.fail(Step::CreatePair);
        dp.create(&spec()).expect_err("injected");
        assert_eq!(dp.kernel(), pristine, "nothing made");
        dp.heal();
        dp.fail(Step::FinishPair);
        let mut paired = false;
        dp.create_then(&spec(), &mut || paired = true)
            .expect_err("injected");
        assert!(paired, "the pair existed");
        let pod = dp.kernel().netns(&Netns::at(POD)).expect("ns").clone();
        assert!(!pod.link("eth0").expect("left").link.up, "left down");
        dp.heal();
        let links = dp.create(&spec()).expect("created");
        dp.fail(Step::HostRoute("10.0.0.9".parse().expect("ip")));
        dp.configure(&spec(), &links, &[net("10.0.0.8/32"), net("10.0.0.9/32")])
            .expect_err("injected");
        let pod = dp.kernel().netns(&Netns::at(POD)).expect("ns").clone();
        assert_eq!(
            pod.link("eth0").expect("pod end").addresses,
            vec![net("10.0.0.8/32"), net("10.0.0.9/32")],
            "the addresses went on before the routes"
        );
        let inner = dp.clone();
        dp.on(Step::Inspect, move || inner.remove_netns(Path::new(POD)));
        let e = dp.inspect(&spec(), &[]).expect_err("gone meanwhile");
        assert!(matches!(e, DataplaneError::NetnsMissing(_)), "{e}");
        assert_eq!(dp.kernel(), Kernel::default(), "the pair went with it");
        dp.panic_at(Step::HostInterfaces);
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dp.host_interfaces("cali")));
        assert!(caught.is_err(), "panicked");
        assert_eq!(dp.kernel(), Kernel::default(), "still usable");
        assert_eq!(dp.steps().last(), Some(&Step::HostInterfaces));
    }
}
