//! Tests of `egress_guard::kube::Client` against a small HTTPS server on 127.0.0.1 built from
//! std's TcpListener and rustls, with certificates made by rcgen.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egress_guard::kube::{Client, KubeError};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Clone)]
struct Pki {
    ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
    client_cert_pem: String,
    client_key_pem: String,
    ca_der: CertificateDer<'static>,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["egress-guard".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    let ca_cert: &rcgen::Certificate = ca.as_ref();
    Pki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().clone(),
        server_cert: server.der().clone(),
        server_key: server_key.serialize_der(),
        client_cert_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: String,
}

type Handler = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(pki: &Pki, require_client_cert: bool, handler: Box<Handler>) -> Server {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca_der.clone()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone()));
        let config = Arc::new(
            builder
                .with_single_cert(vec![pki.server_cert.clone()], key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::from(handler);
        {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (config, seen, handler) = (config.clone(), seen.clone(), handler.clone());
                    std::thread::spawn(move || {
                        let _ = serve(conn, config, &seen, &*handler);
                    });
                }
            });
        }
        Server { port, seen, stop }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(
    conn: TcpStream,
    config: Arc<rustls::ServerConfig>,
    seen: &Mutex<Vec<Seen>>,
    handler: &Handler,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let tls = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let stream = rustls::StreamOwned::new(tls, conn);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let (mut authorization, mut content_type, mut length) = (None, None, 0usize);
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = v.trim().to_string();
            match k.to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(v),
                "content-type" => content_type = Some(v),
                "content-length" => length = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let request = Seen {
        method,
        path,
        authorization,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    seen.lock().unwrap().push(request.clone());
    let (status, response) = handler(&request);
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{response}",
        response.len()
    )?;
    stream.flush()?;
    stream.conn.send_close_notify();
    stream.flush()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("eg-kube-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Writes a kubeconfig whose user is given as YAML flow-mapping fields.
fn kubeconfig(dir: &Path, port: u16, ca_pem: &str, user: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(dir.join("ca.crt"), ca_pem).unwrap();
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: ca.crt\n\
             contexts:\n- name: test\n  context: {{cluster: c, user: u}}\n\
             users:\n- name: u\n  user: {{{user}}}\n"
        ),
    )
    .unwrap();
    path
}

const TIMEOUT: Duration = Duration::from_secs(5);

fn pod_handler() -> Box<Handler> {
    Box::new(|req: &Seen| {
        match req.path.as_str() {
        "/api/v1/namespaces/ns1/pods/p1" => (
            200,
            r#"{"kind":"Pod","metadata":{"name":"p1","annotations":{"egress-guard.io/mode":"enforce"}}}"#
                .to_string(),
        ),
        "/api/v1/nodes/n1" if req.method == "PATCH" => (200, r#"{"kind":"Node"}"#.to_string()),
        "/api/v1/forbidden" => (
            403,
            r#"{"kind":"Status","message":"nodes is forbidden: no"}"#.to_string(),
        ),
        _ => (
            404,
            r#"{"kind":"Status","reason":"NotFound","code":404}"#.to_string(),
        ),
    }
    })
}

#[test]
fn token_file_auth_get_pod_and_rotation() {
    let pki = pki();
    let server = Server::start(&pki, false, pod_handler());
    let dir = TempDir::new("token");
    std::fs::write(dir.path().join("token"), "first-token\n").unwrap();
    let kc = kubeconfig(dir.path(), server.port, &pki.ca_pem, "tokenFile: token");
    let client = Client::from_kubeconfig(&kc, TIMEOUT).unwrap();

    let pod = client.get_pod("ns1", "p1").unwrap();
    assert_eq!(
        pod["metadata"]["annotations"]["egress-guard.io/mode"],
        "enforce"
    );
    std::fs::write(dir.path().join("token"), "rotated-token").unwrap();
    client.get_pod("ns1", "p1").unwrap();

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer first-token"));
    assert_eq!(
        seen[1].authorization.as_deref(),
        Some("Bearer rotated-token")
    );
}

#[test]
fn static_token_and_patch() {
    let pki = pki();
    let server = Server::start(&pki, false, pod_handler());
    let dir = TempDir::new("patch");
    let kc = kubeconfig(dir.path(), server.port, &pki.ca_pem, "token: s3cret");
    let client = Client::from_kubeconfig(&kc, TIMEOUT).unwrap();
    let body = serde_json::json!([{"op": "remove", "path": "/spec/taints/0"}]);
    let node = client
        .patch_json("/api/v1/nodes/n1", "application/json-patch+json", &body)
        .unwrap();
    assert_eq!(node["kind"], "Node");
    let seen = server.seen();
    assert_eq!(seen[0].method, "PATCH");
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer s3cret"));
    assert_eq!(
        seen[0].content_type.as_deref(),
        Some("application/json-patch+json")
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&seen[0].body).unwrap(),
        body
    );
    // Debug output never shows the token.
    assert!(!format!("{client:?}").contains("s3cret"));
}

#[test]
fn not_found_and_forbidden_are_distinct() {
    let pki = pki();
    let server = Server::start(&pki, false, pod_handler());
    let dir = TempDir::new("404");
    let kc = kubeconfig(dir.path(), server.port, &pki.ca_pem, "token: t");
    let client = Client::from_kubeconfig(&kc, TIMEOUT).unwrap();
    let err = client.get_pod("ns1", "missing").unwrap_err();
    assert!(matches!(err, KubeError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("/pods/missing"), "{err}");
    let err = client.get_json("/api/v1/forbidden").unwrap_err();
    match err {
        KubeError::Status {
            status, message, ..
        } => {
            assert_eq!(status, 403);
            assert_eq!(message, "nodes is forbidden: no");
        }
        other => panic!("unexpected {other:?}"),
    }
    // Names are validated before they reach a URL.
    assert!(matches!(
        client.get_pod("ns1", "../nodes/x"),
        Err(KubeError::Name { .. })
    ));
}

#[test]
fn wrong_ca_fails_verification() {
    let pki = pki();
    let other = self::pki();
    let server = Server::start(&pki, false, pod_handler());
    let dir = TempDir::new("wrongca");
    let kc = kubeconfig(dir.path(), server.port, &other.ca_pem, "token: t");
    let client = Client::from_kubeconfig(&kc, TIMEOUT).unwrap();
    let err = client.get_pod("ns1", "p1").unwrap_err();
    assert!(matches!(err, KubeError::Request { .. }), "{err:?}");
    let chain = format!("{:?}", err);
    assert!(chain.contains("InvalidCertificate"), "{chain}");
    assert!(server.seen().is_empty(), "no request may get through");
}

#[test]
fn insecure_skip_tls_verify_accepts_any_ca() {
    let pki = pki();
    let server = Server::start(&pki, false, pod_handler());
    let dir = TempDir::new("insecure");
    let path = dir.path().join("kubeconfig.json");
    let json = serde_json::json!({
        "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": format!("https://127.0.0.1:{}", server.port), "insecure-skip-tls-verify": true}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let client = Client::from_kubeconfig(&path, TIMEOUT).unwrap();
    client.get_pod("ns1", "p1").unwrap();
}

#[test]
fn client_certificate_data_auth() {
    let pki = pki();
    let server = Server::start(&pki, true, pod_handler());
    let dir = TempDir::new("mtls");
    let user = format!(
        "client-certificate-data: {}, client-key-data: {}",
        b64(&pki.client_cert_pem),
        b64(&pki.client_key_pem)
    );
    let kc = kubeconfig(dir.path(), server.port, &pki.ca_pem, &user);
    let client = Client::from_kubeconfig(&kc, TIMEOUT).unwrap();
    client.get_pod("ns1", "p1").unwrap();
    assert_eq!(server.seen()[0].authorization, None);

    // Without the client certificate the server refuses the handshake.
    let kc = kubeconfig(dir.path(), server.port, &pki.ca_pem, "token: t");
    let client = Client::from_kubeconfig(&kc, TIMEOUT).unwrap();
    assert!(client.get_pod("ns1", "p1").is_err());
}

#[test]
fn timeout_is_bounded() {
    let pki = pki();
    let server = Server::start(
        &pki,
        false,
        Box::new(|_: &Seen| {
            std::thread::sleep(Duration::from_secs(3));
            (200, "{}".to_string())
        }),
    );
    let dir = TempDir::new("timeout");
    let kc = kubeconfig(dir.path(), server.port, &pki.ca_pem, "token: t");
    let client = Client::from_kubeconfig(&kc, Duration::from_millis(300)).unwrap();
    let start = Instant::now();
    let err = client.get_pod("ns1", "p1").unwrap_err();
    assert!(matches!(err, KubeError::Timeout { .. }), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn in_cluster_reads_service_account_files() {
    let pki = pki();
    let server = Server::start(&pki, false, pod_handler());
    let dir = TempDir::new("incluster");
    std::fs::write(dir.path().join("token"), "sa-token").unwrap();
    std::fs::write(dir.path().join("ca.crt"), &pki.ca_pem).unwrap();
    let client =
        Client::in_cluster_at(dir.path(), "127.0.0.1", &server.port.to_string(), TIMEOUT).unwrap();
    client.get_pod("ns1", "p1").unwrap();
    std::fs::write(dir.path().join("token"), "sa-token-2").unwrap();
    client.get_pod("ns1", "p1").unwrap();
    let seen = server.seen();
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer sa-token"));
    assert_eq!(seen[1].authorization.as_deref(), Some("Bearer sa-token-2"));

    let missing = dir.path().join("nope");
    let err = Client::in_cluster_at(&missing, "127.0.0.1", "443", TIMEOUT).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn bad_kubeconfig_names_the_file() {
    let dir = TempDir::new("bad");
    let path = dir.path().join("kc");
    std::fs::write(&path, "current-context: [unclosed").unwrap();
    let err = Client::from_kubeconfig(&path, TIMEOUT).unwrap_err();
    assert!(matches!(err, KubeError::ParseYaml { .. }), "{err:?}");
    assert!(err.to_string().contains("kc"), "{err}");
    let err = Client::from_kubeconfig(&dir.path().join("absent"), TIMEOUT).unwrap_err();
    assert!(matches!(err, KubeError::Read { .. }), "{err:?}");
}

use egress_guard_testkit::common;

/// The plugin's API-server fallback end to end: the runtime passes no annotations, the conflist
/// names a kubeconfig, the plugin reads the pod over HTTPS (a fake API server inside the node
/// namespace) and enforces what it finds; with the server gone, an enforced namespace fails
/// closed.
#[test]
fn plugin_reads_annotations_from_the_api_server_when_the_runtime_sends_none() {
    if !common::can_run_root_tests(
        "plugin_reads_annotations_from_the_api_server_when_the_runtime_sends_none",
    ) {
        return;
    }
    let n = common::node::Node::new("api");
    let pki = pki();
    let handler: Box<Handler> = Box::new(|req: &Seen| {
        match req.path.as_str() {
        "/api/v1/namespaces/ml/pods/llm-0" | "/api/v1/namespaces/model-serving/pods/llm-0" => (
            200,
            r#"{"kind":"Pod","metadata":{"name":"llm-0","annotations":{"egress-guard.io/mode":"enforce","egress-guard.io/allow":"10.0.5.0/24 tcp 8443"}}}"#.to_string(),
        ),
        _ => (404, r#"{"kind":"Status","code":404}"#.to_string()),
    }
    });
    // The server runs inside the node namespace, where the plugin runs.
    let server = {
        let p = pki.clone();
        common::probe::in_ns(&n.node.name, move || Server::start(&p, false, handler))
    };
    let dir = TempDir::new("apifallback");
    std::fs::write(dir.path().join("token"), "node-token").unwrap();
    let kc = kubeconfig(dir.path(), server.port, &pki.ca_pem, "tokenFile: token");

    let pod = n.pod_netns("p");
    common::ip(
        &n.node.name,
        &format!("link add vapi0 type veth peer name eth0 netns {}", pod.name),
    );
    let mut conf = n.guard_entry(serde_json::json!({"kubeconfig": kc.display().to_string()}));
    conf["cniVersion"] = serde_json::json!("1.0.0");
    conf["name"] = serde_json::json!("egtest");
    conf["prevResult"] =
        serde_json::json!({"cniVersion": "1.0.0", "interfaces": [{"name": "vapi0"}]});
    let env = |ns: &str| {
        vec![
            ("CNI_CONTAINERID", format!("{}p", n.prefix)),
            ("CNI_NETNS", pod.path()),
            ("CNI_IFNAME", "eth0".to_string()),
            (
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME=llm-0"),
            ),
        ]
    };
    common::chain::exec_plugin(&n.node.name, "egress-guard", "ADD", &env("ml"), &conf)
        .expect("ADD with API fallback");
    let table = egress_guard::ruleset::table_name(&format!("{}p", n.prefix), "eth0");
    let listing = common::exec_in(&n.node.name, &["nft", "list", "table", "netdev", &table]);
    assert!(listing.contains("10.0.5.0/24 . tcp . 8443"), "{listing}");
    let seen = server.seen();
    assert!(
        seen.iter()
            .any(|s| s.path == "/api/v1/namespaces/ml/pods/llm-0"
                && s.authorization.as_deref() == Some("Bearer node-token")),
        "{seen:?}"
    );
    common::chain::exec_plugin(&n.node.name, "egress-guard", "DEL", &env("ml"), &conf).unwrap();

    drop(server);
    let err = common::chain::exec_plugin(
        &n.node.name,
        "egress-guard",
        "ADD",
        &env("model-serving"),
        &conf,
    )
    .expect_err("API down");
    assert_eq!(err.code, Some(104), "{err:?}");
    assert!(common::exec_in(&n.node.name, &["nft", "list", "tables"])
        .find("egress_guard_")
        .is_none());
}

/// `egress-guard install` removes the node's `egress-guard.io/not-ready` taint once the plugin
/// is chained, keeps every other taint, and leaves the taint alone while it cannot chain.
#[test]
fn installer_removes_the_not_ready_taint_only_once_chained() {
    let pki = pki();
    let handler: Box<Handler> =
        Box::new(
            |req: &Seen| match (req.method.as_str(), req.path.as_str()) {
                ("GET", "/api/v1/nodes/n1") => (
                    200,
                    r#"{"kind":"Node","metadata":{"name":"n1"},"spec":{"taints":[
                {"key":"dedicated","value":"gpu","effect":"NoSchedule"},
                {"key":"egress-guard.io/not-ready","effect":"NoSchedule"}]}}"#
                        .to_string(),
                ),
                ("PATCH", "/api/v1/nodes/n1") => (200, r#"{"kind":"Node"}"#.to_string()),
                _ => (404, r#"{"kind":"Status","code":404}"#.to_string()),
            },
        );
    let server = Server::start(&pki, false, handler);
    let dir = TempDir::new("taint");
    let kc = kubeconfig(
        dir.path(),
        server.port,
        &pki.ca_pem,
        "token: installer-token",
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (conf_dir, bin_dir) = (dir.path().join("net.d"), dir.path().join("bin"));
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::create_dir_all(&bin_dir).unwrap();
    let install = |conf_dir: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_egress-guard"))
            .args(["install", "--once", "--node-name", "n1"])
            .arg("--kubeconfig")
            .arg(&kc)
            .arg("--cni-conf-dir")
            .arg(conf_dir)
            .arg("--cni-bin-dir")
            .arg(&bin_dir)
            .arg("--plugin-config")
            .arg(root.join("conf/egress-guard.json"))
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_egress-guard"))
            .output()
            .unwrap()
    };

    // Not chainable (the runtime's conflist does not parse): the taint stays.
    std::fs::write(conf_dir.join("10-broken.conflist"), "{ not json").unwrap();
    let out = install(&conf_dir);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        server.seen().iter().all(|s| s.method != "PATCH"),
        "taint removed before chaining"
    );

    std::fs::remove_file(conf_dir.join("10-broken.conflist")).unwrap();
    std::fs::copy(
        root.join("tests/fixtures/conflists/10-containerd-net.conflist"),
        conf_dir.join("10-containerd-net.conflist"),
    )
    .unwrap();
    let out = install(&conf_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let chained: serde_json::Value = serde_json::from_slice(
        &std::fs::read(conf_dir.join("10-containerd-net.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        chained["plugins"].as_array().unwrap().last().unwrap()["type"],
        "egress-guard"
    );
    let patches: Vec<Seen> = server
        .seen()
        .into_iter()
        .filter(|s| s.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(
        patches[0].content_type.as_deref(),
        Some("application/json-patch+json")
    );
    assert_eq!(
        patches[0].authorization.as_deref(),
        Some("Bearer installer-token")
    );
    let body: serde_json::Value = serde_json::from_str(&patches[0].body).unwrap();
    assert_eq!(body[1]["op"], "replace");
    assert_eq!(
        body[1]["value"],
        serde_json::json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
    );
}
