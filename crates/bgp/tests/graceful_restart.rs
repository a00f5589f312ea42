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
