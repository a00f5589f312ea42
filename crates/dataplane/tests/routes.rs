//! The route table of distributed routes in real namespaces: single changes, reading back,
//! ownership by protocol, and converging 10,000 routes by dump and delta.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use calico_dataplane::routes::{
    NextHop, PROTO_BGP, PROTO_BLACKHOLE, RouteKind, RouteSpec, RouteTable, TABLE_MAIN,
};
use ipnet::IpNet;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;
use testkit::{NetNs, require};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn hop(gw: &str, oif: Option<u32>, onlink: bool) -> NextHop {
    NextHop {
        gateway: gw.parse().unwrap(),
        oif,
        onlink,
    }
}

fn route(dst: &str, kind: RouteKind, protocol: u8) -> RouteSpec {
    RouteSpec {
        dst: net(dst),
        kind,
        protocol,
        table: TABLE_MAIN,
        metric: None,
    }
}

/// A namespace with two veth pairs up (`a0`–`a1`, `b0`–`b1`), `a0` in 192.168.50.0/24 and
/// fd00:50::/64, `b0` in 192.168.51.0/24 and fd00:51::/64: next hops for ECMP.
fn host_with_links() -> NetNs {
    let ns = NetNs::new("rt").unwrap();
    ns.sh("ip link set lo up && \
         ip link add a0 type veth peer name a1 && ip link add b0 type veth peer name b1 && \
         for l in a0 a1 b0 b1; do ip link set $l up; done && \
         ip addr add 192.168.50.1/24 dev a0 && ip addr add 192.168.51.1/24 dev b0 && \
         ip addr add fd00:50::1/64 dev a0 nodad && ip addr add fd00:51::1/64 dev b0 nodad")
        .unwrap();
    ns
}

fn index(ns: &NetNs, name: &str) -> u32 {
    ns.sh(&format!("ip -o link show dev {name} | cut -d: -f1"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn replace_list_delete_sweep_v4_and_v6() {
    require!(root; "ip");
    let ns = host_with_links();
    let a0 = index(&ns, "a0");
    let b0 = index(&ns, "b0");
    // Another program's route to a destination we also use: never touched.
    ns.sh("ip route add 10.7.0.0/26 via 192.168.50.9 proto static && \
           ip -6 route add fd00:7::/122 via fd00:50::9 proto static")
        .unwrap();
    let wanted = vec![
        route(
            "10.1.0.0/26",
            RouteKind::Unicast(vec![hop("192.168.50.2", None, false)]),
            PROTO_BGP,
        ),
        route(
            "10.2.0.0/26",
            RouteKind::Unicast(vec![hop("172.16.0.1", Some(a0), true)]),
            PROTO_BGP,
        ),
        route(
            "10.3.0.0/26",
            RouteKind::Unicast(vec![
                hop("192.168.50.2", Some(a0), false),
                hop("192.168.51.2", Some(b0), false),
            ]),
            PROTO_BGP,
        ),
        route(
            "fd00:1::/122",
            RouteKind::Unicast(vec![hop("fd00:50::2", None, false)]),
            PROTO_BGP,
        ),
        route(
            "fd00:3::/122",
            RouteKind::Unicast(vec![
                hop("fd00:50::2", Some(a0), false),
                hop("fd00:51::2", Some(b0), false),
            ]),
            PROTO_BGP,
        ),
        route(
            "10.4.0.0/26",
            RouteKind::Unicast(vec![
                hop("192.168.50.2", None, false),
                hop("192.168.51.2", None, false),
            ]),
            PROTO_BGP,
        ),
        route(
            "fd00:4::/122",
            RouteKind::Unicast(vec![
                hop("fd00:50::2", None, false),
                hop("fd00:51::2", None, false),
            ]),
            PROTO_BGP,
        ),
        route(
            "10.7.0.0/26",
            RouteKind::Unicast(vec![hop("192.168.50.3", None, false)]),
            PROTO_BGP,
        ),
    ];
    let blackholes = vec![
        route("10.9.0.0/26", RouteKind::Blackhole, PROTO_BLACKHOLE),
        route("fd00:9::/122", RouteKind::Blackhole, PROTO_BLACKHOLE),
    ];
    ns.within(|| {
        let table = RouteTable::host().unwrap();
        // 10.7.0.0/26 is the other program's: replace() would overwrite it, so it goes in
        // through apply(), which must refuse.
        for r in wanted.iter().filter(|r| r.dst != net("10.7.0.0/26")) {
            table.replace(r).unwrap();
        }
        for r in &blackholes {
            table.replace(r).unwrap();
        }
        // Replacing again is fine (idempotent).
        table.replace(&wanted[0]).unwrap();

        let mut got = table.list(PROTO_BGP).unwrap();
        got.sort_by_key(|r| r.dst);
        let dsts: Vec<String> = got.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(
            dsts,
            [
                "10.1.0.0/26",
                "10.2.0.0/26",
                "10.3.0.0/26",
                "10.4.0.0/26",
                "fd00:1::/122",
                "fd00:3::/122",
                "fd00:4::/122"
            ]
        );
        let mut sorted_wanted = wanted.clone();
        sorted_wanted.sort_by_key(|r| r.dst);
        sorted_wanted.retain(|r| r.dst != net("10.7.0.0/26"));
        for (w, g) in sorted_wanted.iter().zip(&got) {
            assert!(w.satisfied_by(g), "wanted {w:?}, read back {g:?}");
        }
        // Read back as written: onlink kept, ECMP parsed back into two next hops.
        assert_eq!(
            got[1].kind,
            RouteKind::Unicast(vec![hop("172.16.0.1", Some(a0), true)])
        );
        match (&got[2].kind, &got[5].kind) {
            (RouteKind::Unicast(v4), RouteKind::Unicast(v6)) => {
                assert_eq!(v4.len(), 2, "{v4:?}");
                assert_eq!(v6.len(), 2, "{v6:?}");
            }
            other => panic!("{other:?}"),
        }
        let mut bh = table.list(PROTO_BLACKHOLE).unwrap();
        bh.sort_by_key(|r| r.dst);
        assert_eq!(bh, blackholes);

        // apply() leaves the other program's route alone and says so.
        let stats = table.apply(&wanted, PROTO_BGP).unwrap();
        assert_eq!(stats.unchanged, 7, "{stats:?}");
        assert_eq!(stats.replaced, 0, "{stats:?}");
        assert_eq!(stats.failures.len(), 1, "{stats:?}");
        assert_eq!(stats.failures[0].action, "conflict");

        // delete() of our protocol on the other program's destination: nothing happens.
        table.delete(wanted.last().unwrap()).unwrap();
        let theirs = route("fd00:7::/122", RouteKind::Blackhole, PROTO_BGP);
        table.delete(&theirs).unwrap();
        // A route already gone is no error.
        table.delete(&wanted[0]).unwrap();
        table.delete(&wanted[0]).unwrap();

        // Sweep all but one of ours; blackholes (another protocol of ours) stay.
        let keep: HashSet<IpNet> = [net("10.3.0.0/26")].into();
        let swept = table.sweep(PROTO_BGP, &keep).unwrap();
        assert_eq!(swept.deleted, 5, "{swept:?}");
        assert!(swept.failures.is_empty(), "{swept:?}");
        let left: Vec<String> = table
            .list(PROTO_BGP)
            .unwrap()
            .iter()
            .map(|r| r.dst.to_string())
            .collect();
        assert_eq!(left, ["10.3.0.0/26"]);
        assert_eq!(table.list(PROTO_BLACKHOLE).unwrap().len(), 2);
        table.sweep(PROTO_BLACKHOLE, &HashSet::new()).unwrap();
        assert!(table.list(PROTO_BLACKHOLE).unwrap().is_empty());
    })
    .unwrap();
    // The other program's routes are still there, as it made them.
    let v4 = ns.sh("ip route show 10.7.0.0/26").unwrap();
    assert!(
        v4.contains("via 192.168.50.9") && v4.contains("proto static"),
        "{v4}"
    );
    let v6 = ns.sh("ip -6 route show fd00:7::/122").unwrap();
    assert!(
        v6.contains("via fd00:50::9") && v6.contains("proto static"),
        "{v6}"
    );
    // And the kernel agrees with what list() said about ours.
    let ecmp = ns.sh("ip route show proto 78").unwrap();
    assert!(
        ecmp.contains("nexthop via 192.168.50.2") && ecmp.contains("nexthop via 192.168.51.2"),
        "{ecmp}"
    );
}

/// `n` /32 routes from 10.100.0.0 up, via `gw`.
fn many(n: u32, gw: Ipv4Addr) -> Vec<RouteSpec> {
    let base = u32::from(Ipv4Addr::new(10, 100, 0, 0));
    (0..n)
        .map(|i| RouteSpec {
            dst: IpNet::new(IpAddr::V4(Ipv4Addr::from(base + i)), 32).unwrap(),
            kind: RouteKind::Unicast(vec![NextHop {
                gateway: IpAddr::V4(gw),
                oif: None,
                onlink: false,
            }]),
            protocol: PROTO_BGP,
            table: TABLE_MAIN,
            metric: None,
        })
        .collect()
}

#[test]
fn apply_ten_thousand_routes_then_only_the_difference() {
    require!(root; "ip");
    let ns = host_with_links();
    let gw = Ipv4Addr::new(192, 168, 50, 2);
    let other_gw = Ipv4Addr::new(192, 168, 50, 3);
    ns.within(|| {
        let table = RouteTable::host().unwrap();
        let first = many(10_000, gw);
        let t = Instant::now();
        let stats = table.apply(&first, PROTO_BGP).unwrap();
        let took = t.elapsed();
        eprintln!("apply of 10,000 new routes: {took:?} ({stats:?})");
        assert_eq!(stats.replaced, 10_000);
        assert_eq!(stats.messages, 10_000);
        assert!(stats.failures.is_empty() && !stats.retried, "{stats:?}");
        assert_eq!(table.list(PROTO_BGP).unwrap().len(), 10_000);

        // Nothing changed: one dump, no message.
        let t = Instant::now();
        let stats = table.apply(&first, PROTO_BGP).unwrap();
        eprintln!("apply of the same 10,000: {:?}", t.elapsed());
        assert_eq!((stats.messages, stats.unchanged), (0, 10_000), "{stats:?}");

        // 1000 gone, 1000 new, 500 with another next hop: 2500 messages.
        let mut changed = many(11_000, gw).split_off(1_000);
        for r in changed.iter_mut().take(500) {
            r.kind = RouteKind::Unicast(vec![NextHop {
                gateway: IpAddr::V4(other_gw),
                oif: None,
                onlink: false,
            }]);
        }
        let t = Instant::now();
        let stats = table.apply(&changed, PROTO_BGP).unwrap();
        eprintln!(
            "apply of a changed set (2,500 differences): {:?} ({stats:?})",
            t.elapsed()
        );
        assert_eq!(stats.messages, 2_500, "{stats:?}");
        assert_eq!(
            (stats.replaced, stats.deleted, stats.unchanged),
            (1_500, 1_000, 8_500)
        );
        assert!(stats.failures.is_empty(), "{stats:?}");
        let now = table.list(PROTO_BGP).unwrap();
        assert_eq!(now.len(), 10_000);
        let moved = now
            .iter()
            .filter(|r| {
                matches!(&r.kind, RouteKind::Unicast(h) if h[0].gateway == IpAddr::V4(other_gw))
            })
            .count();
        assert_eq!(moved, 500);

        // Converging to nothing removes them all.
        let stats = table.apply(&[], PROTO_BGP).unwrap();
        assert_eq!(stats.deleted, 10_000);
        assert!(table.list(PROTO_BGP).unwrap().is_empty());
    })
    .unwrap();
    assert_eq!(ns.sh("ip route show proto 78").unwrap().trim(), "");
}

#[test]
fn apply_reports_every_refused_route_after_one_retry() {
    require!(root; "ip");
    let ns = host_with_links();
    ns.within(|| {
        let table = RouteTable::host().unwrap();
        let mut desired = many(100, Ipv4Addr::new(192, 168, 50, 2));
        // Gateways on no connected network (and not onlink): the kernel refuses both.
        for (r, gw) in desired.iter_mut().zip(["203.0.113.1", "203.0.113.2"]) {
            r.kind = RouteKind::Unicast(vec![hop(gw, None, false)]);
        }
        let stats = table.apply(&desired, PROTO_BGP).unwrap();
        assert!(stats.retried, "{stats:?}");
        assert_eq!(stats.replaced, 98, "{stats:?}");
        // Sent: 100 at first, then only the 2 still missing.
        assert_eq!(stats.messages, 102, "{stats:?}");
        let refused: Vec<String> = stats.failures.iter().map(|f| f.dst.to_string()).collect();
        assert_eq!(refused, ["10.100.0.0/32", "10.100.0.1/32"], "{stats:?}");
        assert!(stats.failures.iter().all(|f| f.action == "replace"));
        assert!(
            stats.failures[0].reason.contains("unreachable"),
            "{stats:?}"
        );
        assert_eq!(table.list(PROTO_BGP).unwrap().len(), 98);
    })
    .unwrap();
}

/// A pass planned on a record older than the table (the agent keeps one between quick
/// convergences) never overwrites a route another program added meanwhile: new routes go
/// in with `NLM_F_EXCL`, the refusal makes it read the kernel again, and the route is then
/// reported as another protocol's.
#[test]
fn a_stale_record_never_overwrites_another_programs_route() {
    require!(root; "ip");
    let ns = host_with_links();
    ns.within(|| {
        let table = RouteTable::host().unwrap();
        let mut record = Some(table.dump_all().unwrap());
        ns.sh("ip route add 10.100.0.5/32 via 192.168.50.9 proto 99 && \
               ip -6 route add fd00:100::5/128 via fd00:50::9 proto 99")
            .unwrap();
        let mut desired = many(10, Ipv4Addr::new(192, 168, 50, 2));
        desired.push(route(
            "fd00:100::5/128",
            RouteKind::Unicast(vec![hop("fd00:50::2", None, false)]),
            PROTO_BGP,
        ));
        let stats = table
            .apply_reusing(&desired, PROTO_BGP, &mut record)
            .unwrap();
        assert!(stats.retried, "{stats:?}");
        assert_eq!(stats.replaced, 9, "{stats:?}");
        let conflicts: Vec<String> = stats
            .failures
            .iter()
            .filter(|f| f.action == "conflict")
            .map(|f| f.dst.to_string())
            .collect();
        assert_eq!(conflicts, ["10.100.0.5/32", "fd00:100::5/128"], "{stats:?}");
        let theirs = ns
            .sh("ip route show proto 99; ip -6 route show proto 99")
            .unwrap();
        assert_eq!(
            theirs.lines().filter(|l| l.contains("100")).count(),
            2,
            "{theirs}"
        );
        assert!(
            theirs.contains("192.168.50.9") && theirs.contains("fd00:50::9"),
            "{theirs}"
        );
        // The retry read the kernel: the record it leaves knows their route.
        let record = record.unwrap();
        assert!(
            record
                .iter()
                .any(|r| r.protocol == 99 && r.dst == net("10.100.0.5/32"))
        );
    })
    .unwrap();
}
