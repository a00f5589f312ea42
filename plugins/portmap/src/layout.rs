//! The reference plugin's iptables layout, rendered as `iptables-save` lines (so the same
//! strings feed `iptables-restore` and compare with what the kernel lists), and the names
//! both layouts share.

use crate::config::{Conf, Mapping};
use calico_netfilter::NfError;
use calico_netfilter::xtables::{self, quote};
use ipnet::IpNet;
use sha2::{Digest, Sha512};
use std::collections::{BTreeMap, HashSet};

pub const DNAT_CHAIN: &str = "CNI-HOSTPORT-DNAT";
pub const SETMARK_CHAIN: &str = "CNI-HOSTPORT-SETMARK";
pub const MASQ_CHAIN: &str = "CNI-HOSTPORT-MASQ";
/// iptables' multiport match takes at most 15 ports.
const MULTIPORT_MAX: usize = 15;
const MAX_COMMENT: usize = 255;

/// `CNI-DN-` + the first 21 hex digits of SHA-512(network + container ID): the reference
/// plugin's per-container chain, so either plugin finds the other's.
pub fn chain_name(network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("CNI-DN-{}", &hex[..21])
}

/// The entry rules' comment, as the reference plugin writes it.
pub fn comment(network: &str, container_id: &str) -> String {
    let mut c = format!("dnat name: \"{network}\" id: \"{container_id}\"");
    if c.len() > MAX_COMMENT {
        let mut end = MAX_COMMENT;
        while !c.is_char_boundary(end) {
            end -= 1;
        }
        c.truncate(end);
    }
    c
}

fn mark(conf: &Conf) -> String {
    let m = 1u32 << conf.mark_masq_bit;
    format!("{m:#x}/{m:#x}")
}

/// What the shared part of the layout already has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Present {
    pub dnat_chain: bool,
    pub setmark_chain: bool,
    pub masq_chain: bool,
    pub prerouting_jump: bool,
    pub output_jump: bool,
    pub postrouting_jump: bool,
}

/// Whether SETMARK/MASQ chains are ours to make.
fn own_mark_chains(conf: &Conf) -> bool {
    conf.snat && conf.external_set_mark_chain.is_none()
}

/// Lines that create whatever of the shared layout is missing (never touching what exists).
pub fn shared_setup(conf: &Conf, present: &Present) -> Vec<String> {
    let mut out = Vec::new();
    if own_mark_chains(conf) {
        if !present.setmark_chain {
            out.push(format!(":{SETMARK_CHAIN} - [0:0]"));
            out.push(format!(
                "-A {SETMARK_CHAIN} -m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark {}",
                mark(conf)
            ));
        }
        if !present.masq_chain {
            out.push(format!(":{MASQ_CHAIN} - [0:0]"));
            out.push(format!(
                "-A {MASQ_CHAIN} -m mark --mark {} -j MASQUERADE",
                mark(conf)
            ));
        }
        if !present.postrouting_jump {
            out.push(format!(
                "-I POSTROUTING 1 -m comment --comment \"CNI portfwd requiring masquerade\" -j {MASQ_CHAIN}"
            ));
        }
    }
    if !present.dnat_chain {
        out.push(format!(":{DNAT_CHAIN} - [0:0]"));
    }
    for (chain, present) in [
        ("PREROUTING", present.prerouting_jump),
        ("OUTPUT", present.output_jump),
    ] {
        if !present {
            out.push(format!(
                "-A {chain} -m addrtype --dst-type LOCAL -j {DNAT_CHAIN}"
            ));
        }
    }
    out
}

fn host_match(m: &Mapping) -> String {
    match m.host_ip {
        Some(ip) if ip.is_ipv4() => format!(" -d {ip}/32"),
        Some(ip) => format!(" -d {ip}/128"),
        None => String::new(),
    }
}

/// The per-container chain's rules for the mappings of the container address `ip`'s family,
/// in the reference plugin's order (per mapping: hairpin mark, localhost mark, DNAT).
pub fn dn_rules(conf: &Conf, chain: &str, ip: IpNet, mappings: &[Mapping]) -> Vec<String> {
    let v4 = matches!(ip, IpNet::V4(_));
    let setmark = conf
        .external_set_mark_chain
        .clone()
        .unwrap_or_else(|| SETMARK_CHAIN.to_string());
    let mut out = Vec::new();
    for m in mappings.iter().filter(|m| m.applies_to(v4)) {
        let p = m.protocol.name();
        let d = host_match(m);
        let dport = format!("-p {p} -m {p} --dport {}", m.host_port);
        if conf.snat {
            if conf.masq_all {
                out.push(format!("-A {chain}{d} {dport} -j {setmark}"));
            } else {
                out.push(format!(
                    "-A {chain} -s {}{d} {dport} -j {setmark}",
                    ip.trunc()
                ));
                if v4 {
                    out.push(format!(
                        "-A {chain} -s 127.0.0.1/32{d} {dport} -j {setmark}"
                    ));
                }
            }
        }
        let to = if v4 {
            format!("{}:{}", ip.addr(), m.container_port)
        } else {
            format!("[{}]:{}", ip.addr(), m.container_port)
        };
        out.push(format!(
            "-A {chain}{d} {dport} -j DNAT --to-destination {to}"
        ));
    }
    out
}

/// The jumps from `CNI-HOSTPORT-DNAT` into the container's chain: one per protocol per 15
/// host ports, protocols in name order.
pub fn entry_rules(
    conf: &Conf,
    container_id: &str,
    chain: &str,
    v4: bool,
    mappings: &[Mapping],
) -> Vec<String> {
    let mut by_proto: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for m in mappings.iter().filter(|m| m.applies_to(v4)) {
        if seen.insert((m.protocol, m.host_port)) {
            by_proto
                .entry(m.protocol.name())
                .or_default()
                .push(m.host_port);
        }
    }
    let conds = if v4 {
        &conf.conditions_v4
    } else {
        &conf.conditions_v6
    };
    let conds: String = conds.iter().map(|c| format!(" {}", quote(c))).collect();
    let comment = quote(&comment(&conf.network, container_id));
    let mut out = Vec::new();
    for (p, ports) in by_proto {
        for chunk in ports.chunks(MULTIPORT_MAX) {
            let list: Vec<String> = chunk.iter().map(u16::to_string).collect();
            out.push(format!(
                "-A {DNAT_CHAIN} -p {p} -m comment --comment {comment} -m multiport --dports {}{conds} -j {chain}",
                list.join(",")
            ));
        }
    }
    out
}

/// `-A X ...` as `-D X ...`.
pub fn as_delete(rule: &str) -> String {
    match rule.strip_prefix("-A ") {
        Some(rest) => format!("-D {rest}"),
        None => rule.to_string(),
    }
}

/// An `iptables-restore --noflush` document for table nat; a line that would carry another
/// (a line break in a value) is refused (see `calico_netfilter::xtables::document`).
pub fn document(lines: &[String]) -> Result<String, NfError> {
    xtables::document("nat", lines)
}

/// Whether a `-S`/save line of `CNI-HOSTPORT-DNAT` belongs to the container: it jumps to its
/// chain.
pub fn is_entry_of(line: &str, chain: &str) -> bool {
    line.starts_with(&format!("-A {DNAT_CHAIN} ")) && line.ends_with(&format!(" -j {chain}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendKind, Proto};

    fn conf() -> Conf {
        let mut c = crate::config::test_conf(BackendKind::Iptables);
        c.network = "refchain".into();
        c
    }

    fn maps() -> Vec<Mapping> {
        vec![
            Mapping {
                host_port: 18080,
                container_port: 80,
                protocol: Proto::Tcp,
                host_ip: None,
            },
            Mapping {
                host_port: 18053,
                container_port: 53,
                protocol: Proto::Udp,
                host_ip: None,
            },
        ]
    }

    /// The rules Debian's reference plugin (1.1.1) made for the same input, as
    /// `iptables-save` printed them.
    #[test]
    fn same_rules_as_the_reference_plugin() {
        let id = "cnitool-62d33877aeaa9c979fae";
        let chain = chain_name("refchain", id);
        assert_eq!(chain, "CNI-DN-290c0dcb49a659addd5b2");
        let ip: IpNet = "10.244.77.2/24".parse().expect("net");
        let rules = dn_rules(&conf(), &chain, ip, &maps());
        assert_eq!(
            rules,
            [
                "-A CNI-DN-290c0dcb49a659addd5b2 -s 10.244.77.0/24 -p tcp -m tcp --dport 18080 -j CNI-HOSTPORT-SETMARK",
                "-A CNI-DN-290c0dcb49a659addd5b2 -s 127.0.0.1/32 -p tcp -m tcp --dport 18080 -j CNI-HOSTPORT-SETMARK",
                "-A CNI-DN-290c0dcb49a659addd5b2 -p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.244.77.2:80",
                "-A CNI-DN-290c0dcb49a659addd5b2 -s 10.244.77.0/24 -p udp -m udp --dport 18053 -j CNI-HOSTPORT-SETMARK",
                "-A CNI-DN-290c0dcb49a659addd5b2 -s 127.0.0.1/32 -p udp -m udp --dport 18053 -j CNI-HOSTPORT-SETMARK",
                "-A CNI-DN-290c0dcb49a659addd5b2 -p udp -m udp --dport 18053 -j DNAT --to-destination 10.244.77.2:53",
            ]
        );
        let entries = entry_rules(&conf(), id, &chain, true, &maps());
        assert_eq!(
            entries,
            [
                r#"-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"refchain\" id: \"cnitool-62d33877aeaa9c979fae\"" -m multiport --dports 18080 -j CNI-DN-290c0dcb49a659addd5b2"#,
                r#"-A CNI-HOSTPORT-DNAT -p udp -m comment --comment "dnat name: \"refchain\" id: \"cnitool-62d33877aeaa9c979fae\"" -m multiport --dports 18053 -j CNI-DN-290c0dcb49a659addd5b2"#,
            ]
        );
        assert!(is_entry_of(&entries[0], &chain));
        let setup = shared_setup(&conf(), &Present::default());
        assert!(setup.contains(
            &"-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE".to_string()
        ));
        assert!(setup.contains(
            &"-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT".to_string()
        ));
    }

    /// Findings #3: a chain name with a line break, had it passed the configuration's
    /// check, makes a document that is refused, not one with an extra rule.
    #[test]
    fn a_document_never_carries_an_injected_line() {
        let mut c = conf();
        c.external_set_mark_chain = Some(
            "ACCEPT\n-I OUTPUT 1 -p tcp --dport 9 -j DNAT --to-destination 127.0.0.1:1".into(),
        );
        let ip: IpNet = "10.244.77.2/24".parse().expect("net");
        let rules = dn_rules(&c, "CNI-DN-x", ip, &maps());
        assert!(document(&rules).is_err());
        c.external_set_mark_chain = None;
        c.conditions_v4 = vec!["-m".into(), "comment\r\n-A OUTPUT".into()];
        let entries = entry_rules(&c, "c", "CNI-DN-x", true, &maps());
        assert!(document(&entries).is_err());
        let fine = dn_rules(&conf(), "CNI-DN-x", ip, &maps());
        let doc = document(&fine).expect("plain rules");
        assert_eq!(doc.lines().count(), fine.len() + 2);
    }

    #[test]
    fn ipv6_masq_all_host_ip_and_many_ports() {
        let mut c = conf();
        c.masq_all = true;
        let ip: IpNet = "fd00:10::5/128".parse().expect("net");
        let m = vec![Mapping {
            host_port: 8443,
            container_port: 443,
            protocol: Proto::Tcp,
            host_ip: Some("fd00::1".parse().expect("ip")),
        }];
        let rules = dn_rules(&c, "CNI-DN-x", ip, &m);
        assert_eq!(
            rules,
            [
                "-A CNI-DN-x -d fd00::1/128 -p tcp -m tcp --dport 8443 -j CNI-HOSTPORT-SETMARK",
                "-A CNI-DN-x -d fd00::1/128 -p tcp -m tcp --dport 8443 -j DNAT --to-destination [fd00:10::5]:443",
            ]
        );
        // The IPv6 mapping does not apply to IPv4.
        assert!(dn_rules(&c, "CNI-DN-x", "10.0.0.1/32".parse().expect("net"), &m).is_empty());
        let many: Vec<Mapping> = (1..=16)
            .map(|p| Mapping {
                host_port: 1000 + p,
                container_port: p,
                protocol: Proto::Tcp,
                host_ip: None,
            })
            .collect();
        let e = entry_rules(&conf(), "c", "CNI-DN-x", true, &many);
        assert_eq!(e.len(), 2);
        assert!(e[1].contains("--dports 1016 "));
    }

    /// Conditions as long as the config allows still fit an `iptables-restore` line, next to
    /// the longest comment and port list an entry rule can have.
    #[test]
    fn the_longest_conditions_fit_one_line() {
        use crate::config::CONDITIONS_MAX;
        let mut c = conf();
        c.network = "\"n\"".repeat(100);
        let fixed = ["-m", "comment", "--comment"];
        let used: usize = fixed.iter().map(|f| 1 + f.len()).sum();
        c.conditions_v4 = fixed.iter().map(|f| f.to_string()).collect();
        c.conditions_v4.push("x".repeat(CONDITIONS_MAX - used - 1));
        let ports: Vec<Mapping> = (0..15)
            .map(|i| Mapping {
                host_port: 60000 + i,
                container_port: 80,
                protocol: Proto::Sctp,
                host_ip: None,
            })
            .collect();
        let id = "c".repeat(300);
        let rules = entry_rules(&c, &id, &chain_name(&c.network, &id), true, &ports);
        assert_eq!(rules.len(), 1);
        document(&rules).expect("fits one line");
    }
}
