//! `calico`: the main CNI plugin (veth with a `cali` host end, pod addressing, host routes,
//! workload endpoints).

use calico_dataplane::LinuxDataplane;
use calico_netconf::{DEFAULT_MTU_FILE, NetConf};
use calico_plugin::verbs::{self, Deps};
use calico_plugin::workload::Context;
use calico_plugin::{host_local, kubernetes, readiness};
use cni_protocol::logging::LogSettings;
use cni_protocol::{CniError, CniResult, ErrorCode, Plugin, Request};
use std::path::Path;
use std::process::ExitCode;

struct Calico;

/// Whether a verb waits for calico-node: ADD and DEL do, as Calico's plugin does (see
/// [`calico_plugin::workload::require_nodename_file`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum NodeGate {
    Required,
    Not,
}

/// What every verb starts from: the derived context and a datastore connection (calico-node's
/// socket when it answers, else our own connection to etcd, made here so bad settings are
/// reported before any kernel work).
fn setup(
    req: &Request,
    gate: NodeGate,
) -> Result<(Context, calico_datastore::PluginStore), CniError> {
    let t = std::time::Instant::now();
    let ctx = Context::new(req)?;
    if gate == NodeGate::Required {
        calico_plugin::workload::require_nodename_file(&ctx.conf, |p| p.exists())?;
    }
    let t1 = t.elapsed();
    let store = calico_ipam::cni::connect(&ctx.conf)?;
    log::debug!(
        "context in {t1:?}, datastore client in {:?}",
        t.elapsed() - t1
    );
    Ok((ctx, store))
}

/// Runs a verb with the real datastore and kernel; `with_pod` (ADD only: DEL, CHECK and GC
/// never depend on the API server being up) reads from the Kubernetes API first what the
/// config asks for: the pod, the namespace's labels, the node's pod CIDRs for host-local's
/// `usePodCidr` (which other verbs replace by stand-ins, as Calico's DEL does).
fn run<T>(
    req: &Request,
    with_pod: bool,
    gate: NodeGate,
    verb: impl FnOnce(&Request, &Context, &Deps<'_>) -> Result<T, CniError>,
) -> Result<T, CniError> {
    let (ctx, store) = setup(req, gate)?;
    let dataplane = LinuxDataplane::default();
    if with_pod {
        // Calico waits for its readiness gates before anything else of the ADD.
        readiness::wait_for_gates(&ctx.conf.readiness_gates)?;
    }
    let rewritten = if with_pod && host_local::applies(&ctx) {
        host_local::rewritten(req, &mut || kubernetes::node_pod_cidrs(&ctx))?
    } else if !with_pod && ctx.conf.ipam.ipam_type == "host-local" {
        host_local::rewritten(req, &mut || Ok(host_local::teardown_cidrs()))?
    } else {
        None
    };
    let req = rewritten.as_ref().unwrap_or(req);
    let pod = if with_pod && kubernetes::wanted(&ctx) {
        Some(kubernetes::pod_meta(&ctx)?)
    } else {
        None
    };
    // Without the pod (which brings its namespace), Calico IPAM still reads the namespace's
    // labels for the pools' namespaceSelector when a kubeconfig is set.
    let namespace_labels = if with_pod && pod.is_none() && ctx.ipam_in_process() {
        let explicit = !calico_ipam::cni::requested_addresses(req)?.is_empty();
        calico_ipam::kubernetes::labels_for_auto_assign(&ctx.conf, &ctx.workload, explicit)?
    } else {
        None
    };
    let deps = Deps {
        store: &store,
        dataplane: &dataplane,
        mtu_file: Path::new(DEFAULT_MTU_FILE),
        pod,
        namespace_labels,
    };
    let out = verb(req, &ctx, &deps);
    // The process exits right after the answer is printed: the kernel closes the
    // connection, and an orderly runtime shutdown would only add to the pod's start time.
    std::mem::forget(store);
    out
}

impl Plugin for Calico {
    fn name(&self) -> &'static str {
        "calico"
    }

    fn log_settings(&self, req: &Request) -> LogSettings {
        NetConf::log_settings_of(req)
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        run(req, true, NodeGate::Required, verbs::add)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        run(req, false, NodeGate::Required, verbs::del)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        run(req, false, NodeGate::Not, verbs::check)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        run(req, false, NodeGate::Not, verbs::gc)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let ctx = Context::new(req)?;
        let store = calico_ipam::cni::connect(&ctx.conf)
            .map_err(|e| CniError::new(ErrorCode::PLUGIN_NOT_AVAILABLE, e.msg))?;
        verbs::status(req, &ctx, &store)
    }
}

fn main() -> ExitCode {
    cni_protocol::run(&Calico)
}
