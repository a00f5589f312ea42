//! Rules as this crate renders them: typed matches and actions ([`Rule`]) that print in
//! nft's syntax (the golden tests' text, and what `nft list table inet calico` shows) and
//! lower to the netfilter crate's expressions ([`Rule::lower`]).
//!
//! Felix's equivalent is `felix/generictables` (`Match`/`Action` builders rendered by
//! `felix/nftables`); only what the policy agent needs is here.

use calico_netfilter::nft::{self, CmpOp, Expr, Verdict};
use calico_netfilter::ruleset;
use ipnet::IpNet;
use std::fmt::{self, Write as _};

/// One condition of a rule; all of a rule's matches must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Match {
    /// `meta nfproto ipv4|ipv6`.
    Family { v4: bool },
    /// `meta l4proto <n>` (`!=` with `neq`).
    Proto { proto: u8, neq: bool },
    /// `iifname`/`oifname` (a trailing `*` matches a prefix).
    IfName {
        output: bool,
        name: String,
        neq: bool,
    },
    /// `ip saddr 10.0.0.0/8` (`ip6 …`, `!=` with `neq`).
    Net { source: bool, net: IpNet, neq: bool },
    /// `ip saddr @set`.
    AddrSet {
        source: bool,
        v4: bool,
        set: String,
        neq: bool,
    },
    /// `ip daddr . meta l4proto . th dport @set` (named ports; `dst` false: source side).
    NamedPortSet {
        dst: bool,
        v4: bool,
        set: String,
        neq: bool,
    },
    /// `th dport 80` / `th dport 8000-8080`.
    Ports {
        dst: bool,
        first: u16,
        last: u16,
        neq: bool,
    },
    /// `icmp type 8 code 0` (`icmpv6` when not `v4`).
    Icmp {
        v4: bool,
        icmp_type: u8,
        code: Option<u8>,
        neq: bool,
    },
    /// `ct state established,related` (any of the bits).
    CtState { bits: u32 },
    /// `meta mark & mask == value` (`!=` with `neq`).
    Mark { mask: u32, value: u32, neq: bool },
    /// `fib daddr type local`.
    LocalDaddr,
}

/// What a rule does when it matches, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// `meta mark set mark & ~clear | set`.
    SetMark {
        set: u32,
        clear: u32,
    },
    Log {
        prefix: String,
    },
    Counter,
    Masquerade,
    /// `iifname vmap @map` / `oifname vmap @map` (a miss goes on).
    Vmap {
        output: bool,
        map: String,
    },
    Verdict(Verdict),
}

/// One rule with a comment saying what it is (Felix's comments where it has one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub actions: Vec<Action>,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(matches: Vec<Match>, actions: Vec<Action>) -> Self {
        Rule {
            matches,
            actions,
            comment: None,
        }
    }

    pub fn comment(mut self, c: impl Into<String>) -> Self {
        self.comment = Some(c.into());
        self
    }

    /// The netfilter crate's rule: expressions in match order, then the actions.
    pub fn lower(&self) -> ruleset::Rule {
        let mut exprs = Vec::new();
        for m in &self.matches {
            lower_match(m, &mut exprs);
        }
        for a in &self.actions {
            match a {
                Action::SetMark { set, clear } => exprs.extend(nft::update_mark(*set, *clear)),
                Action::Log { prefix } => exprs.push(Expr::Log {
                    prefix: Some(prefix.clone()),
                    group: None,
                }),
                Action::Counter => exprs.push(Expr::Counter),
                Action::Masquerade => exprs.push(Expr::Masquerade),
                Action::Vmap { output, map } => exprs.extend(nft::ifname_vmap(*output, map)),
                Action::Verdict(v) => exprs.push(Expr::Verdict(v.clone())),
            }
        }
        ruleset::Rule {
            exprs,
            comment: self.comment.clone(),
        }
    }
}

fn lower_match(m: &Match, out: &mut Vec<Expr>) {
    match m {
        Match::Family { v4 } => out.extend(nft::match_family(*v4)),
        Match::Proto { proto, neq } => out.extend(nft::match_l4proto(*proto, *neq)),
        Match::IfName { output, name, neq } => out.extend(nft::match_ifname(*output, name, *neq)),
        Match::Net { source, net, neq } => {
            let v4 = matches!(net, IpNet::V4(_));
            let (addr, mask): (Vec<u8>, Vec<u8>) = match net {
                IpNet::V4(n) => (n.network().octets().to_vec(), n.netmask().octets().to_vec()),
                IpNet::V6(n) => (n.network().octets().to_vec(), n.netmask().octets().to_vec()),
            };
            out.push(nft::load_addr(*source, v4, nft::REG_1));
            if mask.iter().any(|b| *b != 0xff) {
                out.push(Expr::BitwiseIn {
                    reg: nft::REG_1,
                    xor: vec![0; mask.len()],
                    mask,
                });
            }
            out.push(Expr::Cmp {
                sreg: nft::REG_1,
                op: if *neq { CmpOp::Neq } else { CmpOp::Eq },
                data: addr,
            });
        }
        Match::AddrSet {
            source,
            v4,
            set,
            neq,
        } => out.extend(nft::match_addr_set(*source, *v4, set, *neq)),
        Match::NamedPortSet { dst, v4, set, neq } => {
            out.extend(nft::match_addr_proto_port_set(*dst, *v4, set, *neq))
        }
        Match::Ports {
            dst,
            first,
            last,
            neq,
        } => out.extend(nft::match_ports(*dst, *first, *last, *neq)),
        Match::Icmp {
            v4,
            icmp_type,
            code,
            neq,
        } => out.extend(nft::match_icmp(*v4, *icmp_type, *code, *neq)),
        Match::CtState { bits } => out.extend(nft::match_ct_state(*bits)),
        Match::Mark { mask, value, neq } => out.extend(nft::match_mark(*mask, *value, *neq)),
        Match::LocalDaddr => out.extend(nft::match_local_daddr()),
    }
}

fn op(neq: bool) -> &'static str {
    if neq { "!= " } else { "" }
}

fn fam(v4: bool) -> &'static str {
    if v4 { "ip" } else { "ip6" }
}

fn dir(source: bool) -> &'static str {
    if source { "saddr" } else { "daddr" }
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        4 => "ipip".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "ipv6-icmp".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => n.to_string(),
    }
}

fn ct_names(bits: u32) -> String {
    let names = [
        (nft::CT_STATE_INVALID, "invalid"),
        (nft::CT_STATE_ESTABLISHED, "established"),
        (nft::CT_STATE_RELATED, "related"),
        (nft::CT_STATE_NEW, "new"),
        (nft::CT_STATE_UNTRACKED, "untracked"),
    ];
    names
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Family { v4 } => {
                write!(f, "meta nfproto {}", if *v4 { "ipv4" } else { "ipv6" })
            }
            Match::Proto { proto, neq } => {
                write!(f, "meta l4proto {}{}", op(*neq), proto_name(*proto))
            }
            Match::IfName { output, name, neq } => write!(
                f,
                "{} {}\"{name}\"",
                if *output { "oifname" } else { "iifname" },
                op(*neq)
            ),
            Match::Net { source, net, neq } => write!(
                f,
                "{} {} {}{net}",
                fam(matches!(net, IpNet::V4(_))),
                dir(*source),
                op(*neq)
            ),
            Match::AddrSet {
                source,
                v4,
                set,
                neq,
            } => write!(f, "{} {} {}@{set}", fam(*v4), dir(*source), op(*neq)),
            Match::NamedPortSet { dst, v4, set, neq } => write!(
                f,
                "{} {} . meta l4proto . th {} {}@{set}",
                fam(*v4),
                dir(!*dst),
                if *dst { "dport" } else { "sport" },
                op(*neq)
            ),
            Match::Ports {
                dst,
                first,
                last,
                neq,
            } => {
                write!(
                    f,
                    "th {} {}{first}",
                    if *dst { "dport" } else { "sport" },
                    op(*neq)
                )?;
                if last != first {
                    write!(f, "-{last}")?;
                }
                Ok(())
            }
            Match::Icmp {
                v4,
                icmp_type,
                code,
                neq,
            } => {
                let p = if *v4 { "icmp" } else { "icmpv6" };
                // Type and code are compared as one 2-byte value; nft writes the negation
                // of that as a set lookup.
                match (code, neq) {
                    (Some(c), false) => write!(f, "{p} type {icmp_type} {p} code {c}"),
                    (Some(c), true) => write!(f, "{p} type . {p} code != {{ {icmp_type} . {c} }}"),
                    (None, _) => write!(f, "{p} type {}{icmp_type}", op(*neq)),
                }
            }
            Match::CtState { bits } => write!(f, "ct state {}", ct_names(*bits)),
            Match::Mark { mask, value, neq } => {
                write!(
                    f,
                    "meta mark & {mask:#x} {}{value:#x}",
                    if *neq { "!= " } else { "== " }
                )
            }
            Match::LocalDaddr => write!(f, "fib daddr type local"),
        }
    }
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::SetMark { set, clear } => {
                write!(f, "meta mark set meta mark & {:#x}", !(set | clear))?;
                if *set != 0 {
                    write!(f, " | {set:#x}")?;
                }
                Ok(())
            }
            Action::Log { prefix } => write!(f, "log prefix \"{prefix}\""),
            Action::Counter => write!(f, "counter"),
            Action::Masquerade => write!(f, "masquerade"),
            Action::Vmap { output, map } => write!(
                f,
                "{} vmap @{map}",
                if *output { "oifname" } else { "iifname" }
            ),
            Action::Verdict(v) => f.write_str(&verdict_text(v)),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.matches.iter().map(ToString::to_string).collect();
        parts.extend(self.actions.iter().map(ToString::to_string));
        f.write_str(&parts.join(" "))?;
        if let Some(c) = &self.comment {
            write!(f, " comment \"{}\"", nft::comment_text(c))?;
        }
        Ok(())
    }
}

/// A set's definition and elements in nft's syntax.
pub fn set_text(name: &str, set: &ruleset::Set) -> String {
    let ty = match set.key {
        ruleset::SetKey::Ipv4Addr => "ipv4_addr",
        ruleset::SetKey::Ipv6Addr => "ipv6_addr",
        ruleset::SetKey::Ipv4AddrProtoPort => "ipv4_addr . inet_proto . inet_service",
        ruleset::SetKey::Ipv6AddrProtoPort => "ipv6_addr . inet_proto . inet_service",
        ruleset::SetKey::Port => "inet_service",
    };
    let mut out = format!("\tset {name} {{\n\t\ttype {ty}\n");
    if set.interval {
        out.push_str("\t\tflags interval\n");
    }
    if !set.elems.is_empty() {
        let elems: Vec<String> = set
            .elems
            .iter()
            .map(|e| match e {
                // An exact set holds addresses, as nft writes them.
                ruleset::SetElem::Net(n) if !set.interval => n.addr().to_string(),
                ruleset::SetElem::Net(n) => n.to_string(),
                ruleset::SetElem::AddrProtoPort(a, p, port) => {
                    format!("{a} . {} . {port}", proto_name(p))
                }
                ruleset::SetElem::Ports(a, b) if a == b => a.to_string(),
                ruleset::SetElem::Ports(a, b) => format!("{a}-{b}"),
            })
            .collect();
        let _ = writeln!(out, "\t\telements = {{ {} }}", elems.join(", "));
    }
    out.push_str("\t}\n");
    out
}

/// A verdict map in nft's syntax.
pub fn map_text(name: &str, map: &ruleset::VerdictMap) -> String {
    let mut out = format!("\tmap {name} {{\n\t\ttype ifname : verdict\n");
    if !map.elems.is_empty() {
        let elems: Vec<String> = map
            .elems
            .iter()
            .map(|(k, v)| format!("\"{k}\" : {}", verdict_text(v)))
            .collect();
        let _ = writeln!(out, "\t\telements = {{ {} }}", elems.join(",\n\t\t\t     "));
    }
    out.push_str("\t}\n");
    out
}

/// A base chain's header line, as nft lists it.
pub fn base_text(b: &ruleset::BaseChain) -> String {
    let hook = match b.hook {
        ruleset::ChainHook::Prerouting => "prerouting",
        ruleset::ChainHook::Input => "input",
        ruleset::ChainHook::Forward => "forward",
        ruleset::ChainHook::Output => "output",
        ruleset::ChainHook::Postrouting => "postrouting",
    };
    let policy = match b.policy {
        ruleset::ChainPolicy::Accept => "accept",
        ruleset::ChainPolicy::Drop => "drop",
    };
    format!(
        "type {} hook {hook} priority {}; policy {policy};",
        b.kind.name(),
        b.priority
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_print_as_nft_writes_them() {
        let r = Rule::new(
            vec![
                Match::Proto {
                    proto: 6,
                    neq: false,
                },
                Match::Ports {
                    dst: true,
                    first: 8000,
                    last: 8080,
                    neq: false,
                },
                Match::Net {
                    source: true,
                    net: "10.0.0.0/8".parse().expect("net"),
                    neq: true,
                },
            ],
            vec![
                Action::SetMark {
                    set: 0x10000,
                    clear: 0,
                },
                Action::Verdict(Verdict::Return),
            ],
        )
        .comment("allow");
        assert_eq!(
            r.to_string(),
            "meta l4proto tcp th dport 8000-8080 ip saddr != 10.0.0.0/8 meta mark set meta mark & 0xfffeffff | 0x10000 return comment \"allow\""
        );
        let lowered = r.lower();
        assert_eq!(lowered.comment.as_deref(), Some("allow"));
        assert!(matches!(
            lowered.exprs.last(),
            Some(Expr::Verdict(Verdict::Return))
        ));
    }
}
