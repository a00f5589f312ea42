//! The nftables backend: our own table `inet calico_portmap`, programmed over netlink (one
//! nf_tables transaction per call, no process started):
//!
//! ```text
//! table inet calico_portmap {
//!   chain prerouting  { type nat hook prerouting priority dstnat; fib daddr type local jump hostports }
//!   chain output      { type nat hook output priority dstnat; fib daddr type local jump hostports }
//!   chain postrouting { type nat hook postrouting priority srcnat; meta mark & 0x2000 == 0x2000 masquerade }
//!   chain hostports   { tcp dport 8080 jump CNI-DN-…  comment "<container ID>"  ... }
//!   chain CNI-DN-…    { comment "<container ID>"
//!     meta nfproto ipv4 ip saddr <pod>/32 tcp dport 8080 meta mark set mark | 0x2000   (hairpin)
//!     meta nfproto ipv4 ip saddr 127.0.0.1 tcp dport 8080 meta mark set mark | 0x2000  (localhost)
//!     meta nfproto ipv4 tcp dport 8080 dnat ip to <pod>:80 }
//! }
//! ```
//! The per-container chain has the same name as in the iptables layout.

use crate::config::{Conf, Mapping};
use calico_netfilter::nft::{self, Expr, Hook, NFPROTO_INET};
use calico_netfilter::socket::Message;
use calico_netfilter::{NfError, NfSocket};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr};

pub const TABLE: &str = "calico_portmap";
const HOSTPORTS: &str = "hostports";
const POSTROUTING: &str = "postrouting";
const ENOENT: i32 = 2;
const NFT_MSG_DELTABLE: u8 = 2;

fn chain_exists(sock: &mut NfSocket, chain: &str) -> Result<bool, NfError> {
    match sock.request("get chain", &nft::get_chain(NFPROTO_INET, TABLE, chain)) {
        Ok(_) => Ok(true),
        Err(e) if e.errno() == Some(ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn rules(sock: &mut NfSocket, chain: &str) -> Result<Vec<nft::RuleInfo>, NfError> {
    match sock.dump("list rules", &nft::get_rules(NFPROTO_INET, TABLE, chain)) {
        Ok(r) => Ok(r.iter().filter_map(|m| nft::rule_info(&m.attrs)).collect()),
        Err(e) if e.errno() == Some(ENOENT) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn masq_comment(bit: u32) -> String {
    format!("masquerade mark {:#x}", 1u32 << bit)
}

/// The base table, recreated from nothing (only when its `hostports` chain is missing, so
/// no container's rules can be in it).
fn base(msgs: &mut Vec<(String, Message)>) {
    let f = NFPROTO_INET;
    let mut del = calico_netfilter::nlattr::Attrs::new();
    del.str(1, TABLE);
    msgs.push((
        "create table".into(),
        nft::new_table(f, TABLE, "calico portmap: hostPorts"),
    ));
    msgs.push((
        "reset table".into(),
        Message::nft(NFT_MSG_DELTABLE, 0, f, del),
    ));
    msgs.push((
        "create table".into(),
        nft::new_table(f, TABLE, "calico portmap: hostPorts"),
    ));
    msgs.push((
        "create chain hostports".into(),
        nft::new_chain(f, TABLE, HOSTPORTS, None, None),
    ));
    for (name, hook, prio) in [
        ("prerouting", Hook::Prerouting, nft::PRIORITY_DSTNAT),
        ("output", Hook::Output, nft::PRIORITY_DSTNAT),
        (POSTROUTING, Hook::Postrouting, nft::PRIORITY_SRCNAT),
    ] {
        msgs.push((
            format!("create chain {name}"),
            nft::new_chain(f, TABLE, name, Some((hook, prio)), None),
        ));
    }
    for name in ["prerouting", "output"] {
        let mut e = nft::match_local_daddr();
        e.push(Expr::Jump(HOSTPORTS.into()));
        msgs.push((
            format!("add rule {name}"),
            nft::new_rule(f, TABLE, name, &e, None, false),
        ));
    }
}

/// The container chain's rules for one address.
fn dn_rules(conf: &Conf, ip: IpNet, mappings: &[Mapping]) -> Vec<Vec<Expr>> {
    let v4 = matches!(ip, IpNet::V4(_));
    let mut out = Vec::new();
    for m in mappings.iter().filter(|m| m.applies_to(v4)) {
        let mut head = nft::match_family(v4);
        if let Some(h) = m.host_ip {
            head.extend(nft::match_addr(false, h, if v4 { 32 } else { 128 }));
        }
        let dport = nft::match_dport(m.protocol.number(), m.host_port);
        if conf.snat {
            let mut sources: Vec<Option<(IpAddr, u8)>> = Vec::new();
            if conf.masq_all {
                sources.push(None);
            } else {
                sources.push(Some((ip.trunc().addr(), ip.prefix_len())));
                if v4 {
                    sources.push(Some((IpAddr::V4(Ipv4Addr::LOCALHOST), 32)));
                }
            }
            for s in sources {
                let mut e = head.clone();
                if let Some((net, len)) = s {
                    e.extend(nft::match_addr(true, net, len));
                }
                e.extend(dport.clone());
                e.extend(nft::set_mark_bit(conf.mark_masq_bit));
                out.push(e);
            }
        }
        let mut e = head;
        e.extend(dport);
        e.push(Expr::Dnat(ip.addr(), m.container_port));
        out.push(e);
    }
    out
}

/// The (protocol, port) pairs that jump into the container's chain.
fn entry_keys(mappings: &[Mapping], families: &[bool]) -> Vec<(u8, u16)> {
    let mut keys = Vec::new();
    for m in mappings {
        if families.iter().any(|v4| m.applies_to(*v4)) {
            let k = (m.protocol.number(), m.host_port);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    keys
}

/// Deletion of a container's rules: its entry rules (by handle) and its chain.
fn removal(dn: &str, handles: &[u64], msgs: &mut Vec<(String, Message)>) {
    for h in handles {
        msgs.push((
            format!("delete rule {h} of hostports"),
            nft::del_rule(NFPROTO_INET, TABLE, HOSTPORTS, *h),
        ));
    }
    msgs.push((
        format!("flush chain {dn}"),
        nft::flush_chain(NFPROTO_INET, TABLE, dn),
    ));
    msgs.push((
        format!("delete chain {dn}"),
        nft::del_chain(NFPROTO_INET, TABLE, dn),
    ));
}

/// Handles of the entry rules that jump to `dn`.
fn listed_handles(sock: &mut NfSocket, dn: &str) -> Result<Vec<u64>, NfError> {
    Ok(rules(sock, HOSTPORTS)?
        .into_iter()
        .filter(|r| r.targets.iter().any(|t| t == dn))
        .map(|r| r.handle)
        .collect())
}

fn run(
    sock: &mut NfSocket,
    msgs: Vec<(String, Message)>,
) -> Result<Vec<calico_netfilter::socket::Reply>, NfError> {
    let (what, msgs): (Vec<String>, Vec<Message>) = msgs.into_iter().unzip();
    sock.batch(&what, &msgs)
}

/// Installs the container's rules in one transaction (replacing any it had); returns the
/// handles of its entry rules.
#[allow(clippy::too_many_arguments)]
pub fn add(
    sock: &mut NfSocket,
    conf: &Conf,
    container_id: &str,
    dn: &str,
    v4: Option<IpNet>,
    v6: Option<IpNet>,
    mappings: &[Mapping],
    recorded: Option<&[u64]>,
) -> Result<Vec<u64>, NfError> {
    let mut msgs = Vec::new();
    let fresh = !chain_exists(sock, HOSTPORTS)?;
    if fresh {
        base(&mut msgs);
    }
    if conf.snat {
        let comment = masq_comment(conf.mark_masq_bit);
        let have = !fresh
            && rules(sock, POSTROUTING)?
                .iter()
                .any(|r| r.comment.as_deref() == Some(comment.as_str()));
        if !have {
            let mut e = nft::match_mark_bit(conf.mark_masq_bit);
            e.push(Expr::Masquerade);
            msgs.push((
                "add masquerade rule".into(),
                nft::new_rule(NFPROTO_INET, TABLE, POSTROUTING, &e, Some(&comment), false),
            ));
        }
    }
    if !fresh && chain_exists(sock, dn)? {
        let handles = match recorded {
            Some(h) if !h.is_empty() => h.to_vec(),
            _ => listed_handles(sock, dn)?,
        };
        removal(dn, &handles, &mut msgs);
    }
    msgs.push((
        format!("create chain {dn}"),
        nft::new_chain(NFPROTO_INET, TABLE, dn, None, Some(container_id)),
    ));
    for ip in [v4, v6].into_iter().flatten() {
        for e in dn_rules(conf, ip, mappings) {
            msgs.push((
                format!("add rule to {dn}"),
                nft::new_rule(NFPROTO_INET, TABLE, dn, &e, None, false),
            ));
        }
    }
    let families: Vec<bool> = [v4.map(|_| true), v6.map(|_| false)]
        .into_iter()
        .flatten()
        .collect();
    for (proto, port) in entry_keys(mappings, &families) {
        let mut e = nft::match_dport(proto, port);
        e.push(Expr::Jump(dn.to_string()));
        msgs.push((
            format!("add rule to hostports for port {port}"),
            nft::new_rule(NFPROTO_INET, TABLE, HOSTPORTS, &e, Some(container_id), true),
        ));
    }
    let echoed = match run(sock, msgs) {
        Ok(r) => r,
        Err(e) if recorded.is_some() && e.errno() == Some(ENOENT) => {
            log::info!("portmap: the record did not match the rules ({e}); listing them");
            return add(sock, conf, container_id, dn, v4, v6, mappings, None);
        }
        Err(e) => return Err(e),
    };
    Ok(echoed
        .iter()
        .filter_map(|m| nft::rule_info(&m.attrs))
        .filter(|r| r.chain == HOSTPORTS)
        .map(|r| r.handle)
        .collect())
}

/// Removes the container's chain and entry rules; nothing there is success.
pub fn del(sock: &mut NfSocket, dn: &str, recorded: Option<&[u64]>) -> Result<(), NfError> {
    if let Some(h) = recorded.filter(|h| !h.is_empty()) {
        let mut msgs = Vec::new();
        removal(dn, h, &mut msgs);
        match run(sock, msgs) {
            Ok(_) => return Ok(()),
            Err(e) => log::info!("portmap: the record did not match the rules ({e}); listing them"),
        }
    }
    if !chain_exists(sock, dn)? {
        return Ok(());
    }
    let mut msgs = Vec::new();
    let handles = listed_handles(sock, dn)?;
    removal(dn, &handles, &mut msgs);
    run(sock, msgs).map(|_| ())
}

/// Whether the container's chain exists.
pub fn exists(sock: &mut NfSocket, dn: &str) -> Result<bool, NfError> {
    chain_exists(sock, dn)
}

/// What is missing of the container's rules.
pub fn missing(
    sock: &mut NfSocket,
    conf: &Conf,
    dn: &str,
    v4: Option<IpNet>,
    v6: Option<IpNet>,
    mappings: &[Mapping],
) -> Result<Vec<String>, NfError> {
    if !chain_exists(sock, dn)? {
        return Ok(vec![format!(
            "chain {dn} does not exist in table inet {TABLE}"
        )]);
    }
    let mut missing = Vec::new();
    let want: usize = [v4, v6]
        .into_iter()
        .flatten()
        .map(|ip| dn_rules(conf, ip, mappings).len())
        .sum();
    let have = rules(sock, dn)?.len();
    if have != want {
        missing.push(format!("chain {dn} has {have} rules where {want} belong"));
    }
    let families: Vec<bool> = [v4.map(|_| true), v6.map(|_| false)]
        .into_iter()
        .flatten()
        .collect();
    let jumps = listed_handles(sock, dn)?.len();
    let keys = entry_keys(mappings, &families);
    if jumps != keys.len() {
        missing.push(format!(
            "hostports has {jumps} jumps to {dn} where {} belong (one per protocol and port)",
            keys.len()
        ));
    }
    if conf.snat {
        let comment = masq_comment(conf.mark_masq_bit);
        if !rules(sock, POSTROUTING)?
            .iter()
            .any(|r| r.comment.as_deref() == Some(comment.as_str()))
        {
            missing.push(format!("postrouting has no rule \"{comment}\""));
        }
    }
    Ok(missing)
}

/// (container ID, chain) of every container with rules in the table (for GC).
pub fn containers(sock: &mut NfSocket) -> Result<Vec<(String, String)>, NfError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for r in rules(sock, HOSTPORTS)? {
        if let (Some(id), Some(chain)) = (r.comment, r.targets.first()) {
            let pair = (id, chain.clone());
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
    }
    Ok(out)
}
