//! The node's address, detected as Calico's `autodetection` package does it: the methods of
//! `IP_AUTODETECTION_METHOD` / `IP6_AUTODETECTION_METHOD` over the host's interfaces.
//!
//! Calico's rules, kept: interfaces are scanned from the highest ifindex down (so a later
//! interface wins over `eth0`), the first global unicast address of the family on the first
//! interface that qualifies is taken with its interface's prefix length, interface regexes
//! are unanchored, `interface=` and `cidr=` drop the default exclusions and `can-reach`
//! looks at every interface. Ours: a bad regex or CIDR in a method is a configuration error
//! (Calico: nothing detected), and `kubernetes-internal-ip` is refused (no Kubernetes API).

use super::host::{Host, HostError, HostInterface};
use crate::config::ConfigError;
use ipnet::IpNet;
use regex::Regex;
use std::net::IpAddr;

/// Calico's `DEFAULT_INTERFACES_TO_EXCLUDE` (`autodetection_linux.go`), exactly.
pub const DEFAULT_INTERFACES_TO_EXCLUDE: [&str; 19] = [
    "^docker.*",
    "^cbr.*",
    "^dummy.*",
    "^podman.*",
    "^virbr.*",
    "^lxcbr.*",
    "^veth.*",
    "^lo",
    "^br-.*",
    "^cali.*",
    "^tunl.*",
    "^flannel.*",
    "^kube-ipvs.*",
    "^cni.*",
    r"^vxlan\.calico.*",
    r"^vxlan-v6\.calico.*",
    r"^wireguard\.cali.*",
    r"^wg-v6\.cali.*",
    "^nodelocaldns.*",
];

/// An autodetection method.
#[derive(Debug, Clone)]
pub enum Method {
    /// `first-found` (also the empty value): the default exclusions.
    FirstFound,
    /// `can-reach=<address or name>`.
    CanReach(String),
    /// `interface=<regex>,...`: only matching interfaces, no default exclusions.
    Interface(Vec<Regex>),
    /// `skip-interface=<regex>,...`: the default exclusions and these.
    SkipInterface(Vec<Regex>),
    /// `cidr=<cidr>,...`: any interface, addresses inside one of these.
    Cidr(Vec<IpNet>),
}

impl PartialEq for Method {
    fn eq(&self, other: &Self) -> bool {
        let srcs = |v: &[Regex]| v.iter().map(|r| r.as_str().to_string()).collect::<Vec<_>>();
        match (self, other) {
            (Method::FirstFound, Method::FirstFound) => true,
            (Method::CanReach(a), Method::CanReach(b)) => a == b,
            (Method::Interface(a), Method::Interface(b))
            | (Method::SkipInterface(a), Method::SkipInterface(b)) => srcs(a) == srcs(b),
            (Method::Cidr(a), Method::Cidr(b)) => a == b,
            _ => false,
        }
    }
}

/// Splits a method's list as Calico does (`\s*,\s*`).
fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim)
}

fn regexes(variable: &'static str, value: &str) -> Result<Vec<Regex>, ConfigError> {
    list(value)
        .map(|r| {
            Regex::new(r).map_err(|e| {
                ConfigError::new(
                    variable,
                    format!("{r:?} is not an interface regex: {}", one_line(&e)),
                )
            })
        })
        .collect()
}

/// The regex crate's errors span lines; the message must not.
pub fn one_line(e: &regex::Error) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl Method {
    /// Parses a method (prefixes are case-sensitive, as Calico's).
    pub fn parse(variable: &'static str, value: &str) -> Result<Method, ConfigError> {
        if value.is_empty() || value == "first-found" {
            return Ok(Method::FirstFound);
        }
        if let Some(rest) = value.strip_prefix("interface=") {
            return Ok(Method::Interface(regexes(variable, rest)?));
        }
        if let Some(rest) = value.strip_prefix("skip-interface=") {
            return Ok(Method::SkipInterface(regexes(variable, rest)?));
        }
        if let Some(rest) = value.strip_prefix("cidr=") {
            return list(rest)
                .map(|c| {
                    c.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
                        ConfigError::new(
                            variable,
                            format!("{c:?} is not a CIDR (method {value:?})"),
                        )
                    })
                })
                .collect::<Result<_, _>>()
                .map(Method::Cidr);
        }
        if let Some(rest) = value.strip_prefix("can-reach=") {
            if rest.trim().is_empty() {
                return Err(ConfigError::new(
                    variable,
                    "can-reach= needs a destination address or name",
                ));
            }
            return Ok(Method::CanReach(rest.trim().to_string()));
        }
        if value.starts_with("kubernetes-internal-ip") {
            return Err(ConfigError::new(
                variable,
                "kubernetes-internal-ip needs the Kubernetes API, which this calico-node does \
                 not use",
            ));
        }
        Err(ConfigError::new(
            variable,
            format!(
                "{value:?} is not an autodetection method (first-found, can-reach=, interface=, \
                 skip-interface=, cidr=)"
            ),
        ))
    }
}

/// What was detected, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub interface: String,
    /// The address with its interface's prefix length (host bits kept: `10.0.0.5/24`).
    pub address: IpNet,
}

/// Go's `net.IP.IsGlobalUnicast`: not unspecified, loopback, link-local, multicast or the
/// IPv4 broadcast address (private and ULA addresses count).
pub fn is_global_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_unicast_link_local()
                || a.is_multicast())
        }
    }
}

/// The default exclusions, compiled (constant patterns).
pub fn default_exclusions() -> Vec<Regex> {
    DEFAULT_INTERFACES_TO_EXCLUDE
        .iter()
        .filter_map(|r| Regex::new(r).ok())
        .collect()
}

/// Calico's `GetInterfaces` filter: included (no include list: all) and not excluded.
pub fn selected<'i>(
    interfaces: &'i [HostInterface],
    include: &[Regex],
    exclude: &[Regex],
) -> impl Iterator<Item = &'i HostInterface> {
    interfaces.iter().filter(move |i| {
        (include.is_empty() || include.iter().any(|r| r.is_match(&i.name)))
            && !exclude.iter().any(|r| r.is_match(&i.name))
    })
}

/// Calico's `FilteredEnumeration`: from the highest ifindex down, the first global unicast
/// address of the family (inside one of `cidrs`, if any).
fn first_found(
    interfaces: &[HostInterface],
    include: &[Regex],
    exclude: &[Regex],
    cidrs: &[IpNet],
    v4: bool,
) -> Option<Detected> {
    let mut ordered: Vec<&HostInterface> = selected(interfaces, include, exclude).collect();
    ordered.sort_by_key(|i| std::cmp::Reverse(i.index));
    ordered.into_iter().find_map(|i| {
        i.addresses
            .iter()
            .find(|a| {
                a.addr().is_ipv4() == v4
                    && is_global_unicast(a.addr())
                    && (cidrs.is_empty() || cidrs.iter().any(|c| c.contains(&a.addr())))
            })
            .map(|a| Detected {
                interface: i.name.clone(),
                address: *a,
            })
    })
}

/// Runs `method` for one family. `Ok(None)`: nothing qualifies (the caller decides whether
/// that is fatal); the reason is in the second value, for the caller's warning.
pub fn detect(
    method: &Method,
    v4: bool,
    host: &dyn Host,
) -> Result<(Option<Detected>, String), HostError> {
    let family = if v4 { "IPv4" } else { "IPv6" };
    let interfaces = host.interfaces()?;
    let none = |why: String| Ok((None, why));
    let found = match method {
        Method::FirstFound => first_found(&interfaces, &[], &default_exclusions(), &[], v4),
        Method::Interface(include) => first_found(&interfaces, include, &[], &[], v4),
        Method::SkipInterface(skip) => {
            let mut exclude = default_exclusions();
            exclude.extend(skip.iter().cloned());
            first_found(&interfaces, &[], &exclude, &[], v4)
        }
        Method::Cidr(cidrs) => first_found(&interfaces, &[], &[], cidrs, v4),
        Method::CanReach(dest) => {
            let ip = match host.source_towards(dest, v4) {
                Ok(ip) => ip,
                Err(e) => {
                    return none(format!(
                        "unable to auto-detect an {family} address by connecting to {dest}: {e}"
                    ));
                }
            };
            let on_interface = interfaces.iter().find_map(|i| {
                i.addresses
                    .iter()
                    .find(|a| a.addr() == ip)
                    .map(|a| Detected {
                        interface: i.name.clone(),
                        address: *a,
                    })
            });
            if on_interface.is_none() {
                return none(format!(
                    "autodetected {family} address does not match any addresses found on local \
                     interfaces: {ip}"
                ));
            }
            on_interface
        }
    };
    match found {
        Some(d) => Ok((Some(d), String::new())),
        None if interfaces.is_empty() => none("no valid host interfaces found".into()),
        None => none(format!(
            "no valid {family} addresses found on the host interfaces (method {})",
            describe(method)
        )),
    }
}

/// The method as the variable spells it.
pub fn describe(method: &Method) -> String {
    let join = |v: &[Regex]| {
        v.iter()
            .map(|r| r.as_str().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    match method {
        Method::FirstFound => "first-found".into(),
        Method::CanReach(d) => format!("can-reach={d}"),
        Method::Interface(r) => format!("interface={}", join(r)),
        Method::SkipInterface(r) => format!("skip-interface={}", join(r)),
        Method::Cidr(c) => format!(
            "cidr={}",
            c.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Calico's `GetLocalCIDR`: a bare address gets the prefix of the interface carrying it
/// (`None` if no interface does).
pub fn local_prefix(interfaces: &[HostInterface], ip: IpAddr) -> Option<u8> {
    interfaces
        .iter()
        .flat_map(|i| &i.addresses)
        .find(|a| a.addr() == ip)
        .map(IpNet::prefix_len)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::startup::host::StaticHost;

    fn host() -> StaticHost {
        StaticHost::default()
            .with_interface("lo", &["127.0.0.1/8", "::1/128"])
            .with_interface("eth0", &["fe80::1/64", "10.0.0.5/24", "2001:db8::5/64"])
            .with_interface("eth1", &["169.254.3.3/16", "192.168.7.9/24"])
            .with_interface("docker0", &["172.17.0.1/16"])
            .with_interface("cali1234", &["10.244.0.1/32"])
            .with_interface("veth0x", &["10.9.9.9/24"])
    }

    fn run(method: &str, v4: bool) -> Option<Detected> {
        let m = Method::parse("IP_AUTODETECTION_METHOD", method).unwrap();
        detect(&m, v4, &host()).unwrap().0
    }

    fn addr(method: &str, v4: bool) -> String {
        run(method, v4)
            .map(|d| d.address.to_string())
            .unwrap_or_default()
    }

    /// Mirrors filtered.go `FilteredEnumeration` with interfaces.go's reverse order: the
    /// highest ifindex that is not excluded wins, link-locals skipped.
    #[test]
    fn first_found_takes_the_last_interface_not_excluded() {
        assert_eq!(addr("first-found", true), "192.168.7.9/24");
        assert_eq!(addr("", true), "192.168.7.9/24");
        assert_eq!(addr("first-found", false), "2001:db8::5/64");
        assert_eq!(run("first-found", true).unwrap().interface, "eth1");
    }

    /// Mirrors autodetection_methods.go: `interface=` drops the default exclusions and its
    /// regexes are unanchored; `skip-interface=` adds to them.
    #[test]
    fn interface_and_skip_interface() {
        assert_eq!(addr("interface=^eth0$", true), "10.0.0.5/24");
        assert_eq!(addr("interface=docker.*", true), "172.17.0.1/16");
        // Unanchored: `eth0` matches `veth0x` too, which comes later.
        assert_eq!(addr("interface=eth0", true), "10.9.9.9/24");
        assert_eq!(addr("interface=^eth0$ , ^eth1$", true), "192.168.7.9/24");
        assert_eq!(addr("skip-interface=eth1", true), "10.0.0.5/24");
        assert_eq!(addr("skip-interface=eth.*", true), "");
        assert_eq!(addr("interface=nothing", true), "");
    }

    #[test]
    fn cidr_takes_any_interface_inside_the_ranges() {
        assert_eq!(addr("cidr=10.0.0.0/8", true), "10.9.9.9/24");
        assert_eq!(
            addr("cidr=10.0.0.0/24,172.16.0.0/12", true),
            "172.17.0.1/16"
        );
        assert_eq!(addr("cidr=2001:db8::/32", false), "2001:db8::5/64");
        assert_eq!(addr("cidr=169.254.0.0/16", true), "", "link-local never");
    }

    /// Mirrors reachaddr.go `ReachDestination`: the source address the kernel picks, with
    /// the prefix of the interface that has it, on any interface.
    #[test]
    fn can_reach_uses_the_routing_source() {
        let mut h = host();
        h.routes
            .push(("8.8.8.8".into(), "10.0.0.5".parse().unwrap()));
        h.routes
            .push(("10.244.0.9".into(), "10.244.0.1".parse().unwrap()));
        h.routes
            .push(("10.1.1.1".into(), "10.200.0.1".parse().unwrap()));
        let m = |s: &str| Method::parse("IP", s).unwrap();
        let got = detect(&m("can-reach=8.8.8.8"), true, &h)
            .unwrap()
            .0
            .unwrap();
        assert_eq!(got.address.to_string(), "10.0.0.5/24");
        assert_eq!(got.interface, "eth0");
        let got = detect(&m("can-reach=10.244.0.9"), true, &h)
            .unwrap()
            .0
            .unwrap();
        assert_eq!(got.interface, "cali1234", "no exclusions");
        let (none, why) = detect(&m("can-reach=10.1.1.1"), true, &h).unwrap();
        assert!(none.is_none());
        assert!(why.contains("does not match any addresses"), "{why}");
        let (none, why) = detect(&m("can-reach=10.2.2.2"), true, &h).unwrap();
        assert!(none.is_none());
        assert!(why.contains("unreachable"), "{why}");
    }

    #[test]
    fn methods_parse_as_calicos() {
        assert_eq!(
            Method::parse("V", "can-reach=www.example.com").unwrap(),
            Method::CanReach("www.example.com".into())
        );
        for bad in [
            "First-Found",
            "interface=(",
            "cidr=10.0.0.0",
            "can-reach=",
            "kubernetes-internal-ip",
            "magic",
        ] {
            let e = Method::parse("IP_AUTODETECTION_METHOD", bad).expect_err(bad);
            assert_eq!(e.variable, "IP_AUTODETECTION_METHOD");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        let m = Method::parse("V", "skip-interface=eth0,ens.*").unwrap();
        assert_eq!(describe(&m), "skip-interface=eth0,ens.*");
    }

    #[test]
    fn local_prefix_is_the_interfaces() {
        let h = host();
        assert_eq!(
            local_prefix(&h.interfaces, "10.0.0.5".parse().unwrap()),
            Some(24)
        );
        assert_eq!(
            local_prefix(&h.interfaces, "10.0.0.6".parse().unwrap()),
            None
        );
    }
}
