//! `calicoctl ipam configure`: the IPAM settings at `/calico/ipam/v2/config`.

use crate::error::{CmdError, CmdResult};
use calico_datastore::model::{IpamConfigValue, keys};
use calico_datastore::{Guard, KvStore, TxnOutcome, Write};

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

/// `ipam configure`: read (Calico's defaults if missing), change, check, write (guarded).
/// Calico 3.32 writes the defaults when the key is missing even if nothing changes; so do we.
pub fn configure(store: &dyn KvStore, opts: &Options, out: &mut dyn std::io::Write) -> CmdResult {
    let changes = opts.parse()?;
    let key = keys::IPAM_CONFIG;
    let mut done = false;
    for _ in 0..5 {
        let current = store.get(key)?;
        let value: Option<IpamConfigValue> = match &current {
            Some(kv) => Some(
                serde_json::from_slice(&kv.value)
                    .map_err(|e| CmdError::failed(format!("error: cannot decode {key}: {e}")))?,
            ),
            None => None,
        };
        let new = updated(value.as_ref(), &changes);
        if value.as_ref() == Some(&new) {
            done = true;
            break;
        }
        check(&new).map_err(|e| CmdError::failed(format!("error: {e}")))?;
        let bytes =
            serde_json::to_vec(&new).map_err(|e| CmdError::failed(format!("error: {e}")))?;
        let guard = Guard::for_current(key, current.as_ref());
        if let TxnOutcome::Applied(_) = store.txn(&[guard], &[Write::Put(key.into(), bytes)])? {
            done = true;
            break;
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
