//! The start-up's settings, read from the environment under Calico's names and checked all
//! at once before anything is touched: a value we cannot use is a [`ConfigError`] naming its
//! variable (Calico ignores or defaults several of them; see README's "Differences from
//! Calico").

use super::autodetect::Method;
use crate::config::{ConfigError, Env, etcd_from_env};
use calico_datastore::EtcdConfig;
use calico_selector::Selector;
use ipnet::IpNet;
use regex::Regex;
use std::net::IpAddr;
use std::path::PathBuf;

/// Where the node's files go by default (Calico's `/var/lib/calico`).
pub const DEFAULT_VAR_LIB_DIR: &str = "/var/lib/calico";
/// Felix's default `MTUIfacePattern`: the links whose MTU is the host's.
pub const DEFAULT_MTU_IFACE_PATTERN: &str = r"^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)";

/// `IP` / `IP6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressSetting {
    /// Unset: detect on a node that has no address of the family yet (IPv4 only, as
    /// Calico), else keep the stored one.
    Unset,
    /// `autodetect`: detect on every start-up.
    Autodetect,
    /// `none`: no address of the family (a stored one is kept, as Calico does).
    None,
    /// An address (`10.0.0.5`, its prefix taken from the interface carrying it) or a CIDR
    /// (`10.0.0.5/24`, used verbatim).
    Given { address: IpAddr, prefix: Option<u8> },
}

impl AddressSetting {
    /// Whether the variable names an address or asks for detection (Calico lists the
    /// node's interfaces in `spec.interfaces` then).
    pub fn is_set(&self) -> bool {
        matches!(
            self,
            AddressSetting::Autodetect | AddressSetting::Given { .. }
        )
    }
}

/// `CALICO_NETWORKING_BACKEND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `bird` (the default): BGP, so the Node carries its addresses and AS.
    Bird,
    /// `vxlan`: no BGP, addresses still recorded (VXLAN routes use them).
    Vxlan,
    /// `none`: policy only; the Node gets no address and no AS.
    None,
}

/// `ipipMode` / `vxlanMode` of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encapsulation {
    Never,
    CrossSubnet,
    Always,
}

impl Encapsulation {
    /// The name Calico stores.
    pub fn name(self) -> &'static str {
        match self {
            Encapsulation::Never => "Never",
            Encapsulation::CrossSubnet => "CrossSubnet",
            Encapsulation::Always => "Always",
        }
    }

    /// Whether a stored mode encapsulates (Felix's "`!= Never`" on a valid mode).
    pub fn stored_is_on(mode: &str) -> bool {
        matches!(mode, "Always" | "CrossSubnet")
    }
}

/// A default pool to create when the datastore has none of its family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// `None`: Calico's choice (IPv4 only: 192.168.0.0/16, or a free 172.16-31.0.0/16 when a
    /// host address is inside 192.168.0.0/16).
    pub cidr: Option<IpNet>,
    pub block_size: u8,
    pub ipip: Encapsulation,
    pub vxlan: Encapsulation,
    pub nat_outgoing: bool,
    pub disable_bgp_export: bool,
    /// As stored: `all()` when none was given.
    pub node_selector: String,
}

/// What Felix would use to compute the pod MTU (its environment overrides).
#[derive(Debug, Clone)]
pub struct MtuSettings {
    /// `FELIX_MTUIFACEPATTERN`, else Felix's default.
    pub iface_pattern: Regex,
    /// Whether `FELIX_MTUIFACEPATTERN` set it (it then wins over FelixConfiguration's).
    pub iface_pattern_from_env: bool,
    /// `FELIX_IPINIPMTU`, `FELIX_VXLANMTU`, `FELIX_VXLANMTUV6` (0 or unset: from the host).
    pub ipip_mtu: Option<u32>,
    pub vxlan_mtu: Option<u32>,
    pub vxlan_mtu_v6: Option<u32>,
    /// `FELIX_IPINIPENABLED`, `FELIX_VXLANENABLED` (unset: from the pools).
    pub ipip_enabled: Option<bool>,
    pub vxlan_enabled: Option<bool>,
}

/// Everything the start-up reads from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `NODENAME` (trimmed).
    pub nodename: Option<String>,
    /// `HOSTNAME` (trimmed, lower-cased as Calico does).
    pub hostname: Option<String>,
    /// `CALICO_NODENAME_FILE`, else `<CALICO_VAR_LIB_DIR>/nodename`.
    pub nodename_file: PathBuf,
    /// `<CALICO_VAR_LIB_DIR>/mtu`.
    pub mtu_file: PathBuf,
    pub ipv4: AddressSetting,
    pub ipv6: AddressSetting,
    pub ipv4_method: Method,
    pub ipv6_method: Method,
    /// `AS`.
    pub as_number: Option<u32>,
    pub backend: Backend,
    /// `CALICO_IPV4POOL_*`: `None` with `CALICO_IPV4POOL_CIDR=none` or `NO_DEFAULT_POOLS`.
    pub ipv4_pool: Option<PoolSettings>,
    /// `CALICO_IPV6POOL_*`: only when `CALICO_IPV6POOL_CIDR` names a CIDR.
    pub ipv6_pool: Option<PoolSettings>,
    /// `DISABLE_NODE_IP_CHECK`.
    pub disable_node_ip_check: bool,
    /// `CLUSTER_TYPE`.
    pub cluster_type: String,
    /// `CALICO_K8S_NODE_REF`: the Node's `orchRefs`.
    pub k8s_node_ref: Option<String>,
    /// `WAIT_FOR_DATASTORE`: retry an unreachable datastore instead of failing.
    pub wait_for_datastore: bool,
    /// `CALICO_STARTUP_LOGLEVEL`.
    pub log_level: log::LevelFilter,
    pub mtu: MtuSettings,
    pub etcd: EtcdConfig,
}

/// A variable's value, trimmed; empty counts as unset.
fn get(env: &dyn Env, name: &str) -> Option<String> {
    env.var(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A boolean as Calico's `evaluateENVBool` spells them (`true 1 yes y t`, `false 0 no n f`,
/// any case); anything else is an error (Calico reads it as true).
pub fn parse_bool(variable: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "t" => Ok(true),
        "false" | "0" | "no" | "n" | "f" => Ok(false),
        _ => Err(ConfigError::new(
            variable,
            format!("{value:?} is not a boolean (true or false)"),
        )),
    }
}

fn bool_var(env: &dyn Env, name: &'static str, default: bool) -> Result<bool, ConfigError> {
    get(env, name).map_or(Ok(default), |v| parse_bool(name, &v))
}

/// `IP` / `IP6`.
fn address_setting(
    env: &dyn Env,
    name: &'static str,
    v4: bool,
) -> Result<AddressSetting, ConfigError> {
    let Some(v) = get(env, name) else {
        return Ok(AddressSetting::Unset);
    };
    match v.as_str() {
        "autodetect" => return Ok(AddressSetting::Autodetect),
        "none" => return Ok(AddressSetting::None),
        _ => {}
    }
    let family = if v4 { "IPv4" } else { "IPv6" };
    let bad = || {
        ConfigError::new(
            name,
            format!("{v:?} is not autodetect, none, an {family} address or an {family} CIDR"),
        )
    };
    let (address, prefix) = if v.contains('/') {
        let net: IpNet = v.parse().map_err(|_| bad())?;
        (net.addr(), Some(net.prefix_len()))
    } else {
        (v.parse::<IpAddr>().map_err(|_| bad())?, None)
    };
    if address.is_ipv4() != v4 {
        return Err(bad());
    }
    Ok(AddressSetting::Given { address, prefix })
}

/// `AS`: a decimal 32-bit number, or `high.low` with two 16-bit halves.
pub fn parse_as_number(value: &str) -> Result<u32, ConfigError> {
    let bad = || ConfigError::new("AS", format!("{value:?} is not an AS number"));
    if let Ok(n) = value.parse::<u32>() {
        return Ok(n);
    }
    let (hi, lo) = value.split_once('.').ok_or_else(bad)?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    Ok((u32::from(hi) << 16) | u32::from(lo))
}

fn encapsulation(
    env: &dyn Env,
    name: &'static str,
    what: &str,
) -> Result<Encapsulation, ConfigError> {
    let Some(v) = get(env, name) else {
        return Ok(Encapsulation::Never);
    };
    match v.to_ascii_lowercase().as_str() {
        "off" | "never" => Ok(Encapsulation::Never),
        "crosssubnet" | "cross-subnet" => Ok(Encapsulation::CrossSubnet),
        "always" => Ok(Encapsulation::Always),
        _ => Err(ConfigError::new(
            name,
            format!("{v:?} is not an {what} mode (Never, CrossSubnet or Always)"),
        )),
    }
}

/// One family's `CALICO_IPV{4,6}POOL_*` (the variable names are passed in full).
struct PoolVars {
    v4: bool,
    cidr: &'static str,
    block_size: &'static str,
    ipip: Option<&'static str>,
    vxlan: &'static str,
    nat_outgoing: &'static str,
    disable_bgp_export: &'static str,
    node_selector: &'static str,
}

const IPV4_POOL: PoolVars = PoolVars {
    v4: true,
    cidr: "CALICO_IPV4POOL_CIDR",
    block_size: "CALICO_IPV4POOL_BLOCK_SIZE",
    ipip: Some("CALICO_IPV4POOL_IPIP"),
    vxlan: "CALICO_IPV4POOL_VXLAN",
    nat_outgoing: "CALICO_IPV4POOL_NAT_OUTGOING",
    disable_bgp_export: "CALICO_IPV4POOL_DISABLE_BGP_EXPORT",
    node_selector: "CALICO_IPV4POOL_NODE_SELECTOR",
};

const IPV6_POOL: PoolVars = PoolVars {
    v4: false,
    cidr: "CALICO_IPV6POOL_CIDR",
    block_size: "CALICO_IPV6POOL_BLOCK_SIZE",
    ipip: None,
    vxlan: "CALICO_IPV6POOL_VXLAN",
    nat_outgoing: "CALICO_IPV6POOL_NAT_OUTGOING",
    disable_bgp_export: "CALICO_IPV6POOL_DISABLE_BGP_EXPORT",
    node_selector: "CALICO_IPV6POOL_NODE_SELECTOR",
};

/// One family's default pool; `Ok(None)` when `none` or (IPv6) no CIDR is given. Every
/// variable is checked even when the pool will not be created (pools exist already).
fn pool_settings(env: &dyn Env, vars: &PoolVars) -> Result<Option<PoolSettings>, ConfigError> {
    let family = if vars.v4 { "IPv4" } else { "IPv6" };
    let (min, max, default_block) = if vars.v4 {
        (20, 32, 26)
    } else {
        (116, 128, 122)
    };
    let block_size = match get(env, vars.block_size) {
        None => default_block,
        Some(v) => v
            .parse::<u8>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                ConfigError::new(
                    vars.block_size,
                    format!("{v:?} is not a block size for {family} ({min} to {max})"),
                )
            })?,
    };
    let node_selector = get(env, vars.node_selector).unwrap_or_default();
    if let Err(e) = Selector::parse(&node_selector) {
        return Err(ConfigError::new(
            vars.node_selector,
            format!("{node_selector:?} is not a selector: {e}"),
        ));
    }
    let ipip = match vars.ipip {
        Some(name) => encapsulation(env, name, "IPIP")?,
        None => Encapsulation::Never,
    };
    let vxlan = encapsulation(env, vars.vxlan, "VXLAN")?;
    if ipip != Encapsulation::Never && vxlan != Encapsulation::Never {
        return Err(ConfigError::new(
            vars.vxlan,
            "cannot enable both VXLAN and IPIP on the same pool (CALICO_IPV4POOL_IPIP is set too)",
        ));
    }
    // Calico's defaults: NAT outgoing on for IPv4, off for IPv6.
    let nat_outgoing = bool_var(env, vars.nat_outgoing, vars.v4)?;
    let disable_bgp_export = bool_var(env, vars.disable_bgp_export, false)?;
    let cidr = match get(env, vars.cidr).as_deref() {
        Some("none") => return Ok(None),
        None if !vars.v4 => return Ok(None),
        None => None,
        Some(v) => {
            let net: IpNet = v
                .parse()
                .ok()
                .filter(|n: &IpNet| matches!(n, IpNet::V4(_)) == vars.v4)
                .ok_or_else(|| {
                    ConfigError::new(vars.cidr, format!("{v:?} is not an {family} CIDR"))
                })?;
            // Calico masks a CIDR with host bits silently.
            let net = net.trunc();
            let link_local: IpNet = if vars.v4 {
                IpNet::V4(
                    ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(169, 254, 0, 0), 16)
                        .map_err(|e| ConfigError::new(vars.cidr, e.to_string()))?,
                )
            } else {
                IpNet::V6(
                    ipnet::Ipv6Net::new(std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10)
                        .map_err(|e| ConfigError::new(vars.cidr, e.to_string()))?,
                )
            };
            if link_local.contains(&net.network()) || net.contains(&link_local.network()) {
                return Err(ConfigError::new(
                    vars.cidr,
                    format!("{net} overlaps the {family} link-local range {link_local}"),
                ));
            }
            if net.prefix_len() > block_size {
                return Err(ConfigError::new(
                    vars.cidr,
                    format!(
                        "{net} is smaller than one block ({} is /{block_size})",
                        vars.block_size
                    ),
                ));
            }
            Some(net)
        }
    };
    Ok(Some(PoolSettings {
        cidr,
        block_size,
        ipip,
        vxlan,
        nat_outgoing,
        disable_bgp_export,
        node_selector: if node_selector.is_empty() {
            "all()".into()
        } else {
            node_selector
        },
    }))
}

fn mtu_var(env: &dyn Env, name: &'static str) -> Result<Option<u32>, ConfigError> {
    match get(env, name) {
        None => Ok(None),
        Some(v) => {
            let n: u32 = v.parse().map_err(|_| {
                ConfigError::new(name, format!("{v:?} is not an MTU (a whole number)"))
            })?;
            Ok(Some(n).filter(|n| *n != 0))
        }
    }
}

fn log_level(env: &dyn Env) -> Result<log::LevelFilter, ConfigError> {
    let name = "CALICO_STARTUP_LOGLEVEL";
    match get(env, name) {
        None => Ok(log::LevelFilter::Info),
        Some(v) => crate::logging::parse(name, &v),
    }
}

impl Settings {
    /// Reads and checks every variable.
    pub fn from_env(env: &dyn Env) -> Result<Settings, ConfigError> {
        let var_lib = get(env, "CALICO_VAR_LIB_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_VAR_LIB_DIR));
        let nodename_file = get(env, "CALICO_NODENAME_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| var_lib.join("nodename"));
        let backend = match get(env, "CALICO_NETWORKING_BACKEND").as_deref() {
            // Calico also takes `bgp` for BIRD.
            None | Some("bird") | Some("bgp") => Backend::Bird,
            Some("vxlan") => Backend::Vxlan,
            Some("none") => Backend::None,
            Some(other) => {
                return Err(ConfigError::new(
                    "CALICO_NETWORKING_BACKEND",
                    format!("{other:?} is not a networking backend (bird, bgp, vxlan or none)"),
                ));
            }
        };
        let no_default_pools = bool_var(env, "NO_DEFAULT_POOLS", false)?;
        if no_default_pools {
            for name in ["CALICO_IPV4POOL_CIDR", "CALICO_IPV6POOL_CIDR"] {
                if get(env, name).is_some() {
                    return Err(ConfigError::new(
                        name,
                        "may not be set together with NO_DEFAULT_POOLS=true",
                    ));
                }
            }
        }
        let ipv4_pool = pool_settings(env, &IPV4_POOL)?;
        let ipv6_pool = pool_settings(env, &IPV6_POOL)?;
        // FELIX_IPV6SUPPORT=false means no IPv6 at all, so no IPv6 pool (as Calico).
        let ipv6_supported = bool_var(env, "FELIX_IPV6SUPPORT", true)?;
        let pattern_var = get(env, "FELIX_MTUIFACEPATTERN");
        let iface_pattern_from_env = pattern_var.is_some();
        let pattern = pattern_var.unwrap_or_else(|| DEFAULT_MTU_IFACE_PATTERN.to_string());
        let iface_pattern = Regex::new(&pattern).map_err(|e| {
            ConfigError::new(
                "FELIX_MTUIFACEPATTERN",
                format!(
                    "{pattern:?} is not a regex: {}",
                    super::autodetect::one_line(&e)
                ),
            )
        })?;
        let mtu = MtuSettings {
            iface_pattern,
            iface_pattern_from_env,
            ipip_mtu: mtu_var(env, "FELIX_IPINIPMTU")?,
            vxlan_mtu: mtu_var(env, "FELIX_VXLANMTU")?,
            vxlan_mtu_v6: mtu_var(env, "FELIX_VXLANMTUV6")?,
            ipip_enabled: get(env, "FELIX_IPINIPENABLED")
                .map(|v| parse_bool("FELIX_IPINIPENABLED", &v))
                .transpose()?,
            vxlan_enabled: get(env, "FELIX_VXLANENABLED")
                .map(|v| parse_bool("FELIX_VXLANENABLED", &v))
                .transpose()?,
        };
        Ok(Settings {
            nodename: get(env, "NODENAME"),
            hostname: get(env, "HOSTNAME").map(|h| h.to_lowercase()),
            nodename_file,
            mtu_file: var_lib.join("mtu"),
            ipv4: address_setting(env, "IP", true)?,
            ipv6: address_setting(env, "IP6", false)?,
            ipv4_method: Method::parse(
                "IP_AUTODETECTION_METHOD",
                &get(env, "IP_AUTODETECTION_METHOD").unwrap_or_default(),
            )?,
            ipv6_method: Method::parse(
                "IP6_AUTODETECTION_METHOD",
                &get(env, "IP6_AUTODETECTION_METHOD").unwrap_or_default(),
            )?,
            as_number: get(env, "AS").map(|v| parse_as_number(&v)).transpose()?,
            backend,
            ipv4_pool: ipv4_pool.filter(|_| !no_default_pools),
            ipv6_pool: ipv6_pool.filter(|_| !no_default_pools && ipv6_supported),
            disable_node_ip_check: bool_var(env, "DISABLE_NODE_IP_CHECK", false)?,
            cluster_type: get(env, "CLUSTER_TYPE").unwrap_or_default(),
            k8s_node_ref: get(env, "CALICO_K8S_NODE_REF"),
            wait_for_datastore: bool_var(env, "WAIT_FOR_DATASTORE", false)?,
            log_level: log_level(env)?,
            mtu,
            etcd: etcd_from_env(env)?,
        })
    }
}

/// Settings from `pairs`, with the files under `dir`, for tests.
#[cfg(test)]
pub(crate) fn test_settings(dir: &std::path::Path, pairs: &[(&str, &str)]) -> Settings {
    let mut env = crate::config::test_env(pairs);
    env.insert("CALICO_VAR_LIB_DIR".into(), dir.display().to_string());
    #[allow(clippy::unwrap_used)]
    Settings::from_env(&env).unwrap()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use crate::config::test_env as env;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_env(&env(pairs)).unwrap()
    }

    fn refused(pairs: &[(&str, &str)]) -> ConfigError {
        Settings::from_env(&env(pairs)).expect_err("refused")
    }

    /// Mirrors startup.go's defaults (`configureIPPools`, `getNode`, `evaluateENVBool`).
    #[test]
    fn defaults_are_calicos() {
        let s = settings(&[]);
        assert_eq!(s.ipv4, AddressSetting::Unset);
        assert_eq!(s.ipv6, AddressSetting::Unset);
        assert_eq!(s.ipv4_method, Method::FirstFound);
        assert_eq!(s.backend, Backend::Bird);
        assert_eq!(s.nodename_file, PathBuf::from("/var/lib/calico/nodename"));
        assert_eq!(s.mtu_file, PathBuf::from("/var/lib/calico/mtu"));
        let v4 = s.ipv4_pool.unwrap();
        assert_eq!(v4.cidr, None);
        assert_eq!(v4.block_size, 26);
        assert_eq!(v4.ipip, Encapsulation::Never);
        assert!(v4.nat_outgoing);
        assert_eq!(v4.node_selector, "all()");
        assert!(s.ipv6_pool.is_none(), "no IPv6 pool without a CIDR");
        assert_eq!(s.log_level, log::LevelFilter::Info);
    }

    #[test]
    fn pools_from_the_variables() {
        let s = settings(&[
            ("CALICO_IPV4POOL_CIDR", "10.244.3.7/16"),
            ("CALICO_IPV4POOL_BLOCK_SIZE", "24"),
            ("CALICO_IPV4POOL_IPIP", "cross-subnet"),
            ("CALICO_IPV4POOL_NAT_OUTGOING", "No"),
            ("CALICO_IPV4POOL_NODE_SELECTOR", "zone == 'a'"),
            ("CALICO_IPV6POOL_CIDR", "fd00:10:244::/48"),
            ("CALICO_IPV6POOL_VXLAN", "Always"),
        ]);
        let v4 = s.ipv4_pool.unwrap();
        assert_eq!(v4.cidr, Some("10.244.0.0/16".parse().unwrap()), "masked");
        assert_eq!(v4.block_size, 24);
        assert_eq!(v4.ipip, Encapsulation::CrossSubnet);
        assert!(!v4.nat_outgoing);
        assert_eq!(v4.node_selector, "zone == 'a'");
        let v6 = s.ipv6_pool.unwrap();
        assert_eq!(v6.block_size, 122);
        assert_eq!(v6.vxlan, Encapsulation::Always);
        assert!(!v6.nat_outgoing, "IPv6 NAT is off by default");
        let none = settings(&[("CALICO_IPV4POOL_CIDR", "none")]);
        assert!(none.ipv4_pool.is_none());
        let off = settings(&[("NO_DEFAULT_POOLS", "TRUE")]);
        assert!(off.ipv4_pool.is_none());
        let no6 = settings(&[
            ("CALICO_IPV6POOL_CIDR", "fd00::/48"),
            ("FELIX_IPV6SUPPORT", "false"),
        ]);
        assert!(no6.ipv6_pool.is_none());
    }

    #[test]
    fn addresses_and_as() {
        let s = settings(&[("IP", "10.0.0.5"), ("IP6", "fd00::5/64"), ("AS", "1.10")]);
        assert_eq!(
            s.ipv4,
            AddressSetting::Given {
                address: "10.0.0.5".parse().unwrap(),
                prefix: None
            }
        );
        assert_eq!(
            s.ipv6,
            AddressSetting::Given {
                address: "fd00::5".parse().unwrap(),
                prefix: Some(64)
            }
        );
        assert_eq!(s.as_number, Some(65546));
        assert_eq!(settings(&[("AS", "64512")]).as_number, Some(64512));
        assert_eq!(settings(&[("IP", "none")]).ipv4, AddressSetting::None);
        assert_eq!(
            settings(&[("IP6", "autodetect")]).ipv6,
            AddressSetting::Autodetect
        );
    }

    /// Every malformed or unknown value names its variable.
    #[test]
    fn bad_values_name_their_variable() {
        for (pairs, variable) in [
            (vec![("IP", "10.0.0")], "IP"),
            (vec![("IP", "fd00::1")], "IP"),
            (vec![("IP", "Autodetect")], "IP"),
            (vec![("IP6", "10.0.0.1")], "IP6"),
            (
                vec![("IP_AUTODETECTION_METHOD", "First-Found")],
                "IP_AUTODETECTION_METHOD",
            ),
            (
                vec![("IP6_AUTODETECTION_METHOD", "cidr=nope")],
                "IP6_AUTODETECTION_METHOD",
            ),
            (vec![("AS", "65536.1")], "AS"),
            (vec![("AS", "-1")], "AS"),
            (
                vec![("CALICO_IPV4POOL_CIDR", "10.0.0.0")],
                "CALICO_IPV4POOL_CIDR",
            ),
            (
                vec![("CALICO_IPV4POOL_CIDR", "fd00::/48")],
                "CALICO_IPV4POOL_CIDR",
            ),
            (
                vec![("CALICO_IPV4POOL_CIDR", "169.254.0.0/16")],
                "CALICO_IPV4POOL_CIDR",
            ),
            (
                vec![("CALICO_IPV4POOL_CIDR", "10.0.0.0/28")],
                "CALICO_IPV4POOL_CIDR",
            ),
            (
                vec![("CALICO_IPV4POOL_BLOCK_SIZE", "19")],
                "CALICO_IPV4POOL_BLOCK_SIZE",
            ),
            (
                vec![("CALICO_IPV6POOL_BLOCK_SIZE", "64")],
                "CALICO_IPV6POOL_BLOCK_SIZE",
            ),
            (
                vec![("CALICO_IPV4POOL_IPIP", "sometimes")],
                "CALICO_IPV4POOL_IPIP",
            ),
            (
                vec![("CALICO_IPV4POOL_VXLAN", "yes")],
                "CALICO_IPV4POOL_VXLAN",
            ),
            (
                vec![
                    ("CALICO_IPV4POOL_IPIP", "Always"),
                    ("CALICO_IPV4POOL_VXLAN", "Always"),
                ],
                "CALICO_IPV4POOL_VXLAN",
            ),
            (
                vec![("CALICO_IPV4POOL_NAT_OUTGOING", "maybe")],
                "CALICO_IPV4POOL_NAT_OUTGOING",
            ),
            (
                vec![("CALICO_IPV4POOL_NODE_SELECTOR", "a ==")],
                "CALICO_IPV4POOL_NODE_SELECTOR",
            ),
            (
                vec![("CALICO_IPV6POOL_CIDR", "10.0.0.0/16")],
                "CALICO_IPV6POOL_CIDR",
            ),
            (vec![("NO_DEFAULT_POOLS", "sure")], "NO_DEFAULT_POOLS"),
            (
                vec![
                    ("NO_DEFAULT_POOLS", "true"),
                    ("CALICO_IPV4POOL_CIDR", "none"),
                ],
                "CALICO_IPV4POOL_CIDR",
            ),
            (
                vec![("CALICO_NETWORKING_BACKEND", "gobgp")],
                "CALICO_NETWORKING_BACKEND",
            ),
            (vec![("DATASTORE_TYPE", "kubernetes")], "DATASTORE_TYPE"),
            (vec![("ETCD_ENDPOINTS", "127.0.0.1:2379")], "ETCD_ENDPOINTS"),
            (vec![("ETCD_CERT_FILE", "/c")], "ETCD_KEY_FILE"),
            (
                vec![("CALICO_STARTUP_LOGLEVEL", "loud")],
                "CALICO_STARTUP_LOGLEVEL",
            ),
            (vec![("FELIX_VXLANMTU", "big")], "FELIX_VXLANMTU"),
            (
                vec![("FELIX_MTUIFACEPATTERN", "(")],
                "FELIX_MTUIFACEPATTERN",
            ),
            (
                vec![("DISABLE_NODE_IP_CHECK", "please")],
                "DISABLE_NODE_IP_CHECK",
            ),
        ] {
            let e = refused(&pairs);
            assert_eq!(e.variable, variable, "{pairs:?}: {e}");
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn var_lib_dir_moves_both_files_and_the_nodename_file_can_move_alone() {
        let s = settings(&[("CALICO_VAR_LIB_DIR", "/tmp/x")]);
        assert_eq!(s.nodename_file, PathBuf::from("/tmp/x/nodename"));
        assert_eq!(s.mtu_file, PathBuf::from("/tmp/x/mtu"));
        let s = settings(&[("CALICO_NODENAME_FILE", "/etc/nodename")]);
        assert_eq!(s.nodename_file, PathBuf::from("/etc/nodename"));
        assert_eq!(s.mtu_file, PathBuf::from("/var/lib/calico/mtu"));
    }

    #[test]
    fn the_default_mtu_pattern_is_felixs() {
        let p = settings(&[]).mtu.iface_pattern;
        for name in ["eth0", "ens3", "enp0s3", "wlan0", "ibp1s0"] {
            assert!(p.is_match(name), "{name}");
        }
        for name in ["lo", "cali123", "docker0", "tunl0", "vxlan.calico"] {
            assert!(!p.is_match(name), "{name}");
        }
    }
}
