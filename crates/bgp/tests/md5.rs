//! TCP-MD5 (RFC 2385) passwords between two speakers: a shared password gives a session
//! (IPv4 and IPv6), a mismatched or one-sided password gives none, and the listener's keys
//! follow the peers (a password removed or changed by reconfiguration takes effect).
//!
//! "No session" is shown by state, never by a sleep: the kernel of the test's namespace
//! counts the SYN it dropped for the TCP-MD5 reason expected (netstat's `TCPMD5*`), and
//! neither side is Established after it.

mod common;

use std::net::IpAddr;

use calico_bgp::{PeerConfig, Route, Speaker};
use common::*;

fn with_password(mut p: PeerConfig, pw: Option<&str>) -> PeerConfig {
    p.password = pw.map(str::to_string);
    p
}

/// Waits (bounded) until the kernel dropped a SYN for `counter`'s reason, then checks that
/// neither side is Established.
async fn assert_no_session(a: &Speaker, b: &Speaker, a_ip: IpAddr, b_ip: IpAddr, counter: &str) {
    let end = std::time::Instant::now() + WAIT;
    while md5_drops(counter) == 0 {
        assert!(
            std::time::Instant::now() < end,
            "the kernel dropped no segment for {counter}; A: {:#?}",
            a.status().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let st = a.status().await;
    assert!(!established(&st, b_ip), "{st:#?}");
    let st = b.status().await;
    assert!(!established(&st, a_ip), "{st:#?}");
}

#[test]
fn shared_password_establishes_and_routes_flow() {
    in_netns(|| async {
        for (a_ip, b_ip) in [(v4(1), v4(2)), (v6(1), v6(2))] {
            let (a, mut at) = start(config(a_ip)).await;
            let (b, mut bt) = start(config(b_ip)).await;
            let block = if a_ip.is_ipv4() {
                "10.65.1.0/26"
            } else {
                "fd00:65:1::/122"
            };
            a.set_local_routes(vec![Route::new(net(block))]);
            let other = if b_ip.is_ipv4() {
                "10.65.2.0/26"
            } else {
                "fd00:65:2::/122"
            };
            b.set_local_routes(vec![Route::new(net(other))]);
            a.set_peers(vec![with_password(peer(a_ip, b_ip), Some("s3cret"))]);
            b.set_peers(vec![with_password(peer(b_ip, a_ip), Some("s3cret"))]);
            wait_status(&a, "session with a shared password", |st| {
                established(st, b_ip)
            })
            .await;
            at.wait("A learns B's block", |t| t.has(other, &[b_ip]))
                .await;
            bt.wait("B learns A's block", |t| t.has(block, &[a_ip]))
                .await;
            a.shutdown(false).await;
            b.shutdown(false).await;
        }
    });
}

#[test]
fn mismatched_passwords_give_no_session() {
    in_netns(|| async {
        let (a_ip, b_ip) = (v4(1), v4(2));
        let (a, _at) = start(config(a_ip)).await;
        let (b, _bt) = start(config(b_ip)).await;
        a.set_peers(vec![with_password(peer(a_ip, b_ip), Some("one"))]);
        b.set_peers(vec![with_password(peer(b_ip, a_ip), Some("two"))]);
        assert_no_session(&a, &b, a_ip, b_ip, "TCPMD5Failure").await;

        // B takes A's password: its listener's key is replaced and the session comes up.
        b.set_peers(vec![with_password(peer(b_ip, a_ip), Some("one"))]);
        wait_status(&a, "session once the passwords match", |st| {
            established(st, b_ip)
        })
        .await;
        a.shutdown(false).await;
        b.shutdown(false).await;
    });
}

#[test]
fn a_password_on_one_side_only_gives_no_session() {
    in_netns(|| async {
        let (a_ip, b_ip) = (v4(1), v4(2));
        // The connecting side signs, the accepting side does not expect it.
        let (a, _at) = start(config(a_ip)).await;
        let (b, _bt) = start(config(b_ip)).await;
        a.set_peers(vec![with_password(peer(a_ip, b_ip), Some("s3cret"))]);
        b.set_peers(vec![peer(b_ip, a_ip)]);
        assert_no_session(&a, &b, a_ip, b_ip, "TCPMD5Unexpected").await;
        a.shutdown(false).await;
        b.shutdown(false).await;

        // The accepting side expects a signature, the connecting side sends none.
        let (a, _at) = start(config(a_ip)).await;
        let (b, _bt) = start(config(b_ip)).await;
        a.set_peers(vec![peer(a_ip, b_ip)]);
        b.set_peers(vec![with_password(peer(b_ip, a_ip), Some("s3cret"))]);
        assert_no_session(&a, &b, a_ip, b_ip, "TCPMD5NotFound").await;

        // B's password removed: its listener's key is cleared and the session comes up.
        b.set_peers(vec![peer(b_ip, a_ip)]);
        wait_status(&a, "session once B drops its password", |st| {
            established(st, b_ip)
        })
        .await;
        a.shutdown(false).await;
        b.shutdown(false).await;
    });
}

#[test]
fn a_key_the_kernel_refuses_is_reported_in_the_status() {
    in_netns(|| async {
        let (a_ip, b_ip) = (v4(1), v4(2));
        let (a, _at) = start(config(a_ip)).await;
        let (b, _bt) = start(config(b_ip)).await;
        let too_long = "k".repeat(81);
        a.set_peers(vec![with_password(peer(a_ip, b_ip), Some(&too_long))]);
        b.set_peers(vec![with_password(peer(b_ip, a_ip), Some(&too_long))]);
        for (s, other) in [(&a, b_ip), (&b, a_ip)] {
            let st = wait_status(s, "the key error in the status", |st| {
                st.iter().any(|p| {
                    p.address == other
                        && p.last_error
                            .as_deref()
                            .is_some_and(|e| e.contains("cannot set its TCP-MD5 key"))
                })
            })
            .await;
            assert!(!established(&st, other));
        }
        a.shutdown(false).await;
        b.shutdown(false).await;
    });
}
