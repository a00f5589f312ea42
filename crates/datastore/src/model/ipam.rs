//! The IPAM objects under `/calico/ipam/v2/`, in Calico 3.32's JSON (field order, `null`s and
//! omissions as Go's `encoding/json` writes them). Older schemas read fine: missing sequence
//! numbers default, `null` attributes read as absent. Fields we do not know are kept in
//! `extra` and written back, since kube-controllers, calicoctl and Felix share these objects.
//! Serde checks only the shape: [`AllocationBlock::validate`] checks a block's consistency
//! before IPAM uses it.

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// `null` reads as the type's default (Go writes `null` for nil slices and maps).
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn none_or_empty(m: &Option<BTreeMap<String, String>>) -> bool {
    m.as_ref().is_none_or(BTreeMap::is_empty)
}

/// An allocation block (`model.AllocationBlock`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationBlock {
    pub cidr: IpNet,
    /// `host:<node>`, `virtual:<name>`, or `null` when un-affine.
    pub affinity: Option<String>,
    /// RFC 3339 to the second; 3.32+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_claim_time: Option<String>,
    /// Per ordinal: the index into `attributes`, or `null` when free.
    #[serde(default, deserialize_with = "null_as_default")]
    pub allocations: Vec<Option<usize>>,
    /// Free ordinals, oldest-freed first (FIFO).
    #[serde(default, deserialize_with = "null_as_default")]
    pub unallocated: Vec<usize>,
    /// `null` on a fresh block, as Calico writes it.
    #[serde(default)]
    pub attributes: Option<Vec<AllocationAttribute>>,
    #[serde(rename = "sequenceNumber", default)]
    pub sequence_number: u64,
    /// Map keys are ordinals as decimal strings (sorted as strings, like Go's maps).
    #[serde(
        rename = "sequenceNumberForAllocation",
        default,
        deserialize_with = "null_as_default"
    )]
    pub sequence_number_for_allocation: BTreeMap<String, u64>,
    #[serde(default)]
    pub deleted: bool,
    /// Deprecated bare host name.
    #[serde(
        rename = "hostAffinity",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub host_affinity: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Blocks larger than this cannot be Calico's (IPv4 blocks are /20 or smaller, IPv6 /116):
/// a stored block claiming more addresses is refused before anything sizes a vector by it.
pub const MAX_BLOCK_CAPACITY: usize = 1 << 12;

impl AllocationBlock {
    /// The number of addresses a block of `cidr` holds, if it is a size Calico uses.
    pub fn capacity_of(cidr: &IpNet) -> Option<usize> {
        let bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
        1usize
            .checked_shl(bits)
            .filter(|n| *n <= MAX_BLOCK_CAPACITY)
    }

    /// Checks what serde cannot: the block is the one its key names (`key_cidr`), it has one
    /// allocation slot per address, every free ordinal is in range, listed once and not allocated, and every
    /// allocation points at an attribute that exists. A block read from the datastore is
    /// used only once this holds, so no address outside it is ever handed out.
    pub fn validate(&self, key_cidr: Option<&IpNet>) -> Result<(), String> {
        if let Some(k) = key_cidr
            && *k != self.cidr
        {
            return Err(format!("its cidr {} is not the key's {k}", self.cidr));
        }
        if self.cidr.trunc() != self.cidr {
            return Err(format!("its cidr {} is not a network address", self.cidr));
        }
        let Some(capacity) = Self::capacity_of(&self.cidr) else {
            return Err(format!("its cidr {} is too large for a block", self.cidr));
        };
        if self.allocations.len() != capacity {
            return Err(format!(
                "it has {} allocation slots for {capacity} addresses",
                self.allocations.len()
            ));
        }
        let mut seen = vec![false; capacity];
        for &o in &self.unallocated {
            match seen.get_mut(o) {
                None => return Err(format!("free ordinal {o} is out of range 0..{capacity}")),
                Some(true) => return Err(format!("free ordinal {o} is listed twice")),
                Some(s) => *s = true,
            }
            // A free ordinal whose slot is taken would be handed out again: two pods, one IP.
            if self.allocations.get(o).is_some_and(Option::is_some) {
                return Err(format!("free ordinal {o} is allocated"));
            }
        }
        let attributes = self.attributes.as_ref().map_or(0, Vec::len);
        if let Some((o, i)) = self
            .allocations
            .iter()
            .enumerate()
            .find_map(|(o, a)| a.filter(|i| *i >= attributes).map(|i| (o, i)))
        {
            return Err(format!(
                "allocation {o} points at attribute {i} of {attributes}"
            ));
        }
        Ok(())
    }
}

/// Who owns an allocation (`model.AllocationAttribute`, 3.32 form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationAttribute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,
    /// `node`, `namespace`, `pod`, `timestamp`, ... ("active owner").
    #[serde(default, skip_serializing_if = "none_or_empty")]
    pub secondary: Option<BTreeMap<String, String>>,
    #[serde(
        rename = "alternateOwnerAttrs",
        default,
        skip_serializing_if = "none_or_empty"
    )]
    pub alternate_owner_attrs: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl AllocationAttribute {
    pub fn new(handle: &str, secondary: BTreeMap<String, String>) -> Self {
        AllocationAttribute {
            handle_id: Some(handle.to_string()),
            secondary: Some(secondary),
            alternate_owner_attrs: None,
            extra: Map::new(),
        }
    }

    /// The handle, sanitised as Calico reads it (malformed old handles end at `\r`).
    pub fn handle(&self) -> Option<&str> {
        self.handle_id
            .as_deref()
            .map(|h| h.split('\r').next().unwrap_or(h))
    }

    pub fn owner(&self, key: &str) -> Option<&str> {
        self.secondary.as_ref()?.get(key).map(String::as_str)
    }

    /// Calico 3.33's `releasedAt` (RFC 3339): the allocation is released and in its
    /// cooldown. Kept in `extra`, so it is written back where Go writes it (last).
    pub fn released_at(&self) -> Option<&str> {
        self.extra.get(Self::RELEASED_AT).and_then(Value::as_str)
    }

    /// An entry that holds only `releasedAt` (how 3.33 marks a released address).
    pub fn released(at: String) -> Self {
        let mut extra = Map::new();
        extra.insert(Self::RELEASED_AT.to_string(), Value::String(at));
        AllocationAttribute {
            handle_id: None,
            secondary: None,
            alternate_owner_attrs: None,
            extra,
        }
    }

    const RELEASED_AT: &'static str = "releasedAt";
}

/// A host's claim on a block (`model.BlockAffinity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockAffinity {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub deleted: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl BlockAffinity {
    pub const CONFIRMED: &'static str = "confirmed";
    pub const PENDING: &'static str = "pending";
    pub const PENDING_DELETION: &'static str = "pendingDeletion";

    pub fn confirmed() -> Self {
        BlockAffinity {
            state: Self::CONFIRMED.into(),
            deleted: false,
            extra: Map::new(),
        }
    }

    /// An empty state is old data and counts as confirmed.
    pub fn is_confirmed(&self) -> bool {
        self.state.is_empty() || self.state == Self::CONFIRMED
    }

    /// Legacy affinities were stored with an empty value.
    pub fn from_bytes(b: &[u8]) -> serde_json::Result<Self> {
        if b.iter().all(u8::is_ascii_whitespace) {
            return serde_json::from_slice(b"{}");
        }
        serde_json::from_slice(b)
    }
}

/// Which blocks hold a handle's addresses, and how many in each (`model.IPAMHandle`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamHandle {
    /// Block CIDR (`10.244.1.0/26`) to the number of addresses there.
    #[serde(default, deserialize_with = "null_as_default")]
    pub block: BTreeMap<String, i64>,
    #[serde(default)]
    pub deleted: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The IPAM settings at `/calico/ipam/v2/config`. Every field is `omitempty`, so a stored
/// `{}` means auto-allocation **off**; only an absent key means Calico's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConfigValue {
    #[serde(default, skip_serializing_if = "is_false")]
    pub strict_affinity: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub auto_allocate_blocks: bool,
    #[serde(rename = "maxBlocksPerHost", default, skip_serializing_if = "is_zero")]
    pub max_blocks_per_host: i64,
    #[serde(
        rename = "kubeVirtVMAddressPersistence",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub kubevirt_vm_address_persistence: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl IpamConfigValue {
    /// Calico 3.33's `ipCooldownSeconds`: how long a released address stays unavailable
    /// (0: reused at once, as before 3.33). Kept in `extra`, written back as read.
    pub fn ip_cooldown_seconds(&self) -> i64 {
        self.extra
            .get("ipCooldownSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    }

    /// What an absent key means (and what Calico 3.30-3.32 write on first use).
    pub fn calico_default() -> Self {
        IpamConfigValue {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 0,
            kubevirt_vm_address_persistence: Some("Enabled".into()),
            extra: Map::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fresh_block_is_written_as_calico_writes_it() {
        let b = AllocationBlock {
            cidr: "10.244.1.0/30".parse().expect("cidr"),
            affinity: Some("host:node1".into()),
            affinity_claim_time: Some("2026-05-01T10:00:00Z".into()),
            allocations: vec![None; 4],
            unallocated: vec![0, 1, 2, 3],
            attributes: None,
            sequence_number: 1_777_629_600_123_456_789,
            sequence_number_for_allocation: BTreeMap::new(),
            deleted: false,
            host_affinity: None,
            extra: Map::new(),
        };
        assert_eq!(
            serde_json::to_string(&b).expect("encodes"),
            r#"{"cidr":"10.244.1.0/30","affinity":"host:node1","affinity_claim_time":"2026-05-01T10:00:00Z","allocations":[null,null,null,null],"unallocated":[0,1,2,3],"attributes":null,"sequenceNumber":1777629600123456789,"sequenceNumberForAllocation":{},"deleted":false}"#
        );
    }

    #[test]
    fn old_schemas_read_and_unknown_fields_survive() {
        // Before 3.23: no sequence numbers; before 3.32: null handle/secondary, no claim time.
        let old = json!({"cidr":"10.0.0.0/30","affinity":null,"allocations":[0,null,null,null],
            "unallocated":[1,2,3],"attributes":[{"handle_id":null,"secondary":null}],
            "deleted":false,"futureField":{"x":1}});
        let b: AllocationBlock = serde_json::from_value(old).expect("reads");
        assert_eq!(b.sequence_number, 0);
        assert!(b.sequence_number_for_allocation.is_empty());
        let attrs = b.attributes.clone().expect("attributes");
        assert_eq!(attrs[0].handle_id, None);
        assert_eq!(attrs[0].secondary, None);
        let back = serde_json::to_value(&b).expect("encodes");
        assert_eq!(back["futureField"], json!({"x":1}));
        assert_eq!(back["attributes"], json!([{}]));
        let attr: AllocationAttribute = serde_json::from_value(
            json!({"handle_id":"h\r\n","secondary":{"node":"n"},"releasedAt":"2026-01-01T00:00:00Z"}),
        )
        .expect("reads");
        assert_eq!(attr.handle(), Some("h"));
        assert_eq!(
            serde_json::to_value(&attr).expect("encodes")["releasedAt"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(attr.released_at(), Some("2026-01-01T00:00:00Z"));
        // 3.33's cooldown marker: only releasedAt, in Go's field order.
        assert_eq!(
            serde_json::to_string(&AllocationAttribute::released(
                "2026-05-01T10:00:00Z".into()
            ))
            .expect("encodes"),
            r#"{"releasedAt":"2026-05-01T10:00:00Z"}"#
        );
    }

    #[test]
    fn affinity_handle_and_config_shapes() {
        assert_eq!(
            serde_json::to_string(&BlockAffinity::confirmed()).expect("encodes"),
            r#"{"state":"confirmed","deleted":false}"#
        );
        assert!(
            BlockAffinity::from_bytes(b"")
                .expect("legacy")
                .is_confirmed()
        );
        let h = IpamHandle {
            block: [("10.244.1.0/26".to_string(), 1)].into_iter().collect(),
            ..IpamHandle::default()
        };
        assert_eq!(
            serde_json::to_string(&h).expect("encodes"),
            r#"{"block":{"10.244.1.0/26":1},"deleted":false}"#
        );
        assert_eq!(
            serde_json::to_string(&IpamConfigValue::calico_default()).expect("encodes"),
            r#"{"auto_allocate_blocks":true,"kubeVirtVMAddressPersistence":"Enabled"}"#
        );
        let c: IpamConfigValue =
            serde_json::from_str(r#"{"auto_allocate_blocks":true,"ipCooldownSeconds":30}"#)
                .expect("reads");
        assert_eq!(c.ip_cooldown_seconds(), 30);
        assert_eq!(
            serde_json::to_string(&c).expect("encodes"),
            r#"{"auto_allocate_blocks":true,"ipCooldownSeconds":30}"#,
            "3.33's field survives a rewrite"
        );
        let empty: IpamConfigValue = serde_json::from_str("{}").expect("reads");
        assert_eq!(empty.ip_cooldown_seconds(), 0);
        assert!(
            !empty.auto_allocate_blocks,
            "a stored {{}} turns auto-allocation off"
        );
    }
}
