//! ADD, DEL, CHECK and GC, through the [`Backend`]s.
//!
//! What a call leaves: a successful ADD, its rules, claims and record; a failed ADD,
//! nothing of the container (the claims of an earlier ADD of it included); an ADD killed at
//! any point, a record naming everything it may have made, for DEL. DEL removes the rules in
//! every backend and then, unless rules it could not remove are still there, the claims and
//! the record; while rules remain, the record and claims stay, so a retried DEL finishes and
//! no other container takes a port that still forwards to this one.

use crate::backend::{AddError, Backend, Target};
use crate::config::{self, BackendKind, Conf, Mapping, Proto};
use crate::ipt::Iptables;
use crate::layout::chain_name;
use crate::nftb::Nftables;
use crate::state::{self, Record};
use calico_netfilter::xtables::Flavour;
use calico_netfilter::{NfError, NfSocket};
use cni_protocol::{CniError, CniResult, ErrorCode, Request};
use std::collections::{BTreeSet, HashMap, HashSet};

fn kernel(e: NfError) -> CniError {
    CniError::new(ErrorCode::DATAPLANE, format!("portmap: {e}"))
}

impl From<AddError> for CniError {
    fn from(e: AddError) -> Self {
        match e {
            AddError::Kernel(e) => kernel(e),
            AddError::Record(e) => e,
        }
    }
}

/// The backend to use: the configured one, else the one matching the host's iptables
/// (nftables where iptables is iptables-nft or absent, iptables where it is legacy).
pub fn backend(conf: &Conf) -> BackendKind {
    conf.backend.unwrap_or(match Flavour::detect() {
        Some(Flavour::Legacy) => BackendKind::Iptables,
        _ => BackendKind::Nftables,
    })
}

/// The backend ADD and CHECK use.
fn chosen(conf: &Conf) -> Result<Box<dyn Backend>, CniError> {
    Ok(match backend(conf) {
        BackendKind::Iptables => Box::new(Iptables {
            flavour: flavour_for_iptables()?,
        }),
        BackendKind::Nftables => Box::new(Nftables),
    })
}

/// Every backend this host can have rules in (DEL and GC look in all of them).
fn all_backends() -> Vec<Box<dyn Backend>> {
    let mut out: Vec<Box<dyn Backend>> = Vec::new();
    if let Some(flavour) = Flavour::detect() {
        out.push(Box::new(Iptables { flavour }));
    }
    out.push(Box::new(Nftables));
    out
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
/// where they went before. Done by the node agent if there is one (see
/// `calico_netfilter::release`), failures logged only (as the reference plugin does), the rules being what matters.
fn udp_work(v4_ports: &[u16], v6_ports: &[u16]) -> Vec<(u8, Vec<u16>)> {
    vec![
        (libc::AF_INET as u8, v4_ports.to_vec()),
        (libc::AF_INET6 as u8, v6_ports.to_vec()),
    ]
}

/// `route_localnet` on the host interface towards the container, so that `127.0.0.1`
/// hostPort traffic may be routed to it (IPv4 only; IPv6 has no such setting).
fn allow_localnet(ip: ipnet::IpNet) -> Result<(), CniError> {
    let Some(ifname) =
        calico_dataplane::netlink::interface_towards(ip.addr()).map_err(|e| kernel(e.into()))?
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
    all_backends()
        .iter()
        .find(|b| b.name() == rec.backend)
        .is_some_and(|b| b.has_rules(sock, dn, &rec))
}

/// Removes the container's rules from `backends`: what `rec` names in its backend, and,
/// when `probe`, what the kernel has for the container without a record. Tries every
/// backend, whatever the others answer. A backend whose removal failed is asked whether
/// anything of the container is left there: if not, its error is only logged (the removal
/// may have got everything before failing, or there was nothing). Returns the errors of the
/// backends that still hold rules of the container, one item per backend.
fn remove_rules(
    sock: &mut NfSocket,
    backends: &[Box<dyn Backend>],
    dn: &str,
    container_id: &str,
    rec: Option<&Record>,
    probe: bool,
) -> Vec<String> {
    let mut errors = Vec::new();
    for b in backends {
        let own = rec.filter(|r| r.backend == b.name());
        let Err(e) = b.remove(sock, dn, container_id, own, probe) else {
            continue;
        };
        if b.remains(sock, dn, container_id) {
            errors.push(format!("{}: {e}", b.name()));
        } else {
            log::warn!(
                "portmap: {container_id}: removal from {} reported {e}, but nothing of the container is left there",
                b.name()
            );
        }
    }
    errors
}

/// Everything of the container's rules, in both layouts (what the record names, else what
/// the kernel has), its port claims and record. The one removal path of DEL, GC and a
/// failed ADD. If rules of the container are still in the kernel after a failed removal,
/// the record and the claims stay (so the next DEL knows what to remove, and no other
/// container takes a port that still forwards here) and every error is reported together;
/// otherwise the claims are released and the record removed.
fn remove_container(
    sock: &mut NfSocket,
    conf: &Conf,
    container_id: &str,
    probe_iptables: bool,
) -> Result<Vec<(u8, Vec<u16>)>, CniError> {
    remove_container_in(sock, &all_backends(), conf, container_id, probe_iptables)
}

/// [`remove_container`] over the given backends.
fn remove_container_in(
    sock: &mut NfSocket,
    backends: &[Box<dyn Backend>],
    conf: &Conf,
    container_id: &str,
    probe_iptables: bool,
) -> Result<Vec<(u8, Vec<u16>)>, CniError> {
    let dn = chain_name(&conf.network, container_id);
    let rec = state::load(&conf.state_dir, &dn);
    let mut errors = remove_rules(
        sock,
        backends,
        &dn,
        container_id,
        rec.as_ref(),
        probe_iptables,
    );
    let remains = !errors.is_empty();
    let udp = match &rec {
        Some(r) => udp_work(&r.udp_v4, &r.udp_v6),
        None => udp_work(
            &udp_ports(&conf.mappings, true),
            &udp_ports(&conf.mappings, false),
        ),
    };
    if !remains {
        if let Some(r) = &rec {
            state::release_ports(&conf.state_dir, &dn, &r.ports);
        }
        if let Err(e) = state::remove(&conf.state_dir, &dn) {
            errors.push(e.msg);
        }
    }
    if errors.is_empty() {
        return Ok(udp);
    }
    Err(CniError::new(
        ErrorCode::DATAPLANE,
        format!("portmap: removing {container_id}: {}", errors.join("; ")),
    ))
}

/// `a` then what of `b` is not in `a`.
fn union(a: &[String], b: &[String]) -> Vec<String> {
    let mut seen: HashSet<&str> = a.iter().map(String::as_str).collect();
    let mut out = a.to_vec();
    out.extend(b.iter().filter(|x| seen.insert(x.as_str())).cloned());
    out
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
    config::check_targets(v4, v6)?;
    config::check_families(&conf.mappings, v4, v6)?;
    let chosen = chosen(&conf)?;
    let id = &req.env.container_id;
    let dn = chain_name(&conf.network, id);
    let _lock = state::lock(&conf.state_dir)?;
    let families: Vec<bool> = [v4.map(|_| true), v6.map(|_| false)]
        .into_iter()
        .flatten()
        .collect();
    let mut sock = NfSocket::open().map_err(kernel)?;
    let old = state::load(&conf.state_dir, &dn);
    let old_ports = old.as_ref().map(|o| o.ports.clone()).unwrap_or_default();
    let planned = state::claim_entries(&conf.mappings, &families);
    let mut target = Target::new(&conf, id, &dn, v4, v6);
    let mut rec = Record {
        network: conf.network.clone(),
        container_id: id.clone(),
        backend: chosen.name().into(),
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
        // Until this ADD succeeds, the claims of the earlier one are the container's too.
        ports: union(&planned, &old_ports),
        ..Record::default()
    };
    // Before the first claim: a record naming the claims to be made, so that DEL after a kill
    // from here on finds them. For a new container (the usual case) it is the whole record
    // as it will be, saved once; otherwise the earlier record plus the claims.
    let intent = match &old {
        None => {
            chosen.plan(&target, &mut rec);
            rec.clone()
        }
        Some(o) => Record {
            ports: union(&old_ports, &planned),
            ..o.clone()
        },
    };
    state::save(&conf.state_dir, &dn, &intent)?;
    let claimed = state::claim_ports(
        &conf.state_dir,
        &dn,
        id,
        &conf.mappings,
        &families,
        &mut |holder| has_rules(&mut sock, &conf.state_dir, holder),
    );
    let ports = match claimed {
        Ok(p) => p,
        Err(e) => {
            // Refused (or cut short): release this call's claims and put the record back.
            let earlier: HashSet<&String> = old_ports.iter().collect();
            let fresh: Vec<String> = planned
                .iter()
                .filter(|p| !earlier.contains(p))
                .cloned()
                .collect();
            state::release_ports(&conf.state_dir, &dn, &fresh);
            let _ = match &old {
                Some(o) => state::save(&conf.state_dir, &dn, o),
                None => state::remove(&conf.state_dir, &dn),
            };
            return Err(e);
        }
    };
    target.recorded = old.is_none() && ports == planned;
    rec.ports = union(&ports, &old_ports);
    let installed = (|| -> Result<(), CniError> {
        // A container moving between backends leaves nothing in the old one.
        if let Some(o) = old.as_ref().filter(|o| o.backend != rec.backend) {
            log::info!("portmap: {id} moves from {} to {}", o.backend, rec.backend);
            let failed = remove_rules(&mut sock, &all_backends(), &dn, id, Some(o), false);
            if !failed.is_empty() {
                return Err(CniError::new(
                    ErrorCode::DATAPLANE,
                    format!("portmap: {}", failed.join("; ")),
                ));
            }
        }
        let same = old.as_ref().filter(|o| o.backend == rec.backend);
        chosen.add(&mut sock, &target, same, &mut rec)?;
        if conf.snat
            && let Some(ip) = v4
        {
            allow_localnet(ip)?;
        }
        Ok(())
    })();
    if let Err(e) = installed {
        // A failed ADD leaves nothing: no rules, claims or record of this container. What the
        // backend saved last names what it was installing; the claims of both ADDs go too.
        let mut undo = state::load(&conf.state_dir, &dn).unwrap_or_else(|| rec.clone());
        undo.ports = union(&undo.ports, &rec.ports);
        let _ = state::save(&conf.state_dir, &dn, &undo);
        let udp = remove_container(&mut sock, &conf, id, true).unwrap_or_else(|undo| {
            log::error!("portmap: cleaning up after the failed ADD: {undo}");
            Vec::new()
        });
        calico_netfilter::release::release(sock, &udp);
        return Err(e);
    }
    // The claims of an earlier ADD that this one no longer maps.
    if rec.ports.len() > ports.len() {
        let dropped = rec.ports.split_off(ports.len());
        match state::save(&conf.state_dir, &dn, &rec) {
            Ok(()) => state::release_ports(&conf.state_dir, &dn, &dropped),
            // The record still names them: DEL releases them.
            Err(e) => log::warn!("portmap: {}", e.msg),
        }
    }
    calico_netfilter::release::release(sock, &udp_work(&rec.udp_v4, &rec.udp_v6));
    Ok(prev)
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
    calico_netfilter::release::release(sock, &udp);
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
    config::check_targets(v4, v6)?;
    let id = &req.env.container_id;
    let dn = chain_name(&conf.network, id);
    let mut sock = NfSocket::open().map_err(kernel)?;
    let target = Target::new(&conf, id, &dn, v4, v6);
    let missing = chosen(&conf)?.missing(&mut sock, &target).map_err(kernel)?;
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
    let records = state::all(&conf.state_dir)?;
    let mut stale: BTreeSet<String> = records
        .iter()
        .filter(|(_, r)| r.network == conf.network && !valid.contains(&r.container_id))
        .map(|(_, r)| r.container_id.clone())
        .collect();
    let mut errors = Vec::new();
    // Rules no record names (the reference plugin's, or a crash between record and
    // transaction) whose container is not valid. Backends list IDs as they keep them
    // (Backend::tag: nftables cuts long ones), so valid and recorded IDs are compared so.
    let recorded: Vec<&String> = records.iter().map(|(_, r)| &r.container_id).collect();
    for b in all_backends() {
        let valid_tags: BTreeSet<String> = valid.iter().map(|id| b.tag(id)).collect();
        let recorded_by_tag: HashMap<String, &String> =
            recorded.iter().map(|id| (b.tag(id), *id)).collect();
        match b.containers(&mut sock, &conf.network) {
            Ok(found) => {
                for id in found.into_iter().filter(|id| !valid_tags.contains(id)) {
                    if let Some(full) = recorded_by_tag.get(&id) {
                        stale.insert((*full).clone());
                    } else if let Err(e) = b.sweep(&mut sock, &conf, &id) {
                        errors.push(format!("{id}: {e}"));
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let mut udp = Vec::new();
    for id in stale {
        match remove_container(&mut sock, &conf, &id, true) {
            Ok(u) => udp.extend(u),
            Err(e) => errors.push(format!("{id}: {}", e.msg)),
        }
    }
    calico_netfilter::release::release(sock, &udp);
    if errors.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::DATAPLANE,
        format!("portmap GC: {}", errors.join("; ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mapping, test_conf};
    use std::cell::Cell;

    /// A stand-in backend (the kernel's answers chosen): whether its removal fails, and
    /// whether the container's rules are left there afterwards.
    struct Scripted {
        name: &'static str,
        fails: bool,
        left: bool,
        removed: Cell<bool>,
    }

    fn scripted(name: &'static str, fails: bool, left: bool) -> Box<dyn Backend> {
        Box::new(Scripted {
            name,
            fails,
            left,
            removed: Cell::new(false),
        })
    }

    impl Backend for Scripted {
        fn name(&self) -> &'static str {
            self.name
        }
        fn plan(&self, _: &Target, _: &mut Record) {}
        fn add(
            &self,
            _: &mut NfSocket,
            _: &Target,
            _: Option<&Record>,
            _: &mut Record,
        ) -> Result<(), AddError> {
            Ok(())
        }
        fn missing(&self, _: &mut NfSocket, _: &Target) -> Result<Vec<String>, NfError> {
            Ok(Vec::new())
        }
        fn remove(
            &self,
            _: &mut NfSocket,
            _: &str,
            _: &str,
            _: Option<&Record>,
            _: bool,
        ) -> Result<(), NfError> {
            self.removed.set(true);
            if self.fails {
                return Err(NfError::Input(format!("{} refused", self.name)));
            }
            Ok(())
        }
        fn has_rules(&self, _: &mut NfSocket, _: &str, _: &Record) -> bool {
            self.left
        }
        fn remains(&self, _: &mut NfSocket, _: &str, _: &str) -> bool {
            assert!(self.removed.get(), "asked before removing");
            self.left
        }
        fn containers(&self, _: &mut NfSocket, _: &str) -> Result<Vec<String>, NfError> {
            Ok(Vec::new())
        }
        fn sweep(&self, _: &mut NfSocket, _: &Conf, _: &str) -> Result<(), NfError> {
            Ok(())
        }
    }

    /// A container "c" of backend `backend` with a record and a claim on tcp/8080, in a
    /// state directory of its own.
    fn recorded_container(backend: &str) -> (tempfile::TempDir, Conf, String) {
        let dir = tempfile::tempdir().expect("tmp");
        let mut conf = test_conf(config::BackendKind::Nftables);
        conf.state_dir = dir.path().to_path_buf();
        let maps = [Mapping {
            host_port: 8080,
            container_port: 80,
            protocol: Proto::Tcp,
            host_ip: None,
        }];
        let dn = chain_name(&conf.network, "c");
        let rec = Record {
            network: conf.network.clone(),
            container_id: "c".into(),
            backend: backend.into(),
            ports: state::claim_entries(&maps, &[true]),
            ..Record::default()
        };
        state::save(dir.path(), &dn, &rec).expect("save");
        state::claim_ports(dir.path(), &dn, "c", &maps, &[true], &mut |_| true).expect("claim");
        (dir, conf, dn)
    }

    fn claim_left(dir: &std::path::Path) -> bool {
        dir.join("ports/tcp-8080/v4-any").exists()
    }

    /// Review of findings #1's fix: a removal that failed with the container's rules still
    /// in place keeps the record and the claims (the port still forwards to it), and says
    /// so; once a retried removal gets everything, both go.
    #[test]
    fn a_failed_removal_keeps_record_and_claims_only_while_rules_remain() {
        let (dir, conf, dn) = recorded_container("nftables");
        let mut sock = NfSocket::open().expect("nfnetlink socket");
        let e = remove_container_in(
            &mut sock,
            &[scripted("nftables", true, true)],
            &conf,
            "c",
            false,
        )
        .expect_err("rules remain");
        assert_eq!(e.code, ErrorCode::DATAPLANE);
        assert!(e.msg.contains("nftables refused"), "{}", e.msg);
        assert!(state::load(dir.path(), &dn).is_some(), "record kept");
        assert!(claim_left(dir.path()), "claim kept");
        remove_container_in(
            &mut sock,
            &[scripted("nftables", false, false)],
            &conf,
            "c",
            false,
        )
        .expect("the retried removal");
        assert!(state::load(dir.path(), &dn).is_none());
        assert!(!claim_left(dir.path()));
    }

    /// A removal that failed but left nothing of the container (it got everything before
    /// failing, or there was nothing) is a successful DEL: record and claims go.
    #[test]
    fn a_failed_removal_that_left_nothing_succeeds() {
        let (dir, conf, dn) = recorded_container("nftables");
        let mut sock = NfSocket::open().expect("nfnetlink socket");
        remove_container_in(
            &mut sock,
            &[scripted("nftables", true, false)],
            &conf,
            "c",
            false,
        )
        .expect("nothing left");
        assert!(state::load(dir.path(), &dn).is_none());
        assert!(!claim_left(dir.path()));
    }

    /// Each backend whose removal failed is asked itself whether anything is left: the
    /// record's backend answering "nothing" does not clear the other backend's error while
    /// its rules remain, and the other way round.
    #[test]
    fn each_failed_backend_answers_for_itself() {
        let cases = [
            // (record's backend fails, its rules left, other fails, its rules left, DEL ok)
            (true, false, true, true, false),
            (true, true, true, false, false),
            (false, false, true, false, true),
            (true, false, true, false, true),
            (false, false, true, true, false),
        ];
        for (own_fails, own_left, other_fails, other_left, ok) in cases {
            let (dir, conf, dn) = recorded_container("nftables");
            let mut sock = NfSocket::open().expect("nfnetlink socket");
            let backends = [
                scripted("iptables", other_fails, other_left),
                scripted("nftables", own_fails, own_left),
            ];
            let got = remove_container_in(&mut sock, &backends, &conf, "c", true);
            let what = format!("{own_fails} {own_left} {other_fails} {other_left}");
            assert_eq!(got.is_ok(), ok, "{what}: {got:?}");
            if let Err(e) = got {
                let own = own_fails && own_left;
                let other = other_fails && other_left;
                assert_eq!(e.msg.contains("nftables refused"), own, "{what}: {}", e.msg);
                assert_eq!(
                    e.msg.contains("iptables refused"),
                    other,
                    "{what}: {}",
                    e.msg
                );
            }
            assert_eq!(state::load(dir.path(), &dn).is_some(), !ok, "{what}");
            assert_eq!(claim_left(dir.path()), !ok, "{what}");
        }
    }
}
