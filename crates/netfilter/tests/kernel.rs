//! Our nf_tables encoders against the kernel: rules built with [`calico_netfilter::nft`] are
//! committed in a test namespace and read back by Debian's `nft` (what the kernel
//! understood, printed in nft's own syntax), and our decoder reads the kernel's dump.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use calico_netfilter::NfSocket;
use calico_netfilter::nft::{self, Expr, Hook, NFPROTO_INET};
use std::net::IpAddr;
use testkit::{NetNs, require};

const TABLE: &str = "ct_encoders";

/// Commits `rules` (chain name, expressions, comment) into a fresh table in `ns`.
fn commit(ns: &NetNs, rules: Vec<(&'static str, Vec<Expr>, Option<&'static str>)>) {
    ns.within(move || {
        let mut sock = NfSocket::open().unwrap();
        let mut msgs = vec![
            nft::new_table(NFPROTO_INET, TABLE, "encoder test"),
            nft::new_chain(
                NFPROTO_INET,
                TABLE,
                "pre",
                Some((Hook::Prerouting, nft::PRIORITY_DSTNAT)),
                None,
            ),
            nft::new_chain(
                NFPROTO_INET,
                TABLE,
                "post",
                Some((Hook::Postrouting, nft::PRIORITY_SRCNAT)),
                None,
            ),
            nft::new_chain(NFPROTO_INET, TABLE, "dn-abc", None, Some("per container")),
        ];
        let mut what: Vec<String> = vec!["table".into(), "pre".into(), "post".into(), "dn".into()];
        for (chain, exprs, comment) in &rules {
            msgs.push(nft::new_rule(
                NFPROTO_INET,
                TABLE,
                chain,
                exprs,
                *comment,
                false,
            ));
            what.push(format!("rule in {chain}"));
        }
        sock.batch(&what, &msgs).unwrap();
    })
    .unwrap();
}

/// The rules of a chain as `nft` prints them, one per line.
fn listed(ns: &NetNs, chain: &str) -> Vec<String> {
    ns.sh(&format!("nft list chain inet {TABLE} {chain}"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("table") && !l.starts_with("chain"))
        .filter(|l| !l.starts_with('}') && !l.starts_with("type ") && !l.starts_with("comment"))
        .map(str::to_string)
        .collect()
}

fn cat(parts: &[Vec<Expr>]) -> Vec<Expr> {
    parts.concat()
}

#[test]
fn the_kernel_reads_our_rules_as_nft_writes_them() {
    require!(root; "nft");
    let ns = NetNs::new("nft").unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    commit(
        &ns,
        vec![
            (
                "pre",
                cat(&[
                    nft::match_family(true),
                    nft::match_addr(true, ip("10.244.1.77"), 26),
                    vec![Expr::Meta(nft::META_L4PROTO), Expr::CmpEq(vec![6])],
                    vec![Expr::Jump("dn-abc".into())],
                ]),
                Some("container-1"),
            ),
            (
                "pre",
                cat(&[
                    nft::match_family(false),
                    nft::match_addr(false, ip("fd00:10:244::5"), 128),
                    nft::match_local_daddr(),
                    vec![Expr::Jump("dn-abc".into())],
                ]),
                None,
            ),
            ("dn-abc", nft::set_mark_bit(13), None),
            ("dn-abc", nft::set_mark_bit_in(13, nft::REG32_00), None),
            (
                "post",
                cat(&[nft::match_mark_bit(13), vec![Expr::Masquerade]]),
                None,
            ),
        ],
    );
    assert_eq!(
        listed(&ns, "pre"),
        [
            // nft folds the family match into the address match it guards.
            r#"ip saddr 10.244.1.64/26 meta l4proto tcp jump dn-abc comment "container-1""#,
            "ip6 daddr fd00:10:244::5 fib daddr type local jump dn-abc",
        ]
    );
    assert_eq!(
        listed(&ns, "dn-abc"),
        [
            "meta mark set meta mark | 0x00002000",
            "meta mark set meta mark | 0x00002000",
        ]
    );
    assert_eq!(
        listed(&ns, "post"),
        ["meta mark & 0x00002000 == 0x00002000 masquerade"]
    );
}

#[test]
fn our_decoder_reads_the_kernels_dump() {
    require!(root; "nft");
    let ns = NetNs::new("nftd").unwrap();
    commit(
        &ns,
        vec![
            (
                "pre",
                vec![Expr::Jump("dn-abc".into())],
                Some("container-1"),
            ),
            ("pre", nft::match_local_daddr(), None),
        ],
    );
    let rules = ns
        .within(|| {
            let mut sock = NfSocket::open().unwrap();
            sock.dump("rules", &nft::get_rules(NFPROTO_INET, TABLE, "pre"))
                .unwrap()
                .iter()
                .filter_map(|r| nft::rule_info(&r.attrs))
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].chain, "pre");
    assert_eq!(rules[0].comment.as_deref(), Some("container-1"));
    assert_eq!(rules[0].targets, ["dn-abc"]);
    assert!(rules[1].comment.is_none() && rules[1].targets.is_empty());
    // Handles are the kernel's, and the one nft shows.
    let shown = ns
        .sh(&format!("nft -a list chain inet {TABLE} pre"))
        .unwrap();
    assert!(
        shown.contains(&format!("# handle {}", rules[0].handle)),
        "{shown}"
    );
}

/// Findings #1: a transaction of hundreds of acknowledged messages overflowed the default
/// receive buffer ("No buffer space available") and one of megabytes the send buffer
/// ("Message too long"). The socket grows both to the batch: 5000 one-element messages,
/// then 50k elements in chunked lists (about 2 MiB), each one transaction.
#[test]
fn large_transactions_fit_the_socket() {
    require!(root; "nft");
    let ns = NetNs::new("nftbig").unwrap();
    let count = ns
        .within(|| {
            let mut sock = NfSocket::open().unwrap();
            let spec = nft::SetSpec {
                name: "ports".into(),
                key_type: nft::types::IPV4_ADDR,
                key_fields: vec![4],
                data: None,
                interval: false,
            };
            let big = nft::SetSpec {
                name: "pairs".into(),
                key_type: nft::types::concat(&[nft::types::IPV4_ADDR, nft::types::INET_SERVICE]),
                key_fields: vec![4, 2],
                data: None,
                interval: false,
            };
            sock.batch(
                &["table".into(), "set".into(), "set".into()],
                &[
                    nft::new_table(NFPROTO_INET, TABLE, "big"),
                    nft::new_set(NFPROTO_INET, TABLE, &spec),
                    nft::new_set(NFPROTO_INET, TABLE, &big),
                ],
            )
            .unwrap();
            let elem = |key: Vec<u8>| nft::Elem {
                key,
                key_end: None,
                data: None,
                comment: Some("a-container-id-of-some-length".into()),
            };
            let one_each: Vec<_> = (1..=5000u16)
                .map(|p| {
                    nft::add_elems(
                        NFPROTO_INET,
                        TABLE,
                        "ports",
                        &[elem(u32::from(p).to_be_bytes().to_vec())],
                    )
                })
                .collect();
            let what = vec!["add element".to_string(); one_each.len()];
            sock.batch(&what, &one_each).unwrap();
            let many: Vec<_> = (0..50_000u32)
                .map(|i| {
                    let [_, a, b, c] = i.to_be_bytes();
                    elem(vec![10, a, b, c, 0, 80, 0, 0])
                })
                .collect();
            let lists = nft::add_elems_chunked(NFPROTO_INET, TABLE, "pairs", &many);
            let what = vec!["add elements".to_string(); lists.len()];
            sock.batch(&what, &lists).unwrap();
            let mut count = |set: &str| -> usize {
                sock.dump("list", &nft::get_elems(NFPROTO_INET, TABLE, set))
                    .unwrap()
                    .iter()
                    .map(|r| nft::elems_of(&r.attrs).len())
                    .sum()
            };
            (count("ports"), count("pairs"))
        })
        .unwrap();
    assert_eq!(count, (5000, 50_000));
}
