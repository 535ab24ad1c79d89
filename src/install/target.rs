//! Which network configuration egress-guard chains into: the one the runtime uses (libcni's
//! first file), or, when that file is Multus's, the cluster network Multus delegates to. Multus
//! runs its delegate's plugins itself, so an entry chained after `multus` would never run for
//! the pod's cluster interface.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::conflist::{self, config_files, Kind};
use super::InstallError;

/// Plugin types of Multus's thin plugin and of its thick shim.
const MULTUS_TYPES: [&str; 2] = ["multus", "multus-shim"];

/// Where the entry goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainTarget {
    /// The file written.
    pub path: PathBuf,
    /// Multus's own file when the runtime runs Multus, which delegates to `path`.
    pub multus: Option<PathBuf>,
    /// Whether Multus holds a copy of the delegate inline (`delegates`), which it regenerates
    /// from `path` only when its config is generated (`--multus-conf-file=auto`).
    pub inline: bool,
}

fn read(path: &Path) -> Option<Map<String, Value>> {
    let bytes = std::fs::read(path).ok()?;
    conflist::parse(path, &bytes).ok()
}

/// The plugin type the runtime runs first for a parsed file.
fn first_type(conf: &Map<String, Value>, kind: Kind) -> Option<&str> {
    match kind {
        Kind::Single => conf.get("type")?.as_str(),
        Kind::List => conf.get("plugins")?.get(0)?.get("type")?.as_str(),
    }
}

/// The Multus config object of a parsed file (the plugin itself for a list).
fn multus_config(conf: &Map<String, Value>, kind: Kind) -> Option<&Map<String, Value>> {
    if !first_type(conf, kind).is_some_and(|t| MULTUS_TYPES.contains(&t)) {
        return None;
    }
    match kind {
        Kind::Single => Some(conf),
        Kind::List => conf.get("plugins")?.get(0)?.as_object(),
    }
}

/// The file to chain into, or `None` when the directory holds no network configuration.
pub fn find(dir: &Path) -> Result<Option<ChainTarget>, InstallError> {
    let files = config_files(dir)?;
    let Some(primary) = files.first() else {
        return Ok(None);
    };
    let Some(conf) = read(primary) else {
        // The caller reads it again and reports why it does not parse.
        return Ok(Some(ChainTarget {
            path: primary.clone(),
            multus: None,
            inline: false,
        }));
    };
    let Some(multus) = multus_config(&conf, conflist::kind_of(primary)) else {
        return Ok(Some(ChainTarget {
            path: primary.clone(),
            multus: None,
            inline: false,
        }));
    };
    let problem = |problem: String| InstallError::Multus {
        path: primary.clone(),
        problem,
    };
    // Candidates: every other file that is not Multus's.
    let others: Vec<(PathBuf, Option<Map<String, Value>>)> = files[1..]
        .iter()
        .map(|p| (p.clone(), read(p)))
        .filter(|(p, c)| {
            c.as_ref()
                .is_none_or(|c| multus_config(c, conflist::kind_of(p)).is_none())
        })
        .collect();
    let named = |name: &str| {
        others
            .iter()
            .find(|(_, c)| c.as_ref().and_then(|c| c.get("name")?.as_str()) == Some(name))
            .map(|(p, _)| p.clone())
    };
    let target = |path: PathBuf, inline: bool| ChainTarget {
        path,
        multus: Some(primary.clone()),
        inline,
    };
    if let Some(cluster) = multus.get("clusterNetwork").and_then(Value::as_str) {
        let found = if cluster.contains('/') {
            let base = Path::new(cluster).file_name();
            others
                .iter()
                .find(|(p, _)| p.file_name() == base)
                .map(|(p, _)| p.clone())
        } else {
            named(cluster)
        };
        return match found {
            Some(p) => Ok(Some(target(p, false))),
            None => Err(problem(format!(
                "its clusterNetwork \"{cluster}\" is no network configuration in {}; egress-guard \
                 chains into Multus's cluster network, so that file must be in this directory",
                dir.display()
            ))),
        };
    }
    if let Some(Value::Array(delegates)) = multus.get("delegates") {
        if let Some(first) = delegates.first() {
            let name = first.get("name").and_then(Value::as_str).unwrap_or("");
            return match named(name) {
                Some(p) => Ok(Some(target(p, true))),
                None => Err(problem(format!(
                    "it holds its cluster network inline (\"delegates\", name \"{name}\") and no \
                     file in {} has that name; egress-guard cannot chain into an inline \
                     delegate: let Multus generate its config (--multus-conf-file=auto) or set \
                     \"clusterNetwork\" to the cluster network's conflist",
                    dir.display()
                ))),
            };
        }
    }
    // The thick plugin's daemon, like the generated config, uses the next file.
    match others.first() {
        Some((p, _)) => Ok(Some(target(p.clone(), false))),
        None => Err(problem(format!(
            "no other network configuration in {} for Multus to delegate to",
            dir.display()
        ))),
    }
}

/// For an inline delegate: whether Multus's copy ends with `entry`.
pub fn inline_delegate_chained(multus_file: &Path, entry: &Map<String, Value>) -> bool {
    let Some(conf) = read(multus_file) else {
        return false;
    };
    let Some(multus) = multus_config(&conf, conflist::kind_of(multus_file)) else {
        return false;
    };
    multus
        .get("delegates")
        .and_then(|d| d.get(0))
        .and_then(Value::as_object)
        .is_some_and(|d| conflist::is_chained(d, entry))
}
