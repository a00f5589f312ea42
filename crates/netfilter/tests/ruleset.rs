//! The ruleset engine against the kernel, in namespaces the tests create: a declared table is
//! applied and read back by Debian's `nft`; incremental changes touch only what changed;
//! interval sets are normalised; the atomic replace clears foreign junk; a ruleset of
//! policy scale applies in one transaction; and real traffic through a router namespace
//! obeys the rules (dispatch by interface, sets, port ranges, conntrack).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use calico_netfilter::NfSocket;
use calico_netfilter::nft::{self, CmpOp, Expr, Verdict};
use calico_netfilter::ruleset::{
    self, BaseChain, Batch, Chain, ChainHook, ChainKind, ChainPolicy, Interval, Rule, Ruleset,
    Set, SetElem, SetKey, VerdictMap,
};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use testkit::{NetNs, require};

const TABLE: &str = "calico";

fn net(s: &str) -> SetElem {
    SetElem::Net(s.parse().unwrap())
}

fn rule(parts: &[Vec<Expr>]) -> Rule {
    Rule::new(parts.concat())
}

fn verdict(v: Verdict) -> Vec<Expr> {
    vec![Expr::Verdict(v)]
}

fn forward_chain(rules: Vec<Rule>) -> Chain {
    Chain {
        base: Some(BaseChain {
            kind: ChainKind::Filter,
            hook: ChainHook::Forward,
            priority: 0,
            policy: ChainPolicy::Accept,
        }),
        rules,
    }
}

/// A table with every kind of expression, set and map the policy agent renders.
fn sample() -> Ruleset {
    let mut rs = Ruleset::new(TABLE);
    rs.chains.insert(
        "filter-FORWARD".into(),
        forward_chain(vec![
            rule(&[
                nft::match_ct_state(nft::CT_STATE_ESTABLISHED | nft::CT_STATE_RELATED),
                verdict(Verdict::Accept),
            ])
            .with_comment("cali:conntrack"),
            rule(&[
                nft::match_ct_state(nft::CT_STATE_INVALID),
                verdict(Verdict::Drop),
            ]),
            rule(&[nft::ifname_vmap(false, "cali-from-wl-dispatch")]),
            rule(&[nft::match_ifname(false, "cali*", false), verdict(Verdict::Drop)])
                .with_comment("unknown endpoint"),
        ]),
    );
    rs.chains.insert(
        "filter-cali-fw-calia".into(),
        Chain {
            base: None,
            rules: vec![
                rule(&[
                    nft::match_family(true),
                    nft::match_addr_set(false, true, "cali40s-dst", false),
                    verdict(Verdict::Accept),
                ]),
                rule(&[
                    nft::match_family(false),
                    nft::match_addr_set(true, false, "cali60s-src", true),
                    verdict(Verdict::Drop),
                ]),
                rule(&[
                    nft::match_l4proto(nft::IPPROTO_TCP, false),
                    nft::match_ports(true, 8000, 8010, false),
                    verdict(Verdict::Accept),
                ]),
                rule(&[
                    nft::match_family(true),
                    nft::match_addr_proto_port_set(true, true, "cali40n-http", false),
                    verdict(Verdict::Accept),
                ]),
                rule(&[nft::match_icmp(true, 8, Some(0), false), verdict(Verdict::Accept)]),
                rule(&[nft::match_icmp(false, 128, None, false), verdict(Verdict::Accept)]),
                rule(&[
                    nft::match_mark(0x10000, 0x10000, false),
                    verdict(Verdict::Return),
                ]),
                rule(&[nft::update_mark(0x20000, 0)]),
                rule(&[
                    vec![
                        Expr::Log {
                            prefix: Some("calico-drop".into()),
                            group: Some(2),
                        },
                        Expr::Counter,
                    ],
                    verdict(Verdict::Drop),
                ]),
                rule(&[
                    nft::match_l4proto(nft::IPPROTO_TCP, false),
                    nft::match_port_set(true, "cali-ports", false),
                    verdict(Verdict::Jump("filter-cali-tw-calia".into())),
                ]),
            ],
        },
    );
    rs.chains.insert(
        "filter-cali-tw-calia".into(),
        Chain {
            base: None,
            rules: vec![
                rule(&[
                    nft::match_l4proto(nft::IPPROTO_UDP, false),
                    vec![nft::load_port(true, nft::REG_1)],
                    vec![Expr::Cmp {
                        sreg: nft::REG_1,
                        op: CmpOp::Gte,
                        data: 1024u16.to_be_bytes().to_vec(),
                    }],
                    verdict(Verdict::Return),
                ]),
                rule(&[verdict(Verdict::Drop)]).with_comment("cali:no policy passed the packet"),
            ],
        },
    );
    rs.sets.insert(
        "cali40s-dst".into(),
        Set {
            key: SetKey::Ipv4Addr,
            interval: true,
            elems: [
                net("10.0.0.0/25"),
                net("10.0.0.128/25"),
                net("10.1.2.3/32"),
                net("10.1.2.0/30"),
            ]
            .into(),
        },
    );
    rs.sets.insert(
        "cali60s-src".into(),
        Set::nets(
            false,
            ["fd00::/64".parse().unwrap(), "fd00::1/128".parse().unwrap()],
        ),
    );
    rs.sets.insert(
        "cali40n-http".into(),
        Set {
            key: SetKey::Ipv4AddrProtoPort,
            interval: false,
            elems: [
                SetElem::AddrProtoPort("10.0.0.5".parse().unwrap(), 6, 80),
                SetElem::AddrProtoPort("10.0.0.6".parse().unwrap(), 17, 53),
            ]
            .into(),
        },
    );
    rs.sets.insert(
        "cali-ports".into(),
        Set {
            key: SetKey::Port,
            interval: true,
            elems: [
                SetElem::Ports(80, 90),
                SetElem::Ports(91, 100),
                SetElem::Ports(443, 443),
            ]
            .into(),
        },
    );
    rs.maps.insert(
        "cali-from-wl-dispatch".into(),
        VerdictMap {
            elems: [
                (
                    "calia".to_string(),
                    Verdict::Jump("filter-cali-fw-calia".into()),
                ),
                (
                    "calib".to_string(),
                    Verdict::Goto("filter-cali-tw-calia".into()),
                ),
            ]
            .into(),
            ..VerdictMap::default()
        },
    );
    rs
}

/// Plans `old → new` and applies it in `ns`; the batch, for its descriptions.
fn apply(ns: &NetNs, old: Option<&Ruleset>, new: &Ruleset) -> Batch {
    let batch = ruleset::plan(old, new).unwrap();
    let b = batch.clone();
    ns.within(move || {
        let mut sock = NfSocket::open().unwrap();
        ruleset::apply(&mut sock, &b).unwrap();
    })
    .unwrap();
    batch
}

/// The lines of `nft list chain` between the chain's braces (without its `type` line).
fn chain_lines(ns: &NetNs, chain: &str) -> Vec<String> {
    ns.sh(&format!("nft list chain inet {TABLE} {chain}"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("table") && !l.starts_with("chain"))
        .filter(|l| !l.starts_with('}') && !l.starts_with("type "))
        .map(str::to_string)
        .collect()
}

/// `nft -j list set` elements as intervals of numbers (IPv4, IPv6 or ports).
fn set_intervals(ns: &NetNs, set: &str) -> Vec<Interval> {
    let out = ns
        .sh(&format!("nft -j list set inet {TABLE} {set}"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let elems = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o.get("set"))
        .and_then(|s| s.get("elem"))
        .and_then(|e| e.as_array().cloned())
        .unwrap_or_default();
    let num = |v: &serde_json::Value| -> u128 {
        if let Some(n) = v.as_u64() {
            return u128::from(n);
        }
        match v.as_str().unwrap().parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    };
    let mut out: Vec<Interval> = elems
        .iter()
        .map(|e| {
            if let Some(p) = e.get("prefix") {
                let n: ipnet::IpNet = format!(
                    "{}/{}",
                    p["addr"].as_str().unwrap(),
                    p["len"].as_u64().unwrap()
                )
                .parse()
                .unwrap();
                Interval {
                    first: num(&serde_json::json!(n.network().to_string())),
                    last: num(&serde_json::json!(n.broadcast().to_string())),
                }
            } else if let Some(r) = e.get("range") {
                Interval {
                    first: num(&r[0]),
                    last: num(&r[1]),
                }
            } else {
                let x = num(e);
                Interval { first: x, last: x }
            }
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_declared_table_is_what_nft_lists() {
    require!(root; "nft");
    let ns = NetNs::new("rsl").unwrap();
    let rs = sample();
    apply(&ns, None, &rs);
    assert_eq!(
        chain_lines(&ns, "filter-FORWARD"),
        [
            r#"ct state established,related accept comment "cali:conntrack""#,
            "ct state invalid drop",
            "iifname vmap @cali-from-wl-dispatch",
            r#"iifname "cali*" drop comment "unknown endpoint""#,
        ]
    );
    assert_eq!(
        chain_lines(&ns, "filter-cali-fw-calia"),
        [
            "ip daddr @cali40s-dst accept",
            "ip6 saddr != @cali60s-src drop",
            "tcp dport 8000-8010 accept",
            "ip daddr . meta l4proto . th dport @cali40n-http accept",
            // Code 0 of echo-request, which nft names after destination-unreachable's codes.
            "icmp type echo-request icmp code net-unreachable accept",
            "icmpv6 type echo-request accept",
            "meta mark & 0x00010000 == 0x00010000 return",
            "meta mark set meta mark | 0x00020000",
            r#"log prefix "calico-drop" group 2 counter packets 0 bytes 0 drop"#,
            "tcp dport @cali-ports jump filter-cali-tw-calia",
        ]
    );
    assert_eq!(
        chain_lines(&ns, "filter-cali-tw-calia"),
        [
            "udp dport >= 1024 return",
            r#"drop comment "cali:no policy passed the packet""#,
        ]
    );
    // Overlapping and adjacent elements merged; every kind of set and the verdict map.
    let listing = flat(&ns.sh(&format!("nft list table inet {TABLE}")).unwrap());
    for expected in [
        "type filter hook forward priority filter; policy accept;",
        "set cali-ports { type inet_service flags interval elements = { 80-100, 443 } }",
        "set cali40n-http { type ipv4_addr . inet_proto . inet_service \
         elements = { 10.0.0.6 . udp . 53, 10.0.0.5 . tcp . 80 } }",
        "set cali40s-dst { type ipv4_addr flags interval elements = { 10.0.0.0/24, 10.1.2.0/30 } }",
        "set cali60s-src { type ipv6_addr flags interval elements = { fd00::/64 } }",
        r#"map cali-from-wl-dispatch { type ifname : verdict elements = { "calia" : jump filter-cali-fw-calia, "calib" : goto filter-cali-tw-calia } }"#,
    ] {
        assert!(listing.contains(expected), "{expected}\nnot in\n{listing}");
    }
}

/// Whitespace runs as one space.
fn flat(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
