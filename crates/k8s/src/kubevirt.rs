//! KubeVirt: whether a pod is the virt-launcher pod of a VM, and that VM's state, read as
//! Calico's IPAM plugin reads them (`cni-plugin/pkg/ipamplugin/ipam_plugin.go`
//! `getVMIInfoForPod`, `libcalico-go/lib/kubevirt/vmi.go` `GetPodVMIInfo` and
//! `GetVMIResourceByName`):
//!
//! 1. the pod; it is a virt-launcher pod if an owner reference with `controller: true` names
//!    a `kubevirt.io/v1` `VirtualMachineInstance`;
//! 2. that VMI, whose UID must be the one the owner reference gives;
//! 3. if the VMI is owned by a `kubevirt.io/v1` `VirtualMachine`, that VM.
//!
//! A live-migration target pod carries the label [`MIGRATION_JOB_LABEL`]. The GETs go out one
//! after the other (each needs the previous answer) on one connection, within `cfg.timeout`.

use crate::convert::{MetadataObject, ObjectMeta, OwnerReference};
use crate::fetch::{get, refuse_empty_pod_name, segment, with_client};
use crate::{K8sConfig, K8sError};

/// The label KubeVirt puts on a migration target pod (`kubevirtv1.MigrationJobLabel`).
pub const MIGRATION_JOB_LABEL: &str = "kubevirt.io/migrationJobUID";

/// The `apiVersion` of KubeVirt's objects, as the owner references must name it.
const KUBEVIRT_API: &str = "kubevirt.io/v1";

/// A virt-launcher pod's VMI, as Calico's `PodVMIInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodVmi {
    /// The VMI's name (also its VM's: they share it).
    pub vmi_name: String,
    pub vmi_namespace: String,
    pub vmi_uid: String,
    /// The VMI has a `deletionTimestamp`.
    pub vmi_deleting: bool,
    /// The VirtualMachine that owns the VMI, if any.
    pub vm: Option<VmOwner>,
    /// The pod's [`MIGRATION_JOB_LABEL`]: non-empty only on a live-migration target pod.
    pub migration_job_uid: String,
}

/// The VirtualMachine that owns a VMI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmOwner {
    pub uid: String,
    /// The VM has a `deletionTimestamp`.
    pub deleting: bool,
}

impl PodVmi {
    /// A live-migration target pod (Calico's `IsMigrationTarget`).
    pub fn is_migration_target(&self) -> bool {
        !self.migration_job_uid.is_empty()
    }

    /// Whether the VM's addresses may go: its VM is being deleted, or, for a VMI without a
    /// VM, the VMI is (the choice in Calico's `cmdDel`).
    pub fn vm_being_deleted(&self) -> bool {
        match &self.vm {
            Some(vm) => vm.deleting,
            None => self.vmi_deleting,
        }
    }
}

/// Calico's `FindVMIOwnerRef`: the controller owner reference naming a VMI.
fn vmi_owner(pod: &ObjectMeta) -> Option<&OwnerReference> {
    pod.owner_references.iter().find(|o| {
        o.api_version == KUBEVIRT_API && o.kind == "VirtualMachineInstance" && o.controller
    })
}

/// Reads the pod `namespace/pod` and, if it is a virt-launcher pod, its VMI and the VMI's
/// VM. `Ok(None)` for any other pod. A VMI whose UID is not the owner reference's is an
/// error, as a VMI or VM that cannot be read is. A missing pod is
/// [`K8sError::NotFound`] with kind `"Pod"` (Calico's DEL treats that as nothing to do).
pub fn fetch_pod_vmi(
    cfg: &K8sConfig,
    namespace: &str,
    pod: &str,
) -> Result<Option<PodVmi>, K8sError> {
    refuse_empty_pod_name(cfg, namespace, pod)?;
    with_client(cfg, |client, url| async move {
        fetch_chain(&client, &url, namespace, pod).await
    })
}

async fn fetch_chain(
    client: &kube::Client,
    url: &str,
    namespace: &str,
    pod: &str,
) -> Result<Option<PodVmi>, K8sError> {
    let ns = segment(namespace);
    let pod_path = format!("/api/v1/namespaces/{ns}/pods/{}", segment(pod));
    let pod_name = format!("{namespace}/{pod}");
    let pod_object: MetadataObject = get(client, url, &pod_path, ("Pod", &pod_name)).await?;
    let Some(owner) = vmi_owner(&pod_object.metadata) else {
        return Ok(None);
    };
    if owner.name.is_empty() || owner.uid.is_empty() {
        return Err(K8sError::Other {
            url: url.to_string(),
            message: format!(
                "pod {pod_name} has invalid VMI ownerReference: name={:?} uid={:?}",
                owner.name, owner.uid
            ),
        });
    }
    let kubevirt = format!("/apis/{KUBEVIRT_API}/namespaces/{ns}");
    let vmi_path = format!(
        "{kubevirt}/virtualmachineinstances/{}",
        segment(&owner.name)
    );
    let vmi_name = format!("{namespace}/{}", owner.name);
    let vmi: MetadataObject = get(
        client,
        url,
        &vmi_path,
        ("VirtualMachineInstance", &vmi_name),
    )
    .await?;
    if vmi.metadata.uid != owner.uid {
        return Err(K8sError::Other {
            url: url.to_string(),
            message: format!(
                "VMI UID mismatch: pod ownerReference has {} but VMI resource has {}",
                owner.uid, vmi.metadata.uid
            ),
        });
    }
    let vm_ref = vmi
        .metadata
        .owner_references
        .iter()
        .find(|o| o.api_version == KUBEVIRT_API && o.kind == "VirtualMachine");
    let vm = match vm_ref.filter(|o| !o.name.is_empty()) {
        Some(o) => {
            let vm_path = format!("{kubevirt}/virtualmachines/{}", segment(&o.name));
            let vm_name = format!("{namespace}/{}", o.name);
            let vm: MetadataObject =
                get(client, url, &vm_path, ("VirtualMachine", &vm_name)).await?;
            Some(VmOwner {
                uid: vm.metadata.uid,
                deleting: !vm.metadata.deletion_timestamp.is_empty(),
            })
        }
        None => None,
    };
    let meta = vmi.metadata;
    Ok(Some(PodVmi {
        vmi_name: if meta.name.is_empty() {
            owner.name.clone()
        } else {
            meta.name
        },
        vmi_namespace: if meta.namespace.is_empty() {
            namespace.to_string()
        } else {
            meta.namespace
        },
        vmi_uid: meta.uid,
        vmi_deleting: !meta.deletion_timestamp.is_empty(),
        vm,
        migration_job_uid: pod_object
            .metadata
            .labels
            .get(MIGRATION_JOB_LABEL)
            .cloned()
            .unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: serde_json::Value) -> ObjectMeta {
        serde_json::from_value::<MetadataObject>(v)
            .expect("reads")
            .metadata
    }

    #[test]
    fn only_a_controller_reference_to_a_kubevirt_vmi_makes_a_virt_launcher_pod() {
        // Mirrors vmi.go FindVMIOwnerRef.
        let owner = |api: &str, kind: &str, controller: serde_json::Value| {
            meta(
                json!({"metadata": {"name": "virt-launcher-vm1-abcde", "ownerReferences": [
                {"apiVersion": api, "kind": kind, "name": "vm1", "uid": "u1",
                 "controller": controller}]}}),
            )
        };
        let m = owner("kubevirt.io/v1", "VirtualMachineInstance", json!(true));
        assert_eq!(vmi_owner(&m).map(|o| o.name.as_str()), Some("vm1"));
        for m in [
            owner("kubevirt.io/v1", "VirtualMachineInstance", json!(false)),
            owner("kubevirt.io/v1", "VirtualMachineInstance", json!(null)),
            owner(
                "kubevirt.io/v1alpha3",
                "VirtualMachineInstance",
                json!(true),
            ),
            owner("apps/v1", "ReplicaSet", json!(true)),
        ] {
            assert!(vmi_owner(&m).is_none(), "{m:?}");
        }
        assert!(vmi_owner(&meta(json!({"metadata": null}))).is_none());
    }

    #[test]
    fn empty_names_are_refused_before_any_request() {
        let cfg = K8sConfig {
            api_root: Some("https://192.0.2.1:6443".to_string()),
            ..K8sConfig::new("")
        };
        let err = fetch_pod_vmi(&cfg, "ns", "").unwrap_err();
        assert!(
            matches!(&err, K8sError::Other { url, .. } if url == "https://192.0.2.1:6443"),
            "{err}"
        );
    }

    #[test]
    fn the_vm_decides_release_when_there_is_one() {
        // Mirrors ipam_plugin.go cmdDel: VM deletion, else the standalone VMI's.
        let mut v = PodVmi {
            vmi_deleting: true,
            ..PodVmi::default()
        };
        assert!(v.vm_being_deleted());
        v.vm = Some(VmOwner {
            uid: "vm-u".into(),
            deleting: false,
        });
        assert!(!v.vm_being_deleted());
        assert!(!v.is_migration_target());
        v.migration_job_uid = "job".into();
        assert!(v.is_migration_target());
    }
}
