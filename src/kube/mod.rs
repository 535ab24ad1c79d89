//! A minimal blocking Kubernetes API client: kubeconfig and in-cluster credentials, JSON GET and
//! PATCH over rustls. It owns HTTP, TLS and credential loading; it must not know about policies,
//! conflists or any Kubernetes kind beyond the paths its callers hand it.
//!
//! Every request has a bounded global timeout. A bearer token read from a file is read again on
//! each request, because projected service-account tokens rotate.

mod config;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

pub use config::Credentials;

/// Where the in-cluster service-account files live.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Longest part of an error response body kept in [`KubeError::Status`].
const MAX_ERROR_BODY: usize = 512;

/// Errors of the Kubernetes client. Each names the file, field, URL or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse kubeconfig {path} as yaml")]
    ParseYaml {
        path: PathBuf,
        #[source]
        source: serde_norway::Error,
    },
    #[error("cannot parse kubeconfig {path} as json")]
    ParseJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("kubeconfig {path}: {problem}")]
    Kubeconfig { path: PathBuf, problem: String },
    #[error("kubeconfig {path}: field {field} is not valid base64")]
    Base64 {
        path: PathBuf,
        field: &'static str,
        #[source]
        source: base64::DecodeError,
    },
    #[error("{what}: invalid pem")]
    Pem {
        what: String,
        #[source]
        source: ureq::Error,
    },
    #[error("{what}: no {expected} found in pem")]
    PemMissing {
        what: String,
        expected: &'static str,
    },
    #[error("in-cluster config: environment variable {name} is not set")]
    MissingEnv { name: &'static str },
    #[error("invalid server url {url:?}: must start with https:// or http://")]
    ServerUrl { url: String },
    #[error("invalid api path {path:?}: must start with '/' and hold no spaces, '?' or '#'")]
    ApiPath { path: String },
    #[error("invalid {what} {value:?}: must be a dns subdomain name")]
    Name { what: &'static str, value: String },
    #[error("token file {path} is empty")]
    EmptyToken { path: PathBuf },
    #[error("{method} {url} timed out after {timeout:?}")]
    Timeout {
        method: Method,
        url: String,
        timeout: Duration,
        #[source]
        source: ureq::Error,
    },
    #[error("{method} {url} failed")]
    Request {
        method: Method,
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("{method} {url}: not found")]
    NotFound { method: Method, url: String },
    #[error("{method} {url}: http status {status}: {message}")]
    Status {
        method: Method,
        url: String,
        status: u16,
        message: String,
    },
    #[error("GET {url}: {problem}")]
    Shape { url: String, problem: &'static str },
    #[error("{method} {url}: response is not a json object")]
    Decode {
        method: Method,
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode request body for {method} {url}")]
    Encode {
        method: Method,
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// HTTP method of a failed request, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Patch,
    Post,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
        })
    }
}

/// How requests authenticate, besides a client certificate (which lives in the TLS config).
#[derive(Clone)]
enum Auth {
    None,
    Token(String),
    /// Read on every request: projected tokens rotate.
    TokenFile(PathBuf),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
            Auth::TokenFile(p) => f.debug_tuple("TokenFile").field(p).finish(),
        }
    }
}

/// A blocking client for one API server with one identity.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    server: String,
    auth: Auth,
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .field("auth", &self.auth)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Loads a kubeconfig (YAML or JSON): current-context -> cluster.server, certificate-authority(-data),
    /// insecure-skip-tls-verify; user.token / tokenFile / client-certificate(-data)+client-key(-data).
    /// Relative file paths in it are resolved against the kubeconfig's directory, as kubectl does.
    pub fn from_kubeconfig(path: &Path, timeout: Duration) -> Result<Client, KubeError> {
        let creds = config::load_kubeconfig(path)?;
        Client::new(creds, timeout)
    }

    /// In-cluster: KUBERNETES_SERVICE_HOST/PORT, /var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt}.
    pub fn in_cluster(timeout: Duration) -> Result<Client, KubeError> {
        let host = env_var("KUBERNETES_SERVICE_HOST")?;
        let port = env_var("KUBERNETES_SERVICE_PORT")?;
        Client::in_cluster_at(Path::new(SERVICE_ACCOUNT_DIR), &host, &port, timeout)
    }

    /// [`Client::in_cluster`] with the service-account directory and the service address given.
    pub fn in_cluster_at(
        sa_dir: &Path,
        host: &str,
        port: &str,
        timeout: Duration,
    ) -> Result<Client, KubeError> {
        Client::new(config::in_cluster_credentials(sa_dir, host, port)?, timeout)
    }

    /// Builds a client from already resolved credentials.
    pub fn new(creds: Credentials, timeout: Duration) -> Result<Client, KubeError> {
        let server = creds.server.trim_end_matches('/').to_string();
        if !(server.starts_with("https://") || server.starts_with("http://")) {
            return Err(KubeError::ServerUrl { url: creds.server });
        }
        let mut tls = TlsConfig::builder().disable_verification(creds.insecure_skip_tls_verify);
        if let Some((ca_pem, what)) = &creds.ca_pem {
            tls = tls.root_certs(RootCerts::new_with_certs(&parse_certs(ca_pem, what)?));
        }
        if let Some(((cert_pem, cert_what), (key_pem, key_what))) = &creds.client_cert {
            let chain = parse_certs(cert_pem, cert_what)?;
            let key = PrivateKey::from_pem(key_pem).map_err(|source| KubeError::Pem {
                what: key_what.clone(),
                source,
            })?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        let agent_config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            // The API server is reached directly: a proxy from the environment is not wanted on
            // a node, and kubeconfig's proxy-url is not supported.
            .proxy(None)
            .max_redirects(0)
            .user_agent("egress-guard")
            .tls_config(tls.build())
            .build();
        let auth = match (creds.token, creds.token_file) {
            (Some(token), _) => Auth::Token(token),
            (None, Some(file)) => Auth::TokenFile(file),
            (None, None) => Auth::None,
        };
        Ok(Client {
            agent: agent_config.into(),
            server,
            auth,
            timeout,
        })
    }

    /// The API server's base URL, without a trailing slash.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// GET /api/v1/namespaces/{ns}/pods/{name}; returns the decoded JSON object.
    pub fn get_pod(&self, namespace: &str, name: &str) -> Result<serde_json::Value, KubeError> {
        check_name("namespace", namespace)?;
        check_name("pod name", name)?;
        self.get_json(&format!("/api/v1/namespaces/{namespace}/pods/{name}"))
    }

    /// GET `path` (e.g. `/api/v1/nodes/n1`); returns the decoded JSON body.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, KubeError> {
        let url = self.url(path)?;
        let result = self.authorized(self.agent.get(&url))?.call();
        self.finish(Method::Get, url, result)
    }

    /// GET a list (e.g. `/api/v1/pods`) with query parameters, following `metadata.continue`
    /// in pages of `page` items; returns every item.
    pub fn list(
        &self,
        path: &str,
        query: &[(&str, &str)],
        page: usize,
    ) -> Result<Vec<serde_json::Value>, KubeError> {
        let url = self.url(path)?;
        let limit = page.max(1).to_string();
        let mut items = Vec::new();
        let mut token = String::new();
        loop {
            let mut request = self
                .authorized(self.agent.get(&url))?
                .query("limit", &limit);
            for (k, v) in query {
                request = request.query(*k, *v);
            }
            if !token.is_empty() {
                request = request.query("continue", &token);
            }
            let body = self.finish(Method::Get, url.clone(), request.call())?;
            match body.get("items") {
                Some(serde_json::Value::Array(page)) => items.extend(page.iter().cloned()),
                Some(serde_json::Value::Null) | None => {}
                Some(_) => {
                    return Err(KubeError::Shape {
                        url,
                        problem: "\"items\" is not an array",
                    })
                }
            }
            token = body
                .pointer("/metadata/continue")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string();
            if token.is_empty() {
                return Ok(items);
            }
        }
    }

    /// POST a JSON body (e.g. an Eviction or an Event); returns the decoded answer.
    pub fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, KubeError> {
        self.send_json(Method::Post, path, "application/json", body)
    }

    /// PATCH with the given content type (e.g. application/json-patch+json or merge-patch).
    pub fn patch_json(
        &self,
        path: &str,
        content_type: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, KubeError> {
        self.send_json(Method::Patch, path, content_type, body)
    }

    /// A request with a JSON body (POST or PATCH).
    fn send_json(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, KubeError> {
        let url = self.url(path)?;
        let bytes = serde_json::to_vec(body).map_err(|source| KubeError::Encode {
            method,
            url: url.clone(),
            source,
        })?;
        let request = match method {
            Method::Patch => self.agent.patch(&url),
            // GET has no body and is never sent here.
            Method::Post | Method::Get => self.agent.post(&url),
        };
        let request = self
            .authorized(request)?
            .header("Content-Type", content_type);
        let result = request.send(&bytes[..]);
        self.finish(method, url, result)
    }

    fn url(&self, path: &str) -> Result<String, KubeError> {
        let bad = |c: char| c.is_whitespace() || c.is_control() || c == '#' || c == '?';
        if !path.starts_with('/') || path.contains(bad) {
            return Err(KubeError::ApiPath {
                path: path.to_string(),
            });
        }
        Ok(format!("{}{}", self.server, path))
    }

    /// The request with `Accept: application/json` and, for token credentials, the bearer.
    fn authorized<B>(
        &self,
        request: ureq::RequestBuilder<B>,
    ) -> Result<ureq::RequestBuilder<B>, KubeError> {
        let request = request.header("Accept", "application/json");
        Ok(match self.bearer()? {
            Some(value) => request.header("Authorization", value),
            None => request,
        })
    }

    fn bearer(&self) -> Result<Option<String>, KubeError> {
        match &self.auth {
            Auth::None => Ok(None),
            Auth::Token(token) => Ok(Some(format!("Bearer {token}"))),
            Auth::TokenFile(path) => Ok(Some(format!("Bearer {}", read_token(path)?))),
        }
    }

    fn finish(
        &self,
        method: Method,
        url: String,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<serde_json::Value, KubeError> {
        let mut response = result.map_err(|source| self.transport_error(method, &url, source))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_vec()
            .map_err(|source| self.transport_error(method, &url, source))?;
        log::debug!("{method} {url}: status {status}, {} bytes", body.len());
        if status == 404 {
            return Err(KubeError::NotFound { method, url });
        }
        if !(200..300).contains(&status) {
            return Err(KubeError::Status {
                method,
                url,
                status,
                message: status_message(&body),
            });
        }
        serde_json::from_slice(&body).map_err(|source| KubeError::Decode {
            method,
            url,
            source,
        })
    }

    fn transport_error(&self, method: Method, url: &str, source: ureq::Error) -> KubeError {
        let timed_out = match &source {
            ureq::Error::Timeout(_) => true,
            ureq::Error::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        };
        if timed_out {
            KubeError::Timeout {
                method,
                url: url.to_string(),
                timeout: self.timeout,
                source,
            }
        } else {
            KubeError::Request {
                method,
                url: url.to_string(),
                source,
            }
        }
    }
}

/// The `message` of a Kubernetes `Status` body, else the body's start.
fn status_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
            return truncate(m);
        }
    }
    truncate(String::from_utf8_lossy(body).trim())
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_ERROR_BODY) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn env_var(name: &'static str) -> Result<String, KubeError> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(KubeError::MissingEnv { name }),
    }
}

/// Reads a bearer token file; surrounding whitespace is not part of the token.
pub(crate) fn read_token(path: &Path) -> Result<String, KubeError> {
    let raw = std::fs::read_to_string(path).map_err(|source| KubeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(KubeError::EmptyToken {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<Certificate<'static>>, KubeError> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(source) => {
                return Err(KubeError::Pem {
                    what: what.to_string(),
                    source,
                })
            }
        }
    }
    if certs.is_empty() {
        return Err(KubeError::PemMissing {
            what: what.to_string(),
            expected: "certificate",
        });
    }
    Ok(certs)
}

/// Accepts RFC 1123 subdomain names (namespaces, pods, nodes): they go into a URL path unescaped.
fn check_name(what: &'static str, value: &str) -> Result<(), KubeError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !value.starts_with(['-', '.'])
        && !value.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(KubeError::Name {
            what,
            value: value.to_string(),
        })
    }
}

/// Validates a node name before it is put in a path (used by callers building node paths).
pub fn node_path(name: &str) -> Result<String, KubeError> {
    check_name("node name", name)?;
    Ok(format!("/api/v1/nodes/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("pod name", "web-0.a").is_ok());
        for bad in ["", "Web", "a/b", "-a", "a.", "a b", "a?x"] {
            assert!(check_name("pod name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_message_prefers_kubernetes_status() {
        let body = br#"{"kind":"Status","message":"pods \"x\" is forbidden"}"#;
        assert_eq!(status_message(body), "pods \"x\" is forbidden");
        assert_eq!(status_message(b" plain "), "plain");
        assert!(status_message(&[b'a'; 2000]).ends_with("..."));
    }
}
