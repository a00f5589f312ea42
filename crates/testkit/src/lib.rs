//! Fixtures for integration tests against real components: Debian's `etcd`, real network
//! namespaces, simulated nodes on a simulated underlay, this workspace's built binaries,
//! `calico-node run` on a node ([`Agent`]), and a [`Jail`] (pids and memory cgroup, address
//! space, deadline) for running a plugin that may run away, and a BGP interop lab ([`bgplab`]:
//! BIRD 2, GoBGP and FRR as peers on simulated nodes).
//!
//! Rules every fixture follows:
//! - it removes what it created when dropped, also while a test panics (drop runs during
//!   unwinding), and its child processes die with the test process (`PR_SET_PDEATHSIG`);
//! - every name it creates is unique to the run ([`unique_name`]);
//! - it never changes the host's network namespace: hosts are simulated with namespaces.
//!
//! Tests start with [`require!`] so that they skip (or, in CI, fail) when not root or when a
//! tool is missing.
//!
//! Owns fixtures only; no crate of the product may import it except as a dev-dependency, and
//! the library must not import the product's libraries (it runs their binaries as a runtime
//! would). Its own test targets are the exception: `tests/props` runs the product's parsers
//! and decoders under proptest (dev-dependencies), and `tests/badinput` its binaries.

pub mod agent;
pub mod bgplab;
pub mod bins;
pub mod cluster;
pub mod dns;
pub mod driver;
pub mod etcd;
pub mod gate;
pub mod http;
pub mod k8s;
pub mod limits;
pub mod netns;
pub mod node;
pub mod process;
pub mod tls;
pub mod underlay;

pub use agent::Agent;
pub use bins::CniPathDir;
pub use cluster::Cluster;
pub use dns::DnsStandIn;
pub use driver::{CallOpts, DriverError, Runtime};
pub use etcd::{Etcd, EtcdCluster, Etcdctl};
pub use limits::{Jail, Limits, Outcome};
pub use netns::NetNs;
pub use node::SimNode;
pub use process::Daemon;
pub use tls::Pki;
pub use underlay::Underlay;

use std::sync::atomic::{AtomicU32, Ordering};

/// A name unique to this process and call: `ct`, the pid (5 base-36 digits), up to 4
/// alphanumerics of `hint`, and a counter (3 base-36 digits), e.g. `ct02n9kpod003`.
///
/// The fixed widths keep names from different pids, hints and counters apart, and the result
/// stays within 14 bytes, so it can name interfaces (15-byte limit) as well as namespaces.
pub fn unique_name(hint: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hint: String = hint
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(4)
        .collect();
    // Linux pids are below 2^22 < 36^5; the counter wraps after 36^3 names.
    format!(
        "ct{}{hint}{}",
        base36(std::process::id(), 5),
        base36(n % 46_656, 3)
    )
}

/// `n` in base 36, zero-padded to `width` digits.
fn base36(mut n: u32, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out).expect("base-36 digits are ASCII")
}

/// Polls `f` every 10 ms until it holds or `timeout` passes; whether it held.
pub fn eventually(timeout: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The addresses (without their masks) of a CNI result's `ips`, in order; entries that are
/// not addresses are skipped.
pub fn result_ips(result: &serde_json::Value) -> Vec<std::net::IpAddr> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_short_and_distinct() {
        let a = unique_name("node-a");
        let b = unique_name("node-a");
        assert_ne!(a, b);
        assert!(a.starts_with("ct") && a.contains("node"));
        assert!(a.len() <= 14, "{a}");
        assert_eq!(base36(0, 3), "000");
        assert_eq!(base36(36 * 36 - 1, 3), "0zz");
    }
}
