//! `get` output: calicoctl's `ps`/`wide` tables (Go tabwriter), and YAML/JSON of an object,
//! a `<Kind>List`, or a bare array when several names were asked for.
//!
//! Cells are filled as calicoctl's column templates fill them; its `join` writes list items
//! with Go's `%v` (so a WorkloadEndpoint's NAT `{internalIP externalIP}` struct prints as
//! `{10.0.0.1 172.16.0.1}`) and map entries as sorted `k=v`.

use super::{API_VERSION, Kind, Object};
use crate::{gofmt, yaml};
use serde_json::{Value, json};

/// The `-o` formats we support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ps,
    Wide,
    Yaml,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "ps" => Some(Format::Ps),
            "wide" => Some(Format::Wide),
            "yaml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// What one `get` argument produced: the whole kind (no name given) or one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    List {
        kind: Kind,
        revision: i64,
        items: Vec<Object>,
    },
    One(Box<Object>),
}

impl Fetched {
    fn kind(&self) -> Kind {
        match self {
            Fetched::List { kind, .. } => *kind,
            Fetched::One(o) => o.kind(),
        }
    }

    fn items(&self) -> Vec<&Object> {
        match self {
            Fetched::List { items, .. } => items.iter().collect(),
            Fetched::One(o) => vec![&**o],
        }
    }

    /// The Go object calicoctl would marshal.
    pub fn to_json(&self) -> Value {
        match self {
            Fetched::One(o) => o.to_json(),
            Fetched::List {
                kind,
                revision,
                items,
            } => json!({
                "kind": format!("{}List", kind.name()),
                "apiVersion": API_VERSION,
                "metadata": {"resourceVersion": revision.to_string()},
                "items": items.iter().map(Object::to_json).collect::<Vec<_>>(),
            }),
        }
    }
}

/// The table headings of a kind.
pub fn headings(kind: Kind, wide: bool) -> &'static [&'static str] {
    match (kind, wide) {
        (Kind::IpPool, false) => &["NAME", "CIDR", "SELECTOR"],
        (Kind::IpPool, true) => &[
            "NAME",
            "CIDR",
            "NAT",
            "IPIPMODE",
            "VXLANMODE",
            "DISABLED",
            "DISABLEBGPEXPORT",
            "SELECTOR",
            "ASSIGNMENTMODE",
        ],
        (Kind::Node, false) => &["NAME"],
        (Kind::Node, true) => &["NAME", "ASN", "IPV4", "IPV6"],
        (Kind::IpamConfiguration, false) => &["NAME", "STRICTAFFINITY", "AUTOALLOCATEBLOCKS"],
        (Kind::IpamConfiguration, true) => &[
            "NAME",
            "STRICTAFFINITY",
            "AUTOALLOCATEBLOCKS",
            "MAXBLOCKSPERHOST",
        ],
        (Kind::WorkloadEndpoint, false) => &["WORKLOAD", "NODE", "NETWORKS", "INTERFACE"],
        (Kind::WorkloadEndpoint, true) => &[
            "NAME",
            "WORKLOAD",
            "NODE",
            "NETWORKS",
            "INTERFACE",
            "PROFILES",
            "NATS",
        ],
        (Kind::Profile, false) => &["NAME"],
        (Kind::Profile, true) => &["NAME", "LABELS"],
        // calicoctl/resourcemgr/bgpconfig.go and bgppeer.go: -o wide is the same table.
        (Kind::BgpConfiguration, _) => &["NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"],
        (Kind::BgpPeer, _) => &["NAME", "PEERIP", "NODE", "ASN"],
        // calicoctl/resourcemgr/networkpolicy.go, globalnetworkpolicy.go, tier.go,
        // networkset.go, globalnetworkset.go, felixconfig.go.
        (Kind::NetworkPolicy | Kind::GlobalNetworkPolicy, false) => &["NAME", "TIER"],
        (Kind::NetworkPolicy | Kind::GlobalNetworkPolicy, true) => {
            &["NAME", "TIER", "ORDER", "SELECTOR"]
        }
        (Kind::Tier, _) => &["NAME", "ORDER"],
        (Kind::NetworkSet | Kind::GlobalNetworkSet, false) => &["NAME"],
        (Kind::NetworkSet | Kind::GlobalNetworkSet, true) => &["NAME", "NETS"],
        (Kind::FelixConfiguration, _) => &["NAME"],
    }
}

/// How `get` lays out its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableOpts {
    /// Shown in parentheses for a Node with BGP settings but no AS number of its own.
    pub global_asn: u32,
    /// `-n` or `-A` was given: a namespaced kind's table starts with a NAMESPACE column.
    pub namespace_column: bool,
}

impl TableOpts {
    pub fn new(global_asn: u32) -> Self {
        TableOpts {
            global_asn,
            namespace_column: false,
        }
    }
}

/// A NAT mapping as Go's `%v` prints calicoctl's `IPNAT` struct: `{internal external}`.
fn nat_cell(nat: &Value) -> String {
    let field = |k: &str| nat.get(k).and_then(Value::as_str).unwrap_or_default();
    format!("{{{} {}}}", field("internalIP"), field("externalIP"))
}

/// `{{.Spec.Order}}` on a `*float64`: Go's `%v` of the number, `<nil>` when unset.
fn order_cell(order: Option<f64>) -> String {
    order.map_or("<nil>".into(), calico_validation::go_float)
}

/// calicoctl's `joinAndTruncate`: items joined, cut to `max` bytes ending in `...`.
fn join_and_truncate(items: &[String], sep: &str, max: usize) -> String {
    let mut buf = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            buf.push_str(sep);
        }
        buf.push_str(item);
        if max > 0 && buf.len() > max {
            let mut cut = max.saturating_sub(3);
            while !buf.is_char_boundary(cut) {
                cut -= 1;
            }
            buf.truncate(cut);
            buf.push_str("...");
            break;
        }
    }
    buf
}

fn or_never(s: &str) -> String {
    if s.is_empty() {
        "Never".into()
    } else {
        s.into()
    }
}

/// One table row, as calicoctl's column templates fill it. `global_asn` is shown in
/// parentheses for a Node with BGP settings but no AS number of its own.
pub fn row(obj: &Object, wide: bool, global_asn: u32) -> Vec<String> {
    let name = obj.name().to_string();
    match obj {
        Object::IpPool(p) => {
            let s = &p.spec;
            if wide {
                vec![
                    name,
                    s.cidr.clone(),
                    s.nat_outgoing.to_string(),
                    or_never(&s.ipip_mode),
                    or_never(&s.vxlan_mode),
                    s.disabled.to_string(),
                    s.disable_bgp_export.to_string(),
                    s.node_selector.clone(),
                    s.assignment_mode.clone().unwrap_or_default(),
                ]
            } else {
                vec![name, s.cidr.clone(), s.node_selector.clone()]
            }
        }
        Object::Node(n) => {
            if !wide {
                return vec![name];
            }
            let bgp = n.spec.bgp.as_ref();
            let asn = bgp
                .map(|b| match b.as_number {
                    Some(a) => a.0.to_string(),
                    None => format!("({global_asn})"),
                })
                .unwrap_or_default();
            vec![
                name,
                asn,
                bgp.map(|b| b.ipv4_address.clone()).unwrap_or_default(),
                bgp.map(|b| b.ipv6_address.clone()).unwrap_or_default(),
            ]
        }
        Object::IpamConfiguration(c) => {
            let mut r = vec![
                name,
                c.spec.strict_affinity.to_string(),
                c.spec.auto_allocate_blocks.to_string(),
            ];
            if wide {
                r.push(c.spec.max_blocks_per_host.to_string());
            }
            r
        }
        Object::WorkloadEndpoint(w) => {
            let s = &w.spec;
            let workload = if s.workload.is_empty() {
                s.pod.clone()
            } else {
                s.workload.clone()
            };
            let mut r = vec![
                workload,
                s.node.clone(),
                s.ip_networks.join(","),
                s.interface_name.clone(),
            ];
            if wide {
                r.insert(0, name);
                r.push(s.profiles.join(","));
                r.push(s.ip_nats.iter().map(nat_cell).collect::<Vec<_>>().join(","));
            }
            r
        }
        Object::Profile(p) => {
            if !wide {
                return vec![name];
            }
            // Sorted as `k=v` strings, as calicoctl sorts them (not by key: `a.b=` < `a=`).
            let mut labels: Vec<String> = p
                .spec
                .labels_to_apply
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            labels.sort();
            vec![name, labels.join(",")]
        }
        // `{{if .Spec.X}}{{.Spec.X}}{{else}}-{{end}}` on pointers: set (even to false)
        // prints the value.
        Object::BgpConfiguration(c) => vec![
            name,
            c.spec.log_severity_screen.clone(),
            c.spec
                .node_to_node_mesh_enabled
                .map_or("-".into(), |m| m.to_string()),
            c.spec.as_number.map_or("-".into(), |a| a.0.to_string()),
        ],
        // NODE: the node, else the selector, else `(global)`; ASN is a plain number (0 when
        // unset).
        Object::BgpPeer(p) => {
            let s = &p.spec;
            let node = if !s.node.is_empty() {
                s.node.clone()
            } else if !s.node_selector.is_empty() {
                s.node_selector.clone()
            } else {
                "(global)".into()
            };
            vec![
                name,
                s.peer_ip.clone(),
                node,
                s.as_number.map_or(0, |a| a.0).to_string(),
            ]
        }
        Object::NetworkPolicy(p) => {
            let s = &p.spec;
            let mut r = vec![name, s.tier.clone()];
            if wide {
                r.push(order_cell(s.order));
                r.push(s.selector.clone());
            }
            r
        }
        Object::GlobalNetworkPolicy(p) => {
            let s = &p.spec;
            let mut r = vec![name, s.tier.clone()];
            if wide {
                r.push(order_cell(s.order));
                r.push(s.selector.clone());
            }
            r
        }
        Object::Tier(t) => vec![name, order_cell(t.spec.order)],
        Object::NetworkSet(n) | Object::GlobalNetworkSet(n) => {
            if wide {
                vec![name, join_and_truncate(&n.spec.nets, ",", 80)]
            } else {
                vec![name]
            }
        }
        Object::FelixConfiguration(_) => vec![name],
    }
}

/// The whole `get` output for `fetched` (in the order asked).
pub fn render(fetched: &[Fetched], format: Format, opts: TableOpts) -> String {
    match format {
        Format::Ps | Format::Wide => {
            let wide = format == Format::Wide;
            let mut out = String::new();
            for f in fetched {
                let with_ns = opts.namespace_column && f.kind().namespaced();
                let mut head: Vec<String> = headings(f.kind(), wide)
                    .iter()
                    .map(|h| (*h).to_string())
                    .collect();
                if with_ns {
                    head.insert(0, "NAMESPACE".into());
                }
                let mut rows = vec![head];
                rows.extend(f.items().into_iter().map(|o| {
                    let mut r = row(o, wide, opts.global_asn);
                    if with_ns {
                        r.insert(0, o.metadata().namespace.clone());
                    }
                    r
                }));
                out.push_str(&gofmt::tabwriter(&rows));
                out.push('\n');
            }
            out
        }
        Format::Yaml | Format::Json => {
            let v = match fetched {
                [one] => one.to_json(),
                many => Value::Array(many.iter().map(Fetched::to_json).collect()),
            };
            if format == Format::Yaml {
                yaml::to_yaml(&v)
            } else {
                gofmt::json_indent(&v)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_datastore::model::{AsNumber, Node, NodeBgpSpec, NodeSpec};
    use calico_datastore::model::{
        IpPool, IpPoolSpec, Profile, ProfileSpec, WorkloadEndpoint, WorkloadEndpointSpec,
    };

    fn pool(name: &str, cidr: &str, rv: &str) -> Object {
        let mut p = IpPool::new("IPPool", name, IpPoolSpec::for_cidr(cidr).with_defaults());
        p.metadata.resource_version = rv.into();
        p.metadata.uid = "0b5e1b1a-0000-4000-8000-000000000001".into();
        p.metadata.creation_timestamp = Some("2026-05-01T10:00:00Z".into());
        Object::IpPool(p)
    }

    #[test]
    fn ps_and_wide_tables() {
        let list = Fetched::List {
            kind: Kind::IpPool,
            revision: 9,
            items: vec![pool("default-ipv4-ippool", "10.244.0.0/16", "5")],
        };
        assert_eq!(
            render(
                std::slice::from_ref(&list),
                Format::Ps,
                TableOpts::new(64512)
            ),
            "NAME                  CIDR            SELECTOR   \n\
             default-ipv4-ippool   10.244.0.0/16   all()      \n\n"
        );
        assert_eq!(
            render(&[list], Format::Wide, TableOpts::new(64512)),
            "NAME                  CIDR            NAT     IPIPMODE   VXLANMODE   DISABLED   DISABLEBGPEXPORT   SELECTOR   ASSIGNMENTMODE   \n\
             default-ipv4-ippool   10.244.0.0/16   false   Never      Never       false      false              all()      Automatic        \n\n"
        );
        let mut n = Node::new("Node", "node1", NodeSpec::default());
        n.spec.bgp = Some(NodeBgpSpec {
            ipv4_address: "192.168.0.1/24".into(),
            ..NodeBgpSpec::default()
        });
        let mut n2 = Node::new("Node", "node2", NodeSpec::default());
        n2.spec.bgp = Some(NodeBgpSpec {
            as_number: Some(AsNumber(65001)),
            ..NodeBgpSpec::default()
        });
        let n3 = Node::new("Node", "node3", NodeSpec::default());
        let nodes = Fetched::List {
            kind: Kind::Node,
            revision: 1,
            items: vec![Object::Node(n), Object::Node(n2), Object::Node(n3)],
        };
        assert_eq!(
            render(&[nodes], Format::Wide, TableOpts::new(64512)),
            "NAME    ASN       IPV4             IPV6   \n\
             node1   (64512)   192.168.0.1/24          \n\
             node2   65001                             \n\
             node3                                     \n\n"
        );
        // Two names: two tables.
        let two = render(
            &[
                Fetched::One(Box::new(pool("a", "10.1.0.0/16", "1"))),
                Fetched::One(Box::new(pool("b", "10.2.0.0/16", "2"))),
            ],
            Format::Ps,
            TableOpts::new(64512),
        );
        assert_eq!(two.matches("NAME").count(), 2);
    }

    fn wep(ns: &str, name: &str, spec: WorkloadEndpointSpec) -> Object {
        let mut w = WorkloadEndpoint::new("WorkloadEndpoint", name, spec);
        w.metadata.namespace = ns.into();
        Object::WorkloadEndpoint(Box::new(w))
    }

    #[test]
    fn workload_endpoint_and_profile_rows() {
        let k8s = wep(
            "default",
            "node1-k8s-nginx-eth0",
            WorkloadEndpointSpec {
                node: "node1".into(),
                pod: "nginx".into(),
                ip_networks: vec!["10.244.1.5/32".into(), "fd00::5/128".into()],
                profiles: vec!["kns.default".into(), "ksa.default.sa".into()],
                interface_name: "cali0123456789a".into(),
                ip_nats: vec![
                    json!({"internalIP": "10.244.1.5", "externalIP": "172.16.0.5"}),
                    json!({"internalIP": "fd00::5", "externalIP": "fd01::5"}),
                ],
                ..WorkloadEndpointSpec::default()
            },
        );
        assert_eq!(
            row(&k8s, false, 0),
            [
                "nginx",
                "node1",
                "10.244.1.5/32,fd00::5/128",
                "cali0123456789a"
            ]
        );
        assert_eq!(
            row(&k8s, true, 0),
            [
                "node1-k8s-nginx-eth0",
                "nginx",
                "node1",
                "10.244.1.5/32,fd00::5/128",
                "cali0123456789a",
                "kns.default,ksa.default.sa",
                "{10.244.1.5 172.16.0.5},{fd00::5 fd01::5}",
            ]
        );
        // The workload wins over the pod; empty lists are empty cells.
        let cni = wep(
            "ns2",
            "w2",
            WorkloadEndpointSpec {
                workload: "wl".into(),
                pod: "pod".into(),
                ..WorkloadEndpointSpec::default()
            },
        );
        assert_eq!(row(&cni, true, 0), ["w2", "wl", "", "", "", "", ""]);

        let mut p = Profile::new("Profile", "net", ProfileSpec::default());
        p.spec.labels_to_apply = [("z", ""), ("a", "1"), ("a.b", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let p = Object::Profile(Box::new(p));
        assert_eq!(row(&p, false, 0), ["net"]);
        assert_eq!(row(&p, true, 0), ["net", "a.b=2,a=1,z="]);
    }

    #[test]
    fn namespace_column_for_namespaced_kinds_only() {
        let weps = Fetched::List {
            kind: Kind::WorkloadEndpoint,
            revision: 3,
            items: vec![wep(
                "ns1",
                "w1",
                WorkloadEndpointSpec {
                    node: "n1".into(),
                    pod: "p1".into(),
                    ..WorkloadEndpointSpec::default()
                },
            )],
        };
        let with_ns = TableOpts {
            global_asn: 0,
            namespace_column: true,
        };
        assert_eq!(
            render(std::slice::from_ref(&weps), Format::Ps, with_ns),
            "NAMESPACE   WORKLOAD   NODE   NETWORKS   INTERFACE   \n\
             ns1         p1         n1                            \n\n"
        );
        assert_eq!(
            render(std::slice::from_ref(&weps), Format::Ps, TableOpts::new(0)),
            "WORKLOAD   NODE   NETWORKS   INTERFACE   \n\
             p1         n1                            \n\n"
        );
        let pools = Fetched::List {
            kind: Kind::IpPool,
            revision: 3,
            items: vec![],
        };
        assert_eq!(
            render(&[pools], Format::Ps, with_ns),
            "NAME   CIDR   SELECTOR   \n\n"
        );
        // yaml/json: the list wrapper is named after the kind.
        let y = render(&[weps], Format::Yaml, with_ns);
        assert_eq!(
            y,
            "apiVersion: projectcalico.org/v3\n\
             items:\n\
             - apiVersion: projectcalico.org/v3\n  \
               kind: WorkloadEndpoint\n  \
               metadata:\n    \
                 name: w1\n    \
                 namespace: ns1\n  \
               spec:\n    \
                 node: n1\n    \
                 pod: p1\n\
             kind: WorkloadEndpointList\n\
             metadata:\n  \
               resourceVersion: \"3\"\n"
        );
    }

    #[test]
    fn json_list_object_and_array() {
        let list = Fetched::List {
            kind: Kind::IpPool,
            revision: 123,
            items: vec![],
        };
        assert_eq!(
            render(&[list], Format::Json, TableOpts::new(0)),
            "{\n  \"kind\": \"IPPoolList\",\n  \"apiVersion\": \"projectcalico.org/v3\",\n  \"metadata\": {\n    \"resourceVersion\": \"123\"\n  },\n  \"items\": []\n}"
        );
        let one = render(
            &[Fetched::One(Box::new(pool("a", "10.1.0.0/16", "7")))],
            Format::Json,
            TableOpts::new(0),
        );
        let v: Value = serde_json::from_str(&one).expect("json");
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        assert_eq!(v["spec"]["blockSize"], 26);
        assert!(
            one.starts_with("{\n  \"kind\": \"IPPool\",\n  \"apiVersion\""),
            "{one}"
        );
        let two = render(
            &[
                Fetched::One(Box::new(pool("a", "10.1.0.0/16", "1"))),
                Fetched::One(Box::new(pool("b", "10.2.0.0/16", "2"))),
            ],
            Format::Json,
            TableOpts::new(0),
        );
        assert!(two.starts_with('['), "{two}");
    }

    #[test]
    fn yaml_of_one_pool() {
        let y = render(
            &[Fetched::One(Box::new(pool("a", "10.1.0.0/16", "7")))],
            Format::Yaml,
            TableOpts::new(0),
        );
        assert_eq!(
            y,
            "apiVersion: projectcalico.org/v3\n\
             kind: IPPool\n\
             metadata:\n  \
               creationTimestamp: \"2026-05-01T10:00:00Z\"\n  \
               name: a\n  \
               resourceVersion: \"7\"\n  \
               uid: 0b5e1b1a-0000-4000-8000-000000000001\n\
             spec:\n  \
               allowedUses:\n  \
               - Workload\n  \
               - Tunnel\n  \
               assignmentMode: Automatic\n  \
               blockSize: 26\n  \
               cidr: 10.1.0.0/16\n  \
               ipipMode: Never\n  \
               nodeSelector: all()\n  \
               vxlanMode: Never\n"
        );
    }
}
