//! Golden tests (holo style): `testdata/policy/<case>/input.yaml` (resources as calicoctl
//! writes them, for node `node1`) through the engine, compared with `expected.nft` (the
//! wanted table in nft's syntax, then the skipped objects). `UPDATE_GOLDEN=1` rewrites the
//! expectations. The same inputs check incrementality: any order of updates, with the table
//! read between them, and objects removed and added again, gives the fresh build's table.

use calico_policy::{EngineConfig, PolicyEngine};

mod common;

use common::{NODE, apply, cases, remove, resources};

/// Equal texts, or a panic showing the first line that differs.
fn same(got: &str, want: &str, what: &str) {
    if got == want {
        return;
    }
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    let i = g.iter().zip(&w).take_while(|(a, b)| a == b).count();
    panic!(
        "{what}: line {} differs\n got: {:?}\nwant: {:?}",
        i + 1,
        g.get(i),
        w.get(i)
    );
}

fn output(e: &mut PolicyEngine) -> String {
    e.desired();
    let mut out = e.text();
    for s in e.skipped() {
        out.push_str(&format!("# {s}\n"));
    }
    for s in e.programmed_endpoints() {
        out.push_str(&format!(
            "# programmed: {} {} {} iface={} mac={} v4={:?} v6={:?}\n",
            s.orchestrator_id,
            s.workload_id,
            s.endpoint_id,
            s.iface_name,
            s.mac,
            s.ipv4_nets,
            s.ipv6_nets
        ));
    }
    out
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failed = Vec::new();
    for dir in cases() {
        let mut e = PolicyEngine::new(
            NODE,
            EngineConfig {
                keep_text: true,
                ..Default::default()
            },
        );
        for r in resources(&dir.join("input.yaml")) {
            apply(&mut e, &r);
        }
        let got = output(&mut e);
        let expected_path = dir.join("expected.nft");
        if update {
            std::fs::write(&expected_path, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != want {
            eprintln!("=== {} differs; got:\n{got}", dir.display());
            failed.push(dir.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "golden mismatches (UPDATE_GOLDEN=1 to accept): {failed:?}"
    );
}

/// Mirrors Felix's calc-graph contract (felix/calc/calc_graph_fv_test.go: the same state
/// reached by different update sequences renders the same dataplane).
#[test]
fn incremental_updates_reach_the_fresh_build() {
    for dir in cases() {
        let input = resources(&dir.join("input.yaml"));
        let mut fresh = PolicyEngine::new(
            NODE,
            EngineConfig {
                keep_text: true,
                ..Default::default()
            },
        );
        for r in &input {
            apply(&mut fresh, r);
        }
        let want = output(&mut fresh);
        let want_ruleset = fresh.desired().clone();

        // Reverse order, reading the table after every update.
        let mut rev = PolicyEngine::new(
            NODE,
            EngineConfig {
                keep_text: true,
                ..Default::default()
            },
        );
        for r in input.iter().rev() {
            apply(&mut rev, r);
            rev.desired();
        }
        same(
            &output(&mut rev),
            &want,
            &format!("reverse order: {}", dir.display()),
        );
        assert_eq!(rev.desired(), &want_ruleset, "{}", dir.display());

        // Everything removed one by one (table read each time), then added again.
        for r in &input {
            remove(&mut rev, r);
            rev.desired();
        }
        let empty = PolicyEngine::new(
            NODE,
            EngineConfig {
                keep_text: true,
                ..Default::default()
            },
        );
        let mut empty = empty;
        same(
            &output(&mut rev),
            &output(&mut empty),
            &format!("emptied: {}", dir.display()),
        );
        for r in &input {
            apply(&mut rev, r);
            rev.desired();
        }
        same(
            &output(&mut rev),
            &want,
            &format!("re-added: {}", dir.display()),
        );

        // Each object removed and put back while the rest stays.
        for r in &input {
            remove(&mut rev, r);
            rev.desired();
            apply(&mut rev, r);
        }
        same(
            &output(&mut rev),
            &want,
            &format!("toggled: {}", dir.display()),
        );
    }
}

/// What nf_tables would refuse in a transaction: a jump/goto to a chain, a lookup in a set
/// or map, or a map verdict to a chain that the table does not have. Checked on every case,
/// and on every intermediate table of an update sequence.
fn check_references(r: &calico_netfilter::ruleset::Ruleset, what: &str) {
    use calico_netfilter::nft::{Expr, Verdict};
    let chain_ok = |v: &Verdict| v.chain().is_none_or(|c| r.chains.contains_key(c));
    for (name, chain) in &r.chains {
        for rule in &chain.rules {
            for e in &rule.exprs {
                match e {
                    Expr::Verdict(v) => assert!(chain_ok(v), "{what}: {name} → {v:?}"),
                    Expr::SetLookup { set, .. } => {
                        assert!(r.sets.contains_key(set), "{what}: {name} uses set {set}")
                    }
                    Expr::VmapLookup { map, .. } => {
                        assert!(r.maps.contains_key(map), "{what}: {name} uses map {map}")
                    }
                    _ => {}
                }
            }
        }
    }
    for (name, map) in &r.maps {
        for v in map.elems.values() {
            assert!(chain_ok(v), "{what}: map {name} → {v:?}");
        }
    }
}

#[test]
fn every_reference_resolves_at_every_step() {
    for dir in cases() {
        let input = resources(&dir.join("input.yaml"));
        let mut e = PolicyEngine::new(
            NODE,
            EngineConfig {
                keep_text: true,
                ..Default::default()
            },
        );
        for (i, r) in input.iter().enumerate() {
            apply(&mut e, r);
            check_references(e.desired(), &format!("{} after {i}", dir.display()));
        }
        for (i, r) in input.iter().enumerate() {
            remove(&mut e, r);
            check_references(e.desired(), &format!("{} removing {i}", dir.display()));
        }
    }
}

/// The golden text is nft's own syntax: `nft --check` in a fresh network namespace parses
/// it and has the kernel validate the whole table (types, set elements, jumps) without
/// committing anything.
#[test]
fn golden_text_is_a_table_the_kernel_accepts() {
    testkit::require!(root; "nft", "unshare");
    for dir in cases() {
        let mut e = PolicyEngine::new(
            NODE,
            EngineConfig {
                keep_text: true,
                ..Default::default()
            },
        );
        for r in resources(&dir.join("input.yaml")) {
            apply(&mut e, &r);
        }
        e.desired();
        let text = e.text();
        let mut child = std::process::Command::new("unshare")
            .args(["-n", "nft", "-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("unshare nft");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "{}: nft -c refused:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
