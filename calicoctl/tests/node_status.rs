//! `calicoctl node status` as a process, against a test-only responder on the agent's
//! socket: the round trip of `Request::BgpStatus`, and no agent at all.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use calico_agent_protocol::frame::{self, Incoming};
use calico_agent_protocol::{BgpPeerStatus, BgpStatusReport, Hello, Reply, Request};
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use testkit::require;

const BIN: &str = env!("CARGO_BIN_EXE_calicoctl");

fn node_status(socket: &Path) -> Output {
    Command::new(BIN)
        .args(["node", "status"])
        .env("CALICO_NODE_SOCKET", socket)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A test double of the node agent (calico-node's server answers for real): greets one
/// connection, reads one request, checks it is `BgpStatus`, answers `reply`.
fn responder(listener: UnixListener, reply: Reply) -> std::thread::JoinHandle<Request> {
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let hello = Hello::Welcome {
            agent: "test responder".into(),
        };
        stream.write_all(&frame::encode(&hello).unwrap()).unwrap();
        let mut incoming = Incoming::default();
        let mut buf = [0u8; 4096];
        let request: Request = loop {
            if let Some(f) = incoming.next_frame().unwrap() {
                break f.decode().unwrap();
            }
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "calicoctl closed before asking");
            incoming.push(&buf[..n], Vec::new());
        };
        stream.write_all(&frame::encode(&reply).unwrap()).unwrap();
        request
    })
}

fn peer(address: &str, peer_type: &str, state: &str, since: &str, info: &str) -> BgpPeerStatus {
    BgpPeerStatus {
        name: format!("Mesh_{}", address.replace(['.', ':'], "_")),
        address: address.parse().unwrap(),
        peer_type: peer_type.into(),
        state: state.into(),
        since: since.into(),
        info: info.into(),
    }
}

/// Mirrors status.go: "Calico process is running.", then BIRD's peers per family.
#[test]
fn prints_the_agents_bgp_status() {
    require!(root);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("calico-node.sock");
    let report = BgpStatusReport {
        ipv4_running: true,
        ipv6_running: true,
        speaker: "BIRD 2.0.12".into(),
        peers: vec![
            peer(
                "10.0.0.2",
                "node-to-node mesh",
                "up",
                "15:01:02",
                "Established",
            ),
            peer(
                "10.0.0.9",
                "global",
                "start",
                "15:01:03",
                "Active Socket: Connection refused",
            ),
        ],
    };
    let agent = responder(
        UnixListener::bind(&socket).unwrap(),
        Reply::BgpStatus(report),
    );
    let out = node_status(&socket);
    assert_eq!(agent.join().unwrap(), Request::BgpStatus);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Calico process is running.

IPv4 BGP status
+--------------+-------------------+-------+----------+---------------------------+
| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |           INFO            |
+--------------+-------------------+-------+----------+---------------------------+
| 10.0.0.2     | node-to-node mesh | up    | 15:01:02 | Established               |
| 10.0.0.9     | global            | start | 15:01:03 | Active Socket: Connection |
|              |                   |       |          | refused                   |
+--------------+-------------------+-------+----------+---------------------------+

IPv6 BGP status
No IPv6 peers found.

"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(out.status.code(), Some(0));
}

/// Mirrors status.go: no Calico process is an error, "Calico process is not running.",
/// exit 1, nothing on stdout.
#[test]
fn no_agent_is_calico_not_running() {
    require!(root);
    let dir = tempfile::tempdir().unwrap();
    let out = node_status(&dir.path().join("absent.sock"));
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref(),
            String::from_utf8_lossy(&out.stderr).as_ref()
        ),
        (Some(1), "", "Calico process is not running.\n")
    );
}

/// An agent that does not report BGP status (one that predates the request, or refuses
/// it): the process runs, the status is an error, exit 1.
#[test]
fn an_agent_without_bgp_status_is_an_error_after_running() {
    require!(root);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("calico-node.sock");
    let agent = responder(
        UnixListener::bind(&socket).unwrap(),
        Reply::Rejected("this agent does not report BGP status yet".into()),
    );
    let out = node_status(&socket);
    agent.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Calico process is running.\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error executing command: the node agent did not report BGP status: this agent does \
         not report BGP status yet\n"
    );
}

/// Mirrors permissions.go enforceRoot: not root is refused on stdout, exit 1, before any
/// connection.
#[test]
fn not_root_is_refused() {
    require!(root; "setpriv");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "node",
            "status",
        ])
        .env("CALICO_NODE_SOCKET", dir.path().join("absent.sock"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref(),
            String::from_utf8_lossy(&out.stderr).as_ref()
        ),
        (
            Some(1),
            "Need super user privileges: Operation not permitted\n",
            ""
        )
    );
}
