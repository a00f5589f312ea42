//! Route distribution's kernel side: one thread that holds a rtnetlink socket and converges
//! the kernel on the latest state it was given (older ones are skipped: only the newest
//! matters). Two processes run one each: calico-node's ([`Desired`]: blackholes of local
//! blocks (protocol 79), the `vxlan.calico` device with its ARP and FDB entries, VXLAN
//! routes (80), `tunl0`) and calico-bgpd's ([`BgpDesired`]: the routes learned by BGP and
//! the peers' host routes (78)). The blackholes stay with calico-node so that they do not
//! depend on the BGP process (one that cannot start, or is being started again). Each
//! kind of route is owned by its protocol number (`calico_dataplane::routes`), so a
//! convergence removes only what its process installed. A clean state is remembered by its
//! fingerprint only; the periodic resend of the same state is the recheck.
//!
//! Learned routes go in as soon as they are learned. After our own restart, the ones of the
//! previous run that nothing has confirmed yet stay (`keep_stale`: graceful restart, they
//! keep carrying traffic) and are swept by the first convergence after the peers'
//! End-of-RIB.

use calico_dataplane::neigh::{Mac, apply_fdb, apply_neighbors};
use calico_dataplane::netlink::Netlink;
use calico_dataplane::routes::{
    NextHop, PROTO_BGP, PROTO_BLACKHOLE, PROTO_VXLAN, RouteKind, RouteSpec, RouteTable, TABLE_MAIN,
};
use calico_dataplane::vxlan::{VxlanDevice, ensure_vxlan, observe_vxlan, remove_vxlan};
use calico_routing::{IPIP_DEVICE, KernelRoute};
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::mpsc;
use std::time::Instant;

/// A state the routes thread converges the kernel on.
pub trait KernelState: Send + 'static {
    /// A fingerprint (64-bit SipHash with fixed keys: two different states agree with odds
    /// of 2^-64, and then the newer waits for the next change or recheck).
    fn fingerprint(&self) -> u64;
    /// One pass; every step runs whatever failed before it, and every error is reported.
    /// `dump`: the table as the previous convergence left it (`None`: read here); left as
    /// this one leaves it.
    fn converge_once(
        &self,
        table: &RouteTable,
        dump: &mut Option<Vec<RouteSpec>>,
    ) -> Result<String, String>;
}

/// What calico-node's own routes thread holds the kernel to: the blackholes, the VXLAN
/// device, its routes and neighbours, `tunl0`. The learned routes are calico-bgpd's
/// ([`BgpDesired`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    /// Blackholes of this node's blocks.
    pub blackholes: Vec<IpNet>,
    /// The Node's IPIP tunnel address, for `tunl0` when that device exists (the kernel's
    /// ipip module makes it; we never create it).
    pub ipip_address: Option<std::net::Ipv4Addr>,
    /// The VXLAN device with its neighbours and routes; `None`: no VXLAN here (our VXLAN
    /// routes go, and the device too).
    pub vxlan: Option<VxlanDesired>,
}

/// What calico-bgpd holds the kernel to: the routes learned by BGP (with the peers' host
/// routes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BgpDesired {
    pub routes: Vec<KernelRoute>,
    /// Keep our learned routes that `routes` lacks (a restarting speaker before its peers'
    /// End-of-RIB: they may still be valid, and are swept once BGP has synced).
    pub keep_stale: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDesired {
    pub device: VxlanDevice,
    /// Remote VTEP address → MAC (permanent ARP entries on the device).
    pub neighbors: Vec<(IpAddr, Mac)>,
    /// Remote VTEP MAC → its node's address (FDB entries on the device).
    pub fdb: Vec<(Mac, IpAddr)>,
    /// Routes; those naming the VXLAN device get its index, the others (CrossSubnet) go
    /// via the node address.
    pub routes: Vec<KernelRoute>,
}

/// Where a convergence's outcome goes (its summary or errors, and how long it took).
pub type Report = Box<dyn Fn(Result<String, String>, Option<std::time::Duration>) + Send>;

/// The handle the async side keeps: sends new states to the thread.
pub struct Programmer<S: KernelState> {
    tx: Option<mpsc::Sender<S>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<S: KernelState> Programmer<S> {
    /// Starts the thread (its socket is in the daemon's network namespace).
    pub fn start(report: Report) -> std::io::Result<Programmer<S>> {
        let (tx, rx) = mpsc::channel::<S>();
        let thread = std::thread::Builder::new()
            .name("routes".into())
            .spawn(move || program(rx, &report))?;
        Ok(Programmer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands over a new state (the thread converges on the newest it has).
    pub fn set(&self, desired: S) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(desired);
        }
    }

    /// Lets the thread finish what it has and stop.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<S: KernelState> Drop for Programmer<S> {
    fn drop(&mut self) {
        self.finish();
    }
}

fn program<S: KernelState>(rx: mpsc::Receiver<S>, report: &Report) {
    let table = match RouteTable::host() {
        Ok(t) => t,
        Err(e) => {
            report(Err(format!("opening rtnetlink: {e}")), None);
            return;
        }
    };
    // What the last convergence was for: its fingerprint, not a copy (a copy of 30,000
    // routes stayed resident for as long as the agent ran). The routing task sends its
    // state again every few seconds (its resync), so a clean state need not be kept for
    // the recheck; a failed one is kept until it is retried.
    let mut last: Option<(u64, Instant)> = None;
    let mut failed: Option<S> = None;
    // The table as the last clean convergence left it, kept while new states come in
    // quick succession (a start-up's batches of learned routes): the next convergence
    // plans on it instead of dumping tens of thousands of routes again. New routes go in
    // with `NLM_F_EXCL`, so one another program added meanwhile is refused, not
    // overwritten, and a refusal reads the kernel again. Dropped when states stop coming
    // (no memory held while idle) and before every recheck.
    let mut record: Option<Vec<RouteSpec>> = None;
    loop {
        // A failed convergence is tried again soon.
        let wait = if record.is_some() {
            KEEP_RECORD
        } else if failed.is_some() {
            RETRY_AFTER
        } else {
            RECHECK_EVERY
        };
        let desired = match rx.recv_timeout(wait) {
            Ok(mut desired) => {
                // Only the newest state matters.
                while let Ok(newer) = rx.try_recv() {
                    desired = newer;
                }
                desired
            }
            Err(mpsc::RecvTimeoutError::Timeout) if record.is_some() => {
                record = None;
                calico_malloc::release_free_memory();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => match failed.take() {
                Some(d) => d,
                None => continue,
            },
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let print = desired.fingerprint();
        // A good convergence is checked again when the same state comes after a while (a
        // route someone removed by hand, a link that went down and took ours along).
        if failed.is_none()
            && last.is_some_and(|(p, at)| p == print && at.elapsed() < RECHECK_AFTER)
        {
            continue;
        }
        if last.is_some_and(|(p, _)| p == print) {
            record = None;
        }
        let started = Instant::now();
        let outcome = converge(&table, &desired, &mut record);
        if outcome.is_err() {
            record = None;
        }
        failed = outcome.is_err().then_some(desired);
        last = Some((print, Instant::now()));
        report(outcome, Some(started.elapsed()));
        // The route dumps and plans of a convergence (and the view the routing task built
        // for it) are freed by now: give the pages back rather than keep the peak resident.
        calico_malloc::release_free_memory();
    }
}

fn hasher() -> std::collections::hash_map::DefaultHasher {
    std::collections::hash_map::DefaultHasher::new()
}

impl KernelState for Desired {
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = hasher();
        self.blackholes.hash(&mut h);
        self.ipip_address.hash(&mut h);
        match &self.vxlan {
            None => 0u8.hash(&mut h),
            Some(v) => {
                1u8.hash(&mut h);
                let dev = &v.device;
                (&dev.name, dev.vni, dev.port, dev.local, dev.parent_index).hash(&mut h);
                (dev.mac, dev.mtu, dev.address).hash(&mut h);
                v.neighbors.hash(&mut h);
                v.fdb.hash(&mut h);
                v.routes.hash(&mut h);
            }
        }
        h.finish()
    }

    fn converge_once(
        &self,
        table: &RouteTable,
        dump: &mut Option<Vec<RouteSpec>>,
    ) -> Result<String, String> {
        let mut errors = Vec::new();
        let mut summary = Vec::new();
        let blackholes: Vec<RouteSpec> = self
            .blackholes
            .iter()
            .map(|b| RouteSpec::blackhole(*b))
            .collect();
        record(
            "blackholes",
            table.apply_reusing(&blackholes, PROTO_BLACKHOLE, dump),
            &mut summary,
            &mut errors,
        );
        let nl = table.netlink();
        match &self.vxlan {
            Some(v) => {
                *dump = None;
                match vxlan(table, nl, v) {
                    Ok(s) => summary.push(s),
                    Err(e) => errors.push(e),
                }
            }
            None => {
                record(
                    "vxlan routes",
                    table.apply_reusing(&[], PROTO_VXLAN, dump),
                    &mut summary,
                    &mut errors,
                );
                match observe_vxlan(nl, calico_dataplane::vxlan::VXLAN_DEVICE) {
                    Ok(Some(_)) => {
                        *dump = None;
                        if let Err(e) = remove_vxlan(nl, calico_dataplane::vxlan::VXLAN_DEVICE) {
                            errors.push(format!("removing vxlan.calico: {e}"));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => errors.push(format!("reading vxlan.calico: {e}")),
                }
            }
        }
        if let Err(e) = tunl0(nl, self.ipip_address) {
            errors.push(e);
        }
        outcome(summary, errors)
    }
}

impl KernelState for BgpDesired {
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = hasher();
        self.routes.hash(&mut h);
        self.keep_stale.hash(&mut h);
        h.finish()
    }

    fn converge_once(
        &self,
        table: &RouteTable,
        dump: &mut Option<Vec<RouteSpec>>,
    ) -> Result<String, String> {
        let mut errors = Vec::new();
        let mut summary = Vec::new();
        // `dev tunl0 onlink` routes are refused while tunl0 is down; calico-node sets it up
        // (with its address) too, but this process may get there first.
        if self.routes.iter().any(|r| r.device == Some(IPIP_DEVICE))
            && let Err(e) = tunl0(table.netlink(), None)
        {
            errors.push(e);
        }
        match specs(table.netlink(), &self.routes, PROTO_BGP, None) {
            Ok((mut specs, missing)) => {
                if self.keep_stale {
                    match table.list(PROTO_BGP) {
                        Ok(current) => {
                            let wanted: std::collections::HashSet<IpNet> =
                                specs.iter().map(|s| s.dst).collect();
                            specs.extend(current.into_iter().filter(|c| !wanted.contains(&c.dst)));
                        }
                        Err(e) => errors.push(format!("listing bgp routes: {e}")),
                    }
                }
                record(
                    "bgp routes",
                    table.apply_reusing(&specs, PROTO_BGP, dump),
                    &mut summary,
                    &mut errors,
                );
                if !missing.is_empty() {
                    errors.push(format!("bgp routes not programmed: {}", missing.join(", ")));
                }
            }
            Err(e) => errors.push(e),
        }
        outcome(summary, errors)
    }
}

fn outcome(summary: Vec<String>, errors: Vec<String>) -> Result<String, String> {
    if errors.is_empty() {
        Ok(summary.join(", "))
    } else {
        Err(errors.join("; "))
    }
}

/// How long after a failed convergence it is tried again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// How long the table's record is kept after a convergence, for the next one.
const KEEP_RECORD: std::time::Duration = std::time::Duration::from_millis(200);
/// How long the thread waits for a state when all is well (it wakes only to stop).
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// The same state converged on longer ago than this is converged on again (a recheck;
/// the routing task resends its state every 10 s).
const RECHECK_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// One convergence, run twice when the first pass refused something: a prefix that moves
/// from one of our protocols to another (a pool switched from IPIP to VXLAN, a block that
/// becomes this node's) is refused while the old owner's route is there, and the old
/// owner's pass removes it; the second pass then installs it. (Between calico-node's and
/// calico-bgpd's protocols the other process removes it, and the failed state is retried
/// after [`RETRY_AFTER`].)
fn converge<S: KernelState>(
    table: &RouteTable,
    d: &S,
    record: &mut Option<Vec<RouteSpec>>,
) -> Result<String, String> {
    match d.converge_once(table, record) {
        Ok(s) => Ok(s),
        Err(first) => d.converge_once(table, &mut None).inspect_err(|_| {
            log::debug!("routes: first pass: {first}");
        }),
    }
}

/// `tunl0`, if the kernel has it: up, with the Node's IPIP tunnel address (/32), as Felix
/// sets it; routes `dev tunl0 onlink` are refused while it is down.
fn tunl0(nl: &Netlink, address: Option<std::net::Ipv4Addr>) -> Result<(), String> {
    let Some(link) = nl
        .link(calico_dataplane::vxlan::IPIP_DEVICE)
        .map_err(|e| format!("reading tunl0: {e}"))?
    else {
        return Ok(());
    };
    nl.set_up(link.index)
        .map_err(|e| format!("setting tunl0 up: {e}"))?;
    if let Some(a) = address {
        let net = IpNet::from(IpAddr::V4(a));
        let have = nl
            .addresses(link.index)
            .map_err(|e| format!("reading tunl0's addresses: {e}"))?;
        if !have.contains(&net) {
            nl.add_address(link.index, net)
                .map_err(|e| format!("adding {net} to tunl0: {e}"))?;
        }
    }
    Ok(())
}

fn record(
    what: &str,
    r: Result<calico_dataplane::routes::ApplyStats, calico_dataplane::DataplaneError>,
    summary: &mut Vec<String>,
    errors: &mut Vec<String>,
) {
    match r {
        Ok(s) => {
            if s.replaced + s.deleted > 0 {
                summary.push(format!("{what}: +{} -{}", s.replaced, s.deleted));
            }
            for f in s.failures {
                errors.push(format!("{what}: {} {}: {}", f.action, f.dst, f.reason));
            }
        }
        Err(e) => errors.push(format!("{what}: {e}")),
    }
}

fn vxlan(table: &RouteTable, nl: &Netlink, v: &VxlanDesired) -> Result<String, String> {
    let index = ensure_vxlan(nl, &v.device).map_err(|e| format!("vxlan.calico: {e}"))?;
    let n = apply_neighbors(nl, index, &v.neighbors).map_err(|e| format!("vxlan ARP: {e}"))?;
    let f = apply_fdb(nl, index, &v.fdb).map_err(|e| format!("vxlan FDB: {e}"))?;
    let (specs, _) = specs(nl, &v.routes, PROTO_VXLAN, Some((&v.device.name, index)))?;
    let s = table
        .apply(&specs, PROTO_VXLAN)
        .map_err(|e| format!("vxlan routes: {e}"))?;
    if let Some(f) = s.failures.first() {
        return Err(format!(
            "vxlan routes: {} {}: {} ({} failed)",
            f.action,
            f.dst,
            f.reason,
            s.failures.len()
        ));
    }
    Ok(format!(
        "vxlan: arp +{} -{}, fdb +{} -{}, routes +{} -{}",
        n.added, n.removed, f.added, f.removed, s.replaced, s.deleted
    ))
}

/// Kernel routes as route specs of `protocol`; a named device is looked up (`known`: one
/// whose index the caller has). Routes through a device that does not exist (`tunl0`
/// without the kernel's ipip module) are returned apart, so the rest is still programmed.
fn specs(
    nl: &Netlink,
    routes: &[KernelRoute],
    protocol: u8,
    known: Option<(&str, u32)>,
) -> Result<(Vec<RouteSpec>, Vec<String>), String> {
    let mut out = Vec::with_capacity(routes.len());
    let mut missing = Vec::new();
    // Each device is looked up once per call, not once per route (every block of an IPIP
    // pool names `tunl0`: tens of thousands of requests otherwise).
    let mut indexes: Vec<(&str, Option<u32>)> = Vec::new();
    if let Some((k, index)) = known {
        indexes.push((k, Some(index)));
    }
    for r in routes {
        let oif = match r.device {
            None => None,
            Some(name) => {
                let index = match indexes.iter().find(|(n, _)| *n == name) {
                    Some((_, index)) => *index,
                    None => {
                        let index = nl
                            .link(name)
                            .map_err(|e| format!("looking up {name}: {e}"))?
                            .map(|l| l.index);
                        indexes.push((name, index));
                        index
                    }
                };
                match index {
                    Some(i) => Some(i),
                    None => {
                        missing.push(format!("{} (no device {name})", r.dst));
                        continue;
                    }
                }
            }
        };
        out.push(RouteSpec {
            dst: r.dst,
            kind: RouteKind::Unicast(
                r.next_hops
                    .iter()
                    .map(|gw| NextHop {
                        gateway: *gw,
                        oif,
                        onlink: r.onlink,
                    })
                    .collect(),
            ),
            protocol,
            table: TABLE_MAIN,
            metric: None,
        });
    }
    Ok((out, missing))
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes thread keeps only a fingerprint of the state it converged on: equal states
    /// must agree, and a change anywhere (one next hop, the stale flag) must not.
    #[test]
    fn fingerprints_tell_states_apart() {
        let route = |dst: &str, gw: &str| KernelRoute {
            dst: dst.parse().unwrap(),
            next_hops: vec![gw.parse::<IpAddr>().unwrap()].into(),
            device: None,
            onlink: false,
        };
        let a = BgpDesired {
            routes: vec![route("10.244.1.0/26", "10.0.0.2")],
            keep_stale: false,
        };
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        let mut b = a.clone();
        b.routes = vec![route("10.244.1.0/26", "10.0.0.3")];
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut c = a.clone();
        c.keep_stale = true;
        assert_ne!(a.fingerprint(), c.fingerprint());
        let mut d = a.clone();
        d.routes.clear();
        assert_ne!(a.fingerprint(), d.fingerprint());
        let own = Desired {
            blackholes: vec!["10.244.0.0/26".parse().unwrap()],
            ..Desired::default()
        };
        let theirs = Desired::default();
        assert_ne!(own.fingerprint(), theirs.fingerprint());
    }

    #[test]
    fn macs_parse_as_felix_writes_them() {
        assert_eq!(
            parse_mac("66:0a:1b:2c:3d:4e"),
            Some([0x66, 0x0a, 0x1b, 0x2c, 0x3d, 0x4e])
        );
        assert_eq!(parse_mac("66:0a:1b:2c:3d"), None);
        assert_eq!(parse_mac("66:0a:1b:2c:3d:4e:5f"), None);
        assert_eq!(parse_mac("zz:0a:1b:2c:3d:4e"), None);
    }
}
