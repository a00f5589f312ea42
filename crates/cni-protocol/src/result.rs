//! The ADD result: one model inside, written in whichever spec version the config asks for.
//!
//! Wire forms:
//! - 0.1.0 / 0.2.0: `ip4` / `ip6` objects (first address of each family, routes by family);
//! - 0.3.0 / 0.3.1 / 0.4.0: `interfaces`, `ips[]` with `version`, `routes`, `dns`;
//! - 1.0.0: the same without `ips[].version`;
//! - 1.1.0: adds interface `mtu`/`socketPath`/`pciID` and route `mtu`/`advmss`/`priority`/
//!   `table`/`scope`.

use crate::error::CniError;
use crate::version::CniVersion;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::net::IpAddr;

/// A plugin's result, version-independent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for a container-side interface; absent on the host side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// 1.1.0 and later.
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    /// 1.1.0 and later.
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// An address (with its prefix length; host bits kept) on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Index into [`CniResult::interfaces`]; IPAM plugins leave it out.
    pub interface: Option<usize>,
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// 1.1.0 and later: 0 global, 253 link, 254 host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    /// A route with only a destination.
    pub fn to(dst: IpNet) -> Self {
        Route {
            dst,
            gw: None,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }

    /// The route as versions before 1.1.0 can carry it.
    fn without_v1_1_fields(&self) -> Route {
        Route {
            dst: self.dst,
            gw: self.gw,
            ..Route::to(self.dst)
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub search: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

/// Go writes `null` for empty slices in some places; read it as empty.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Serde's derive reads a struct from an array too, positionally (`"dns": ["x"]` as
/// `dns.nameservers`); Go's decoder refuses anything but an object there. So every place
/// that holds a struct is checked first: `dns`, `ip4`, `ip6` (null is "unset"), and each
/// element of `interfaces`, `ips` and `routes` (also the legacy `ip4`/`ip6` routes).
/// Returns the field and what it held.
fn check_objects(v: &Value) -> Result<(), (String, &'static str)> {
    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Array(_) => "an array",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Bool(_) => "a boolean",
            Value::Null | Value::Object(_) => "something else",
        }
    }
    fn elements(obj: &Value, list: &str, at: &str) -> Result<(), (String, &'static str)> {
        if let Some(Value::Array(items)) = obj.get(list) {
            for (i, item) in items.iter().enumerate() {
                if !item.is_object() {
                    return Err((format!("{at}{list}[{i}]"), kind(item)));
                }
            }
        }
        Ok(())
    }
    for field in ["dns", "ip4", "ip6"] {
        match v.get(field) {
            None | Some(Value::Null | Value::Object(_)) => {}
            Some(other) => return Err((field.to_string(), kind(other))),
        }
    }
    for list in ["interfaces", "ips", "routes"] {
        elements(v, list, "")?;
    }
    for legacy in ["ip4", "ip6"] {
        if let Some(ip) = v.get(legacy) {
            elements(ip, "routes", &format!("{legacy}."))?;
        }
    }
    Ok(())
}

// ---- wire forms ----------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct WireIp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<usize>,
    address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
}

#[derive(Serialize, Deserialize)]
struct WireCurrent {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    interfaces: Vec<Interface>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    ips: Vec<WireIp>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    routes: Vec<Route>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Dns::is_empty"
    )]
    dns: Dns,
}

#[derive(Serialize, Deserialize)]
struct WireLegacyIp {
    ip: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    routes: Vec<Route>,
}

#[derive(Serialize, Deserialize)]
struct WireLegacy {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip4: Option<WireLegacyIp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<WireLegacyIp>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Dns::is_empty"
    )]
    dns: Dns,
}

impl CniResult {
    /// Writes the result in `version`'s wire form. Fields the version cannot carry are dropped.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let encoded = if version.is_legacy() {
            serde_json::to_value(self.to_legacy(version))
        } else {
            serde_json::to_value(self.to_current(version))
        };
        // The wire structs hold only strings, numbers and addresses: encoding cannot fail.
        encoded.unwrap_or(Value::Null)
    }

    fn to_current(&self, version: CniVersion) -> WireCurrent {
        let rich = version.has_v1_1_result_fields();
        WireCurrent {
            cni_version: version.to_string(),
            interfaces: self
                .interfaces
                .iter()
                .map(|i| {
                    if rich {
                        i.clone()
                    } else {
                        Interface {
                            mtu: None,
                            socket_path: None,
                            pci_id: None,
                            ..i.clone()
                        }
                    }
                })
                .collect(),
            ips: self
                .ips
                .iter()
                .map(|ip| WireIp {
                    version: version.has_ip_version_field().then(|| {
                        if ip.address.addr().is_ipv4() {
                            "4"
                        } else {
                            "6"
                        }
                        .to_string()
                    }),
                    interface: ip.interface,
                    address: ip.address,
                    gateway: ip.gateway,
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|r| {
                    if rich {
                        r.clone()
                    } else {
                        r.without_v1_1_fields()
                    }
                })
                .collect(),
            dns: self.dns.clone(),
        }
    }

    /// 0.2.0 can hold one address per family; the first of each wins and routes follow
    /// their destination's family (as libcni converts).
    fn to_legacy(&self, version: CniVersion) -> WireLegacy {
        let family = |v4: bool| {
            self.ips
                .iter()
                .find(|ip| ip.address.addr().is_ipv4() == v4)
                .map(|ip| WireLegacyIp {
                    ip: ip.address,
                    gateway: ip.gateway,
                    routes: self
                        .routes
                        .iter()
                        .filter(|r| r.dst.addr().is_ipv4() == v4)
                        .map(Route::without_v1_1_fields)
                        .collect(),
                })
        };
        WireLegacy {
            cni_version: version.to_string(),
            ip4: family(true),
            ip6: family(false),
            dns: self.dns.clone(),
        }
    }

    /// Reads a result of any supported version. The version is the object's own
    /// `cniVersion`, or `default` when it has none.
    pub fn from_json(v: &Value, default: CniVersion) -> Result<Self, CniError> {
        let version = match v.get("cniVersion").and_then(Value::as_str) {
            None | Some("") => default,
            Some(s) => s
                .parse::<CniVersion>()
                .map_err(|e| CniError::incompatible_version(format!("result has {e}")))?,
        };
        let mut v = v.clone();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("cniVersion".into(), Value::String(version.to_string()));
        }
        let bad = |e: serde_json::Error| {
            CniError::decoding(format!("cannot decode a {version} result: {e}"))
        };
        check_objects(&v).map_err(|(field, got)| {
            CniError::decoding(format!(
                "cannot decode a {version} result: invalid value for field {field:?}: expected \
                 an object, got {got}"
            ))
        })?;
        if version.is_legacy() {
            let w: WireLegacy = serde_json::from_value(v).map_err(bad)?;
            Ok(CniResult::from_legacy(w))
        } else {
            let w: WireCurrent = serde_json::from_value(v).map_err(bad)?;
            Ok(CniResult {
                interfaces: w.interfaces,
                ips: w
                    .ips
                    .into_iter()
                    .map(|ip| IpConfig {
                        interface: ip.interface,
                        address: ip.address,
                        gateway: ip.gateway,
                    })
                    .collect(),
                routes: w.routes,
                dns: w.dns,
            })
        }
    }

    fn from_legacy(w: WireLegacy) -> CniResult {
        let mut r = CniResult {
            dns: w.dns,
            ..CniResult::default()
        };
        for ip in [w.ip4, w.ip6].into_iter().flatten() {
            r.ips.push(IpConfig {
                interface: None,
                address: ip.ip,
                gateway: ip.gateway,
            });
            r.routes.extend(ip.routes);
        }
        r
    }

    /// The result as a plugin speaking `version` would see it after a round trip: what the
    /// version cannot carry is gone.
    pub fn as_seen_in(&self, version: CniVersion) -> CniResult {
        let Ok(r) = CniResult::from_json(&self.to_json(version), version) else {
            // Our own encoding always decodes; keep the input rather than panic.
            return self.clone();
        };
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// A dual-stack result using every field of every version.
    fn rich() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "calic440f455693".into(),
                    mac: Some("ee:ee:ee:ee:ee:ee".into()),
                    ..Interface::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("9a:1b:2c:3d:4e:5f".into()),
                    mtu: Some(1440),
                    sandbox: Some("/var/run/netns/p1".into()),
                    socket_path: Some("/run/x.sock".into()),
                    pci_id: Some("0000:00:1f.6".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    interface: Some(1),
                    address: net("10.244.1.5/32"),
                    gateway: Some(ip("169.254.1.1")),
                },
                IpConfig {
                    interface: Some(1),
                    address: net("fd00:10:244::5/128"),
                    gateway: None,
                },
                IpConfig {
                    interface: Some(1),
                    address: net("10.244.1.6/32"),
                    gateway: None,
                },
            ],
            routes: vec![
                Route {
                    gw: Some(ip("169.254.1.1")),
                    mtu: Some(1400),
                    advmss: Some(1360),
                    priority: Some(10),
                    table: Some(100),
                    scope: Some(0),
                    ..Route::to(net("0.0.0.0/0"))
                },
                Route::to(net("::/0")),
                Route::to(net("10.244.1.0/26")),
            ],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                domain: Some("cluster.local".into()),
                search: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            },
        }
    }

    #[test]
    fn golden_1_1_0_keeps_every_field() {
        let j = rich().to_json(CniVersion::V1_1_0);
        assert_eq!(j["cniVersion"], "1.1.0");
        assert_eq!(j["interfaces"][1]["mtu"], 1440);
        assert_eq!(j["interfaces"][1]["socketPath"], "/run/x.sock");
        assert_eq!(j["interfaces"][1]["pciID"], "0000:00:1f.6");
        assert_eq!(
            j["ips"][0],
            json!({"interface":1,"address":"10.244.1.5/32","gateway":"169.254.1.1"})
        );
        assert_eq!(
            j["routes"][0],
            json!({"dst":"0.0.0.0/0","gw":"169.254.1.1","mtu":1400,"advmss":1360,"priority":10,"table":100,"scope":0})
        );
        assert_eq!(j["dns"]["nameservers"], json!(["10.96.0.10"]));
    }

    #[test]
    fn golden_1_0_0_drops_version_and_1_1_fields() {
        let j = rich().to_json(CniVersion::V1_0_0);
        assert_eq!(
            j["interfaces"][1],
            json!({"name":"eth0","mac":"9a:1b:2c:3d:4e:5f","sandbox":"/var/run/netns/p1"})
        );
        assert_eq!(
            j["ips"][1],
            json!({"interface":1,"address":"fd00:10:244::5/128"})
        );
        assert_eq!(
            j["routes"][0],
            json!({"dst":"0.0.0.0/0","gw":"169.254.1.1"})
        );
    }

    #[test]
    fn golden_0_3_x_and_0_4_0_carry_ip_versions() {
        for v in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
            let j = rich().to_json(v);
            assert_eq!(j["cniVersion"], v.as_str());
            assert_eq!(j["ips"][0]["version"], "4");
            assert_eq!(j["ips"][1]["version"], "6");
            assert!(j["interfaces"][1].get("mtu").is_none());
        }
    }

    #[test]
    fn golden_legacy_keeps_first_address_per_family_and_routes_by_family() {
        for v in [CniVersion::V0_1_0, CniVersion::V0_2_0] {
            let j = rich().to_json(v);
            assert_eq!(
                j,
                json!({
                    "cniVersion": v.as_str(),
                    "ip4": {"ip":"10.244.1.5/32","gateway":"169.254.1.1",
                            "routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"},{"dst":"10.244.1.0/26"}]},
                    "ip6": {"ip":"fd00:10:244::5/128","routes":[{"dst":"::/0"}]},
                    "dns": {"nameservers":["10.96.0.10"],"domain":"cluster.local",
                            "search":["default.svc.cluster.local"],"options":["ndots:5"]}
                })
            );
        }
    }

    #[test]
    fn empty_parts_are_omitted() {
        let r = CniResult {
            ips: vec![IpConfig {
                interface: None,
                address: net("10.244.1.5/26"),
                gateway: None,
            }],
            ..CniResult::default()
        };
        assert_eq!(
            r.to_json(CniVersion::V1_0_0),
            json!({"cniVersion":"1.0.0","ips":[{"address":"10.244.1.5/26"}]})
        );
    }

    #[test]
    fn round_trip_in_every_version() {
        for v in CniVersion::ALL {
            let once = rich().as_seen_in(v);
            let j = once.to_json(v);
            let back = CniResult::from_json(&j, v).expect("decodes");
            assert_eq!(back, once, "round trip in {v}");
            assert_eq!(back.to_json(v), j, "stable encoding in {v}");
        }
        // Versions that lose nothing give the input back.
        assert_eq!(rich().as_seen_in(CniVersion::V1_1_0), rich());
    }

    #[test]
    fn conversion_between_every_version_pair() {
        for from in CniVersion::ALL {
            for to in CniVersion::ALL {
                let written = rich().to_json(from);
                let read = CniResult::from_json(&written, CniVersion::V1_1_0).expect("decodes");
                let converted = read.to_json(to);
                let expected = rich().as_seen_in(from).as_seen_in(to).to_json(to);
                assert_eq!(converted, expected, "{from} -> {to}");
                assert_eq!(converted["cniVersion"], to.as_str());
            }
        }
    }

    #[test]
    fn parses_results_printed_by_go_plugins() {
        // Debian's ptp + host-local, 0.4.0 list (libcni 1.1.2 prints an empty dns object).
        let j = json!({"cniVersion":"0.4.0","interfaces":[{"name":"veth8008933f","mac":"a2:dd:00:00:00:01"},
            {"name":"eth0","mac":"3e:3d:00:00:00:02","sandbox":"/var/run/netns/t0"}],
            "ips":[{"version":"4","interface":1,"address":"10.244.77.2/24","gateway":"10.244.77.1"}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{}});
        let r = CniResult::from_json(&j, CniVersion::V1_0_0).expect("decodes");
        assert_eq!(r.ips[0].address, net("10.244.77.2/24"));
        assert_eq!(r.ips[0].interface, Some(1));
        assert!(r.dns.is_empty());
        // Legacy with nulls, and no cniVersion (the default applies).
        let j = json!({"ip4":{"ip":"10.1.0.2/16","gateway":null,"routes":null},"dns":{"nameservers":null}});
        let r = CniResult::from_json(&j, CniVersion::V0_2_0).expect("decodes");
        assert_eq!(r.ips.len(), 1);
        assert!(r.routes.is_empty());
    }

    #[test]
    fn bad_results_are_decoding_or_version_errors() {
        let e = CniResult::from_json(&json!({"cniVersion":"9.9.9"}), CniVersion::V1_0_0)
            .expect_err("unknown version");
        assert_eq!(e.code, crate::ErrorCode::INCOMPATIBLE_VERSION);
        let e = CniResult::from_json(
            &json!({"cniVersion":"1.0.0","ips":[{"address":"not-an-ip"}]}),
            CniVersion::V1_0_0,
        )
        .expect_err("bad address");
        assert_eq!(e.code, crate::ErrorCode::DECODING_FAILURE);
    }

    /// Bad-input finding #14, for results: a struct given as an array (which serde's derive
    /// reads positionally) or a scalar is refused, naming the field.
    #[test]
    fn a_nested_struct_that_is_not_an_object_is_refused() {
        let ok = json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1/32"}]});
        for (field, bad, named) in [
            ("dns", json!(["1.1.1.1"]), "dns"),
            ("dns", json!(1), "dns"),
            ("ips", json!([["10.0.0.1/32"]]), "ips[0]"),
            (
                "interfaces",
                json!([{"name":"eth0"}, ["eth1"]]),
                "interfaces[1]",
            ),
            ("routes", json!([5]), "routes[0]"),
        ] {
            let mut v = ok.clone();
            v[field] = bad;
            let e = CniResult::from_json(&v, CniVersion::V1_0_0).expect_err(named);
            assert_eq!(e.code, crate::ErrorCode::DECODING_FAILURE, "{v}");
            assert!(
                e.msg.contains(&format!("{named:?}")) && e.msg.contains("expected an object"),
                "{v}: {}",
                e.msg
            );
        }
        let legacy = json!({"cniVersion":"0.2.0","ip4":["10.0.0.1/32"]});
        assert!(CniResult::from_json(&legacy, CniVersion::V0_2_0).is_err());
        let legacy = json!({"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.1/32","routes":[[]]}});
        let e = CniResult::from_json(&legacy, CniVersion::V0_2_0).expect_err("legacy route");
        assert!(e.msg.contains("ip4.routes[0]"), "{}", e.msg);
        // null stays "unset".
        let mut v = ok.clone();
        v["dns"] = Value::Null;
        CniResult::from_json(&v, CniVersion::V1_0_0).expect("null dns");
    }
}
