//! calicoctl for Calico's etcdv3 datastore: the resource commands (`get`, `apply`, `create`,
//! `replace`, `patch`, `delete`) for IPPool, Node, IPAMConfiguration, BGPConfiguration,
//! BGPPeer and the policy kinds (NetworkPolicy, GlobalNetworkPolicy, Tier, NetworkSet,
//! GlobalNetworkSet, Profile, FelixConfiguration), `get` for WorkloadEndpoint, the `ipam`
//! commands and `node status`, with calicoctl 3.32's flags, messages and output layouts.
//! The policy kinds' validation and defaults are `calico-validation`'s (shared with the
//! node's policy agent).
//!
//! As in Calico's etcd mode, the IPAMConfiguration resource
//! (`/calico/resources/v3/projectcalico.org/ipamconfigurations/default`) and the config the
//! IPAM reads (`/calico/ipam/v2/config`, written by `ipam configure` and created with the
//! defaults by `ipam show --show-configuration`) are separate objects.
//!
//! - [`config`]: where the datastore is (`calicoctl.cfg` or the environment);
//! - [`resources`]: kinds, documents, validation, printing and the datastore operations;
//! - [`ipam`]: `ipam show|configure|release|check`;
//! - [`node_status`]: `node status`, from the node agent over `calico-agent-protocol`;
//! - [`gofmt`], [`yaml`]: output exactly as calicoctl's Go libraries write it.
//!
//! Owns the command line: it parses, calls and prints. Models are `calico-datastore`'s
//! (`model`), IPAM rules `calico-ipam`'s, the policy validator `calico-validation`'s; it
//! must not hold them, nor import the plugins, the dataplane or `calico-netconf`.
//!
//! Differences from calicoctl 3.32, on purpose:
//! - etcdv3 only: `datastoreType: kubernetes` (or no datastore configured) is an error; so are
//!   `etcdDiscoverySrv`, `etcdUsername`/`etcdPassword` and the inline `etcdKey`/`etcdCert`/
//!   `etcdCACert` (our etcd client takes certificate files).
//! - `--allow-version-mismatch` is accepted and does nothing: there is no version check.
//! - apply/create validate every document (against the datastore and the documents before
//!   it) before writing any, so one bad document writes nothing (Calico writes the good ones).
//! - Deleting a Node releases a recorded address only if its allocation is that node's, also
//!   releases the IPv6 tunnel addresses, deletes affinities whose block is missing, and checks
//!   a given `resourceVersion` first (see [`resources::node_delete`]).
//! - Deleting a pool skips Calico's 500 ms pause, and also removes an affinity whose block is
//!   already gone.
//! - `ipam check` needs no Kubernetes: the service check is skipped, the leaked-IP check only
//!   runs when WorkloadEndpoints exist, more problem kinds are counted, and the report has
//!   extra arrays (see [`ipam::check`]). `ipam release --from-report` is not implemented.
//! - `ipam show --show-configuration` prints the persistence setting's value (Go prints a
//!   pointer).
//! - YAML output does not fold long strings at column 80 as yaml.v2 does.
//! - `get` supports `-o ps|wide|yaml|json` (no custom-columns or go-template) and no `-f`.
//! - `node status` asks the node agent (`calico-node run`) over its socket instead of
//!   looking for the felix/bird processes and reading BIRD's socket; the agent answers for
//!   both. PEER ADDRESS is the peer's address (Calico derives it from BIRD's protocol name).
//! - WorkloadEndpoint is read-only: apply, create and delete refuse it with one error line.
//! - A policy's tier must exist on `replace` too (Calico checks it on create only).
//! - Validation values Go prints as pointers (`ICMP = '&{0xc...}'`) are printed as values, and
//!   the refusal of a `knp.default.*` policy names it `NetworkPolicy(ns/name)` (Go prints the
//!   whole object).

pub mod config;
pub mod error;
pub mod gofmt;
pub mod ipam;
pub mod node_status;
pub mod resources;
pub mod yaml;

pub use error::{CmdError, CmdResult};
