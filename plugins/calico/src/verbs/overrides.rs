//! What Calico's pod annotations (of the pod, or its namespace) change in an ADD: pools,
//! families and addresses for IPAM, addresses without IPAM, the MAC, the endpoint's
//! allowed source prefixes and floating IPs.

use super::Deps;
use crate::annotations;
use crate::workload::{Context, parse_mac};
use calico_ipam::cni::Overrides;
use cni_protocol::CniError;
use std::net::IpAddr;

/// What Calico's pod annotations change, read from the pod and its namespace.
pub(super) struct PodOverrides {
    pub ipam: Overrides,
    /// `ipAddrsNoIpam`: addresses used as given, no IPAM at all.
    pub no_ipam: Vec<IpAddr>,
    pub mac: Option<[u8; 6]>,
    /// `allowedSourcePrefixes`, normalised.
    pub source_prefixes: Vec<String>,
    /// `floatingIPs`, validated (the feature is on): they become the endpoint's `ipNATs`.
    pub floating_ips: Vec<String>,
}

fn json_list(v: Option<&String>, what: &str) -> Result<Option<Vec<String>>, CniError> {
    v.map(|s| {
        serde_json::from_str::<Vec<String>>(s).map_err(|e| {
            CniError::invalid_config(format!("annotation {what} is not a JSON list: {e}"))
        })
    })
    .transpose()
}

fn addresses_of(list: Vec<String>, what: &str) -> Result<Vec<IpAddr>, CniError> {
    list.iter()
        .map(|s| {
            s.split('/')
                .next()
                .unwrap_or(s)
                .parse::<IpAddr>()
                .map_err(|_| CniError::invalid_config(format!("{what}: {s:?} is not an address")))
        })
        .collect()
}

pub(super) fn pod_overrides(ctx: &Context, deps: &Deps<'_>) -> Result<PodOverrides, CniError> {
    let mut out = PodOverrides {
        ipam: Overrides {
            namespace_labels: deps.namespace_labels.clone().unwrap_or_default(),
            ..Overrides::default()
        },
        no_ipam: Vec::new(),
        mac: None,
        source_prefixes: Vec::new(),
        floating_ips: Vec::new(),
    };
    let Some(pod) = deps.pod.as_ref() else {
        return Ok(out);
    };
    const P: &str = annotations::PREFIX;
    // The pod's annotation if set (non-empty), else the namespace's, as CmdAddK8s.
    let pick = |name: &str| {
        let key = format!("{P}{name}");
        pod.annotations
            .get(&key)
            .filter(|v| !v.is_empty())
            .or_else(|| pod.namespace_annotations.get(&key))
            .filter(|v| !v.is_empty())
    };
    out.ipam.v4_pools = json_list(pick("ipv4pools"), "ipv4pools")?;
    out.ipam.v6_pools = json_list(pick("ipv6pools"), "ipv6pools")?;
    // Like the pool annotations, only Calico IPAM reads ipFamilies.
    if ctx.ipam_in_process() {
        out.ipam.families = pick("ipFamilies")
            .map(|v| annotations::ip_families(v))
            .transpose()?;
    }
    out.ipam.namespace_labels = pod.namespace_labels.clone();
    let own = |name: &str| {
        pod.annotations
            .get(&format!("{P}{name}"))
            .map_or("", String::as_str)
    };
    out.source_prefixes = annotations::allowed_source_prefixes(own("allowedSourcePrefixes"))?;
    out.floating_ips =
        annotations::floating_ips(own("floatingIPs"), ctx.conf.feature_control.floating_ips)?;
    let ip_addrs = json_list(pod.annotations.get(&format!("{P}ipAddrs")), "ipAddrs")?;
    let no_ipam = json_list(
        pod.annotations.get(&format!("{P}ipAddrsNoIpam")),
        "ipAddrsNoIpam",
    )?;
    match (ip_addrs, no_ipam) {
        (Some(_), Some(_)) => {
            return Err(CniError::invalid_config(
                "annotations ipAddrs and ipAddrsNoIpam cannot both be set",
            ));
        }
        (Some(list), None) => {
            if !ctx.ipam_in_process() {
                return Err(CniError::invalid_config(
                    "annotation ipAddrs needs ipam.type calico-ipam",
                ));
            }
            out.ipam.addresses = addresses_of(list, "ipAddrs")?;
        }
        (None, Some(list)) => {
            if !ctx.conf.feature_control.ip_addrs_no_ipam {
                return Err(CniError::invalid_config(
                    "annotation ipAddrsNoIpam needs feature_control.ip_addrs_no_ipam",
                ));
            }
            out.no_ipam = addresses_of(list, "ipAddrsNoIpam")?;
        }
        (None, None) => {}
    }
    if let Some(m) = pod.annotations.get(&format!("{P}hwAddr")) {
        out.mac = Some(parse_mac(m).ok_or_else(|| {
            CniError::invalid_config(format!("annotation hwAddr {m:?} is not a MAC address"))
        })?);
    }
    Ok(out)
}
