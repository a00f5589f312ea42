//! Calico's pod annotations that change an endpoint beyond IPAM, read as `cni-plugin`'s
//! `CmdAddK8s` reads them (`cni-plugin/pkg/k8s/k8s.go`): `ipFamilies`, `floatingIPs` and
//! `allowedSourcePrefixes`. Every bad value is a code-7 error naming the annotation.

use calico_datastore::model::cidr;
use cni_protocol::CniError;
use ipnet::IpNet;
use serde_json::{Value, json};
use std::net::IpAddr;

/// The annotations' common prefix.
pub const PREFIX: &str = "cni.projectcalico.org/";

/// A JSON list of strings, as Go's `json.Unmarshal` into a `[]string` reads it (`null` is an
/// empty list).
fn string_list(annotation: &str, value: &str) -> Result<Vec<String>, CniError> {
    serde_json::from_str::<Option<Vec<String>>>(value)
        .map(Option::unwrap_or_default)
        .map_err(|e| {
            CniError::invalid_config(format!(
                "annotation {PREFIX}{annotation}: failed to parse {value:?} as a JSON list of \
                 strings: {e}"
            ))
        })
}

/// `cni.projectcalico.org/ipFamilies`: which families Calico IPAM assigns, replacing
/// `ipam.assign_ipv4` and `assign_ipv6` (Calico 3.30+). Exactly `"IPv4"` and `"IPv6"` are
/// accepted; a family not listed is not assigned.
///
/// Mirrors `CmdAddK8s` (k8s.go), which sets `assign_ipv4`/`assign_ipv6` to `"true"` for each
/// listed family and `"false"` for the others, and fails on any other entry.
pub fn ip_families(value: &str) -> Result<(bool, bool), CniError> {
    let mut families = (false, false);
    for family in string_list("ipFamilies", value)? {
        match family.as_str() {
            "IPv4" => families.0 = true,
            "IPv6" => families.1 = true,
            other => {
                return Err(CniError::invalid_config(format!(
                    "error parsing ipFamilies: {value}: {other:?} is neither \"IPv4\" nor \
                     \"IPv6\" (annotation {PREFIX}ipFamilies)"
                )));
            }
        }
    }
    Ok(families)
}

/// `cni.projectcalico.org/floatingIPs`: the external addresses, validated. Calico checks the
/// feature flag first ("requested feature is not enabled: floating_ips"), then parses the
/// JSON list; each entry must be an IP address (libcalico-go's validator refuses the endpoint
/// otherwise). An empty value is no annotation.
pub fn floating_ips(value: &str, enabled: bool) -> Result<Vec<String>, CniError> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    if !enabled {
        return Err(CniError::invalid_config(format!(
            "requested feature is not enabled: floating_ips (annotation {PREFIX}floatingIPs \
             needs feature_control.floating_ips)"
        )));
    }
    let ips = string_list("floatingIPs", value)?;
    for ip in &ips {
        if ip.parse::<IpAddr>().is_err() {
            return Err(CniError::invalid_config(format!(
                "annotation {PREFIX}floatingIPs: {ip:?} is not an IP address"
            )));
        }
    }
    Ok(ips)
}

/// The endpoint's `spec.ipNATs` for the floating IPs: each external address (as given)
/// mapped to the pod's address of its family (an external address with a `:` is IPv6), in
/// the annotation's order. The pod's last address of a family is the internal one, as in
/// `CmdAddK8s`. A family the pod has no address of is an error (Go writes `<nil>` there,
/// which libcalico-go's validator then refuses).
pub fn ip_nats(floating: &[String], pod_addresses: &[IpNet]) -> Result<Vec<Value>, CniError> {
    let last = |v6: bool| {
        pod_addresses
            .iter()
            .rev()
            .map(IpNet::addr)
            .find(|a| a.is_ipv6() == v6)
    };
    floating
        .iter()
        .map(|external| {
            let v6 = external.contains(':');
            let internal = last(v6).ok_or_else(|| {
                CniError::invalid_config(format!(
                    "annotation {PREFIX}floatingIPs: {external} is an IPv{} address but the \
                     pod has no IPv{} address to map it to",
                    if v6 { 6 } else { 4 },
                    if v6 { 6 } else { 4 },
                ))
            })?;
            Ok(json!({"internalIP": internal.to_string(), "externalIP": external}))
        })
        .collect()
}

/// `cni.projectcalico.org/allowedSourcePrefixes`: the source prefixes the pod may spoof,
/// each normalised (`10.0.0.5/8` becomes `10.0.0.0/8`). Mirrors libcalico-go's
/// `HandleSourceIPSpoofingAnnotation`: an entry that is not a CIDR fails the ADD; an empty
/// value is no annotation.
pub fn allowed_source_prefixes(value: &str) -> Result<Vec<String>, CniError> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    string_list("allowedSourcePrefixes", value)?
        .iter()
        .map(|p| {
            cidr::parse_cidr(p)
                .map(|c| c.net.to_string())
                .ok_or_else(|| {
                    CniError::invalid_config(format!(
                        "annotation {PREFIX}allowedSourcePrefixes: failed to parse {p:?} as a CIDR"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_protocol::ErrorCode;

    /// Mirrors k8s.go `CmdAddK8s`, the ipFamilies switch: exactly "IPv4" and "IPv6".
    #[test]
    fn ip_families_as_calico_reads_them() {
        assert_eq!(ip_families(r#"["IPv4"]"#).unwrap(), (true, false));
        assert_eq!(ip_families(r#"["IPv6"]"#).unwrap(), (false, true));
        assert_eq!(ip_families(r#"["IPv6","IPv4"]"#).unwrap(), (true, true));
        assert_eq!(ip_families(r#"["IPv4","IPv4"]"#).unwrap(), (true, false));
        // An empty list (or null) assigns nothing, as Go's "false"/"false".
        assert_eq!(ip_families("[]").unwrap(), (false, false));
        assert_eq!(ip_families("null").unwrap(), (false, false));
        for bad in [r#"["ipv4"]"#, r#"["IPv4","dual"]"#, "IPv4", r#"[4]"#, "{}"] {
            let e = ip_families(bad).expect_err(bad);
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{bad}");
            assert!(e.msg.contains("ipFamilies"), "{bad}: {}", e.msg);
        }
    }

    /// Mirrors k8s.go `CmdAddK8s`, the floatingIPs block (and the endpoint validator's `ip`
    /// rule on `IPNAT.ExternalIP`).
    #[test]
    fn floating_ips_need_the_feature_and_addresses() {
        assert!(floating_ips("", false).unwrap().is_empty());
        let e = floating_ips(r#"["1.2.3.4"]"#, false).unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG);
        assert!(
            e.msg
                .contains("requested feature is not enabled: floating_ips")
        );
        assert_eq!(
            floating_ips(r#"["1.2.3.4","2001:db8::1"]"#, true).unwrap(),
            ["1.2.3.4", "2001:db8::1"]
        );
        for bad in [r#"["1.2.3"]"#, r#"["1.2.3.4/32"]"#, "1.2.3.4", r#"{"a":1}"#] {
            let e = floating_ips(bad, true).expect_err(bad);
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{bad}");
            assert!(e.msg.contains("floatingIPs"), "{bad}: {}", e.msg);
        }
    }

    #[test]
    fn ip_nats_map_each_family_to_the_pods_address() {
        let pod: Vec<IpNet> = vec![
            "10.244.1.5/26".parse().unwrap(),
            "fd00::5/122".parse().unwrap(),
        ];
        let nats = ip_nats(&["172.16.0.9".to_string(), "2001:db8::9".to_string()], &pod).unwrap();
        assert_eq!(
            Value::Array(nats),
            json!([{"internalIP":"10.244.1.5","externalIP":"172.16.0.9"},
                   {"internalIP":"fd00::5","externalIP":"2001:db8::9"}])
        );
        let e = ip_nats(&["2001:db8::9".to_string()], &pod[..1]).unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG);
        assert!(e.msg.contains("no IPv6 address"), "{}", e.msg);
        assert!(ip_nats(&[], &[]).unwrap().is_empty());
    }

    /// Mirrors libcalico-go `HandleSourceIPSpoofingAnnotation`.
    #[test]
    fn allowed_source_prefixes_are_checked_and_normalised() {
        assert!(allowed_source_prefixes("").unwrap().is_empty());
        assert!(allowed_source_prefixes("null").unwrap().is_empty());
        assert_eq!(
            allowed_source_prefixes(r#"["192.168.7.9/16","2001:db8::5/64"]"#).unwrap(),
            ["192.168.0.0/16", "2001:db8::/64"]
        );
        // As Go's `IPNet.String()` prints them (see calico_datastore::model::cidr).
        assert_eq!(
            allowed_source_prefixes(r#"["10.1.2.3/08","::ffff:10.1.2.3/120"]"#).unwrap(),
            ["10.0.0.0/8", "10.1.2.0/24"]
        );
        for bad in [
            r#"["192.168.0.0"]"#,
            r#"["x/8"]"#,
            r#"["010.0.0.0/8"]"#,
            "192.168.0.0/16",
            "[1]",
        ] {
            let e = allowed_source_prefixes(bad).expect_err(bad);
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{bad}");
            assert!(e.msg.contains("allowedSourcePrefixes"), "{bad}: {}", e.msg);
        }
    }
}
