//! The desired state of ONE nf_tables table, declared as data ([`Ruleset`]), and the engine
//! that brings the kernel to it: [`plan`] turns (what was applied, what is wanted) into the
//! smallest nf_tables transaction that gets there, [`apply`] commits it in one go.
//! [`ProgrammedTable`] keeps a compact record of what the kernel holds (sets and maps whole,
//! each chain as a keyed hash of its rules and the names they hold) and syncs a whole new
//! ruleset by difference ([`ProgrammedTable::sync`]), or changes it in place
//! ([`ProgrammedTable::edit`], an [`Edit`] planned at the cost of what it touches, not of the
//! table's size).
//!
//! It owns the table's shape in the kernel, nothing of policy: the policy agent
//! (`crates/policy`, wired in `calico-node`) renders Calico's model into a [`Ruleset`]
//! (table `calico` of family `inet`; chains named after Felix's nftables mode) and calls
//! [`plan`]/[`apply`] on every change. Why this shape:
//! - One transaction per apply: the kernel switches from the old rules to the new ones
//!   atomically, so a packet never meets half an update, and a refused update changes
//!   nothing.
//! - Incremental: a chain whose rules are unchanged (compared structurally between two
//!   rulesets, by fingerprint against the programmed record; never re-encoded) is not
//!   touched; a changed chain is flushed and rewritten whole (chain granularity: plans need
//!   no kernel rule handles, so they are pure functions of two rulesets); set and map
//!   elements are added and removed by difference.
//! - `old = None` trusts nothing left by a previous run: the table is added (so its deletion
//!   cannot fail), deleted and created again whole in the same transaction — an atomic
//!   replace, with no moment without rules.
//! - The table outlives the process (it is not owned by the socket): enforcement stays while
//!   the agent is down (fail closed).
//!
//! Interval sets of CIDRs are normalised here (overlapping and adjacent prefixes merged),
//! because the kernel refuses overlapping interval elements.

use crate::nft;
/// The rule vocabulary, here too for those who build rulesets.
pub use crate::nft::{CmpOp, Expr, Verdict};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The table's family. Policy uses `inet` (IPv4 and IPv6 in one table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Family {
    #[default]
    Inet,
    Ip,
    Ip6,
}

impl Family {
    /// `NFPROTO_*`.
    pub fn nfproto(self) -> u8 {
        match self {
            Family::Inet => nft::NFPROTO_INET,
            Family::Ip => nft::NFPROTO_IPV4,
            Family::Ip6 => nft::NFPROTO_IPV6,
        }
    }

    /// As `nft` names it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }
}

/// One nf_tables table as wanted: every chain, set and verdict map in it, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub family: Family,
    pub name: String,
    pub chains: BTreeMap<String, Chain>,
    pub sets: BTreeMap<String, Set>,
    pub maps: BTreeMap<String, VerdictMap>,
}

impl Ruleset {
    /// An empty `inet` table.
    pub fn new(name: impl Into<String>) -> Self {
        Ruleset {
            family: Family::Inet,
            name: name.into(),
            ..Default::default()
        }
    }
}

/// A chain: a base chain (hooked into the stack) or a regular one (reached by jump/goto or
/// a verdict map), and its rules in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

/// Where a base chain hooks in, and what it does with a packet no rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BaseChain {
    pub kind: ChainKind,
    pub hook: ChainHook,
    /// Lower runs first (`filter` is 0, `dstnat` -100, `srcnat` 100, `raw` -300, `mangle`
    /// -150).
    pub priority: i32,
    pub policy: ChainPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainKind {
    Filter,
    Nat,
    /// `type route` (output hook only): a mark or address changed here reroutes the packet,
    /// as iptables' mangle OUTPUT does.
    Route,
}

impl ChainKind {
    pub fn name(self) -> &'static str {
        match self {
            ChainKind::Filter => "filter",
            ChainKind::Nat => "nat",
            ChainKind::Route => "route",
        }
    }
}

/// nft's named base-chain priorities (`nft` prints them by name, e.g. `filter + 10`).
/// kube-proxy's nftables mode hooks its filter chains at `filter - 10` and its NAT at
/// `dstnat`/`srcnat`; Felix places its layers around those.
pub mod priority {
    pub const RAW: i32 = -300;
    pub const MANGLE: i32 = -150;
    pub const DSTNAT: i32 = -100;
    pub const FILTER: i32 = 0;
    pub const SECURITY: i32 = 50;
    pub const SRCNAT: i32 = 100;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainHook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl ChainHook {
    /// `NF_INET_*`.
    pub fn number(self) -> u32 {
        (match self {
            ChainHook::Prerouting => libc::NF_INET_PRE_ROUTING,
            ChainHook::Input => libc::NF_INET_LOCAL_IN,
            ChainHook::Forward => libc::NF_INET_FORWARD,
            ChainHook::Output => libc::NF_INET_LOCAL_OUT,
            ChainHook::Postrouting => libc::NF_INET_POST_ROUTING,
        }) as u32
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainPolicy {
    Accept,
    Drop,
}

/// One rule: its expressions (see the `match_*` builders of [`crate::nft`]) and a comment,
/// kept in the rule's user data as `nft` writes it (so `nft list` shows it; cut to
/// [`nft::COMMENT_MAX`] bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Rule {
    pub exprs: Vec<Expr>,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(exprs: Vec<Expr>) -> Self {
        Rule {
            exprs,
            comment: None,
        }
    }

    pub fn with_comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }
}

/// What a set's elements are (nft's key types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetKey {
    /// `ipv4_addr`: [`SetElem::Net`] of IPv4 (prefixes need `interval`).
    Ipv4Addr,
    /// `ipv6_addr`: [`SetElem::Net`] of IPv6 (prefixes need `interval`).
    Ipv6Addr,
    /// `ipv4_addr . inet_proto . inet_service`: [`SetElem::AddrProtoPort`] of IPv4 (Felix's
    /// named-port sets, `hash:ip,port`). Not `interval`.
    Ipv4AddrProtoPort,
    /// `ipv6_addr . inet_proto . inet_service`.
    Ipv6AddrProtoPort,
    /// `inet_service`: [`SetElem::Ports`] (ranges need `interval`).
    Port,
}

/// One element of a [`Set`], typed by its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetElem {
    /// An address (a host prefix) or, in an interval set, any prefix. Host bits are
    /// ignored (`10.0.0.5/8` is `10.0.0.0/8`).
    Net(IpNet),
    /// An address, an IP protocol number and a port.
    AddrProtoPort(IpAddr, u8, u16),
    /// Ports `first..=last` (one port when equal; a range needs an interval set).
    Ports(u16, u16),
}

/// A named set. Interval sets may hold overlapping and adjacent prefixes or ranges: the
/// engine merges them (the kernel refuses overlaps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub key: SetKey,
    pub interval: bool,
    pub elems: SetElems,
}

impl Set {
    pub fn new(key: SetKey, interval: bool) -> Self {
        Set {
            key,
            interval,
            elems: SetElems::new(),
        }
    }

    /// An interval set of IPv4 or IPv6 prefixes.
    pub fn nets(v4: bool, nets: impl IntoIterator<Item = IpNet>) -> Self {
        Set {
            key: if v4 {
                SetKey::Ipv4Addr
            } else {
                SetKey::Ipv6Addr
            },
            interval: true,
            elems: nets.into_iter().map(SetElem::Net).collect(),
        }
    }
}

/// What a verdict map is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MapKey {
    /// `ifname` (`iifname vmap @m`, `oifname vmap @m`).
    #[default]
    Ifname,
}

/// A named verdict map (`ifname : verdict`): dispatch by interface in one lookup.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerdictMap {
    pub key: MapKey,
    pub elems: BTreeMap<String, Verdict>,
}

mod edit;
mod elems;
mod plan;
mod set_elems;

pub use edit::Edit;
pub use elems::{Interval, normalise, sorted_difference};
pub use plan::{Batch, ProgrammedTable, apply, plan};
pub use set_elems::SetElems;
