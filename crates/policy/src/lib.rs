//! Felix's calculation and rule rendering as a pure library: Calico's policy model
//! (WorkloadEndpoints of every node, Profiles, NetworkPolicies, GlobalNetworkPolicies, Tiers,
//! NetworkSets, IPPools, Nodes, FelixConfiguration) in, the wanted nftables table out (one
//! table `calico` of family `inet`, as the netfilter crate's [`calico_netfilter::ruleset::Ruleset`]),
//! plus which local endpoints it programs (for their status files).
//!
//! - [`engine`]: the incremental [`PolicyEngine`] the agent feeds per datastore change
//!   (Felix's `felix/calc` graph and the dataplane managers' desired state).
//! - [`model`]: objects read and checked; selectors scoped as Calico's update processors do.
//! - [`index`]: the label index (Felix's `felix/labelindex`).
//! - [`render`]: rules, policy/profile/endpoint chains and the fixed chains
//!   (`felix/rules`).
//! - [`ir`]: typed nft rules, printed in nft's syntax and lowered to netfilter expressions.
//! - [`names`]: chain and set names after Felix's nftables mode.
//! - [`stored`]: one entry point by kind for the etcd syncer's values.
//!
//! The agent's loop (calico-node):
//! 1. `PolicyEngine::new(node, EngineConfig { lean: true, ..Default::default() })`; for
//!    every object of the first complete list, `upsert_stored(kind, ns, name, value)` (log
//!    the `Skipped` it returns).
//! 2. After the first in-sync: `ProgrammedTable::sync(sock, engine.full_table())` (an
//!    atomic replace of whatever a previous run left), then `engine.take_touched()`.
//! 3. Per watch event (or batch of them): `upsert_stored`/`remove_stored`; then
//!    `let mut edit = table.edit()?; engine.write_changes(&mut edit);
//!    edit.commit_or_replace(sock, || engine.full_table())?` (a refused difference, or one
//!    the table's compact record cannot plan, replaces the table whole).
//! 4. After each successful apply, `programmed_endpoints()` is the set of status files to
//!    have (write the new ones, remove the others).
//!
//! No kernel and no datastore here: the agent (calico-node) reads etcd, calls the engine and
//! applies the table with the netfilter crate. Must not import calico-node, the plugins or
//! anything that does I/O.

pub mod engine;
pub mod index;
pub mod ir;
pub mod model;
pub mod names;
pub mod render;
pub mod stored;

pub use engine::{
    ElemDelta, EndpointKey, EndpointStatus, EngineConfig, EngineStats, ObjectRef, PolicyEngine,
    Skipped, Touched,
};
pub use render::MarkBits;
pub use stored::ResourceKind;
