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
    self, BaseChain, Batch, Chain, ChainHook, ChainKind, ChainPolicy, Interval, Rule, Ruleset, Set,
    SetElem, SetKey, VerdictMap,
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
            rule(&[
                nft::match_ifname(false, "cali*", false),
                verdict(Verdict::Drop),
            ])
            .with_comment("unknown endpoint"),
        ]),
    );
    rs.chains.insert(
        "raw-PREROUTING".into(),
        Chain {
            base: Some(BaseChain {
                kind: ChainKind::Filter,
                hook: ChainHook::Prerouting,
                priority: ruleset::priority::RAW,
                policy: ChainPolicy::Accept,
            }),
            rules: vec![rule(&[
                nft::match_ifname(false, "calia", false),
                vec![Expr::Notrack],
            ])],
        },
    );
    rs.chains.insert(
        "mangle-OUTPUT".into(),
        Chain {
            base: Some(BaseChain {
                kind: ChainKind::Route,
                hook: ChainHook::Output,
                priority: ruleset::priority::MANGLE,
                policy: ChainPolicy::Accept,
            }),
            rules: vec![rule(&[nft::update_mark(0, 0xffff_0000)])],
        },
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
                rule(&[
                    nft::match_icmp(true, 8, Some(0), false),
                    verdict(Verdict::Accept),
                ]),
                rule(&[
                    nft::match_icmp(false, 128, None, false),
                    verdict(Verdict::Accept),
                ]),
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
                rule(&[
                    nft::match_family(false),
                    nft::match_addr_proto_port_set(true, false, "cali60n-http", true),
                    nft::match_l4proto(nft::IPPROTO_UDP, false),
                    nft::match_port_set(false, "cali-exact-ports", true),
                    verdict(Verdict::Drop),
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
        "cali60n-http".into(),
        Set {
            key: SetKey::Ipv6AddrProtoPort,
            interval: false,
            elems: [SetElem::AddrProtoPort("fd00::5".parse().unwrap(), 6, 8080)].into(),
        },
    );
    rs.sets.insert(
        "cali-exact-ports".into(),
        Set {
            key: SetKey::Port,
            interval: false,
            elems: [SetElem::Ports(53, 53), SetElem::Ports(5353, 5353)].into(),
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
            "ip6 daddr . meta l4proto . th dport != @cali60n-http udp sport != @cali-exact-ports drop",
        ]
    );
    assert_eq!(
        chain_lines(&ns, "filter-cali-tw-calia"),
        [
            "udp dport >= 1024 return",
            r#"drop comment "cali:no policy passed the packet""#,
        ]
    );
    assert_eq!(
        chain_lines(&ns, "raw-PREROUTING"),
        [r#"iifname "calia" notrack"#]
    );
    assert_eq!(
        chain_lines(&ns, "mangle-OUTPUT"),
        ["meta mark set meta mark & 0x0000ffff"]
    );
    // Overlapping and adjacent elements merged; every kind of set and the verdict map.
    let listing = flat(&ns.sh(&format!("nft list table inet {TABLE}")).unwrap());
    for expected in [
        "type filter hook forward priority filter; policy accept;",
        "type filter hook prerouting priority raw; policy accept;",
        "type route hook output priority mangle; policy accept;",
        "set cali-ports { type inet_service flags interval elements = { 80-100, 443 } }",
        "set cali40n-http { type ipv4_addr . inet_proto . inet_service \
         elements = { 10.0.0.6 . udp . 53, 10.0.0.5 . tcp . 80 } }",
        "set cali40s-dst { type ipv4_addr flags interval elements = { 10.0.0.0/24, 10.1.2.0/30 } }",
        "set cali60n-http { type ipv6_addr . inet_proto . inet_service elements = { fd00::5 . tcp . 8080 } }",
        "set cali-exact-ports { type inet_service elements = { 53, 5353 } }",
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

/// `(rule text, handle)` of every rule of a chain, from `nft -a list chain`.
fn handles(ns: &NetNs, chain: &str) -> Vec<(String, u64)> {
    ns.sh(&format!("nft -a list chain inet {TABLE} {chain}"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (rule, handle) = l.trim().rsplit_once(" # handle ")?;
            if rule.starts_with("chain ") {
                return None;
            }
            Some((rule.to_string(), handle.parse().unwrap()))
        })
        .collect()
}

#[test]
fn an_incremental_change_touches_only_what_changed() {
    require!(root; "nft");
    let ns = NetNs::new("rsi").unwrap();
    let old = sample();
    apply(&ns, None, &old);
    let before: Vec<_> = [
        "filter-FORWARD",
        "filter-cali-fw-calia",
        "filter-cali-tw-calia",
    ]
    .iter()
    .map(|c| handles(&ns, c))
    .collect();
    assert_eq!(before[1].len(), 11);

    let mut new = old.clone();
    new.chains.get_mut("filter-cali-tw-calia").unwrap().rules[0] = rule(&[
        nft::match_l4proto(nft::IPPROTO_UDP, false),
        nft::match_ports(true, 5000, 6000, true),
        verdict(Verdict::Return),
    ]);
    let dst = new.sets.get_mut("cali40s-dst").unwrap();
    dst.elems.insert(net("10.9.0.0/16"));
    new.sets
        .get_mut("cali40n-http")
        .unwrap()
        .elems
        .remove(&SetElem::AddrProtoPort("10.0.0.5".parse().unwrap(), 6, 80));
    let map = &mut new.maps.get_mut("cali-from-wl-dispatch").unwrap().elems;
    map.insert("calic".into(), Verdict::Jump("filter-cali-tw-calia".into()));
    map.insert("calib".into(), Verdict::Jump("filter-cali-fw-calia".into()));

    let batch = apply(&ns, Some(&old), &new);
    assert_eq!(
        batch.descriptions(),
        [
            "flush chain filter-cali-tw-calia",
            "delete 1 elements of map cali-from-wl-dispatch",
            "delete 1 elements of set cali40n-http",
            "add 2 elements of set cali40s-dst",
            "add 2 elements of map cali-from-wl-dispatch",
            "add rule 0 of chain filter-cali-tw-calia",
            "add rule 1 of chain filter-cali-tw-calia (cali:no policy passed the packet)",
        ]
    );
    // Untouched chains keep their rules (same handles); the changed one is rewritten.
    assert_eq!(handles(&ns, "filter-FORWARD"), before[0]);
    assert_eq!(handles(&ns, "filter-cali-fw-calia"), before[1]);
    let tw = handles(&ns, "filter-cali-tw-calia");
    assert_eq!(tw[0].0, "udp dport != 5000-6000 return");
    assert!(
        tw.iter()
            .all(|(_, h)| !before[2].iter().any(|(_, b)| b == h))
    );
    let listing = flat(&ns.sh(&format!("nft list table inet {TABLE}")).unwrap());
    assert!(
        listing.contains("elements = { 10.0.0.0/24, 10.1.2.0/30, 10.9.0.0/16 }"),
        "{listing}"
    );
    assert!(
        listing.contains("elements = { 10.0.0.6 . udp . 53 }"),
        "{listing}"
    );
    assert!(
        listing.contains(r#""calia" : jump filter-cali-fw-calia, "calib" : jump filter-cali-fw-calia, "calic" : jump filter-cali-tw-calia"#),
        "{listing}"
    );
    // Nothing to do is no message.
    assert!(ruleset::plan(Some(&new), &new).unwrap().is_empty());

    // Removals: a chain, its jumps (a rule and two map elements) and a set go in one
    // transaction, references first.
    let mut less = new.clone();
    less.chains.remove("filter-cali-tw-calia");
    // The rule that jumps to it.
    less.chains
        .get_mut("filter-cali-fw-calia")
        .unwrap()
        .rules
        .remove(9);
    less.sets.remove("cali-ports");
    let m = &mut less.maps.get_mut("cali-from-wl-dispatch").unwrap().elems;
    m.remove("calic");
    m.insert("calib".into(), Verdict::Drop);
    let batch = apply(&ns, Some(&new), &less);
    let d = batch.descriptions();
    assert_eq!(
        &d[..7],
        [
            "flush chain filter-cali-fw-calia",
            "flush chain filter-cali-tw-calia",
            "delete 2 elements of map cali-from-wl-dispatch",
            "delete set cali-ports",
            "delete chain filter-cali-tw-calia",
            "add 1 elements of map cali-from-wl-dispatch",
            "add rule 0 of chain filter-cali-fw-calia",
        ]
    );
    assert_eq!(d.len(), 6 + 10);
    assert_eq!(handles(&ns, "filter-FORWARD"), before[0]);
    let listing = flat(&ns.sh(&format!("nft list table inet {TABLE}")).unwrap());
    assert!(
        !listing.contains("cali-ports") && !listing.contains("tw-calia"),
        "{listing}"
    );

    // A set recreated with another kind of key: the unchanged chain that names it is
    // rewritten around it. A base chain's policy changes in place; its priority by
    // recreating it.
    let mut other = less.clone();
    other.sets.insert(
        "cali40s-dst".into(),
        Set {
            key: SetKey::Ipv4Addr,
            interval: false,
            elems: [net("10.0.0.1/32")].into(),
        },
    );
    let fwd = other.chains.get_mut("filter-FORWARD").unwrap();
    fwd.base.as_mut().unwrap().policy = ChainPolicy::Drop;
    let batch = apply(&ns, Some(&less), &other);
    assert_eq!(
        &batch.descriptions()[..5],
        [
            "flush chain filter-cali-fw-calia",
            "delete set cali40s-dst",
            "add set cali40s-dst",
            "set policy Drop of chain filter-FORWARD",
            "add 1 elements of set cali40s-dst",
        ]
    );
    assert_eq!(handles(&ns, "filter-FORWARD"), before[0]);
    assert!(
        flat(
            &ns.sh(&format!("nft list chain inet {TABLE} filter-FORWARD"))
                .unwrap()
        )
        .contains("policy drop;")
    );
    let mut moved = other.clone();
    let fwd = moved.chains.get_mut("filter-FORWARD").unwrap();
    fwd.base.as_mut().unwrap().priority = 10;
    let batch = apply(&ns, Some(&other), &moved);
    assert_eq!(
        &batch.descriptions()[..3],
        [
            "flush chain filter-FORWARD",
            "delete chain filter-FORWARD",
            "add chain filter-FORWARD",
        ]
    );
    assert!(
        flat(
            &ns.sh(&format!("nft list chain inet {TABLE} filter-FORWARD"))
                .unwrap()
        )
        .contains("hook forward priority filter + 10; policy drop;")
    );
}

/// A rule the planner accepts and the kernel refuses (register 99 does not exist: only the
/// kernel knows), commented "the bad one" so the error can be checked to name it.
fn rule_only_the_kernel_refuses() -> Rule {
    Rule::new(vec![
        Expr::Cmp {
            sreg: 99,
            op: CmpOp::Eq,
            data: vec![1],
        },
        Expr::Verdict(Verdict::Drop),
    ])
    .with_comment("the bad one")
}

/// A refusal of the kernel names the message it refused, and changes nothing.
#[test]
fn a_kernel_refusal_names_the_rule_and_changes_nothing() {
    require!(root; "nft");
    let ns = NetNs::new("rse").unwrap();
    let good = sample();
    apply(&ns, None, &good);
    let listed = ns.sh(&format!("nft list table inet {TABLE}")).unwrap();
    let mut bad = good.clone();
    bad.chains.get_mut("filter-cali-tw-calia").unwrap().rules[1] = rule_only_the_kernel_refuses();
    let batch = ruleset::plan(Some(&good), &bad).unwrap();
    let err = ns
        .within(move || {
            let mut sock = NfSocket::open().unwrap();
            ruleset::apply(&mut sock, &batch).unwrap_err()
        })
        .unwrap();
    assert!(
        err.to_string()
            .contains("add rule 1 of chain filter-cali-tw-calia (the bad one)"),
        "{err}"
    );
    assert_eq!(
        ns.sh(&format!("nft list table inet {TABLE}")).unwrap(),
        listed
    );
}

/// A small deterministic generator (xorshift), so a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random prefix in a small space (so elements overlap, touch and move boundaries), now and
/// then at the top of the address space (intervals without end element).
fn random_net(rng: &mut Rng, v4: bool) -> SetElem {
    let top = rng.below(10) == 0;
    let len = 20 + rng.below(13) as u8; // /20 .. /32
    if v4 {
        let base: u32 = if top { 0xffff_0000 } else { 0x0a00_0000 };
        let addr = base | (rng.below(1 << 16) as u32);
        let n = ipnet::Ipv4Net::new(addr.into(), len).unwrap().trunc();
        SetElem::Net(n.into())
    } else {
        let base: u128 = if top { u128::MAX << 16 } else { 0xfd00 << 112 };
        let addr = base | u128::from(rng.below(1 << 16) as u16);
        let n = ipnet::Ipv6Net::new(addr.into(), len + 96).unwrap().trunc();
        SetElem::Net(n.into())
    }
}

fn random_ports(rng: &mut Rng) -> SetElem {
    let first = if rng.below(10) == 0 {
        65_500 + rng.below(36) as u16
    } else {
        rng.below(200) as u16
    };
    let last = first.saturating_add(rng.below(20) as u16);
    SetElem::Ports(first, last)
}

/// Interval sets through many random changes: after each incremental apply the kernel holds
/// exactly the normalised elements (overlaps and adjacency merged, boundaries moved, open
/// intervals at the top), IPv4, IPv6 and ports.
#[test]
fn interval_sets_follow_random_changes_exactly() {
    require!(root; "nft");
    let ns = NetNs::new("rsr").unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut current = Ruleset::new(TABLE);
    current
        .sets
        .insert("v4".into(), Set::new(SetKey::Ipv4Addr, true));
    current
        .sets
        .insert("v6".into(), Set::new(SetKey::Ipv6Addr, true));
    current
        .sets
        .insert("ports".into(), Set::new(SetKey::Port, true));
    apply(&ns, None, &current);
    let (mut merged, mut open, mut most) = (0, 0, 0);
    for step in 0..60 {
        let mut next = current.clone();
        for (name, set) in next.sets.iter_mut() {
            // Mostly small edits, sometimes a rewrite.
            if rng.below(8) == 0 {
                set.elems.clear();
            }
            for _ in 0..rng.below(6) {
                let e = match name.as_str() {
                    "v4" => random_net(&mut rng, true),
                    "v6" => random_net(&mut rng, false),
                    _ => random_ports(&mut rng),
                };
                set.elems.insert(e);
            }
            for _ in 0..rng.below(4) {
                if set.elems.is_empty() {
                    break;
                }
                let i = rng.below(set.elems.len() as u64) as usize;
                let e = set.elems.iter().nth(i).unwrap();
                set.elems.remove(&e);
            }
        }
        apply(&ns, Some(&current), &next);
        for (name, set) in &next.sets {
            let want = ruleset::normalise(name, set.key, &set.elems).unwrap();
            assert_eq!(set_intervals(&ns, name), want, "set {name} at step {step}");
            merged += usize::from(want.len() < set.elems.len());
            open += usize::from(want.last().is_some_and(|i| i.last >= 65_535));
            most = most.max(want.len());
        }
        current = next;
    }
    // The sequence did exercise merging, open intervals and sets of many intervals.
    assert!(
        merged > 10 && open > 10 && most >= 8,
        "{merged} {open} {most}"
    );
}

/// `old = None` trusts nothing: a table full of another tool's junk (chains, a set, a map, a
/// base chain that drops everything) is replaced in one transaction by exactly ours; an absent
/// table is simply created. Other tables are left alone, and ours outlives the socket.
#[test]
fn the_atomic_replace_clears_junk_and_creates_an_absent_table() {
    require!(root; "nft");
    let ns = NetNs::new("rsj").unwrap();
    ns.sh(&format!(
        "nft -f - <<'X'
table inet {TABLE} {{
  set junk {{ type ipv4_addr; elements = {{ 1.2.3.4 }}; }}
  map jm {{ type ifname : verdict; }}
  chain filter-cali-tw-calia {{ counter drop; }}
  chain junkbase {{ type filter hook input priority 0; policy drop; }}
  chain junkchain {{ ip saddr @junk drop; jump filter-cali-tw-calia; }}
}}
table ip other {{
  chain c {{
    counter
  }}
}}
X"
    ))
    .unwrap();
    let rs = sample();
    apply(&ns, None, &rs);
    let listing = ns.sh(&format!("nft list table inet {TABLE}")).unwrap();
    assert!(
        !listing.contains("junk") && !listing.contains("jm"),
        "{listing}"
    );
    assert_eq!(
        chain_lines(&ns, "filter-cali-tw-calia"),
        [
            "udp dport >= 1024 return",
            r#"drop comment "cali:no policy passed the packet""#,
        ]
    );
    assert!(
        ns.sh("nft list table ip other")
            .unwrap()
            .contains("counter")
    );
    // Again, over itself: the same table.
    apply(&ns, None, &rs);
    assert_eq!(
        ns.sh(&format!("nft list table inet {TABLE}")).unwrap(),
        listing
    );

    let fresh = NetNs::new("rsa").unwrap();
    let batch = apply(&fresh, None, &rs);
    assert_eq!(
        &batch.descriptions()[..3],
        [
            "add table inet calico (to replace it)",
            "delete table inet calico",
            "add table inet calico",
        ]
    );
    // The socket is closed (the thread that applied is gone): the table stays.
    assert_eq!(
        fresh.sh(&format!("nft list table inet {TABLE}")).unwrap(),
        listing
    );
}

/// Policy scale in one transaction: 2,000 chains, 2,000 sets with 20,000 elements, 5,000
/// rules and a 2,000-entry dispatch map; then a one-element and a one-chain change against it.
/// Prints the timings (plan and apply) the issue's targets are about.
#[test]
fn a_ruleset_of_policy_scale_applies_in_one_transaction() {
    require!(root; "nft");
    let ns = NetNs::new("rsb").unwrap();
    let big = scale_ruleset(2_000, 2_000, 10);
    let rules: usize = big.chains.values().map(|c| c.rules.len()).sum();
    let elems: usize = big.sets.values().map(|s| s.elems.len()).sum();
    assert!(rules >= 5_000 && elems >= 20_000, "{rules} {elems}");
    let t = Instant::now();
    let batch = ruleset::plan(None, &big).unwrap();
    let planned = t.elapsed();
    let messages = batch.len();
    let t = Instant::now();
    ns.within(move || {
        let mut sock = NfSocket::open().unwrap();
        ruleset::apply(&mut sock, &batch).unwrap();
    })
    .unwrap();
    let applied = t.elapsed();
    eprintln!(
        "full: {} chains, {rules} rules, {} sets, {elems} elements, {messages} messages: \
         plan {planned:?}, apply {applied:?}",
        big.chains.len(),
        big.sets.len()
    );
    let count = |what: &str| {
        ns.sh(&format!("nft list table inet {TABLE} | grep -c '{what}'"))
            .unwrap()
            .trim()
            .parse::<usize>()
            .unwrap()
    };
    assert_eq!(count("^\tchain "), big.chains.len());
    assert_eq!(count("^\tset "), big.sets.len());
    assert_eq!(count("ip saddr @"), 2_001);

    // One element, then one chain.
    let mut one_elem = big.clone();
    one_elem
        .sets
        .get_mut("cali40s-1000")
        .unwrap()
        .elems
        .insert(net("192.168.77.0/24"));
    let mut one_chain = one_elem.clone();
    one_chain
        .chains
        .get_mut("filter-cali-pi-1000")
        .unwrap()
        .rules
        .push(rule(&[verdict(Verdict::Drop)]));
    for (name, old, new) in [
        ("one element", &big, &one_elem),
        ("one chain", &one_elem, &one_chain),
    ] {
        // The median of 21 plans (the first pays for cold caches).
        let mut times: Vec<Duration> = (0..21)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(ruleset::plan(Some(old), new).unwrap());
                t.elapsed()
            })
            .collect();
        times.sort();
        let planned = times[times.len() / 2];
        let batch = ruleset::plan(Some(old), new).unwrap();
        let n = batch.len();
        let applied = ns
            .within(move || {
                let mut sock = NfSocket::open().unwrap();
                let t = Instant::now();
                ruleset::apply(&mut sock, &batch).unwrap();
                t.elapsed()
            })
            .unwrap();
        eprintln!("{name}: {n} messages: plan {planned:?} (median), apply {applied:?}");
        // One element message; or the chain's flush and its 4 rules.
        assert!(n <= 5, "{name}: {n}");
    }
    assert!(
        ns.sh(&format!(
            "nft list set inet {TABLE} cali40s-1000 | grep -c 192.168.77.0/24"
        ))
        .is_ok()
    );
    // The same changes as in-place edits of a programmed table: planned at the cost of what
    // they touch.
    let (edit_plan, edit_commit) = ns
        .within(move || {
            let mut sock = NfSocket::open().unwrap();
            let mut table = ruleset::ProgrammedTable::new();
            let pi = one_chain.chains["filter-cali-pi-1001"].clone();
            table.sync(&mut sock, one_chain).unwrap();
            let mut times: Vec<Duration> = (0..21)
                .map(|_| {
                    let mut edit = table.edit().unwrap();
                    edit.set_mut("cali40s-1001")
                        .unwrap()
                        .elems
                        .insert(net("192.168.78.0/24"));
                    let t = Instant::now();
                    std::hint::black_box(edit.plan().unwrap());
                    t.elapsed()
                })
                .collect();
            times.sort();
            // Element and rule in, then out again, and so on: the median commit.
            let mut commits: Vec<Duration> = (0..21)
                .map(|i| {
                    let mut edit = table.edit().unwrap();
                    let mut chain = pi.clone();
                    if i % 2 == 0 {
                        chain.rules.push(rule(&[verdict(Verdict::Drop)]));
                    }
                    edit.put_chain("filter-cali-pi-1001", chain);
                    let set = &mut edit.set_mut("cali40s-1001").unwrap().elems;
                    let e = net("192.168.78.0/24");
                    if !set.remove(&e) {
                        set.insert(e);
                    }
                    let t = Instant::now();
                    // The elements; the flush and the chain's rules (2 or 3).
                    let n = edit.commit(&mut sock).unwrap();
                    assert!(n == 1 + 1 + 2 || n == 1 + 1 + 3, "{n}");
                    t.elapsed()
                })
                .collect();
            commits.sort();
            (times[times.len() / 2], commits[commits.len() / 2])
        })
        .unwrap();
    eprintln!(
        "edit: one element: plan {edit_plan:?} (median); one element and one chain: \
         plan and apply {edit_commit:?} (median)"
    );
    let listed = ns
        .sh(&format!("nft list set inet {TABLE} cali40s-1001"))
        .unwrap();
    assert!(listed.contains("192.168.78.0/24"), "{listed}");
    // One pod in, one pod out, of the 10,000-address set, element by element.
    let pod_plan = ns
        .within(move || {
            let mut sock = NfSocket::open().unwrap();
            let mut table = ruleset::ProgrammedTable::new();
            table
                .sync(&mut sock, scale_ruleset(2_000, 2_000, 10))
                .unwrap();
            let mut plans = Vec::new();
            let mut commits = Vec::new();
            for i in 0..21u32 {
                let mut edit = table.edit().unwrap();
                let [_, _, a, b] = (i * 2 + 1).to_be_bytes();
                let t = Instant::now();
                edit.add_elem("cali40s-all", net(&format!("10.244.{a}.{b}/32")))
                    .unwrap();
                let [_, _, a, b] = (i * 2).to_be_bytes();
                edit.remove_elem("cali40s-all", &net(&format!("10.244.{a}.{b}/32")))
                    .unwrap();
                let planned = edit.plan().unwrap();
                plans.push(t.elapsed());
                assert!(planned.len() <= 2, "{:?}", planned.descriptions());
                let t = Instant::now();
                edit.commit(&mut sock).unwrap();
                commits.push(t.elapsed());
            }
            plans.sort();
            commits.sort();
            (plans[10], commits[10])
        })
        .unwrap();
    eprintln!(
        "edit: one address in and one out of a 10,000-address set: plan {:?}, commit {:?} \
         (medians)",
        pod_plan.0, pod_plan.1
    );
    // Round i took 10.244.0.(2i) out and put 10.244.0.(2i+1) in.
    let has = |ip: &str| {
        ns.run(
            "nft",
            [
                "get",
                "element",
                "inet",
                TABLE,
                "cali40s-all",
                &format!("{{ {ip} }}"),
            ],
        )
        .unwrap()
        .status
        .success()
    };
    assert!(!has("10.244.0.0") && has("10.244.0.1") && !has("10.244.0.40"));
    assert!(has("10.244.0.41") && has("10.244.0.42") && !has("10.244.0.43"));
}

/// A ruleset shaped like the policy agent's at scale: `policies` policy chains
/// (`filter-cali-pi-N`, 2-3 rules each naming a set), `sets` address sets of `per_set`
/// prefixes, a dispatch map and per-endpoint chains for 200 local endpoints.
fn scale_ruleset(policies: usize, sets: usize, per_set: usize) -> Ruleset {
    let mut rs = Ruleset::new(TABLE);
    for s in 0..sets {
        let elems = (0..per_set)
            .map(|i| {
                let n = (s * per_set + i) as u32;
                // Not adjacent (a /25 in each /24): the kernel holds every one.
                let [_, _, a, b] = n.to_be_bytes();
                net(&format!("10.{a}.{b}.0/25"))
            })
            .collect();
        rs.sets.insert(
            format!("cali40s-{s}"),
            Set {
                key: SetKey::Ipv4Addr,
                interval: true,
                elems,
            },
        );
    }
    for p in 0..policies {
        let set = format!("cali40s-{}", p % sets);
        let mut rules = vec![
            rule(&[
                nft::match_family(true),
                nft::match_addr_set(true, true, &set, false),
                nft::match_l4proto(nft::IPPROTO_TCP, false),
                nft::match_ports(true, 8000, 8080, false),
                nft::update_mark(0x10000, 0),
                verdict(Verdict::Return),
            ])
            .with_comment(format!("Policy default.knp.default.p{p} ingress")),
            rule(&[
                nft::match_icmp(true, 8, None, false),
                nft::update_mark(0x10000, 0),
                verdict(Verdict::Return),
            ]),
        ];
        if p % 2 == 0 {
            rules.push(rule(&[
                nft::match_family(true),
                nft::match_addr_set(false, true, &set, true),
                verdict(Verdict::Drop),
            ]));
        }
        rs.chains
            .insert(format!("filter-cali-pi-{p}"), Chain { base: None, rules });
    }
    // A selector set of every pod cluster-wide: 10,000 addresses.
    rs.sets.insert(
        "cali40s-all".into(),
        Set {
            key: SetKey::Ipv4Addr,
            interval: true,
            elems: (0..10_000u32)
                .map(|i| {
                    let [_, _, a, b] = (i * 2).to_be_bytes();
                    net(&format!("10.244.{a}.{b}/32"))
                })
                .collect(),
        },
    );
    rs.chains
        .get_mut("filter-cali-pi-0")
        .unwrap()
        .rules
        .push(rule(&[
            nft::match_family(true),
            nft::match_addr_set(true, true, "cali40s-all", false),
            verdict(Verdict::Accept),
        ]));
    let mut dispatch = VerdictMap::default();
    for e in 0..200 {
        let iface = format!("cali{e:011}");
        let chain = format!("filter-cali-tw-{iface}");
        let rules = (0..3)
            .map(|k| {
                rule(&[verdict(Verdict::Jump(format!(
                    "filter-cali-pi-{}",
                    (e * 3 + k) % policies
                )))])
            })
            .chain([rule(&[
                nft::match_mark(0x10000, 0x10000, false),
                verdict(Verdict::Accept),
            ])])
            .chain([rule(&[verdict(Verdict::Drop)])])
            .collect();
        rs.chains.insert(chain.clone(), Chain { base: None, rules });
        dispatch.elems.insert(iface, Verdict::Goto(chain));
    }
    rs.maps.insert("cali-to-wl-dispatch".into(), dispatch);
    rs.chains.insert(
        "filter-FORWARD".into(),
        forward_chain(vec![
            rule(&[
                nft::match_ct_state(nft::CT_STATE_ESTABLISHED | nft::CT_STATE_RELATED),
                verdict(Verdict::Accept),
            ]),
            rule(&[nft::ifname_vmap(true, "cali-to-wl-dispatch")]),
        ]),
    );
    rs
}

/// Three endpoints behind a router namespace, as pods behind a node: A on `calia`, B on
/// `calib`, and C on `caliz`, an interface the ruleset does not know.
struct Lab {
    router: NetNs,
    a: NetNs,
    b: NetNs,
    c: NetNs,
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            router: NetNs::new("rtr").unwrap(),
            a: NetNs::new("epa").unwrap(),
            b: NetNs::new("epb").unwrap(),
            c: NetNs::new("epc").unwrap(),
        };
        lab.router
            .sh("ip link set lo up; sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
            .unwrap();
        for (i, (iface, ep)) in [("calia", &lab.a), ("calib", &lab.b), ("caliz", &lab.c)]
            .into_iter()
            .enumerate()
        {
            let n = i + 1;
            lab.router
                .sh(&format!(
                    "ip link add {iface} type veth peer name eth0 netns {ep}
                     ip addr add 10.65.{n}.1/24 dev {iface}
                     ip addr add fd65:{n}::1/64 dev {iface} nodad
                     ip link set {iface} up",
                    ep = ep.name()
                ))
                .unwrap();
            ep.sh(&format!(
                "ip link set lo up; ip link set eth0 up
                 ip addr add 10.65.{n}.2/24 dev eth0
                 ip addr add fd65:{n}::2/64 dev eth0 nodad
                 ip route add default via 10.65.{n}.1
                 ip -6 route add default via fd65:{n}::1"
            ))
            .unwrap();
        }
        lab
    }
}

/// One echo answered, tried for up to 10 s (the first may wait for neighbour discovery, and
/// a loaded machine for more).
fn pings(from: &NetNs, to: &str) -> bool {
    testkit::eventually(Duration::from_secs(10), || {
        from.run("busybox", ["ping", "-c1", "-W1", to])
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// One echo, not answered within 1 s.
fn ping_blocked(from: &NetNs, to: &str) -> bool {
    !from
        .run("busybox", ["ping", "-c1", "-W1", to])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Echo servers on `ports` in `ns` (sockets made there; served from threads of this
/// process, which end with the test's process).
fn serve(ns: &NetNs, ports: &[u16]) {
    for &port in ports {
        let listener = ns
            .within(move || TcpListener::bind(("::", port)).unwrap())
            .unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut read = conn.try_clone().unwrap();
                    let _ = std::io::copy(&mut read, &mut conn);
                });
            }
        });
    }
}

/// A TCP connection from `ns`, if the handshake completes within 1 s.
fn connect(ns: &NetNs, to: &str, port: u16) -> Option<TcpStream> {
    let addr = SocketAddr::new(to.parse().unwrap(), port);
    ns.within(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
        .unwrap()
}

/// Whether `conn` still carries data both ways (an echo within 1 s).
fn echoes(conn: &mut TcpStream) -> bool {
    use std::io::{Read, Write};
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 4];
    conn.write_all(b"ping").is_ok() && conn.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

/// The router's ruleset: dispatch from each known endpoint's interface to its chain; A may
/// ping the addresses of a set and reach TCP ports 8000-8010; B may start nothing; unknown
/// `cali*` interfaces carry nothing; replies pass by conntrack.
fn router_ruleset(allowed: &[&str], port_range: bool) -> Ruleset {
    let mut rs = Ruleset::new(TABLE);
    rs.chains.insert(
        "filter-FORWARD".into(),
        forward_chain(vec![
            rule(&[
                nft::match_ct_state(nft::CT_STATE_ESTABLISHED | nft::CT_STATE_RELATED),
                verdict(Verdict::Accept),
            ]),
            rule(&[
                nft::match_ct_state(nft::CT_STATE_INVALID),
                verdict(Verdict::Drop),
            ]),
            rule(&[nft::ifname_vmap(false, "cali-from-wl-dispatch")]),
            rule(&[
                nft::match_ifname(false, "cali*", false),
                verdict(Verdict::Drop),
            ])
            .with_comment("cali:unknown endpoint"),
        ]),
    );
    let mut from_a = vec![
        rule(&[
            nft::match_family(true),
            nft::match_addr_set(false, true, "cali40s-allowed", false),
            nft::match_icmp(true, 8, None, false),
            verdict(Verdict::Accept),
        ]),
        rule(&[
            nft::match_family(false),
            nft::match_addr_set(false, false, "cali60s-allowed", false),
            nft::match_icmp(false, 128, None, false),
            verdict(Verdict::Accept),
        ]),
    ];
    if port_range {
        from_a.push(rule(&[
            nft::match_l4proto(nft::IPPROTO_TCP, false),
            nft::match_ports(true, 8000, 8010, false),
            verdict(Verdict::Accept),
        ]));
    }
    from_a.push(rule(&[verdict(Verdict::Drop)]).with_comment("cali:no policy passed the packet"));
    rs.chains.insert(
        "filter-cali-fw-calia".into(),
        Chain {
            base: None,
            rules: from_a,
        },
    );
    rs.chains.insert(
        "filter-cali-fw-calib".into(),
        Chain {
            base: None,
            rules: vec![rule(&[verdict(Verdict::Drop)])],
        },
    );
    let v4 = allowed.iter().filter(|a| !a.contains(':'));
    let v6 = allowed.iter().filter(|a| a.contains(':'));
    rs.sets.insert(
        "cali40s-allowed".into(),
        Set::nets(true, v4.map(|a| a.parse().unwrap())),
    );
    rs.sets.insert(
        "cali60s-allowed".into(),
        Set::nets(false, v6.map(|a| a.parse().unwrap())),
    );
    rs.maps.insert(
        "cali-from-wl-dispatch".into(),
        VerdictMap {
            elems: [
                ("calia".into(), Verdict::Jump("filter-cali-fw-calia".into())),
                ("calib".into(), Verdict::Goto("filter-cali-fw-calib".into())),
            ]
            .into(),
            ..VerdictMap::default()
        },
    );
    rs
}

/// Real traffic through the router's forward chain, IPv4 and IPv6, ICMP and TCP.
#[test]
fn traffic_obeys_the_ruleset() {
    require!(root; "nft", "busybox");
    let lab = Lab::new();
    serve(&lab.b, &[8005, 9000]);
    serve(&lab.a, &[8005]);
    let open = router_ruleset(&["10.65.2.0/24", "10.65.2.2/32", "fd65:2::/64"], true);
    apply(&lab.router, None, &open);

    // Allowed by the address sets (ICMP) and the port range (TCP).
    assert!(pings(&lab.a, "10.65.2.2"));
    assert!(pings(&lab.a, "fd65:2::2"));
    let mut long_lived = connect(&lab.a, "10.65.2.2", 8005).expect("8005 is in 8000-8010");
    assert!(echoes(&mut long_lived));
    assert!(connect(&lab.a, "fd65:2::2", 8005).is_some());
    // Outside the range; and B may start nothing (its replies pass by conntrack above).
    assert!(connect(&lab.a, "10.65.2.2", 9000).is_none());
    assert!(ping_blocked(&lab.b, "10.65.1.2"));
    assert!(connect(&lab.b, "10.65.1.2", 8005).is_none());
    // C's interface is a cali* interface the ruleset does not know: nothing passes.
    assert!(ping_blocked(&lab.c, "10.65.2.2"));
    assert!(connect(&lab.c, "10.65.2.2", 8005).is_none());
    // Without the rules, C reaches B (the drop was the ruleset's).
    let mut bare = Ruleset::new(TABLE);
    bare.chains
        .insert("filter-FORWARD".into(), forward_chain(Vec::new()));
    apply(&lab.router, None, &bare);
    assert!(pings(&lab.c, "10.65.2.2"));
    apply(&lab.router, Some(&bare), &open);

    // An incremental change: the set loses B, the port range goes. New traffic stops at
    // once (the transaction is committed when apply returns); the established connection
    // goes on.
    let closed = router_ruleset(&["10.65.3.0/24"], false);
    let batch = apply(&lab.router, Some(&open), &closed);
    assert!(
        batch
            .descriptions()
            .iter()
            .all(|d| !d.contains("filter-FORWARD") && !d.contains("map")),
        "{:?}",
        batch.descriptions()
    );
    assert!(ping_blocked(&lab.a, "10.65.2.2"));
    assert!(ping_blocked(&lab.a, "fd65:2::2"));
    assert!(connect(&lab.a, "10.65.2.2", 8005).is_none());
    assert!(echoes(&mut long_lived), "ct state established accept");

    // Back again.
    apply(&lab.router, Some(&closed), &open);
    assert!(pings(&lab.a, "10.65.2.2"));
    assert!(connect(&lab.a, "10.65.2.2", 8005).is_some());
}

/// A jump loop passes the planner (it checks names, not the graph) and is refused by the
/// kernel; the error says which message, and the previous table stays.
#[test]
fn a_jump_loop_is_refused_and_named() {
    require!(root; "nft");
    let ns = NetNs::new("rsloop").unwrap();
    let good = sample();
    apply(&ns, None, &good);
    let listed = ns.sh(&format!("nft list table inet {TABLE}")).unwrap();
    let mut looped = good.clone();
    looped
        .chains
        .get_mut("filter-cali-tw-calia")
        .unwrap()
        .rules
        .insert(
            0,
            rule(&[verdict(Verdict::Jump("filter-cali-fw-calia".into()))]),
        );
    let batch = ruleset::plan(Some(&good), &looped).unwrap();
    let err = ns
        .within(move || {
            let mut sock = NfSocket::open().unwrap();
            ruleset::apply(&mut sock, &batch).unwrap_err()
        })
        .unwrap();
    let text = err.to_string();
    assert!(text.contains("filter-cali-tw-calia"), "{text}");
    // The kernel says EMLINK for a loop.
    assert_eq!(err.errno(), Some(libc::EMLINK), "{text}");
    assert_eq!(
        ns.sh(&format!("nft list table inet {TABLE}")).unwrap(),
        listed
    );
}

/// Deletes the test table from the calling thread's namespace, as another tool would.
fn ns_delete_table_from_here() {
    let status = std::process::Command::new("nft")
        .args(["delete", "table", "inet", TABLE])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The record of what was applied: the first sync replaces (junk included), later ones send
/// only differences, a refusal keeps the record (the kernel kept the table), `forget` makes
/// the next sync a replace again.
#[test]
fn a_programmed_table_syncs_by_difference() {
    require!(root; "nft");
    let ns = NetNs::new("rsp").unwrap();
    ns.sh(&format!(
        "nft add table inet {TABLE}; nft add chain inet {TABLE} junk"
    ))
    .unwrap();
    let more = ns
        .within(|| {
            let mut sock = NfSocket::open().unwrap();
            let mut table = ruleset::ProgrammedTable::new();
            let rs = sample();
            let full = table.sync(&mut sock, rs.clone()).unwrap();
            assert!(full > 20, "{full}");
            assert!(table.holds(&rs));
            assert_eq!(table.sync(&mut sock, rs.clone()).unwrap(), 0);
            let mut more = rs.clone();
            more.sets
                .get_mut("cali40s-dst")
                .unwrap()
                .elems
                .insert(net("10.8.0.0/16"));
            assert_eq!(table.sync(&mut sock, more.clone()).unwrap(), 1);
            let mut bad = more.clone();
            bad.chains.get_mut("filter-cali-tw-calia").unwrap().rules[0] =
                Rule::new(vec![Expr::Cmp {
                    sreg: 99,
                    op: CmpOp::Eq,
                    data: vec![1],
                }]);
            assert!(table.sync(&mut sock, bad).is_err());
            assert!(table.holds(&more));
            table.forget();
            assert!(table.sync(&mut sock, more.clone()).unwrap() > 20);
            more
        })
        .unwrap();
    // Drift: another tool deletes the table. The next change's difference is refused
    // (nothing to change), and retried as a replace with the whole wanted table: the table
    // is back, whole. A plain commit is refused and changes nothing.
    ns.within(move || {
        let mut sock = NfSocket::open().unwrap();
        let mut table = ruleset::ProgrammedTable::new();
        table.sync(&mut sock, more.clone()).unwrap();
        ns_delete_table_from_here();
        let mut wanted = more.clone();
        wanted
            .sets
            .get_mut("cali40s-dst")
            .unwrap()
            .elems
            .insert(net("10.7.0.0/16"));
        fn change(table: &mut ruleset::ProgrammedTable) -> ruleset::Edit<'_> {
            let mut edit = table.edit().unwrap();
            edit.set_mut("cali40s-dst")
                .unwrap()
                .elems
                .insert(net("10.7.0.0/16"));
            edit
        }
        assert!(change(&mut table).commit(&mut sock).is_err());
        assert!(table.holds(&more), "undone");
        let edit = change(&mut table);
        let sent = edit
            .commit_or_replace(&mut sock, || wanted.clone())
            .unwrap();
        assert!(sent > 20, "replaced whole");
        assert!(table.holds(&wanted));
        let mut later = wanted.clone();
        later.chains.remove("filter-cali-fw-calia");
        later.maps.clear();
        later
            .chains
            .get_mut("filter-FORWARD")
            .unwrap()
            .rules
            .remove(2);
        ns_delete_table_from_here();
        assert!(table.sync(&mut sock, later).unwrap() > 10, "replaced whole");
    })
    .unwrap();
    let listing = ns.sh(&format!("nft list table inet {TABLE}")).unwrap();
    assert!(
        // 10.7.0.0/16 and 10.8.0.0/16, adjacent, merged.
        listing.contains("10.7.0.0-10.8.255.255")
            && !listing.contains("chain filter-cali-fw-calia")
            && !listing.contains("junk"),
        "{listing}"
    );
}

/// A refusal in the middle of a transaction of thousands of messages (only the last asks for
/// an acknowledgement): the error names the refused rule, and nothing is applied, neither
/// over an existing table nor as a first apply (the table stays absent).
#[test]
fn a_refusal_in_the_middle_of_a_large_batch_is_named_and_nothing_applied() {
    require!(root; "nft");
    let ns = NetNs::new("rsr").unwrap();
    let good = scale_ruleset(2_000, 2_000, 10);
    apply(&ns, None, &good);
    let listed = ns.sh(&format!("nft list table inet {TABLE}")).unwrap();
    let mut bad = good.clone();
    bad.sets
        .get_mut("cali40s-1999")
        .unwrap()
        .elems
        .insert(net("192.168.99.0/24"));
    bad.chains.get_mut("filter-cali-pi-1000").unwrap().rules[1] = rule_only_the_kernel_refuses();
    let fresh = NetNs::new("rsf").unwrap();
    for (ns, old) in [(&ns, Some(&good)), (&ns, None), (&fresh, None)] {
        let batch = ruleset::plan(old, &bad).unwrap();
        let messages = batch.len();
        let refused = batch
            .descriptions()
            .iter()
            .position(|d| d.starts_with("add rule 1 of chain filter-cali-pi-1000"))
            .unwrap();
        // In the middle, with thousands of messages on either side when whole.
        assert!(refused + 1 < messages, "{refused} of {messages}");
        let err = ns
            .within(move || {
                let mut sock = NfSocket::open().unwrap();
                let err = ruleset::apply(&mut sock, &batch).unwrap_err();
                // The socket is usable after a refusal: the same batch fails the same way.
                let again = ruleset::apply(&mut sock, &batch).unwrap_err();
                assert_eq!(again.to_string(), err.to_string());
                err
            })
            .unwrap();
        assert!(
            err.to_string()
                .contains("add rule 1 of chain filter-cali-pi-1000 (the bad one)"),
            "{err}"
        );
        // A register out of range.
        assert_eq!(err.errno(), Some(libc::ERANGE), "{err}");
    }
    assert_eq!(
        ns.sh(&format!("nft list table inet {TABLE}")).unwrap(),
        listed
    );
    assert!(fresh.sh(&format!("nft list table inet {TABLE}")).is_err());
}

/// The first apply at bench-policy's scale (about 4,000 sets, 210,000 elements, 4,200 chains)
/// is one transaction the kernel takes, and `nft -f` of its listing in a fresh namespace
/// gives the same table; the times of both (and of a replace, the agent's restart) are
/// printed (`cargo test --release -p calico-netfilter --test ruleset -- --nocapture
/// first_apply_at_bench_scale`).
#[test]
fn first_apply_at_bench_scale() {
    require!(root; "nft");
    let ns = NetNs::new("rsm").unwrap();
    let big = scale_ruleset(4_200, 4_000, 50);
    let t = Instant::now();
    let batch = ruleset::plan(None, &big).unwrap();
    let planned = t.elapsed();
    let messages = batch.len();
    let bytes = batch.wire().bytes();
    let applied = ns
        .within(move || {
            let mut sock = NfSocket::open().unwrap();
            let t = Instant::now();
            ruleset::apply(&mut sock, &batch).unwrap();
            t.elapsed()
        })
        .unwrap();
    eprintln!("ours: {messages} messages, {bytes} bytes: plan {planned:?}, apply {applied:?}");
    let listing = ns.sh(&format!("nft list table inet {TABLE}")).unwrap();
    let dir = std::env::temp_dir().join(format!("rsm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("table.nft");
    std::fs::write(&file, &listing).unwrap();
    let fresh = NetNs::new("rsn").unwrap();
    let t = Instant::now();
    let loaded = fresh.sh(&format!("nft -f {}", file.display()));
    eprintln!("nft -f: {:?}", t.elapsed());
    std::fs::remove_dir_all(&dir).unwrap();
    loaded.unwrap();
    assert_eq!(
        fresh.sh(&format!("nft list table inet {TABLE}")).unwrap(),
        listing,
        "nft loads our listing back as the same table"
    );
    // Replacing the loaded table (the agent's restart).
    let again = ruleset::plan(None, &big).unwrap();
    let replaced = ns
        .within(move || {
            let mut sock = NfSocket::open().unwrap();
            let t = Instant::now();
            ruleset::apply(&mut sock, &again).unwrap();
            t.elapsed()
        })
        .unwrap();
    eprintln!("ours, replacing: apply {replaced:?}");
    assert_eq!(
        ns.sh(&format!("nft list table inet {TABLE}")).unwrap(),
        listing,
        "a replace by the same table leaves it as it was"
    );
}
