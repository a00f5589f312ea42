//! VXLAN routing between two simulated nodes, programmed as Felix's VXLAN manager does it
//! (felix/dataplane/linux/vxlan_mgr.go): the `vxlan.calico` device, `<block> via <remote
//! VTEP> dev vxlan.calico onlink`, a permanent ARP entry and an FDB entry per remote VTEP,
//! and real traffic between "pod" addresses; and whether IPIP exists on this kernel.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use calico_dataplane::neigh::{
    FdbEntry, Neighbor, apply_fdb, apply_neighbors, list_fdb, list_neighbors,
};
use calico_dataplane::netlink::Netlink;
use calico_dataplane::routes::{PROTO_VXLAN, RouteSpec, RouteTable};
use calico_dataplane::vxlan::{
    DEFAULT_PORT, DEFAULT_VNI, VXLAN_DEVICE, VxlanDevice, ensure_vxlan, ipip_support,
    observe_vxlan, remove_vxlan,
};
use std::net::{IpAddr, Ipv4Addr};
use testkit::{NetNs, require};

/// One simulated node: its underlay address, VTEP (tunnel address, MAC), block and a pod
/// address in it (on `lo`).
struct Node {
    ns: NetNs,
    underlay: Ipv4Addr,
    vtep: Ipv4Addr,
    mac: [u8; 6],
    block: &'static str,
    pod: Ipv4Addr,
}

fn device(n: &Node) -> VxlanDevice {
    VxlanDevice {
        name: VXLAN_DEVICE.into(),
        vni: DEFAULT_VNI,
        port: DEFAULT_PORT,
        local: n.underlay,
        parent_index: None,
        mac: n.mac,
        mtu: 1450,
        address: n.vtep,
    }
}

/// Two namespaces joined by a veth pair `ul0` (the underlay), 192.168.60.0/24.
fn two_nodes() -> (Node, Node) {
    let a = NetNs::new("vxa").unwrap();
    let b = NetNs::new("vxb").unwrap();
    a.sh(&format!(
        "ip link set lo up && ip link add ul0 type veth peer name ul0 netns {} && \
         ip addr add 192.168.60.1/24 dev ul0 && ip link set ul0 up && \
         ip addr add 10.244.1.5/32 dev lo",
        b.name()
    ))
    .unwrap();
    b.sh(
        "ip link set lo up && ip addr add 192.168.60.2/24 dev ul0 && ip link set ul0 up && \
         ip addr add 10.244.2.5/32 dev lo",
    )
    .unwrap();
    (
        Node {
            ns: a,
            underlay: Ipv4Addr::new(192, 168, 60, 1),
            vtep: Ipv4Addr::new(10, 244, 1, 0),
            mac: [0x66, 0x0a, 0, 0, 0, 1],
            block: "10.244.1.0/26",
            pod: Ipv4Addr::new(10, 244, 1, 5),
        },
        Node {
            ns: b,
            underlay: Ipv4Addr::new(192, 168, 60, 2),
            vtep: Ipv4Addr::new(10, 244, 2, 0),
            mac: [0x66, 0x0a, 0, 0, 0, 2],
            block: "10.244.2.0/26",
            pod: Ipv4Addr::new(10, 244, 2, 5),
        },
    )
}

/// Programs `local`'s side towards `remote` as Felix does: device, route, ARP, FDB.
fn program(local: &Node, remote: &Node) -> u32 {
    local
        .ns
        .within(|| {
            let table = RouteTable::host().unwrap();
            let nl = table.netlink();
            let index = ensure_vxlan(nl, &device(local)).unwrap();
            let vtep = IpAddr::V4(remote.vtep);
            apply_neighbors(nl, index, &[(vtep, remote.mac)]).unwrap();
            apply_fdb(nl, index, &[(remote.mac, IpAddr::V4(remote.underlay))]).unwrap();
            let route = RouteSpec::onlink(remote.block.parse().unwrap(), vtep, index, PROTO_VXLAN);
            let stats = table.apply(&[route], PROTO_VXLAN).unwrap();
            assert!(stats.failures.is_empty(), "{stats:?}");
            index
        })
        .unwrap()
}

fn ping(from: &Node, to: &Node) -> bool {
    let out = from
        .ns
        .run(
            "busybox",
            [
                "ping",
                "-c1",
                "-W2",
                "-I",
                &from.pod.to_string(),
                &to.pod.to_string(),
            ],
        )
        .unwrap();
    out.status.success()
}

/// Ours: the kernel adds entries of its own (IPv6 multicast), which are not permanent.
fn permanent_neighbors(nl: &Netlink, index: u32) -> Vec<Neighbor> {
    let mut all = list_neighbors(nl, index).unwrap();
    all.retain(|n| n.permanent);
    all
}

#[test]
fn pods_reach_each_other_over_vxlan_calico() {
    require!(root; "ip", "bridge", "busybox");
    let (a, b) = two_nodes();
    let ia = program(&a, &b);
    program(&b, &a);
    assert!(ping(&a, &b), "pod on A cannot reach pod on B over VXLAN");
    assert!(ping(&b, &a), "pod on B cannot reach pod on A over VXLAN");
    let shown = a.ns.sh("ip -d link show vxlan.calico").unwrap();
    assert!(
        shown.contains("vxlan id 4096")
            && shown.contains("dstport 4789")
            && shown.contains("nolearning"),
        "{shown}"
    );
    let route = a.ns.sh("ip route show proto 80").unwrap();
    assert!(
        route.contains("10.244.2.0/26 via 10.244.2.0 dev vxlan.calico") && route.contains("onlink"),
        "{route}"
    );
    // As `bridge fdb replace 66:0a:00:00:00:02 dev vxlan.calico dst 192.168.60.2 self
    // permanent` would have made it.
    let fdb = a.ns.sh("bridge fdb show dev vxlan.calico").unwrap();
    assert!(
        fdb.contains("66:0a:00:00:00:02 dst 192.168.60.2 self permanent"),
        "{fdb}"
    );
    let arp = a.ns.sh("ip neigh show dev vxlan.calico").unwrap();
    assert!(
        arp.contains("10.244.2.0 lladdr 66:0a:00:00:00:02 PERMANENT"),
        "{arp}"
    );

    a.ns.within(|| {
        let nl = Netlink::host().unwrap();
        // What was programmed reads back.
        assert_eq!(
            permanent_neighbors(&nl, ia),
            [Neighbor {
                ip: IpAddr::V4(b.vtep),
                mac: b.mac,
                permanent: true
            }]
        );
        assert_eq!(
            list_fdb(&nl, ia).unwrap(),
            [FdbEntry {
                mac: b.mac,
                dst: IpAddr::V4(b.underlay),
                permanent: true
            }]
        );
        // Programming again changes nothing.
        let again = apply_neighbors(&nl, ia, &[(IpAddr::V4(b.vtep), b.mac)]).unwrap();
        assert_eq!((again.added, again.removed, again.unchanged), (0, 0, 1));
        let again = apply_fdb(&nl, ia, &[(b.mac, IpAddr::V4(b.underlay))]).unwrap();
        assert_eq!((again.added, again.removed, again.unchanged), (0, 0, 1));

        // A converge removes extras and moves a changed entry (IPv6 too).
        let extra_mac = [0x66, 0x0a, 0, 0, 0, 9];
        let v6: IpAddr = "fd00:244::9".parse().unwrap();
        apply_neighbors(&nl, ia, &[(IpAddr::V4(b.vtep), b.mac), (v6, extra_mac)]).unwrap();
        apply_fdb(
            &nl,
            ia,
            &[
                (b.mac, IpAddr::V4(b.underlay)),
                (extra_mac, "192.168.60.9".parse().unwrap()),
            ],
        )
        .unwrap();
        assert_eq!(permanent_neighbors(&nl, ia).len(), 2);
        assert_eq!(list_fdb(&nl, ia).unwrap().len(), 2);
        let moved = [0x66, 0x0a, 0, 0, 0, 7];
        let s = apply_neighbors(&nl, ia, &[(IpAddr::V4(b.vtep), moved)]).unwrap();
        assert_eq!((s.added, s.removed), (1, 1), "{s:?}");
        assert_eq!(
            permanent_neighbors(&nl, ia),
            [Neighbor {
                ip: IpAddr::V4(b.vtep),
                mac: moved,
                permanent: true
            }]
        );
        let s = apply_fdb(&nl, ia, &[(b.mac, IpAddr::V4(b.underlay))]).unwrap();
        assert_eq!((s.added, s.removed), (0, 1), "{s:?}");
        // Back as Felix wants it.
        apply_neighbors(&nl, ia, &[(IpAddr::V4(b.vtep), b.mac)]).unwrap();
    })
    .unwrap();
    assert!(
        ping(&a, &b),
        "traffic stopped after the entries were converged back"
    );
}

#[test]
fn ensure_vxlan_is_idempotent_and_fixes_what_differs() {
    require!(root; "ip");
    let (a, b) = two_nodes();
    drop(b);
    let want = device(&a);
    let first =
        a.ns.within(|| {
            let nl = Netlink::host().unwrap();
            let index = ensure_vxlan(&nl, &want).unwrap();
            assert_eq!(ensure_vxlan(&nl, &want).unwrap(), index);
            index
        })
        .unwrap();
    // Someone changes MTU and MAC, takes it down and adds an address.
    a.ns.sh(
        "ip link set vxlan.calico down && ip link set vxlan.calico mtu 1300 && \
         ip link set vxlan.calico address 66:0a:00:00:00:99 && \
         ip addr add 10.99.0.1/24 dev vxlan.calico",
    )
    .unwrap();
    a.ns.within(|| {
        let nl = Netlink::host().unwrap();
        // Fixed in place: same device.
        assert_eq!(ensure_vxlan(&nl, &want).unwrap(), first);
        let seen = observe_vxlan(&nl, VXLAN_DEVICE).unwrap().unwrap();
        assert_eq!(seen.mtu, Some(1450));
        assert_eq!(seen.mac, Some(want.mac));
        assert!(seen.up);
        assert_eq!(seen.learning, Some(false));
        assert_eq!(
            nl.addresses(first).unwrap(),
            ["10.244.1.0/32".parse().unwrap()]
        );
        // A different VNI cannot be changed in place: the device is made again.
        let mut other_vni = want.clone();
        other_vni.vni = 4097;
        let index = ensure_vxlan(&nl, &other_vni).unwrap();
        let seen = observe_vxlan(&nl, VXLAN_DEVICE).unwrap().unwrap();
        assert_eq!((seen.index, seen.vni), (index, Some(4097)));
        remove_vxlan(&nl, VXLAN_DEVICE).unwrap();
        remove_vxlan(&nl, VXLAN_DEVICE).unwrap();
        assert!(observe_vxlan(&nl, VXLAN_DEVICE).unwrap().is_none());
    })
    .unwrap();
}

#[test]
fn ipip_availability_is_reported_with_its_reason() {
    require!(root);
    let support = ipip_support();
    if support.available {
        eprintln!("ipip is available here: {}", support.reason);
    } else {
        // Not a failure: this kernel is built without CONFIG_NET_IPIP, so the agent reports
        // IPIP as unavailable and IPIP pools can only be checked by their route shape.
        eprintln!(
            "ipip is not available here (expected on this kernel): {}",
            support.reason
        );
        assert!(!support.reason.is_empty());
        assert!(!std::path::Path::new("/sys/module/ipip").exists() || !support.available);
    }
    // The probe ran in a throwaway namespace: nothing of it is left in ours.
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("ipipprobe"));
}
