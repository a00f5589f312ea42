//! `NetConf::from_value` (every call's config) never panics: arbitrary JSON and valid
//! configs changed at one place give the config or a clear error, code 6 or 7.

use calico_netconf::NetConf;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::values::{json, leaf, mutate};

/// Field names of Calico's config and its nested sections, so generated objects reach them.
const FIELDS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "ipam",
    "policy",
    "kubernetes",
    "feature_control",
    "container_settings",
    "mtu",
    "nodename",
    "nodename_file",
    "nodename_file_optional",
    "etcd_endpoints",
    "etcd_ca_cert_file",
    "log_level",
    "log_file_path",
    "ipam_lock_file",
    "datastore_type",
    "assign_ipv4",
    "assign_ipv6",
    "ipv4_pools",
    "subnet",
    "kubeconfig",
    "k8s_api_root",
    "ip_addrs_no_ipam",
    "allow_ip_forwarding",
    "num_queues",
    "args",
    "runtimeConfig",
    "prevResult",
    "capabilities",
    "dns",
];

/// The nested sections of the config: objects (or null), never arrays (defect #14).
const NESTED: &[&str] = &[
    "ipam",
    "policy",
    "kubernetes",
    "feature_control",
    "container_settings",
];

fn valid() -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "net", "type": "calico", "mtu": 1440,
        "etcd_endpoints": "https://10.0.0.1:2379", "log_level": "info", "nodename": "node-1",
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "ipv4_pools": ["10.0.0.0/16"]},
        "policy": {"type": "k8s"}, "kubernetes": {"kubeconfig": "/etc/k"},
        "feature_control": {"floating_ips": false}, "container_settings": {"allow_ip_forwarding": false}
    })
}

fn decode(v: &Value) -> Result<(), TestCaseError> {
    let Value::Object(map) = v else {
        return Ok(());
    };
    match NetConf::from_value(map) {
        Ok(_) => Ok(()),
        Err(e) => {
            prop_assert!(matches!(e.code.0, 6 | 7), "code {} for {v}: {e}", e.code.0);
            prop_assert!(!e.msg.is_empty());
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn arbitrary_objects_decode_or_fail_clearly(v in json(6, FIELDS)) {
        decode(&v)?;
    }

    #[test]
    fn valid_configs_changed_at_one_place_decode_or_fail_clearly(
        pick in any::<usize>(), with in json(3, FIELDS)
    ) {
        decode(&mutate(&valid(), pick, with))?;
    }

    /// A deep value (past serde_json's recursion limit of 128, up to 5000 levels) in any
    /// field, decoded from text as a plugin decodes its stdin, on a small stack: code 6 (too
    /// deep) or the config, never an overflow.
    #[test]
    fn deep_values_in_any_field_do_not_overflow(depth in 100usize..5000, field in prop::sample::select(FIELDS)) {
        let mut v = valid();
        v[field] = json!("DEEP");
        let text = v.to_string().replace("\"DEEP\"", &format!("{}null{}", "[".repeat(depth), "]".repeat(depth)));
        let verdict = std::thread::Builder::new()
            .stack_size(SMALL_STACK)
            .spawn(move || -> Result<(), String> {
                match cni_protocol::request::decode_object(text.as_bytes()) {
                    Err(e) if e.code.0 == 6 => Ok(()),
                    Err(e) => Err(format!("depth {depth}: code {} ({e})", e.code.0)),
                    Ok(map) => match NetConf::from_value(&map) {
                        Ok(_) => Ok(()),
                        Err(e) if matches!(e.code.0, 6 | 7) => Ok(()),
                        Err(e) => Err(format!("depth {depth}: code {} ({e})", e.code.0)),
                    },
                }
            })
            .unwrap()
            .join();
        prop_assert!(verdict.is_ok(), "depth {} in {}: the decoder overflowed or panicked", depth, field);
        let verdict = verdict.unwrap();
        prop_assert!(verdict.is_ok(), "{}", verdict.unwrap_err());
    }
}

/// The stack a deep decode gets: small, so unbounded recursion shows. A debug build's
/// decoder needs a few KiB a level, so serde_json's 128 levels fit in 1 MiB (not in 256 KiB)
/// and 5000 unbounded ones would not.
const SMALL_STACK: usize = 1 << 20;

/// Defect #14: an array (or any non-object) where a section belongs is code 7 naming it.
#[test]
fn sections_must_be_objects() {
    crate::pending(
        "#14",
        concat!(module_path!(), "::sections_must_be_objects"),
        || {
            proptest!(crate::config(), |(section in prop::sample::select(NESTED),
                                       with in prop_oneof![
                                           prop::collection::vec(leaf(), 0..3).prop_map(Value::Array),
                                           leaf().prop_filter("not null", |v| !v.is_null())])| {
                let mut v = valid();
                v[section] = with.clone();
                let e = NetConf::from_value(v.as_object().unwrap());
                prop_assert!(e.is_err(), "{section} = {with} was accepted");
                let e = e.unwrap_err();
                prop_assert_eq!(e.code.0, 7);
                prop_assert!(e.msg.contains(section), "{}", e.msg);
            });
        },
    );
}
