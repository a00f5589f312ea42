//! The datastore's stored values as the plugins read them from etcd (blocks, handles,
//! affinities, IP pools, workload endpoints): arbitrary bytes and valid values changed at one
//! place decode or fail, never panic; valid values round-trip.

use calico_datastore::Kv;
use calico_datastore::model::{
    AllocationBlock, BlockAffinity, IpPool, IpamHandle, WorkloadEndpoint,
};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::values::{json, mutate};

const FIELDS: &[&str] = &[
    "cidr",
    "affinity",
    "allocations",
    "unallocated",
    "attributes",
    "sequenceNumber",
    "sequenceNumberForAllocation",
    "deleted",
    "handle_id",
    "secondary",
    "block",
    "state",
    "kind",
    "apiVersion",
    "metadata",
    "spec",
    "name",
    "namespace",
    "nodeSelector",
    "blockSize",
    "ipNetworks",
    "node",
    "pod",
    "endpoint",
    "interfaceName",
    "ipipMode",
    "vxlanMode",
];

fn block() -> Value {
    json!({"cidr": "10.244.1.0/30", "affinity": "host:node-1",
           "allocations": [0, null, 1, null], "unallocated": [1, 3],
           "attributes": [{"handle_id": "h1", "secondary": {"node": "node-1"}},
                          {"handle_id": "h2", "secondary": null}],
           "sequenceNumber": 7, "sequenceNumberForAllocation": {"0": 3, "2": 5}, "deleted": false})
}

fn handle() -> Value {
    json!({"block": {"10.244.1.0/30": 2}, "deleted": false})
}

fn affinity() -> Value {
    json!({"state": "confirmed", "deleted": false})
}

fn pool() -> Value {
    json!({"kind": "IPPool", "apiVersion": "projectcalico.org/v3",
           "metadata": {"name": "p", "labels": {"a": "b"}},
           "spec": {"cidr": "10.244.0.0/16", "blockSize": 26, "nodeSelector": "all()",
                    "ipipMode": "Never", "vxlanMode": "Always", "natOutgoing": true}})
}

fn endpoint() -> Value {
    json!({"kind": "WorkloadEndpoint", "apiVersion": "projectcalico.org/v3",
           "metadata": {"name": "node--1-k8s-p-eth0", "namespace": "default",
                        "labels": {"projectcalico.org/namespace": "default"}},
           "spec": {"orchestrator": "k8s", "node": "node-1", "pod": "p", "endpoint": "eth0",
                    "containerID": "c1", "interfaceName": "cali12345", "mac": "ee:ee:ee:ee:ee:ee",
                    "ipNetworks": ["10.244.1.1/32"], "profiles": ["kns.default"],
                    "ports": [{"name": "http", "protocol": "TCP", "port": 80, "hostPort": 0, "hostIP": ""}]}})
}

/// Every decoder, on `bytes`; none may panic.
fn decode_all(bytes: &[u8]) {
    let kv = Kv {
        key: "/calico/x".into(),
        value: bytes.to_vec(),
        mod_revision: 3,
    };
    let _ = serde_json::from_slice::<AllocationBlock>(bytes);
    let _ = serde_json::from_slice::<IpamHandle>(bytes);
    let _ = BlockAffinity::from_bytes(bytes);
    let _ = IpPool::from_kv(&kv);
    let _ = WorkloadEndpoint::from_kv(&kv);
}

fn valid_value() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![block(), handle(), affinity(), pool(), endpoint()])
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(v in json(5, FIELDS)) {
        decode_all(v.to_string().as_bytes());
    }

    #[test]
    fn valid_values_changed_at_one_place_never_panic(
        valid in valid_value(), pick in any::<usize>(), with in json(3, FIELDS)
    ) {
        decode_all(mutate(&valid, pick, with).to_string().as_bytes());
    }

    #[test]
    fn valid_values_with_bytes_flipped_never_panic(
        valid in valid_value(), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)
    ) {
        let mut bytes = valid.to_string().into_bytes();
        for (at, b) in flips {
            let at = at % bytes.len();
            bytes[at] = b;
        }
        decode_all(&bytes);
    }
}

/// The valid values decode, and write back to what decodes the same.
#[test]
fn valid_values_round_trip() {
    let b: AllocationBlock = serde_json::from_value(block()).unwrap();
    let again: AllocationBlock = serde_json::from_slice(&serde_json::to_vec(&b).unwrap()).unwrap();
    assert_eq!(again, b);
    let h: IpamHandle = serde_json::from_value(handle()).unwrap();
    assert_eq!(
        serde_json::from_slice::<IpamHandle>(&serde_json::to_vec(&h).unwrap()).unwrap(),
        h
    );
    assert!(
        BlockAffinity::from_bytes(affinity().to_string().as_bytes())
            .unwrap()
            .is_confirmed()
    );
    for v in [pool(), endpoint()] {
        let kv = Kv {
            key: "/k".into(),
            value: v.to_string().into_bytes(),
            mod_revision: 9,
        };
        if v["kind"] == "IPPool" {
            let p = IpPool::from_kv(&kv).unwrap();
            let kv2 = Kv {
                value: p.to_stored().unwrap(),
                ..kv
            };
            assert_eq!(IpPool::from_kv(&kv2).unwrap(), p);
        } else {
            let w = WorkloadEndpoint::from_kv(&kv).unwrap();
            let kv2 = Kv {
                value: w.to_stored().unwrap(),
                ..kv
            };
            assert_eq!(WorkloadEndpoint::from_kv(&kv2).unwrap(), w);
        }
    }
}
