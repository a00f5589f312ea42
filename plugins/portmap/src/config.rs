//! portmap's configuration: the plugin's own keys, the runtime's `portMappings`, and the
//! container's addresses from `prevResult`.
//!
//! Everything that reaches a rule is checked here, with code 7 naming the field: a chain
//! name as iptables checks one ([`chain_name`]), conditions without control characters and
//! short enough for one rule line ([`CONDITIONS_MAX`]),
//! no two mappings of one host address, port and protocol, and a target address that can
//! receive traffic ([`check_targets`]). The iptables document writer refuses a line break
//! again, whatever gets past this (`calico_netfilter::xtables::document`).

use calico_netfilter::xtables;
use cni_protocol::{CniError, CniResult, ErrorCode, Request};
use ipnet::IpNet;
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// iptables' bound on a chain name: under `XT_EXTENSION_MAXNAMELEN` (29) bytes.
const CHAIN_NAME_MAX: usize = 28;

/// Where the state files, the port registry and the lock live (cleared by a reboot, as the
/// rules are).
pub const DEFAULT_STATE_DIR: &str = "/run/calico/portmap";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }
}

/// One `portMappings` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Proto,
    /// `None` for all of the node's addresses (also when given as `0.0.0.0` or `::`).
    pub host_ip: Option<IpAddr>,
}

impl Mapping {
    /// Whether the mapping applies to the given family.
    pub fn applies_to(&self, v4: bool) -> bool {
        self.host_ip.is_none_or(|ip| ip.is_ipv4() == v4)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Iptables,
    Nftables,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conf {
    pub network: String,
    pub snat: bool,
    pub mark_masq_bit: u32,
    pub external_set_mark_chain: Option<String>,
    /// Extra iptables match arguments for the entry rules, per family.
    pub conditions_v4: Vec<String>,
    pub conditions_v6: Vec<String>,
    pub masq_all: bool,
    /// `None`: not configured, decided from the host (see [`crate::verbs::backend`]).
    pub backend: Option<BackendKind>,
    pub state_dir: PathBuf,
    pub mappings: Vec<Mapping>,
}

fn bad(field: &str, why: impl std::fmt::Display) -> CniError {
    CniError::invalid_config(format!("invalid value for field {field:?}: {why}"))
}

fn opt_bool(v: &Value, field: &str, default: bool) -> Result<bool, CniError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(field, format!("{other} is not a boolean"))),
    }
}

fn opt_strings(v: &Value, field: &str) -> Result<Vec<String>, CniError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(field, format!("{x} is not a string")))
            })
            .collect(),
        Some(other) => Err(bad(field, format!("{other} is not a list of strings"))),
    }
}

/// Checks a chain name as iptables does (`xshared.c`: under 29 bytes, no whitespace, not
/// starting with `-` or `!`), and further refuses what is not printable ASCII and the
/// quoting characters `"`, `'` and `\`, which `iptables-restore` would read as quoting.
pub fn chain_name(field: &str, s: &str) -> Result<(), CniError> {
    let refuse = |why: String| Err(bad(field, format!("{s:?}: {why}")));
    if s.is_empty() {
        return refuse("a chain name cannot be empty".into());
    }
    if s.len() > CHAIN_NAME_MAX {
        return refuse(format!(
            "a chain name has at most {CHAIN_NAME_MAX} bytes, this one {}",
            s.len()
        ));
    }
    if s.starts_with('-') || s.starts_with('!') {
        return refuse("a chain name cannot start with '-' or '!'".into());
    }
    match s
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '"' | '\'' | '\\'))
    {
        Some(c) => refuse(format!("a chain name cannot contain {c:?}")),
        None => Ok(()),
    }
}

/// Bound on the conditions of one family as they are written into each entry rule (quoted,
/// a space before each): the rest of the longest entry rule (a 255-byte comment quoted, 15
/// ports, the chain) takes well under 1 KiB of an `iptables-restore` line.
pub const CONDITIONS_MAX: usize = xtables::MAX_LINE - 1024;

/// Refuses a condition with a control character (a line break would start a rule of its
/// own in the iptables document), and conditions too long for one rule's line.
fn check_conditions(field: &str, conds: &[String]) -> Result<(), CniError> {
    for (i, c) in conds.iter().enumerate() {
        if let Some(ch) = c.chars().find(|ch| ch.is_control()) {
            return Err(bad(
                &format!("{field}[{i}]"),
                format!("{c:?} contains the control character {ch:?}"),
            ));
        }
    }
    let len: usize = conds.iter().map(|c| 1 + xtables::quote(c).len()).sum();
    if len > CONDITIONS_MAX {
        return Err(bad(
            field,
            format!("the conditions take {len} bytes of a rule, at most {CONDITIONS_MAX}"),
        ));
    }
    Ok(())
}

/// Conditions in iptables syntax start with `-` or `!` (as the reference plugin decides).
fn iptables_syntax(conds: &[String]) -> bool {
    conds
        .first()
        .is_some_and(|c| c.starts_with('-') || c.starts_with('!'))
}

fn port(m: &Value, i: usize, field: &str) -> Result<u16, CniError> {
    let path = format!("runtimeConfig.portMappings[{i}].{field}");
    let n = m
        .get(field)
        .and_then(Value::as_i64)
        .ok_or_else(|| bad(&path, "missing or not a number"))?;
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad(&path, format!("{n} is not a port (1-65535)")))
}

/// The `portMappings` capability.
pub fn mappings(req: &Request) -> Result<Vec<Mapping>, CniError> {
    let Some(list) = req.runtime_config().and_then(|r| r.get("portMappings")) else {
        return Ok(Vec::new());
    };
    let Some(list) = list.as_array() else {
        if list.is_null() {
            return Ok(Vec::new());
        }
        return Err(bad("runtimeConfig.portMappings", "not a list"));
    };
    let list: Vec<Mapping> = list
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let host_port = port(m, i, "hostPort")?;
            let container_port = port(m, i, "containerPort")?;
            let proto_path = format!("runtimeConfig.portMappings[{i}].protocol");
            let protocol = match m.get("protocol") {
                None | Some(Value::Null) => Proto::Tcp,
                Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                    "" | "tcp" => Proto::Tcp,
                    "udp" => Proto::Udp,
                    "sctp" => Proto::Sctp,
                    other => {
                        return Err(bad(
                            &proto_path,
                            format!("unknown protocol {other:?} (tcp, udp or sctp)"),
                        ));
                    }
                },
                Some(other) => return Err(bad(&proto_path, format!("{other} is not a string"))),
            };
            let host_ip = match m.get("hostIP") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => {
                    let ip: IpAddr = s.parse().map_err(|_| {
                        bad(
                            &format!("runtimeConfig.portMappings[{i}].hostIP"),
                            format!("{s:?} is not an IP address"),
                        )
                    })?;
                    (!ip.is_unspecified()).then_some(ip)
                }
                Some(other) => {
                    return Err(bad(
                        &format!("runtimeConfig.portMappings[{i}].hostIP"),
                        format!("{other} is not a string"),
                    ));
                }
            };
            Ok(Mapping {
                host_port,
                container_port,
                protocol,
                host_ip,
            })
        })
        .collect::<Result<_, CniError>>()?;
    // One host address, port and protocol goes to one place (Kubernetes refuses such a pod
    // too); the second mapping would silently lose.
    let mut first: HashMap<(Option<IpAddr>, u16, Proto), usize> = HashMap::new();
    for (i, m) in list.iter().enumerate() {
        if let Some(j) = first.insert((m.host_ip, m.host_port, m.protocol), i) {
            return Err(bad(
                &format!("runtimeConfig.portMappings[{i}]"),
                format!(
                    "host port {}/{}{} is already mapped by runtimeConfig.portMappings[{j}]",
                    m.host_port,
                    m.protocol.name(),
                    m.host_ip.map(|ip| format!(" on {ip}")).unwrap_or_default()
                ),
            ));
        }
    }
    Ok(list)
}

/// Settings that shape what ADD installs but not where DEL finds it (DEL goes by container
/// ID and record, in every backend).
const ADD_ONLY: [&str; 7] = [
    "externalSetMarkChain",
    "conditionsV4",
    "conditionsV6",
    "markMasqBit",
    "snat",
    "masqAll",
    "backend",
];

impl Conf {
    /// For DEL and GC: what the ADD refused must not block the cleanup, so invalid mappings
    /// and invalid ADD-only settings are ignored (DEL finds the rules by container ID).
    /// Only what locates the state (`stateDir`) must be valid.
    pub fn for_cleanup(req: &Request) -> Result<Conf, CniError> {
        let mut clean = req.clone();
        if let Err(e) = mappings(req) {
            log::warn!("portmap: ignoring the port mappings: {}", e.msg);
            if let Some(rc) = clean
                .config
                .get_mut("runtimeConfig")
                .and_then(Value::as_object_mut)
            {
                rc.remove("portMappings");
            }
        }
        match Conf::from_request(&clean) {
            Ok(c) => Ok(c),
            Err(e) => {
                log::warn!("portmap: ignoring the settings of ADD: {}", e.msg);
                for key in ADD_ONLY {
                    clean.config.remove(key);
                }
                Conf::from_request(&clean)
            }
        }
    }

    pub fn from_request(req: &Request) -> Result<Conf, CniError> {
        let v = Value::Object(req.config.clone());
        let snat = opt_bool(&v, "snat", true)?;
        let masq_all = opt_bool(&v, "masqAll", false)?;
        let external_set_mark_chain = match v.get("externalSetMarkChain") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => {
                chain_name("externalSetMarkChain", s)?;
                Some(s.clone())
            }
            Some(other) => {
                return Err(bad(
                    "externalSetMarkChain",
                    format!("{other} is not a string"),
                ));
            }
        };
        let mark_masq_bit = match v.get("markMasqBit") {
            None | Some(Value::Null) => 13,
            Some(x) => match x.as_u64() {
                Some(b) if b <= 31 => b as u32,
                _ => return Err(bad("markMasqBit", format!("{x} is not between 0 and 31"))),
            },
        };
        if v.get("markMasqBit").is_some_and(|x| !x.is_null()) && external_set_mark_chain.is_some() {
            return Err(CniError::invalid_config(
                "markMasqBit and externalSetMarkChain cannot both be given",
            ));
        }
        let conditions_v4 = opt_strings(&v, "conditionsV4")?;
        let conditions_v6 = opt_strings(&v, "conditionsV6")?;
        check_conditions("conditionsV4", &conditions_v4)?;
        check_conditions("conditionsV6", &conditions_v6)?;
        let mut backend = match v.get("backend") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match s.as_str() {
                "" => None,
                "iptables" => Some(BackendKind::Iptables),
                "nftables" => Some(BackendKind::Nftables),
                other => {
                    return Err(bad(
                        "backend",
                        format!("{other:?} is not iptables or nftables"),
                    ));
                }
            },
            Some(other) => return Err(bad("backend", format!("{other} is not a string"))),
        };
        // Conditions choose the backend by their syntax, as in the reference plugin.
        let conds: Vec<&Vec<String>> = [&conditions_v4, &conditions_v6]
            .into_iter()
            .filter(|c| !c.is_empty())
            .collect();
        if let Some(first) = conds.first() {
            let wants_iptables = iptables_syntax(first);
            if conds.iter().any(|c| iptables_syntax(c) != wants_iptables) {
                return Err(CniError::invalid_config(
                    "conditionsV4 and conditionsV6 must use the same syntax",
                ));
            }
            match (wants_iptables, backend) {
                (true, Some(BackendKind::Nftables)) => {
                    return Err(CniError::invalid_config(
                        "conditions in iptables syntax need backend iptables",
                    ));
                }
                (true, _) => backend = Some(BackendKind::Iptables),
                (false, _) => {
                    return Err(CniError::new(
                        ErrorCode::UNSUPPORTED_FIELD,
                        "conditions in nft syntax are not supported (this portmap programs nftables \
                         through netlink); give them in iptables syntax with backend iptables",
                    ));
                }
            }
        }
        if external_set_mark_chain.is_some() && backend == Some(BackendKind::Nftables) {
            return Err(CniError::invalid_config(
                "externalSetMarkChain is an iptables option: it needs backend iptables",
            ));
        }
        if external_set_mark_chain.is_some() {
            backend = Some(BackendKind::Iptables);
        }
        let state_dir = match v.get("stateDir") {
            None | Some(Value::Null) => PathBuf::from(DEFAULT_STATE_DIR),
            Some(Value::String(s)) if !s.is_empty() => PathBuf::from(s),
            Some(other) => return Err(bad("stateDir", format!("{other} is not a path"))),
        };
        Ok(Conf {
            network: req.network_name.clone(),
            snat,
            mark_masq_bit,
            external_set_mark_chain,
            conditions_v4,
            conditions_v6,
            masq_all,
            backend,
            state_dir,
            mappings: mappings(req)?,
        })
    }
}

/// The container's first IPv4 and first IPv6 address (with their prefixes) from
/// `prevResult`: entries on the interface named `CNI_IFNAME` that has a sandbox, or on no
/// interface in particular.
pub fn container_addresses(prev: &CniResult, ifname: &str) -> (Option<IpNet>, Option<IpNet>) {
    let ours = |i: Option<usize>| match i {
        None => true,
        Some(i) => prev.interfaces.get(i).is_some_and(|itf| {
            itf.name == ifname && itf.sandbox.as_deref().is_some_and(|s| !s.is_empty())
        }),
    };
    let mut v4 = None;
    let mut v6 = None;
    for ip in &prev.ips {
        if !ours(ip.interface) {
            continue;
        }
        match ip.address {
            IpNet::V4(_) if v4.is_none() => v4 = Some(ip.address),
            IpNet::V6(_) if v6.is_none() => v6 = Some(ip.address),
            _ => {}
        }
    }
    (v4, v6)
}

/// Refuses container addresses that cannot be a DNAT target: unspecified, loopback,
/// multicast, broadcast, or a whole address space (`/0`), which a broken or hostile
/// `prevResult` may carry.
pub fn check_targets(v4: Option<IpNet>, v6: Option<IpNet>) -> Result<(), CniError> {
    for net in [v4, v6].into_iter().flatten() {
        let ip = net.addr();
        let why = if ip.is_unspecified() {
            "is unspecified"
        } else if ip.is_loopback() {
            "is a loopback address"
        } else if ip.is_multicast() {
            "is a multicast address"
        } else if matches!(ip, IpAddr::V4(a) if a.is_broadcast()) {
            "is the broadcast address"
        } else if net.prefix_len() == 0 {
            "has prefix length 0"
        } else {
            continue;
        };
        return Err(bad(
            "prevResult.ips",
            format!("the container address {net} {why}: it cannot receive mapped ports"),
        ));
    }
    Ok(())
}

/// Refuses mappings no address of the container can serve.
pub fn check_families(
    mappings: &[Mapping],
    v4: Option<IpNet>,
    v6: Option<IpNet>,
) -> Result<(), CniError> {
    for (i, m) in mappings.iter().enumerate() {
        if let Some(ip) = m.host_ip {
            let has = if ip.is_ipv4() {
                v4.is_some()
            } else {
                v6.is_some()
            };
            if !has {
                return Err(bad(
                    &format!("runtimeConfig.portMappings[{i}].hostIP"),
                    format!(
                        "{ip} is {} but the container has no {} address",
                        if ip.is_ipv4() { "IPv4" } else { "IPv6" },
                        if ip.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A configuration for unit tests: the defaults, network `n`.
#[cfg(test)]
pub fn test_conf(backend: BackendKind) -> Conf {
    Conf {
        network: "n".into(),
        snat: true,
        mark_masq_bit: 13,
        external_set_mark_chain: None,
        conditions_v4: vec![],
        conditions_v6: vec![],
        masq_all: false,
        backend: Some(backend),
        state_dir: PathBuf::from("/tmp/portmap-test"),
        mappings: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_protocol::env::Environment;
    use serde_json::json;

    fn request(conf: Value) -> Request {
        let env = Environment::from_lookup(|k| {
            Some(
                match k {
                    "CNI_COMMAND" => "ADD",
                    "CNI_CONTAINERID" => "c1",
                    "CNI_NETNS" => "/run/netns/p",
                    "CNI_IFNAME" => "eth0",
                    "CNI_PATH" => "/opt/cni/bin",
                    _ => return None,
                }
                .to_string(),
            )
        })
        .expect("env");
        Request::new(env, conf.to_string().into_bytes()).expect("request")
    }

    fn conf(extra: Value, mappings: Value) -> Result<Conf, CniError> {
        let mut c = json!({"cniVersion": "1.0.0", "name": "n", "type": "portmap",
                           "runtimeConfig": {"portMappings": mappings}});
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        Conf::from_request(&request(c))
    }

    fn one() -> Value {
        json!([{"hostPort": 8080, "containerPort": 80}])
    }

    /// Findings #3: the chain name is checked as iptables checks one, code 7 naming the field.
    #[test]
    fn external_set_mark_chain_is_a_chain_name() {
        for good in ["KUBE-MARK-MASQ", "ACCEPT", "a", &"X".repeat(28)] {
            let c = conf(json!({ "externalSetMarkChain": good }), one()).expect(good);
            assert_eq!(c.external_set_mark_chain.as_deref(), Some(good));
        }
        for bad in [
            "ACCEPT\n-I OUTPUT 1 -p tcp --dport 9 -m comment --comment X -j DNAT --to-destination 127.0.0.1:1",
            "A\rB",
            "A\0",
            "two words",
            "-j",
            "!X",
            "q\"uote",
            "tab\t",
            "é",
            &"X".repeat(29),
        ] {
            let e = conf(json!({ "externalSetMarkChain": bad }), one()).expect_err(bad);
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{bad:?}");
            assert!(e.msg.contains("externalSetMarkChain"), "{}", e.msg);
        }
    }

    #[test]
    fn conditions_with_control_characters_are_refused() {
        let ok = conf(
            json!({"conditionsV4": ["-m", "comment", "--comment", "a \"quoted\" one"]}),
            one(),
        )
        .expect("plain conditions");
        assert_eq!(ok.backend, Some(BackendKind::Iptables));
        for (field, v) in [
            (
                "conditionsV4[1]",
                json!({"conditionsV4": ["-s", "10.0.0.0/8\n-A OUTPUT -j DROP"]}),
            ),
            ("conditionsV6[0]", json!({"conditionsV6": ["-s\r"]})),
            // Too long for one iptables-restore line: the field, not the document writer.
            (
                "conditionsV4",
                json!({"conditionsV4": ["-m", "comment", "--comment", "x".repeat(CONDITIONS_MAX)]}),
            ),
            (
                "conditionsV6",
                json!({"conditionsV6": vec!["-s"; CONDITIONS_MAX / 2]}),
            ),
            (
                "conditionsV4[2]",
                json!({"conditionsV4": ["-m", "comment", "x\u{0}"]}),
            ),
        ] {
            let e = conf(v, one()).expect_err(field);
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG);
            assert!(e.msg.contains(field), "{field}: {}", e.msg);
        }
    }

    /// Findings #17: two mappings of one host address, port and protocol name both indices;
    /// another protocol or host address is another mapping.
    #[test]
    fn duplicate_mappings_name_both_indices() {
        let e = conf(
            json!({}),
            json!([{"hostPort": 8080, "containerPort": 80},
                   {"hostPort": 9090, "containerPort": 90},
                   {"hostPort": 8080, "containerPort": 81, "protocol": "TCP"}]),
        )
        .expect_err("duplicate");
        assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG);
        assert!(
            e.msg.contains("portMappings[2]") && e.msg.contains("portMappings[0]"),
            "{}",
            e.msg
        );
        // 0.0.0.0 is every address, as no hostIP is.
        let e = conf(
            json!({}),
            json!([{"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "0.0.0.0"},
                   {"hostPort": 53, "containerPort": 5353, "protocol": "udp"}]),
        )
        .expect_err("duplicate any");
        assert!(e.msg.contains("portMappings[1]"), "{}", e.msg);
        let ok = conf(
            json!({}),
            json!([{"hostPort": 8080, "containerPort": 80},
                   {"hostPort": 8080, "containerPort": 80, "protocol": "udp"},
                   {"hostPort": 8080, "containerPort": 80, "hostIP": "10.0.0.1"}]),
        )
        .expect("distinct");
        assert_eq!(ok.mappings.len(), 3);
        // DEL is not refused for them: it goes by container ID.
        let mut dup = request(
            json!({"cniVersion": "1.0.0", "name": "n", "type": "portmap",
            "runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 1},
                                               {"hostPort": 1, "containerPort": 2}]}}),
        );
        dup.env.command = cni_protocol::env::Command::Del;
        assert!(
            Conf::for_cleanup(&dup)
                .expect("cleanup")
                .mappings
                .is_empty()
        );
        // Nor for a chain name ADD refused.
        let mut bad = request(
            json!({"cniVersion": "1.0.0", "name": "n", "type": "portmap",
            "externalSetMarkChain": "A\nB", "stateDir": "/tmp/pm"}),
        );
        bad.env.command = cni_protocol::env::Command::Del;
        let c = Conf::for_cleanup(&bad).expect("cleanup");
        assert_eq!(c.state_dir, PathBuf::from("/tmp/pm"));
        assert_eq!(c.external_set_mark_chain, None);
    }

    /// Findings #17: nonsense targets from prevResult.
    #[test]
    fn targets_must_receive_traffic() {
        let net = |s: &str| Some(s.parse::<IpNet>().expect(s));
        check_targets(net("10.244.1.5/32"), net("fd00:10::5/128")).expect("pod addresses");
        check_targets(net("10.244.1.5/24"), None).expect("with the pod's prefix");
        for (v4, v6) in [
            (net("0.0.0.0/0"), None),
            (net("10.244.1.5/0"), None),
            (net("127.0.0.1/8"), None),
            (net("224.0.0.1/32"), None),
            (net("255.255.255.255/32"), None),
            (net("10.244.1.5/32"), net("::/0")),
            (None, net("::1/128")),
            (None, net("ff02::1/128")),
        ] {
            let e = check_targets(v4, v6).expect_err(&format!("{v4:?} {v6:?}"));
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG);
            assert!(e.msg.contains("prevResult"), "{}", e.msg);
        }
    }
}
