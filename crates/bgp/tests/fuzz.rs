//! Fuzzes the decoder and session path without sockets: random bytes and mutated valid
//! messages go through framing, decoding, the FSM (Established) and the RIB; nothing may
//! panic, and every error must be a NOTIFICATION the FSM sends.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use calico_bgp::fsm::{Fsm, FsmConfig, Input, Output};
use calico_bgp::rib::{Rib, RibPeer};
use calico_bgp::wire::{self, Family, OpenParams, PathAttrs};
use calico_bgp::{NextHopMode, SessionState};
use proptest::prelude::*;
use rustbgpd_wire::Message;
use rustbgpd_wire::attribute::AsPathSegment;

const AS: u32 = 64512;

fn open(id: Ipv4Addr, gr: bool) -> Message {
    wire::build_open(&OpenParams {
        local_as: AS,
        router_id: id,
        hold_time: 240,
        gr_time: gr.then_some(120),
        restarting: gr,
    })
}

fn established() -> Fsm {
    let now = Instant::now();
    let mut f = Fsm::new(FsmConfig {
        open: OpenParams {
            local_as: AS,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            hold_time: 240,
            gr_time: Some(120),
            restarting: false,
        },
        remote_as: AS,
        ibgp: true,
        passive: true,
        keepalive: None,
        connect_delay: Duration::from_secs(2),
        connect_retry: Duration::from_secs(5),
        refused_retry: None,
    });
    f.handle(Input::Start, now);
    f.handle(Input::TcpUp, now);
    f.handle(Input::Msg(open(Ipv4Addr::new(10, 0, 0, 2), true)), now);
    f.handle(Input::Msg(Message::Keepalive), now);
    assert_eq!(f.state(), SessionState::Established);
    f
}

fn rib() -> Rib {
    let mut r = Rib::new(
        Ipv4Addr::new(10, 0, 0, 1),
        Some(Ipv4Addr::new(10, 0, 0, 1)),
        false,
    );
    r.peer_up(
        1,
        RibPeer {
            address: "10.0.0.2".parse().expect("literal"),
            local_addr: "10.0.0.1".parse().expect("literal"),
            local_as: AS,
            remote_as: AS,
            remote_id: Ipv4Addr::new(10, 0, 0, 2),
            rr_client: true,
            next_hop: NextHopMode::Auto,
            families: vec![Family::Ipv4, Family::Ipv6],
        },
    );
    r
}

/// Valid messages to mutate: UPDATEs of both families with every attribute we know, End-of-RIB,
/// OPEN, NOTIFICATION, ROUTE-REFRESH, KEEPALIVE.
fn seeds() -> Vec<Bytes> {
    let attrs = PathAttrs {
        origin: 0,
        as_path: vec![
            AsPathSegment::AsSequence(vec![65001, 4_200_000_000]),
            AsPathSegment::AsSet(vec![1, 2]),
        ],
        next_hop: "10.0.0.2".parse().expect("literal"),
        med: Some(7),
        local_pref: Some(100),
        communities: vec![1, 2],
        large_communities: vec![[1, 2, 3]],
        originator_id: Some(Ipv4Addr::new(1, 2, 3, 4)),
        cluster_list: vec![Ipv4Addr::new(5, 6, 7, 8)],
        other: vec![],
    };
    let mut v6 = attrs.clone();
    v6.next_hop = "fd00::2".parse().expect("literal");
    let mut s = Vec::new();
    s.extend(wire::encode_announce(
        Family::Ipv4,
        &[
            "10.65.0.0/26".parse().expect("literal"),
            "10.0.0.0/8".parse().expect("literal"),
        ],
        &attrs,
        true,
    ));
    s.extend(wire::encode_announce(
        Family::Ipv6,
        &["fd00:65::/122".parse().expect("literal")],
        &v6,
        true,
    ));
    s.extend(wire::encode_withdraw(
        Family::Ipv4,
        &["10.65.0.0/26".parse().expect("literal")],
        true,
    ));
    s.extend(wire::encode_withdraw(
        Family::Ipv6,
        &["fd00:65::/122".parse().expect("literal")],
        true,
    ));
    s.extend(wire::end_of_rib(Family::Ipv4));
    s.extend(wire::end_of_rib(Family::Ipv6));
    s.extend(wire::encode(&open(Ipv4Addr::new(10, 0, 0, 2), true)));
    s.extend(wire::encode(&wire::Notification::new(6, 2).to_message()));
    s.extend(wire::encode(&wire::route_refresh(Family::Ipv6)));
    s.extend(wire::encode(&Message::Keepalive));
    s
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    FixLength,
}

fn mutate(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        match m {
            Mutation::Flip(i, x) if !b.is_empty() => {
                let i = i % b.len();
                b[i] ^= x;
            }
            Mutation::Truncate(n) => b.truncate(n % (b.len() + 1)),
            Mutation::Insert(i, bytes) => {
                let i = i % (b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::FixLength if b.len() >= 19 && b.len() <= 4096 => {
                let l = b.len() as u16;
                b[16..18].copy_from_slice(&l.to_be_bytes());
            }
            _ => {}
        }
    }
    b
}

/// Frames, decodes and feeds `stream` to an established session and its RIB, as the tokio
/// shell does.
fn feed(stream: &[u8]) {
    let mut fsm = established();
    let mut rib = rib();
    let mut buf = bytes::BytesMut::from(stream);
    let now = Instant::now();
    loop {
        let input = match rustbgpd_wire::peek_message_length(&buf, wire::MAX_LEN) {
            Ok(Some(l)) if buf.len() >= usize::from(l) => {
                let mut frame = buf.split_to(usize::from(l)).freeze();
                match rustbgpd_wire::decode_message(&mut frame, wire::MAX_LEN) {
                    Ok(m) => Input::Msg(m),
                    Err(e) => Input::BadMsg(wire::Notification::from_decode_error(&e)),
                }
            }
            Ok(_) => return,
            Err(e) => Input::BadMsg(wire::Notification::from_decode_error(&e)),
        };
        let bad = matches!(input, Input::BadMsg(_));
        for o in fsm.handle(input, now) {
            match o {
                Output::Update(u) => {
                    let eor = u.end_of_rib;
                    rib.update(1, u);
                    if let Some(f) = eor {
                        rib.sweep_stale(1, Some(f));
                    }
                }
                Output::Send(Message::Notification(n)) => {
                    assert!(
                        (1..=6).contains(&n.code.as_u8()),
                        "NOTIFICATION code {:?}",
                        n.code
                    )
                }
                _ => {}
            }
        }
        if bad || fsm.state() != SessionState::Established {
            return;
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        Just(Mutation::FixLength),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        feed(&bytes);
        // With a valid header in front, the body is what gets exercised.
        let mut framed = vec![0xff; 16];
        framed.extend_from_slice(&((19 + bytes.len().min(4000)) as u16).to_be_bytes());
        framed.push(2);
        framed.extend_from_slice(&bytes[..bytes.len().min(4000)]);
        feed(&framed);
    }

    #[test]
    fn mutated_messages_never_panic(
        picks in proptest::collection::vec((any::<proptest::sample::Index>(), proptest::collection::vec(mutation(), 0..6)), 1..6)
    ) {
        let seeds = seeds();
        let mut stream = Vec::new();
        for (i, muts) in picks {
            stream.extend(mutate(seeds[i.index(seeds.len())].to_vec(), &muts));
        }
        feed(&stream);
    }
}

#[test]
fn seeds_are_accepted_unmutated() {
    let seeds = seeds();
    // Everything but the OPEN (unexpected in Established) and the NOTIFICATION keeps the session.
    for s in seeds.iter().filter(|s| s[18] != 1 && s[18] != 3) {
        let mut fsm = established();
        let mut b = s.clone();
        let m = rustbgpd_wire::decode_message(&mut b, wire::MAX_LEN).expect("seed decodes");
        fsm.handle(Input::Msg(m), Instant::now());
        assert_eq!(fsm.state(), SessionState::Established, "{s:?}");
    }
}
