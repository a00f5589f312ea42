//! Calico's object names (libcalico-go `names`), and the checks names from outside pass
//! before any key is built from them (a `/` or `..` would otherwise write keys outside their
//! prefix): [`key_safe`] for a node name and for everything on DEL, CHECK and GC; on ADD
//! `K8S_POD_NAMESPACE` and `K8S_POD_NAME` as Kubernetes validates them (apimachinery
//! `IsDNS1123Subdomain`/`IsDNS1123Label`).

/// A WorkloadEndpoint's name: `[node, orchestrator, workload, endpoint]` (the workload is the
/// pod for `k8s`, the container ID for `cni`), each `-` doubled inside a part, the parts
/// joined with `-`. Node `node-1`, pod `my-pod`, `eth0` gives `node--1-k8s-my--pod-eth0`.
pub fn workload_endpoint(node: &str, orchestrator: &str, workload: &str, endpoint: &str) -> String {
    [node, orchestrator, workload, endpoint]
        .iter()
        .map(|part| part.replace('-', "--"))
        .collect::<Vec<_>>()
        .join("-")
}

/// Why `name` is not a DNS-1123 label (≤ 63 of `a-z`, `0-9`, `-`; alphanumeric at both
/// ends): Kubernetes' rule for namespace names.
pub fn dns1123_label(name: &str) -> Result<(), String> {
    const MAX: usize = 63;
    if name.len() > MAX {
        return Err(format!("must be no more than {MAX} characters"));
    }
    label(name)
}

/// Why `name` is not a DNS-1123 subdomain (≤ 253 characters, dot-separated labels of
/// `a-z`, `0-9`, `-`): Kubernetes' rule for node and pod names.
pub fn dns1123_subdomain(name: &str) -> Result<(), String> {
    const MAX: usize = 253;
    if name.len() > MAX {
        return Err(format!("must be no more than {MAX} characters"));
    }
    name.split('.').try_for_each(label)
}

fn label(part: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if part.chars().all(ok_char) && edge(part.chars().next()) && edge(part.chars().last()) {
        Ok(())
    } else {
        Err(
            "must consist of lower case alphanumeric characters, '-' or '.', and must start \
             and end with an alphanumeric character"
                .into(),
        )
    }
}

/// Why `name` cannot be one segment of a datastore key: empty, longer than 253 bytes, a
/// `/`, `.` or `..` (which would leave its prefix), or a control character. The only check
/// a name gets where Calico does none (its CNI plugin never validates the node name; a
/// configured `nodename` is used as is) and on DEL, CHECK and GC, which must always finish
/// for whatever an ADD or an older plugin wrote.
pub fn key_safe(name: &str) -> Result<(), String> {
    const MAX: usize = 253;
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX {
        return Err(format!("must be no more than {MAX} bytes"));
    }
    if name.contains('/') || name == "." || name == ".." {
        return Err("must not contain '/' nor be '.' or '..'".into());
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// A node name as Calico and Kubernetes accept it (a DNS-1123 subdomain).
pub fn node_name(name: &str) -> Result<(), String> {
    dns1123_subdomain(name)
}

/// A namespace name (a DNS-1123 label).
pub fn namespace(name: &str) -> Result<(), String> {
    dns1123_label(name)
}

/// A pod name (a DNS-1123 subdomain).
pub fn pod_name(name: &str) -> Result<(), String> {
    dns1123_subdomain(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_safe_names_refuse_only_what_leaves_a_key_prefix() {
        for good in [
            "n1",
            "Worker1",
            "node_1",
            "a..b",
            ".a",
            "é",
            &"a".repeat(253),
        ] {
            assert_eq!(key_safe(good), Ok(()), "{good}");
        }
        for bad in ["", "a/b", ".", "..", "a\n", "a\u{7f}", &"a".repeat(254)] {
            assert!(key_safe(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kubernetes_name_rules() {
        for good in ["n1", "node-1", "a.b-c.d", "0", &"a".repeat(253)] {
            assert_eq!(node_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "a/b",
            "..",
            "../../x",
            ".a",
            "a.",
            "a..b",
            "-a",
            "a-",
            "A",
            "a b",
            "a\n",
            "é",
            &"a".repeat(254),
        ] {
            assert!(node_name(bad).is_err(), "{bad:?}");
            assert!(pod_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(namespace("kube-system"), Ok(()));
        for bad in ["a.b", "a/b", "..", "", &"a".repeat(64)] {
            assert!(namespace(bad).is_err(), "{bad:?}");
        }
        assert!(node_name(&"a".repeat(5000)).unwrap_err().contains("253"));
    }

    #[test]
    fn dashes_are_doubled_inside_parts() {
        assert_eq!(
            workload_endpoint("node-1", "k8s", "my-pod", "eth0"),
            "node--1-k8s-my--pod-eth0"
        );
        assert_eq!(
            workload_endpoint("node1", "k8s", "nginx", "eth0"),
            "node1-k8s-nginx-eth0"
        );
        assert_eq!(
            workload_endpoint("n", "cni", "cnitool-62d3", "eth0"),
            "n-cni-cnitool--62d3-eth0"
        );
    }
}
