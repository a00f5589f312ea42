//! Smoke interop with Debian's BIRD 2: BIRD runs in a namespace this test creates, linked by
//! a veth to the test thread's own namespace where our speaker runs. Checked: both sides
//! learn the other's prefix (`birdc show route`, our RibEvents), withdrawals, and graceful
//! restart both ways — BIRD as helper (our routes kept stale, swept after our End-of-RIB)
//! and BIRD as restarting speaker (`bird -R` after SIGKILL, its routes kept stale by us);
//! and TCP-MD5 (RFC 2385) against BIRD's `password`.
//! The fuller interop lab lives in testkit. BIRD is killed by PID and the namespace deleted
//! by a drop guard.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use calico_bgp::{PeerConfig, Route};
use common::*;

struct BirdGuard {
    ns: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for BirdGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn run(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("run");
    assert!(st.success(), "{args:?} failed");
}

fn birdc(sock: &PathBuf, cmd: &str) -> String {
    let out = Command::new("birdc")
        .arg("-s")
        .arg(sock)
        .args(cmd.split(' '))
        .output()
        .expect("birdc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bird_peer(me: IpAddr) -> PeerConfig {
    let mut p = PeerConfig::new("Node_10_78_0_2", "10.78.0.2".parse().expect("ip"), AS);
    p.source = Some(me);
    p.connect_delay = Duration::from_millis(100);
    p.connect_retry = Duration::from_millis(500);
    p
}

/// Waits (bounded) until BIRD's full table satisfies `cond`.
async fn wait_bird(sock: &PathBuf, what: &str, cond: impl Fn(&str) -> bool) {
    wait_bird_cmd(sock, "show route", what, cond).await
}

async fn wait_bird_cmd(sock: &PathBuf, cmd: &str, what: &str, cond: impl Fn(&str) -> bool) {
    let end = Instant::now() + WAIT;
    loop {
        let out = birdc(sock, cmd);
        if cond(&out) {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}: {out}\n{}",
            birdc(sock, "show protocols all calico")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts BIRD in `ns` originating `route`; `recovery`: as a restarting speaker (`-R`).
fn start_bird(ns: &str, dir: &std::path::Path, route: &str, recovery: bool) -> Child {
    start_bird_with(ns, dir, route, recovery, None)
}

/// [`start_bird`], with `password` (TCP-MD5) on the session when given.
fn start_bird_with(
    ns: &str,
    dir: &std::path::Path,
    route: &str,
    recovery: bool,
    password: Option<&str>,
) -> Child {
    let conf = dir.join("bird.conf");
    let password = password.map_or(String::new(), |p| format!("password \"{p}\"; "));
    std::fs::write(
        &conf,
        format!(
            "log stderr all;\nrouter id 10.78.0.2;\nprotocol device {{ scan time 1; }}\n\
             protocol direct {{ ipv4; interface \"cbgp1\"; }}\n\
             protocol static {{ ipv4; route {route} blackhole; }}\n\
             protocol bgp calico {{ local 10.78.0.2 as 64512; neighbor 10.78.0.1 as 64512;\n\
               {password}\n\
               graceful restart on; connect delay time 1; connect retry time 1; error wait time 1,5;\n\
               ipv4 {{ import all; export where source = RTS_STATIC; }}; }}\n"
        ),
    )
    .expect("write bird.conf");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "bird", "-f", "-c"])
        .arg(&conf)
        .arg("-s")
        .arg(dir.join("bird.ctl"))
        .arg("-P")
        .arg(dir.join("bird.pid"));
    if recovery {
        cmd.arg("-R");
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bird")
}

/// Whether BIRD can run here; in CI it must.
fn have_bird() -> bool {
    if Command::new("bird")
        .arg("--version")
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "bird (bird2) is required in CI"
        );
        eprintln!("SKIPPED: bird is not installed");
        return false;
    }
    true
}

/// BIRD's namespace `ns` (10.78.0.2 on `cbgp1`) linked by a veth to the test thread's
/// namespace (10.78.0.1 on `cbgp0`); BIRD itself is started by the caller into the guard.
fn bird_lab(ns: String) -> BirdGuard {
    let dir = tempfile::tempdir().expect("tempdir");
    run(&["ip", "netns", "add", &ns]);
    let guard = BirdGuard {
        ns: ns.clone(),
        child: None,
        _dir: dir,
    };
    run(&[
        "ip", "link", "add", "cbgp0", "type", "veth", "peer", "name", "cbgp1", "netns", &ns,
    ]);
    run(&["ip", "addr", "add", "10.78.0.1/24", "dev", "cbgp0"]);
    run(&["ip", "link", "set", "cbgp0", "up"]);
    run(&[
        "ip",
        "-n",
        &ns,
        "addr",
        "add",
        "10.78.0.2/24",
        "dev",
        "cbgp1",
    ]);
    run(&["ip", "-n", &ns, "link", "set", "cbgp1", "up"]);
    run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    guard
}

/// BIRD with `password "..."` (TCP-MD5): a wrong password of ours gives no session (our
/// kernel drops BIRD's badly signed SYN), the right one an Established session and routes
/// both ways.
#[test]
fn bird_with_a_password_exchanges_routes() {
    if !have_bird() {
        return;
    }
    in_netns(|| async {
        let mut guard = bird_lab(format!("cbgp{}m", std::process::id()));
        let dirp = guard._dir.path().to_path_buf();
        let sock = dirp.join("bird.ctl");
        guard.child = Some(start_bird_with(
            &guard.ns,
            &dirp,
            "10.66.2.0/26",
            false,
            Some("bird-s3cret"),
        ));
        let me = IpAddr::V4(Ipv4Addr::new(10, 78, 0, 1));
        let (s, mut t) = start(config(me)).await;
        s.set_local_routes(vec![Route::new(net("10.66.1.0/26"))]);
        let mut wrong = bird_peer(me);
        wrong.password = Some("not-birds".into());
        s.set_peers(vec![wrong]);
        let end = Instant::now() + WAIT;
        while md5_drops("TCPMD5Failure") == 0 {
            assert!(
                Instant::now() < end,
                "no badly signed segment dropped: {}",
                birdc(&sock, "show protocols all calico")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!established(
            &s.status().await,
            "10.78.0.2".parse().expect("ip")
        ));

        let mut right = bird_peer(me);
        right.password = Some("bird-s3cret".into());
        s.set_peers(vec![right]);
        t.wait("BIRD's prefix learned", |t| {
            t.has("10.66.2.0/26", &["10.78.0.2".parse().expect("ip")])
        })
        .await;
        wait_bird(&sock, "our prefix at BIRD", |out| {
            out.contains("10.66.1.0/26") && out.contains("10.78.0.1")
        })
        .await;
        wait_bird_cmd(&sock, "show protocols calico", "BIRD Established", |out| {
            out.contains("Established")
        })
        .await;
        s.shutdown(false).await;
        drop(guard);
    });
}

#[test]
fn bird_and_our_speaker_exchange_routes() {
    if !have_bird() {
        return;
    }
    in_netns(|| async {
        let ns = format!("cbgp{}b", std::process::id());
        let mut guard = bird_lab(ns.clone());
        let dirp = guard._dir.path().to_path_buf();
        let sock = dirp.join("bird.ctl");
        guard.child = Some(start_bird(&ns, &dirp, "10.66.2.0/26", false));

        let me = IpAddr::V4(Ipv4Addr::new(10, 78, 0, 1));
        let mut cfg = config(me);
        cfg.listen = Some(SocketAddr::new(me, PORT));
        cfg.graceful_restart = Some(Duration::from_secs(120));
        let (s, mut t) = start(cfg).await;
        s.set_peers(vec![bird_peer(me)]);
        s.set_local_routes(vec![Route::new(net("10.66.1.0/26"))]);

        t.wait("BIRD's prefix learned", |t| {
            t.has("10.66.2.0/26", &["10.78.0.2".parse().expect("ip")])
        })
        .await;
        wait_bird(&sock, "our prefix at BIRD", |out| {
            out.contains("10.66.1.0/26") && out.contains("10.78.0.1")
        })
        .await;
        // A withdrawal reaches BIRD too.
        s.set_local_routes(vec![Route::new(net("10.66.3.0/26"))]);
        wait_bird(&sock, "our withdrawal", |out| {
            !out.contains("10.66.1.0/26") && out.contains("10.66.3.0/26")
        })
        .await;

        // Graceful restart with BIRD as helper: after a GR shutdown BIRD keeps our route
        // (stale) while we are gone; once we are back (R bit) and send End-of-RIB, the route
        // we no longer have is withdrawn and the new one is there.
        s.shutdown(true).await;
        wait_bird_cmd(&sock, "show protocols calico", "BIRD sees us gone", |out| {
            !out.contains("Established")
        })
        .await;
        let out = birdc(&sock, "show route");
        assert!(
            out.contains("10.66.3.0/26"),
            "BIRD kept our route during the restart: {out}"
        );
        let mut cfg = config(me);
        cfg.graceful_restart = Some(Duration::from_secs(120));
        cfg.restarting = true;
        let (s, mut t) = start(cfg).await;
        s.set_peers(vec![bird_peer(me)]);
        s.set_local_routes(vec![Route::new(net("10.66.4.0/26"))]);
        wait_bird(&sock, "stale route swept after our End-of-RIB", |out| {
            !out.contains("10.66.3.0/26") && out.contains("10.66.4.0/26")
        })
        .await;
        t.wait("synced with BIRD's routes", |t| {
            t.synced && t.routes.contains_key(&net("10.66.2.0/26"))
        })
        .await;

        // Graceful restart with us as helper: BIRD dies (SIGKILL, TCP closed by the kernel);
        // we keep its route stale; BIRD comes back in recovery (-R) with another route; after
        // its End-of-RIB the old one is withdrawn.
        if let Some(mut c) = guard.child.take() {
            c.kill().expect("kill bird");
            c.wait().expect("reap bird");
        }
        wait_status(&s, "BIRD gone", |st| {
            st[0].state != calico_bgp::SessionState::Established
        })
        .await;
        t.drain();
        assert!(
            t.routes.contains_key(&net("10.66.2.0/26")),
            "BIRD's route kept stale: {:?}",
            t.log
        );
        guard.child = Some(start_bird(&ns, &dirp, "10.66.5.0/26", true));
        let bird: IpAddr = "10.78.0.2".parse().expect("ip");
        t.wait("BIRD's new route, its old one swept", |t| {
            t.has("10.66.5.0/26", &[bird]) && !t.routes.contains_key(&net("10.66.2.0/26"))
        })
        .await;
        wait_bird(&sock, "BIRD relearns our route", |out| {
            out.contains("10.66.4.0/26")
        })
        .await;
        s.shutdown(false).await;
        drop(guard);
    });
}
