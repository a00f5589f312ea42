//! Two and three speakers on loopback: sessions, routes both ways, withdrawal, ECMP from two
//! origins, route refresh, reconfiguration, unknown peers refused.

mod common;

use calico_bgp::{Route, SessionState};
use common::*;

#[test]
fn routes_flow_both_ways_and_are_withdrawn() {
    in_netns(|| async {
        let (a_ip, b_ip) = (v4(1), v4(2));
        let (a, mut at) = start(config(a_ip)).await;
        let (b, mut bt) = start(config(b_ip)).await;
        a.set_local_routes(vec![Route::new(net("10.65.1.0/26"))]);
        b.set_local_routes(vec![
            Route::new(net("10.65.2.0/26")),
            Route::new(net("10.65.2.64/26")),
        ]);
        a.set_peers(vec![peer(a_ip, b_ip)]);
        b.set_peers(vec![peer(b_ip, a_ip)]);

        at.wait("A learns B's blocks", |t| {
            t.has("10.65.2.0/26", &[b_ip]) && t.has("10.65.2.64/26", &[b_ip])
        })
        .await;
        bt.wait("B learns A's block", |t| t.has("10.65.1.0/26", &[a_ip]))
            .await;
        // Both sent End-of-RIB: both are synced.
        at.wait("A synced", |t| t.synced).await;
        bt.wait("B synced", |t| t.synced).await;
        let st = wait_status(&a, "A's counters", |st| {
            established(st, b_ip) && st[0].routes_received == 2
        })
        .await;
        assert_eq!(st[0].routes_sent, 1);
        assert_eq!(
            st[0].name,
            format!("Mesh_{}", b_ip.to_string().replace('.', "_"))
        );
        assert!(!st[0].passive);
        let st = b.status().await;
        assert!(
            st[0].passive,
            "the higher address only accepts (Calico's unidirectional mesh)"
        );

        // Only the difference is sent: one withdrawal.
        b.set_local_routes(vec![Route::new(net("10.65.2.0/26"))]);
        at.wait("A drops the withdrawn block", |t| {
            !t.routes.contains_key(&net("10.65.2.64/26"))
        })
        .await;
        assert!(at.has("10.65.2.0/26", &[b_ip]));

        // Route refresh: A asks, B resends its Adj-RIB-Out (and End-of-RIB).
        let before = b.status().await[0].updates_out;
        a.request_refresh(&peer(a_ip, b_ip).name);
        wait_status(&b, "B answers the refresh", |st| st[0].updates_out > before).await;
        at.drain();
        assert!(at.has("10.65.2.0/26", &[b_ip]));

        // Removing the peer: Cease, the routes go on both sides.
        a.set_peers(vec![]);
        at.wait("A forgets B's routes", |t| t.routes.is_empty())
            .await;
        bt.wait("B forgets A's routes", |t| t.routes.is_empty())
            .await;
        wait_status(&b, "B sees the Cease", |st| {
            st[0].state != SessionState::Established
        })
        .await;
        a.shutdown(false).await;
        b.shutdown(false).await;
    });
}

#[test]
fn equal_paths_from_two_origins_are_merged() {
    in_netns(|| async {
        let (a_ip, b_ip, c_ip) = (v4(1), v4(2), v4(3));
        let (a, mut at) = start(config(a_ip)).await;
        let (b, _bt) = start(config(b_ip)).await;
        let (c, _ct) = start(config(c_ip)).await;
        a.set_peers(vec![peer(a_ip, b_ip), peer(a_ip, c_ip)]);
        b.set_peers(vec![peer(b_ip, a_ip)]);
        c.set_peers(vec![peer(c_ip, a_ip)]);
        b.set_local_routes(vec![Route::new(net("10.96.0.0/12"))]);
        c.set_local_routes(vec![Route::new(net("10.96.0.0/12"))]);
        at.wait("ECMP over B and C", |t| {
            t.has("10.96.0.0/12", &[b_ip, c_ip])
        })
        .await;
        c.set_local_routes(vec![]);
        at.wait("only B left", |t| t.has("10.96.0.0/12", &[b_ip]))
            .await;
        // A route we originate ourselves is never reported as learned.
        a.set_local_routes(vec![Route::new(net("10.96.0.0/12"))]);
        at.wait("own route hides the learned one", |t| {
            !t.routes.contains_key(&net("10.96.0.0/12"))
        })
        .await;
        for s in [a, b, c] {
            s.shutdown(false).await;
        }
    });
}

#[test]
fn changed_peer_resets_alone() {
    in_netns(|| async {
        let (a_ip, b_ip, c_ip) = (v4(1), v4(2), v4(3));
        let (a, _at) = start(config(a_ip)).await;
        let (b, _bt) = start(config(b_ip)).await;
        let (c, _ct) = start(config(c_ip)).await;
        a.set_peers(vec![peer(a_ip, b_ip), peer(a_ip, c_ip)]);
        b.set_peers(vec![peer(b_ip, a_ip)]);
        c.set_peers(vec![peer(c_ip, a_ip)]);
        wait_status(&a, "both up", |st| {
            established(st, b_ip) && established(st, c_ip)
        })
        .await;
        let since =
            |st: &[calico_bgp::PeerStatus], ip| st.iter().find(|p| p.address == ip).unwrap().since;
        let st = a.status().await;
        let (b_since, c_since) = (since(&st, b_ip), since(&st, c_ip));
        let mut changed = peer(a_ip, b_ip);
        changed.hold_time = std::time::Duration::from_secs(90);
        a.set_peers(vec![changed, peer(a_ip, c_ip)]);
        wait_status(&a, "B reset and back", |st| {
            established(st, b_ip) && since(st, b_ip) > b_since
        })
        .await;
        let st = a.status().await;
        assert_eq!(
            st.iter().find(|p| p.address == c_ip).unwrap().since,
            c_since,
            "C untouched"
        );

        for s in [a, b, c] {
            s.shutdown(false).await;
        }
    });
}

#[test]
fn ipv6_session_carries_ipv6_routes_in_mp_reach() {
    in_netns(|| async {
        let (a_ip, b_ip) = (v6(1), v6(2));
        let (a, mut at) = start(config(a_ip)).await;
        let (b, mut bt) = start(config(b_ip)).await;
        a.set_local_routes(vec![Route::new(net("fd00:65:1::/122"))]);
        b.set_local_routes(vec![Route::new(net("fd00:65:2::/122"))]);
        a.set_peers(vec![peer(a_ip, b_ip)]);
        b.set_peers(vec![peer(b_ip, a_ip)]);
        at.wait("A learns B's IPv6 block via B's IPv6 address", |t| {
            t.has("fd00:65:2::/122", &[b_ip])
        })
        .await;
        bt.wait("B learns A's IPv6 block", |t| {
            t.has("fd00:65:1::/122", &[a_ip])
        })
        .await;
        b.set_local_routes(vec![]);
        at.wait("MP_UNREACH withdraws it", |t| t.routes.is_empty())
            .await;
        a.shutdown(false).await;
        b.shutdown(false).await;
    });
}

#[test]
fn both_sides_active_resolve_the_collision_to_one_session() {
    in_netns(|| async {
        let (a_ip, b_ip) = (v4(1), v4(2));
        let (a, mut at) = start(config(a_ip)).await;
        let (b, mut bt) = start(config(b_ip)).await;
        let (mut pa, mut pb) = (peer(a_ip, b_ip), peer(b_ip, a_ip));
        pb.passive = false;
        // Same delay on both sides: both connect at about the same time.
        pa.connect_delay = std::time::Duration::from_millis(10);
        pb.connect_delay = std::time::Duration::from_millis(10);
        a.set_local_routes(vec![Route::new(net("10.65.1.0/26"))]);
        b.set_local_routes(vec![Route::new(net("10.65.2.0/26"))]);
        a.set_peers(vec![pa]);
        b.set_peers(vec![pb]);
        at.wait("A learns B's block", |t| t.has("10.65.2.0/26", &[b_ip]))
            .await;
        bt.wait("B learns A's block", |t| t.has("10.65.1.0/26", &[a_ip]))
            .await;
        wait_status(&a, "A established", |st| established(st, b_ip)).await;
        wait_status(&b, "B established", |st| established(st, a_ip)).await;
        a.shutdown(false).await;
        b.shutdown(false).await;
    });
}

#[test]
fn dropping_a_speaker_closes_its_sessions() {
    in_netns(|| async {
        let (a_ip, b_ip) = (v4(1), v4(2));
        let (a, mut at) = start(config(a_ip)).await;
        let (b, _bt) = start(config(b_ip)).await;
        b.set_local_routes(vec![Route::new(net("10.65.2.0/26"))]);
        a.set_peers(vec![peer(a_ip, b_ip)]);
        b.set_peers(vec![peer(b_ip, a_ip)]);
        at.wait("A learns B's block", |t| t.routes.len() == 1).await;
        drop(b);
        at.wait("B's routes go with it", |t| t.routes.is_empty())
            .await;
        a.shutdown(false).await;
    });
}

#[test]
fn thousands_of_routes_converge_and_withdraw() {
    in_netns(|| async {
        let (a_ip, b_ip) = (v4(1), v4(2));
        let (a, mut at) = start(config(a_ip)).await;
        let (b, _bt) = start(config(b_ip)).await;
        a.set_peers(vec![peer(a_ip, b_ip)]);
        b.set_peers(vec![peer(b_ip, a_ip)]);
        // 5000 /32s (many UPDATEs, each under 4096 bytes) with a community each.
        let routes: Vec<Route> = (0..5000u32)
            .map(|i| {
                let mut r = Route::new(ipnet::IpNet::from(std::net::IpAddr::V4(
                    std::net::Ipv4Addr::from(0x0A50_0000 + i),
                )));
                r.communities = vec![0xFDE8_0000 + (i % 3)];
                r
            })
            .collect();
        let started = std::time::Instant::now();
        b.set_local_routes(routes);
        at.wait("5000 routes", |t| t.routes.len() == 5000).await;
        let took = started.elapsed();
        eprintln!("5000 routes converged in {took:?}");
        b.set_local_routes(vec![]);
        at.wait("all withdrawn", |t| t.routes.is_empty()).await;
        a.shutdown(false).await;
        b.shutdown(false).await;
    });
}

#[test]
fn connect_errors_show_in_the_status_as_bird_does() {
    in_netns(|| async {
        let (a, _at) = start(config(v4(1))).await;
        // Nothing listens on v4(2).
        a.set_peers(vec![peer(v4(1), v4(2))]);
        let st = wait_status(&a, "connect error", |st| st[0].last_error.is_some()).await;
        assert_eq!(
            st[0].last_error.as_deref(),
            Some("Socket: Connection refused (os error 111)")
        );
        assert_eq!(st[0].state, SessionState::Connect);
        a.shutdown(false).await;
    });
}
