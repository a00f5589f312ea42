//! The rendered tables against the kernel, in a network namespace the test creates: every
//! golden case's table applies whole (an atomic replace), and each step of building it up
//! update by update and tearing it down again applies as an incremental plan from the step
//! before. This checks the lowering to nf_tables expressions, which the golden text (nft's
//! syntax) does not show.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use calico_netfilter::NfSocket;
use calico_netfilter::ruleset::{self, Ruleset};
use calico_policy::{EngineConfig, PolicyEngine};
use common::{NODE, apply, cases, remove, resources};
use testkit::{NetNs, require};

fn program(ns: &NetNs, old: Option<&Ruleset>, new: &Ruleset, what: &str) {
    let batch = ruleset::plan(old, new).unwrap_or_else(|e| panic!("{what}: plan: {e}"));
    let what = what.to_string();
    ns.within(move || {
        let mut sock = NfSocket::open().unwrap();
        ruleset::apply(&mut sock, &batch).unwrap_or_else(|e| panic!("{what}: apply: {e}"));
    })
    .unwrap();
}

#[test]
fn every_case_applies_whole_and_step_by_step() {
    require!(root; "nft");
    let ns = NetNs::new("pol").unwrap();
    for dir in cases() {
        let input = resources(&dir.join("input.yaml"));
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut e = PolicyEngine::new(NODE, EngineConfig::default());
        for r in &input {
            apply(&mut e, r);
        }
        let whole = e.desired().clone();
        program(&ns, None, &whole, &format!("{name}: whole"));
        let listed = ns.sh("nft list table inet calico").unwrap();
        assert!(listed.contains("chain filter-FORWARD"), "{name}: {listed}");

        let mut e = PolicyEngine::new(NODE, EngineConfig::default());
        let mut prev = e.desired().clone();
        program(&ns, None, &prev, &format!("{name}: empty"));
        let steps = input.iter().map(|r| (r, true)).chain(input.iter().map(|r| (r, false)));
        for (i, (r, add)) in steps.enumerate() {
            if add {
                apply(&mut e, r);
            } else {
                remove(&mut e, r);
            }
            let next = e.desired().clone();
            program(&ns, Some(&prev), &next, &format!("{name}: step {i}"));
            prev = next;
        }
    }
}
