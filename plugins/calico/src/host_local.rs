//! Calico's special cases for the `host-local` IPAM plugin (`cni-plugin/pkg/k8s/k8s.go`
//! `CmdAddK8s`, `internal/pkg/utils` `ReplaceHostLocalIPAMPodCIDRs` and `DeleteIPAM`):
//!
//! - `"subnet": "usePodCidr"` (or `"usePodCidrIPv6"`), in the `ipam` section or in any of its
//!   `ranges`, is replaced by the node's pod CIDR of that family (the Node's
//!   `spec.podCIDRs`) before the config goes to host-local; on teardown by `0.0.0.0/0` /
//!   `::/0` (host-local releases by container ID, it only needs a valid range);
//! - `ipam.routes` replace the pod's default routes (their gateways are ignored: the pod
//!   routes via the host end), plus the defaults with `include_default_routes`.
//!
//! Both apply to Kubernetes pods only, as in Calico (the `cni` orchestrator passes the
//! config through and always routes by default).

use crate::workload::Context;
use calico_dataplane::workload::default_routes;
use calico_datastore::model::cidr::parse_cidr;
use cni_protocol::{CniError, Request};
use ipnet::IpNet;
use serde_json::{Map, Value};

/// Whether Calico's host-local special cases apply to an ADD: a Kubernetes pod with
/// `ipam.type: host-local`.
pub fn applies(ctx: &Context) -> bool {
    ctx.workload.orchestrator == "k8s" && ctx.conf.ipam.ipam_type == "host-local"
}

/// The request host-local must get: `req` with `usePodCidr` replaced by `pod_cidrs()`, or
/// `None` if there is nothing to replace (the config goes through byte for byte).
pub fn rewritten(
    req: &Request,
    pod_cidrs: &mut dyn FnMut() -> Result<(Option<String>, Option<String>), CniError>,
) -> Result<Option<Request>, CniError> {
    let mut config = req.config.clone();
    if !replace_pod_cidrs(&mut config, pod_cidrs)? {
        return Ok(None);
    }
    let stdin = serde_json::to_vec(&config)
        .map_err(|e| CniError::internal(format!("cannot encode the IPAM config: {e}")))?;
    Ok(Some(Request {
        stdin,
        config,
        ..req.clone()
    }))
}

/// The pod's routes for this ADD (or CHECK): [`pod_routes`] for a Kubernetes pod with
/// host-local, Calico's defaults otherwise.
pub fn routes_for(ctx: &Context, req: &Request) -> Result<Vec<IpNet>, CniError> {
    if applies(ctx) {
        pod_routes(&req.config, ctx.conf.include_default_routes)
    } else {
        Ok(default_routes())
    }
}

/// The pod CIDRs of each family, as Calico's `getIPsByFamily` sorts the Node's
/// `spec.podCIDRs`: each must be a CIDR; two entries must be one of each family. The CIDRs
/// are kept as written.
pub fn cidrs_by_family(cidrs: &[String]) -> Result<(Option<String>, Option<String>), CniError> {
    let (mut v4, mut v6) = (None, None);
    for cidr in cidrs {
        let net = parse_cidr(cidr).map(|c| c.net).ok_or_else(|| {
            CniError::invalid_config(format!("the node's pod CIDR {cidr:?} is not a CIDR"))
        })?;
        match net {
            IpNet::V4(_) => v4 = Some(cidr.clone()),
            IpNet::V6(_) => v6 = Some(cidr.clone()),
        }
    }
    if cidrs.len() > 1 && (v4.is_none() || v6.is_none()) {
        return Err(CniError::invalid_config(format!(
            "ClusterCIDR contains two ranges of the same type: {cidrs:?}"
        )));
    }
    Ok((v4, v6))
}

/// Replaces `usePodCidr` / `usePodCidrIPv6` (any case) in the config's `ipam` section and its
/// `ranges`, with the CIDRs `pod_cidrs` gives (asked at most once, and only if needed).
/// Whether anything was replaced. Mirrors `ReplaceHostLocalIPAMPodCIDRs`.
pub fn replace_pod_cidrs(
    config: &mut Map<String, Value>,
    pod_cidrs: &mut dyn FnMut() -> Result<(Option<String>, Option<String>), CniError>,
) -> Result<bool, CniError> {
    let mut cached: Option<(Option<String>, Option<String>)> = None;
    let mut get = || -> Result<(Option<String>, Option<String>), CniError> {
        if let Some(c) = &cached {
            return Ok(c.clone());
        }
        let c = pod_cidrs()?;
        cached = Some(c.clone());
        Ok(c)
    };
    let ipam = match config.get_mut("ipam") {
        Some(Value::Object(ipam)) => ipam,
        other => {
            return Err(CniError::invalid_config(format!(
                "failed to parse host-local IPAM data; was expecting a dict, not: {}",
                other.map_or_else(|| "nothing".to_string(), |v| v.to_string())
            )));
        }
    };
    let mut changed = replace_in(ipam, &mut get)?;
    match ipam.get_mut("ranges") {
        None | Some(Value::Null) => {}
        Some(Value::Array(sets)) => {
            for set in sets {
                let Value::Array(ranges) = set else {
                    return Err(CniError::invalid_config(format!(
                        "failed to parse host-local IPAM range set; was expecting a list, \
                         not: {set}"
                    )));
                };
                for range in ranges {
                    let Value::Object(range) = range else {
                        return Err(CniError::invalid_config(format!(
                            "failed to parse host-local IPAM data; was expecting a dict, not: \
                             {range}"
                        )));
                    };
                    changed |= replace_in(range, &mut get)?;
                }
            }
        }
        Some(other) => {
            return Err(CniError::invalid_config(format!(
                "failed to parse host-local IPAM ranges section; was expecting a list, not: \
                 {other}"
            )));
        }
    }
    Ok(changed)
}

/// One `subnet` field: `replaceHostLocalIPAMPodCIDR`.
fn replace_in(
    section: &mut Map<String, Value>,
    get: &mut dyn FnMut() -> Result<(Option<String>, Option<String>), CniError>,
) -> Result<bool, CniError> {
    let Some(subnet) = section.get("subnet").and_then(Value::as_str) else {
        return Ok(false);
    };
    let replacement = if subnet.eq_ignore_ascii_case("usePodCidr") {
        get()?.0.ok_or_else(|| {
            CniError::invalid_config("usePodCidr found but there is no IPv4 CIDR configured")
        })?
    } else if subnet.eq_ignore_ascii_case("usePodCidrIPv6") {
        get()?.1.ok_or_else(|| {
            CniError::invalid_config("usePodCidrIPv6 found but there is no IPv6 CIDR configured")
        })?
    } else {
        return Ok(false);
    };
    section.insert("subnet".to_string(), Value::String(replacement));
    Ok(true)
}

/// The stand-ins used when a pod is torn down (`DeleteIPAM`): any valid range will do.
pub fn teardown_cidrs() -> (Option<String>, Option<String>) {
    (Some("0.0.0.0/0".to_string()), Some("::/0".to_string()))
}

/// The pod's routes for a host-local config: `ipam.routes` (their `dst`, host bits cleared;
/// entries without one are skipped), after the defaults if `include_default_routes`; the
/// defaults alone if there are none. Mirrors the routes part of `CmdAddK8s`.
pub fn pod_routes(
    config: &Map<String, Value>,
    include_default_routes: bool,
) -> Result<Vec<IpNet>, CniError> {
    let mut routes = Vec::new();
    match config.get("ipam").and_then(|i| i.get("routes")) {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for route in list {
                let Value::Object(route) = route else {
                    return Err(CniError::invalid_config(format!(
                        "invalid IPAM routes section; expecting each route to be an object, \
                         not: {route}"
                    )));
                };
                let dst = match route.get("dst") {
                    None => continue,
                    Some(Value::String(d)) => d,
                    Some(other) => {
                        return Err(CniError::invalid_config(format!(
                            "invalid IPAM routes section; expecting 'dst' to be a string, not: \
                             {other}"
                        )));
                    }
                };
                let net = parse_cidr(dst).map(|c| c.net).ok_or_else(|| {
                    CniError::invalid_config(format!(
                        "invalid CIDR address in the host-local IPAM routes: {dst}"
                    ))
                })?;
                routes.push(net);
            }
        }
        Some(other) => {
            return Err(CniError::invalid_config(format!(
                "failed to parse host-local IPAM routes section; expecting list, not: {other}"
            )));
        }
    }
    if routes.is_empty() {
        return Ok(default_routes());
    }
    if include_default_routes {
        let mut all = default_routes();
        all.extend(routes);
        return Ok(all);
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_protocol::ErrorCode;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    fn node(v4: Option<&str>, v6: Option<&str>) -> (Option<String>, Option<String>) {
        (v4.map(str::to_string), v6.map(str::to_string))
    }

    /// Mirrors utils.go `ReplaceHostLocalIPAMPodCIDRs` / `replaceHostLocalIPAMPodCIDR`.
    #[test]
    fn use_pod_cidr_is_replaced_at_the_top_and_in_ranges() {
        let mut config = obj(json!({"name": "n", "ipam": {
            "type": "host-local", "subnet": "usePodCidr",
            "ranges": [[{"subnet": "usepodcidr"}], [{"subnet": "usePodCidrIPv6"}, {"subnet": "10.9.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}}));
        let mut asked = 0;
        let changed = replace_pod_cidrs(&mut config, &mut || {
            asked += 1;
            Ok(node(Some("10.85.0.0/24"), Some("fd00:85::/64")))
        })
        .unwrap();
        assert!(changed);
        assert_eq!(asked, 1, "the node is read once");
        assert_eq!(
            Value::Object(config)["ipam"],
            json!({"type": "host-local", "subnet": "10.85.0.0/24",
                   "ranges": [[{"subnet": "10.85.0.0/24"}], [{"subnet": "fd00:85::/64"}, {"subnet": "10.9.0.0/16"}]],
                   "routes": [{"dst": "0.0.0.0/0"}]})
        );
        // Nothing to replace: the node is not read.
        let mut plain = obj(json!({"ipam": {"type": "host-local", "subnet": "10.1.0.0/16"}}));
        assert!(!replace_pod_cidrs(&mut plain, &mut || panic!("not read")).unwrap());
    }

    #[test]
    fn a_missing_family_or_bad_sections_are_errors() {
        let mut config = obj(json!({"ipam": {"subnet": "usePodCidrIPv6"}}));
        let e = replace_pod_cidrs(&mut config, &mut || Ok(node(Some("10.85.0.0/24"), None)))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG);
        assert_eq!(
            e.msg,
            "usePodCidrIPv6 found but there is no IPv6 CIDR configured"
        );
        let mut config = obj(json!({"ipam": {"subnet": "usePodCidr"}}));
        let e =
            replace_pod_cidrs(&mut config, &mut || Ok(node(None, Some("fd00::/64")))).unwrap_err();
        assert_eq!(
            e.msg,
            "usePodCidr found but there is no IPv4 CIDR configured"
        );
        // The node's error (e.g. "no podCidr for node ...") is the ADD's.
        let mut config = obj(json!({"ipam": {"subnet": "usePodCidr"}}));
        let e = replace_pod_cidrs(&mut config, &mut || {
            Err(CniError::invalid_config("no podCidr for node node-1"))
        })
        .unwrap_err();
        assert!(e.msg.contains("no podCidr for node node-1"));
        for bad in [
            json!({"ipam": "host-local"}),
            json!({"ipam": {"ranges": {"subnet": "usePodCidr"}}}),
            json!({"ipam": {"ranges": [{"subnet": "usePodCidr"}]}}),
            json!({"ipam": {"ranges": [["usePodCidr"]]}}),
        ] {
            let e = replace_pod_cidrs(&mut obj(bad.clone()), &mut || Ok(node(None, None)))
                .expect_err("bad");
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{bad}");
        }
    }

    /// Mirrors k8s.go `getIPsByFamily`.
    #[test]
    fn pod_cidrs_by_family() {
        let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(
            cidrs_by_family(&s(&["10.85.0.0/24", "fd00:85::/64"])).unwrap(),
            node(Some("10.85.0.0/24"), Some("fd00:85::/64"))
        );
        assert_eq!(
            cidrs_by_family(&s(&["fd00:85::/64"])).unwrap(),
            node(None, Some("fd00:85::/64"))
        );
        let e = cidrs_by_family(&s(&["10.85.0.0/24", "10.86.0.0/24"])).unwrap_err();
        assert!(e.msg.contains("two ranges of the same type"), "{}", e.msg);
        assert!(cidrs_by_family(&s(&["10.85.0.0"])).is_err());
    }

    /// Mirrors the routes part of k8s.go `CmdAddK8s`.
    #[test]
    fn routes_replace_the_defaults_unless_asked_to_include_them() {
        let conf = |routes: Value| obj(json!({"ipam": {"type": "host-local", "routes": routes}}));
        let nets = |v: &[&str]| v.iter().map(|c| c.parse().unwrap()).collect::<Vec<IpNet>>();
        assert_eq!(
            pod_routes(&obj(json!({"ipam": {}})), false).unwrap(),
            default_routes()
        );
        assert_eq!(
            pod_routes(&conf(json!([])), true).unwrap(),
            default_routes()
        );
        let routes = conf(json!([{"dst": "10.96.0.5/12", "gw": "10.85.0.1"},
                                  {"gw": "ignored"}, {"dst": "fd00:96::/64"}]));
        assert_eq!(
            pod_routes(&routes, false).unwrap(),
            nets(&["10.96.0.0/12", "fd00:96::/64"])
        );
        assert_eq!(
            pod_routes(&routes, true).unwrap(),
            nets(&["0.0.0.0/0", "::/0", "10.96.0.0/12", "fd00:96::/64"])
        );
        for bad in [
            json!({"dst": "10.96.0.0/12"}),
            json!([{"dst": 10}]),
            json!([{"dst": "10.96.0.0"}]),
            json!(["10.96.0.0/12"]),
        ] {
            let e = pod_routes(&conf(bad.clone()), false).expect_err("bad");
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{bad}");
        }
    }
}
