//! A fake Kubernetes API server over HTTPS for the tests: lists (pods, nodes, events) from a
//! shared JSON state with `fieldSelector` and `limit`/`continue` paging, Event creation,
//! evictions (refused for pods named in `pdb`), a node's GET and its JSON patch (taints); every
//! request recorded. Its certificate is for 127.0.0.1, signed by a CA it returns.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::probe;

/// A request the fake API server saw.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Without the query.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub auth: Option<String>,
    pub body: String,
}
pub type Seen = Arc<Mutex<Vec<Request>>>;

impl Request {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub struct FakeApi {
    pub port: u16,
    stop: Arc<AtomicBool>,
    pub seen: Seen,
    /// The network namespace it listens in (`None`: the test's own).
    ns: Option<String>,
}

impl FakeApi {
    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let port = self.port;
        match &self.ns {
            Some(ns) => probe::in_ns(ns, move || {
                let _ = TcpStream::connect(("127.0.0.1", port));
            }),
            None => {
                let _ = TcpStream::connect(("127.0.0.1", port));
            }
        }
    }
}

/// Decodes `%XX` and `+` of a query component.
fn unescape(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A list answer in pages: `limit` items from the `continue` offset, with the next token.
fn page(kind: &str, items: &[Value], req: &Request) -> String {
    let from: usize = req
        .param("continue")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let limit: usize = req
        .param("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(usize::MAX);
    let end = from.saturating_add(limit).min(items.len());
    let token = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    json!({"kind": kind, "metadata": {"continue": token}, "items": &items[from.min(end)..end]})
        .to_string()
}

/// Answers from `state`: `pods`, `nodes`, `events` lists (`fieldSelector` on
/// `spec.nodeName` and `reason`), Event creation (appended to `events`) and evictions
/// (the pod is removed unless its name is in `pdb`, which answers 429).
fn answer(req: &Request, state: &Mutex<Value>) -> (u16, String) {
    let mut st = state.lock().unwrap();
    let list =
        |st: &Value, key: &str| -> Vec<Value> { st[key].as_array().cloned().unwrap_or_default() };
    let selector = req.param("fieldSelector").map(str::to_string);
    let selected = |items: Vec<Value>, field: &str, ptr: &str| -> Vec<Value> {
        match selector.as_deref().and_then(|f| f.strip_prefix(field)) {
            Some(want) => items
                .into_iter()
                .filter(|i| i.pointer(ptr).and_then(Value::as_str) == Some(want))
                .collect(),
            None => items,
        }
    };
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["api", "v1", "pods"]) => {
            let pods = selected(list(&st, "pods"), "spec.nodeName=", "/spec/nodeName");
            (200, page("PodList", &pods, req))
        }
        ("GET", ["api", "v1", "nodes"]) => (200, page("NodeList", &list(&st, "nodes"), req)),
        ("GET", ["api", "v1", "nodes", name]) => {
            match list(&st, "nodes")
                .into_iter()
                .find(|n| n["metadata"]["name"] == *name)
            {
                Some(n) => (200, n.to_string()),
                None => (
                    404,
                    r#"{"kind":"Status","message":"node not found"}"#.to_string(),
                ),
            }
        }
        // A JSON patch of a node's taints: `test` must match, then `replace` applies.
        ("PATCH", ["api", "v1", "nodes", name]) => {
            let ops: Value = serde_json::from_str(&req.body).unwrap_or(Value::Null);
            let Some(node) = st["nodes"]
                .as_array_mut()
                .and_then(|ns| ns.iter_mut().find(|n| n["metadata"]["name"] == *name))
            else {
                return (
                    404,
                    r#"{"kind":"Status","message":"node not found"}"#.to_string(),
                );
            };
            for op in ops.as_array().into_iter().flatten() {
                if op["path"] != "/spec/taints" {
                    return (
                        422,
                        r#"{"kind":"Status","message":"unsupported path"}"#.into(),
                    );
                }
                match op["op"].as_str() {
                    Some("test") if node["spec"]["taints"] != op["value"] => {
                        return (422, r#"{"kind":"Status","message":"test failed"}"#.into())
                    }
                    Some("test") => {}
                    Some("replace") => node["spec"]["taints"] = op["value"].clone(),
                    _ => {
                        return (
                            422,
                            r#"{"kind":"Status","message":"unsupported op"}"#.into(),
                        )
                    }
                }
            }
            (200, node.to_string())
        }
        ("GET", ["api", "v1", "events"]) => {
            let events = selected(list(&st, "events"), "reason=", "/reason");
            (200, page("EventList", &events, req))
        }
        ("POST", ["api", "v1", "namespaces", _, "events"]) => {
            let event: Value = serde_json::from_str(&req.body).unwrap_or(Value::Null);
            if !st["events"].is_array() {
                st["events"] = json!([]);
            }
            st["events"].as_array_mut().unwrap().push(event.clone());
            (201, event.to_string())
        }
        ("POST", ["api", "v1", "namespaces", ns, "pods", name, "eviction"]) => {
            let blocked = list(&st, "pdb").iter().any(|p| p.as_str() == Some(name));
            if blocked {
                return (
                    429,
                    r#"{"kind":"Status","message":"Cannot evict pod as it would violate the pod's disruption budget."}"#.into(),
                );
            }
            if let Some(pods) = st["pods"].as_array_mut() {
                pods.retain(|p| {
                    !(p["metadata"]["namespace"] == *ns && p["metadata"]["name"] == *name)
                });
            }
            (201, r#"{"kind":"Status","status":"Success"}"#.into())
        }
        _ => (
            404,
            r#"{"kind":"Status","message":"not found"}"#.to_string(),
        ),
    }
}

fn serve_one(
    conn: TcpStream,
    config: Arc<rustls::ServerConfig>,
    body: &Mutex<Value>,
    seen: &Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let tls = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut reader = BufReader::new(rustls::StreamOwned::new(tls, conn));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let target = words.next().unwrap_or_default().to_string();
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let query = query
        .split('&')
        .filter(|q| !q.is_empty())
        .map(|q| {
            let (k, v) = q.split_once('=').unwrap_or((q, ""));
            (unescape(k), unescape(v))
        })
        .collect();
    let mut auth = None;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        if h.trim_end().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                auth = Some(v.trim().to_string());
            }
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut raw = vec![0u8; length];
    reader.read_exact(&mut raw)?;
    let req = Request {
        method,
        path: path.to_string(),
        query,
        auth,
        body: String::from_utf8_lossy(&raw).into_owned(),
    };
    let (status, text) = answer(&req, body);
    seen.lock().unwrap().push(req);
    let mut stream = reader.into_inner();
    write!(stream, "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len())?;
    stream.flush()?;
    stream.conn.send_close_notify();
    stream.flush()
}

/// An HTTPS server answering pod and node lists from `body`; returns it and the CA's PEM.
pub fn fake_api(body: Arc<Mutex<Value>>) -> (FakeApi, String) {
    fake_api_in(None, body)
}

/// [`fake_api`] listening on 127.0.0.1 of network namespace `ns` (an agent's node).
pub fn fake_api_in(ns: Option<&str>, body: Arc<Mutex<Value>>) -> (FakeApi, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let ca_cert: &rcgen::Certificate = ca.as_ref();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap(),
    );
    // A socket stays in the namespace it was made in, whichever thread uses it.
    let listener = match ns {
        Some(ns) => probe::in_ns(ns, || TcpListener::bind("127.0.0.1:0").unwrap()),
        None => TcpListener::bind("127.0.0.1:0").unwrap(),
    };
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s, sn) = (stop.clone(), seen.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if s.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let _ = serve_one(conn, config.clone(), &body, &sn);
        }
    });
    (
        FakeApi {
            port,
            stop,
            seen,
            ns: ns.map(str::to_string),
        },
        ca_cert.pem(),
    )
}

/// A kubeconfig (token `secret-token`) for `api`, with its CA, written into `dir`.
pub fn kubeconfig(dir: &Path, api: &FakeApi, ca_pem: &str) -> PathBuf {
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, ca_pem).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: t\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\n\
             contexts:\n- name: t\n  context: {{cluster: c, user: u}}\nusers:\n- name: u\n  user: {{token: secret-token}}\n",
            api.port,
            ca.display()
        ),
    )
    .unwrap();
    kubeconfig
}
