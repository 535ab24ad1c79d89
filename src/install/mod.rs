//! `egress-guard install`: copies the binary to the host's CNI bin dir, chains the plugin as the
//! last entry of the conflist the runtime uses, keeps it chained while the primary CNI rewrites
//! its file, writes the API-fallback kubeconfig and removes the node's not-ready taint once
//! chained. It must not touch any other plugin's fields nor any file but the primary conflist,
//! its own binary and its own kubeconfig.
//!
//! Flags and their defaults: `crate::cli::INSTALL` (`egress-guard install --help`).

mod conflist;
mod fsutil;
mod kubeconfig;
mod node;
mod target;
mod watch;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::cli::{CliError, Parsed};

pub use conflist::{find_primary, ANNOTATIONS_CAPABILITY, PLUGIN_TYPE};
pub use fsutil::{atomic_write, temp_path};
pub use kubeconfig::Source as KubeconfigSource;
pub use node::{taint_patch, NOT_READY_TAINT};
pub use target::ChainTarget;

/// Errors of the installer; each names the file, flag or API action at fault.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid json; left unchanged")]
    ParseConflist {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is not a valid network configuration ({problem}); left unchanged")]
    InvalidConflist { path: PathBuf, problem: String },
    #[error("plugin config {path} is not valid json")]
    ParsePluginConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("plugin config {path}: {problem}")]
    PluginConfig { path: PathBuf, problem: String },
    #[error("{path} is Multus's configuration, but {problem}")]
    Multus { path: PathBuf, problem: String },
    #[error("no network configuration (.conf, .conflist, .json) in {dir}")]
    NoConflist { dir: PathBuf },
    #[error("cannot read service-account token {path}")]
    Token {
        path: PathBuf,
        #[source]
        source: Box<crate::kube::KubeError>,
    },
    #[error("kubernetes api: cannot {action}")]
    Kube {
        action: &'static str,
        #[source]
        source: Box<crate::kube::KubeError>,
    },
}

/// Installer settings (see the module doc for the flags).
#[derive(Debug, Clone)]
pub struct Options {
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub plugin_config: PathBuf,
    /// Whether `plugin_config` was given explicitly (then it must exist).
    pub plugin_config_required: bool,
    pub binary: PathBuf,
    pub host_root: PathBuf,
    pub node_name: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub api_server: Option<String>,
    pub service_account_dir: PathBuf,
    pub log_level: log::LevelFilter,
    pub uninstall_on_exit: bool,
    pub mode: Action,
    /// Quiet time after the last event before re-chaining.
    pub debounce: Duration,
    /// Longest a burst of events can delay re-chaining.
    pub max_delay: Duration,
    /// Periodic full check (binary, conflist, kubeconfig, taint) even without events.
    pub resync: Duration,
}

/// What `install` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Watch,
    Once,
    Check,
    Uninstall,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cni_conf_dir: PathBuf::from("/host/etc/cni/net.d"),
            cni_bin_dir: PathBuf::from("/host/opt/cni/bin"),
            plugin_config: PathBuf::from("/etc/egress-guard/plugin.json"),
            plugin_config_required: false,
            binary: PathBuf::from("/proc/self/exe"),
            host_root: PathBuf::from("/host"),
            node_name: std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()),
            kubeconfig: None,
            api_server: None,
            service_account_dir: PathBuf::from(crate::kube::SERVICE_ACCOUNT_DIR),
            log_level: log::LevelFilter::Info,
            uninstall_on_exit: false,
            mode: Action::Watch,
            debounce: Duration::from_millis(200),
            max_delay: Duration::from_millis(800),
            resync: Duration::from_secs(10),
        }
    }
}

impl Options {
    /// The installer's options from its flags.
    pub fn from_flags(p: &Parsed) -> Result<Options, CliError> {
        let mut o = Options::default();
        for (flag, v) in p.iter() {
            match flag {
                "cni-conf-dir" => o.cni_conf_dir = v.into(),
                "cni-bin-dir" => o.cni_bin_dir = v.into(),
                "plugin-config" => {
                    o.plugin_config = v.into();
                    o.plugin_config_required = true;
                }
                "binary" => o.binary = v.into(),
                "host-root" => o.host_root = v.into(),
                "node-name" => o.node_name = Some(v.to_string()),
                "kubeconfig" => o.kubeconfig = Some(v.into()),
                "api-server" => o.api_server = Some(v.to_string()),
                "service-account-dir" => o.service_account_dir = v.into(),
                "log-level" => o.log_level = crate::cli::log_level(flag, v)?,
                "uninstall-on-exit" => o.uninstall_on_exit = true,
                "once" | "check" | "uninstall" => {
                    if o.mode != Action::Watch {
                        return Err(CliError::usage(
                            "--once, --check and --uninstall exclude each other",
                        ));
                    }
                    o.mode = match flag {
                        "once" => Action::Once,
                        "check" => Action::Check,
                        _ => Action::Uninstall,
                    };
                }
                other => return Err(CliError::unhandled(other)),
            }
        }
        Ok(o)
    }

    /// Parses the flags (program and subcommand names excluded), as `install` does.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Options, CliError> {
        let p = crate::cli::INSTALL.parse(args.iter().map(|a| a.as_ref().to_string()))?;
        Options::from_flags(&p)
    }
}

/// A parsed network configuration file.
type Conflist = Map<String, Value>;

/// Result of one reconciliation of the conf dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainChange {
    /// Already chained; nothing written.
    Unchanged(PathBuf),
    /// The entry was added or updated in place.
    Chained(PathBuf),
    /// A single-plugin file was replaced by a `.conflist`.
    Converted { from: PathBuf, to: PathBuf },
}

impl ChainChange {
    /// Whether the reconciliation wrote anything.
    pub fn wrote(&self) -> bool {
        !matches!(self, ChainChange::Unchanged(_))
    }
}

/// The installer's state: options, the entry to chain and the loop's bookkeeping.
pub struct Installer {
    opts: Options,
    entry: Map<String, Value>,
    /// The plugin config as last read (`None`: not found), to notice a change.
    config_bytes: Option<Vec<u8>>,
    last_error: Option<String>,
    recent_writes: VecDeque<Instant>,
    backoff: Duration,
}

/// More writes than this within [`WRITE_WINDOW`] means another writer fights us: back off.
const MAX_WRITES: usize = 5;
const WRITE_WINDOW: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Installer {
    /// Loads the plugin config and builds the entry to chain; an invalid config is an error.
    pub fn new(opts: Options) -> Result<Installer, InstallError> {
        let config_bytes = fsutil::read_optional(&opts.plugin_config)?;
        let entry = entry_for(&opts, config_bytes.as_deref())?;
        Ok(Installer {
            opts,
            entry,
            config_bytes,
            last_error: None,
            recent_writes: VecDeque::new(),
            backoff: Duration::ZERO,
        })
    }

    /// Reads the plugin config again. When it changed and is valid, it becomes the entry to
    /// chain (`Ok(true)`); when it changed and is invalid, the entry chained so far stays and the
    /// error says why (once per change of the file).
    pub fn reload_config(&mut self) -> Result<bool, InstallError> {
        let bytes = fsutil::read_optional(&self.opts.plugin_config)?;
        if bytes == self.config_bytes {
            return Ok(false);
        }
        self.config_bytes = bytes;
        let entry = entry_for(&self.opts, self.config_bytes.as_deref())?;
        let changed = entry != self.entry;
        self.entry = entry;
        Ok(changed)
    }

    /// The conflist entry this installer chains.
    pub fn entry(&self) -> &Map<String, Value> {
        &self.entry
    }

    fn binary_dest(&self) -> PathBuf {
        self.opts.cni_bin_dir.join(PLUGIN_TYPE)
    }

    /// Copies the binary into the CNI bin dir when it differs. Returns whether it wrote.
    pub fn install_binary(&self) -> Result<bool, InstallError> {
        fsutil::install_file(&self.opts.binary, &self.binary_dest())
    }

    /// The file to chain into: the primary conflist, or Multus's cluster network.
    pub fn target(&self) -> Result<ChainTarget, InstallError> {
        let dir = &self.opts.cni_conf_dir;
        target::find(dir)?.ok_or_else(|| InstallError::NoConflist { dir: dir.clone() })
    }

    /// Chains the entry into the target conflist if it is not already there, and removes
    /// entries this installer left in files it no longer chains.
    pub fn reconcile(&self) -> Result<ChainChange, InstallError> {
        let target = self.target()?;
        let change = self.chain_into(&target.path)?;
        let keep = match &change {
            ChainChange::Unchanged(p) | ChainChange::Chained(p) => p,
            ChainChange::Converted { to, .. } => to,
        };
        self.remove_stale(keep)?;
        Ok(change)
    }

    /// Removes egress-guard entries from every conflist of the conf dir but `keep`.
    fn remove_stale(&self, keep: &Path) -> Result<(), InstallError> {
        for path in self.unchain_files(Some(keep))? {
            log::info!(
                "removed a stale egress-guard entry from {} (chained into {})",
                path.display(),
                keep.display()
            );
        }
        Ok(())
    }

    /// The conflists of the conf dir, except `keep`, that hold an egress-guard entry, each
    /// with its content without them. Files that do not parse were never ours to change.
    fn with_entries(&self, keep: Option<&Path>) -> Result<Vec<(PathBuf, Conflist)>, InstallError> {
        let mut out = Vec::new();
        for path in conflist::config_files(&self.opts.cni_conf_dir)? {
            if Some(path.as_path()) == keep || conflist::kind_of(&path) != conflist::Kind::List {
                continue;
            }
            let Some(bytes) = fsutil::read_optional(&path)? else {
                continue;
            };
            let Ok(conf) = conflist::parse(&path, &bytes) else {
                continue;
            };
            if let Some(list) = conflist::unchained(&conf) {
                out.push((path, list));
            }
        }
        Ok(out)
    }

    /// Removes egress-guard entries from every conflist of the conf dir except `keep`;
    /// returns the files written.
    fn unchain_files(&self, keep: Option<&Path>) -> Result<Vec<PathBuf>, InstallError> {
        let mut written = Vec::new();
        for (path, list) in self.with_entries(keep)? {
            fsutil::atomic_write(
                &path,
                &conflist::to_bytes(&list),
                fsutil::mode_of(&path, 0o644),
            )?;
            written.push(path);
        }
        Ok(written)
    }

    fn chain_into(&self, path: &Path) -> Result<ChainChange, InstallError> {
        let path = path.to_path_buf();
        let bytes = std::fs::read(&path).map_err(|source| InstallError::Read {
            path: path.clone(),
            source,
        })?;
        let conf = conflist::parse(&path, &bytes)?;
        let kind = conflist::kind_of(&path);
        if kind == conflist::Kind::List && conflist::is_chained(&conf, &self.entry) {
            return Ok(ChainChange::Unchanged(path));
        }
        if let Some(v) = conf.get("cniVersion").and_then(Value::as_str) {
            if !crate::cni::SUPPORTED_VERSIONS.contains(&v) {
                log::warn!(
                    "{} has cniVersion {v}; egress-guard supports {:?}",
                    path.display(),
                    crate::cni::SUPPORTED_VERSIONS
                );
            }
        }
        let list = conflist::chained(&conf, kind, &self.entry);
        let dest = conflist::list_path(&path);
        let mode = fsutil::mode_of(&path, 0o644);
        fsutil::atomic_write(&dest, &conflist::to_bytes(&list), mode)?;
        if dest == path {
            return Ok(ChainChange::Chained(path));
        }
        // The .conflist sorts right after the .conf it replaces; drop the .conf so it is first.
        fsutil::remove_if_exists(&path)?;
        Ok(ChainChange::Converted {
            from: path,
            to: dest,
        })
    }

    /// Whether the primary conflist holds exactly our entry, last, and the binary is installed.
    pub fn check(&self) -> Result<bool, InstallError> {
        Ok(self.not_ready_reason()?.is_none())
    }

    /// Why the node is not ready for guarded pods, or `None` when it is: the primary conflist
    /// holds exactly the entry of the current plugin config, last, and the binary is installed.
    pub fn not_ready_reason(&self) -> Result<Option<String>, InstallError> {
        let dir = &self.opts.cni_conf_dir;
        let target = match target::find(dir) {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Ok(Some(format!(
                    "no network configuration (.conf, .conflist, .json) in {}",
                    dir.display()
                )))
            }
            Err(e @ InstallError::Multus { .. }) => return Ok(Some(e.to_string())),
            Err(e) => return Err(e),
        };
        let path = target.path.clone();
        if conflist::kind_of(&path) != conflist::Kind::List {
            return Ok(Some(format!(
                "{} is a single-plugin file: egress-guard is not chained into it yet",
                path.display()
            )));
        }
        let bytes = std::fs::read(&path).map_err(|source| InstallError::Read {
            path: path.clone(),
            source,
        })?;
        let conf = conflist::parse(&path, &bytes)?;
        if !conflist::has_entry(&conf) {
            return Ok(Some(format!(
                "{} has no egress-guard entry",
                path.display()
            )));
        }
        if !conflist::is_chained(&conf, &self.entry) {
            return Ok(Some(format!(
                "the egress-guard entry in {} is not last or differs from the plugin config {} \
                 (not re-chained yet)",
                path.display(),
                self.opts.plugin_config.display()
            )));
        }
        if let (Some(multus), true) = (&target.multus, target.inline) {
            if !target::inline_delegate_chained(multus, &self.entry) {
                return Ok(Some(format!(
                    "{} (Multus) holds its cluster network inline and that copy does not end \
                     with the egress-guard entry chained into {}: Multus regenerates it only \
                     when it generates its config (--multus-conf-file=auto)",
                    multus.display(),
                    path.display()
                )));
            }
        }
        if let Some((other, _)) = self.with_entries(Some(&path))?.first() {
            return Ok(Some(format!(
                "{} still holds a stale egress-guard entry",
                other.display()
            )));
        }
        let bin = self.binary_dest();
        if !bin.is_file() || fsutil::mode_of(&bin, 0) & 0o111 == 0 {
            return Ok(Some(format!(
                "{} is missing or not executable",
                bin.display()
            )));
        }
        Ok(None)
    }

    /// Removes our entry from every network configuration in the conf dir, the plugin's
    /// kubeconfig and the binary. Running pods keep their tables: removing them would unguard
    /// pods that started guarded (README, "Uninstall").
    pub fn uninstall(&self) -> Result<(), InstallError> {
        for path in self.unchain_files(None)? {
            log::info!("removed egress-guard from {}", path.display());
        }
        if let Some(kubeconfig) = self.kubeconfig_dest() {
            if fsutil::remove_if_exists(&kubeconfig)? {
                log::info!("removed {}", kubeconfig.display());
            }
        }
        if fsutil::remove_if_exists(&self.binary_dest())? {
            log::info!("removed {}", self.binary_dest().display());
        }
        Ok(())
    }

    /// Host path of the plugin's kubeconfig as mounted here, if the config asks for one.
    fn kubeconfig_dest(&self) -> Option<PathBuf> {
        let host_path = self.entry.get("kubeconfig")?.as_str()?;
        let relative = Path::new(host_path)
            .strip_prefix("/")
            .unwrap_or(Path::new(host_path));
        Some(self.opts.host_root.join(relative))
    }

    /// Writes or refreshes the plugin's kubeconfig when the config names one and this runs in a
    /// cluster. Returns whether it wrote.
    pub fn sync_kubeconfig(&self) -> Result<bool, InstallError> {
        let Some(dest) = self.kubeconfig_dest() else {
            return Ok(false);
        };
        let source = match (
            &self.opts.api_server,
            KubeconfigSource::from_env(&self.opts.service_account_dir),
        ) {
            (Some(server), _) => KubeconfigSource {
                server: server.clone(),
                sa_dir: self.opts.service_account_dir.clone(),
            },
            (None, Some(s)) => s,
            (None, None) => return Ok(false),
        };
        kubeconfig::sync(&source, &dest)
    }

    fn kube_client(&self) -> Result<crate::kube::Client, InstallError> {
        let timeout = Duration::from_secs(10);
        let client = match &self.opts.kubeconfig {
            Some(path) => crate::kube::Client::from_kubeconfig(path, timeout),
            None => crate::kube::Client::in_cluster_at(
                &self.opts.service_account_dir,
                &std::env::var("KUBERNETES_SERVICE_HOST").unwrap_or_default(),
                &std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_default(),
                timeout,
            ),
        };
        client.map_err(|e| InstallError::Kube {
            action: "connect",
            source: Box::new(e),
        })
    }

    /// Removes the not-ready taint from this node (`--node-name`). Returns whether the node is
    /// now untainted; `Ok(true)` without a node name (nothing to do).
    pub fn mark_node_ready(&self) -> Result<bool, InstallError> {
        let Some(node_name) = &self.opts.node_name else {
            return Ok(true);
        };
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        if self.opts.kubeconfig.is_none() && !in_cluster {
            log::info!("not in a cluster and no --kubeconfig: node taint left alone");
            return Ok(true);
        }
        if node::mark_ready(&self.kube_client()?, node_name)? {
            log::info!("removed taint {NOT_READY_TAINT}:NoSchedule from node {node_name}");
        }
        Ok(true)
    }

    /// Logs an error once until it changes or a success clears it (no floods).
    fn report(&mut self, result: Result<ChainChange, InstallError>) -> Option<ChainChange> {
        match result {
            Ok(outcome) => {
                match &outcome {
                    ChainChange::Unchanged(p) => log::debug!("{} already chained", p.display()),
                    ChainChange::Chained(p) => {
                        log::info!("chained egress-guard into {}", p.display())
                    }
                    ChainChange::Converted { from, to } => {
                        log::info!(
                            "chained egress-guard: {} replaced by {}",
                            from.display(),
                            to.display()
                        )
                    }
                }
                if self.last_error.take().is_some() {
                    log::info!("conf dir is healthy again");
                }
                Some(outcome)
            }
            Err(e) => {
                let text = error_chain(&e);
                if self.last_error.as_deref() != Some(&text) {
                    log::error!("{text}");
                    self.last_error = Some(text);
                }
                None
            }
        }
    }

    /// Installs, then keeps the plugin chained until `stop` is set (or SIGTERM when
    /// [`crate::signal::catch_termination`] was called). Events are debounced; a writer that keeps
    /// undoing the chain is answered with exponential backoff rather than a write loop.
    pub fn watch(&mut self, stop: &AtomicBool) -> Result<(), InstallError> {
        let mut dw = watch::DirWatch::new(&self.opts.cni_conf_dir)?;
        let mut node_ready = false;
        let mut dirty_since: Option<Instant> = Some(Instant::now());
        let mut last_event = Instant::now();
        let mut next_resync = Instant::now();
        let mut not_before = Instant::now();
        let mut watch_error_logged = false;
        while !stop.load(Ordering::SeqCst) && !crate::signal::termination_requested() {
            match dw.ensure() {
                Ok(true) => {
                    // Anything may have happened while the watch was missing.
                    dirty_since.get_or_insert(Instant::now());
                    watch_error_logged = false;
                }
                Ok(false) => {}
                Err(e) => {
                    if !watch_error_logged {
                        log::warn!("{}; retrying", error_chain(&e));
                        watch_error_logged = true;
                    }
                }
            }
            match self.reload_config() {
                Ok(true) => {
                    log::info!(
                        "plugin config {} changed: re-chaining",
                        self.opts.plugin_config.display()
                    );
                    dirty_since.get_or_insert(Instant::now());
                }
                Ok(false) => {}
                Err(e) => log::error!("{}; the entry chained before stays", error_chain(&e)),
            }
            let now = Instant::now();
            if now >= next_resync {
                next_resync = now + self.opts.resync;
                dirty_since.get_or_insert(now);
                match self.install_binary() {
                    Ok(true) => log::info!("installed {}", self.binary_dest().display()),
                    Ok(false) => {}
                    Err(e) => log::error!("{}", error_chain(&e)),
                }
                match self.sync_kubeconfig() {
                    Ok(true) => log::info!("wrote the plugin kubeconfig"),
                    Ok(false) => {}
                    Err(e) => log::error!("{}", error_chain(&e)),
                }
            }
            if let Some(since) = dirty_since {
                let quiet = now.duration_since(last_event) >= self.opts.debounce;
                let overdue = now.duration_since(since) >= self.opts.max_delay;
                if (quiet || overdue) && now >= not_before {
                    dirty_since = None;
                    let result = self.reconcile();
                    if let Some(outcome) = self.report(result) {
                        if outcome.wrote() {
                            not_before = self.note_write(now);
                        }
                        if !node_ready {
                            match self.mark_node_ready() {
                                Ok(ready) => node_ready = ready,
                                Err(e) => log::warn!("{}; will retry", error_chain(&e)),
                            }
                        }
                    }
                }
            }
            let timeout = if dirty_since.is_some() {
                Duration::from_millis(50)
            } else {
                next_resync
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(500))
            };
            match dw.wait(timeout) {
                Ok(true) => {
                    last_event = Instant::now();
                    dirty_since.get_or_insert(last_event);
                }
                Ok(false) => {}
                Err(e) => {
                    log::warn!("{}", error_chain(&e));
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        Ok(())
    }

    /// Records a write; returns when the next write may happen.
    fn note_write(&mut self, now: Instant) -> Instant {
        while self
            .recent_writes
            .front()
            .is_some_and(|t| now.duration_since(*t) > WRITE_WINDOW)
        {
            self.recent_writes.pop_front();
        }
        self.recent_writes.push_back(now);
        if self.recent_writes.len() <= MAX_WRITES {
            self.backoff = Duration::ZERO;
            return now;
        }
        self.backoff = (self.backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
        log::warn!(
            "the conflist was rewritten {} times in {:?}: another writer undoes the chain; waiting {:?}",
            self.recent_writes.len(),
            WRITE_WINDOW,
            self.backoff
        );
        now + self.backoff
    }
}

/// The entry to chain for a plugin config (`None`: the file does not exist), validated by the
/// plugin's own parser, so that a config the plugin would refuse is never chained.
fn entry_for(opts: &Options, bytes: Option<&[u8]>) -> Result<Map<String, Value>, InstallError> {
    let path = &opts.plugin_config;
    let config = match bytes {
        Some(bytes) => {
            serde_json::from_slice(bytes).map_err(|source| InstallError::ParsePluginConfig {
                path: path.clone(),
                source,
            })?
        }
        None if opts.plugin_config_required => {
            return Err(InstallError::Read {
                path: path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        }
        None => {
            log::warn!(
                "plugin config {} not found; chaining with defaults",
                path.display()
            );
            Value::Object(Map::new())
        }
    };
    let entry = conflist::entry_from_config(path, config)?;
    let invalid = |e: crate::cni::config::ConfigError| InstallError::PluginConfig {
        path: path.clone(),
        problem: format!("{e}; not chained"),
    };
    let conf = crate::cni::NetConf::parse(&conflist::to_bytes(&entry)).map_err(invalid)?;
    conf.check_annotation_source().map_err(invalid)?;
    Ok(entry)
}

/// An error with its sources, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The `install` subcommand.
pub fn run(p: &Parsed) -> Result<ExitCode, CliError> {
    let opts = Options::from_flags(p)?;
    crate::logging::init(crate::logging::Sink::Stdout, opts.log_level);
    Ok(match run_mode(opts) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{}", error_chain(&e));
            ExitCode::FAILURE
        }
    })
}

fn run_mode(opts: Options) -> Result<ExitCode, InstallError> {
    let mode = opts.mode;
    let uninstall_on_exit = opts.uninstall_on_exit;
    if mode == Action::Check {
        // A readiness probe: its output is the message the kubelet shows, so plain text.
        let reason = match Installer::new(opts).and_then(|i| i.not_ready_reason()) {
            Ok(None) => return Ok(ExitCode::SUCCESS),
            Ok(Some(reason)) => reason,
            Err(e) => error_chain(&e),
        };
        println!("not ready: {reason}");
        return Ok(ExitCode::FAILURE);
    }
    let mut installer = Installer::new(opts)?;
    if mode == Action::Uninstall {
        installer.uninstall()?;
        return Ok(ExitCode::SUCCESS);
    }
    crate::signal::catch_termination().map_err(|source| InstallError::Os {
        what: "sigaction",
        source,
    })?;
    if installer.install_binary()? {
        log::info!("installed {}", installer.binary_dest().display());
    }
    if installer.sync_kubeconfig()? {
        log::info!("wrote the plugin kubeconfig");
    }
    if mode == Action::Once {
        let outcome = installer.reconcile()?;
        installer.report(Ok(outcome));
        installer.mark_node_ready()?;
        return Ok(ExitCode::SUCCESS);
    }
    log::info!("watching {}", installer.opts.cni_conf_dir.display());
    installer.watch(&AtomicBool::new(false))?;
    log::info!("terminating");
    if uninstall_on_exit {
        installer.uninstall()?;
    } else {
        log::info!("leaving egress-guard chained (pods stay guarded during an upgrade)");
    }
    Ok(ExitCode::SUCCESS)
}
