//! The policy agent's state between the datastore and the kernel: the calculation
//! ([`calico_policy`]), the table last applied, and the endpoint status files written.
//! (Being wired: the calculation lands with issue 14.)

use super::state::PolicyState;
use calico_datastore::Kv;
use calico_datastore::model::FelixConfigurationSpec;
use std::sync::Arc;
use std::time::Duration;

pub struct Dataplane {
    state: Arc<PolicyState>,
    revision: i64,
}

impl Dataplane {
    pub fn new(
        _node: &str,
        _env_overrides: FelixConfigurationSpec,
        state: Arc<PolicyState>,
    ) -> anyhow::Result<Dataplane> {
        Ok(Dataplane { state, revision: 0 })
    }

    pub fn put(&mut self, _kv: &Kv) {}

    pub fn delete(&mut self, _key: &str) {}

    pub fn seen_revision(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    pub fn converge(&mut self, lag: Option<Duration>) -> anyhow::Result<()> {
        self.state.applied(Ok(()), Duration::ZERO, lag);
        Ok(())
    }
}
