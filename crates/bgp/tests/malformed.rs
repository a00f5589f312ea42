//! Malformed messages from a hand-driven peer: the right NOTIFICATION (RFC 4271 §6), the
//! session comes back afterwards, the speaker keeps running; RFC 7606 treat-as-withdraw
//! keeps the session; the hold timer fires on a silent peer.

mod common;

use calico_bgp::{PeerConfig, Speaker};
use common::*;

async fn speaker_with_raw_peer() -> (Speaker, Table) {
    let (s, t) = start(config(v4(1))).await;
    let mut p = PeerConfig::new("Node_10_77_0_2", v4(2), AS);
    p.passive = true;
    s.set_peers(vec![p]);
    (s, t)
}

#[test]
fn header_open_update_and_fsm_errors_get_their_notifications() {
    in_netns(|| async {
        let (s, _t) = speaker_with_raw_peer().await;
        let (me, sp) = (v4(2), v4(1));

        // Header errors (1/x): bad type, bad marker, bad length.
        let mut p = RawPeer::established(me, sp, 240).await;
        p.send(&message(9, &[])).await;
        assert_eq!(p.notification().await, (1, 3));
        p.closed().await;

        let mut p = RawPeer::established(me, sp, 240).await;
        let mut bad_marker = message(4, &[]);
        bad_marker[3] = 0;
        p.send(&bad_marker).await;
        assert_eq!(p.notification().await, (1, 1));

        let mut p = RawPeer::established(me, sp, 240).await;
        let mut bad_len = message(4, &[]);
        bad_len[17] = 5;
        p.send(&bad_len).await;
        assert_eq!(p.notification().await, (1, 2));

        // OPEN errors (2/x): version, peer AS, hold time.
        let mut p = RawPeer::connect(me, sp).await;
        let mut v3 = RawPeer::open(240, AS).to_vec();
        v3[19] = 3;
        p.send(&v3).await;
        assert_eq!(p.notification().await, (2, 1));

        let mut p = RawPeer::connect(me, sp).await;
        p.send(&RawPeer::open(240, 65000)).await;
        assert_eq!(p.notification().await, (2, 2));

        let mut p = RawPeer::connect(me, sp).await;
        p.send(&RawPeer::open(2, AS)).await;
        assert_eq!(p.notification().await, (2, 6));

        // UPDATE errors (3/x): an NLRI prefix longer than 32 bits.
        let mut p = RawPeer::established(me, sp, 240).await;
        p.send(&update_v4([10, 65, 9, 0], 33, [10, 77, 0, 2], 0))
            .await;
        assert_eq!(p.notification().await, (3, 10));

        // FSM error (5/x): an OPEN in Established.
        let mut p = RawPeer::established(me, sp, 240).await;
        p.send(&RawPeer::open(240, AS)).await;
        assert_eq!(p.notification().await, (5, 3));

        // And the session comes back up afterwards.
        let _p = RawPeer::established(me, sp, 240).await;
        wait_status(&s, "session up again", |st| established(st, me)).await;
        s.shutdown(false).await;
    });
}

#[test]
fn malformed_attribute_is_treated_as_withdraw_and_the_session_stays() {
    in_netns(|| async {
        let (s, mut t) = speaker_with_raw_peer().await;
        let mut p = RawPeer::established(v4(2), v4(1), 240).await;
        p.send(&update_v4([10, 65, 9, 0], 26, [10, 77, 0, 2], 0))
            .await;
        t.wait("route learned", |t| t.has("10.65.9.0/26", &[v4(2)]))
            .await;
        // ORIGIN 5 is invalid: RFC 7606 §7.1 treat-as-withdraw.
        p.send(&update_v4([10, 65, 9, 0], 26, [10, 77, 0, 2], 5))
            .await;
        t.wait("route withdrawn", |t| t.routes.is_empty()).await;
        p.send(&keepalive()).await;
        let st = s.status().await;
        assert!(established(&st, v4(2)), "no reset: {st:?}");
        p.send(&update_v4([10, 65, 9, 0], 26, [10, 77, 0, 2], 0))
            .await;
        t.wait("route back", |t| t.has("10.65.9.0/26", &[v4(2)]))
            .await;
        s.shutdown(false).await;
    });
}

#[test]
fn silent_peer_gets_hold_timer_expired() {
    in_netns(|| async {
        let (s, _t) = speaker_with_raw_peer().await;
        let mut p = RawPeer::established(v4(2), v4(1), 3).await;
        assert_eq!(p.notification().await, (4, 0));
        wait_status(&s, "hold timer error recorded", |st| {
            st[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("hold timer"))
        })
        .await;
        s.shutdown(false).await;
    });
}

#[test]
fn unknown_peer_is_refused() {
    in_netns(|| async {
        let (s, _t) = speaker_with_raw_peer().await;
        let mut p = RawPeer::connect(v4(7), v4(1)).await;
        p.send(&RawPeer::open(240, AS)).await;
        // Closed without an OPEN from us.
        assert!(p.recv().await.is_none());
        s.shutdown(false).await;
    });
}

#[test]
fn cease_on_deconfiguration_and_on_shutdown() {
    in_netns(|| async {
        let (s, _t) = speaker_with_raw_peer().await;
        let mut p = RawPeer::established(v4(2), v4(1), 240).await;
        s.set_peers(vec![]);
        assert_eq!(p.notification().await, (6, 3), "Peer De-configured");
        let (s, _t) = {
            s.shutdown(false).await;
            speaker_with_raw_peer().await
        };
        let mut p = RawPeer::established(v4(2), v4(1), 240).await;
        s.shutdown(false).await;
        assert_eq!(p.notification().await, (6, 2), "Administrative Shutdown");
        // A graceful-restart shutdown closes without NOTIFICATION.
        let (s, _t) = speaker_with_raw_peer().await;
        let mut p = RawPeer::established(v4(2), v4(1), 240).await;
        s.shutdown(true).await;
        loop {
            match p.recv().await {
                None => break,
                Some(rustbgpd_wire::Message::Notification(n)) => panic!("unexpected {n:?}"),
                Some(_) => {}
            }
        }
    });
}

/// Mutated messages over a real session: after each one the speaker either still answers
/// (a ROUTE-REFRESH gets its End-of-RIB) or has sent a NOTIFICATION and closed; it never
/// hangs or dies, and a clean session comes up at the end.
#[test]
fn mutated_messages_over_a_session_never_break_the_speaker() {
    use calico_bgp::wire::{self, Family, PathAttrs};
    use rustbgpd_wire::Message;
    use rustbgpd_wire::attribute::AsPathSegment;

    in_netns(|| async {
        let (s, _t) = speaker_with_raw_peer().await;
        let attrs = PathAttrs {
            origin: 0,
            as_path: vec![AsPathSegment::AsSequence(vec![65001])],
            next_hop: v4(2),
            med: Some(1),
            local_pref: Some(100),
            communities: vec![7],
            large_communities: vec![[1, 2, 3]],
            originator_id: None,
            cluster_list: vec![],
            other: vec![],
        };
        let mut attrs6 = attrs.clone();
        attrs6.next_hop = v6(2);
        let mut seeds = wire::encode_announce(
            Family::Ipv4,
            &[net("10.65.0.0/26"), net("10.66.0.0/16")],
            &attrs,
            true,
        );
        seeds.extend(wire::encode_announce(
            Family::Ipv6,
            &[net("fd00:65::/122")],
            &attrs6,
            true,
        ));
        seeds.extend(wire::encode_withdraw(
            Family::Ipv4,
            &[net("10.65.0.0/26")],
            true,
        ));
        seeds.extend(wire::end_of_rib(Family::Ipv6));
        let refresh = wire::encode(&wire::route_refresh(Family::Ipv4)).expect("encodes");

        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut p = RawPeer::established(v4(2), v4(1), 240).await;
        let (mut resets, mut survived) = (0, 0);
        for _ in 0..300 {
            let mut m = seeds[(next() % seeds.len() as u64) as usize].to_vec();
            for _ in 0..(1 + next() % 4) {
                let i = (next() % m.len() as u64) as usize;
                match next() % 3 {
                    0 => m[i] ^= (next() % 255 + 1) as u8,
                    1 => m.truncate(i.max(19)),
                    _ => m.insert(i.max(19), next() as u8),
                }
            }
            // Keep the framing (so a following message is read as one) unless the mutation
            // hit the header itself.
            let len = m.len() as u16;
            m[16..18].copy_from_slice(&len.to_be_bytes());
            // A mutated ROUTE-REFRESH would be answered with an End-of-RIB of its own, which
            // this loop takes for the answer to its refresh: keep it an UPDATE.
            if m[18] == 5 {
                m[18] = 2;
            }
            p.send(&m).await;
            p.send(&refresh).await;
            let alive = loop {
                match p.recv().await {
                    Some(Message::Update(u))
                        if u.nlri.is_empty()
                            && u.path_attributes.is_empty()
                            && u.withdrawn_routes.is_empty() =>
                    {
                        break true;
                    }
                    Some(Message::Notification(_)) | None => break false,
                    Some(_) => {}
                }
            };
            if alive {
                survived += 1;
            } else {
                resets += 1;
                p = RawPeer::established(v4(2), v4(1), 240).await;
            }
        }
        eprintln!("{survived} mutated messages kept the session, {resets} reset it");
        assert!(resets > 0 && survived > 0);
        // The speaker still works: a fresh session comes up.
        drop(p);
        wait_status(&s, "old session gone", |st| !established(st, v4(2))).await;
        let _p = RawPeer::established(v4(2), v4(1), 240).await;
        wait_status(&s, "session up at the end", |st| established(st, v4(2))).await;
        s.shutdown(false).await;
    });
}
