//! Calico parity through libcni on etcd: the Node gate, reclaiming an empty block of another
//! node, and the 3.33 cooldown.

use calico_datastore::Write;
use calico_datastore::model::keys;
use serde_json::json;
use testkit::{CallOpts, require};

use crate::lab::Lab;

/// Mirrors ipam.go prepareAffinityBlocksForHost (the Node is read first) and AssignIP (it
/// is not read): before calico-node registers the node, an automatic ADD is "try again
/// later", names the node and writes nothing; STATUS says the plugin is not available yet;
/// an explicit address works.
#[test]
fn before_the_node_is_registered_adds_are_try_again_later() {
    require!("etcd", "go");
    let lab = Lab::new();
    lab.add_pool("p", "10.244.0.0/16", |_| {});
    lab.install("net", lab.plugin("node-7", json!({})));
    // calico-node has not registered node-7 (yet).
    let node_key = keys::resource("nodes", "node-7");
    lab.db()
        .txn(&[], &[Write::Delete(node_key.clone())])
        .unwrap();
    let before = lab.dump();
    let e = lab.add("net", &lab.pod("a")).unwrap_err();
    assert_eq!(e.code, Some(11), "{e}");
    assert!(
        e.msg.contains("node-7") && e.msg.contains("calico-node"),
        "{e}"
    );
    assert_eq!(lab.dump(), before, "nothing written");
    let e = lab.runtime().status("net").unwrap().unwrap_err();
    assert_eq!(e.code, Some(50), "{e}");
    assert!(e.msg.contains("node-7"), "{e}");
    // IP= does not need the Node.
    let r = lab
        .runtime()
        .add("net", &lab.pod("b"), &CallOpts::args("IP=10.244.3.3"))
        .unwrap()
        .unwrap();
    assert_eq!(r["ips"][0]["address"], "10.244.3.3/26");
    // Registered: automatic assignment works and STATUS is fine.
    lab.register_node("node-7");
    lab.add("net", &lab.pod("a")).unwrap();
    lab.runtime().status("net").unwrap().unwrap();
}

/// Mirrors ipam_block_reader_writer.go findUsableBlock/releaseBlockAffinity with two nodes
/// on etcd: with strict affinity and every block of a small pool claimed, node-1 reclaims
/// node-2's empty block once node-2's claim is a minute old, in one transaction.
#[test]
fn a_node_reclaims_another_nodes_empty_block_from_a_small_pool() {
    require!("etcd", "go");
    let lab = Lab::new();
    // Two /30 blocks.
    lab.add_pool("small", "10.9.0.0/29", |s| s.block_size = 30);
    lab.put_json(
        keys::IPAM_CONFIG,
        &json!({"strict_affinity": true, "auto_allocate_blocks": true}),
    );
    for node in ["node-1", "node-2"] {
        lab.install_on(node, "net", lab.plugin(node, json!({})));
    }
    let (n1, n2) = (lab.node_runtime("node-1"), lab.node_runtime("node-2"));
    let opts = CallOpts::default();
    // node-2 fills one block and claims the other for a fifth pod, which then goes.
    let pods: Vec<_> = (0..5).map(|i| lab.pod(&format!("b{i}"))).collect();
    let mut addrs = Vec::new();
    for p in &pods {
        let r = n2.add("net", p, &opts).unwrap().unwrap();
        addrs.push(r["ips"][0]["address"].as_str().unwrap().to_string());
    }
    let emptied: ipnet::IpNet = addrs[4].parse::<ipnet::IpNet>().unwrap().trunc();
    n2.del("net", &pods[4], &opts).unwrap().unwrap();
    // Claimed just now: node-1 may not take it, and gets nothing.
    let e = n1.add("net", &lab.pod("a0"), &opts).unwrap().unwrap_err();
    assert_eq!(e.code, Some(104), "{e}");
    // A minute later (the claim time moved back instead of waiting).
    let key = keys::block(&emptied);
    let mut block = lab.get_json(&key).unwrap();
    assert_eq!(block["affinity"], "host:node-2");
    block["affinity_claim_time"] = json!("2026-01-01T00:00:00Z");
    lab.put_json(&key, &block);
    let r = n1.add("net", &lab.pod("a0"), &opts).unwrap().unwrap();
    let got: ipnet::IpNet = r["ips"][0]["address"].as_str().unwrap().parse().unwrap();
    assert_eq!(got.trunc(), emptied, "{r}");
    let block = lab.get_json(&key).unwrap();
    assert_eq!(block["affinity"], "host:node-1");
    assert!(lab.get_json(&keys::affinity("node-2", &emptied)).is_none());
    assert_eq!(
        lab.get_json(&keys::affinity("node-1", &emptied)).unwrap()["state"],
        "confirmed"
    );
    // node-2 keeps its full block and has nowhere else to go.
    let e = n2.add("net", &lab.pod("b9"), &opts).unwrap().unwrap_err();
    assert_eq!(e.code, Some(104), "{e}");
    n1.del("net", &lab.pod("a0"), &opts).unwrap().unwrap();
    for p in &pods[..4] {
        n2.del("net", p, &opts).unwrap().unwrap();
    }
}

/// Calico 3.33's ipCooldownSeconds through the plugin: the released address stays taken
/// (marked releasedAt) and the next pod gets another one, even from a block with the
/// released address at the head of its free list.
#[test]
fn with_a_cooldown_a_released_address_is_not_handed_out_again_at_once() {
    require!("etcd", "go");
    let lab = Lab::new();
    lab.add_pool("tiny", "10.8.0.0/30", |s| s.block_size = 30);
    lab.put_json(
        keys::IPAM_CONFIG,
        &json!({"strict_affinity": true, "auto_allocate_blocks": true,
                "ipCooldownSeconds": 600}),
    );
    lab.install("net", lab.plugin("node-1", json!({})));
    let pods: Vec<_> = (0..4).map(|i| lab.pod(&format!("p{i}"))).collect();
    let mut first = String::new();
    for (i, p) in pods.iter().enumerate() {
        let r = lab.add("net", p).unwrap();
        if i == 0 {
            first = Lab::addresses(&r)[0].clone();
        }
    }
    lab.del("net", &pods[0]).unwrap();
    let block = lab
        .get_json("/calico/ipam/v2/assignment/ipv4/block/10.8.0.0-30")
        .unwrap();
    let idx = block["allocations"][0].as_u64().unwrap() as usize;
    assert!(
        block["attributes"][idx]["releasedAt"].is_string(),
        "{block}"
    );
    let e = lab.add("net", &lab.pod("p4")).unwrap_err();
    assert_eq!(e.code, Some(104), "the address is cooling down: {e}");
    assert_eq!(first, "10.8.0.0");
    for p in &pods[1..] {
        lab.del("net", p).unwrap();
    }
}

/// Mirrors ipam.go autoAssign/findOrClaimBlock: at maxBlocksPerHost, or with
/// auto_allocate_blocks off, an ADD that needs a new block fails without borrowing from
/// another node's block (strict affinity off), and leaves nothing behind.
#[test]
fn at_the_block_limit_or_without_auto_allocation_adds_do_not_borrow() {
    require!("etcd", "go");
    let lab = Lab::new();
    lab.add_pool("p", "10.7.0.0/24", |s| s.block_size = 30);
    lab.put_json(
        keys::IPAM_CONFIG,
        &json!({"auto_allocate_blocks": true, "maxBlocksPerHost": 1}),
    );
    for node in ["node-1", "node-2"] {
        lab.install_on(node, "net", lab.plugin(node, json!({})));
    }
    let (n1, n2) = (lab.node_runtime("node-1"), lab.node_runtime("node-2"));
    let opts = CallOpts::default();
    // node-2's block has room to borrow from; node-1 fills its only block.
    n2.add("net", &lab.pod("b0"), &opts).unwrap().unwrap();
    for i in 0..4 {
        n1.add("net", &lab.pod(&format!("a{i}")), &opts)
            .unwrap()
            .unwrap();
    }
    let before = lab.dump();
    let e = n1.add("net", &lab.pod("a4"), &opts).unwrap().unwrap_err();
    assert_eq!(e.code, Some(104), "{e}");
    assert!(e.msg.contains("block limit (1)"), "{e}");
    assert_eq!(lab.dump(), before, "nothing borrowed");
    // A stored {} turns auto-allocation off: no claim, and still no borrowing.
    lab.put_json(keys::IPAM_CONFIG, &json!({}));
    let before = lab.dump();
    let e = n1.add("net", &lab.pod("a4"), &opts).unwrap().unwrap_err();
    assert_eq!(e.code, Some(104), "{e}");
    assert!(e.msg.contains("failed to find or claim a block"), "{e}");
    assert_eq!(lab.dump(), before);
}
