//! eBGP and 4-byte AS (RFC 6793): AS prepended, next hop self, LOCAL_PREF stripped;
//! eBGP-learned routes go to iBGP peers; a 2-octet-only peer gets AS_TRANS with AS4_PATH.

mod common;

use std::net::Ipv4Addr;

use calico_bgp::{ExportFilter, PeerConfig, Route};
use common::*;
use rustbgpd_wire::attribute::AsPathSegment;
use rustbgpd_wire::{Message, PathAttribute};

const BIG_AS: u32 = 4_200_000_001;
const RAW_AS: u32 = 65010;

/// An OPEN without the 4-octet AS capability (only MP IPv4 unicast), as an old speaker.
fn two_octet_open() -> Vec<u8> {
    let mut body = vec![4];
    body.extend_from_slice(&(RAW_AS as u16).to_be_bytes());
    body.extend_from_slice(&240u16.to_be_bytes());
    body.extend_from_slice(&RAW_ID.octets());
    body.extend_from_slice(&[8, 2, 6, 1, 4, 0, 1, 0, 1]);
    message(1, &body)
}

/// Reads UPDATEs until one announces `prefix`; returns its attributes.
async fn attributes_of(p: &mut RawPeer, prefix: &str, four_octet: bool) -> Vec<PathAttribute> {
    loop {
        let Some(Message::Update(u)) = p.recv().await else {
            continue;
        };
        let parsed = u.parse(four_octet, false, &[]).expect("valid UPDATE");
        if parsed
            .announced
            .iter()
            .any(|e| e.prefix.to_string() == prefix)
        {
            return parsed.attributes;
        }
    }
}

#[test]
fn ebgp_paths_are_prepended_and_next_hop_self() {
    in_netns(|| async {
        let (a_ip, b_ip, c_ip, raw4, raw2) = (v4(1), v4(2), v4(3), v4(4), v4(5));
        let (a, mut at) = start(config(a_ip)).await;
        a.set_export_filter(ExportFilter {
            accept: vec![net("10.0.0.0/8")],
            reject: vec![],
        });
        let mut b_cfg = config(b_ip);
        b_cfg.local_as = BIG_AS;
        let (b, mut bt) = start(b_cfg).await;
        let (c, mut ct) = start(config(c_ip)).await;

        let mut a_to_b = peer(a_ip, b_ip);
        a_to_b.remote_as = BIG_AS;
        let b_to_a = peer(b_ip, a_ip);
        let raw_peer = |ip| {
            let mut p = PeerConfig::new(format!("Global_{ip}"), ip, RAW_AS);
            p.passive = true;
            p
        };
        a.set_peers(vec![
            a_to_b,
            peer(a_ip, c_ip),
            raw_peer(raw4),
            raw_peer(raw2),
        ]);
        b.set_peers(vec![b_to_a]);
        c.set_peers(vec![peer(c_ip, a_ip)]);
        b.set_local_routes(vec![Route::new(net("10.67.2.0/26"))]);
        c.set_local_routes(vec![Route::new(net("10.67.3.0/26"))]);

        at.wait("A learns both", |t| {
            t.has("10.67.2.0/26", &[b_ip]) && t.has("10.67.3.0/26", &[c_ip])
        })
        .await;
        // iBGP peer C gets the eBGP route with its next hop kept (NextHopMode::Auto).
        ct.wait("C learns B's route", |t| t.has("10.67.2.0/26", &[b_ip]))
            .await;
        // eBGP peer B gets C's route with next hop self.
        bt.wait("B learns C's route via A", |t| {
            t.has("10.67.3.0/26", &[a_ip])
        })
        .await;

        // On the wire, to a 4-octet eBGP peer.
        let mut p = RawPeer::established_with(raw4, a_ip, &RawPeer::open(240, RAW_AS)).await;
        let attrs = attributes_of(&mut p, "10.67.2.0/26", true).await;
        let path = attrs.iter().find_map(|a| {
            if let PathAttribute::AsPath(p) = a {
                Some(p.clone())
            } else {
                None
            }
        });
        assert_eq!(
            path.expect("AS_PATH").segments,
            vec![AsPathSegment::AsSequence(vec![AS, BIG_AS])]
        );
        assert!(attrs.contains(&PathAttribute::NextHop(Ipv4Addr::new(10, 77, 0, 1))));
        assert!(
            !attrs
                .iter()
                .any(|a| matches!(a, PathAttribute::LocalPref(_)))
        );

        // To a 2-octet-only peer: AS_TRANS in AS_PATH, the real path in AS4_PATH (the codec
        // merges both back when decoding as a 2-octet speaker).
        let mut p = RawPeer::established_with(raw2, a_ip, &two_octet_open()).await;
        let attrs = attributes_of(&mut p, "10.67.2.0/26", false).await;
        let path = attrs.iter().find_map(|a| {
            if let PathAttribute::AsPath(p) = a {
                Some(p.clone())
            } else {
                None
            }
        });
        assert_eq!(
            path.expect("AS_PATH").segments,
            vec![AsPathSegment::AsSequence(vec![AS, BIG_AS])]
        );

        // A route whose AS_PATH holds our AS is a loop at the receiver: B never takes back
        // its own route from A.
        assert!(!bt.routes.contains_key(&net("10.67.2.0/26")));
        for s in [a, b, c] {
            s.shutdown(false).await;
        }
    });
}
