//! Calico's v3 validator for the policy resources (`libcalico-go/lib/validator/v3/validator.go`
//! of release-v3.32, with the CRD schema checks that `Validate` adds in etcd mode), and the
//! defaults libcalico-go's clients write (`api/pkg/defaults`, `DefaultTierFields`).
//!
//! Used by calicoctl before it writes and by calico-node's policy agent to skip an invalid
//! object found in etcd: pure functions over `calico_datastore::model` types, no datastore
//! calls. It must not import calicoctl, the agent or any dataplane crate.
//!
//! - [`network_policy`], [`global_network_policy`], [`tier`], [`network_set`],
//!   [`global_network_set`], [`profile`], [`felix_configuration`]: the whole object, errors
//!   in Calico's order (field tags and struct validators, then the CRD's checks), worded as
//!   `cerrors.ErrorValidation` prints them ([`ValidationError`]);
//! - [`rules::rule`]: one rule (`validateRule` and what it contains);
//! - [`default_network_policy`], [`default_global_network_policy`], [`default_tier`]: what
//!   Calico fills in before storing (policy `types`, the `projectcalico.org/tier` label, the
//!   `default` tier; a tier's order and default action).
//!
//! Not checked: FelixConfiguration fields other than the typed ones (kept as written), the
//! CRD's length limits on `http` paths and methods.

pub mod error;
pub mod k8s;
pub mod resources;
pub mod rules;

pub use error::{ErroredField, ValidationError};
pub use resources::{
    DEFAULT_TIER, LABEL_TIER, default_global_network_policy, default_network_policy, default_tier,
    felix_configuration, global_network_policy, global_network_set, go_float, network_policy,
    network_set, profile, tier, tier_of,
};

use calico_selector::Selector;

/// The failures found so far: struct validation first, the CRD's after (as `Validate`
/// appends them).
#[derive(Debug, Default)]
pub struct Errors {
    fields: Vec<ErroredField>,
    crd: Vec<ErroredField>,
}

impl Errors {
    pub fn field(&mut self, e: ErroredField) {
        self.fields.push(e);
    }

    pub fn crd(&mut self, e: ErroredField) {
        self.crd.push(e);
    }

    /// Everything, in Calico's order; `Ok` when nothing failed.
    pub fn finish(mut self) -> Result<(), ValidationError> {
        self.fields.append(&mut self.crd);
        error::into_result(self.fields)
    }
}

/// The `selector` tag: Calico's selector syntax (an empty selector is `all()`).
pub(crate) fn check_selector(errs: &mut Errors, field: &str, sel: &str) {
    if Selector::parse(sel).is_err() {
        errs.field(ErroredField::tag(field, sel, "selector"));
    }
}

#[cfg(test)]
mod tests;
