//! The benchmark helper runs end to end (a few pods, so it stays quick), so later issues can
//! rely on it.

use serde_json::{Value, json};
use testkit::bins::built;
use testkit::driver::{driver_binary, repo_root};
use testkit::{NetNs, require};

#[test]
fn bench_cni_reports_the_share_of_the_reference_chain() {
    require!(root; "ip", "go", "python3", "/usr/lib/cni/ptp", "/usr/lib/cni/host-local");
    let node = NetNs::new("bnode").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conflist = dir.path().join("ref.conflist");
    std::fs::write(
        &conflist,
        json!({"cniVersion":"1.0.0","name":"benchref","plugins":[{"type":"ptp","ipMasq":false,
            "ipam":{"type":"host-local","subnet":"10.99.9.0/24",
                    "dataDir": dir.path().join("hl").to_str().unwrap()}}]})
        .to_string(),
    )
    .unwrap();
    let report = dir.path().join("report.json");
    let out = std::process::Command::new(repo_root().join("scripts/bench-cni"))
        .args([
            "--conflist",
            conflist.to_str().unwrap(),
            "--pods",
            "3",
            "--prefill",
            "1",
        ])
        .args(["--cni-path", "/usr/lib/cni", "--node-netns", node.name()])
        .args(["--driver", driver_binary().unwrap().to_str().unwrap()])
        .args(["--noop", built("cni-noop").unwrap().to_str().unwrap()])
        .args(["--json", report.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let text = figures.to_string();
    for needle in ["ADD", "DEL", "median", "p99"] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    // Nothing of the benchmark's is left: no pod namespace, no address, no veth.
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    // bench-cni's pod namespaces are `bench-<6 hex>-<n>` (other benchmarks' names, such as
    // `bench-node-…`, are not its and may exist while this test runs).
    let pods_left: Vec<String> = String::from_utf8_lossy(&left.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| {
            let mut parts = name.split('-');
            parts.next() == Some("bench")
                && parts
                    .next()
                    .is_some_and(|h| h.len() == 6 && h.chars().all(|c| c.is_ascii_hexdigit()))
                && parts
                    .next()
                    .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
                && parts.next().is_none()
        })
        .map(str::to_string)
        .collect();
    assert!(pods_left.is_empty(), "left: {pods_left:?}");
    assert_eq!(
        node.sh("ip -o link show | grep -c veth || true")
            .unwrap()
            .trim(),
        "0"
    );
}
