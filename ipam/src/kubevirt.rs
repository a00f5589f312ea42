//! KubeVirt VMs keep their addresses across their virt-launcher pods (a restart, an eviction, a
//! live migration to another node), as Calico's IPAM plugin arranges
//! (`cni-plugin/pkg/ipamplugin/ipam_plugin.go`, `libcalico-go/lib/ipam/vmipam`):
//!
//! - a pod named `virt-launcher-*` of a Kubernetes workload is looked up in the Kubernetes API
//!   ([`calico_k8s::kubevirt`]); if a VMI controls it, it is a VM's pod;
//! - with `kubeVirtVMAddressPersistence` not `Disabled` (read where Calico's plugin reads it,
//!   see [`crate::Snapshot::vm_address_persistence`]), its addresses live under the VM's
//!   handle `<network>.vmi.<namespace>.<vm>` ([`vm_handle`]) and carry the VMI attributes
//!   ([`vm_attributes`]);
//! - with persistence disabled, a migration target pod is refused and VM pods are ordinary
//!   pods.

use crate::cni::Workload;
use crate::kubernetes::{api_error, client_config};
use calico_k8s::K8sError;
use calico_k8s::kubevirt::PodVmi;
use calico_netconf::NetConf;
use cni_protocol::CniError;
use sha2::Digest;
use std::collections::BTreeMap;

/// The prefix KubeVirt gives every virt-launcher pod's name; other pods are never looked up
/// (the CNI hot path makes no API call for them).
pub const VIRT_LAUNCHER_PREFIX: &str = "virt-launcher-";

/// The network name a VM handle uses when the network has none (Calico's default).
const DEFAULT_NETWORK: &str = "k8s-pod-network";

/// Calico's limit on a VM handle's length.
const MAX_HANDLE_LENGTH: usize = 128;

/// The VM's handle, `<network>.vmi.<namespace>.<vm>` (Calico's `CreateVMHandleID`): the same
/// on every node and for every pod of the VM, so a Go node and this one find the same
/// addresses. Too long, the `<namespace>.<vm>` part is replaced by `_` and the base64url
/// SHA-256 of it, cut to fit (Go's `GetLengthLimitedID`, which panics where the hash is
/// shorter than the room left; here the whole hash is used then).
pub fn vm_handle(network: &str, namespace: &str, vm: &str) -> String {
    let network = if network.is_empty() {
        DEFAULT_NETWORK
    } else {
        network
    };
    length_limited(
        &format!("{network}.vmi."),
        &format!("{namespace}.{vm}"),
        MAX_HANDLE_LENGTH,
    )
}

/// Go's `hash.GetLengthLimitedID`.
fn length_limited(prefix: &str, suffix: &str, max: usize) -> String {
    let suffix = if suffix.is_empty() { "_" } else { suffix };
    let total = prefix.len() + suffix.len();
    if total < max || (total == max && !suffix.starts_with('_')) {
        return format!("{prefix}{suffix}");
    }
    use base64::Engine as _;
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(suffix.as_bytes()));
    let room = max.saturating_sub(1 + prefix.len()).min(hash.len());
    format!("{prefix}_{}", &hash[..room])
}

/// The attributes of a VM pod's allocation: the pod's, plus `vmi-name`, `vmi-uid`, `vm-uid`
/// (when a VM owns the VMI) and, on a migration target, `vmim-uid` (Calico's `cmdAdd`).
pub fn vm_attributes(
    mut attrs: BTreeMap<String, String>,
    vmi: &PodVmi,
) -> BTreeMap<String, String> {
    attrs.insert("vmi-name".into(), vmi.vmi_name.clone());
    attrs.insert("vmi-uid".into(), vmi.vmi_uid.clone());
    if let Some(vm) = vmi.vm.as_ref().filter(|vm| !vm.uid.is_empty()) {
        attrs.insert("vm-uid".into(), vm.uid.clone());
    }
    if vmi.is_migration_target() {
        attrs.insert("vmim-uid".into(), vmi.migration_job_uid.clone());
    }
    attrs
}

/// What the Kubernetes API says about a workload's pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodKind {
    /// Not a Kubernetes pod, not named `virt-launcher-*`, or not controlled by a VMI.
    Ordinary,
    /// A VM's virt-launcher pod.
    Vm(Box<PodVmi>),
    /// A `virt-launcher-*` pod the API server no longer has (Calico's DEL then does nothing).
    Gone,
}

/// Calico's `getVMIInfoForPod`. API failures as CNI errors ([`api_error`]).
pub fn pod_kind(conf: &NetConf, workload: &Workload) -> Result<PodKind, CniError> {
    if workload.orchestrator != "k8s"
        || workload.pod.is_empty()
        || workload.namespace.is_empty()
        || !workload.pod.starts_with(VIRT_LAUNCHER_PREFIX)
    {
        return Ok(PodKind::Ordinary);
    }
    match calico_k8s::kubevirt::fetch_pod_vmi(
        &client_config(conf),
        &workload.namespace,
        &workload.pod,
    ) {
        Ok(Some(vmi)) => Ok(PodKind::Vm(Box::new(vmi))),
        Ok(None) => Ok(PodKind::Ordinary),
        Err(K8sError::NotFound { kind: "Pod", .. }) => Ok(PodKind::Gone),
        Err(e) => {
            let mut err = api_error(e);
            err.msg = format!(
                "failed to get VMI info for pod {}/{}: {}",
                workload.namespace, workload.pod, err.msg
            );
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_k8s::kubevirt::VmOwner;

    #[test]
    fn vm_handles_are_calicos() {
        // Mirrors vmipam CreateVMHandleID and hash.GetLengthLimitedID (its test vectors).
        assert_eq!(
            vm_handle("", "default", "vm1"),
            "k8s-pod-network.vmi.default.vm1"
        );
        assert_eq!(
            vm_handle("multus-net1", "default", "vm1"),
            "multus-net1.vmi.default.vm1"
        );
        assert_eq!(length_limited("felix", "1234", 10), "felix1234");
        assert_eq!(length_limited("felix", "123456", 11), "felix123456");
        assert_eq!(length_limited("felix", "_2345", 10), "felix_kMQI");
        assert_eq!(length_limited("felix", "12345678910", 13), "felix_Y2QCZIS");
        assert_eq!(length_limited("felix", "", 10), "felix_");
        // Exactly 128: kept.
        let name = "v".repeat(128 - "net.vmi.ns.".len());
        assert_eq!(vm_handle("net", "ns", &name).len(), 128);
        assert!(!vm_handle("net", "ns", &name).contains('_'));
        // Longer (where Go panics): the whole hash.
        let long = vm_handle("net", "ns", &format!("{name}x"));
        assert!(long.starts_with("net.vmi._"), "{long}");
        assert_eq!(long.len(), "net.vmi._".len() + 43);
    }

    #[test]
    fn vm_attributes_add_the_vmi_and_migration_ids() {
        // Mirrors ipam_plugin.go cmdAdd's attributes for a VMI pod.
        let pod: BTreeMap<String, String> = [("pod", "virt-launcher-vm1-x"), ("namespace", "ns")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut vmi = PodVmi {
            vmi_name: "vm1".into(),
            vmi_namespace: "ns".into(),
            vmi_uid: "vmi-u".into(),
            ..PodVmi::default()
        };
        let a = vm_attributes(pod.clone(), &vmi);
        assert_eq!(a["vmi-name"], "vm1");
        assert_eq!(a["vmi-uid"], "vmi-u");
        assert!(!a.contains_key("vm-uid") && !a.contains_key("vmim-uid"));
        vmi.vm = Some(VmOwner {
            uid: "vm-u".into(),
            deleting: false,
        });
        vmi.migration_job_uid = "job-u".into();
        let a = vm_attributes(pod, &vmi);
        assert_eq!(a["vm-uid"], "vm-u");
        assert_eq!(a["vmim-uid"], "job-u");
        assert_eq!(a["pod"], "virt-launcher-vm1-x");
    }
}
