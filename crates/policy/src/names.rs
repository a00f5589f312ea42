//! Names of chains, sets and maps in the `calico` table, after Felix's nftables mode
//! (`felix/rules/rule_defs.go`, `felix/rules/policy.go: PolicyChainName`,
//! `felix/ipsets/ipset_defs.go`, `libcalico-go/lib/hash/unique_id.go`).
//!
//! Felix's nftables mode prefixes each chain with the iptables table it emulates
//! (`filter-cali-tw-cali1234`); set ids are `s:`/`n:` plus base64url(SHA-224), the name
//! `cali40` + id cut to 31 characters with `:` made legal for nft (`-`).

use base64::Engine as _;
use sha2::{Digest, Sha224, Sha256};

/// knftables' `NameLengthMax`: nft accepts 256, Felix stops at 64 (the rest is hashed).
pub const MAX_CHAIN_NAME: usize = 64;
/// Felix's `MaxIPSetNameLength`, kept for set names so they read as Felix's.
pub const MAX_SET_NAME: usize = 31;

pub const TABLE: &str = "calico";

pub const CHAIN_FORWARD: &str = "filter-FORWARD";
pub const CHAIN_INPUT: &str = "filter-INPUT";
pub const CHAIN_OUTPUT: &str = "filter-OUTPUT";
pub const CHAIN_NAT_POSTROUTING: &str = "nat-POSTROUTING";
pub const CHAIN_FROM_WL_DISPATCH: &str = "filter-cali-from-wl-dispatch";
pub const CHAIN_TO_WL_DISPATCH: &str = "filter-cali-to-wl-dispatch";
pub const CHAIN_WL_TO_HOST: &str = "filter-cali-wl-to-host";
pub const CHAIN_NAT_OUTGOING: &str = "nat-cali-nat-outgoing";
/// Verdict maps of the dispatch chains (`iifname vmap`, `oifname vmap`).
pub const MAP_FROM_WL: &str = "filter-cali-from-wl-dispatch";
pub const MAP_TO_WL: &str = "filter-cali-to-wl-dispatch";

pub const PREFIX_TO_WL: &str = "filter-cali-tw-";
pub const PREFIX_FROM_WL: &str = "filter-cali-fw-";
pub const PREFIX_POLICY_IN: &str = "filter-cali-pi-";
pub const PREFIX_POLICY_OUT: &str = "filter-cali-po-";
pub const PREFIX_PROFILE_IN: &str = "filter-cali-pri-";
pub const PREFIX_PROFILE_OUT: &str = "filter-cali-pro-";

/// Felix's `MakeUniqueID`: `prefix:` + base64url(SHA-224(`prefix:content`)), unpadded.
pub fn unique_id(prefix: &str, content: &str) -> String {
    let digest = Sha224::digest(format!("{prefix}:{content}").as_bytes());
    format!(
        "{prefix}:{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

/// Felix's `GetLengthLimitedID`: `prefix + suffix`, or when too long (or exactly the limit
/// and starting with `_`), `prefix + "_" +` base64url(SHA-256(suffix)) cut to the limit.
pub fn length_limited(prefix: &str, suffix: &str, max: usize) -> String {
    let suffix = if suffix.is_empty() { "_" } else { suffix };
    let total = prefix.len() + suffix.len();
    if total > max || (total == max && suffix.starts_with('_')) {
        let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(suffix.as_bytes()));
        let left = max.saturating_sub(1 + prefix.len()).min(hash.len());
        format!("{prefix}_{}", &hash[..left])
    } else {
        format!("{prefix}{suffix}")
    }
}

/// A set's name from its id (`s:…`, `n:…`, `all-ipam-pools`): `cali40`/`cali60` + id, cut to
/// 31 characters, `:` replaced by `-` (Felix's `LegalizeSetName`).
pub fn set_name(v4: bool, id: &str) -> String {
    let mut name = format!("cali{}0{id}", if v4 { 4 } else { 6 });
    name.truncate(MAX_SET_NAME);
    name.replace(':', "-")
}

/// The name of a selector set's variant that holds prefixes (an interval set):
/// `cali40p-…` for `cali40s-…`. A selector's set holds only host addresses (an exact set,
/// the common case: endpoints' addresses) until a network set brings a prefix; the variant
/// has its own name so that the change is a new set and rewritten rules, not a set
/// recreated under rules that use it.
pub fn prefix_set_name(exact: &str) -> String {
    match exact.get(..8) {
        Some(head) if head.ends_with("s-") => format!("{}p-{}", &head[..6], &exact[8..]),
        _ => exact.to_string(),
    }
}

/// The chain of one endpoint and direction: `filter-cali-tw-<iface>` (to the workload:
/// ingress policy) or `filter-cali-fw-<iface>` (from it: egress).
pub fn endpoint_chain(ingress: bool, iface: &str) -> String {
    let prefix = if ingress {
        PREFIX_TO_WL
    } else {
        PREFIX_FROM_WL
    };
    length_limited(prefix, iface, MAX_CHAIN_NAME)
}

pub fn policy_chain(ingress: bool, policy_id: &str) -> String {
    let prefix = if ingress {
        PREFIX_POLICY_IN
    } else {
        PREFIX_POLICY_OUT
    };
    length_limited(prefix, policy_id, MAX_CHAIN_NAME)
}

pub fn profile_chain(ingress: bool, profile: &str) -> String {
    let prefix = if ingress {
        PREFIX_PROFILE_IN
    } else {
        PREFIX_PROFILE_OUT
    };
    length_limited(prefix, profile, MAX_CHAIN_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mirrors libcalico-go hash/unique_id.go `MakeUniqueID` and `GetLengthLimitedID`.
    #[test]
    fn ids_and_limited_names_are_felixs() {
        let id = unique_id("s", "all()");
        assert!(id.starts_with("s:"));
        assert_eq!(
            id.len(),
            2 + 38,
            "SHA-224 is 28 bytes: 38 base64 characters"
        );
        assert_eq!(set_name(true, &id).len(), 31);
        assert!(set_name(true, &id).starts_with("cali40s-"));
        assert!(set_name(false, "all-ipam-pools").starts_with("cali60all-ipam-pools"));
        assert_eq!(policy_chain(true, "np/ns/a"), "filter-cali-pi-np/ns/a");
        let long = policy_chain(false, &"x".repeat(100));
        assert!(long.len() <= MAX_CHAIN_NAME);
        assert!(long.starts_with("filter-cali-po-_"));
        assert_ne!(long, policy_chain(false, &"x".repeat(101)));
    }
}
