//! Item 2 of issue 6, through containerd's CRI (the harness of testkit/src/cri): RunPodSandbox with
//! the chain bridge + portmap (no egress-guard), with egress-guard appended, and without it but
//! followed by an init container that installs the same rules with `nft -f` inside the sandbox
//! and exits (the way egress-guard replaces). The three configurations are interleaved pod by
//! pod: before each pod the conflist in containerd's watched conf dir is rewritten when the pod
//! needs the other one, and every pod is classified by what it got (its egress-guard table is
//! there or not), so a reload containerd has not made yet cannot put a pod in the wrong series.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    Capability, ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, StartContainerRequest,
};
use serde_json::{json, Value};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::cri::client::PodSpec;
use crate::cri::image;
use crate::cri::node::{run, teardown, Node, BASE};
use crate::cri::{nft, ALLOW, MODE};
use crate::stats::{lat_row, ratio, Report, Samples};

pub const INIT_IMAGE: &str = "localhost/egress-guard-bench/nft-init:1";
/// The bench policy without `@orchestrator` (the CRI conflist defines no networks): the same
/// 7 entries spelled out.
pub const CRI_ALLOW: &str = "10.0.5.0/24 tcp 8443, fd00:5::/64 tcp 8443, 10.96.0.10 udp 53, \
                             10.96.0.10 tcp 53, 198.51.100.0/24 tcp 443, fd00:5::/64 tcp 443-445";
const NAMESPACE: &str = "team-a";

/// `nft` and every file `ldd` says it loads (the interpreter included).
pub fn nft_files() -> Result<Vec<String>, String> {
    let nft = "/usr/sbin/nft".to_string();
    let out = run("ldd", &[&nft])?;
    let mut files = vec![nft];
    for l in out.lines() {
        let l = l.trim();
        let path = match l.split_once(" => ") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => l.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(p.to_string());
        }
    }
    Ok(files)
}

/// The name databases nft reads to parse a ruleset that names protocols and services.
const NAME_DATABASES: [&str; 2] = ["/etc/protocols", "/etc/services"];

/// A one-layer OCI image: the host's `nft` with its libraries, the name databases and
/// `/rules.nft`; returns the tarball for `ctr images import` and the layer size.
pub fn build_init_image(work: &Path, rules: &str) -> Result<(PathBuf, u64), String> {
    let rootfs = work.join("rootfs");
    // nft resolves protocol names it has no keyword for (`ipv6-icmp` in the log rules)
    // through /etc/protocols, as an init image built on a distribution's nftables package
    // has it (netbase); without it the rules do not parse.
    let names = NAME_DATABASES.iter().map(|f| f.to_string());
    for f in nft_files()?.into_iter().chain(names) {
        let dst = rootfs.join(f.trim_start_matches('/'));
        if let Some(d) = dst.parent() {
            fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        fs::copy(&f, &dst).map_err(|e| format!("copy {f}: {e}"))?;
    }
    fs::write(rootfs.join("rules.nft"), rules).map_err(|e| e.to_string())?;
    // The image works before containerd sees it: check the rules parse with this very tree.
    run(
        "chroot",
        &[
            &rootfs.to_string_lossy(),
            "/usr/sbin/nft",
            "-c",
            "-f",
            "/rules.nft",
        ],
    )?;
    image::pack(
        work,
        &rootfs,
        &["/usr/sbin/nft", "-f", "/rules.nft"],
        &[],
        INIT_IMAGE,
        "nft-init-oci.tar",
    )
}

/// The container verbs the harness's client does not have.
struct Containers {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Containers {
    fn connect(sock: &Path) -> Result<Containers, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let sock = sock.to_path_buf();
        let ep = Endpoint::try_from("http://[::]:50051").map_err(|e| e.to_string())?;
        let chan = rt
            .block_on(
                ep.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let sock = sock.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(sock).await?))
                    }
                })),
            )
            .map_err(|e| format!("connect: {e}"))?;
        Ok(Containers {
            rt,
            client: RuntimeServiceClient::new(chan),
        })
    }

    /// Create + start the init container in `sandbox`, poll its status every 2 ms until it
    /// exited; its exit code must be 0.
    fn init(&mut self, sandbox: &str, sb_config: PodSandboxConfig) -> Result<(), String> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "egress-init".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: INIT_IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["/usr/sbin/nft".into(), "-f".into(), "/rules.nft".into()],
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    capabilities: Some(Capability {
                        add_capabilities: vec!["NET_ADMIN".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = &mut self.client;
        self.rt.block_on(async {
            let id = c
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: sandbox.into(),
                    config: Some(config),
                    sandbox_config: Some(sb_config),
                })
                .await
                .map_err(|e| format!("CreateContainer: {e}"))?
                .into_inner()
                .container_id;
            c.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(|e| format!("StartContainer: {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let st = c
                    .container_status(ContainerStatusRequest {
                        container_id: id.clone(),
                        verbose: false,
                    })
                    .await
                    .map_err(|e| format!("ContainerStatus: {e}"))?
                    .into_inner()
                    .status
                    .unwrap_or_default();
                if st.state == ContainerState::ContainerExited as i32 {
                    if st.exit_code != 0 {
                        return Err(format!(
                            "init container exited {}: {} {}",
                            st.exit_code, st.reason, st.message
                        ));
                    }
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err("init container still running after 30 s".into());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    }
}

/// The PodSandboxConfig the harness's `Cri::run` sends for `spec` (CreateContainer wants it).
fn sandbox_config(spec: &PodSpec, uid: &str) -> PodSandboxConfig {
    let mut labels = HashMap::new();
    labels.insert("io.kubernetes.pod.name".to_string(), spec.name.clone());
    labels.insert(
        "io.kubernetes.pod.namespace".to_string(),
        spec.namespace.clone(),
    );
    labels.insert("io.kubernetes.pod.uid".to_string(), uid.to_string());
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: spec.name.clone(),
            uid: uid.to_string(),
            namespace: spec.namespace.clone(),
            attempt: 0,
        }),
        hostname: spec.name.clone(),
        labels,
        annotations: spec.annotations.iter().cloned().collect(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// Stops the node (containerd by PID, every host change undone) when dropped.
struct Up(Node);

impl Drop for Up {
    fn drop(&mut self) {
        let notes = self.0.shutdown();
        if !notes.is_empty() && std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!("cri teardown: {}", notes.join("; "));
        }
    }
}

/// Another run (a test suite) owns the harness directory right now.
fn busy() -> Option<String> {
    let pid = fs::read_to_string(Path::new(BASE).join("containerd.pid")).ok()?;
    let pid = pid.trim();
    let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmd)
        .contains(BASE)
        .then(|| format!("containerd {pid} of another run is using {BASE}"))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cfg {
    Without,
    With,
}

struct Bench {
    up: Up,
    ctr: Containers,
    conf_with: Value,
    conf_without: Value,
    current: Option<Cfg>,
    seq: usize,
    inits: usize,
}

impl Bench {
    fn node(&self) -> &Node {
        &self.up.0
    }

    fn spec(&mut self, tag: &str) -> (PodSpec, String) {
        self.seq += 1;
        let name = format!("{tag}{}", self.seq);
        let spec = PodSpec::new(&name, NAMESPACE)
            .annotate(MODE, "enforce")
            .annotate(ALLOW, CRI_ALLOW);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        (spec, format!("{name}-{nanos}"))
    }

    /// RunPodSandbox (+ init container); returns (ms to ready, sandbox id).
    fn pod(&mut self, tag: &str, init: bool) -> Result<(f64, String), String> {
        let (spec, uid) = self.spec(tag);
        let t = Instant::now();
        let id = self
            .node()
            .cri
            .run(&spec, &uid)
            .map_err(|e| format!("RunPodSandbox {}: {e}", spec.name))?;
        self.node().remember(&id);
        if init {
            let cfg = sandbox_config(&spec, &uid);
            self.ctr.init(&id, cfg)?;
        }
        Ok((t.elapsed().as_secs_f64() * 1e3, id))
    }

    /// StopPodSandbox + RemovePodSandbox, timed.
    fn delete(&self, id: &str) -> Result<f64, String> {
        let t = Instant::now();
        self.node()
            .cri
            .stop(id)
            .map_err(|e| format!("StopPodSandbox: {e}"))?;
        self.node()
            .cri
            .remove(id)
            .map_err(|e| format!("RemovePodSandbox: {e}"))?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }

    fn has_guard(&self, id: &str) -> Result<bool, String> {
        Ok(nft::table(id)?.is_some())
    }

    /// Makes `cfg`'s conflist the one in containerd's conf dir, if it is not already, and
    /// gives containerd time to reload it (not timed). Whether it did is checked on each pod.
    fn use_conf(&mut self, cfg: Cfg) -> Result<(), String> {
        if self.current == Some(cfg) {
            return Ok(());
        }
        let conf = if cfg == Cfg::With {
            &self.conf_with
        } else {
            &self.conf_without
        };
        // Written in place: containerd 1.6 reloads on write, rename-from and remove events
        // in its conf dir but ignores create (a file renamed into the dir).
        let text = serde_json::to_string_pretty(conf).map_err(|e| e.to_string())?;
        fs::write(Path::new(BASE).join("net.d/10-egcri.conflist"), text)
            .map_err(|e| e.to_string())?;
        self.current = Some(cfg);
        std::thread::sleep(Duration::from_millis(150));
        Ok(())
    }

    /// One pod of `kind`, retried (after a longer wait) while containerd still used the other
    /// conflist. Returns (RunPodSandbox[+init] ms, teardown ms, sandbox id before removal).
    fn sample(&mut self, kind: Kind, stale: &mut usize) -> Result<(f64, f64, String), String> {
        let cfg = kind.cfg();
        loop {
            self.use_conf(cfg)?;
            let (ms, id) = self.pod(kind.tag(), kind == Kind::Init)?;
            let guarded = self.has_guard(&id)?;
            if guarded == (cfg == Cfg::With) {
                if kind == Kind::Init {
                    // The first init pod and every tenth after it.
                    if self.inits % 10 == 0 {
                        self.check_init_table(&id)?;
                    }
                    self.inits += 1;
                }
                let del = self.delete(&id)?;
                return Ok((ms, del, id));
            }
            self.delete(&id)?;
            *stale += 1;
            if *stale > 50 {
                return Err(format!(
                    "containerd kept using the other conflist for {stale} pods"
                ));
            }
            // Write the file again (containerd may have missed the event), then wait longer.
            self.current = None;
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The init container really installed its table in the sandbox.
    fn check_init_table(&self, id: &str) -> Result<(), String> {
        let ns = self
            .node()
            .cri
            .status(id)
            .map_err(|e| e.to_string())?
            .netns
            .ok_or("sandbox without netns")?;
        run(
            "nsenter",
            &[
                &format!("--net={}", ns.display()),
                "nft",
                "list",
                "table",
                "inet",
                &egress_guard::ruleset::table_name("init", "eth0"),
            ],
        )
        .map(|_| ())
        .map_err(|e| format!("init container left no table: {e}"))
    }
}

/// The three configurations measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    Guarded,
    Init,
}

impl Kind {
    fn cfg(self) -> Cfg {
        if self == Kind::Guarded {
            Cfg::With
        } else {
            Cfg::Without
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Kind::Plain => "pl",
            Kind::Guarded => "eg",
            Kind::Init => "in",
        }
    }
}

/// Every order of the three configurations, taken in turn, so that none always follows the
/// same one.
const ORDERS: [[Kind; 3]; 6] = [
    [Kind::Plain, Kind::Guarded, Kind::Init],
    [Kind::Guarded, Kind::Init, Kind::Plain],
    [Kind::Init, Kind::Plain, Kind::Guarded],
    [Kind::Plain, Kind::Init, Kind::Guarded],
    [Kind::Init, Kind::Guarded, Kind::Plain],
    [Kind::Guarded, Kind::Plain, Kind::Init],
];

#[derive(Default)]
struct Series {
    run: Samples,
    del: Samples,
}

/// Runs the comparison; `rounds` alternations of the two conflists, `per` pods of each
/// configuration per round.
/// Returns the p50 milliseconds the init container adds to RunPodSandbox.
pub fn bench(plugin: &Path, rounds: usize, per: usize, r: &mut Report) -> Result<f64, String> {
    if let Some(why) = busy() {
        return Err(format!("not measured: {why}"));
    }
    if let Some(why) = crate::cri::node::missing_prerequisite(plugin) {
        return Err(format!("not measured: {why}"));
    }
    let node = match Node::start(plugin) {
        Ok(n) => n,
        Err(e) => {
            let _ = teardown(Path::new(BASE));
            return Err(format!("CRI node: {e}"));
        }
    };
    let up = Up(node);
    let conflist_path = Path::new(BASE).join("net.d/10-egcri.conflist");
    let mut conf_with: Value =
        serde_json::from_str(&fs::read_to_string(&conflist_path).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let plugins = conf_with["plugins"]
        .as_array_mut()
        .ok_or("conflist without plugins")?;
    for p in plugins.iter_mut() {
        if p["type"] == "egress-guard" {
            p["logLevel"] = json!("info");
        }
    }
    let mut conf_without = conf_with.clone();
    if let Some(a) = conf_without["plugins"].as_array_mut() {
        a.retain(|p| p["type"] != "egress-guard");
    }
    // The init image carries exactly what `egress-guard render` gives this pod (pod placement).
    let work = Path::new(BASE).join("bench-image");
    fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let ann = work.join("ann.json");
    fs::write(&ann, json!({MODE: "enforce", ALLOW: CRI_ALLOW}).to_string())
        .map_err(|e| e.to_string())?;
    let rules = run(
        &plugin.to_string_lossy(),
        &[
            "render",
            "--config",
            &conflist_path.to_string_lossy(),
            "--annotations",
            &ann.to_string_lossy(),
            "--namespace",
            NAMESPACE,
            "--container-id",
            "init",
            "--placement",
            "pod-inet",
        ],
    )?;
    let (tarball, layer) = build_init_image(&work, &rules)?;
    image::import(&up.0.sock, &tarball)?;
    let ctr = Containers::connect(&up.0.sock)?;
    let mut b = Bench {
        up,
        ctr,
        conf_with,
        conf_without,
        current: None,
        seq: 0,
        inits: 0,
    };
    let (mut plain, mut guarded, mut init) =
        (Series::default(), Series::default(), Series::default());
    let mut stale = 0;
    for i in 0..rounds * per {
        for kind in ORDERS[i % ORDERS.len()] {
            let (ms, del, id) = b.sample(kind, &mut stale)?;
            if kind == Kind::Guarded && b.has_guard(&id)? {
                return Err(format!(
                    "sandbox {id}'s egress-guard table survived its removal"
                ));
            }
            let s = match kind {
                Kind::Plain => &mut plain,
                Kind::Guarded => &mut guarded,
                Kind::Init => &mut init,
            };
            s.run.push(ms);
            s.del.push(del);
        }
    }
    let own_add = verb_ms(&b.node().plugin_log, "ADD");
    let own_del = verb_ms(&b.node().plugin_log, "DEL");
    r.section(
        "2. End to end through containerd's CRI: RunPodSandbox (+ init container)",
        &format!(
            "containerd {} + runc, conflist bridge + host-local + portmap (the CRI harness of \
             testkit/src/cri), pods annotated `mode: enforce` with the same 7-entry allowlist. \
             \"+ init\" = RunPodSandbox, then CreateContainer + StartContainer of an init \
             container (image: the host's `nft` and its libraries, {:.1} MiB layer, native \
             snapshotter, NET_ADMIN) running `nft -f` of the pod-placement ruleset, polled with \
             ContainerStatus every 2 ms until it exited 0 (a kubelet notices later: its PLEG \
             relists every second). {n} pods per configuration, interleaved pod by pod (every \
             order of the three in turn; the conflist is rewritten before a pod that needs the \
             other one, and each pod is classified by whether it got a table: {stale} pods \
             started before containerd reloaded were discarded). Milliseconds; teardown = \
             StopPodSandbox + RemovePodSandbox.",
            containerd_version(),
            layer as f64 / 1048576.0,
            n = rounds * per,
        ),
    );
    r.table(
        &["configuration", "n", "p50 ms", "p90 ms", "p99 ms"],
        &[
            lat_row(&["bridge + portmap (no egress-guard)"], &plain.run),
            lat_row(&["bridge + portmap + egress-guard"], &guarded.run),
            lat_row(&["bridge + portmap, + nft init container"], &init.run),
            lat_row(&["teardown, no egress-guard"], &plain.del),
            lat_row(&["teardown, with egress-guard"], &guarded.del),
            lat_row(&["teardown, + init container"], &init.del),
        ],
    );
    let over = guarded.run.p50() / plain.run.p50() - 1.0;
    let init_cost = init.run.p50() - plain.run.p50();
    let guard_cost = guarded.run.p50() - plain.run.p50();
    r.note(&format!(
        "RunPodSandbox p50 with egress-guard / without: {} ({:+.1} ms); + init container / \
         without: {} ({:+.1} ms). Cost of guarding over the bare chain: init container {:.1} ms \
         vs egress-guard {:.1} ms.",
        ratio(guarded.run.p50(), plain.run.p50()),
        guard_cost,
        ratio(init.run.p50(), plain.run.p50()),
        init_cost,
        init_cost,
        guard_cost
    ));
    r.note(&format!(
        "egress-guard's own time inside these sandboxes, from its log (`duration_us`, plugin \
         start to result, excluding process start): ADD p50 {:.2} ms, p90 {:.2} ms ({} runs \
         that installed a table); DEL p50 {:.2} ms ({} runs).",
        own_add.p50(),
        own_add.pct(90.0),
        own_add.len(),
        own_del.p50(),
        own_del.len()
    ));
    // The bridge plugin's sandbox starts fall in two modes about 50 ms apart (it sleeps 50 ms
    // when the new veth is not yet reported up, a race it loses about half the time here), so
    // each series' p50 lands in either mode by chance; the shift compares like with like.
    let shift = guarded.run.shift_from(&plain.run);
    let shift_rel = shift / plain.run.p50();
    r.note(&format!(
        "Shift of RunPodSandbox with egress-guard over without (median of the differences of all \
         {}x{} pairs, Hodges-Lehmann): {:+.1} ms, {:+.1}% of the p50 without; + init container: \
         {:+.1} ms.",
        guarded.run.len(),
        plain.run.len(),
        shift,
        shift_rel * 100.0,
        init.run.shift_from(&plain.run)
    ));
    r.target(
        "egress-guard raises RunPodSandbox's median by < 5% (shift, see section 2)",
        format!(
            "{:+.1}% ({:+.1} ms); difference of the two p50s {:+.1}%",
            shift_rel * 100.0,
            shift,
            over * 100.0
        ),
        shift_rel < 0.05,
    );
    r.note(&format!(
        "RunPodSandbox + init / RunPodSandbox with egress-guard: {}.",
        ratio(init.run.p50(), guarded.run.p50())
    ));
    Ok(init_cost)
}

fn containerd_version() -> String {
    run("containerd", &["--version"])
        .ok()
        .and_then(|v| v.split_whitespace().nth(2).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Milliseconds of the plugin's `verb` runs that succeeded (and, for ADD, installed a table),
/// from the `duration_us` of its per-verb log records.
fn verb_ms(log: &Path, verb: &str) -> Samples {
    let text = fs::read_to_string(log).unwrap_or_default();
    Samples(
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["verb"] == verb && v["outcome"] == "ok")
            .filter(|v| verb != "ADD" || v["table"].is_string())
            .filter_map(|v| v["duration_us"].as_f64())
            .map(|us| us / 1000.0)
            .collect(),
    )
}
