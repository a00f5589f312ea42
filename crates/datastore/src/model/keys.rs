//! Calico's etcd key layout (libcalico-go's etcdv3 backend).

use ipnet::IpNet;

pub const IPAM_CONFIG: &str = "/calico/ipam/v2/config";
pub const HANDLES: &str = "/calico/ipam/v2/handle/";
pub const RESOURCES: &str = "/calico/resources/v3/projectcalico.org/";

/// `ipv4` or `ipv6`, as the keys spell the family.
pub fn family(v4: bool) -> &'static str {
    if v4 { "ipv4" } else { "ipv6" }
}

/// A CIDR as keys carry it: the first `/` becomes `-` (`10.244.1.0-26`).
pub fn cidr_segment(cidr: &IpNet) -> String {
    cidr.to_string().replacen('/', "-", 1)
}

/// The inverse of [`cidr_segment`].
pub fn parse_cidr_segment(seg: &str) -> Option<IpNet> {
    let (ip, len) = seg.rsplit_once('-')?;
    format!("{ip}/{len}").parse().ok()
}

/// All blocks of a family: `/calico/ipam/v2/assignment/ipv4/block/`.
pub fn blocks_prefix(v4: bool) -> String {
    format!("/calico/ipam/v2/assignment/{}/block/", family(v4))
}

/// `/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-26`.
pub fn block(cidr: &IpNet) -> String {
    format!(
        "{}{}",
        blocks_prefix(matches!(cidr, IpNet::V4(_))),
        cidr_segment(cidr)
    )
}

/// The block CIDR a block key names.
pub fn block_cidr_of(key: &str) -> Option<IpNet> {
    parse_cidr_segment(key.rsplit('/').next()?)
}

/// A host's affinities of a family: `/calico/ipam/v2/host/<node>/ipv4/block/`.
pub fn host_affinities_prefix(node: &str, v4: bool) -> String {
    format!("/calico/ipam/v2/host/{node}/{}/block/", family(v4))
}

/// `/calico/ipam/v2/host/<node>/ipv4/block/10.244.1.0-26`.
pub fn affinity(node: &str, cidr: &IpNet) -> String {
    format!(
        "{}{}",
        host_affinities_prefix(node, matches!(cidr, IpNet::V4(_))),
        cidr_segment(cidr)
    )
}

/// The (node, block CIDR) an affinity key names.
pub fn parse_affinity(key: &str) -> Option<(String, IpNet)> {
    let rest = key.strip_prefix("/calico/ipam/v2/host/")?;
    let mut parts = rest.split('/');
    let node = parts.next()?.to_string();
    let _family = parts.next()?;
    (parts.next()? == "block").then_some(())?;
    Some((node, parse_cidr_segment(parts.next()?)?))
}

/// `/calico/ipam/v2/handle/<id>` (the ID is not escaped, as in Calico).
pub fn handle(id: &str) -> String {
    format!("{HANDLES}{id}")
}

/// A cluster-scoped v3 resource: `/calico/resources/v3/projectcalico.org/<plural>/<name>`.
pub fn resource(plural: &str, name: &str) -> String {
    format!("{RESOURCES}{plural}/{name}")
}

/// A namespaced v3 resource: `.../<plural>/<namespace>/<name>`.
pub fn namespaced_resource(plural: &str, namespace: &str, name: &str) -> String {
    format!("{RESOURCES}{plural}/{namespace}/{name}")
}

/// Every resource of a kind: `.../<plural>/`.
pub fn resources_prefix(plural: &str) -> String {
    format!("{RESOURCES}{plural}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    #[test]
    fn keys_are_calicos() {
        assert_eq!(
            block(&net("10.244.1.0/26")),
            "/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-26"
        );
        assert_eq!(
            block(&net("fd00:10:244:1::/122")),
            "/calico/ipam/v2/assignment/ipv6/block/fd00:10:244:1::-122"
        );
        assert_eq!(
            affinity("node-1", &net("10.244.1.0/26")),
            "/calico/ipam/v2/host/node-1/ipv4/block/10.244.1.0-26"
        );
        assert_eq!(
            handle("k8s-pod-network.abc"),
            "/calico/ipam/v2/handle/k8s-pod-network.abc"
        );
        assert_eq!(
            resource("ippools", "default-ipv4-ippool"),
            "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool"
        );
        assert_eq!(
            namespaced_resource("workloadendpoints", "default", "n1-k8s-nginx-eth0"),
            "/calico/resources/v3/projectcalico.org/workloadendpoints/default/n1-k8s-nginx-eth0"
        );
    }

    #[test]
    fn keys_parse_back() {
        let v6 = net("fd00:10:244:1::/122");
        assert_eq!(block_cidr_of(&block(&v6)), Some(v6));
        assert_eq!(
            parse_affinity(&affinity("node-1", &v6)),
            Some(("node-1".to_string(), v6))
        );
        assert_eq!(parse_affinity("/calico/ipam/v2/host/n/ipv4"), None);
    }
}
