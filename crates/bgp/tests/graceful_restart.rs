//! Graceful restart (RFC 4724): a speaker shut down with `graceful_restart = true` keeps its
//! routes at its peer (stale) until it is back and sends End-of-RIB; routes it no longer
//! has are then withdrawn; stale routes also go when the restart time runs out; without
//! graceful restart they go at once.

mod common;

use std::time::Duration;

use calico_bgp::{RibEvent, Route, SessionState};
use common::*;

fn gr(mut c: calico_bgp::SpeakerConfig, secs: u64) -> calico_bgp::SpeakerConfig {
    c.graceful_restart = Some(Duration::from_secs(secs));
    c
}

#[test]
fn stale_routes_are_kept_until_end_of_rib() {
    in_netns(|| async {
        let (a_ip, b_ip) = (v4(1), v4(2));
        let (a, mut at) = start(gr(config(a_ip), 120)).await;
        let (b, _bt) = start(gr(config(b_ip), 120)).await;
        a.set_local_routes(vec![Route::new(net("10.65.1.0/26"))]);
        b.set_local_routes(vec![
            Route::new(net("10.65.2.0/26")),
            Route::new(net("10.65.2.64/26")),
        ]);
        a.set_peers(vec![peer(a_ip, b_ip)]);
        b.set_peers(vec![peer(b_ip, a_ip)]);
        at.wait("A learns B's blocks", |t| t.routes.len() == 2)
            .await;

        b.shutdown(true).await;
        wait_status(&a, "A sees B gone", |st| {
            st[0].state != SessionState::Established
        })
        .await;
        at.drain();
        assert_eq!(at.routes.len(), 2, "stale routes kept: {:?}", at.log);
        assert_eq!(a.status().await[0].routes_received, 2);

        // B restarts (R bit), now with one block only.
        let mut cfg = gr(config(b_ip), 120);
        cfg.restarting = true;
        let (b, mut bt) = start(cfg).await;
        b.set_local_routes(vec![Route::new(net("10.65.2.0/26"))]);
        b.set_peers(vec![peer(b_ip, a_ip)]);
        at.wait(
            "the block B dropped is withdrawn after its End-of-RIB",
            |t| !t.routes.contains_key(&net("10.65.2.64/26")),
        )
        .await;
        assert!(at.has("10.65.2.0/26", &[b_ip]));
        assert!(
            !at.log.iter().any(|e| *e
                == RibEvent::Withdrawn {
                    prefix: net("10.65.2.0/26")
                }),
            "the kept block never flapped: {:?}",
            at.log
        );
        // The restarted speaker waited for A's End-of-RIB, then learned A's block.
        bt.wait("B synced with A's routes", |t| {
            t.synced && t.has("10.65.1.0/26", &[a_ip])
        })
        .await;
        a.shutdown(false).await;
        b.shutdown(false).await;
    });
}

#[test]
fn stale_routes_go_when_the_restart_time_runs_out() {
    in_netns(|| async {
        let (a_ip, b_ip) = (v4(1), v4(2));
        let (a, mut at) = start(gr(config(a_ip), 120)).await;
        // B advertises a restart time of 1 s.
        let (b, _bt) = start(gr(config(b_ip), 1)).await;
        b.set_local_routes(vec![Route::new(net("10.65.2.0/26"))]);
        a.set_peers(vec![peer(a_ip, b_ip)]);
        b.set_peers(vec![peer(b_ip, a_ip)]);
        at.wait("A learns B's block", |t| t.routes.len() == 1).await;
        b.shutdown(true).await;
        wait_status(&a, "A sees B gone", |st| {
            st[0].state != SessionState::Established
        })
        .await;
        at.drain();
        assert_eq!(at.routes.len(), 1, "kept for the restart time");
        at.wait("stale route swept after 1 s", |t| t.routes.is_empty())
            .await;
        a.shutdown(false).await;
    });
}

#[test]
fn without_graceful_restart_routes_go_at_once() {
    in_netns(|| async {
        let (a_ip, b_ip) = (v4(1), v4(2));
        let (a, mut at) = start(config(a_ip)).await;
        let (b, _bt) = start(config(b_ip)).await;
        b.set_local_routes(vec![Route::new(net("10.65.2.0/26"))]);
        a.set_peers(vec![peer(a_ip, b_ip)]);
        b.set_peers(vec![peer(b_ip, a_ip)]);
        at.wait("A learns B's block", |t| t.routes.len() == 1).await;
        // Even a "graceful" shutdown: GR was not negotiated, so A withdraws at once.
        b.shutdown(true).await;
        at.wait("withdrawn at once", |t| t.routes.is_empty()).await;
        a.shutdown(false).await;
    });
}

/// The R bit is set while the restarting speaker waits for its peers' End-of-RIB and is
/// cleared on later sessions; announcements are held until then.
#[test]
fn restart_bit_is_cleared_after_the_initial_sync() {
    use calico_bgp::wire::{Family, end_of_rib};
    use rustbgpd_wire::{Capability, Message};

    async fn open_r_bit(p: &mut RawPeer) -> bool {
        match p.recv().await {
            Some(Message::Open(o)) => o.capabilities.iter().any(|c| {
                matches!(
                    c,
                    Capability::GracefulRestart {
                        restart_state: true,
                        ..
                    }
                )
            }),
            other => panic!("expected OPEN, got {other:?}"),
        }
    }

    in_netns(|| async {
        let mut cfg = gr(config(v4(1)), 120);
        cfg.restarting = true;
        let (s, mut t) = start(cfg).await;
        s.set_local_routes(vec![Route::new(net("10.65.1.0/26"))]);
        let mut p = calico_bgp::PeerConfig::new("Node_10_77_0_2", v4(2), AS);
        p.passive = true;
        s.set_peers(vec![p]);

        let mut raw = RawPeer::connect(v4(2), v4(1)).await;
        raw.send(&RawPeer::open(240, AS)).await;
        assert!(open_r_bit(&mut raw).await, "R bit while restarting");
        raw.send(&keepalive()).await;
        assert_eq!(raw.recv().await, Some(Message::Keepalive));
        for f in [Family::Ipv4, Family::Ipv6] {
            raw.send(&end_of_rib(f).expect("EoR")).await;
        }
        t.wait("synced after the peer's End-of-RIB", |t| t.synced)
            .await;
        // Held announcements go out now, followed by our End-of-RIB.
        let mut announced = false;
        loop {
            match raw.recv().await {
                Some(Message::Update(u)) if u.nlri.is_empty() && u.path_attributes.is_empty() => {
                    break;
                }
                Some(Message::Update(u)) => announced |= !u.nlri.is_empty(),
                Some(_) => {}
                None => panic!("closed"),
            }
        }
        assert!(announced, "our route before our End-of-RIB");
        drop(raw);
        wait_status(&s, "session down", |st| {
            st[0].state != calico_bgp::SessionState::Established
        })
        .await;
        let mut raw = RawPeer::connect(v4(2), v4(1)).await;
        raw.send(&RawPeer::open(240, AS)).await;
        assert!(
            !open_r_bit(&mut raw).await,
            "no R bit after the restart is over"
        );
        s.shutdown(false).await;
    });
}

/// A restarting speaker whose peer never comes back stops waiting after the deferral
/// timer (its restart time): Synced, and its held routes go to the peers that are up.
#[test]
fn deferral_timer_ends_the_wait_for_absent_peers() {
    in_netns(|| async {
        let (a_ip, b_ip) = (v4(1), v4(2));
        let mut cfg = gr(config(a_ip), 1);
        cfg.restarting = true;
        let (a, mut at) = start(cfg).await;
        a.set_local_routes(vec![Route::new(net("10.65.1.0/26"))]);
        // B is up; v4(3) never answers.
        let (b, mut bt) = start(gr(config(b_ip), 120)).await;
        a.set_peers(vec![peer(a_ip, b_ip), peer(a_ip, v4(3))]);
        b.set_peers(vec![peer(b_ip, a_ip)]);
        at.wait("Synced after the deferral timer", |t| t.synced)
            .await;
        bt.wait("B gets A's held route", |t| t.has("10.65.1.0/26", &[a_ip]))
            .await;
        a.shutdown(false).await;
        b.shutdown(false).await;
    });
}

/// A peer that restarts and reconnects before we noticed its old connection died: with
/// graceful restart the new connection replaces the old one (RFC 4724 §4.2), the routes stay
/// (stale) meanwhile; without, the new one is refused (Cease, connection collision).
#[test]
fn reconnect_while_established_replaces_the_session_only_with_graceful_restart() {
    fn open(gr: bool) -> bytes::Bytes {
        calico_bgp::wire::encode(&calico_bgp::wire::build_open(
            &calico_bgp::wire::OpenParams {
                local_as: AS,
                router_id: RAW_ID,
                hold_time: 240,
                gr_time: gr.then_some(120),
                restarting: gr,
            },
        ))
        .expect("encodes")
    }
    in_netns(|| async {
        let (s, mut t) = start(gr(config(v4(1)), 120)).await;
        let mut p = calico_bgp::PeerConfig::new("Node_10_77_0_2", v4(2), AS);
        p.passive = true;
        s.set_peers(vec![p]);

        let mut first = RawPeer::established_with(v4(2), v4(1), &open(true)).await;
        first
            .send(&update_v4([10, 65, 9, 0], 26, [10, 77, 0, 2], 0))
            .await;
        t.wait("route learned", |t| t.has("10.65.9.0/26", &[v4(2)]))
            .await;
        let mut second = RawPeer::established_with(v4(2), v4(1), &open(true)).await;
        first.closed().await;
        t.drain();
        assert!(
            t.has("10.65.9.0/26", &[v4(2)]),
            "kept across the restart: {:?}",
            t.log
        );
        for f in [
            calico_bgp::wire::Family::Ipv4,
            calico_bgp::wire::Family::Ipv6,
        ] {
            second
                .send(&calico_bgp::wire::end_of_rib(f).expect("EoR"))
                .await;
        }
        t.wait("swept at End-of-RIB", |t| t.routes.is_empty()).await;

        // Without graceful restart the second connection is refused.
        drop(second);
        wait_status(&s, "down", |st| st[0].state != SessionState::Established).await;
        let _first = RawPeer::established_with(v4(2), v4(1), &open(false)).await;
        let mut second = RawPeer::connect(v4(2), v4(1)).await;
        second.send(&open(false)).await;
        assert_eq!(second.notification().await, (6, 7));
        s.shutdown(false).await;
    });
}
