//! Calico's checks and defaults for the resources, as pure functions.
//!
//! IPPool follows `clientv3/ippool.go: validateAndSetDefaults` (defaults written, canonical
//! CIDR, immutability on update, overlap on create) and then the struct validator
//! (`validator/v3: validateIPPoolSpec`). IPAMConfiguration follows `clientv3/ipamconfig.go`;
//! BGPPeer and BGPConfiguration `clientv3/bgppeer.go` and `bgpconfig.go` (`validateBGPPeerSpec`,
//! `validateBGPConfigurationSpec`, `ValidateDefaultOnlyFields`).
//! Messages are Calico's `ErrorValidation` text: `error with field <Name> = '<value>' (<reason>)`.

use calico_datastore::model::bgp::{BgpConfigurationSpec, BgpPeerSpec, parse_go_duration};
use calico_datastore::model::{IpPoolSpec, cidr};
use calico_datastore::model::{IpamConfigurationSpec, NodeSpec};
use calico_selector::Selector;
use ipnet::IpNet;
use std::net::IpAddr;

/// Calico's validation errors, shared with the policy kinds' validator.
pub use calico_validation::{ErroredField, ValidationError};

fn fail(fields: Vec<ErroredField>) -> Result<(), ValidationError> {
    if fields.is_empty() {
        Ok(())
    } else {
        Err(ValidationError(fields))
    }
}

/// Go's `net.ParseCIDR` ([`cidr::parse_cidr`]): the address as written and the masked
/// network, as the checks here take them.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, IpNet)> {
    cidr::parse_cidr(s).map(|c| (c.addr, c.net))
}

/// Calico's `ParseCIDROrIP` ([`cidr::parse_cidr_or_ip`]): a CIDR, or a bare address as a
/// host route.
pub fn parse_cidr_or_ip(s: &str) -> Option<(IpAddr, IpNet)> {
    cidr::parse_cidr_or_ip(s).map(|c| (c.addr, c.net))
}

/// Whether two networks share an address (`IsNetOverlap`).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Calico's resource name rule (DNS-1123 subdomain).
pub fn check_name(kind: &str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return fail(vec![ErroredField::new(
            "Metadata.Name",
            None,
            "field must be set for a Create request",
        )]);
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return fail(vec![ErroredField::new(
            &format!("{kind}.Metadata.Name"),
            Some(name.to_string()),
            "name must consist of lower case alphanumeric characters, '-' or '.', and must \
             start and end with an alphanumeric character",
        )]);
    }
    Ok(())
}

/// What an IPPool is checked against.
pub struct PoolContext<'a> {
    /// The stored pool (with read defaults) when this is an update.
    pub old: Option<&'a IpPoolSpec>,
    /// Other pools (name, CIDR as stored) when this is a create: the CIDR may not overlap them.
    pub others: Option<&'a [(String, String)]>,
}

const MODES: [&str; 3] = ["Always", "CrossSubnet", "Never"];

/// Validates `spec` of pool `name` and writes Calico's defaults and the canonical CIDR into it.
pub fn ippool(name: &str, spec: &mut IpPoolSpec, ctx: &PoolContext) -> Result<(), ValidationError> {
    let cidr_field = "IPPool.Spec.CIDR";
    if spec.cidr.is_empty() {
        return fail(vec![ErroredField::new(
            cidr_field,
            None,
            "IPPool CIDR must be specified",
        )]);
    }
    let Some((ip, cidr)) = parse_cidr(&spec.cidr) else {
        return fail(vec![ErroredField::new(
            cidr_field,
            Some(spec.cidr.clone()),
            "IPPool CIDR must be a valid subnet",
        )]);
    };
    let v4 = ip.is_ipv4();
    spec.cidr = cidr.to_string();
    if spec.node_selector.is_empty() {
        spec.node_selector = "all()".into();
    }
    let mut errs = Vec::new();
    if let Some(old) = ctx.old {
        let same = old.cidr == spec.cidr || parse_cidr(&old.cidr).is_some_and(|(_, o)| o == cidr);
        if !same {
            errs.push(ErroredField::new(
                cidr_field,
                Some(spec.cidr.clone()),
                "IPPool CIDR cannot be modified",
            ));
        }
    }
    if spec.block_size == 0 {
        spec.block_size = if v4 { 26 } else { 122 };
    }
    if spec.allowed_uses.is_empty() {
        spec.allowed_uses = vec!["Workload".into(), "Tunnel".into()];
    }
    if let Some(old) = ctx.old
        && old.allowed_uses.iter().any(|u| u == "LoadBalancer")
        && spec.allowed_uses.iter().any(|u| u != "LoadBalancer")
    {
        return fail(vec![ErroredField::new(
            "IPPool.Spec.AllowedUses",
            Some(format!("[{}]", spec.allowed_uses.join(" "))),
            "IPPool allowed use cannot be changed from LoadBalacer to Workload or Tunnel",
        )]);
    }
    if spec.assignment_mode.is_none() {
        spec.assignment_mode = Some("Automatic".into());
    }
    let bs_field = "IPPool.Spec.BlockSize";
    if let Some(old) = ctx.old
        && old.block_size != spec.block_size
    {
        errs.push(ErroredField::new(
            bs_field,
            Some(spec.block_size.to_string()),
            "IPPool BlockSize cannot be modified",
        ));
    }
    let (lo, hi, reason) = if v4 {
        (20, 32, "IPv4 block size must be between 20 and 32")
    } else {
        (116, 128, "IPv6 block size must be between 116 and 128")
    };
    if !(lo..=hi).contains(&spec.block_size) {
        errs.push(ErroredField::new(
            bs_field,
            Some(spec.block_size.to_string()),
            reason,
        ));
    }
    if !spec.disabled && cidr.prefix_len() > spec.block_size {
        errs.push(ErroredField::new(
            cidr_field,
            Some(spec.cidr.clone()),
            "IP pool size is too small for use with Calico IPAM. It must be equal to or \
             greater than the block size.",
        ));
    }
    if let Some(others) = ctx.others {
        for (other_name, other_cidr) in others {
            if other_name == name {
                continue;
            }
            if let Some((_, o)) = parse_cidr(other_cidr)
                && overlaps(&o, &cidr)
            {
                errs.push(ErroredField::new(
                    cidr_field,
                    Some(spec.cidr.clone()),
                    format!(
                        "IPPool({name}) CIDR overlaps with IPPool({other_name}) CIDR {other_cidr}"
                    ),
                ));
            }
        }
    }
    if spec.ipip_mode.is_empty() {
        spec.ipip_mode = "Never".into();
    }
    if spec.vxlan_mode.is_empty() {
        spec.vxlan_mode = "Never".into();
    }
    if spec.vxlan_mode != "Never" && spec.ipip_mode != "Never" {
        errs.push(ErroredField::new(
            "IPPool.Spec.VXLANMode",
            Some(spec.vxlan_mode.clone()),
            "Cannot enable both VXLAN and IPIP on the same IPPool",
        ));
    }
    if !v4 && spec.ipip_mode != "Never" {
        errs.push(ErroredField::new(
            "IPPool.Spec.IPIPMode",
            Some(spec.ipip_mode.clone()),
            "IPIP is not supported on an IPv6 IP pool",
        ));
    }
    if cidr.network() != ip {
        errs.push(ErroredField::new(
            cidr_field,
            Some(spec.cidr.clone()),
            "IPPool CIDR is not strictly masked",
        ));
    }
    let link_local: IpNet = if v4 {
        IpNet::V4(ipnet::Ipv4Net::new([169, 254, 0, 0].into(), 16).unwrap_or_default())
    } else {
        IpNet::V6(ipnet::Ipv6Net::new([0xfe80, 0, 0, 0, 0, 0, 0, 0].into(), 10).unwrap_or_default())
    };
    if overlaps(&cidr, &link_local) {
        let reason = if v4 {
            "IPPool CIDR overlaps with IPv4 Link Local range 169.254.0.0/16"
        } else {
            "IPPool CIDR overlaps with IPv6 Link Local range fe80::/10"
        };
        errs.push(ErroredField::new(
            cidr_field,
            Some(spec.cidr.clone()),
            reason,
        ));
    }
    fail(errs)?;
    ippool_struct(spec)
}

/// The struct validator's checks (field values, allowed uses, selectors).
fn ippool_struct(spec: &IpPoolSpec) -> Result<(), ValidationError> {
    let mut errs = Vec::new();
    for (field, value) in [
        ("IPPool.Spec.IPIPMode", &spec.ipip_mode),
        ("IPPool.Spec.VXLANMode", &spec.vxlan_mode),
    ] {
        if !MODES.contains(&value.as_str()) {
            errs.push(ErroredField::new(
                field,
                Some(value.clone()),
                "must be one of Always, CrossSubnet, Never",
            ));
        }
    }
    if let Some(m) = &spec.assignment_mode
        && m != "Automatic"
        && m != "Manual"
    {
        errs.push(ErroredField::new(
            "IPPool.Spec.AssignmentMode",
            Some(m.clone()),
            "must be Automatic or Manual",
        ));
    }
    let lb = spec.allowed_uses.iter().any(|u| u == "LoadBalancer");
    for u in &spec.allowed_uses {
        match u.as_str() {
            "LoadBalancer" => {}
            "Workload" | "Tunnel" if lb => errs.push(ErroredField::new(
                "IPPool.Spec.AllowedUses",
                None,
                format!("LoadBalancer cannot be used at the same time as: {u}"),
            )),
            "Workload" | "Tunnel" => {}
            other => errs.push(ErroredField::new(
                "IPPool.Spec.AllowedUses",
                None,
                format!("unknown use: {other}"),
            )),
        }
    }
    if lb && (spec.ipip_mode != "Never" || spec.vxlan_mode != "Never") {
        errs.push(ErroredField::new(
            "IPPool.Spec.IPIPMode",
            None,
            "Neither IPIPMode nor VXLANMode can be enabled on AllowedUses LoadBalancer IP pool",
        ));
    }
    if lb && spec.node_selector != "all()" {
        errs.push(ErroredField::new(
            "IPPool.Spec.NodeSelector",
            None,
            "IP Pool with AllowedUse LoadBalancer must have node selector set to all()",
        ));
    }
    if spec.allowed_uses.iter().any(|u| u == "Tunnel") && !spec.namespace_selector.is_empty() {
        errs.push(ErroredField::new(
            "IPPool.Spec.NamespaceSelector",
            None,
            "IP Pool with AllowedUse Tunnel cannot have namespaceSelector specified - tunnel \
             IPs are not namespaced resources",
        ));
    }
    for (field, sel) in [
        ("IPPool.Spec.NodeSelector", &spec.node_selector),
        ("IPPool.Spec.NamespaceSelector", &spec.namespace_selector),
    ] {
        if sel.contains("global(") {
            errs.push(ErroredField::new(
                field,
                Some(sel.clone()),
                "global() selector is not valid for IPPool selectors - use all() instead",
            ));
        } else if let Err(e) = Selector::parse(sel) {
            // A hostile selector can be megabytes long: the error names the field and the
            // reason, and shows the value only when it is short.
            let shown = (sel.len() <= SHOWN_SELECTOR).then(|| sel.clone());
            errs.push(ErroredField::new(field, shown, e.reason));
        }
    }
    fail(errs)
}

/// The longest selector an error message repeats in full.
const SHOWN_SELECTOR: usize = 256;

/// An existing block of another size inside the pool (`IPPool blocksSize conflicts ...`);
/// the rule is the IPAM's ([`calico_ipam::pools::block_size_conflict`]).
pub fn block_size_conflict(spec: &IpPoolSpec, blocks: &[IpNet]) -> Result<(), ValidationError> {
    let Some((_, cidr)) = parse_cidr(&spec.cidr) else {
        return Ok(());
    };
    if calico_ipam::pools::block_size_conflict(&cidr, spec.block_size, blocks) {
        return fail(vec![ErroredField::new(
            "IPPool.Spec.BlockSize",
            Some(spec.block_size.to_string()),
            "IPPool blocksSize conflicts with existing allocations that use a different blockSize",
        )]);
    }
    Ok(())
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    matches!(parts.len(), 6 | 8 | 20)
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The Node's address fields.
pub fn node(spec: &NodeSpec) -> Result<(), ValidationError> {
    let mut errs = Vec::new();
    if spec.bgp.as_ref().is_some_and(|b| *b == Default::default()) {
        // validateNodeSpec: a BGP section with nothing in it (Go prints the nil pointer and
        // four empty strings of the struct).
        errs.push(ErroredField::new(
            "BGP",
            Some("&{<nil>    }".into()),
            "Spec.BGP should not be empty",
        ));
    }
    let mut check = |field: &str, value: &str, ok: bool, what: &str| {
        if !value.is_empty() && !ok {
            errs.push(ErroredField::new(
                field,
                Some(value.to_string()),
                format!("must be {what}"),
            ));
        }
    };
    let v4 = |s: &str| s.parse::<std::net::Ipv4Addr>().is_ok();
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().is_ok();
    let cidr_v =
        |s: &str, want_v4: bool| parse_cidr_or_ip(s).is_some_and(|(ip, _)| ip.is_ipv4() == want_v4);
    if let Some(bgp) = &spec.bgp {
        check(
            "Node.Spec.BGP.IPv4Address",
            &bgp.ipv4_address,
            cidr_v(&bgp.ipv4_address, true),
            "an IPv4 address or CIDR",
        );
        check(
            "Node.Spec.BGP.IPv6Address",
            &bgp.ipv6_address,
            cidr_v(&bgp.ipv6_address, false),
            "an IPv6 address or CIDR",
        );
        check(
            "Node.Spec.BGP.IPv4IPIPTunnelAddr",
            &bgp.ipv4_ipip_tunnel_addr,
            v4(&bgp.ipv4_ipip_tunnel_addr),
            "an IPv4 address",
        );
        check(
            "Node.Spec.BGP.RouteReflectorClusterID",
            &bgp.route_reflector_cluster_id,
            v4(&bgp.route_reflector_cluster_id),
            "an IPv4 address",
        );
    }
    check(
        "Node.Spec.IPv4VXLANTunnelAddr",
        &spec.ipv4_vxlan_tunnel_addr,
        v4(&spec.ipv4_vxlan_tunnel_addr),
        "an IPv4 address",
    );
    check(
        "Node.Spec.IPv6VXLANTunnelAddr",
        &spec.ipv6_vxlan_tunnel_addr,
        v6(&spec.ipv6_vxlan_tunnel_addr),
        "an IPv6 address",
    );
    check(
        "Node.Spec.VXLANTunnelMACAddr",
        &spec.vxlan_tunnel_mac_addr,
        is_mac(&spec.vxlan_tunnel_mac_addr),
        "a MAC address",
    );
    check(
        "Node.Spec.VXLANTunnelMACAddrV6",
        &spec.vxlan_tunnel_mac_addr_v6,
        is_mac(&spec.vxlan_tunnel_mac_addr_v6),
        "a MAC address",
    );
    if let Some(wg) = &spec.wireguard {
        check(
            "Node.Spec.Wireguard.InterfaceIPv4Address",
            &wg.interface_ipv4_address,
            v4(&wg.interface_ipv4_address),
            "an IPv4 address",
        );
        check(
            "Node.Spec.Wireguard.InterfaceIPv6Address",
            &wg.interface_ipv6_address,
            v6(&wg.interface_ipv6_address),
            "an IPv6 address",
        );
    }
    for a in &spec.addresses {
        if parse_cidr_or_ip(&a.address).is_none() {
            errs.push(ErroredField::new(
                "Node.Spec.Addresses.Address",
                Some(a.address.clone()),
                "must be an IP address or CIDR",
            ));
        }
    }
    for r in &spec.orch_refs {
        if r.orchestrator.is_empty() {
            errs.push(ErroredField::new(
                "Node.Spec.OrchRefs.Orchestrator",
                None,
                "must be set",
            ));
        }
    }
    fail(errs)
}

/// `clientv3/ipamconfig.go` Create and Update: `validator.Validate` (the name, the struct
/// check `validateIPAMConfigSpec`, then in etcd mode the CRD schema: `maxBlocksPerHost` in
/// 0..=1000000, `kubeVirtVMAddressPersistence` one of `Enabled`/`Disabled`), then
/// `validateMetadata` (the name must be `default`). None of `SetIPAMConfig`'s rules apply:
/// this resource is not the config the IPAM reads.
pub fn ipam_configuration(name: &str, spec: &IpamConfigurationSpec) -> Result<(), String> {
    check_name("IPAMConfiguration", name).map_err(|e| e.to_string())?;
    let mut errs = Vec::new();
    let max = spec.max_blocks_per_host;
    if max < 0 {
        errs.push(ErroredField::new(
            "MaxBlocksPerHost",
            Some(max.to_string()),
            "must be greater than or equal to 0",
        ));
    }
    // The CRD checks, as the apiextensions schema validator words them.
    const MAX_FIELD: &str = "spec.maxBlocksPerHost";
    if max < 0 {
        errs.push(ErroredField::new(
            MAX_FIELD,
            None,
            format!("{MAX_FIELD} in body should be greater than or equal to 0"),
        ));
    } else if max > 1_000_000 {
        errs.push(ErroredField::new(
            MAX_FIELD,
            None,
            format!("{MAX_FIELD} in body should be less than or equal to 1000000"),
        ));
    }
    if let Some(p) = &spec.kubevirt_vm_address_persistence
        && p != "Enabled"
        && p != "Disabled"
    {
        errs.push(ErroredField::new(
            "spec.kubeVirtVMAddressPersistence",
            None,
            r#"supported values: "Enabled", "Disabled""#,
        ));
    }
    fail(errs).map_err(|e| e.to_string())?;
    if name != "default" {
        return Err(
            r#"Cannot create an IPAMConfiguration resource with a name other than "default""#
                .into(),
        );
    }
    Ok(())
}

/// Calico's `name` field rule (`nameRegex`: DNS-1123 subdomain labels joined by dots).
fn is_calico_name(s: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    s.len() <= 253 && s.split('.').all(label_ok)
}

/// A field validator's failure as `convertError` words it: the struct field, its value, and
/// `extractReason`'s text for a tag without a reason of its own.
fn tag_error(field: &str, value: &str, tag: &str) -> ErroredField {
    ErroredField::new(
        field,
        Some(value.to_string()),
        format!("Reason: failed to validate Field: {field} because of Tag: {tag} "),
    )
}

/// The CRD schema's enum check, as `defaultAndValidateCRD` reports it in etcd mode (the
/// JSON path, no value).
fn enum_error(path: &str, allowed: &[&str]) -> ErroredField {
    let quoted: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    ErroredField::new(
        path,
        None,
        format!("supported values: {}", quoted.join(", ")),
    )
}

fn check_enum(errs: &mut Vec<ErroredField>, path: &str, value: Option<&str>, allowed: &[&str]) {
    if let Some(v) = value
        && !allowed.contains(&v)
    {
        errs.push(enum_error(path, allowed));
    }
}

/// A `metav1.Duration` field: Go's `time.ParseDuration` refuses it at decoding.
fn check_duration(errs: &mut Vec<ErroredField>, field: &str, value: Option<&str>) {
    if let Some(v) = value
        && parse_go_duration(v).is_none()
    {
        errs.push(ErroredField::new(
            field,
            Some(v.to_string()),
            format!("time: invalid duration \"{v}\""),
        ));
    }
}

fn check_selector(errs: &mut Vec<ErroredField>, field: &str, sel: &str) {
    if !sel.is_empty() && Selector::parse(sel).is_err() {
        let shown = if sel.len() <= SHOWN_SELECTOR { sel } else { "" };
        errs.push(tag_error(field, shown, "selector"));
    }
}

/// `processIPPort` in validator.go: `<IP>`, `<IPv4>:<port>` or `[<IPv6>]:<port>` (port
/// 1..=65535); the address and the port (0 when none).
pub fn process_ip_port(ip_port: &str) -> Option<(IpAddr, u16)> {
    if ip_port.is_empty() {
        return None;
    }
    let v4_port = {
        // `^(\d+).(\d+).(\d+).(\d+):(\d+)$` (its dots match any character).
        let (host, port) = ip_port.rsplit_once(':').unwrap_or((ip_port, ""));
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && host.contains(|c: char| c.is_ascii_digit())
            && !host.contains(':')
    };
    let v6_port = ip_port.starts_with('[')
        && ip_port.rsplit_once("]:").is_some_and(|(h, p)| {
            h.len() > 1
                && h[1..]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                && !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
        });
    let (host, port) = if v4_port || v6_port {
        let (h, p) = ip_port.rsplit_once(':')?;
        let h = h
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(h);
        let port: u16 = p.parse().ok()?;
        if port < 1 {
            return None;
        }
        (h, port)
    } else {
        (ip_port, 0)
    };
    Some((host.parse().ok()?, port))
}

/// `isValidCommunity` and `validateCommunityValue`: `aa:nn` (16-bit parts) or `aa:nn:mm`
/// (32-bit parts). `None`: not a community value at all; `Some(false)`: the shape of one
/// with a part out of range.
fn community_value(value: &str) -> Option<bool> {
    let parts: Vec<&str> = value.split(':').collect();
    if !(2..=3).contains(&parts.len())
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let in_range = if parts.len() == 2 {
        parts.iter().all(|p| p.parse::<u16>().is_ok())
    } else {
        parts.iter().all(|p| p.parse::<u32>().is_ok())
    };
    Some(in_range)
}

fn community_range_error(field: &str, value: &str) -> ErroredField {
    let bits = if value.split(':').count() == 2 {
        16
    } else {
        32
    };
    ErroredField::new(
        field,
        Some(value.to_string()),
        format!("invalid community value, expected {bits} bit value"),
    )
}

/// `clientv3/bgppeer.go` Create and Update: `validator.Validate` on the resource: the
/// name, the field tags of `BGPPeerSpec`, `validateBGPPeerSpec`, and in etcd mode the CRD
/// enums (`nextHopMode`, `reversePeering`); a bad duration is refused at decoding in Go.
pub fn bgp_peer(name: &str, spec: &BgpPeerSpec) -> Result<(), ValidationError> {
    check_name("BGPPeer", name)?;
    let mut errs = Vec::new();
    if !spec.node.is_empty() && !is_calico_name(&spec.node) {
        errs.push(tag_error("Node", &spec.node, "name"));
    }
    check_selector(&mut errs, "NodeSelector", &spec.node_selector);
    if !spec.peer_ip.is_empty() && process_ip_port(&spec.peer_ip).is_none() {
        errs.push(tag_error("PeerIP", &spec.peer_ip, "IP:port"));
    }
    check_selector(&mut errs, "PeerSelector", &spec.peer_selector);
    if !spec.source_address.is_empty()
        && !["UseNodeIP", "None"].contains(&spec.source_address.as_str())
    {
        errs.push(tag_error(
            "SourceAddress",
            &spec.source_address,
            "sourceAddress",
        ));
    }
    check_duration(
        &mut errs,
        "MaxRestartTime",
        spec.max_restart_time.as_deref(),
    );
    check_duration(&mut errs, "KeepaliveTime", spec.keepalive_time.as_deref());
    if !spec.reachable_by.is_empty() && spec.reachable_by.parse::<IpAddr>().is_err() {
        errs.push(tag_error("ReachableBy", &spec.reachable_by, "reachableBy"));
    }
    for (i, f) in spec.filters.iter().enumerate() {
        if !is_calico_name(f) {
            errs.push(tag_error(&format!("Filters[{i}]"), f, "name"));
        }
    }
    check_selector(
        &mut errs,
        "LocalWorkloadSelector",
        &spec.local_workload_selector,
    );
    // validateBGPPeerSpec.
    let asn = spec.as_number.map_or(0, |a| a.0);
    let mut rule = |bad: bool, field: &str, value: String, why: &str| {
        if bad {
            errs.push(ErroredField::new(field, Some(value), why));
        }
    };
    rule(
        !spec.node.is_empty() && !spec.node_selector.is_empty(),
        "Node",
        spec.node.clone(),
        "Node field must be empty when NodeSelector is specified",
    );
    rule(
        !spec.peer_ip.is_empty() && !spec.peer_selector.is_empty(),
        "PeerIP",
        spec.peer_ip.clone(),
        "PeerIP field must be empty when PeerSelector is specified",
    );
    rule(
        asn != 0 && !spec.peer_selector.is_empty(),
        "ASNumber",
        asn.to_string(),
        "ASNumber field must be empty when PeerSelector is specified",
    );
    rule(
        asn == 0 && !spec.local_workload_selector.is_empty(),
        "ASNumber",
        asn.to_string(),
        "ASNumber field must NOT be empty when LocalWorkloadSelector is specified",
    );
    rule(
        !spec.peer_ip.is_empty() && !spec.local_workload_selector.is_empty(),
        "PeerIP",
        spec.peer_ip.clone(),
        "PeerIP field must be empty when LocalWorkloadSelector is specified",
    );
    rule(
        !spec.peer_selector.is_empty() && !spec.local_workload_selector.is_empty(),
        "PeerSelector",
        spec.peer_ip.clone(),
        "PeerSelector field must be empty when LocalWorkloadSelector is specified",
    );
    if let Err(why) = reachable_by(&spec.reachable_by, &spec.peer_ip) {
        rule(true, "ReachableBy", spec.reachable_by.clone(), why);
    }
    rule(
        spec.keep_original_next_hop && spec.next_hop_mode.is_some(),
        "KeepOriginalNextHop",
        spec.peer_ip.clone(),
        "The KeepOriginalNextHop field is deprecated. It must not be set to true when \
         NextHopMode is configured.",
    );
    check_enum(
        &mut errs,
        "spec.nextHopMode",
        spec.next_hop_mode.as_deref(),
        &["Auto", "Self", "Keep"],
    );
    check_enum(
        &mut errs,
        "spec.reversePeering",
        spec.reverse_peering.as_deref(),
        &["Auto", "Manual"],
    );
    fail(errs)
}

/// `validateReachableBy` in validator.go (its "ReachablyBy" spelling included).
fn reachable_by(reachable_by: &str, peer_ip: &str) -> Result<(), &'static str> {
    if reachable_by.is_empty() {
        return Ok(());
    }
    if peer_ip.is_empty() {
        return Err("ReachablyBy field must be empty when PeerIP is empty");
    }
    let Ok(gateway) = reachable_by.parse::<IpAddr>() else {
        return Err("ReachableBy is invalid address");
    };
    let Some((peer, _)) = process_ip_port(peer_ip) else {
        return Err("PeerIP is invalid address");
    };
    if gateway.is_ipv4() != peer.is_ipv4() {
        return Err("ReachableBy and PeerIP address family mismatched");
    }
    Ok(())
}

/// The Felix log levels `logSeverityScreen` takes (`logLevelRegex`).
const LOG_LEVELS: [&str; 6] = ["Trace", "Debug", "Info", "Warning", "Error", "Fatal"];

/// `clientv3/bgpconfig.go` Create and Update: `validator.Validate` (the name, the field
/// tags of `BGPConfigurationSpec`, `validateBGPConfigurationSpec`, the CRD enums in etcd
/// mode), then `ValidateDefaultOnlyFields`: only `default` may set the mesh, the AS number,
/// the service addresses and the mesh's password and restart time (a `node.<name>`
/// configuration applies per node, the rest of it).
pub fn bgp_configuration(name: &str, spec: &BgpConfigurationSpec) -> Result<(), ValidationError> {
    check_name("BGPConfiguration", name)?;
    let mut errs = Vec::new();
    if !spec.log_severity_screen.is_empty()
        && !LOG_LEVELS.contains(&spec.log_severity_screen.as_str())
    {
        errs.push(tag_error(
            "LogSeverityScreen",
            &spec.log_severity_screen,
            "logLevel",
        ));
    }
    for block in spec
        .service_load_balancer_ips
        .iter()
        .chain(&spec.service_external_ips)
        .chain(&spec.service_cluster_ips)
    {
        if !block.cidr.is_empty() && parse_cidr(&block.cidr).is_none() {
            errs.push(tag_error("CIDR", &block.cidr, "net"));
        }
    }
    for c in &spec.communities {
        if c.name.is_empty() {
            errs.push(tag_error("Name", &c.name, "required"));
        } else if !is_calico_name(&c.name) {
            errs.push(tag_error("Name", &c.name, "name"));
        }
        if c.value.is_empty() {
            errs.push(tag_error("Value", &c.value, "required"));
        }
    }
    for pa in &spec.prefix_advertisements {
        if pa.cidr.is_empty() {
            errs.push(tag_error("CIDR", &pa.cidr, "required"));
        } else if parse_cidr(&pa.cidr).is_none() {
            errs.push(tag_error("CIDR", &pa.cidr, "net"));
        }
        if pa.communities.is_empty() {
            errs.push(ErroredField::new(
                "Communities",
                Some("[]".into()),
                "Reason: failed to validate Field: Communities because of Tag: required ",
            ));
        }
    }
    for (i, iface) in spec.ignored_interfaces.iter().enumerate() {
        let ok = iface != "*"
            && (1..=15).contains(&iface.len())
            && iface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.*-".contains(&b));
        if !ok {
            errs.push(tag_error(
                &format!("IgnoredInterfaces[{i}]"),
                iface,
                "ignoredInterface",
            ));
        }
    }
    if !spec.local_workload_peering_ipv4.is_empty()
        && spec
            .local_workload_peering_ipv4
            .parse::<std::net::Ipv4Addr>()
            .is_err()
    {
        errs.push(tag_error(
            "LocalWorkloadPeeringIPV4",
            &spec.local_workload_peering_ipv4,
            "ipv4",
        ));
    }
    if !spec.local_workload_peering_ipv6.is_empty()
        && spec
            .local_workload_peering_ipv6
            .parse::<std::net::Ipv6Addr>()
            .is_err()
    {
        errs.push(tag_error(
            "LocalWorkloadPeeringIPV6",
            &spec.local_workload_peering_ipv6,
            "ipv6",
        ));
    }
    for (field, priority) in [
        ("IPv4NormalRoutePriority", spec.ipv4_normal_route_priority),
        ("IPv6NormalRoutePriority", spec.ipv6_normal_route_priority),
    ] {
        if let Some(p) = priority {
            if p < 1 {
                errs.push(tag_error(field, &p.to_string(), "gte"));
            } else if p > 2_147_483_646 {
                errs.push(tag_error(field, &p.to_string(), "lte"));
            }
        }
    }
    check_duration(
        &mut errs,
        "NodeMeshMaxRestartTime",
        spec.node_mesh_max_restart_time.as_deref(),
    );
    // validateBGPConfigurationSpec.
    for c in &spec.communities {
        match community_value(&c.value) {
            Some(true) => {}
            Some(false) => errs.push(community_range_error("Spec.Communities[].Value", &c.value)),
            None => errs.push(ErroredField::new(
                "Spec.Communities[].Value",
                Some(c.value.clone()),
                "invalid community value or format used.",
            )),
        }
    }
    if spec.prefix_advertisements.is_empty() && !spec.communities.is_empty() {
        errs.push(ErroredField::new(
            "Spec.Communities[]",
            None,
            "communities are defined but not used in Spec.PrefixAdvertisement[].",
        ));
    }
    for pa in &spec.prefix_advertisements {
        if parse_cidr_or_ip(&pa.cidr).is_none() {
            errs.push(ErroredField::new(
                "Spec.PrefixAdvertisement[].CIDR",
                Some(pa.cidr.clone()),
                "invalid CIDR value.",
            ));
        }
        for v in &pa.communities {
            match community_value(v) {
                Some(true) => {}
                Some(false) => errs.push(community_range_error(
                    "Spec.PrefixAdvertisement[].Communities[]",
                    v,
                )),
                None if spec.communities.iter().any(|c| &c.name == v) => {}
                None => errs.push(ErroredField::new(
                    "Spec.PrefixAdvertisement[].Communities[]",
                    Some(v.clone()),
                    "community used is invalid or not defined.",
                )),
            }
        }
    }
    let mesh_disabled = spec.node_to_node_mesh_enabled == Some(false);
    if mesh_disabled && spec.node_mesh_password.is_some() {
        errs.push(ErroredField::new(
            "Spec.NodeMeshPassword",
            None,
            "spec.NodeMeshPassword cannot be set if spec.NodeToNodeMesh is disabled",
        ));
    }
    if mesh_disabled && spec.node_mesh_max_restart_time.is_some() {
        errs.push(ErroredField::new(
            "Spec.NodeMeshMaxRestartTime",
            None,
            "spec.NodeMeshMaxRestartTime cannot be set if spec.NodeToNodeMesh is disabled",
        ));
    }
    check_enum(
        &mut errs,
        "spec.bindMode",
        spec.bind_mode.as_deref(),
        &["None", "NodeIP"],
    );
    check_enum(
        &mut errs,
        "spec.serviceLoadBalancerAggregation",
        spec.service_load_balancer_aggregation.as_deref(),
        &["Enabled", "Disabled"],
    );
    check_enum(
        &mut errs,
        "spec.programClusterRoutes",
        spec.program_cluster_routes.as_deref(),
        &["Enabled", "Disabled"],
    );
    fail(errs)?;
    if name != "default" {
        bgp_configuration_per_node(spec)?;
    }
    Ok(())
}

/// `ValidateDefaultOnlyFields`: what a configuration other than `default` may not set.
fn bgp_configuration_per_node(spec: &BgpConfigurationSpec) -> Result<(), ValidationError> {
    let mut errs = Vec::new();
    let mut refuse = |set: bool, field: &str, json: &str| {
        if set {
            errs.push(ErroredField::new(
                &format!("BGPConfiguration.Spec.{field}"),
                None,
                format!("Cannot set {json} on a non default BGP Configuration."),
            ));
        }
    };
    refuse(
        spec.node_to_node_mesh_enabled.is_some(),
        "NodeToNodeMeshEnabled",
        "nodeToNodeMeshEnabled",
    );
    refuse(spec.as_number.is_some(), "ASNumber", "ASNumber");
    refuse(
        !spec.service_load_balancer_ips.is_empty(),
        "ServiceLoadBalancerIPs",
        "ServiceLoadBalancerIPs",
    );
    refuse(
        !spec.service_external_ips.is_empty(),
        "ServiceExternalIPs",
        "ServiceExternalIPs",
    );
    refuse(
        !spec.service_cluster_ips.is_empty(),
        "ServiceClusterIPs",
        "ServiceClusterIPs",
    );
    refuse(
        spec.node_mesh_password.is_some(),
        "NodeMeshPassword",
        "nodeMeshPassword",
    );
    refuse(
        spec.node_mesh_max_restart_time.is_some(),
        "NodeMeshMaxRestartTime",
        "nodeMeshMaxRestartTime",
    );
    fail(errs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cidr: &str, f: impl FnOnce(&mut IpPoolSpec)) -> Result<IpPoolSpec, String> {
        let mut s = IpPoolSpec::for_cidr(cidr);
        f(&mut s);
        let ctx = PoolContext {
            old: None,
            others: Some(&[]),
        };
        ippool("p", &mut s, &ctx)
            .map(|()| s)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_written_and_cidr_made_canonical() {
        let s = check("fd00:0:0::/48", |_| {}).expect("valid");
        assert_eq!(s.cidr, "fd00::/48");
        assert_eq!(s.block_size, 122);
        assert_eq!(s.node_selector, "all()");
        assert_eq!(s.allowed_uses, ["Workload", "Tunnel"]);
        assert_eq!(
            (s.ipip_mode.as_str(), s.vxlan_mode.as_str()),
            ("Never", "Never")
        );
        assert_eq!(s.assignment_mode.as_deref(), Some("Automatic"));
    }

    #[test]
    fn calicos_messages() {
        assert_eq!(
            check("", |_| {}).unwrap_err(),
            "error with field IPPool.Spec.CIDR (IPPool CIDR must be specified)"
        );
        assert_eq!(
            check("10.0.0.0", |_| {}).unwrap_err(),
            "error with field IPPool.Spec.CIDR = '10.0.0.0' (IPPool CIDR must be a valid subnet)"
        );
        assert_eq!(
            check("10.0.0.0/8", |s| s.block_size = 16).unwrap_err(),
            "error with field IPPool.Spec.BlockSize = '16' (IPv4 block size must be between 20 and 32)"
        );
        assert_eq!(
            check("fd00::/48", |s| s.block_size = 112).unwrap_err(),
            "error with field IPPool.Spec.BlockSize = '112' (IPv6 block size must be between 116 and 128)"
        );
        assert_eq!(
            check("10.0.0.0/28", |_| {}).unwrap_err(),
            "error with field IPPool.Spec.CIDR = '10.0.0.0/28' (IP pool size is too small for use \
             with Calico IPAM. It must be equal to or greater than the block size.)"
        );
        assert!(
            check("10.0.0.0/28", |s| s.disabled = true).is_ok(),
            "disabled pools may be small"
        );
        assert_eq!(
            check("10.0.0.1/16", |_| {}).unwrap_err(),
            "error with field IPPool.Spec.CIDR = '10.0.0.0/16' (IPPool CIDR is not strictly masked)"
        );
        assert_eq!(
            check("10.0.0.0/16", |s| {
                s.ipip_mode = "Always".into();
                s.vxlan_mode = "CrossSubnet".into();
            })
            .unwrap_err(),
            "error with field IPPool.Spec.VXLANMode = 'CrossSubnet' (Cannot enable both VXLAN and IPIP on the same IPPool)"
        );
        assert_eq!(
            check("fd00::/48", |s| s.ipip_mode = "Always".into()).unwrap_err(),
            "error with field IPPool.Spec.IPIPMode = 'Always' (IPIP is not supported on an IPv6 IP pool)"
        );
        assert_eq!(
            check("169.254.0.0/16", |_| {}).unwrap_err(),
            "error with field IPPool.Spec.CIDR = '169.254.0.0/16' (IPPool CIDR overlaps with IPv4 Link Local range 169.254.0.0/16)"
        );
        assert_eq!(
            check("fe80::/64", |_| {}).unwrap_err(),
            "error with field IPPool.Spec.CIDR = 'fe80::/64' (IPPool CIDR overlaps with IPv6 Link Local range fe80::/10)"
        );
        let two = check("10.0.0.1/28", |_| {}).unwrap_err();
        assert!(
            two.starts_with("error with the following fields:\n-  IPPool.Spec.CIDR"),
            "{two}"
        );
        assert!(check("10.0.0.0/16", |s| s.ipip_mode = "Sometimes".into()).is_err());
        assert!(check("10.0.0.0/16", |s| s.allowed_uses = vec!["Pods".into()]).is_err());
        assert!(check("10.0.0.0/16", |s| s.node_selector = "a ==".into()).is_err());
        assert!(
            check("10.0.0.0/16", |s| s.node_selector =
                "has(a) && b == 'c'".into())
            .is_ok()
        );
    }

    #[test]
    fn create_overlap_and_update_immutability() {
        let others = [("other".to_string(), "10.0.0.0/8".to_string())];
        let mut s = IpPoolSpec::for_cidr("10.1.0.0/16");
        let err = ippool(
            "p",
            &mut s,
            &PoolContext {
                old: None,
                others: Some(&others),
            },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "error with field IPPool.Spec.CIDR = '10.1.0.0/16' (IPPool(p) CIDR overlaps with IPPool(other) CIDR 10.0.0.0/8)"
        );
        // The same name is the pool itself.
        let mut s = IpPoolSpec::for_cidr("10.1.0.0/16");
        let me = [("p".to_string(), "10.1.0.0/16".to_string())];
        assert!(
            ippool(
                "p",
                &mut s,
                &PoolContext {
                    old: None,
                    others: Some(&me)
                }
            )
            .is_ok()
        );

        let old = IpPoolSpec::for_cidr("10.1.0.0/16").with_defaults();
        let mut moved = IpPoolSpec::for_cidr("10.2.0.0/16");
        let err = ippool(
            "p",
            &mut moved,
            &PoolContext {
                old: Some(&old),
                others: None,
            },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "error with field IPPool.Spec.CIDR = '10.2.0.0/16' (IPPool CIDR cannot be modified)"
        );
        let mut resized = IpPoolSpec::for_cidr("10.1.0.0/16");
        resized.block_size = 24;
        let err = ippool(
            "p",
            &mut resized,
            &PoolContext {
                old: Some(&old),
                others: None,
            },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "error with field IPPool.Spec.BlockSize = '24' (IPPool BlockSize cannot be modified)"
        );
        let mut same = IpPoolSpec::for_cidr("10.1.0.0/16");
        same.nat_outgoing = true;
        assert!(
            ippool(
                "p",
                &mut same,
                &PoolContext {
                    old: Some(&old),
                    others: None
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn block_size_conflicts() {
        let spec = IpPoolSpec::for_cidr("10.0.0.0/16").with_defaults();
        let blocks: Vec<IpNet> = vec!["10.0.1.0/24".parse().expect("net")];
        assert!(block_size_conflict(&spec, &blocks).is_err());
        let same: Vec<IpNet> = vec!["10.0.1.0/26".parse().expect("net")];
        assert!(block_size_conflict(&spec, &same).is_ok());
        let outside: Vec<IpNet> = vec!["10.9.1.0/24".parse().expect("net")];
        assert!(block_size_conflict(&spec, &outside).is_ok());
    }

    #[test]
    fn names_and_ipam_config() {
        assert!(check_name("IPPool", "pool-1.a").is_ok());
        assert!(check_name("IPPool", "Pool_1").is_err());
        assert_eq!(
            check_name("IPPool", "").unwrap_err().to_string(),
            "error with field Metadata.Name (field must be set for a Create request)"
        );
        // Mirrors clientv3/ipamconfig.go Create (validator.Validate, then validateMetadata).
        let spec = |strict, auto, max| IpamConfigurationSpec {
            strict_affinity: strict,
            auto_allocate_blocks: auto,
            max_blocks_per_host: max,
            kubevirt_vm_address_persistence: None,
        };
        assert_eq!(ipam_configuration("default", &spec(true, true, 4)), Ok(()));
        // SetIPAMConfig's rules are not the resource's.
        assert_eq!(
            ipam_configuration("default", &spec(false, false, 3)),
            Ok(())
        );
        assert_eq!(
            ipam_configuration("other", &spec(true, true, 0)),
            Err(
                r#"Cannot create an IPAMConfiguration resource with a name other than "default""#
                    .into()
            )
        );
        assert_eq!(
            ipam_configuration("default", &spec(true, true, -1)),
            Err("error with the following fields:\n\
                 -  MaxBlocksPerHost = '-1' (must be greater than or equal to 0)\n\
                 -  spec.maxBlocksPerHost (spec.maxBlocksPerHost in body should be greater than or equal to 0)\n"
                .into())
        );
        assert_eq!(
            ipam_configuration("default", &spec(true, true, 1_000_001)),
            Err("error with field spec.maxBlocksPerHost (spec.maxBlocksPerHost in body should be less than or equal to 1000000)".into())
        );
        let mut bad = spec(true, true, 0);
        bad.kubevirt_vm_address_persistence = Some("On".into());
        assert_eq!(
            ipam_configuration("other", &bad),
            Err(r#"error with field spec.kubeVirtVMAddressPersistence (supported values: "Enabled", "Disabled")"#.into())
        );
    }

    /// Mirrors validator.go processIPPort: `<IP>`, `<IPv4>:<port>`, `[<IPv6>]:<port>`.
    #[test]
    fn peer_ip_forms() {
        let ok = |s: &str| process_ip_port(s).map(|(ip, port)| (ip.to_string(), port));
        assert_eq!(ok("10.0.0.1"), Some(("10.0.0.1".into(), 0)));
        assert_eq!(ok("10.0.0.1:179"), Some(("10.0.0.1".into(), 179)));
        assert_eq!(ok("fd00::1"), Some(("fd00::1".into(), 0)));
        assert_eq!(ok("[fd00::1]:1790"), Some(("fd00::1".into(), 1790)));
        for bad in [
            "",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "[fd00::1]",
            "fd00::1:179:x",
            "host:179",
            "10.0.0.256",
            "[10.0.0.1]:179x",
        ] {
            assert_eq!(process_ip_port(bad), None, "{bad}");
        }
    }

    fn peer(f: impl FnOnce(&mut BgpPeerSpec)) -> Result<(), String> {
        let mut spec = BgpPeerSpec {
            peer_ip: "10.0.0.1".into(),
            as_number: Some(calico_datastore::model::AsNumber(64512)),
            ..Default::default()
        };
        f(&mut spec);
        bgp_peer("p", &spec).map_err(|e| e.to_string())
    }

    /// Mirrors validator.go validateBGPPeerSpec and validateReachableBy.
    #[test]
    fn bgp_peer_rules() {
        assert_eq!(peer(|_| {}), Ok(()));
        assert_eq!(
            peer(|s| s.peer_selector = "all()".into()),
            Err("error with the following fields:\n\
                 -  PeerIP = '10.0.0.1' (PeerIP field must be empty when PeerSelector is specified)\n\
                 -  ASNumber = '64512' (ASNumber field must be empty when PeerSelector is specified)\n"
                .into())
        );
        assert_eq!(
            peer(|s| s.node = "Node_1".into()),
            Err("error with field Node = 'Node_1' (Reason: failed to validate Field: Node because of Tag: name )".into())
        );
        assert_eq!(
            peer(|s| s.reachable_by = "fd00::1".into()),
            Err("error with field ReachableBy = 'fd00::1' (ReachableBy and PeerIP address family mismatched)".into())
        );
        assert_eq!(
            peer(|s| {
                s.keep_original_next_hop = true;
                s.next_hop_mode = Some("Keep".into());
            }),
            Err("error with field KeepOriginalNextHop = '10.0.0.1' (The KeepOriginalNextHop field is deprecated. It must not be set to true when NextHopMode is configured.)".into())
        );
        assert_eq!(
            peer(|s| {
                s.peer_ip.clear();
                s.as_number = None;
                s.local_workload_selector = "app == 'x'".into();
            }),
            Err("error with field ASNumber = '0' (ASNumber field must NOT be empty when LocalWorkloadSelector is specified)".into())
        );
        assert_eq!(
            peer(|s| s.filters = vec!["ok-filter".into(), "Bad".into()]),
            Err("error with field Filters[1] = 'Bad' (Reason: failed to validate Field: Filters[1] because of Tag: name )".into())
        );
        assert_eq!(
            peer(|s| s.reverse_peering = Some("Never".into())),
            Err(
                r#"error with field spec.reversePeering (supported values: "Auto", "Manual")"#
                    .into()
            )
        );
        assert_eq!(
            peer(|s| s.keepalive_time = Some("1x".into())),
            Err(r#"error with field KeepaliveTime = '1x' (time: invalid duration "1x")"#.into())
        );
        assert_eq!(peer(|s| s.source_address = "UseNodeIP".into()), Ok(()));
    }

    fn config(name: &str, f: impl FnOnce(&mut BgpConfigurationSpec)) -> Result<(), String> {
        let mut spec = BgpConfigurationSpec::default();
        f(&mut spec);
        bgp_configuration(name, &spec).map_err(|e| e.to_string())
    }

    /// Mirrors validator.go validateBGPConfigurationSpec (communities) and bgpconfig.go
    /// ValidateDefaultOnlyFields.
    #[test]
    fn bgp_configuration_rules() {
        use calico_datastore::model::bgp::{CidrBlock, Community, PrefixAdvertisement};
        let communities = |s: &mut BgpConfigurationSpec| {
            s.communities = vec![Community {
                name: "large".into(),
                value: "63400:300:100".into(),
            }];
            s.prefix_advertisements = vec![PrefixAdvertisement {
                cidr: "172.218.4.0/26".into(),
                communities: vec!["large".into(), "63400:120".into()],
            }];
        };
        assert_eq!(config("default", communities), Ok(()));
        assert_eq!(
            config("default", |s| {
                communities(s);
                s.prefix_advertisements[0].communities.push("unknown".into());
                s.prefix_advertisements[0].communities.push("70000:1".into());
            }),
            Err("error with the following fields:\n\
                 -  Spec.PrefixAdvertisement[].Communities[] = 'unknown' (community used is invalid or not defined.)\n\
                 -  Spec.PrefixAdvertisement[].Communities[] = '70000:1' (invalid community value, expected 16 bit value)\n"
                .into())
        );
        assert_eq!(
            config("default", |s| {
                communities(s);
                s.prefix_advertisements.clear();
            }),
            Err("error with field Spec.Communities[] (communities are defined but not used in Spec.PrefixAdvertisement[].)".into())
        );
        assert_eq!(
            config("default", |s| {
                s.node_to_node_mesh_enabled = Some(false);
                s.node_mesh_max_restart_time = Some("120s".into());
            }),
            Err("error with field Spec.NodeMeshMaxRestartTime (spec.NodeMeshMaxRestartTime cannot be set if spec.NodeToNodeMesh is disabled)".into())
        );
        // Per node: only what Calico allows outside `default`.
        let per_node = |s: &mut BgpConfigurationSpec| {
            s.listen_port = Some(1790);
            s.log_severity_screen = "Debug".into();
            s.bind_mode = Some("NodeIP".into());
            s.ignored_interfaces = vec!["eth*".into()];
        };
        assert_eq!(config("node.node1", per_node), Ok(()));
        assert_eq!(
            config("node.node1", |s| {
                per_node(s);
                s.node_to_node_mesh_enabled = Some(true);
                s.service_cluster_ips = vec![CidrBlock {
                    cidr: "10.96.0.0/12".into(),
                }];
            }),
            Err("error with the following fields:\n\
                 -  BGPConfiguration.Spec.NodeToNodeMeshEnabled (Cannot set nodeToNodeMeshEnabled on a non default BGP Configuration.)\n\
                 -  BGPConfiguration.Spec.ServiceClusterIPs (Cannot set ServiceClusterIPs on a non default BGP Configuration.)\n"
                .into())
        );
        assert_eq!(
            config("default", |s| s.ignored_interfaces = vec!["*".into()]),
            Err("error with field IgnoredInterfaces[0] = '*' (Reason: failed to validate Field: IgnoredInterfaces[0] because of Tag: ignoredInterface )".into())
        );
        assert_eq!(
            config("default", |s| s.ipv4_normal_route_priority = Some(0)),
            Err("error with field IPv4NormalRoutePriority = '0' (Reason: failed to validate Field: IPv4NormalRoutePriority because of Tag: gte )".into())
        );
        assert!(config("Default", |_| {}).is_err(), "name rule");
    }

    /// Mirrors validator.go validateNodeSpec: an empty BGP section is refused.
    #[test]
    fn an_empty_node_bgp_section_is_refused() {
        let spec = NodeSpec {
            bgp: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(
            node(&spec).map_err(|e| e.to_string()),
            Err("error with field BGP = '&{<nil>    }' (Spec.BGP should not be empty)".into())
        );
    }
}
