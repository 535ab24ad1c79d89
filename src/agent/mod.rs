//! `egress-guard agent`, `status` and `report`: node telemetry and coverage.
//!
//! The agent subscribes to the plugin's NFLOG group and writes one `egress-guard.flow/v1` JSON
//! line per flow and interval on stdout, serves Prometheus metrics, and reconciles every guarded
//! pod's table against the policy recorded in its state file (drift, `--repair`, garbage
//! collection). It only ever changes tables named `egress_guard_*` and state files of pods
//! that are gone. The schemas are documented in `docs/agent.md`.

pub mod counters;
pub mod coverage;
pub mod flows;
pub mod metrics;
pub mod nflog;
pub mod reconcile;
pub mod report;
pub mod status;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use crate::cli::{CliError, Parsed};
use crate::cni::config::{DEFAULT_NFLOG_GROUP, DEFAULT_STATE_DIR};
use crate::cni::NetConf;
use crate::kernel::NetlinkKernel;

pub use report::report;
pub use status::status;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Nflog(#[from] nflog::NflogError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the SIGTERM/SIGINT handler: {0}")]
    Signals(#[source] std::io::Error),
    #[error("API access for the unguarded-pod check: {0}")]
    Api(#[source] Box<crate::kube::KubeError>),
    #[error("the NFLOG receiver stopped")]
    NflogStopped,
}

/// Options of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub state_dir: PathBuf,
    pub nflog_group: u16,
    pub node: String,
    pub metrics_address: Option<String>,
    pub interval: Duration,
    pub flush_interval: Duration,
    pub repair: bool,
    pub log_file: Option<PathBuf>,
    pub log_level: log::LevelFilter,
    /// API access for the unguarded-pod check: a kubeconfig, else in-cluster when in a pod.
    pub kubeconfig: Option<PathBuf>,
    pub unguarded_interval: Duration,
    pub evict_unguarded: bool,
    /// What makes a pod ask for a guard (the plugin config's defaultMode and enforceNamespaces).
    pub criteria: report::GuardCriteria,
}

/// The conflist entry of a `--plugin-config` file, read for `agent`, `status` and `report`
/// with the plugin's own parser; a file that cannot be read or parsed is a usage error naming
/// it.
pub(crate) fn plugin_config(path: &str) -> Result<NetConf, CliError> {
    let err =
        |problem: String| CliError::usage(format!("cannot read plugin config {path}: {problem}"));
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    NetConf::parse(&bytes).map_err(|e| err(e.to_string()))
}

/// The node's name: `$NODE_NAME`, else the kernel's host name.
pub(crate) fn default_node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default()
}

fn seconds(flag: &str, v: &str) -> Result<Duration, CliError> {
    match v.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(CliError::usage(format!(
            "--{flag} \"{v}\" is not a number of seconds (0 < s <= 86400)"
        ))),
    }
}

/// The agent's options from its flags.
pub fn parse_options(p: &Parsed) -> Result<Options, CliError> {
    let mut o = Options {
        state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        nflog_group: DEFAULT_NFLOG_GROUP,
        node: String::new(),
        metrics_address: Some("0.0.0.0:9617".into()),
        interval: Duration::from_secs(30),
        flush_interval: Duration::from_secs(10),
        repair: false,
        log_file: None,
        log_level: log::LevelFilter::Info,
        kubeconfig: None,
        unguarded_interval: coverage::DEFAULT_INTERVAL,
        evict_unguarded: false,
        criteria: report::GuardCriteria::default(),
    };
    if let Some(path) = p.last("plugin-config") {
        let conf = plugin_config(path)?;
        o.state_dir = conf.state_dir;
        o.nflog_group = conf.nflog_group;
        o.criteria.default_mode = conf.settings.default_mode;
        o.criteria
            .enforce_namespaces
            .extend(conf.settings.enforce_namespaces);
    }
    // Explicit flags win over the plugin config.
    for (flag, v) in p.iter() {
        match flag {
            "state-dir" => o.state_dir = PathBuf::from(v),
            "nflog-group" => {
                o.nflog_group = v
                    .parse::<u16>()
                    .map_err(|_| CliError::usage(format!("--nflog-group \"{v}\" is not 0-65535")))?
            }
            "node-name" => o.node = v.to_string(),
            "metrics-address" => {
                o.metrics_address = if v == "off" || v.is_empty() {
                    None
                } else {
                    Some(v.to_string())
                }
            }
            "interval" => o.interval = seconds(flag, v)?,
            "flush-interval" => o.flush_interval = seconds(flag, v)?,
            "repair" => o.repair = true,
            "kubeconfig" => o.kubeconfig = Some(PathBuf::from(v)),
            "unguarded-interval" => o.unguarded_interval = seconds(flag, v)?,
            "evict-unguarded" => o.evict_unguarded = true,
            "log-file" => o.log_file = Some(PathBuf::from(v)),
            "log-level" => o.log_level = crate::cli::log_level(flag, v)?,
            "plugin-config" => {}
            other => return Err(CliError::unhandled(other)),
        }
    }
    if o.node.is_empty() {
        o.node = default_node_name();
    }
    Ok(o)
}

/// Writes JSON lines to stdout; counts failures.
fn emit<T: serde::Serialize>(shared: &metrics::Shared, records: &[T]) -> usize {
    let mut out = std::io::stdout().lock();
    let mut written = 0;
    for r in records {
        let ok = serde_json::to_string(r)
            .map(|line| writeln!(out, "{line}").is_ok())
            .unwrap_or(false);
        if ok {
            written += 1;
        } else {
            shared.error("output");
        }
    }
    let _ = out.flush();
    written
}

fn flush_flows(shared: &metrics::Shared, agg: &mut flows::Aggregator, node: &str) {
    if agg.is_empty() {
        return;
    }
    let records = agg.drain(node);
    emit(shared, &records);
    shared.with(|e| {
        for r in &records {
            *e.records.entry(r.verdict).or_default() += 1;
        }
    });
}

/// Starts the unguarded-pod check in its own thread (its API calls must not hold up NFLOG),
/// when the agent has API access: `--kubeconfig`, or in-cluster credentials in a pod.
fn start_coverage(o: &Options, shared: &std::sync::Arc<metrics::Shared>) -> Result<(), AgentError> {
    let timeout = Duration::from_secs(10);
    let client = match &o.kubeconfig {
        Some(path) => crate::kube::Client::from_kubeconfig(path, timeout),
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            crate::kube::Client::in_cluster(timeout)
        }
        None => {
            if o.evict_unguarded {
                log::warn!(
                    "--evict-unguarded without API access (--kubeconfig or in-cluster): no check"
                );
            } else {
                log::info!(
                    "no API access (--kubeconfig or in-cluster): unguarded pods are not checked"
                );
            }
            return Ok(());
        }
    }
    .map_err(|e| AgentError::Api(Box::new(e)))?;
    let mut cov = coverage::Coverage::new(
        client,
        o.node.clone(),
        o.state_dir.clone(),
        o.criteria.clone(),
        o.evict_unguarded,
    );
    let shared = shared.clone();
    let every = o.unguarded_interval;
    std::thread::Builder::new()
        .name("coverage".into())
        .spawn(move || {
            while !crate::signal::termination_requested() {
                let events = cov.pass(&shared);
                emit(&shared, &events);
                let until = Instant::now() + every;
                while Instant::now() < until && !crate::signal::termination_requested() {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        })
        .map_err(|source| AgentError::Thread {
            what: "coverage",
            source,
        })?;
    Ok(())
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run_agent(o: &Options) -> Result<(), AgentError> {
    let shared = metrics::Shared::new(o.state_dir.clone(), o.node.clone());
    let listener = o
        .metrics_address
        .as_deref()
        .map(metrics::bind)
        .transpose()?;
    let mut sub = nflog::Subscription::bind(o.nflog_group)?;
    // The plugin hands failed ADDs over only into a state dir that exists (guard::failures).
    if let Err(e) = std::fs::create_dir_all(&o.state_dir) {
        log::warn!("cannot create state dir {}: {e}", o.state_dir.display());
    }
    crate::signal::catch_termination().map_err(AgentError::Signals)?;

    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("nflog".into())
        .spawn(move || loop {
            match sub.next_batch() {
                Ok(batch) if batch.is_empty() => {}
                Ok(batch) => {
                    if tx.send(Ok(batch)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let overrun = e.is_overrun();
                    if tx.send(Err(e)).is_err() {
                        return;
                    }
                    if !overrun {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        })
        .map_err(|source| AgentError::Thread {
            what: "nflog",
            source,
        })?;
    if let Some(l) = listener {
        let s = shared.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || metrics::serve(l, s))
            .map_err(|source| AgentError::Thread {
                what: "metrics",
                source,
            })?;
    }
    start_coverage(o, &shared)?;
    log::info!(
        "agent on node {} watching {} (NFLOG group {}, interval {:?}, repair {})",
        o.node,
        o.state_dir.display(),
        o.nflog_group,
        o.interval,
        o.repair
    );

    let mut kernel = NetlinkKernel::new();
    let mut rec = reconcile::Reconciler::new(o.state_dir.clone(), o.repair, o.node.clone());
    let mut dir = flows::Directory::new(o.state_dir.clone());
    let mut agg = flows::Aggregator::default();
    let mut next_reconcile = Instant::now();
    let mut next_flush = Instant::now() + o.flush_interval;
    while !crate::signal::termination_requested() {
        let now = Instant::now();
        if now >= next_reconcile {
            let events = rec.pass(&mut kernel, &shared);
            emit(&shared, &events);
            dir.reload();
            next_reconcile = Instant::now() + o.interval;
        }
        if now >= next_flush {
            flush_flows(&shared, &mut agg, &o.node);
            next_flush = Instant::now() + o.flush_interval;
        }
        let wait = next_flush
            .min(next_reconcile)
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        match rx.recv_timeout(wait) {
            Ok(Ok(batch)) => {
                for p in &batch {
                    match agg.add(&mut dir, p, SystemTime::now(), &crate::kernel::host_ifindex) {
                        Ok(v) => shared.with(|e| *e.logged.entry(v.verdict()).or_default() += 1),
                        Err(e) => {
                            shared.error("nflog");
                            log::debug!("{e}");
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                shared.error("nflog");
                log::warn!("{e}");
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err(AgentError::NflogStopped),
        }
    }
    flush_flows(&shared, &mut agg, &o.node);
    log::info!("agent stopping");
    Ok(())
}

/// The `agent` subcommand.
pub fn run(p: &Parsed) -> Result<ExitCode, CliError> {
    let o = parse_options(p)?;
    crate::logging::init(
        crate::logging::Sink::file_or_stderr(o.log_file.as_deref()),
        o.log_level,
    );
    Ok(match run_agent(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egress-guard agent: {e}");
            ExitCode::FAILURE
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Parsed {
        crate::cli::AGENT.parse(v.iter().copied()).unwrap()
    }

    #[test]
    fn options_and_plugin_config_defaults() {
        let cfg = std::env::temp_dir().join(format!("eg-agent-cfg-{}.json", std::process::id()));
        std::fs::write(&cfg, r#"{"stateDir": "/run/eg-test", "nflogGroup": 7}"#).unwrap();
        let o = parse_options(&args(&[
            "--plugin-config",
            cfg.to_str().unwrap(),
            "--node-name",
            "n1",
            "--interval",
            "0.5",
            "--repair",
        ]))
        .unwrap();
        assert_eq!(o.state_dir, PathBuf::from("/run/eg-test"));
        assert_eq!(o.nflog_group, 7);
        assert_eq!(o.interval, Duration::from_millis(500));
        assert!(o.repair);
        // Explicit flags win over the plugin config, whatever their order.
        let o = parse_options(&args(&[
            "--nflog-group",
            "9",
            "--plugin-config",
            cfg.to_str().unwrap(),
            "--metrics-address",
            "off",
        ]))
        .unwrap();
        assert_eq!(o.nflog_group, 9);
        assert_eq!(o.metrics_address, None);
        // The plugin's own parser reads the file: a value the plugin would refuse is refused
        // here too, naming the field.
        std::fs::write(&cfg, r#"{"type":"egress-guard","stateDir":"run/eg"}"#).unwrap();
        match parse_options(&args(&["--plugin-config", cfg.to_str().unwrap()])) {
            Err(CliError::Usage(m)) => assert!(m.contains("stateDir"), "{m}"),
            other => panic!(
                "relative stateDir accepted: {:?}",
                other.map(|o| o.state_dir)
            ),
        }
        let _ = std::fs::remove_file(&cfg);
        for bad in [&["--interval", "0"][..], &["--nflog-group", "70000"]] {
            assert!(
                matches!(parse_options(&args(bad)), Err(CliError::Usage(_))),
                "{bad:?}"
            );
        }
        for bad in [&["--bogus"][..], &["--state-dir"]] {
            assert!(
                matches!(
                    crate::cli::AGENT.parse(bad.iter().copied()),
                    Err(CliError::Usage(_))
                ),
                "{bad:?}"
            );
        }
    }
}
