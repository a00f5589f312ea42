//! `calico-ipam`: Calico-compatible IP address management on etcd, as a CNI IPAM plugin.

use calico_dataplane::Dataplane;
use calico_ipam::{cni, kubernetes};
use calico_netconf::NetConf;
use cni_protocol::logging::LogSettings;
use cni_protocol::{CniError, CniResult, Plugin, Request};
use std::process::ExitCode;

struct CalicoIpam;

/// The config, the node's name and a datastore connection: what every verb starts from.
fn setup(req: &Request) -> Result<(NetConf, String, calico_datastore::PluginStore), CniError> {
    let started = std::time::Instant::now();
    let conf = NetConf::from_request(req)?;
    let node = cni::node_name(&conf)?;
    let store = cni::connect(&conf)?;
    log::debug!(
        "config read and datastore client built in {:?}",
        started.elapsed()
    );
    Ok((conf, node, store))
}

impl Plugin for CalicoIpam {
    fn name(&self) -> &'static str {
        "calico-ipam"
    }

    fn log_settings(&self, req: &Request) -> LogSettings {
        NetConf::log_settings_of(req)
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let (conf, node, store) = setup(req)?;
        // The pools' namespaceSelector needs the namespace's labels (read as Calico does:
        // with a kubeconfig or policy.type k8s, for automatic assignments).
        let workload = cni::Workload::from_request(req, &node)?;
        let explicit = !cni::requested_addresses(req)?.is_empty();
        let namespace_labels =
            kubernetes::labels_for_auto_assign(&conf, &workload, explicit)?.unwrap_or_default();
        let ov = cni::Overrides {
            namespace_labels,
            ..cni::Overrides::default()
        };
        cni::add_with(&store, &conf, req, &node, &ov)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let (conf, node, store) = setup(req)?;
        cni::del(&store, &conf, req, &node)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let (_, node, store) = setup(req)?;
        cni::check(&store, req, &node)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let (conf, node, store) = setup(req)?;
        let in_use = || {
            calico_dataplane::LinuxDataplane::default()
                .addresses_in_use()
                .map_err(|e| e.to_string())
        };
        cni::gc(&store, &conf, req, &node, &in_use)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let conf = NetConf::from_request(req)?;
        let node = cni::node_name(&conf)?;
        let store = cni::connect(&conf)
            .map_err(|e| CniError::new(cni_protocol::ErrorCode::PLUGIN_NOT_AVAILABLE, e.msg))?;
        cni::status(&store, &conf, &node)
    }
}

fn main() -> ExitCode {
    cni_protocol::run(&CalicoIpam)
}
