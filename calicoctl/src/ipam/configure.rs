//! `calicoctl ipam configure`: the IPAM settings at `/calico/ipam/v2/config` (the
//! `model.IPAMConfigKey` that `ipam.GetIPAMConfig`/`SetIPAMConfig` use). In etcd mode this is
//! not the IPAMConfiguration resource that `get`/`apply` show: libcalico-go maps the two onto
//! one object only in the Kubernetes datastore.

use crate::error::{CmdError, CmdResult};
use calico_datastore::model::{IpamConfigValue, keys};
use calico_datastore::{Guard, Kv, KvStore, TxnOutcome, Write};

/// The options as given on the command line (unparsed, to report Calico's messages).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub strict_affinity: Option<String>,
    pub max_blocks_per_host: Option<String>,
    pub kubevirt_ip_persistence: Option<String>,
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The parsed changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Changes {
    pub strict_affinity: Option<bool>,
    pub max_blocks_per_host: Option<i64>,
    pub persistence_enabled: Option<bool>,
}

impl Options {
    pub fn parse(&self) -> CmdResult<Changes> {
        let given = |o: &Option<String>| o.clone().filter(|s| !s.is_empty());
        let strict_affinity = match given(&self.strict_affinity) {
            Some(s) => Some(parse_go_bool(&s).ok_or_else(|| {
                CmdError::failed("invalid value. Use true or false to set strictaffinity")
            })?),
            None => None,
        };
        let max_blocks_per_host = match given(&self.max_blocks_per_host) {
            Some(s) => Some(s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                CmdError::failed("invalid value for maxblockhost. Use a valid number")
            })?),
            None => None,
        };
        let persistence_enabled = match given(&self.kubevirt_ip_persistence).as_deref() {
            Some("Enabled") => Some(true),
            Some("Disabled") => Some(false),
            Some(_) => {
                return Err(CmdError::failed(
                    "invalid value for --kubevirt-ip-persistence. Use Enabled or Disabled",
                ));
            }
            None => None,
        };
        let c = Changes {
            strict_affinity,
            max_blocks_per_host,
            persistence_enabled,
        };
        if c == Changes::default() {
            return Err(CmdError::failed(
                "at least one configuration option must be specified",
            ));
        }
        Ok(c)
    }
}

/// `SetIPAMConfig`'s rules.
pub fn check(c: &IpamConfigValue) -> Result<(), String> {
    if !c.strict_affinity && !c.auto_allocate_blocks {
        return Err(
            "Cannot disable 'StrictAffinity' and 'AutoAllocateBlocks' at the same time".into(),
        );
    }
    if c.max_blocks_per_host > 0 && !c.strict_affinity {
        return Err("MaxBlocksPerHost requires StrictAffinity to be enabled".into());
    }
    Ok(())
}

/// Applies `changes` to `current` (Calico's defaults when the key is missing).
pub fn updated(current: Option<&IpamConfigValue>, changes: &Changes) -> IpamConfigValue {
    let mut c = current
        .cloned()
        .unwrap_or_else(IpamConfigValue::calico_default);
    if let Some(s) = changes.strict_affinity {
        c.strict_affinity = s;
    }
    if let Some(m) = changes.max_blocks_per_host {
        c.max_blocks_per_host = m;
    }
    if let Some(p) = changes.persistence_enabled {
        c.kubevirt_vm_address_persistence = Some(if p { "Enabled" } else { "Disabled" }.into());
    }
    c
}

/// How often `GetIPAMConfig` tries to read or create the config.
const GET_ATTEMPTS: usize = 5;

fn decode_config(kv: &Kv) -> CmdResult<IpamConfigValue> {
    serde_json::from_slice(&kv.value)
        .map_err(|e| CmdError::failed(format!("error: cannot decode {}: {e}", kv.key)))
}

/// `ipam.GetIPAMConfig`: the stored config at `/calico/ipam/v2/config`; when it is missing,
/// Calico's defaults are created there first (a guarded create, so a concurrent writer wins).
pub fn get_ipam_config(store: &dyn KvStore) -> CmdResult<(Kv, IpamConfigValue)> {
    let key = keys::IPAM_CONFIG;
    for _ in 0..GET_ATTEMPTS {
        if let Some(kv) = store.get(key)? {
            let value = decode_config(&kv)?;
            return Ok((kv, value));
        }
        let default = IpamConfigValue::calico_default();
        let bytes =
            serde_json::to_vec(&default).map_err(|e| CmdError::failed(format!("error: {e}")))?;
        match store.txn(
            &[Guard::Absent(key.into())],
            &[Write::Put(key.into(), bytes.clone())],
        )? {
            TxnOutcome::Applied(rev) => {
                let kv = Kv {
                    key: key.into(),
                    value: bytes,
                    mod_revision: rev,
                };
                return Ok((kv, default));
            }
            // Another writer created it first: read theirs.
            TxnOutcome::Conflict(_) => continue,
        }
    }
    Err(CmdError::failed(format!(
        "error: failed to get ipam config after {GET_ATTEMPTS} retries"
    )))
}

/// `ipam configure` (`updateIPAMConfig`): `GetIPAMConfig` (which writes the defaults if the
/// config is missing, even when the change is then refused), the changes, `SetIPAMConfig`'s
/// checks, and a write guarded on the revision read.
pub fn configure(store: &dyn KvStore, opts: &Options, out: &mut dyn std::io::Write) -> CmdResult {
    let changes = opts.parse()?;
    let key = keys::IPAM_CONFIG;
    let (mut current, mut value) = get_ipam_config(store)?;
    let mut done = false;
    for _ in 0..5 {
        let new = updated(Some(&value), &changes);
        if value == new {
            done = true;
            break;
        }
        check(&new).map_err(|e| CmdError::failed(format!("error: {e}")))?;
        let bytes =
            serde_json::to_vec(&new).map_err(|e| CmdError::failed(format!("error: {e}")))?;
        let guard = Guard::Revision(key.into(), current.mod_revision);
        match store.txn(&[guard], &[Write::Put(key.into(), bytes)])? {
            TxnOutcome::Applied(_) => {
                done = true;
                break;
            }
            TxnOutcome::Conflict(_) => (current, value) = get_ipam_config(store)?,
        }
    }
    if !done {
        return Err(CmdError::failed(
            "error: the IPAM config kept changing while it was being updated; try again",
        ));
    }
    if let Some(s) = changes.strict_affinity {
        writeln!(out, "Successfully set StrictAffinity to: {s}")?;
    }
    if let Some(m) = changes.max_blocks_per_host {
        writeln!(out, "Successfully set MaxBlocksPerHost to: {m}")?;
    }
    if let Some(p) = changes.persistence_enabled {
        let v = if p { "Enabled" } else { "Disabled" };
        writeln!(out, "Successfully set KubeVirtVMAddressPersistence to: {v}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_datastore::MemKv;

    fn opts(strict: Option<&str>, max: Option<&str>) -> Options {
        Options {
            strict_affinity: strict.map(str::to_string),
            max_blocks_per_host: max.map(str::to_string),
            kubevirt_ip_persistence: None,
        }
    }

    #[test]
    fn strict_affinity_on_a_fresh_cluster() {
        let store = MemKv::new();
        let mut out = Vec::new();
        configure(&store, &opts(Some("true"), None), &mut out).expect("configured");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Successfully set StrictAffinity to: true\n"
        );
        assert_eq!(
            store.dump(),
            vec![(
                "/calico/ipam/v2/config".to_string(),
                r#"{"strict_affinity":true,"auto_allocate_blocks":true,"kubeVirtVMAddressPersistence":"Enabled"}"#.to_string()
            )]
        );
        let mut out = Vec::new();
        configure(&store, &opts(None, Some("3")), &mut out).expect("configured");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Successfully set MaxBlocksPerHost to: 3\n"
        );
    }

    /// Mirrors ipam.go GetIPAMConfig (creates the default when missing) followed by
    /// SetIPAMConfig refusing the change: the defaults stay written.
    #[test]
    fn a_refused_change_still_leaves_the_defaults_written() {
        let store = MemKv::new();
        let e = configure(&store, &opts(None, Some("4")), &mut Vec::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "error: MaxBlocksPerHost requires StrictAffinity to be enabled"
        );
        assert_eq!(
            store.dump(),
            vec![(
                keys::IPAM_CONFIG.to_string(),
                r#"{"auto_allocate_blocks":true,"kubeVirtVMAddressPersistence":"Enabled"}"#
                    .to_string()
            )]
        );
        let (kv, value) = get_ipam_config(&store).expect("read");
        assert_eq!(value, IpamConfigValue::calico_default());
        assert_eq!(
            get_ipam_config(&store).expect("read again").0.mod_revision,
            kv.mod_revision,
            "an existing config is not rewritten"
        );
    }

    #[test]
    fn calicos_errors() {
        let store = MemKv::new();
        let mut out = Vec::new();
        let err = |o: Options| {
            configure(&MemKv::new(), &o, &mut Vec::new())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(opts(Some("maybe"), None)),
            "invalid value. Use true or false to set strictaffinity"
        );
        assert_eq!(
            err(opts(None, Some("x"))),
            "invalid value for maxblockhost. Use a valid number"
        );
        assert_eq!(
            err(opts(None, None)),
            "at least one configuration option must be specified"
        );
        assert_eq!(
            err(opts(None, Some("4"))),
            "error: MaxBlocksPerHost requires StrictAffinity to be enabled"
        );
        store.put(keys::IPAM_CONFIG, br#"{"strict_affinity":true}"#);
        let e = configure(&store, &opts(Some("false"), None), &mut out).unwrap_err();
        assert_eq!(
            e.to_string(),
            "error: Cannot disable 'StrictAffinity' and 'AutoAllocateBlocks' at the same time"
        );
        assert_eq!(parse_go_bool("T"), Some(true));
        assert_eq!(parse_go_bool("yes"), None);
    }
}
