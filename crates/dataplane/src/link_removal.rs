//! Deleting a pod's interface without making the plugin wait for the kernel.
//!
//! Freeing a veth makes the kernel wait out an RCU grace period (10-20 ms here), the bulk of
//! a DEL otherwise. So DEL hands the deletion to the node agent (`calico-node run`, over
//! `calico-agent-protocol`), which does it after the plugin has answered; without an agent
//! the plugin deletes the interface itself and waits.
//!
//! The interface is named by what cannot be taken over behind the DEL's back: the pod's
//! namespace itself (an open descriptor, passed to the agent, not its path) and the
//! interface's index inside it, never a name. The host end's name is a hash of the pod's
//! name, so a sandbox re-created for the same pod has the same host end name, and the
//! runtime may reuse a namespace path: a deletion by name that ran after the new sandbox's
//! ADD would take the new pod's interface.

use crate::error::DataplaneError;
use crate::netlink::Netlink;
use calico_agent_protocol::client::{ACCEPT_WAIT, work_alone};
use calico_agent_protocol::{Connection, Reply, Request};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;

/// One interface to delete: the one at `index` in the namespace `netns`, if it is still
/// called `ifname`.
#[derive(Debug)]
pub struct LinkRemoval {
    pub netns: File,
    /// Where `netns` was opened, for messages.
    pub netns_path: PathBuf,
    pub index: u32,
    pub ifname: String,
}

/// What a [`LinkRemoval`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Deleted,
    /// The interface at that index is gone, or is another interface now.
    InterfaceGone,
}

/// Who deleted the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletedBy {
    /// The agent took it; it deletes it after we answer.
    Agent,
    /// We did, now.
    Us(Removed),
}

impl LinkRemoval {
    /// Deletes the interface if it is still the one named; waits for the kernel. The
    /// agent's side, and the plugin's without an agent.
    pub fn run(&self) -> Result<Removed, DataplaneError> {
        let pod = Netlink::in_netns(&self.netns, &self.netns_path)?;
        match pod.link_by_index(self.index)? {
            Some(link) if link.name == self.ifname => {
                pod.delete_link(self.index)?;
                Ok(Removed::Deleted)
            }
            _ => Ok(Removed::InterfaceGone),
        }
    }

    /// The agent's request for this deletion (sent with [`LinkRemoval::netns`]).
    pub fn request(&self) -> Request {
        Request::DeleteLink {
            netns: self.netns_path.display().to_string(),
            index: self.index,
            ifname: self.ifname.clone(),
        }
    }

    /// Hands the deletion to the node agent; if there is none, or it does not take it,
    /// deletes the interface here.
    pub fn hand_over(self) -> Result<DeletedBy, DataplaneError> {
        if let Some(mut agent) = Connection::to_agent() {
            match agent.call(&self.request(), &[self.netns.as_fd()], ACCEPT_WAIT) {
                Ok(Reply::Accepted) => return Ok(DeletedBy::Agent),
                Ok(Reply::ShuttingDown) => log::debug!("calico-node is stopping"),
                Ok(other) => log::warn!("calico-node did not take the deletion: {other:?}"),
                Err(e) => work_alone(&e.to_string()),
            }
        }
        self.run().map(DeletedBy::Us)
    }
}
