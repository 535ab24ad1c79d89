//! Kubeconfig and in-cluster credential loading: files and fields to [`Credentials`]. No I/O
//! beyond reading the files those fields name.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::{read_token, KubeError};

/// Resolved connection parameters: server, trust and identity.
#[derive(Clone, Default)]
pub struct Credentials {
    /// Base URL, e.g. `https://10.96.0.1:443`.
    pub server: String,
    /// PEM bundle of trusted CAs and where it came from (for errors); `None` uses webpki roots.
    pub ca_pem: Option<(Vec<u8>, String)>,
    pub insecure_skip_tls_verify: bool,
    /// A static bearer token.
    pub token: Option<String>,
    /// A bearer token file, read again on every request.
    pub token_file: Option<PathBuf>,
    /// Client certificate chain PEM and private key PEM, each with where it came from.
    #[allow(clippy::type_complexity)]
    pub client_cert: Option<((Vec<u8>, String), (Vec<u8>, String))>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Kubeconfig {
    #[serde(rename = "current-context")]
    current_context: Option<String>,
    clusters: Vec<Named<Cluster>>,
    contexts: Vec<Named<Context>>,
    users: Vec<Named<User>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "context", alias = "user")]
    value: Option<T>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Cluster {
    server: Option<String>,
    #[serde(rename = "certificate-authority")]
    certificate_authority: Option<String>,
    #[serde(rename = "certificate-authority-data")]
    certificate_authority_data: Option<String>,
    #[serde(rename = "insecure-skip-tls-verify")]
    insecure_skip_tls_verify: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Context {
    cluster: Option<String>,
    user: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    #[serde(rename = "client-certificate")]
    client_certificate: Option<String>,
    #[serde(rename = "client-certificate-data")]
    client_certificate_data: Option<String>,
    #[serde(rename = "client-key")]
    client_key: Option<String>,
    #[serde(rename = "client-key-data")]
    client_key_data: Option<String>,
    exec: Option<serde_norway::Value>,
    #[serde(rename = "auth-provider")]
    auth_provider: Option<serde_norway::Value>,
}

/// Reads and resolves a kubeconfig file (YAML, or JSON when it starts with `{`).
pub(super) fn load_kubeconfig(path: &Path) -> Result<Credentials, KubeError> {
    let text = std::fs::read_to_string(path).map_err(|source| KubeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let kc: Kubeconfig = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).map_err(|source| KubeError::ParseJson {
            path: path.to_path_buf(),
            source,
        })?
    } else {
        serde_norway::from_str(&text).map_err(|source| KubeError::ParseYaml {
            path: path.to_path_buf(),
            source,
        })?
    };
    resolve(kc, path)
}

fn resolve(kc: Kubeconfig, path: &Path) -> Result<Credentials, KubeError> {
    let problem = |problem: String| KubeError::Kubeconfig {
        path: path.to_path_buf(),
        problem,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let context_name = kc
        .current_context
        .filter(|c| !c.is_empty())
        .ok_or_else(|| problem("current-context is not set".to_string()))?;
    let context = find(&kc.contexts, &context_name)
        .ok_or_else(|| problem(format!("context {context_name:?} not found")))?;
    let cluster_name = context
        .cluster
        .as_deref()
        .ok_or_else(|| problem(format!("context {context_name:?} names no cluster")))?;
    let cluster = find(&kc.clusters, cluster_name)
        .ok_or_else(|| problem(format!("cluster {cluster_name:?} not found")))?;
    let server = cluster
        .server
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| problem(format!("cluster {cluster_name:?} has no server")))?;

    let mut creds = Credentials {
        server,
        insecure_skip_tls_verify: cluster.insecure_skip_tls_verify,
        ..Credentials::default()
    };
    // Inline base64 data, or a file relative to the kubeconfig's folder.
    let pem = |field, data: &Option<String>, file: &Option<String>| {
        data_or_file(path, base, field, data.as_deref(), file.as_deref())
    };
    let ca = &cluster.certificate_authority;
    creds.ca_pem = pem(
        "certificate-authority-data",
        &cluster.certificate_authority_data,
        ca,
    )?;

    let user_name = context.user.as_deref().unwrap_or_default();
    let default_user = User::default();
    let user = if user_name.is_empty() {
        &default_user
    } else {
        find(&kc.users, user_name)
            .ok_or_else(|| problem(format!("user {user_name:?} not found")))?
    };
    if user.exec.is_some() || user.auth_provider.is_some() {
        return Err(problem(format!(
            "user {user_name:?} uses exec or auth-provider, which is not supported"
        )));
    }
    creds.token = user.token.clone().filter(|t| !t.trim().is_empty());
    creds.token_file = user
        .token_file
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|f| base.join(f));
    let cert = pem(
        "client-certificate-data",
        &user.client_certificate_data,
        &user.client_certificate,
    )?;
    let key = pem("client-key-data", &user.client_key_data, &user.client_key)?;
    creds.client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(problem(format!(
                "user {user_name:?} has a client certificate without a key or a key without a certificate"
            )))
        }
    };
    Ok(creds)
}

fn find<'a, T>(items: &'a [Named<T>], name: &str) -> Option<&'a T> {
    items
        .iter()
        .find(|n| n.name == name)
        .and_then(|n| n.value.as_ref())
}

/// `*-data` (base64) wins over the file path, as in client-go.
fn data_or_file(
    path: &Path,
    base: &Path,
    field: &'static str,
    data: Option<&str>,
    file: Option<&str>,
) -> Result<Option<(Vec<u8>, String)>, KubeError> {
    if let Some(data) = data.filter(|d| !d.is_empty()) {
        let compact: String = data.split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|source| KubeError::Base64 {
                path: path.to_path_buf(),
                field,
                source,
            })?;
        return Ok(Some((bytes, format!("{} {field}", path.display()))));
    }
    match file.filter(|f| !f.is_empty()) {
        Some(f) => {
            let file = base.join(f);
            let bytes = std::fs::read(&file).map_err(|source| KubeError::Read {
                path: file.clone(),
                source,
            })?;
            Ok(Some((bytes, file.display().to_string())))
        }
        None => Ok(None),
    }
}

/// Credentials of the pod's service account: `{sa_dir}/token` (re-read per request) and
/// `{sa_dir}/ca.crt`.
pub(super) fn in_cluster_credentials(
    sa_dir: &Path,
    host: &str,
    port: &str,
) -> Result<Credentials, KubeError> {
    let token_file = sa_dir.join("token");
    // Fail early on a missing or empty token rather than at the first request.
    read_token(&token_file)?;
    let ca_file = sa_dir.join("ca.crt");
    let ca = std::fs::read(&ca_file).map_err(|source| KubeError::Read {
        path: ca_file.clone(),
        source,
    })?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(Credentials {
        server: format!("https://{host}:{port}"),
        ca_pem: Some((ca, ca_file.display().to_string())),
        token_file: Some(token_file),
        ..Credentials::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Credentials, KubeError> {
        resolve(
            serde_norway::from_str(yaml).unwrap(),
            Path::new("/etc/kube/config"),
        )
    }

    #[test]
    fn resolves_current_context_and_relative_paths() {
        let c = parse(
            "apiVersion: v1\nkind: Config\ncurrent-context: b\n\
             clusters:\n- name: c1\n  cluster: {server: 'https://a:6443', insecure-skip-tls-verify: true}\n\
             - name: c2\n  cluster: {server: 'https://b:6443', certificate-authority-data: 'aGVs\n bG8='}\n\
             contexts:\n- name: a\n  context: {cluster: c1, user: u1}\n- name: b\n  context: {cluster: c2, user: u2}\n\
             users:\n- name: u1\n  user: {token: t1}\n- name: u2\n  user: {tokenFile: tok}\n",
        )
        .unwrap();
        assert_eq!(c.server, "https://b:6443");
        assert!(!c.insecure_skip_tls_verify);
        assert_eq!(c.ca_pem.unwrap().0, b"hello");
        assert_eq!(c.token, None);
        assert_eq!(c.token_file.unwrap(), Path::new("/etc/kube/tok"));
    }

    #[test]
    fn reports_missing_pieces() {
        let e = parse("clusters: []\n").err().unwrap();
        assert!(e.to_string().contains("current-context"), "{e}");
        let e = parse("current-context: x\n").err().unwrap();
        assert!(e.to_string().contains("context \"x\" not found"), "{e}");
        let e = parse(
            "current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\nclusters: [{name: c, cluster: {}}]\n",
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("has no server"), "{e}");
        let e = parse(
            "current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n\
             clusters: [{name: c, cluster: {server: 'https://s'}}]\nusers: [{name: u, user: {exec: {command: x}}}]\n",
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("exec"), "{e}");
        let e = parse(
            "current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\n\
             clusters: [{name: c, cluster: {server: 'https://s', certificate-authority-data: '%%%'}}]\n",
        )
        .err()
        .unwrap();
        assert!(
            matches!(
                e,
                KubeError::Base64 {
                    field: "certificate-authority-data",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn in_cluster_brackets_ipv6() {
        let dir = std::env::temp_dir().join(format!("eg-kube-sa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "tok\n").unwrap();
        std::fs::write(dir.join("ca.crt"), "x").unwrap();
        let c = in_cluster_credentials(&dir, "fd00::1", "443").unwrap();
        assert_eq!(c.server, "https://[fd00::1]:443");
        std::fs::write(dir.join("token"), " \n").unwrap();
        assert!(matches!(
            in_cluster_credentials(&dir, "10.0.0.1", "443"),
            Err(KubeError::EmptyToken { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
