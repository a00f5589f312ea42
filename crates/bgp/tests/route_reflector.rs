//! Three speakers and a hand-driven client around a route reflector (RFC 4456): clients
//! learn each other's routes with ORIGINATOR_ID and CLUSTER_LIST set and the next hop
//! unchanged; a route carrying the reflector's cluster id is dropped (loop prevention).

mod common;

use std::net::{IpAddr, Ipv4Addr};

use calico_bgp::{ExportFilter, Route};
use common::*;
use rustbgpd_wire::{Message, PathAttribute};

#[test]
fn clients_learn_each_other_through_the_reflector() {
    in_netns(|| async {
        let (rr_ip, c1_ip, c2_ip, raw_ip, nc_ip) = (v4(1), v4(2), v4(3), v4(4), v4(5));
        let cluster = Ipv4Addr::new(10, 77, 0, 1);
        let mut rr_cfg = config(rr_ip);
        rr_cfg.cluster_id = Some(cluster);
        let (rr, _rrt) = start(rr_cfg).await;
        rr.set_export_filter(ExportFilter {
            accept: vec![net("10.65.0.0/16")],
            reject: vec![],
        });
        let client = |ip| {
            let mut p = peer(rr_ip, ip);
            p.rr_client = true;
            p
        };
        let mut raw = client(raw_ip);
        raw.passive = true;
        rr.set_peers(vec![client(c1_ip), client(c2_ip), raw, peer(rr_ip, nc_ip)]);

        let (c1, mut c1t) = start(config(c1_ip)).await;
        let (c2, mut c2t) = start(config(c2_ip)).await;
        let (nc, mut nct) = start(config(nc_ip)).await;
        c1.set_peers(vec![peer(c1_ip, rr_ip)]);
        c2.set_peers(vec![peer(c2_ip, rr_ip)]);
        nc.set_peers(vec![peer(nc_ip, rr_ip)]);
        c1.set_local_routes(vec![Route::new(net("10.65.2.0/26"))]);
        c2.set_local_routes(vec![Route::new(net("10.65.3.0/26"))]);
        nc.set_local_routes(vec![Route::new(net("10.65.5.0/26"))]);

        c2t.wait("C2 has C1's block via C1", |t| {
            t.has("10.65.2.0/26", &[c1_ip])
        })
        .await;
        c1t.wait("C1 has C2's block via C2", |t| {
            t.has("10.65.3.0/26", &[c2_ip])
        })
        .await;
        // Non-client routes go to clients; client routes go to the non-client.
        c1t.wait("C1 has the non-client's block", |t| {
            t.has("10.65.5.0/26", &[nc_ip])
        })
        .await;
        nct.wait("non-client has the clients' blocks", |t| {
            t.has("10.65.2.0/26", &[c1_ip]) && t.has("10.65.3.0/26", &[c2_ip])
        })
        .await;

        // On the wire: ORIGINATOR_ID = C1's router id, CLUSTER_LIST = [cluster], NEXT_HOP C1.
        let mut p = RawPeer::established(raw_ip, rr_ip, 240).await;
        let mut seen = false;
        while !seen {
            let Some(Message::Update(u)) = p.recv().await else {
                continue;
            };
            let parsed = u.parse(true, false, &[]).expect("valid UPDATE");
            if parsed
                .announced
                .iter()
                .any(|e| e.prefix.to_string() == "10.65.2.0/26")
            {
                assert!(
                    parsed
                        .attributes
                        .contains(&PathAttribute::OriginatorId(Ipv4Addr::new(10, 77, 0, 2)))
                );
                assert!(
                    parsed
                        .attributes
                        .contains(&PathAttribute::ClusterList(vec![cluster]))
                );
                assert!(
                    parsed
                        .attributes
                        .contains(&PathAttribute::NextHop(Ipv4Addr::new(10, 77, 0, 2)))
                );
                seen = true;
            }
        }
        // A route that already passed our cluster is dropped; a clean one is reflected.
        let mut looped = update_v4([10, 65, 4, 0], 26, [10, 77, 0, 4], 0);
        // Append CLUSTER_LIST (optional non-transitive, type 10) with our cluster id.
        let extra = [0x80, 10, 4, 10, 77, 0, 1];
        let attr_len = u16::from_be_bytes([looped[21], looped[22]]) + extra.len() as u16;
        looped.splice(
            23 + usize::from(attr_len) - extra.len()..23 + usize::from(attr_len) - extra.len(),
            extra,
        );
        looped[21..23].copy_from_slice(&attr_len.to_be_bytes());
        let total = looped.len() as u16;
        looped[16..18].copy_from_slice(&total.to_be_bytes());
        p.send(&looped).await;
        p.send(&update_v4([10, 65, 6, 0], 26, [10, 77, 0, 4], 0))
            .await;
        let raw_hop: IpAddr = raw_ip;
        c1t.wait("clean route reflected", |t| {
            t.has("10.65.6.0/26", &[raw_hop])
        })
        .await;
        assert!(
            !c1t.routes.contains_key(&net("10.65.4.0/26")),
            "looped route must not be reflected"
        );

        // Withdrawal through the reflector.
        c1.set_local_routes(vec![]);
        c2t.wait("C2 loses C1's block", |t| {
            !t.routes.contains_key(&net("10.65.2.0/26"))
        })
        .await;
        for s in [rr, c1, c2, nc] {
            s.shutdown(false).await;
        }
    });
}
