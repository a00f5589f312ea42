//! Calico's wiring in real namespaces: a simulated node (the "host") and a pod.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use calico_dataplane::link_removal::{DeletedBy, LinkRemoval, Removed};
use calico_dataplane::netlink::ROUTE_PROTOCOL;
use calico_dataplane::workload::{GATEWAY_V4, GATEWAY_V6, HOST_MAC, default_routes};
use calico_dataplane::{Dataplane, LinuxDataplane, WorkloadSpec};
use ipnet::IpNet;
use std::net::IpAddr;
use testkit::{NetNs, require};

/// The test's UTS namespace bind-mounted on a file, unmounted when dropped (a failing test
/// too).
struct PinnedUts(std::path::PathBuf);

impl PinnedUts {
    fn new(path: std::path::PathBuf) -> Self {
        std::fs::write(&path, "").unwrap();
        let pinned = PinnedUts(path);
        let status = std::process::Command::new("mount")
            .arg("--bind")
            .arg("/proc/self/ns/uts")
            .arg(&pinned.0)
            .status()
            .unwrap();
        assert!(status.success(), "mount --bind");
        pinned
    }
}

impl Drop for PinnedUts {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// `/proc/sys/net/<path>` as read inside `ns`.
fn sysctl_of(ns: &NetNs, path: &str) -> String {
    ns.sh(&format!("cat /proc/sys/net/{path}"))
        .unwrap()
        .trim()
        .to_string()
}

fn spec(pod: &NetNs, host_if: &str) -> WorkloadSpec {
    WorkloadSpec {
        netns: pod.path(),
        ifname: "eth0".into(),
        host_ifname: host_if.into(),
        mtu: Some(1440),
        num_queues: 1,
        pod_mac: [0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
        v4: true,
        v6: true,
        routes: default_routes(),
        allow_ip_forwarding: false,
    }
}

/// Addresses swapped as after an allocation conflict (configure, unconfigure, configure
/// others), on the sockets `create` kept: the pod and the host end up with the second set
/// only.
#[test]
fn addresses_swapped_on_the_kept_sockets() {
    require!(root; "ip");
    let node = NetNs::new("node").unwrap();
    let pod = NetNs::new("pod").unwrap();
    let host_if = format!("cali{}", &testkit::unique_name("x")[2..]);
    let s = WorkloadSpec {
        v6: false,
        ..spec(&pod, &host_if)
    };
    let first: Vec<IpNet> = vec!["10.244.1.5/26".parse().unwrap()];
    let second: Vec<IpNet> = vec!["10.244.1.9/26".parse().unwrap()];
    node.within(|| {
        let dp = LinuxDataplane::default();
        let links = dp.create(&s).unwrap();
        dp.configure(&s, &links, &first).unwrap();
        dp.unconfigure(&s, &links, &first).unwrap();
        dp.configure(&s, &links, &second).unwrap();
        let seen = dp.inspect(&s, &[first[0], second[0]]).unwrap();
        let got: Vec<String> = seen.pod_addresses.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["10.244.1.9/32"]);
        let routed: Vec<String> = seen.host_routes.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(routed, ["10.244.1.9/32"]);
        dp.remove(Some(&s.netns), "eth0").unwrap();
    })
    .unwrap();
}

#[test]
fn create_configure_inspect_remove() {
    require!(root; "ip");
    let node = NetNs::new("node").unwrap();
    let pod = NetNs::new("pod").unwrap();
    let host_if = format!("cali{}", &testkit::unique_name("x")[2..]);
    let s = spec(&pod, &host_if);
    let addrs: Vec<IpNet> = vec![
        "10.244.1.5/26".parse().unwrap(),
        "fd00:10:244::5/122".parse().unwrap(),
    ];
    node.within(|| {
        let dp = LinuxDataplane::default();
        let links = dp.create(&s).unwrap();
        dp.configure(&s, &links, &addrs).unwrap();
        // Configuring again (a retried ADD, or Felix's identical routes) is fine.
        dp.configure(&s, &links, &addrs).unwrap();
        let seen = dp.inspect(&s, &addrs).unwrap();
        let host = seen.host.clone().unwrap();
        assert_eq!(host.mac, Some(HOST_MAC));
        assert!(host.up);
        assert_eq!(host.mtu, Some(1440));
        let podl = seen.pod.clone().unwrap();
        assert_eq!(podl.mac, Some(s.pod_mac));
        let mut got: Vec<String> = seen.pod_addresses.iter().map(ToString::to_string).collect();
        got.sort();
        assert_eq!(got, ["10.244.1.5/32", "fd00:10:244::5/128"]);
        let gw4 = seen
            .pod_routes
            .iter()
            .find(|r| r.gateway == Some(IpAddr::V4(GATEWAY_V4)));
        assert_eq!(gw4.map(|r| r.dst.to_string()), Some("0.0.0.0/0".into()));
        let gw6 = seen
            .pod_routes
            .iter()
            .find(|r| r.gateway == Some(IpAddr::V6(GATEWAY_V6)));
        assert_eq!(gw6.map(|r| r.dst.to_string()), Some("::/0".into()));
        assert!(
            seen.pod_routes
                .iter()
                .any(|r| r.dst.to_string() == "169.254.1.1/32" && r.scope == 253)
        );
        assert_eq!(seen.host_routes.len(), 2, "{:?}", seen.host_routes);
        assert!(
            seen.host_routes
                .iter()
                .all(|r| r.oif == Some(host.index) && r.protocol == ROUTE_PROTOCOL)
        );
    })
    .unwrap();
    // The sysctls as Calico sets them, on the node and in the pod.
    let node_sys = |p: &str| sysctl_of(&node, p);
    assert_eq!(node_sys(&format!("ipv4/conf/{host_if}/proxy_arp")), "1");
    assert_eq!(
        node_sys(&format!("ipv4/conf/{host_if}/route_localnet")),
        "1"
    );
    assert_eq!(node_sys(&format!("ipv4/neigh/{host_if}/proxy_delay")), "0");
    assert_eq!(node_sys(&format!("ipv6/conf/{host_if}/proxy_ndp")), "1");
    assert_eq!(node_sys(&format!("ipv6/conf/{host_if}/accept_ra")), "0");
    let pod_sys = |p: &str| sysctl_of(&pod, p);
    assert_eq!(pod_sys("ipv6/conf/eth0/accept_dad"), "0");
    assert_eq!(pod_sys("ipv4/ip_forward"), "0");
    // The host end's link-local is the pod's IPv6 gateway.
    let ll = node
        .sh(&format!("ip -6 addr show dev {host_if} scope link"))
        .unwrap();
    assert!(ll.contains("fe80::ecee:eeff:feee:eeee"), "{ll}");

    node.within(|| {
        let dp = LinuxDataplane::default();
        dp.remove(Some(&s.netns), "eth0").unwrap();
        // Idempotent, also without a namespace.
        dp.remove(Some(&s.netns), "eth0").unwrap();
        dp.remove(None, "eth0").unwrap();
        assert!(dp.host_interfaces("cali").unwrap().is_empty());
    })
    .unwrap();
    assert!(pod.sh("ip link show eth0").is_err());
}

#[test]
fn a_conflicting_host_route_names_both_interfaces_and_a_missing_netns_is_reported() {
    require!(root; "ip");
    let node = NetNs::new("node").unwrap();
    let pod = NetNs::new("pod").unwrap();
    node.sh("ip link add other0 type veth peer name other1 && ip link set other0 up && ip route add 10.244.1.9/32 dev other0")
        .unwrap();
    let s = WorkloadSpec {
        v6: false,
        ..spec(&pod, "calitest0000001")
    };
    let addrs: Vec<IpNet> = vec!["10.244.1.9/26".parse().unwrap()];
    node.within(|| {
        let dp = LinuxDataplane::default();
        let links = dp.create(&s).unwrap();
        let e = dp.configure(&s, &links, &addrs).unwrap_err().to_string();
        assert!(e.contains("other0") && e.contains("calitest0000001"), "{e}");
        let gone = WorkloadSpec {
            netns: "/run/netns/definitely-not-there".into(),
            ..s.clone()
        };
        let e = dp.create(&gone).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        dp.remove(Some(&s.netns), "eth0").unwrap();
    })
    .unwrap();
}

#[test]
fn a_late_deletion_takes_only_the_interface_it_was_given() {
    // The old sandbox's deletion runs after the new sandbox of the same pod has its veth,
    // whose host end has the same name: it must find nothing of its own and touch nothing.
    require!(root; "ip");
    let node = NetNs::new("node").unwrap();
    let old_pod = NetNs::new("old").unwrap();
    let new_pod = NetNs::new("new").unwrap();
    let host_if = format!("cali{}", &testkit::unique_name("r")[2..]);
    let (old, new) = (spec(&old_pod, &host_if), spec(&new_pod, &host_if));
    let removal_for = |pod: &NetNs| {
        let index = pod
            .sh("ip -o link show eth0")
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        LinkRemoval {
            netns: calico_dataplane::netns::open(&pod.path()).unwrap(),
            netns_path: pod.path(),
            index,
            ifname: "eth0".into(),
        }
    };
    node.within(|| {
        let dp = LinuxDataplane::default();
        dp.create(&old).unwrap();
        let late = removal_for(&old_pod);
        // The new sandbox's ADD replaces the stale host end (Calico does the same).
        dp.create(&new).unwrap();
        assert_eq!(late.run().unwrap(), Removed::InterfaceGone);
        assert!(
            dp.inspect(&new, &[]).unwrap().host.is_some(),
            "new veth kept"
        );

        // With the old sandbox's veth still there, only it goes.
        let other_host_if = format!("{host_if}o");
        let third = NetNs::new("third").unwrap();
        dp.create(&spec(&third, &other_host_if)).unwrap();
        let removal = removal_for(&third);
        assert_eq!(removal.run().unwrap(), Removed::Deleted);
        assert!(third.sh("ip link show eth0").is_err());
        assert!(
            dp.inspect(&new, &[]).unwrap().host.is_some(),
            "new veth kept"
        );

        // The namespace is held by its descriptor: its path removed (the runtime deleting
        // it) changes nothing, the deletion still finds the interface there.
        let fourth = NetNs::new("fourth").unwrap();
        dp.create(&spec(&fourth, &format!("{host_if}f"))).unwrap();
        let removal = removal_for(&fourth);
        drop(fourth);
        assert_eq!(removal.run().unwrap(), Removed::Deleted);
        // Without an agent (none runs on the test host) the hand-over deletes it here.
        let fifth = NetNs::new("fifth").unwrap();
        dp.create(&spec(&fifth, &format!("{host_if}v"))).unwrap();
        assert_eq!(
            removal_for(&fifth).hand_over().unwrap(),
            DeletedBy::Us(Removed::Deleted)
        );
        assert!(fifth.sh("ip link show eth0").is_err());
    })
    .unwrap();
}

/// Mirrors dataplane_linux.go `DoWorkloadNetnsSetUp`: the routes Calico is given (host-local's
/// `ipam.routes`) replace the defaults, each via the gateway of its family; routes of a
/// family the pod lacks are skipped.
#[test]
fn custom_pod_routes_replace_the_defaults() {
    require!(root; "ip");
    let node = NetNs::new("node").unwrap();
    let pod = NetNs::new("pod").unwrap();
    let host_if = format!("cali{}", &testkit::unique_name("r")[2..]);
    let s = WorkloadSpec {
        v6: false,
        routes: vec![
            "10.96.0.0/12".parse().unwrap(),
            "192.168.0.0/16".parse().unwrap(),
            "fd00:96::/64".parse().unwrap(),
        ],
        ..spec(&pod, &host_if)
    };
    let addrs: Vec<IpNet> = vec!["10.85.0.7/24".parse().unwrap()];
    node.within(|| {
        let dp = LinuxDataplane::default();
        let links = dp.create(&s).unwrap();
        dp.configure(&s, &links, &addrs).unwrap();
    })
    .unwrap();
    let v4 = pod.sh("ip -4 route show").unwrap();
    let mut lines: Vec<&str> = v4.lines().map(str::trim).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "10.96.0.0/12 via 169.254.1.1 dev eth0 proto 77",
            "169.254.1.1 dev eth0 proto 77 scope link",
            "192.168.0.0/16 via 169.254.1.1 dev eth0 proto 77",
        ],
        "{v4}"
    );
    let v6 = pod.sh("ip -6 route show").unwrap();
    assert!(
        !v6.contains("fd00:96::"),
        "no IPv6 route in an IPv4 pod: {v6}"
    );
    node.within(|| {
        LinuxDataplane::default()
            .remove(Some(&s.netns), "eth0")
            .unwrap()
    })
    .unwrap();
}

/// A pod whose IPv6 address comes after its link (a delegated IPAM plugin chose the
/// families, so `create` was told IPv4 only) gets the host end Calico gives an IPv6 pod (it
/// sets them from the IPAM result): DAD off, `proxy_ndp` and `forwarding` on, and a
/// link-local gateway that is usable at once (not tentative), and IPv6 traffic flows.
#[test]
fn an_ipv6_address_that_comes_late_gets_the_host_end_of_an_ipv6_pod() {
    require!(root; "ip", "busybox");
    let node = NetNs::new("node").unwrap();
    // Sources for the node's pings (it has no other addresses; a link-local IPv6 one
    // cannot reach the pod), and a route to the pod's IPv4 gateway that is not through
    // the pod's own link (as a node's default route is), for proxy ARP to answer.
    node.sh("ip link set lo up; ip addr add 172.31.99.1/32 dev lo; \
         ip -6 addr add fd00:99::1/128 dev lo; ip route add 169.254.1.1/32 dev lo")
        .unwrap();
    let node_sys = |p: &str| sysctl_of(&node, p);
    let pod = NetNs::new("pod").unwrap();
    let host_if = format!("cali{}", &testkit::unique_name("6")[2..]);
    let s = WorkloadSpec {
        v6: false,
        ..spec(&pod, &host_if)
    };
    let both: Vec<IpNet> = vec![
        "10.244.3.5/26".parse().unwrap(),
        "fd00:244::5/64".parse().unwrap(),
    ];
    node.within(|| {
        let dp = LinuxDataplane::default();
        let links = dp.create(&s).unwrap();
        dp.configure(&s, &links, &both).unwrap();
    })
    .unwrap();
    // Read at once: a link-local address still under DAD would show as tentative.
    let ll = node
        .sh(&format!("ip -6 addr show dev {host_if} scope link"))
        .unwrap();
    assert!(ll.contains("fe80::ecee:eeff:feee:eeee"), "{ll}");
    assert!(!ll.contains("tentative"), "{ll}");
    assert_eq!(node_sys(&format!("ipv6/conf/{host_if}/accept_dad")), "0");
    assert_eq!(node_sys(&format!("ipv6/conf/{host_if}/proxy_ndp")), "1");
    assert_eq!(node_sys(&format!("ipv6/conf/{host_if}/forwarding")), "1");
    assert_eq!(node_sys(&format!("ipv6/conf/{host_if}/accept_ra")), "0");
    let ping = |to: &str| (0..3).any(|_| node.sh(&format!("busybox ping -c1 -W2 {to}")).is_ok());
    assert!(ping("fd00:244::5"), "node -> pod over IPv6");
    assert!(ping("10.244.3.5"), "node -> pod over IPv4");
    node.within(|| {
        LinuxDataplane::default()
            .remove(Some(&s.netns), "eth0")
            .unwrap()
    })
    .unwrap();
}

/// Mirrors dataplane_linux.go `DoWorkloadNetnsSetUp` (`NumTxQueues`/`NumRxQueues` on the veth,
/// which netlink sets on both ends): each end has exactly `num_queues` queues.
#[test]
fn both_ends_get_the_queues_asked_for() {
    require!(root; "ip");
    let node = NetNs::new("node").unwrap();
    for queues in [1, 4] {
        let pod = NetNs::new("pod").unwrap();
        let host_if = format!("cali{}", &testkit::unique_name("q")[2..]);
        let s = WorkloadSpec {
            num_queues: queues,
            ..spec(&pod, &host_if)
        };
        node.within(|| LinuxDataplane::default().create(&s).unwrap())
            .unwrap();
        let want = format!("numtxqueues {queues} numrxqueues {queues} ");
        let host = node.sh(&format!("ip -d link show {host_if}")).unwrap();
        assert!(host.contains(&want), "host end: {host}");
        let inside = pod.sh("ip -d link show eth0").unwrap();
        assert!(inside.contains(&want), "pod end: {inside}");
        node.within(|| {
            LinuxDataplane::default()
                .remove(Some(&s.netns), "eth0")
                .unwrap()
        })
        .unwrap();
    }
}

/// Bad-input finding #7 (and #15's "not a network namespace"): a `CNI_NETNS` that is the
/// node's own namespace is refused before anything is touched (ADD would have turned off the
/// node's `ip_forward`; DEL would have deleted the node's `eth0`), and so is anything that is
/// not a network namespace. Upstream Calico accepts both (`ns.GetNS` checks nsfs only).
#[test]
fn the_callers_own_namespace_or_no_network_namespace_is_refused() {
    use calico_dataplane::DataplaneError;
    use calico_dataplane::netns::{HOST_NETNS, NOT_A_NETNS};
    require!(root; "ip");
    let node = NetNs::new("node").unwrap();
    let pod = NetNs::new("pod").unwrap();
    node.sh("sysctl -qw net.ipv4.ip_forward=1 && ip link add eth0 type veth peer name x0")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    // A FIFO without a writer: opening it would block for good (refused before the open).
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR).unwrap();
    // A namespace of another type pinned as runtimes pin a pod's (a bind mount): its
    // descriptor's link reads as the path, not `uts:[…]`, so only the kernel can tell.
    let pinned_uts = PinnedUts::new(dir.path().join("uts"));
    let refused = |e: DataplaneError, why: &str| match e {
        DataplaneError::NotPodNetns { reason, .. } => assert_eq!(reason, why),
        other => panic!("{why}: got {other}"),
    };
    node.within(|| {
        let dp = LinuxDataplane::default();
        // The thread's own namespace (the node's), and the process's (the test host's).
        for own in ["/proc/thread-self/ns/net", "/proc/self/ns/net"] {
            let s = WorkloadSpec {
                netns: own.into(),
                host_ifname: "calinetnstest01".into(),
                ..spec(&pod, "unused")
            };
            refused(dp.create(&s).unwrap_err(), HOST_NETNS);
            refused(
                dp.remove(Some(own.as_ref()), "eth0").unwrap_err(),
                HOST_NETNS,
            );
            refused(
                dp.remove_detached(Some(own.as_ref()), "eth0").unwrap_err(),
                HOST_NETNS,
            );
            refused(dp.inspect(&s, &[]).unwrap_err(), HOST_NETNS);
        }
        for other in [
            file.as_path(),
            dir.path(),
            fifo.as_path(),
            "/dev/null".as_ref(),
            "/proc/self/ns/mnt".as_ref(),
            "/proc/thread-self/ns/uts".as_ref(),
            pinned_uts.0.as_path(),
        ] {
            let s = WorkloadSpec {
                netns: other.into(),
                host_ifname: "calinetnstest01".into(),
                ..spec(&pod, "unused")
            };
            refused(dp.create(&s).unwrap_err(), NOT_A_NETNS);
            // Removal finds nothing to remove there (a runtime's pin file may outlive its
            // namespace): DEL stays idempotent.
            dp.remove_detached(Some(other), "eth0").unwrap();
            dp.remove(Some(other), "eth0").unwrap();
        }
        // A pod's namespace passes.
        calico_dataplane::netns::open_pod(&pod.path()).unwrap();
    })
    .unwrap();
    assert_eq!(
        node.sh("cat /proc/sys/net/ipv4/ip_forward").unwrap().trim(),
        "1"
    );
    node.sh("ip link show eth0").unwrap();
    assert!(node.sh("ip link show calinetnstest01").is_err());
    assert!(pod.sh("ip link show eth0").is_err());
}
