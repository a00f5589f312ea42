//! `CniResult::from_json` (delegate output, `prevResult`) for every version: arbitrary JSON
//! never panics (the result, or code 1/6/7), and a valid result written at any version reads
//! back to the same text.

use cni_protocol::{CniResult, CniVersion};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::values::{json, mutate};

const FIELDS: &[&str] = &[
    "cniVersion",
    "ips",
    "interfaces",
    "routes",
    "dns",
    "address",
    "gateway",
    "interface",
    "version",
    "name",
    "mac",
    "sandbox",
    "mtu",
    "dst",
    "gw",
    "nameservers",
    "domain",
    "search",
    "options",
    "ip4",
    "ip6",
    "ip",
];

fn version() -> impl Strategy<Value = CniVersion> {
    prop::sample::select(CniVersion::ALL.to_vec())
}

fn v4() -> impl Strategy<Value = String> {
    (any::<[u8; 4]>(), 0u8..=32)
        .prop_map(|(o, p)| format!("{}.{}.{}.{}/{p}", o[0], o[1], o[2], o[3]))
}

fn v6() -> impl Strategy<Value = String> {
    (any::<u128>(), 0u8..=128).prop_map(|(a, p)| format!("{}/{p}", std::net::Ipv6Addr::from(a)))
}

/// A valid 1.0.0 result.
fn valid() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec((prop_oneof![v4(), v6()], prop::option::of(0usize..2)), 1..4),
        prop::collection::vec(prop_oneof![v4(), v6()], 0..3),
        prop::collection::vec("[a-z]{1,8}\\.[a-z]{2,3}", 0..3),
    )
        .prop_map(|(ips, routes, search)| {
            let ips: Vec<Value> = ips
                .into_iter()
                .map(|(a, i)| match i {
                    Some(i) => json!({"address": a, "interface": i}),
                    None => json!({"address": a}),
                })
                .collect();
            let routes: Vec<Value> = routes.into_iter().map(|d| json!({"dst": d})).collect();
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "cali0", "mac": "ee:ee:ee:ee:ee:ee"},
                               {"name": "eth0", "sandbox": "/run/netns/p"}],
                "ips": ips, "routes": routes,
                "dns": {"nameservers": ["10.0.0.10"], "search": search}
            })
        })
}

fn check_error(
    v: &Value,
    r: Result<CniResult, cni_protocol::CniError>,
) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!(
            matches!(e.code.0, 1 | 6 | 7),
            "code {} for {v}: {e}",
            e.code.0
        );
        prop_assert!(!e.msg.is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn arbitrary_json_reads_or_fails_clearly(v in json(5, FIELDS), default in version()) {
        check_error(&v, CniResult::from_json(&v, default))?;
    }

    #[test]
    fn valid_results_changed_at_one_place_read_or_fail_clearly(
        valid in valid(), pick in any::<usize>(), with in json(3, FIELDS), default in version()
    ) {
        let v = mutate(&valid, pick, with);
        check_error(&v, CniResult::from_json(&v, default))?;
    }

    #[test]
    fn a_valid_result_round_trips_at_every_version(valid in valid(), at in version()) {
        let r = CniResult::from_json(&valid, CniVersion::V1_0_0).unwrap();
        let written = r.to_json(at);
        let again = CniResult::from_json(&written, at)
            .map_err(|e| TestCaseError::fail(format!("{at}: {written} does not read back: {e}")))?;
        prop_assert_eq!(again.to_json(at), written);
    }
}
