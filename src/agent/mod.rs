//! `egress-guard agent`, `status` and `report`: node telemetry and coverage (issue 5).
//!
//! The agent subscribes to the plugin's NFLOG group and writes one `egress-guard.flow/v1` JSON
//! line per flow and interval on stdout, serves Prometheus metrics, and reconciles every guarded
//! pod's table against the policy recorded in its state file (drift, `--repair`, garbage
//! collection). It only ever changes tables named `egress_guard_*` and state files of pods
//! that are gone. The schemas are documented in `docs/agent.md`.

pub mod counters;
pub mod flows;
pub mod metrics;
pub mod nflog;
pub mod reconcile;
pub mod report;
pub mod state;
pub mod status;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use crate::cni::config::{DEFAULT_NFLOG_GROUP, DEFAULT_STATE_DIR};
use crate::kernel::NetlinkKernel;

pub use report::report;
pub use status::status;

const USAGE: &str =
    "usage: egress-guard agent [--plugin-config FILE] [--state-dir DIR] [--nflog-group N]
                          [--node-name NAME] [--metrics-address ADDR|off] [--interval SECS]
                          [--flush-interval SECS] [--repair] [--log-file FILE] [--log-level LEVEL]
  --plugin-config   the egress-guard conflist entry (plugin.json); its stateDir and nflogGroup
                    are the defaults of --state-dir (/run/egress-guard) and --nflog-group (100)
  --node-name       node name in records (default $NODE_NAME, else the host name)
  --metrics-address where /metrics is served (default 0.0.0.0:9617; off disables)
  --interval        seconds between reconciliations (default 30)
  --flush-interval  seconds over which identical flows are aggregated (default 10)
  --repair          reinstall tables that drifted from their policy";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error("cannot read plugin config {path}: {problem}")]
    PluginConfig { path: PathBuf, problem: String },
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
}

/// `stateDir` and `nflogGroup` of a plugin config (the conflist entry), when given.
pub(crate) fn plugin_config(path: &str) -> Result<serde_json::Value, AgentError> {
    let err = |problem: String| AgentError::PluginConfig {
        path: PathBuf::from(path),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
    if !v.is_object() {
        return Err(err("not a JSON object".into()));
    }
    Ok(v)
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

fn seconds(flag: &str, v: &str) -> Result<Duration, AgentError> {
    match v.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(AgentError::Usage(format!(
            "{flag} \"{v}\" is not a number of seconds (0 < s <= 86400)"
        ))),
    }
}

/// Parses the agent's arguments.
pub fn parse_options(args: &[String]) -> Result<Options, AgentError> {
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
    };
    let (mut state_dir, mut group, mut node) = (None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| AgentError::Usage(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--plugin-config" => {
                let v = plugin_config(&val()?)?;
                if let Some(d) = v
                    .get("stateDir")
                    .and_then(|d| d.as_str())
                    .filter(|d| !d.is_empty())
                {
                    o.state_dir = PathBuf::from(d);
                }
                if let Some(g) = v.get("nflogGroup").and_then(|g| g.as_u64()) {
                    o.nflog_group = u16::try_from(g).map_err(|_| {
                        AgentError::Usage(format!("plugin config nflogGroup {g} is out of range"))
                    })?;
                }
            }
            "--state-dir" => state_dir = Some(PathBuf::from(val()?)),
            "--nflog-group" => {
                let v = val()?;
                group = Some(v.parse::<u16>().map_err(|_| {
                    AgentError::Usage(format!("--nflog-group \"{v}\" is not 0-65535"))
                })?);
            }
            "--node-name" => node = Some(val()?),
            "--metrics-address" => {
                let v = val()?;
                o.metrics_address = if v == "off" || v.is_empty() {
                    None
                } else {
                    Some(v)
                };
            }
            "--interval" => o.interval = seconds(a, &val()?)?,
            "--flush-interval" => o.flush_interval = seconds(a, &val()?)?,
            "--repair" => o.repair = true,
            "--log-file" => o.log_file = Some(PathBuf::from(val()?)),
            "--log-level" => {
                let v = val()?;
                o.log_level = v.parse().map_err(|_| {
                    AgentError::Usage(format!(
                        "--log-level \"{v}\" is not error, warn, info, debug or trace"
                    ))
                })?;
            }
            "-h" | "--help" => return Err(AgentError::Usage("help".into())),
            other => return Err(AgentError::Usage(format!("unknown argument \"{other}\""))),
        }
    }
    if let Some(d) = state_dir {
        o.state_dir = d;
    }
    if let Some(g) = group {
        o.nflog_group = g;
    }
    o.node = node.unwrap_or_else(default_node_name);
    Ok(o)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
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

/// Runs the agent until SIGTERM or SIGINT.
pub fn run_agent(o: &Options) -> Result<(), AgentError> {
    let shared = metrics::Shared::new(o.state_dir.clone(), o.node.clone());
    let listener = o
        .metrics_address
        .as_deref()
        .map(metrics::bind)
        .transpose()?;
    let mut sub = nflog::Subscription::bind(o.nflog_group)?;
    install_signal_handlers();

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
    while !STOP.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= next_reconcile {
            let events = rec.pass(&mut kernel, &shared, &reconcile::device_exists);
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
                    match agg.add(&mut dir, p, SystemTime::now(), &reconcile::ifindex) {
                        Ok(v) => shared.with(|e| *e.logged.entry(v.as_str()).or_default() += 1),
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

/// Entry point of the `agent` subcommand; `args` excludes the program and subcommand names.
pub fn run(args: &[String]) -> ExitCode {
    let o = match parse_options(args) {
        Ok(o) => o,
        Err(AgentError::Usage(m)) if m == "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("egress-guard agent: {e}");
            return ExitCode::from(2);
        }
    };
    crate::logging::init(o.log_file.as_deref(), o.log_level);
    match run_agent(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egress-guard agent: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
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
        let _ = std::fs::remove_file(&cfg);
        for bad in [
            &["--interval", "0"][..],
            &["--nflog-group", "70000"],
            &["--bogus"],
            &["--state-dir"],
        ] {
            assert!(
                matches!(parse_options(&args(bad)), Err(AgentError::Usage(_))),
                "{bad:?}"
            );
        }
    }
}
