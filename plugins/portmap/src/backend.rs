//! The two ways portmap programs the kernel, behind one trait (as netavark's firewall
//! drivers are): [`crate::ipt::Iptables`], the reference plugin's iptables layout, and
//! [`crate::nftb::Nftables`], our own nftables table. The verbs choose one for ADD and CHECK
//! and ask both on DEL and GC (a container may have rules in either).

use crate::config::Conf;
use crate::state::Record;
use calico_netfilter::{NfError, NfSocket};
use ipnet::IpNet;

/// One container's mappings as a backend installs them.
pub struct Target<'a> {
    pub conf: &'a Conf,
    pub container_id: &'a str,
    /// The container's chain name (`CNI-DN-…`), which also names its record.
    pub dn: &'a str,
    pub v4: Option<IpNet>,
    pub v6: Option<IpNet>,
    /// The container's record on disk already names what [`Backend::add`] will install (the
    /// caller saved it as [`Backend::plan`] filled it in): add need not save it before
    /// installing, nor after if nothing differs.
    pub recorded: bool,
}

impl<'a> Target<'a> {
    pub fn new(
        conf: &'a Conf,
        container_id: &'a str,
        dn: &'a str,
        v4: Option<IpNet>,
        v6: Option<IpNet>,
    ) -> Self {
        Target {
            conf,
            container_id,
            dn,
            v4,
            v6,
            recorded: false,
        }
    }
}

pub trait Backend {
    /// The name records carry (`iptables`, `nftables`).
    fn name(&self) -> &'static str;

    /// Writes into `rec` what [`Backend::add`] will install, where that is known beforehand,
    /// so that one record saved before the port claims names everything of a new container.
    fn plan(&self, target: &Target, rec: &mut Record);

    /// Installs the container's mappings, replacing what `old` (this backend's record of an
    /// earlier ADD of the same container) names, and writes into `rec` what it installed.
    /// Saves the record at the moment DEL must be able to find what is being installed.
    fn add(
        &self,
        sock: &mut NfSocket,
        target: &Target,
        old: Option<&Record>,
        rec: &mut Record,
    ) -> Result<(), AddError>;

    /// What is missing of the container's rules, as readable items.
    fn missing(&self, sock: &mut NfSocket, target: &Target) -> Result<Vec<String>, NfError>;

    /// Removes the container's rules: what `rec` (a record of this backend) names and is still
    /// the container's (never another container's rule of the same key), else, when `probe`,
    /// what the kernel has for the container. Nothing there is success.
    fn remove(
        &self,
        sock: &mut NfSocket,
        dn: &str,
        container_id: &str,
        rec: Option<&Record>,
        probe: bool,
    ) -> Result<(), NfError>;

    /// Whether the rules `rec` names are still in place (errors count as yes: when in doubt a
    /// port claim stands).
    fn has_rules(&self, sock: &mut NfSocket, dn: &str, rec: &Record) -> bool;

    /// Whether anything of the container's rules is left in this backend after a removal
    /// that failed (errors count as yes), with or without a record. Thorough where
    /// [`Backend::has_rules`] is quick.
    fn remains(&self, sock: &mut NfSocket, dn: &str, container_id: &str) -> bool;

    /// The container IDs of `network` that have rules in the kernel (for GC), as
    /// [`Backend::tag`] gives them.
    fn containers(&self, sock: &mut NfSocket, network: &str) -> Result<Vec<String>, NfError>;

    /// A container ID as [`Backend::containers`] lists it (the kernel may keep it cut).
    fn tag(&self, container_id: &str) -> String {
        container_id.to_string()
    }

    /// Removes every rule of a container that has no record (GC).
    fn sweep(&self, sock: &mut NfSocket, conf: &Conf, container_id: &str) -> Result<(), NfError>;
}

/// Why an ADD failed: the kernel, or saving the record.
#[derive(Debug)]
pub enum AddError {
    Kernel(NfError),
    Record(cni_protocol::CniError),
}

impl From<NfError> for AddError {
    fn from(e: NfError) -> Self {
        AddError::Kernel(e)
    }
}

impl From<cni_protocol::CniError> for AddError {
    fn from(e: cni_protocol::CniError) -> Self {
        AddError::Record(e)
    }
}
