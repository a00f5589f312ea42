//! From a [`K8sConfig`] to kube's client configuration, re-reading the kubeconfig each time.
//!
//! The kubeconfig's current context gives the cluster and the user; the conf's overrides then
//! replace single fields, as client-go's `ConfigOverrides` do in Calico's `NewK8sClient`:
//! only non-empty values count, a CA or client certificate/key file given as an override
//! replaces the kubeconfig's inline `*-data` as well (kube would otherwise prefer the data),
//! and a token replaces the kubeconfig's `tokenFile`.
//!
//! The kubeconfig is read with `calico-fsbound` (a regular file, bounded, never blocking),
//! and every file the result names is checked the same way before kube reads it.

use std::path::Path;

use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};

use crate::{K8sConfig, K8sError};

/// The name of the single context (and its cluster and user) handed to kube.
const SELECTED: &str = "selected";

/// Reads the kubeconfig (unless the path is empty) and applies the overrides.
pub fn load(cfg: &K8sConfig) -> Result<kube::Config, K8sError> {
    let file = if cfg.kubeconfig.as_os_str().is_empty() {
        None
    } else {
        Some(read_kubeconfig(&cfg.kubeconfig)?)
    };
    resolve(cfg, file)
}

/// The kubeconfig at `path`, read bounded and without blocking (`calico-fsbound`), with the
/// files it names made absolute against its directory, as kube's `Kubeconfig::read_from`
/// (which reads without a bound) does.
fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, K8sError> {
    let text =
        calico_fsbound::read_config_string(path, calico_fsbound::DOCUMENT_LIMIT, "kubeconfig")
            .map_err(|e| K8sError::Config(e.to_string()))?;
    let mut kubeconfig = Kubeconfig::from_yaml(&text).map_err(|e| {
        K8sError::Config(format!(
            "kubeconfig {}: {}",
            path.display(),
            crate::error::chain(&e)
        ))
    })?;
    let Some(dir) = path.parent() else {
        return Ok(kubeconfig);
    };
    let absolute = |file: &mut Option<String>| {
        // An empty setting names no file: it stays empty rather than becoming the directory.
        if let Some(f) = file.as_mut()
            && !f.is_empty()
            && Path::new(f.as_str()).is_relative()
            && let Some(joined) = dir.join(f.as_str()).to_str()
        {
            *f = joined.to_string();
        }
    };
    for named in &mut kubeconfig.clusters {
        if let Some(cluster) = &mut named.cluster {
            absolute(&mut cluster.certificate_authority);
        }
    }
    for named in &mut kubeconfig.auth_infos {
        if let Some(user) = &mut named.auth_info {
            absolute(&mut user.client_certificate);
            absolute(&mut user.client_key);
            absolute(&mut user.token_file);
        }
    }
    Ok(kubeconfig)
}

/// Checks every file the configuration names (CA, client certificate and key, token file)
/// as `calico-fsbound` reads: a regular file within bounds, so that kube, which reads them
/// without a bound, never meets `/dev/zero` or a FIFO. `setting` names where each came from.
fn check_named_files(
    cluster: &Cluster,
    user: &AuthInfo,
    setting: impl Fn(&str) -> String,
) -> Result<(), K8sError> {
    let files = [
        (
            "certificate-authority",
            cluster.certificate_authority.as_ref(),
        ),
        ("client-certificate", user.client_certificate.as_ref()),
        ("client-key", user.client_key.as_ref()),
        ("tokenFile", user.token_file.as_ref()),
    ];
    for (field, file) in files {
        let Some(f) = file.filter(|f| !f.is_empty()) else {
            continue;
        };
        match calico_fsbound::check_config_file(
            Path::new(f),
            calico_fsbound::SMALL_FILE_LIMIT,
            &setting(field),
        ) {
            // A token file is read at each request (client-go's too), so it may come later.
            Err(e) if e.is_missing() && field == "tokenFile" => {}
            Err(e) => return Err(K8sError::Config(e.to_string())),
            Ok(()) => {}
        }
    }
    Ok(())
}

/// The server URL an `api_root` override stands for: everything before the first `/api/`
/// (`https://10.96.0.1:443/api/v1/` gives `https://10.96.0.1:443`), as Calico splits it.
pub fn strip_api_root(api_root: &str) -> &str {
    api_root.split("/api/").next().unwrap_or(api_root)
}

/// Applies the overrides of `cfg` to the current context of `file` (or to nothing) and
/// builds kube's configuration, with `cfg.timeout` on connect, read and write.
///
/// CA and client certificate files are read here (by kube); the client key when the client
/// is built.
pub fn resolve(cfg: &K8sConfig, file: Option<Kubeconfig>) -> Result<kube::Config, K8sError> {
    let origin = if cfg.kubeconfig.as_os_str().is_empty() {
        "no kubeconfig".to_string()
    } else {
        format!("kubeconfig {}", cfg.kubeconfig.display())
    };
    let (mut cluster, mut user) = match file {
        Some(kubeconfig) => {
            current(kubeconfig).map_err(|m| K8sError::Config(format!("{origin}: {m}")))?
        }
        None => (Cluster::default(), AuthInfo::default()),
    };

    if let Some(root) = nonempty(&cfg.api_root) {
        cluster.server = Some(strip_api_root(root).to_string());
    }
    if let Some(ca) = nonempty_path(&cfg.certificate_authority) {
        cluster.certificate_authority = Some(path_str(ca, "k8s_certificate_authority")?);
        cluster.certificate_authority_data = None;
    }
    if let Some(token) = nonempty(&cfg.token) {
        user.token = Some(token.to_string().into());
        user.token_file = None;
    }
    if let Some(cert) = nonempty_path(&cfg.client_certificate) {
        user.client_certificate = Some(path_str(cert, "k8s_client_certificate")?);
        user.client_certificate_data = None;
    }
    if let Some(key) = nonempty_path(&cfg.client_key) {
        user.client_key = Some(path_str(key, "k8s_client_key")?);
        user.client_key_data = None;
    }
    check_named_files(&cluster, &user, |field| {
        let overridden = match field {
            "certificate-authority" => nonempty_path(&cfg.certificate_authority),
            "client-certificate" => nonempty_path(&cfg.client_certificate),
            "client-key" => nonempty_path(&cfg.client_key),
            _ => None,
        };
        match (overridden, field) {
            (Some(_), "certificate-authority") => "k8s_certificate_authority".to_string(),
            (Some(_), "client-certificate") => "k8s_client_certificate".to_string(),
            (Some(_), _) => "k8s_client_key".to_string(),
            (None, _) => format!("{origin}: {field}"),
        }
    })?;

    let server = cluster.server.clone().unwrap_or_default();
    if server.is_empty() {
        return Err(K8sError::Config(format!(
            "{origin}: no API server: the current context's cluster has no server and no \
             k8s_api_root is set"
        )));
    }

    let selected = Kubeconfig {
        clusters: vec![NamedCluster {
            name: SELECTED.to_string(),
            cluster: Some(cluster),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: SELECTED.to_string(),
            auth_info: Some(user),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: SELECTED.to_string(),
            context: Some(Context {
                cluster: SELECTED.to_string(),
                user: Some(SELECTED.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some(SELECTED.to_string()),
        ..Default::default()
    };
    let mut config = kube::Config::try_from(selected).map_err(|e| {
        K8sError::Config(format!(
            "{origin}, server {server}: {}",
            crate::error::chain(&e)
        ))
    })?;
    config.connect_timeout = Some(cfg.timeout);
    config.read_timeout = Some(cfg.timeout);
    config.write_timeout = Some(cfg.timeout);
    Ok(config)
}

/// The cluster and user of the current context. No current context means neither (the
/// overrides may still make a configuration, as with client-go); a context or cluster that
/// is named but absent is an error, an absent user is no credentials (as client-go).
fn current(kubeconfig: Kubeconfig) -> Result<(Cluster, AuthInfo), String> {
    let Some(context_name) = kubeconfig.current_context.filter(|c| !c.is_empty()) else {
        return Ok((Cluster::default(), AuthInfo::default()));
    };
    let context = kubeconfig
        .contexts
        .into_iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context)
        .ok_or_else(|| format!("current-context {context_name:?} is not among the contexts"))?;
    let cluster = kubeconfig
        .clusters
        .into_iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster)
        .ok_or_else(|| {
            format!(
                "context {context_name:?} names cluster {:?}, which is not among the clusters",
                context.cluster
            )
        })?;
    let user = context
        .user
        .and_then(|name| kubeconfig.auth_infos.into_iter().find(|u| u.name == name))
        .and_then(|u| u.auth_info)
        .unwrap_or_default();
    Ok((cluster, user))
}

fn nonempty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

fn nonempty_path(value: &Option<std::path::PathBuf>) -> Option<&Path> {
    value.as_deref().filter(|p| !p.as_os_str().is_empty())
}

fn path_str(path: &Path, what: &str) -> Result<String, K8sError> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| K8sError::Config(format!("{what} {} is not valid UTF-8", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    // A PEM block is all kube checks when it loads a CA; the bytes are never parsed as X.509
    // before a connection.
    const FAKE_CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nAQIDBA==\n-----END CERTIFICATE-----\n";

    fn kubeconfig_yaml(ca_data: &str) -> String {
        format!(
            r#"apiVersion: v1
kind: Config
clusters:
- name: prod
  cluster:
    server: https://10.0.0.1:6443
    certificate-authority-data: {ca_data}
- name: other
  cluster:
    server: https://10.9.9.9:6443
contexts:
- name: cni
  context:
    cluster: prod
    user: calico-cni
- name: elsewhere
  context:
    cluster: other
    user: nobody
current-context: cni
users:
- name: calico-cni
  user:
    token: from-file
    client-certificate-data: Y2VydA==
    client-key-data: a2V5
"#
        )
    }

    fn b64(data: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    fn cfg() -> K8sConfig {
        K8sConfig {
            kubeconfig: PathBuf::from("/etc/cni/net.d/calico-kubeconfig"),
            timeout: Duration::from_secs(3),
            ..K8sConfig::new("")
        }
    }

    fn parse(yaml: &str) -> Kubeconfig {
        Kubeconfig::from_yaml(yaml).unwrap()
    }

    fn token_of(config: &kube::Config) -> Option<String> {
        // AuthInfo serializes the secret (it is how kube writes kubeconfigs).
        let json = serde_json::to_value(&config.auth_info).unwrap();
        json.get("token")
            .and_then(|t| t.as_str())
            .map(str::to_string)
    }

    #[test]
    fn api_root_is_cut_before_api() {
        assert_eq!(
            strip_api_root("https://10.96.0.1:443/api/v1/"),
            "https://10.96.0.1:443"
        );
        assert_eq!(strip_api_root("https://k8s:6443"), "https://k8s:6443");
        assert_eq!(
            strip_api_root("https://k8s:6443/prefix/api/v1"),
            "https://k8s:6443/prefix"
        );
        // Calico splits on "/api/" only, so a bare "/api" stays.
        assert_eq!(
            strip_api_root("https://k8s:6443/api"),
            "https://k8s:6443/api"
        );
    }

    #[test]
    fn kubeconfig_alone_gives_its_current_context() {
        let config = resolve(&cfg(), Some(parse(&kubeconfig_yaml(&b64(FAKE_CA_PEM))))).unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://10.0.0.1:6443/");
        assert_eq!(config.root_cert, Some(vec![vec![1, 2, 3, 4]]));
        assert_eq!(token_of(&config).as_deref(), Some("from-file"));
        assert_eq!(
            config.auth_info.client_certificate_data.as_deref(),
            Some("Y2VydA==")
        );
        assert_eq!(config.connect_timeout, Some(Duration::from_secs(3)));
        assert_eq!(config.read_timeout, Some(Duration::from_secs(3)));
    }

    #[test]
    fn overrides_win_over_the_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, FAKE_CA_PEM.replace("AQIDBA==", "BQYHCA==")).unwrap();
        let (crt, key) = (dir.path().join("cni.crt"), dir.path().join("cni.key"));
        std::fs::write(&crt, "cert").unwrap();
        std::fs::write(&key, "key").unwrap();
        let cfg = K8sConfig {
            api_root: Some("https://192.0.2.7:443/api/v1/".to_string()),
            token: Some("override-token".to_string()),
            client_certificate: Some(crt.clone()),
            client_key: Some(key.clone()),
            certificate_authority: Some(ca),
            ..cfg()
        };
        let config = resolve(&cfg, Some(parse(&kubeconfig_yaml(&b64(FAKE_CA_PEM))))).unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://192.0.2.7:443/");
        // The override's CA file, not the kubeconfig's data.
        assert_eq!(config.root_cert, Some(vec![vec![5, 6, 7, 8]]));
        assert_eq!(token_of(&config).as_deref(), Some("override-token"));
        let user = &config.auth_info;
        assert_eq!(user.client_certificate.as_deref(), crt.to_str());
        assert_eq!(user.client_certificate_data, None);
        assert_eq!(user.client_key.as_deref(), key.to_str());
        assert!(user.client_key_data.is_none());
    }

    #[test]
    fn empty_overrides_are_ignored() {
        let cfg = K8sConfig {
            api_root: Some(String::new()),
            token: Some(String::new()),
            certificate_authority: Some(PathBuf::new()),
            ..cfg()
        };
        let config = resolve(&cfg, Some(parse(&kubeconfig_yaml(&b64(FAKE_CA_PEM))))).unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://10.0.0.1:6443/");
        assert_eq!(token_of(&config).as_deref(), Some("from-file"));
        assert_eq!(config.root_cert, Some(vec![vec![1, 2, 3, 4]]));
    }

    #[test]
    fn token_override_replaces_a_token_file() {
        let yaml = kubeconfig_yaml(&b64(FAKE_CA_PEM))
            .replace("    token: from-file\n", "    tokenFile: /var/run/token\n");
        let plain = resolve(&cfg(), Some(parse(&yaml))).unwrap();
        assert_eq!(
            plain.auth_info.token_file.as_deref(),
            Some("/var/run/token")
        );
        let cfg = K8sConfig {
            token: Some("t".to_string()),
            ..cfg()
        };
        let config = resolve(&cfg, Some(parse(&yaml))).unwrap();
        assert_eq!(config.auth_info.token_file, None);
        assert_eq!(token_of(&config).as_deref(), Some("t"));
    }

    #[test]
    fn no_kubeconfig_needs_an_api_root() {
        let bare = K8sConfig::new("");
        let err = resolve(&bare, None).unwrap_err();
        assert!(
            matches!(err, K8sError::Config(ref m) if m.contains("no API server")),
            "{err}"
        );

        let cfg = K8sConfig {
            api_root: Some("https://[fd00::1]:6443".to_string()),
            token: Some("t".to_string()),
            ..bare
        };
        let config = resolve(&cfg, None).unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://[fd00::1]:6443/");
        assert_eq!(config.root_cert, None);
        assert_eq!(token_of(&config).as_deref(), Some("t"));
    }

    #[test]
    fn broken_kubeconfigs_are_config_errors() {
        let yaml = kubeconfig_yaml("x").replace("current-context: cni", "current-context: gone");
        let err = resolve(&cfg(), Some(parse(&yaml))).unwrap_err();
        assert!(
            matches!(err, K8sError::Config(ref m) if m.contains("\"gone\"")),
            "{err}"
        );

        // Data that is not base64.
        let err = resolve(&cfg(), Some(parse(&kubeconfig_yaml("not-base64?")))).unwrap_err();
        assert!(
            matches!(err, K8sError::Config(ref m) if m.contains("certificate authority")),
            "{err}"
        );

        let missing = K8sConfig::new("/nonexistent/calico-kubeconfig");
        let err = load(&missing).unwrap_err();
        assert!(
            matches!(err, K8sError::Config(ref m) if m.contains("/nonexistent/calico-kubeconfig")),
            "{err}"
        );
    }

    #[test]
    fn no_current_context_takes_the_overrides_only() {
        let yaml = kubeconfig_yaml("x").replace("current-context: cni\n", "");
        let cfg = K8sConfig {
            api_root: Some("https://10.1.1.1:6443".to_string()),
            ..cfg()
        };
        let config = resolve(&cfg, Some(parse(&yaml))).unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://10.1.1.1:6443/");
        assert_eq!(token_of(&config), None);
    }

    /// Bad-input finding #9: a kubeconfig, or a file it or an override names, that is
    /// /dev/zero, a FIFO or missing is refused at once, naming where it came from (kube
    /// would read /dev/zero until memory ran out, and block on a FIFO).
    #[test]
    fn a_kubeconfig_or_a_file_it_names_that_is_no_small_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let started = std::time::Instant::now();
        for bad in [
            PathBuf::from("/dev/zero"),
            fifo.clone(),
            dir.path().join("none"),
        ] {
            let e = load(&K8sConfig {
                kubeconfig: bad.clone(),
                ..cfg()
            })
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("kubeconfig") && e.contains(&bad.display().to_string()),
                "{e}"
            );
        }
        // Files named inside it (relative to its directory, as kube resolves them).
        let kubeconfig = dir.path().join("kubeconfig");
        let yaml = kubeconfig_yaml(&b64(FAKE_CA_PEM))
            .replace("    client-key-data: a2V5\n", "    client-key: fifo\n");
        std::fs::write(&kubeconfig, yaml).unwrap();
        let with_file = K8sConfig {
            kubeconfig: kubeconfig.clone(),
            ..cfg()
        };
        let e = load(&with_file).unwrap_err().to_string();
        assert!(e.contains("client-key") && e.contains("a FIFO"), "{e}");
        // And an override.
        let e = load(&K8sConfig {
            certificate_authority: Some("/dev/zero".into()),
            client_key: Some(dir.path().join("kubeconfig")),
            ..with_file
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("k8s_certificate_authority /dev/zero"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
