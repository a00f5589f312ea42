//! What portmap keeps on the node besides the rules: a lock serialising its calls, a record
//! per container of what its ADD installs (so DEL removes it, in one transaction for a usual
//! pod, even when the runtime passes no port mappings), and a registry of claimed host ports
//! (so a second container cannot take a port another one holds).
//!
//! Everything lives in one directory under `/run` (default [`crate::config::DEFAULT_STATE_DIR`]),
//! which a reboot clears together with the rules.
//!
//! Order makes a killed call harmless: ADD saves the container's record naming the claims it
//! is about to make ([`claim_entries`]) before the first claim file, and the rules it is
//! about to install before installing them, so DEL always finds what there is to remove.
//! A claim is released only by its owner ([`release_ports`] reads who holds it), so a stale
//! record never frees a port another container has taken since (nor removes its rules: the
//! nftables backend removes only elements tagged as the record's container's). A directory
//! that cannot be listed is an I/O error, never "nothing held".

use crate::config::{Mapping, Proto};
use cni_protocol::{CniError, ErrorCode};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bound on waiting for another portmap call on this node.
const LOCK_WAIT: Duration = Duration::from_secs(30);

fn io_error(what: &str, path: &Path, e: std::io::Error) -> CniError {
    CniError::new(
        ErrorCode::IO_FAILURE,
        format!("portmap: cannot {what} {}: {e}", path.display()),
    )
}

/// Held until dropped.
pub struct Lock {
    _file: File,
}

/// Takes the node-wide portmap lock.
pub fn lock(dir: &Path) -> Result<Lock, CniError> {
    std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_error("open", &path, e))?;
    let started = Instant::now();
    let mut pause = Duration::from_micros(100);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Lock { _file: file }),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(io_error("lock", &path, e)),
        }
        if started.elapsed() >= LOCK_WAIT {
            return Err(CniError::new(
                ErrorCode::TRY_AGAIN_LATER,
                format!(
                    "portmap: {} is held by another call for over {LOCK_WAIT:?}",
                    path.display()
                ),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

/// What one ADD installed for one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub network: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `iptables` or `nftables`.
    pub backend: String,
    /// iptables: the entry rules in `CNI-HOSTPORT-DNAT`, per family.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iptables_v4: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iptables_v6: Vec<String>,
    /// nftables: the container's elements in our table's sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nft_elements: Vec<crate::nftb::RecordedElem>,
    /// Mapped UDP host ports per family (their conntrack entries go on DEL).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub udp_v4: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub udp_v6: Vec<u16>,
    /// Registry entries (relative paths under `ports/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}

fn record_path(dir: &Path, chain: &str) -> PathBuf {
    dir.join(format!("{chain}.json"))
}

pub fn load(dir: &Path, chain: &str) -> Option<Record> {
    let bytes = std::fs::read(record_path(dir, chain)).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            log::warn!("portmap: ignoring unreadable record for {chain}: {e}");
            None
        }
    }
}

pub fn save(dir: &Path, chain: &str, r: &Record) -> Result<(), CniError> {
    let path = record_path(dir, chain);
    let tmp = dir.join(format!(".{chain}.tmp"));
    let bytes =
        serde_json::to_vec(r).map_err(|e| CniError::new(ErrorCode::INTERNAL, e.to_string()))?;
    std::fs::write(&tmp, bytes).map_err(|e| io_error("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_error("write", &path, e))
}

/// Removes the record (and the temporary file of a save that was cut short).
pub fn remove(dir: &Path, chain: &str) -> Result<(), CniError> {
    let _ = std::fs::remove_file(dir.join(format!(".{chain}.tmp")));
    let path = record_path(dir, chain);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("remove", &path, e)),
        _ => Ok(()),
    }
}

/// Every record: (chain, record). A state directory that cannot be listed is an error (only
/// a missing one holds nothing).
pub fn all(dir: &Path) -> Result<Vec<(String, Record)>, CniError> {
    Ok(list(dir)?
        .unwrap_or_default()
        .into_iter()
        .filter_map(|name| {
            let chain = name.strip_suffix(".json")?.to_string();
            if chain.starts_with('.') {
                return None;
            }
            load(dir, &chain).map(|r| (chain, r))
        })
        .collect())
}

/// The names in a directory; `None` if it does not exist. Any other failure (`EACCES`,
/// `EMFILE`, ...) is an I/O error, never "nothing there": an unlisted claim would be
/// overwritten.
fn list(path: &Path) -> Result<Option<Vec<String>>, CniError> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("list", path, e)),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(|e| io_error("list", path, e))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    Ok(Some(names))
}

/// A registry slot: `<proto>-<port>/<v4|v6>-<hostIP|any>`.
fn slots(m: &Mapping, v4: bool) -> (String, String) {
    let family = if v4 { "v4" } else { "v6" };
    let ip = m
        .host_ip
        .map_or_else(|| "any".to_string(), |ip| ip.to_string());
    (
        format!("{}-{}", m.protocol.name(), m.host_port),
        format!("{family}-{ip}"),
    )
}

fn clashes(a: &str, b: &str) -> bool {
    let (fa, ia) = a.split_once('-').unwrap_or((a, ""));
    let (fb, ib) = b.split_once('-').unwrap_or((b, ""));
    fa == fb && (ia == ib || ia == "any" || ib == "any")
}

/// The registry slots of `mappings` for the families the container has (`true`: IPv4),
/// each once, in order: (port directory, entry, the mapping).
fn wanted<'a>(mappings: &'a [Mapping], families: &[bool]) -> Vec<(String, String, &'a Mapping)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for &v4 in families {
        for m in mappings.iter().filter(|m| m.applies_to(v4)) {
            let (d, l) = slots(m, v4);
            if seen.insert((d.clone(), l.clone())) {
                out.push((d, l, m));
            }
        }
    }
    out
}

/// The registry entries [`claim_ports`] would claim, as records name them (for the record
/// saved before the first claim).
pub fn claim_entries(mappings: &[Mapping], families: &[bool]) -> Vec<String> {
    wanted(mappings, families)
        .into_iter()
        .map(|(d, l, _)| format!("{d}/{l}"))
        .collect()
}

/// Claims the host ports of `mappings` (per family the container has) for the container
/// whose chain is `chain`; a port held by another live container is an error naming it.
/// A holder is live if it has a record and `has_rules(its chain)` (its rules may have been
/// removed by another plugin's DEL, or its ADD was killed before installing them). Returns
/// the claimed entries (for the record). Linear in the number of mappings.
pub fn claim_ports(
    dir: &Path,
    chain: &str,
    container_id: &str,
    mappings: &[Mapping],
    families: &[bool],
    has_rules: &mut dyn FnMut(&str) -> bool,
) -> Result<Vec<String>, CniError> {
    let ports = dir.join("ports");
    let wanted = wanted(mappings, families);
    // For many mappings, the ports anyone holds in one listing (only those can clash); a
    // usual pod's few ports are looked up one by one, whatever the node holds.
    let held: Option<HashSet<String>> = if wanted.len() > LIST_HELD_FROM {
        Some(list(&ports)?.unwrap_or_default().into_iter().collect())
    } else {
        None
    };
    let maybe_held = |d: &str| held.as_ref().is_none_or(|h| h.contains(d));
    // Check everything first, so a refusal claims nothing.
    for (d, l, m) in &wanted {
        if !maybe_held(d) {
            continue;
        }
        let sub = ports.join(d);
        let Some(entries) = list(&sub)? else {
            continue;
        };
        for other in entries {
            if !clashes(l, &other) {
                continue;
            }
            let path = sub.join(&other);
            let owner = match std::fs::read_to_string(&path) {
                Ok(owner) => owner,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("read", &path, e)),
            };
            let mut lines = owner.lines();
            let (owner_chain, owner_id) = (lines.next().unwrap_or(""), lines.nth(1).unwrap_or(""));
            if owner_chain == chain {
                continue;
            }
            // A holder without a record or rules is gone (its DEL was lost, another plugin
            // removed its rules, or its ADD was killed): the slot is free. Its record stays
            // for its DEL, which releases only what it still holds and removes only rules
            // tagged as its own.
            let record = record_path(dir, owner_chain);
            if !owner_chain.is_empty()
                && record
                    .try_exists()
                    .map_err(|e| io_error("read", &record, e))?
                && has_rules(owner_chain)
            {
                let proto = match m.protocol {
                    Proto::Tcp => "TCP",
                    Proto::Udp => "UDP",
                    Proto::Sctp => "SCTP",
                };
                return Err(CniError::invalid_config(format!(
                    "host port {}/{proto}{} is already mapped to container {owner_id}",
                    m.host_port,
                    m.host_ip.map(|ip| format!(" on {ip}")).unwrap_or_default()
                )));
            }
            let _ = std::fs::remove_file(&path);
        }
    }
    let mut claimed = Vec::new();
    let mut made: HashSet<String> = HashSet::new();
    for (d, l, _) in wanted {
        let sub = ports.join(&d);
        if held.as_ref().is_none_or(|h| !h.contains(&d)) && made.insert(d.clone()) {
            port_dir(&ports, &sub)?;
        }
        let path = sub.join(&l);
        std::fs::write(&path, format!("{chain}\n\n{container_id}\n"))
            .map_err(|e| io_error("write", &path, e))?;
        claimed.push(format!("{d}/{l}"));
    }
    Ok(claimed)
}

/// From this many slots on, [`claim_ports`] lists the registry once instead of looking up
/// each port.
const LIST_HELD_FROM: usize = 64;

/// Creates a port's directory in the registry (and the registry on first use); one that
/// exists is fine.
fn port_dir(ports: &Path, sub: &Path) -> Result<(), CniError> {
    use std::io::ErrorKind;
    let mut made = std::fs::create_dir(sub);
    if matches!(&made, Err(e) if e.kind() == ErrorKind::NotFound) {
        std::fs::create_dir_all(ports).map_err(|e| io_error("create", ports, e))?;
        made = std::fs::create_dir(sub);
    }
    match made {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => Err(io_error("create", sub, e)),
        _ => Ok(()),
    }
}

/// Whose a claim file is: the chain on its first line.
fn owner(path: &Path) -> Option<String> {
    use std::io::Read;
    // The chain comes first and is short: one read, no size lookup.
    let mut buf = [0u8; 128];
    let n = File::open(path).ok()?.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    Some(text.lines().next().unwrap_or("").to_string())
}

/// Releases the registry entries that `chain` holds (missing ones, and ones another
/// container has taken since, are left alone). An empty claim file (a claim whose writer was
/// killed between creating and writing it) is nobody's, and goes too, as does a port's
/// directory left empty.
pub fn release_ports(dir: &Path, chain: &str, entries: &[String]) {
    for e in entries {
        let path = dir.join("ports").join(e);
        match owner(&path) {
            Some(o) if o == chain || o.is_empty() => {
                let _ = std::fs::remove_file(&path);
            }
            Some(_) => continue,
            // Never claimed, or the claim was cut short after its port's directory was
            // made: the directory may be left over.
            None => {}
        }
        if let Some(parent) = path.parent() {
            // Removes the port's directory once empty; fails harmlessly otherwise.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(port: u16, ip: Option<&str>) -> Mapping {
        Mapping {
            host_port: port,
            container_port: 80,
            protocol: Proto::Tcp,
            host_ip: ip.map(|s| s.parse().expect("ip")),
        }
    }

    #[test]
    fn ports_are_exclusive_per_host_ip() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        let a = Record::default();
        save(d, "CNI-DN-a", &a).expect("save");
        let got = claim_ports(d, "CNI-DN-a", "a", &[m(8080, None)], &[true], &mut |_| true)
            .expect("free");
        assert_eq!(got, ["tcp-8080/v4-any"]);
        // Re-claiming by the same container is fine.
        claim_ports(d, "CNI-DN-a", "a", &[m(8080, None)], &[true], &mut |_| true)
            .expect("same owner");
        let e = claim_ports(
            d,
            "CNI-DN-b",
            "b",
            &[m(8080, Some("10.0.0.1"))],
            &[true],
            &mut |_| true,
        )
        .expect_err("taken");
        assert!(
            e.msg
                .contains("8080/TCP on 10.0.0.1 is already mapped to container a"),
            "{}",
            e.msg
        );
        // Another family or port is free.
        claim_ports(d, "CNI-DN-b", "b", &[m(8080, None)], &[false], &mut |_| {
            true
        })
        .expect("v6 free");
        claim_ports(d, "CNI-DN-b", "b", &[m(8081, None)], &[true], &mut |_| true)
            .expect("other port");
        // A holder whose rules are gone holds nothing; its record stays for its DEL, which
        // then leaves x's claim alone.
        save(d, "CNI-DN-b", &Record::default()).expect("save b");
        claim_ports(d, "CNI-DN-x", "x", &[m(8081, None)], &[true], &mut |_| {
            false
        })
        .expect("no rules");
        assert!(load(d, "CNI-DN-b").is_some());
        release_ports(d, "CNI-DN-b", &["tcp-8081/v4-any".to_string()]);
        assert!(d.join("ports/tcp-8081/v4-any").exists());
        // Once a's record is gone its claim is stale.
        remove(d, "CNI-DN-a").expect("rm");
        claim_ports(d, "CNI-DN-c", "c", &[m(8080, None)], &[true], &mut |_| true)
            .expect("stale claim");
        release_ports(d, "CNI-DN-c", &["tcp-8080/v4-any".to_string()]);
        assert!(!d.join("ports/tcp-8080/v4-any").exists());
        // A claim cut short by a kill (created, never written) goes with the record naming it.
        std::fs::create_dir_all(d.join("ports/tcp-9090")).expect("dir");
        std::fs::write(d.join("ports/tcp-9090/v4-any"), "").expect("empty claim");
        release_ports(d, "CNI-DN-c", &["tcp-9090/v4-any".to_string()]);
        assert!(!d.join("ports/tcp-9090").exists());
        // Killed between making the port's directory and the claim file.
        std::fs::create_dir_all(d.join("ports/tcp-9091")).expect("dir");
        release_ports(d, "CNI-DN-c", &["tcp-9091/v4-any".to_string()]);
        assert!(!d.join("ports/tcp-9091").exists());
    }

    /// Review of findings #1's fix: a registry that cannot be listed is an I/O error naming
    /// it (code 5), not "nothing held" (an unlisted holder's claim would be overwritten).
    /// As root, permissions do not refuse; a file where a directory belongs does (`ENOTDIR`).
    #[test]
    fn a_registry_that_cannot_be_listed_is_an_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        std::fs::create_dir_all(d.join("ports")).expect("ports");
        std::fs::write(d.join("ports/tcp-8080"), "not a directory").expect("file");
        let e = claim_ports(d, "CNI-DN-a", "a", &[m(8080, None)], &[true], &mut |_| true)
            .expect_err("unlistable port");
        assert_eq!(e.code, ErrorCode::IO_FAILURE);
        assert!(
            e.msg.contains("cannot list") && e.msg.contains("tcp-8080"),
            "{}",
            e.msg
        );
        // Many mappings list the whole registry first.
        std::fs::remove_dir_all(d.join("ports")).expect("rm");
        std::fs::write(d.join("ports"), "not a directory").expect("file");
        let many: Vec<Mapping> = (1..=100).map(|p| m(p, None)).collect();
        let e = claim_ports(d, "CNI-DN-a", "a", &many, &[true], &mut |_| true)
            .expect_err("unlistable registry");
        assert_eq!(e.code, ErrorCode::IO_FAILURE);
        assert!(e.msg.contains("cannot list"), "{}", e.msg);
        // A missing registry holds nothing; records likewise.
        std::fs::remove_file(d.join("ports")).expect("rm");
        claim_ports(d, "CNI-DN-a", "a", &many, &[true], &mut |_| true).expect("claims");
        assert!(all(&d.join("missing")).expect("no records").is_empty());
        let e = all(&d.join("ports/tcp-1/v4-any")).expect_err("a file is no state directory");
        assert_eq!(e.code, ErrorCode::IO_FAILURE);
    }

    /// 60k claims (30k ports, both families) in one call, and their release, in bounded
    /// time: de-duplication and the clash check are linear. Findings #1: 100k mappings ran
    /// for over 30 s (quadratic). 60k claims are ~150k file system calls, about 0.5 s on an
    /// idle machine; the bound leaves room for a loaded one and still fails a quadratic path.
    #[test]
    fn sixty_thousand_claims_are_linear() {
        // On tmpfs, as the default state directory under /run is.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("tmp");
        let d = dir.path();
        let maps: Vec<Mapping> = (1..=30_000).map(|p| m(p, None)).collect();
        let started = Instant::now();
        let planned = claim_entries(&maps, &[true, false]);
        let got = claim_ports(d, "CNI-DN-big", "big", &maps, &[true, false], &mut |_| true)
            .expect("claims");
        let took = started.elapsed();
        assert_eq!(got.len(), 60_000);
        assert_eq!(got, planned);
        assert!(took < Duration::from_secs(5), "60k claims took {took:?}");
        release_ports(d, "CNI-DN-big", &got);
        assert_eq!(
            std::fs::read_dir(d.join("ports")).expect("ports").count(),
            0
        );
    }
}
