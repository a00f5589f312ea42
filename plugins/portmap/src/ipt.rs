//! The iptables backend: the reference plugin's layout through one `iptables-restore
//! --noflush` per family per call. What exists is read without starting a process when
//! iptables is iptables-nft (the chains are nf_tables chains, asked for over netlink), and
//! with one `iptables-save -t nat` on iptables-legacy.

use crate::config::{Conf, Mapping};
use crate::layout::{self, DNAT_CHAIN, MASQ_CHAIN, Present, SETMARK_CHAIN};
use calico_netfilter::nft::{self, NFPROTO_IPV4, NFPROTO_IPV6};
use calico_netfilter::xtables::{Flavour, Xtables};
use calico_netfilter::{NfError, NfSocket};
use ipnet::IpNet;

const ENOENT: i32 = 2;

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
        Err(e) if e.errno() == Some(ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn jumps_to(sock: &mut NfSocket, family: u8, from: &str, to: &str) -> Result<bool, NfError> {
    match sock.dump("list rules", &nft::get_rules(family, "nat", from)) {
        Ok(rules) => Ok(rules
            .iter()
            .filter_map(|r| nft::rule_info(&r.attrs))
            .any(|r| r.targets.iter().any(|t| t == to))),
        Err(e) if e.errno() == Some(ENOENT) => Ok(false),
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

    /// Installs the container's rules (replacing any it had) in one restore; returns the
    /// entry rules for the record.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &self,
        sock: &mut NfSocket,
        conf: &Conf,
        container_id: &str,
        dn: &str,
        ip: IpNet,
        mappings: &[Mapping],
        recorded: Option<&[String]>,
    ) -> Result<Vec<String>, NfError> {
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
        match self.x.restore(&layout::document(&lines)) {
            Ok(()) => Ok(entries),
            Err(e) if seen.dn_exists && recorded.is_some() => {
                // The record was stale: go by what iptables lists.
                log::info!("portmap: retrying from the listed rules after: {e}");
                self.add(sock, conf, container_id, dn, ip, mappings, None)
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
            match self.x.restore(&layout::document(&lines)) {
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
        self.x.restore(&layout::document(&lines))
    }

    fn del_over_netlink(&self, sock: &mut NfSocket, dn: &str) -> Result<(), NfError> {
        let f = self.family();
        if !chain_exists(sock, f, dn)? {
            return Ok(());
        }
        let entries = match sock.dump("list rules", &nft::get_rules(f, "nat", DNAT_CHAIN)) {
            Ok(r) => r,
            Err(e) if e.errno() == Some(ENOENT) => Vec::new(),
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

    /// What is missing of the container's rules, as readable items.
    pub fn missing(
        &self,
        sock: &mut NfSocket,
        conf: &Conf,
        container_id: &str,
        dn: &str,
        ip: IpNet,
        mappings: &[Mapping],
    ) -> Result<Vec<String>, NfError> {
        let fam = if self.x.v6 { "IPv6" } else { "IPv4" };
        let Some(listed) = self.list(sock, dn)? else {
            return Ok(vec![format!(
                "{fam}: chain {dn} does not exist in table nat"
            )]);
        };
        let mut missing: Vec<String> = layout::dn_rules(conf, dn, ip, mappings)
            .into_iter()
            .filter(|r| !listed.contains(r))
            .map(|r| format!("{fam}: rule `{r}`"))
            .collect();
        let entries = self.list(sock, DNAT_CHAIN)?.unwrap_or_default();
        for want in layout::entry_rules(conf, container_id, dn, !self.x.v6, mappings) {
            // Compare what identifies the jump: protocol, ports and target.
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
            if !entries.iter().any(|l| key(l) == key(&want)) {
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
