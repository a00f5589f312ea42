//! The iptables backend: the reference plugin's layout through one `iptables-restore
//! --noflush` per family per call. What exists is read without starting a process when
//! iptables is iptables-nft (the chains are nf_tables chains, asked for over netlink), and
//! with one `iptables-save -t nat` on iptables-legacy.

use crate::backend::{AddError, Backend, Target};
use crate::config::Conf;
use crate::layout::{self, DNAT_CHAIN, MASQ_CHAIN, Present, SETMARK_CHAIN};
use crate::state::{self, Record};
use calico_netfilter::nft::{self, NFPROTO_IPV4, NFPROTO_IPV6};
use calico_netfilter::xtables::{Flavour, Xtables};
use calico_netfilter::{NfError, NfSocket};
use ipnet::IpNet;
use nix::errno::Errno;
use std::collections::HashSet;

/// One family's view of the iptables nat table.
pub struct Ipt {
    pub x: Xtables,
}

#[derive(Debug, Default)]
pub struct Seen {
    pub present: Present,
    pub dn_exists: bool,
}

fn chain_exists(sock: &mut NfSocket, family: u8, chain: &str) -> Result<bool, NfError> {
    match sock.request("get chain", &nft::get_chain(family, "nat", chain)) {
        Ok(_) => Ok(true),
        Err(e) if e.is(&[Errno::ENOENT]) => Ok(false),
        Err(e) => Err(e),
    }
}

fn jumps_to(sock: &mut NfSocket, family: u8, from: &str, to: &str) -> Result<bool, NfError> {
    match sock.dump("list rules", &nft::get_rules(family, "nat", from)) {
        Ok(rules) => Ok(rules
            .iter()
            .filter_map(|r| nft::rule_info(&r.attrs))
            .any(|r| r.targets.iter().any(|t| t == to))),
        Err(e) if e.is(&[Errno::ENOENT]) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Ipt {
    pub fn new(flavour: Flavour, v6: bool) -> Self {
        Ipt {
            x: Xtables { flavour, v6 },
        }
    }

    fn family(&self) -> u8 {
        if self.x.v6 {
            NFPROTO_IPV6
        } else {
            NFPROTO_IPV4
        }
    }

    /// Whether the container's chain exists (cheap on iptables-nft).
    pub fn dn_exists(&self, sock: &mut NfSocket, dn: &str) -> Result<bool, NfError> {
        match self.x.flavour {
            Flavour::Nft => chain_exists(sock, self.family(), dn),
            Flavour::Legacy => Ok(self.x.list_chain("nat", dn)?.is_some()),
        }
    }

    /// The shared layout and the container's chain as they are now.
    pub fn seen(&self, sock: &mut NfSocket, dn: &str) -> Result<Seen, NfError> {
        match self.x.flavour {
            Flavour::Nft => {
                let f = self.family();
                Ok(Seen {
                    present: Present {
                        dnat_chain: chain_exists(sock, f, DNAT_CHAIN)?,
                        setmark_chain: chain_exists(sock, f, SETMARK_CHAIN)?,
                        masq_chain: chain_exists(sock, f, MASQ_CHAIN)?,
                        prerouting_jump: jumps_to(sock, f, "PREROUTING", DNAT_CHAIN)?,
                        output_jump: jumps_to(sock, f, "OUTPUT", DNAT_CHAIN)?,
                        postrouting_jump: jumps_to(sock, f, "POSTROUTING", MASQ_CHAIN)?,
                    },
                    dn_exists: chain_exists(sock, f, dn)?,
                })
            }
            Flavour::Legacy => {
                let save = self.x.save("nat")?;
                let has_chain = |c: &str| save.lines().any(|l| l.starts_with(&format!(":{c} ")));
                let has_jump = |from: &str, to: &str| {
                    save.lines().any(|l| {
                        l.starts_with(&format!("-A {from} ")) && l.ends_with(&format!("-j {to}"))
                    })
                };
                Ok(Seen {
                    present: Present {
                        dnat_chain: has_chain(DNAT_CHAIN),
                        setmark_chain: has_chain(SETMARK_CHAIN),
                        masq_chain: has_chain(MASQ_CHAIN),
                        prerouting_jump: has_jump("PREROUTING", DNAT_CHAIN),
                        output_jump: has_jump("OUTPUT", DNAT_CHAIN),
                        postrouting_jump: has_jump("POSTROUTING", MASQ_CHAIN),
                    },
                    dn_exists: has_chain(dn),
                })
            }
        }
    }

    /// A chain's rules in `-S` form, `None` if it does not exist. (On a table without the
    /// chain iptables-nft 1.8.9 says "incompatible" rather than "no chain": ask netlink first.)
    fn list(&self, sock: &mut NfSocket, chain: &str) -> Result<Option<Vec<String>>, NfError> {
        if self.x.flavour == Flavour::Nft && !chain_exists(sock, self.family(), chain)? {
            return Ok(None);
        }
        self.x.list_chain("nat", chain)
    }

    /// The entry rules jumping to `dn`, as listed by iptables (for removal).
    fn listed_entries(&self, sock: &mut NfSocket, dn: &str) -> Result<Vec<String>, NfError> {
        Ok(self
            .list(sock, DNAT_CHAIN)?
            .unwrap_or_default()
            .into_iter()
            .filter(|l| layout::is_entry_of(l, dn))
            .collect())
    }

    /// Installs the container's rules for its address `ip` of this family (replacing any it
    /// had) in one restore; returns the entry rules for the record.
    pub fn add(
        &self,
        sock: &mut NfSocket,
        t: &Target,
        ip: IpNet,
        recorded: Option<&[String]>,
    ) -> Result<Vec<String>, NfError> {
        let (conf, container_id, dn, mappings) = (t.conf, t.container_id, t.dn, &t.conf.mappings);
        let seen = self.seen(sock, dn)?;
        let mut lines = layout::shared_setup(conf, &seen.present);
        if seen.dn_exists {
            let old = match recorded {
                Some(r) if !r.is_empty() => r.to_vec(),
                _ => self.listed_entries(sock, dn)?,
            };
            lines.extend(old.iter().map(|l| layout::as_delete(l)));
        }
        // Declaring the chain creates it, or empties it if it exists.
        lines.push(format!(":{dn} - [0:0]"));
        lines.extend(layout::dn_rules(conf, dn, ip, mappings));
        let entries = layout::entry_rules(conf, container_id, dn, !self.x.v6, mappings);
        lines.extend(entries.iter().cloned());
        match self.x.restore(&layout::document(&lines)?) {
            Ok(()) => Ok(entries),
            Err(e) if seen.dn_exists && recorded.is_some() => {
                // The record was stale: go by what iptables lists.
                log::info!("portmap: retrying from the listed rules after: {e}");
                self.add(sock, t, ip, None)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes the container's chain and the jumps into it; nothing there is success.
    /// On iptables-nft this is one nf_tables transaction over netlink (the rules are found
    /// by what they jump to), on legacy one restore.
    pub fn del(
        &self,
        sock: &mut NfSocket,
        dn: &str,
        recorded: Option<&[String]>,
    ) -> Result<(), NfError> {
        if self.x.flavour == Flavour::Nft {
            return self.del_over_netlink(sock, dn);
        }
        if let Some(r) = recorded.filter(|r| !r.is_empty()) {
            let mut lines: Vec<String> = r.iter().map(|l| layout::as_delete(l)).collect();
            lines.push(format!("-F {dn}"));
            lines.push(format!("-X {dn}"));
            match layout::document(&lines).and_then(|d| self.x.restore(&d)) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    log::info!("portmap: the record did not match the rules ({e}); listing them")
                }
            }
        }
        if !self.dn_exists(sock, dn)? {
            return Ok(());
        }
        let mut lines: Vec<String> = self
            .listed_entries(sock, dn)?
            .iter()
            .map(|l| layout::as_delete(l))
            .collect();
        lines.push(format!("-F {dn}"));
        lines.push(format!("-X {dn}"));
        self.x.restore(&layout::document(&lines)?)
    }

    fn del_over_netlink(&self, sock: &mut NfSocket, dn: &str) -> Result<(), NfError> {
        let f = self.family();
        if !chain_exists(sock, f, dn)? {
            return Ok(());
        }
        let entries = match sock.dump("list rules", &nft::get_rules(f, "nat", DNAT_CHAIN)) {
            Ok(r) => r,
            Err(e) if e.is(&[Errno::ENOENT]) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut what = Vec::new();
        let mut msgs = Vec::new();
        for r in entries.iter().filter_map(|m| nft::rule_info(&m.attrs)) {
            if r.targets.iter().any(|t| t == dn) {
                what.push(format!("delete rule {} of {DNAT_CHAIN}", r.handle));
                msgs.push(nft::del_rule(f, "nat", DNAT_CHAIN, r.handle));
            }
        }
        what.push(format!("flush chain {dn}"));
        msgs.push(nft::flush_chain(f, "nat", dn));
        what.push(format!("delete chain {dn}"));
        msgs.push(nft::del_chain(f, "nat", dn));
        sock.batch(&what, &msgs).map(|_| ())
    }

    /// What is missing of the container's rules for its address `ip` of this family, as
    /// readable items.
    pub fn missing(
        &self,
        sock: &mut NfSocket,
        t: &Target,
        ip: IpNet,
    ) -> Result<Vec<String>, NfError> {
        let (conf, container_id, dn, mappings) = (t.conf, t.container_id, t.dn, &t.conf.mappings);
        let fam = if self.x.v6 { "IPv6" } else { "IPv4" };
        let Some(listed) = self.list(sock, dn)? else {
            return Ok(vec![format!(
                "{fam}: chain {dn} does not exist in table nat"
            )]);
        };
        // Sets, so that thousands of mappings are compared in linear time.
        let listed: HashSet<&str> = listed.iter().map(String::as_str).collect();
        let mut missing: Vec<String> = layout::dn_rules(conf, dn, ip, mappings)
            .into_iter()
            .filter(|r| !listed.contains(r.as_str()))
            .map(|r| format!("{fam}: rule `{r}`"))
            .collect();
        // Compare what identifies a jump: protocol, ports and target.
        let key = |l: &str| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let after = |flag: &str| {
                words
                    .iter()
                    .position(|w| *w == flag)
                    .and_then(|i| words.get(i + 1))
                    .map(|s| s.to_string())
            };
            (after("-p"), after("--dports"), after("-j"))
        };
        let entries: HashSet<_> = self
            .list(sock, DNAT_CHAIN)?
            .unwrap_or_default()
            .iter()
            .map(|l| key(l))
            .collect();
        for want in layout::entry_rules(conf, container_id, dn, !self.x.v6, mappings) {
            if !entries.contains(&key(&want)) {
                missing.push(format!("{fam}: rule `{want}`"));
            }
        }
        Ok(missing)
    }

    /// Container IDs with entry rules of `network`, from the comments (for GC).
    pub fn containers(&self, sock: &mut NfSocket, network: &str) -> Result<Vec<String>, NfError> {
        let prefix = format!("dnat name: \\\"{network}\\\" id: \\\"");
        Ok(self
            .list(sock, DNAT_CHAIN)?
            .unwrap_or_default()
            .iter()
            .filter_map(|l| {
                let start = l.find(&prefix)? + prefix.len();
                let rest = &l[start..];
                Some(rest[..rest.find("\\\"")?].to_string())
            })
            .collect())
    }
}

/// The iptables backend: both families' nat tables, through the host's iptables flavour.
pub struct Iptables {
    pub flavour: Flavour,
}

impl Iptables {
    /// The families whose tools are installed.
    fn families(&self) -> impl Iterator<Item = Ipt> + '_ {
        [false, true]
            .into_iter()
            .map(|v6| Ipt::new(self.flavour, v6))
            .filter(|ipt| ipt.x.available())
    }
}

/// A record's entry rules of one family.
fn recorded(rec: &Record, v6: bool) -> &[String] {
    if v6 {
        rec.iptables_v6.as_slice()
    } else {
        rec.iptables_v4.as_slice()
    }
}

/// The container's families that have mappings: (IPv6?, the container's address).
fn mapped_families<'a>(target: &'a Target) -> impl Iterator<Item = (bool, IpNet)> + 'a {
    [(false, target.v4), (true, target.v6)]
        .into_iter()
        .filter_map(|(v6, ip)| Some((v6, ip?)))
        .filter(|(v6, _)| target.conf.mappings.iter().any(|m| m.applies_to(!v6)))
}

impl Backend for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn plan(&self, t: &Target, rec: &mut Record) {
        for (v6, _) in mapped_families(t) {
            let entries = layout::entry_rules(t.conf, t.container_id, t.dn, !v6, &t.conf.mappings);
            if v6 {
                rec.iptables_v6 = entries;
            } else {
                rec.iptables_v4 = entries;
            }
        }
    }

    fn add(
        &self,
        sock: &mut NfSocket,
        t: &Target,
        old: Option<&Record>,
        rec: &mut Record,
    ) -> Result<(), AddError> {
        let mut changed = !t.recorded;
        for (v6, ip) in mapped_families(t) {
            let entries =
                Ipt::new(self.flavour, v6).add(sock, t, ip, old.map(|o| recorded(o, v6)))?;
            let field = if v6 {
                &mut rec.iptables_v6
            } else {
                &mut rec.iptables_v4
            };
            changed |= *field != entries;
            *field = entries;
        }
        if changed {
            state::save(&t.conf.state_dir, t.dn, rec)?;
        }
        Ok(())
    }

    fn missing(&self, sock: &mut NfSocket, t: &Target) -> Result<Vec<String>, NfError> {
        let mut missing = Vec::new();
        for (v6, ip) in mapped_families(t) {
            missing.extend(Ipt::new(self.flavour, v6).missing(sock, t, ip)?);
        }
        Ok(missing)
    }

    fn remove(
        &self,
        sock: &mut NfSocket,
        dn: &str,
        _container_id: &str,
        rec: Option<&Record>,
        probe: bool,
    ) -> Result<(), NfError> {
        if rec.is_none() && !probe {
            return Ok(());
        }
        for ipt in self.families() {
            ipt.del(sock, dn, rec.map(|r| recorded(r, ipt.x.v6)))?;
        }
        Ok(())
    }

    fn has_rules(&self, sock: &mut NfSocket, dn: &str, _rec: &Record) -> bool {
        self.families()
            .any(|ipt| ipt.dn_exists(sock, dn).unwrap_or(true))
    }

    fn remains(&self, sock: &mut NfSocket, dn: &str, _container_id: &str) -> bool {
        // The entry rules go with the chain in one transaction (iptables-nft) or restore.
        self.families()
            .any(|ipt| ipt.dn_exists(sock, dn).unwrap_or(true))
    }

    fn containers(&self, sock: &mut NfSocket, network: &str) -> Result<Vec<String>, NfError> {
        let mut ids = Vec::new();
        for ipt in self.families() {
            ids.extend(ipt.containers(sock, network)?);
        }
        Ok(ids)
    }

    fn sweep(&self, sock: &mut NfSocket, conf: &Conf, container_id: &str) -> Result<(), NfError> {
        let dn = layout::chain_name(&conf.network, container_id);
        self.remove(sock, &dn, container_id, None, true)
    }
}
