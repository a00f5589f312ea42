//! Calico's CNI network configuration (`NetConf`), read the way Calico's Go plugin reads it.
//!
//! Go's `encoding/json` matches keys case-insensitively (an exact match wins), treats `null`
//! as "leave unset" and ignores unknown keys; a value of the wrong type fails the decode.
//! [`NetConf::from_value`] does the same, and names the offending field (code 7).
//!
//! Owns the CNI config's fields and the settings derived from them; the etcd settings it
//! derives are `calico-datastore`'s [`EtcdConfig`] (the one copy). Must not import the IPAM,
//! the dataplane or the plugins.

#![cfg_attr(test, recursion_limit = "256")]

use calico_datastore::EtcdConfig;
use cni_protocol::{CniError, Request};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::PathBuf;

/// Calico's default log file (the manifests' `log_file_path`).
pub const DEFAULT_LOG_FILE: &str = "/var/log/calico/cni/cni.log";
/// Where calico-node writes the node's name.
pub const DEFAULT_NODENAME_FILE: &str = "/var/lib/calico/nodename";
/// Where calico-node writes the detected MTU.
pub const DEFAULT_MTU_FILE: &str = "/var/lib/calico/mtu";
/// The host-wide IPAM lock Calico's plugins share.
pub const DEFAULT_IPAM_LOCK_FILE: &str = "/var/run/calico/ipam.lock";
/// Where Felix reports endpoint status (policy_setup_timeout_seconds).
pub const DEFAULT_ENDPOINT_STATUS_DIR: &str = "/var/run/calico/endpoint-status";

/// The `ipam` section. Only what Calico reads is typed; the whole section goes to the IPAM
/// plugin verbatim anyway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpamConf {
    #[serde(rename = "name")]
    pub name: String,
    #[serde(rename = "type")]
    pub ipam_type: String,
    pub subnet: String,
    /// A string, as in Calico: only `"false"` turns IPv4 off.
    pub assign_ipv4: Option<String>,
    /// A string, as in Calico: only `"true"` turns IPv6 on.
    pub assign_ipv6: Option<String>,
    pub ipv4_pools: Vec<String>,
    pub ipv6_pools: Vec<String>,
    pub ip_pools_label_selector_keys: Vec<String>,
}

impl IpamConf {
    const FIELDS: &'static [&'static str] = &[
        "name",
        "type",
        "subnet",
        "assign_ipv4",
        "assign_ipv6",
        "ipv4_pools",
        "ipv6_pools",
        "ip_pools_label_selector_keys",
    ];

    pub fn assign_ipv4(&self) -> bool {
        self.assign_ipv4.as_deref() != Some("false")
    }

    pub fn assign_ipv6(&self) -> bool {
        self.assign_ipv6.as_deref() == Some("true")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// `""` (profile per network) or `"k8s"`.
    #[serde(rename = "type")]
    pub policy_type: String,
    pub k8s_api_root: String,
    pub k8s_auth_token: String,
    pub k8s_client_certificate: String,
    pub k8s_client_key: String,
    pub k8s_certificate_authority: String,
}

impl Policy {
    const FIELDS: &'static [&'static str] = &[
        "type",
        "k8s_api_root",
        "k8s_auth_token",
        "k8s_client_certificate",
        "k8s_client_key",
        "k8s_certificate_authority",
    ];
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Kubernetes {
    pub k8s_api_root: String,
    pub kubeconfig: String,
    pub node_name: String,
}

impl Kubernetes {
    const FIELDS: &'static [&'static str] = &["k8s_api_root", "kubeconfig", "node_name"];
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FeatureControl {
    pub ip_addrs_no_ipam: bool,
    pub floating_ips: bool,
}

impl FeatureControl {
    const FIELDS: &'static [&'static str] = &["ip_addrs_no_ipam", "floating_ips"];
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerSettings {
    pub allow_ip_forwarding: bool,
}

impl ContainerSettings {
    const FIELDS: &'static [&'static str] = &["allow_ip_forwarding"];
}

/// Every field of Calico's `NetConf` (cni-plugin/pkg/types), plus the fields newer releases
/// read elsewhere (`qps`, `burst`, `device_type`, `calico_api_group`, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Only `"vxlan"` means anything (Windows).
    pub mode: String,
    pub vxlan_mac_prefix: String,
    pub vxlan_vni: u64,
    pub ipam: IpamConf,
    /// Mesos labels live here (`args.org.apache.mesos.network_info.labels`); kept raw.
    pub args: Value,
    pub mtu: i64,
    pub require_mtu_file: bool,
    pub num_queues: i64,
    pub device_type: String,
    pub nodename: String,
    pub nodename_file: String,
    pub nodename_file_optional: bool,
    pub ipam_lock_file: String,
    pub datastore_type: String,
    pub etcd_endpoints: String,
    pub etcd_discovery_srv: String,
    pub etcd_scheme: String,
    pub etcd_key_file: String,
    pub etcd_cert_file: String,
    pub etcd_ca_cert_file: String,
    /// Deprecated `host:port` form of the endpoint.
    pub etcd_authority: String,
    pub log_level: String,
    pub log_file_path: String,
    pub log_file_max_size: i64,
    pub log_file_max_age: i64,
    pub log_file_max_count: i64,
    pub policy: Policy,
    pub kubernetes: Kubernetes,
    pub feature_control: FeatureControl,
    pub container_settings: ContainerSettings,
    pub include_default_routes: bool,
    pub dataplane_options: Map<String, Value>,
    pub readiness_gates: Vec<String>,
    pub policy_setup_timeout_seconds: i64,
    pub endpoint_status_dir: String,
    pub qps: i64,
    pub burst: i64,
    pub calico_api_group: String,
    /// Deprecated third choice for the node name.
    pub hostname: String,
    pub windows_pod_deletion_timestamp_timeout: i64,
    pub windows_use_single_network: bool,
    pub windows_disable_default_deny_all_policy: bool,
    #[serde(rename = "windows_loopback_DSR")]
    pub windows_loopback_dsr: bool,
    /// Capability arguments from the runtime (`portMappings`, `dns`, ...); kept raw.
    #[serde(rename = "runtimeConfig")]
    pub runtime_config: Value,
}

impl NetConf {
    const FIELDS: &'static [&'static str] = &[
        "cniVersion",
        "name",
        "type",
        "mode",
        "vxlan_mac_prefix",
        "vxlan_vni",
        "ipam",
        "args",
        "mtu",
        "require_mtu_file",
        "num_queues",
        "device_type",
        "nodename",
        "nodename_file",
        "nodename_file_optional",
        "ipam_lock_file",
        "datastore_type",
        "etcd_endpoints",
        "etcd_discovery_srv",
        "etcd_scheme",
        "etcd_key_file",
        "etcd_cert_file",
        "etcd_ca_cert_file",
        "etcd_authority",
        "log_level",
        "log_file_path",
        "log_file_max_size",
        "log_file_max_age",
        "log_file_max_count",
        "policy",
        "kubernetes",
        "feature_control",
        "container_settings",
        "include_default_routes",
        "dataplane_options",
        "readiness_gates",
        "policy_setup_timeout_seconds",
        "endpoint_status_dir",
        "qps",
        "burst",
        "calico_api_group",
        "hostname",
        "windows_pod_deletion_timestamp_timeout",
        "windows_use_single_network",
        "windows_disable_default_deny_all_policy",
        "windows_loopback_DSR",
        "runtimeConfig",
    ];

    /// The nested objects and the fields each knows, for key canonicalisation.
    const NESTED: &'static [(&'static str, &'static [&'static str])] = &[
        ("ipam", IpamConf::FIELDS),
        ("policy", Policy::FIELDS),
        ("kubernetes", Kubernetes::FIELDS),
        ("feature_control", FeatureControl::FIELDS),
        ("container_settings", ContainerSettings::FIELDS),
    ];

    /// Decodes a config object the way Go's `encoding/json` decodes it into Calico's struct.
    pub fn from_value(config: &Map<String, Value>) -> Result<Self, CniError> {
        let mut top = canonicalise(config, Self::FIELDS);
        for (key, fields) in Self::NESTED {
            match top.get(*key) {
                Some(Value::Object(inner)) => {
                    let inner = canonicalise(inner, fields);
                    top.insert((*key).to_string(), Value::Object(inner));
                }
                // Serde's derive would read an array positionally (`"policy": ["k8s"]` as
                // `policy.type`); Go's decoder refuses anything but an object for a struct.
                Some(other) => return Err(expected_object(key, other)),
                None => {}
            }
        }
        let conf: NetConf = serde_path_to_error::deserialize(Value::Object(top)).map_err(|e| {
            let path = e.path().to_string();
            CniError::invalid_config(format!(
                "invalid value for field {path:?}: {}",
                e.into_inner()
            ))
        })?;
        conf.validate()?;
        Ok(conf)
    }

    /// What Go's types allow but no call can use, refused here with the field's name rather
    /// than met later as a kernel error ("netlink create veth: Invalid argument") or a
    /// delegation without end.
    fn validate(&self) -> Result<(), CniError> {
        // 0 is "unset" (the MTU file or the kernel's default); the kernel takes 68 (IPv4's
        // minimum) to 65535 on a veth.
        if self.mtu != 0 && !(MTU_MIN..=MTU_MAX).contains(&self.mtu) {
            return Err(CniError::invalid_config(format!(
                "invalid value for field \"mtu\": {} is outside {MTU_MIN}-{MTU_MAX}",
                self.mtu
            )));
        }
        if self.ipam.ipam_type == "calico" {
            return Err(CniError::invalid_config(
                "invalid value for field \"ipam.type\": \"calico\" is this plugin itself, \
                 which would delegate to itself without end (Calico's IPAM plugin is \
                 \"calico-ipam\")",
            ));
        }
        Ok(())
    }

    /// Decodes a plugin call's config.
    pub fn from_request(req: &Request) -> Result<Self, CniError> {
        Self::from_value(&req.config)
    }

    /// Calico's log levels: debug, info, warning, error (any case); anything else is info.
    pub fn log_level(&self) -> log::LevelFilter {
        match self.log_level.to_ascii_lowercase().as_str() {
            "debug" => log::LevelFilter::Debug,
            "warn" | "warning" => log::LevelFilter::Warn,
            "error" => log::LevelFilter::Error,
            _ => log::LevelFilter::Info,
        }
    }

    /// The log file: `log_file_path`, else Calico's manifests' default.
    pub fn log_file(&self) -> PathBuf {
        non_empty(&self.log_file_path)
            .unwrap_or(DEFAULT_LOG_FILE)
            .into()
    }

    pub fn log_settings(&self) -> cni_protocol::logging::LogSettings {
        cni_protocol::logging::LogSettings {
            level: self.log_level(),
            file: Some(self.log_file()),
        }
    }

    /// A call's log settings (both binaries' [`cni_protocol::Plugin::log_settings`]): its
    /// config's, or the defaults if the config does not decode (its error then goes there).
    pub fn log_settings_of(req: &Request) -> cni_protocol::logging::LogSettings {
        NetConf::from_request(req)
            .map(|c| c.log_settings())
            .unwrap_or_default()
    }

    pub fn nodename_file(&self) -> PathBuf {
        non_empty(&self.nodename_file)
            .unwrap_or(DEFAULT_NODENAME_FILE)
            .into()
    }

    pub fn ipam_lock_file(&self) -> PathBuf {
        non_empty(&self.ipam_lock_file)
            .unwrap_or(DEFAULT_IPAM_LOCK_FILE)
            .into()
    }

    /// The datastore, chosen as libcalico-go's `applyConfigDefaults` does after the plugin
    /// exported its config into the environment (`apiconfig/load.go`): `datastore_type`
    /// (or `DATASTORE_TYPE` in the environment), else `etcdv3` when etcd endpoints are set
    /// in the config or the environment (`ETCD_ENDPOINTS`), else `kubernetes`. See
    /// [`calico_setting`] for how the config and the environment combine.
    pub fn datastore_type(&self, env: impl Fn(&str) -> Option<String>) -> String {
        if let Some(t) = calico_setting(&self.datastore_type, "DATASTORE_TYPE", &env) {
            return t;
        }
        let endpoints = calico_setting(&self.etcd_endpoints, "ETCD_ENDPOINTS", &env);
        if endpoints.is_some() || !self.etcd_endpoint_list().is_empty() {
            "etcdv3".to_string()
        } else {
            "kubernetes".to_string()
        }
    }

    /// `etcd_endpoints` split on commas; else the deprecated `etcd_scheme` + `etcd_authority`.
    pub fn etcd_endpoint_list(&self) -> Vec<String> {
        let list: Vec<String> = self
            .etcd_endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if !list.is_empty() {
            return list;
        }
        match non_empty(&self.etcd_authority) {
            Some(a) => vec![format!(
                "{}://{a}",
                non_empty(&self.etcd_scheme).unwrap_or("http")
            )],
            None => Vec::new(),
        }
    }

    /// The etcd connection settings, each from the config or the environment as
    /// [`calico_setting`] says (Calico exports the config into the environment, where
    /// libcalico-go reads it).
    /// Timeouts are the client's defaults. Check the result
    /// with [`check_etcd`].
    pub fn etcd(&self, env: impl Fn(&str) -> Option<String>) -> EtcdConfig {
        let pick = |conf: &str, var: &str| calico_setting(conf, var, &env).map(PathBuf::from);
        let mut endpoints: Vec<String> =
            calico_setting(&self.etcd_endpoints, "ETCD_ENDPOINTS", &env)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        if endpoints.is_empty() {
            // Ours, not libcalico-go v3's: the deprecated authority still names an endpoint.
            endpoints = self.etcd_endpoint_list();
        }
        EtcdConfig {
            discovery_srv: calico_setting(&self.etcd_discovery_srv, "ETCD_DISCOVERY_SRV", &env),
            ca_cert_file: pick(&self.etcd_ca_cert_file, "ETCD_CA_CERT_FILE"),
            cert_file: pick(&self.etcd_cert_file, "ETCD_CERT_FILE"),
            key_file: pick(&self.etcd_key_file, "ETCD_KEY_FILE"),
            ..EtcdConfig::new(endpoints)
        }
    }

    /// The node's name: `nodename`, then the nodename file, then the deprecated `hostname`,
    /// then the machine's hostname (lower-cased). Unlike Calico we trim the file's content,
    /// since a trailing newline would make a different node.
    pub fn nodename(
        &self,
        read_file: impl Fn(&std::path::Path) -> Option<String>,
        machine_hostname: impl Fn() -> Option<String>,
    ) -> Option<String> {
        non_empty(&self.nodename)
            .map(str::to_string)
            .or_else(|| {
                read_file(&self.nodename_file())
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            })
            .or_else(|| non_empty(&self.hostname).map(str::to_string))
            .or_else(|| {
                machine_hostname()
                    .map(|h| h.trim().to_lowercase())
                    .filter(|h| !h.is_empty())
            })
    }
}

/// Code 7 if both endpoints and SRV discovery are set: libcalico-go's `NewEtcdV3Client`
/// refuses that too ("multiple discovery or bootstrap options"). Code 7 too for an endpoint
/// that is not `http(s)://host[:port]` (one with `user:password@` among them), rather than
/// a datastore error once the client is made.
pub fn check_etcd(etcd: &EtcdConfig) -> Result<(), CniError> {
    if let Some(domain) = &etcd.discovery_srv
        && !etcd.endpoints.is_empty()
    {
        return Err(CniError::invalid_config(format!(
            "multiple discovery or bootstrap options specified, use either etcd_endpoints \
             ({}) or etcd_discovery_srv ({domain})",
            etcd.endpoints.join(",")
        )));
    }
    for endpoint in &etcd.endpoints {
        calico_datastore::transport::Target::parse(endpoint).map_err(|e| match e {
            calico_datastore::EtcdError::Config(why) => CniError::invalid_config(format!(
                "invalid value for field \"etcd_endpoints\": {why}"
            )),
            other => CniError::invalid_config(other.to_string()),
        })?;
    }
    Ok(())
}

/// The smallest `mtu` a veth takes (IPv4's minimum datagram size).
pub const MTU_MIN: i64 = 68;
/// The largest `mtu` a veth takes.
pub const MTU_MAX: i64 = 65535;

/// Code 7 for a nested config section that is not an object.
fn expected_object(field: &str, got: &Value) -> CniError {
    let kind = match got {
        Value::Array(_) => "an array",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Bool(_) => "a boolean",
        Value::Null | Value::Object(_) => "something else",
    };
    CniError::invalid_config(format!(
        "invalid value for field {field:?}: expected an object, got {kind}"
    ))
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// One of libcalico-go's datastore settings as the Go plugin ends up reading it: the plugin
/// copies a non-empty config value into the environment variable `name` (`CreateClient`),
/// then `envconfig` reads `CALICO_<name>` first and `<name>` second. So `CALICO_<name>`
/// wins, then the config, then `<name>`; empty values count as unset.
pub fn calico_setting(
    conf: &str,
    name: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let set = |v: Option<String>| v.filter(|v| !v.is_empty());
    set(env(&format!("CALICO_{name}")))
        .or_else(|| non_empty(conf).map(str::to_string))
        .or_else(|| set(env(name)))
}

/// Renames keys that match a known field case-insensitively to the field's exact name (an
/// exact match wins, as in Go) and drops `null`s, which Go treats as "unset".
fn canonicalise(obj: &Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in obj {
        if v.is_null() {
            continue;
        }
        let exact = fields.contains(&k.as_str());
        let key = if exact {
            k.clone()
        } else {
            match fields.iter().find(|f| f.eq_ignore_ascii_case(k)) {
                // Only if the exact spelling is not also present.
                Some(f) if !obj.contains_key(*f) => (*f).to_string(),
                _ => k.clone(),
            }
        };
        out.insert(key, v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_protocol::ErrorCode;
    use serde_json::json;

    fn seed() -> Map<String, Value> {
        let text = include_str!("../../../conflist/10-calico.conflist");
        let list: Value = serde_json::from_str(text).expect("seed conflist is JSON");
        let mut plugin = list["plugins"][0].as_object().expect("object").clone();
        // What a runtime sends: name and cniVersion injected from the list.
        plugin.insert("name".into(), list["name"].clone());
        plugin.insert("cniVersion".into(), list["cniVersion"].clone());
        plugin
    }

    #[test]
    fn seed_conflist_field_by_field() {
        let c = NetConf::from_value(&seed()).expect("seed parses");
        assert_eq!(c.cni_version, "0.3.0");
        assert_eq!(c.name, "k8s-pod-network");
        assert_eq!(c.plugin_type, "calico");
        assert_eq!(c.log_level, "info");
        assert_eq!(c.log_level(), log::LevelFilter::Info);
        assert_eq!(c.etcd_endpoints, "https://10.10.0.174:2379");
        assert_eq!(c.etcd_key_file, "/etc/cni/net.d/calico-tls/etcd-key");
        assert_eq!(c.etcd_cert_file, "/etc/cni/net.d/calico-tls/etcd-cert");
        assert_eq!(c.etcd_ca_cert_file, "/etc/cni/net.d/calico-tls/etcd-ca");
        assert_eq!(c.mtu, 1440);
        assert_eq!(c.ipam.ipam_type, "calico-ipam");
        assert!(c.ipam.assign_ipv4() && !c.ipam.assign_ipv6());
        assert_eq!(c.policy.policy_type, "k8s");
        assert_eq!(c.kubernetes.kubeconfig, "/etc/cni/net.d/calico-kubeconfig");
        assert_eq!(c.datastore_type(|_| None), "etcdv3");
        let etcd = c.etcd(|_| None);
        assert_eq!(etcd.endpoints, ["https://10.10.0.174:2379"]);
        assert_eq!(
            etcd.ca_cert_file.as_deref(),
            Some(std::path::Path::new("/etc/cni/net.d/calico-tls/etcd-ca"))
        );
        assert_eq!(
            etcd.cert_file.as_deref(),
            Some(std::path::Path::new("/etc/cni/net.d/calico-tls/etcd-cert"))
        );
        assert_eq!(
            etcd.key_file.as_deref(),
            Some(std::path::Path::new("/etc/cni/net.d/calico-tls/etcd-key"))
        );
        // Defaults Calico applies when the seed is silent.
        assert_eq!(c.log_file(), PathBuf::from(DEFAULT_LOG_FILE));
        assert_eq!(c.nodename_file(), PathBuf::from(DEFAULT_NODENAME_FILE));
        assert_eq!(c.ipam_lock_file(), PathBuf::from(DEFAULT_IPAM_LOCK_FILE));
        assert!(!c.container_settings.allow_ip_forwarding);
    }

    #[test]
    fn the_field_lists_match_the_structs() {
        let keys = |v: Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            k.sort();
            k
        };
        let sorted = |f: &[&str]| {
            let mut v: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        };
        let to = |v: &dyn erased::Ser| v.value();
        assert_eq!(keys(to(&NetConf::default())), sorted(NetConf::FIELDS));
        assert_eq!(keys(to(&IpamConf::default())), sorted(IpamConf::FIELDS));
        assert_eq!(keys(to(&Policy::default())), sorted(Policy::FIELDS));
        assert_eq!(keys(to(&Kubernetes::default())), sorted(Kubernetes::FIELDS));
        assert_eq!(
            keys(to(&FeatureControl::default())),
            sorted(FeatureControl::FIELDS)
        );
        assert_eq!(
            keys(to(&ContainerSettings::default())),
            sorted(ContainerSettings::FIELDS)
        );
    }

    mod erased {
        pub trait Ser {
            fn value(&self) -> serde_json::Value;
        }
        impl<T: serde::Serialize> Ser for T {
            fn value(&self) -> serde_json::Value {
                serde_json::to_value(self).expect("serialises")
            }
        }
    }

    #[test]
    fn every_field_parses_from_a_full_config() {
        let full = json!({
            "cniVersion":"1.0.0","name":"net","type":"calico","mode":"vxlan","vxlan_mac_prefix":"0E-2A",
            "vxlan_vni":4096,"ipam":{"type":"calico-ipam","subnet":"usePodCidr","assign_ipv4":"false",
            "assign_ipv6":"true","ipv4_pools":["default-ipv4-ippool"],"ipv6_pools":["fd00::/48"],
            "ip_pools_label_selector_keys":["zone"],"name":"x"},
            "args":{"org.apache.mesos":{"network_info":{"name":"m"}}},"mtu":0,"require_mtu_file":true,
            "num_queues":2,"device_type":"veth","nodename":"n1","nodename_file":"/x/nodename",
            "nodename_file_optional":true,"ipam_lock_file":"/x/lock","datastore_type":"etcdv3",
            "etcd_endpoints":"http://a:2379, http://b:2379","etcd_discovery_srv":"example.com",
            "etcd_scheme":"https","etcd_key_file":"k","etcd_cert_file":"c","etcd_ca_cert_file":"ca",
            "etcd_authority":"old:2379","log_level":"DEBUG","log_file_path":"/tmp/cni.log",
            "log_file_max_size":10,"log_file_max_age":2,"log_file_max_count":3,
            "policy":{"type":"k8s","k8s_api_root":"https://api:6443/api/v1","k8s_auth_token":"t",
              "k8s_client_certificate":"cc","k8s_client_key":"ck","k8s_certificate_authority":"ca"},
            "kubernetes":{"kubeconfig":"/kc","k8s_api_root":"https://api","node_name":"n1"},
            "feature_control":{"ip_addrs_no_ipam":true,"floating_ips":true},
            "container_settings":{"allow_ip_forwarding":true},"include_default_routes":true,
            "dataplane_options":{"type":"grpc","socket":"/s"},"readiness_gates":["http://r"],
            "policy_setup_timeout_seconds":5,"endpoint_status_dir":"/eps","qps":5,"burst":10,
            "calico_api_group":"crd.projectcalico.org","hostname":"h","windows_pod_deletion_timestamp_timeout":600,
            "windows_use_single_network":true,"windows_disable_default_deny_all_policy":true,
            "windows_loopback_DSR":true,"runtimeConfig":{"portMappings":[]},"some_future_key":{"x":1}
        });
        let c = NetConf::from_value(full.as_object().expect("object")).expect("parses");
        assert!(!c.ipam.assign_ipv4() && c.ipam.assign_ipv6());
        assert_eq!(c.ipam.ipv6_pools, ["fd00::/48"]);
        assert_eq!(c.log_level(), log::LevelFilter::Debug);
        assert_eq!(c.etcd_endpoint_list(), ["http://a:2379", "http://b:2379"]);
        assert_eq!(c.policy.k8s_auth_token, "t");
        assert!(c.feature_control.floating_ips && c.container_settings.allow_ip_forwarding);
        assert_eq!(c.dataplane_options["type"], "grpc");
        assert!(c.windows_loopback_dsr);
        assert_eq!(c.runtime_config["portMappings"], json!([]));
        // Re-serialising gives every declared field back.
        let back = serde_json::to_value(&c).expect("serialises");
        for f in NetConf::FIELDS {
            assert!(back.get(*f).is_some(), "{f}");
        }
    }

    #[test]
    fn keys_match_case_insensitively_and_nulls_are_unset() {
        let c = NetConf::from_value(
            json!({"MTU":1400,"Etcd_Endpoints":"http://x:1","IPAM":{"Type":"host-local"},
                   "log_level":null,"Policy":{"TYPE":"k8s"}})
            .as_object()
            .expect("object"),
        )
        .expect("parses");
        assert_eq!(c.mtu, 1400);
        assert_eq!(c.etcd_endpoints, "http://x:1");
        assert_eq!(c.ipam.ipam_type, "host-local");
        assert_eq!(c.policy.policy_type, "k8s");
        // An exact key beats a case variant.
        let c = NetConf::from_value(json!({"mtu":1400,"MTU":1500}).as_object().expect("object"))
            .expect("parses");
        assert_eq!(c.mtu, 1400);
    }

    #[test]
    fn wrong_types_are_code_7_naming_the_field() {
        for (conf, field) in [
            (json!({"mtu":"1440"}), "mtu"),
            (json!({"ipam":{"assign_ipv4":true}}), "ipam.assign_ipv4"),
            (json!({"ipam":{"ipv4_pools":"pool1"}}), "ipam.ipv4_pools"),
            (json!({"etcd_endpoints":["a"]}), "etcd_endpoints"),
            (
                json!({"container_settings":{"allow_ip_forwarding":"yes"}}),
                "container_settings.allow_ip_forwarding",
            ),
            (json!({"policy":"k8s"}), "policy"),
            (json!({"readiness_gates":[1]}), "readiness_gates"),
        ] {
            let e = NetConf::from_value(conf.as_object().expect("object")).expect_err(field);
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{field}");
            assert!(e.msg.contains(field), "{field}: {}", e.msg);
        }
    }

    /// Bad-input finding #14: a nested section given as an array (which serde's derive
    /// would read positionally: `"policy": ["k8s"]` as `policy.type`) or a scalar is code 7,
    /// as Go's decoder refuses it.
    #[test]
    fn a_nested_section_that_is_not_an_object_is_code_7() {
        for (field, _) in NetConf::NESTED {
            for bad in [json!([]), json!(["k8s"]), json!(1), json!("x"), json!(true)] {
                let conf = json!({ *field: bad });
                let e = NetConf::from_value(conf.as_object().expect("object"))
                    .expect_err(&conf.to_string());
                assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{conf}");
                assert!(
                    e.msg.contains(&format!("{field:?}")) && e.msg.contains("expected an object"),
                    "{conf}: {}",
                    e.msg
                );
            }
            // In any case, as Go matches keys; null stays "unset".
            let conf = json!({ field.to_uppercase(): [] });
            assert!(NetConf::from_value(conf.as_object().expect("object")).is_err());
            let conf = json!({ *field: null });
            assert!(NetConf::from_value(conf.as_object().expect("object")).is_ok());
        }
    }

    /// Bad-input finding #15: an `mtu` no veth takes is code 7 naming the field, not a
    /// kernel error after the fact; 0 stays "unset".
    #[test]
    fn an_mtu_outside_68_to_65535_is_code_7() {
        for mtu in [-1, 1, 67, 65536, 70000, i64::MAX] {
            let e = NetConf::from_value(json!({ "mtu": mtu }).as_object().expect("object"))
                .expect_err(&mtu.to_string());
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{mtu}");
            assert!(e.msg.contains("\"mtu\""), "{mtu}: {}", e.msg);
        }
        for mtu in [0, 68, 1440, 9000, 65535] {
            let c = NetConf::from_value(json!({ "mtu": mtu }).as_object().expect("object"))
                .expect("in range");
            assert_eq!(c.mtu, mtu);
        }
    }

    /// Bad-input finding #10: `ipam.type` "calico" would run the calico plugin as its own
    /// IPAM, which runs it again, without end.
    #[test]
    fn ipam_type_calico_is_code_7() {
        let e = NetConf::from_value(
            json!({"type":"calico","ipam":{"type":"calico"}})
                .as_object()
                .expect("object"),
        )
        .expect_err("self-delegation");
        assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG);
        assert!(e.msg.contains("ipam.type"), "{}", e.msg);
    }

    #[test]
    fn assign_flags_are_strings_with_calico_defaults() {
        let ipam = |v: Value| {
            NetConf::from_value(json!({"ipam": v}).as_object().expect("object"))
                .expect("parses")
                .ipam
        };
        let i = ipam(json!({}));
        assert!(i.assign_ipv4() && !i.assign_ipv6());
        let i = ipam(json!({"assign_ipv4":"False","assign_ipv6":"TRUE"}));
        // Only the exact literals count, as in Calico.
        assert!(i.assign_ipv4() && !i.assign_ipv6());
    }

    /// Mirrors libcalico-go `apiconfig/load.go` `applyConfigDefaults` (with the plugin's
    /// `CreateClient` exporting the config first): the environment alone can choose etcdv3.
    #[test]
    fn datastore_type_is_detected_from_the_environment_too() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let bare = NetConf::default();
        assert_eq!(bare.datastore_type(env(&[])), "kubernetes");
        assert_eq!(
            bare.datastore_type(env(&[("ETCD_ENDPOINTS", "http://e:2379")])),
            "etcdv3"
        );
        assert_eq!(
            bare.datastore_type(env(&[("CALICO_ETCD_ENDPOINTS", "http://e:2379")])),
            "etcdv3"
        );
        assert_eq!(
            bare.datastore_type(env(&[("DATASTORE_TYPE", "etcdv3")])),
            "etcdv3"
        );
        // An empty variable is unset.
        assert_eq!(
            bare.datastore_type(env(&[("ETCD_ENDPOINTS", ""), ("DATASTORE_TYPE", "")])),
            "kubernetes"
        );
        // The config's type beats the plain variable; CALICO_DATASTORE_TYPE beats both.
        let typed = NetConf {
            datastore_type: "kubernetes".into(),
            ..NetConf::default()
        };
        assert_eq!(
            typed.datastore_type(env(&[
                ("DATASTORE_TYPE", "etcdv3"),
                ("ETCD_ENDPOINTS", "http://e:2379")
            ])),
            "kubernetes"
        );
        assert_eq!(
            typed.datastore_type(env(&[("CALICO_DATASTORE_TYPE", "etcdv3")])),
            "etcdv3"
        );
        // Discovery alone does not choose etcdv3 (only endpoints do, in Go too).
        let srv = NetConf {
            etcd_discovery_srv: "example.com".into(),
            ..NetConf::default()
        };
        assert_eq!(srv.datastore_type(env(&[])), "kubernetes");
        let s = srv.etcd(env(&[]));
        assert_eq!(s.discovery_srv.as_deref(), Some("example.com"));
        assert!(s.endpoints.is_empty());
        let s = bare.etcd(env(&[("ETCD_DISCOVERY_SRV", "env.example")]));
        assert_eq!(s.discovery_srv.as_deref(), Some("env.example"));
        assert!(check_etcd(&s).is_ok());
        // Both ways at once is an error (NewEtcdV3Client), whichever source each came from.
        let both = srv.etcd(env(&[("ETCD_ENDPOINTS", "http://e:2379")]));
        let e = check_etcd(&both).expect_err("both");
        assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG);
        assert!(e.msg.contains("multiple discovery"), "{}", e.msg);
        // Bad-input finding #15: credentials in an endpoint are code 7, naming the field
        // and not the password (it was reported as "unreachable").
        for bad in ["http://user:secret@127.0.0.1:2379", "ftp://e:2379"] {
            let conf = NetConf {
                etcd_endpoints: bad.into(),
                ..NetConf::default()
            };
            let e = check_etcd(&conf.etcd(env(&[]))).expect_err(bad);
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{bad}");
            assert!(e.msg.contains("etcd_endpoints"), "{}", e.msg);
            assert!(!e.msg.contains("secret"), "{}", e.msg);
        }
        // Endpoints: CALICO_ETCD_ENDPOINTS, then the config, then ETCD_ENDPOINTS.
        let conf = NetConf {
            etcd_endpoints: "http://conf:2379".into(),
            ..NetConf::default()
        };
        assert_eq!(
            conf.etcd(env(&[("ETCD_ENDPOINTS", "http://env:2379")]))
                .endpoints,
            ["http://conf:2379"]
        );
        assert_eq!(
            conf.etcd(env(&[("CALICO_ETCD_ENDPOINTS", "http://a:1,http://b:2")]))
                .endpoints,
            ["http://a:1", "http://b:2"]
        );
    }

    #[test]
    fn nodename_order_and_etcd_environment_fallback() {
        let c = NetConf::default();
        let none = |_: &std::path::Path| None;
        assert_eq!(
            c.nodename(none, || Some("Host-A\n".into())),
            Some("host-a".into())
        );
        assert_eq!(
            c.nodename(|_| Some("node-7\n".into()), || Some("x".into())),
            Some("node-7".into())
        );
        let c = NetConf {
            nodename: "pinned".into(),
            ..NetConf::default()
        };
        assert_eq!(
            c.nodename(|_| Some("file".into()), || None),
            Some("pinned".into())
        );
        let c = NetConf {
            etcd_key_file: "conf-key".into(),
            ..NetConf::default()
        };
        let s = c.etcd(|k| match k {
            "ETCD_ENDPOINTS" => Some("https://e1:2379,https://e2:2379".into()),
            "ETCD_KEY_FILE" => Some("env-key".into()),
            "ETCD_CERT_FILE" => Some("env-cert".into()),
            _ => None,
        });
        assert_eq!(s.endpoints, ["https://e1:2379", "https://e2:2379"]);
        assert_eq!(s.key_file, Some(PathBuf::from("conf-key")));
        assert_eq!(s.cert_file, Some(PathBuf::from("env-cert")));
        assert_eq!(c.datastore_type(|_| None), "kubernetes");
        let legacy = NetConf {
            etcd_authority: "127.0.0.1:2379".into(),
            ..NetConf::default()
        };
        assert_eq!(legacy.etcd_endpoint_list(), ["http://127.0.0.1:2379"]);
    }
}
