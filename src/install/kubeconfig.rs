//! The kubeconfig the plugin uses for its API fallback, built from the installer's projected
//! service-account token and CA. Rewritten (atomically, mode 0600) only when its content changes,
//! e.g. after a token rotation.

use std::path::Path;

use base64::Engine as _;
use serde_json::json;

use super::{fsutil, InstallError};

/// Where the kubeconfig's inputs come from.
#[derive(Debug, Clone)]
pub struct Source {
    /// API server URL as seen from the host, e.g. `https://10.96.0.1:443`.
    pub server: String,
    /// Directory with `token` and `ca.crt` (the projected service-account volume).
    pub sa_dir: std::path::PathBuf,
}

impl Source {
    /// From `KUBERNETES_SERVICE_HOST`/`PORT`, or `None` outside a cluster.
    pub fn from_env(sa_dir: &Path) -> Option<Source> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .ok()
            .filter(|h| !h.is_empty())?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT")
            .ok()
            .filter(|p| !p.is_empty())?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Some(Source {
            server: format!("https://{host}:{port}"),
            sa_dir: sa_dir.to_path_buf(),
        })
    }
}

/// Renders the kubeconfig (JSON, which every kubeconfig reader accepts).
pub fn render(source: &Source) -> Result<Vec<u8>, InstallError> {
    let token_path = source.sa_dir.join("token");
    let token = crate::kube::read_token(&token_path).map_err(|e| InstallError::Token {
        path: token_path.clone(),
        source: Box::new(e),
    })?;
    let ca_path = source.sa_dir.join("ca.crt");
    let ca = std::fs::read(&ca_path).map_err(|source| InstallError::Read {
        path: ca_path.clone(),
        source,
    })?;
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "egress-guard",
        "clusters": [{"name": "local", "cluster": {
            "server": source.server,
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca),
        }}],
        "contexts": [{"name": "egress-guard", "context": {"cluster": "local", "user": "egress-guard"}}],
        "users": [{"name": "egress-guard", "user": {"token": token}}],
    });
    let mut out = serde_json::to_vec_pretty(&config).unwrap_or_default();
    out.push(b'\n');
    Ok(out)
}

/// Writes the kubeconfig to `dest` when it differs. Returns whether it wrote.
pub fn sync(source: &Source, dest: &Path) -> Result<bool, InstallError> {
    let new = render(source)?;
    if fsutil::read_optional(dest)?.as_deref() == Some(&new[..]) {
        return Ok(false);
    }
    fsutil::atomic_write(dest, &new, 0o600)?;
    Ok(true)
}
