//! ADD, DEL, CHECK and GC.

use crate::config::{self, BackendKind, Conf, Mapping, Proto};
use crate::ipt::Ipt;
use crate::layout::chain_name;
use crate::nftb;
use crate::state::{self, Record};
use calico_netfilter::xtables::Flavour;
use calico_netfilter::{NfError, NfSocket};
use cni_protocol::{CniError, CniResult, ErrorCode, Request};
use ipnet::IpNet;
use std::collections::BTreeSet;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

fn kernel(e: NfError) -> CniError {
    CniError::new(ErrorCode::DATAPLANE, format!("portmap: {e}"))
}

/// The backend to use: the configured one, else the one matching the host's iptables
/// (nftables where iptables is iptables-nft or absent, iptables where it is legacy).
pub fn backend(conf: &Conf) -> BackendKind {
    conf.backend.unwrap_or(match Flavour::detect() {
        Some(Flavour::Legacy) => BackendKind::Iptables,
        _ => BackendKind::Nftables,
    })
}

fn flavour_for_iptables() -> Result<Flavour, CniError> {
    Flavour::detect().ok_or_else(|| {
        CniError::new(
            ErrorCode::DATAPLANE,
            "portmap: backend iptables needs the iptables tools, and none were found",
        )
    })
}

fn udp_ports(mappings: &[Mapping], v4: bool) -> Vec<u16> {
    let mut ports: Vec<u16> = mappings
        .iter()
        .filter(|m| m.protocol == Proto::Udp && m.applies_to(v4))
        .map(|m| m.host_port)
        .collect();
    ports.dedup();
    ports
}

/// The UDP conntrack flush for mapped ports, per family: stale flows would keep going
/// where they went before. Done by the helper (see `calico_netfilter::linger`), failures
/// logged only (as the reference plugin does), the rules being what matters.
fn udp_work(v4_ports: &[u16], v6_ports: &[u16]) -> Vec<(u8, Vec<u16>)> {
    vec![(AF_INET, v4_ports.to_vec()), (AF_INET6, v6_ports.to_vec())]
}

/// `route_localnet` on the host interface towards the container, so that `127.0.0.1`
/// hostPort traffic may be routed to it (IPv4 only; IPv6 has no such setting).
fn allow_localnet(ip: IpNet) -> Result<(), CniError> {
    let Some(ifname) = calico_netfilter::route::interface_towards(ip.addr()).map_err(kernel)?
    else {
        return Ok(());
    };
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/route_localnet");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(&path, "1").map_err(|e| {
        CniError::new(
            ErrorCode::DATAPLANE,
            format!("portmap: cannot set {path}: {e}"),
        )
    })
}

/// Whether the container whose chain is `dn` still has its rules (errors count as yes: when
/// in doubt a claim stands).
fn has_rules(sock: &mut NfSocket, dir: &std::path::Path, dn: &str) -> bool {
    let Some(rec) = state::load(dir, dn) else {
        return false;
    };
    if rec.backend == "nftables" {
        return nftb::present(sock, &rec.nft_elements).unwrap_or(true);
    }
    let Some(fl) = Flavour::detect() else {
        return false;
    };
    [false, true].into_iter().any(|v6| {
        let ipt = Ipt::new(fl, v6);
        ipt.x.available() && ipt.dn_exists(sock, dn).unwrap_or(true)
    })
}

/// Everything of the container's rules, in both layouts (what the record names, else what
/// the kernel has), its port claims and record.
fn remove_container(
    sock: &mut NfSocket,
    conf: &Conf,
    container_id: &str,
    probe_iptables: bool,
) -> Result<Vec<(u8, Vec<u16>)>, CniError> {
    let dn = chain_name(&conf.network, container_id);
    let rec = state::load(&conf.state_dir, &dn);
    let ipt_recorded = rec.as_ref().is_some_and(|r| r.backend == "iptables");
    let flavour = Flavour::detect().filter(|_| ipt_recorded || probe_iptables);
    for v6 in flavour.map(|_| [false, true]).unwrap_or_default() {
        let Some(fl) = flavour else { break };
        let ipt = Ipt::new(fl, v6);
        if !ipt.x.available() {
            continue;
        }
        let recorded = rec.as_ref().filter(|r| r.backend == "iptables").map(|r| {
            if v6 {
                r.iptables_v6.as_slice()
            } else {
                r.iptables_v4.as_slice()
            }
        });
        ipt.del(sock, &dn, recorded).map_err(kernel)?;
    }
    if let Some(r) = rec.as_ref().filter(|r| r.backend == "nftables") {
        nftb::del(sock, container_id, &r.nft_elements).map_err(kernel)?;
    }
    let udp = match &rec {
        Some(r) => {
            state::release_ports(&conf.state_dir, &r.ports);
            udp_work(&r.udp_v4, &r.udp_v6)
        }
        None => udp_work(
            &udp_ports(&conf.mappings, true),
            &udp_ports(&conf.mappings, false),
        ),
    };
    state::remove(&conf.state_dir, &dn)?;
    Ok(udp)
}

/// ADD: installs the mappings and passes `prevResult` on.
pub fn add(req: &Request) -> Result<CniResult, CniError> {
    let prev = req
        .prev_result()?
        .ok_or_else(|| CniError::invalid_config("portmap must be called as a chained plugin"))?;
    let conf = Conf::from_request(req)?;
    if conf.mappings.is_empty() {
        return Ok(prev);
    }
    let (v4, v6) = config::container_addresses(&prev, &req.env.ifname);
    if v4.is_none() && v6.is_none() {
        return Err(CniError::invalid_config(format!(
            "portmap: prevResult has no address on interface {}",
            req.env.ifname
        )));
    }
    config::check_families(&conf.mappings, v4, v6)?;
    let kind = backend(&conf);
    let flavour = match kind {
        BackendKind::Iptables => Some(flavour_for_iptables()?),
        BackendKind::Nftables => None,
    };
    let id = &req.env.container_id;
    let dn = chain_name(&conf.network, id);
    let _lock = state::lock(&conf.state_dir)?;
    let families: Vec<bool> = [v4.map(|_| true), v6.map(|_| false)]
        .into_iter()
        .flatten()
        .collect();
    let mut sock = NfSocket::open().map_err(kernel)?;
    let ports = state::claim_ports(
        &conf.state_dir,
        &dn,
        id,
        &conf.mappings,
        &families,
        &mut |holder| has_rules(&mut sock, &conf.state_dir, holder),
    )?;
    let old = state::load(&conf.state_dir, &dn);
    let mut rec = Record {
        network: conf.network.clone(),
        container_id: id.clone(),
        backend: match kind {
            BackendKind::Iptables => "iptables".into(),
            BackendKind::Nftables => "nftables".into(),
        },
        udp_v4: if v4.is_some() {
            udp_ports(&conf.mappings, true)
        } else {
            Vec::new()
        },
        udp_v6: if v6.is_some() {
            udp_ports(&conf.mappings, false)
        } else {
            Vec::new()
        },
        ports,
        ..Record::default()
    };
    let installed = (|| -> Result<(), CniError> {
        // A container moving between backends leaves nothing in the old one.
        if let Some(o) = old.as_ref().filter(|o| o.backend != rec.backend) {
            log::info!("portmap: {id} moves from {} to {}", o.backend, rec.backend);
            remove_rules_only(&mut sock, &conf, &dn, o)?;
        }
        let same = old.as_ref().filter(|o| o.backend == rec.backend);
        match (kind, flavour) {
            (BackendKind::Iptables, Some(fl)) => {
                for (v6f, ip) in [(false, v4), (true, v6)] {
                    let Some(ip) = ip else { continue };
                    if !conf.mappings.iter().any(|m| m.applies_to(!v6f)) {
                        continue;
                    }
                    let recorded = same.map(|o| {
                        if v6f {
                            o.iptables_v6.as_slice()
                        } else {
                            o.iptables_v4.as_slice()
                        }
                    });
                    let entries = Ipt::new(fl, v6f)
                        .add(&mut sock, &conf, id, &dn, ip, &conf.mappings, recorded)
                        .map_err(kernel)?;
                    if v6f {
                        rec.iptables_v6 = entries;
                    } else {
                        rec.iptables_v4 = entries;
                    }
                }
                state::save(&conf.state_dir, &dn, &rec)?;
            }
            _ => {
                let elems = nftb::elements(&conf, id, v4, v6, &conf.mappings);
                rec.nft_elements = nftb::to_record(&elems);
                // Recorded first: whatever happens next, DEL knows what to look for (the
                // earlier elements too, until they are replaced).
                match same {
                    Some(o) => {
                        let mut intent = rec.clone();
                        intent.nft_elements.extend(o.nft_elements.iter().cloned());
                        state::save(&conf.state_dir, &dn, &intent)?;
                    }
                    None => state::save(&conf.state_dir, &dn, &rec)?,
                }
                let recorded = same.map(|o| o.nft_elements.as_slice());
                nftb::add(&mut sock, &conf, &elems, id, recorded).map_err(kernel)?;
                if same.is_some() {
                    state::save(&conf.state_dir, &dn, &rec)?;
                }
            }
        }
        if conf.snat
            && let Some(ip) = v4
        {
            allow_localnet(ip)?;
        }
        Ok(())
    })();
    if let Err(e) = installed {
        // A failed ADD leaves nothing: no rules, claims or record of this container.
        let _ = state::save(&conf.state_dir, &dn, &rec);
        let udp = remove_container(&mut sock, &conf, id, true).unwrap_or_else(|undo| {
            log::error!("portmap: cleaning up after the failed ADD: {undo}");
            Vec::new()
        });
        calico_netfilter::linger::finish_detached(sock, &udp);
        return Err(e);
    }
    calico_netfilter::linger::finish_detached(sock, &udp_work(&rec.udp_v4, &rec.udp_v6));
    Ok(prev)
}

/// Removes the rules an old record names (not its claims or the record).
fn remove_rules_only(
    sock: &mut NfSocket,
    conf: &Conf,
    dn: &str,
    old: &Record,
) -> Result<(), CniError> {
    let _ = conf;
    if old.backend == "iptables" {
        if let Some(fl) = Flavour::detect() {
            for v6 in [false, true] {
                let recorded = if v6 {
                    &old.iptables_v6
                } else {
                    &old.iptables_v4
                };
                Ipt::new(fl, v6)
                    .del(sock, dn, Some(recorded))
                    .map_err(kernel)?;
            }
        }
    } else {
        nftb::del(sock, &old.container_id, &old.nft_elements).map_err(kernel)?;
    }
    Ok(())
}

/// DEL: by container ID, with or without the mappings; nothing there is success.
pub fn del(req: &Request) -> Result<(), CniError> {
    let conf = Conf::for_cleanup(req)?;
    let _lock = state::lock(&conf.state_dir)?;
    let mut sock = NfSocket::open().map_err(kernel)?;
    // Rules the reference plugin made have no record: look for them when asked to remove
    // mappings, or when looking is cheap (iptables-nft answers over netlink).
    let probe = !conf.mappings.is_empty() || Flavour::detect() == Some(Flavour::Nft);
    let udp = remove_container(&mut sock, &conf, &req.env.container_id, probe)?;
    calico_netfilter::linger::finish_detached(sock, &udp);
    Ok(())
}

/// CHECK: every mapping's rules are in place.
pub fn check(req: &Request) -> Result<(), CniError> {
    let conf = Conf::from_request(req)?;
    if conf.mappings.is_empty() {
        return Ok(());
    }
    let prev = req
        .prev_result()?
        .ok_or_else(|| CniError::invalid_config("portmap CHECK needs prevResult"))?;
    let (v4, v6) = config::container_addresses(&prev, &req.env.ifname);
    let id = &req.env.container_id;
    let dn = chain_name(&conf.network, id);
    let mut sock = NfSocket::open().map_err(kernel)?;
    let missing = match backend(&conf) {
        BackendKind::Iptables => {
            let fl = flavour_for_iptables()?;
            let mut missing = Vec::new();
            for (v6f, ip) in [(false, v4), (true, v6)] {
                let Some(ip) = ip else { continue };
                if !conf.mappings.iter().any(|m| m.applies_to(!v6f)) {
                    continue;
                }
                missing.extend(
                    Ipt::new(fl, v6f)
                        .missing(&mut sock, &conf, id, &dn, ip, &conf.mappings)
                        .map_err(kernel)?,
                );
            }
            missing
        }
        BackendKind::Nftables => {
            let elems = nftb::elements(&conf, id, v4, v6, &conf.mappings);
            nftb::missing(&mut sock, &elems).map_err(kernel)?
        }
    };
    if missing.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::CHECK_FAILED,
        format!("portmap: rules of {id} missing: {}", missing.join("; ")),
    ))
}

/// GC: removes the rules of this network's containers that are not valid attachments,
/// from the records and from the kernel. Keeps going after errors and reports them all.
pub fn gc(req: &Request) -> Result<(), CniError> {
    let conf = Conf::for_cleanup(req)?;
    let valid: BTreeSet<String> = req
        .valid_attachments()?
        .into_iter()
        .map(|a| a.container_id)
        .collect();
    let _lock = state::lock(&conf.state_dir)?;
    let mut sock = NfSocket::open().map_err(kernel)?;
    let mut stale: BTreeSet<String> = state::all(&conf.state_dir)
        .into_iter()
        .filter(|(_, r)| r.network == conf.network && !valid.contains(&r.container_id))
        .map(|(_, r)| r.container_id)
        .collect();
    let mut errors = Vec::new();
    if let Some(fl) = Flavour::detect() {
        for v6 in [false, true] {
            let ipt = Ipt::new(fl, v6);
            if !ipt.x.available() {
                continue;
            }
            match ipt.containers(&mut sock, &conf.network) {
                Ok(ids) => stale.extend(ids.into_iter().filter(|id| !valid.contains(id))),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    // Elements no record names (a crash between record and transaction) and whose
    // container is not valid.
    let recorded: BTreeSet<String> = state::all(&conf.state_dir)
        .into_iter()
        .map(|(_, r)| r.container_id)
        .collect();
    match nftb::containers(&mut sock) {
        Ok(found) => {
            for id in found.into_iter().filter(|id| !valid.contains(id)) {
                if !recorded.contains(&id)
                    && let Err(e) = nftb::sweep(&mut sock, &id)
                {
                    errors.push(format!("{id}: {e}"));
                }
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    let mut udp = Vec::new();
    for id in stale {
        match remove_container(&mut sock, &conf, &id, true) {
            Ok(u) => udp.extend(u),
            Err(e) => errors.push(format!("{id}: {}", e.msg)),
        }
    }
    calico_netfilter::linger::finish_detached(sock, &udp);
    if errors.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::DATAPLANE,
        format!("portmap GC: {}", errors.join("; ")),
    ))
}
