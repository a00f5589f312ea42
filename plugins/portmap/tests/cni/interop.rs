//! The reference plugin (Debian's containernetworking-plugins) and ours remove each
//! other's rules.

use crate::common::*;
use serde_json::{Value, json};
use testkit::{CniPathDir, NetNs, Runtime, require};

#[test]
fn reference_and_ours_delete_each_others_rules() {
    require!(root; "etcd", "go", "ip", "iptables", "nft", "/usr/lib/cni/portmap");
    let c = cluster(1);
    let node = c.node(0);
    // The reference runtime: our calico, the reference portmap.
    let ref_path = CniPathDir::new().unwrap();
    ref_path.add_ours("calico").unwrap();
    ref_path.add_ours("calico-ipam").unwrap();
    ref_path.add_reference("portmap").unwrap();
    let reference = Runtime::on_node(node, ref_path.path());
    // Our portmap with its default backend (nftables here) still finds the reference's
    // iptables rules on DEL, even without the mappings.
    c.install(0, &conflist(json!({}))).unwrap();
    let a = NetNs::new("pra").unwrap();
    let ida = new_id("pra");
    reference
        .add(NET, &a.path(), &opts(&ida, two_mappings()))
        .unwrap()
        .unwrap();
    assert!(
        rules(node).contains(&chain_of(&ida)),
        "the reference made its chain"
    );
    c.runtime(0)
        .del(NET, &a.path(), &opts(&ida, Value::Null))
        .unwrap()
        .unwrap();
    let left = rules(node);
    assert!(
        !left.contains(&chain_of(&ida)) && !left.contains(&ida),
        "ours removed the reference's rules:\n{left}"
    );

    // Ours with the iptables backend; the reference's DEL (given the mappings, as it needs)
    // removes them, and our next ADD of the same port is not blocked by our record.
    c.install(0, &conflist(json!({"backend": "iptables"})))
        .unwrap();
    let b = NetNs::new("prb").unwrap();
    let idb = new_id("prb");
    c.runtime(0)
        .add(NET, &b.path(), &opts(&idb, two_mappings()))
        .unwrap()
        .unwrap();
    assert!(rules(node).contains(&chain_of(&idb)));
    reference
        .del(NET, &b.path(), &opts(&idb, two_mappings()))
        .unwrap()
        .unwrap();
    let left = rules(node);
    assert!(
        !left.contains(&chain_of(&idb)),
        "the reference removed ours:\n{left}"
    );
    let d = NetNs::new("prd").unwrap();
    let idd = new_id("prd");
    c.runtime(0)
        .add(NET, &d.path(), &opts(&idd, two_mappings()))
        .unwrap()
        .unwrap();
    let _echo = Echo::start(&d, &[80], &[]);
    let from = std::net::SocketAddr::new(std::net::IpAddr::V4(node.underlay_ip()), 8080);
    assert!(
        tcp_source(node.netns(), from).is_some(),
        "the port forwards to the new pod"
    );
    c.runtime(0)
        .del(NET, &d.path(), &opts(&idd, Value::Null))
        .unwrap()
        .unwrap();
    // The reference's own DEL without mappings leaves its rules (its known leak); ours
    // cleans up after it.
    c.runtime(0)
        .del(NET, &b.path(), &opts(&idb, Value::Null))
        .unwrap()
        .unwrap();
    assert!(!rules(node).contains("CNI-DN-"), "{}", rules(node));
}
