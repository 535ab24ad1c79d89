//! The runtime's conflist: which file libcni uses, and adding/removing the egress-guard entry.
//! Pure JSON transformations plus directory listing; writing is done by the caller.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::InstallError;

/// CNI plugin type (and binary name).
pub const PLUGIN_TYPE: &str = "egress-guard";
/// Capability that makes containerd and CRI-O pass pod annotations in `runtimeConfig`.
pub const ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";
/// Extensions libcni's `ConfFiles` considers, as containerd and CRI-O call it.
const EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// Whether a file holds a list (`.conflist`) or a single plugin (`.conf`, `.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    List,
    Single,
}

/// libcni's rule: among the directory's regular files (or links to them) ending in `.conf`,
/// `.conflist` or `.json`, the first in lexical (byte) order is the network the runtime uses.
pub fn find_primary(dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    Ok(config_files(dir)?.into_iter().next())
}

/// The directory's network configuration files in libcni's order.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let read_dir = |source| InstallError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let entry = entry.map_err(read_dir)?;
        let path = entry.path();
        let ext_ok = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e));
        // Like Go's DirEntry.IsDir: a symlink counts as a file.
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if ext_ok && !is_dir {
            names.push(entry.file_name());
        }
    }
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// The kind libcni gives a file by its extension.
pub fn kind_of(path: &Path) -> Kind {
    if path.extension().is_some_and(|e| e == "conflist") {
        Kind::List
    } else {
        Kind::Single
    }
}

/// Parses a network configuration file, checking what the runtime would check.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Map<String, Value>, InstallError> {
    let invalid = |problem: &str| InstallError::InvalidConflist {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    let value: Value =
        serde_json::from_slice(bytes).map_err(|source| InstallError::ParseConflist {
            path: path.to_path_buf(),
            source,
        })?;
    let Value::Object(obj) = value else {
        return Err(invalid("not a json object"));
    };
    match kind_of(path) {
        Kind::List => match obj.get("plugins") {
            Some(Value::Array(plugins)) if !plugins.is_empty() => {
                if plugins.iter().any(|p| !p.is_object()) {
                    return Err(invalid("a plugins entry is not an object"));
                }
            }
            Some(Value::Array(_)) => return Err(invalid("plugins is empty")),
            _ => return Err(invalid("no plugins list")),
        },
        Kind::Single => {
            let plugin_type = obj.get("type").and_then(Value::as_str).unwrap_or_default();
            if plugin_type.is_empty() {
                return Err(invalid(
                    "no plugin type (a list of plugins must be in a .conflist file)",
                ));
            }
        }
    }
    Ok(obj)
}

/// Builds the egress-guard entry from the operator's plugin config (a JSON object):
/// `type` is set, the annotations capability is forced on, everything else is kept.
pub fn entry_from_config(source: &Path, config: Value) -> Result<Map<String, Value>, InstallError> {
    let invalid = |problem: String| InstallError::PluginConfig {
        path: source.to_path_buf(),
        problem,
    };
    let Value::Object(mut entry) = config else {
        return Err(invalid("not a json object".to_string()));
    };
    match entry.get("type") {
        None => {}
        Some(Value::String(t)) if t == PLUGIN_TYPE => {}
        Some(other) => {
            return Err(invalid(format!(
                "type is {other}, expected \"{PLUGIN_TYPE}\""
            )))
        }
    }
    entry.insert("type".to_string(), Value::String(PLUGIN_TYPE.to_string()));
    let caps = entry
        .entry("capabilities")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(caps) = caps else {
        return Err(invalid(format!(
            "capabilities is {caps}, expected an object"
        )));
    };
    caps.insert(ANNOTATIONS_CAPABILITY.to_string(), Value::Bool(true));
    Ok(entry)
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// The conflist with `entry` as its last plugin and no other egress-guard entry. A single
/// plugin config becomes a list, as libcni's `ConfListFromConf` does (the plugin kept whole).
pub fn chained(
    conf: &Map<String, Value>,
    kind: Kind,
    entry: &Map<String, Value>,
) -> Map<String, Value> {
    let mut list = match kind {
        Kind::List => conf.clone(),
        Kind::Single => {
            let mut list = Map::new();
            for key in ["cniVersion", "name"] {
                if let Some(v) = conf.get(key) {
                    list.insert(key.to_string(), v.clone());
                }
            }
            list.insert(
                "plugins".to_string(),
                Value::Array(vec![Value::Object(conf.clone())]),
            );
            list
        }
    };
    if let Some(Value::Array(plugins)) = list.get_mut("plugins") {
        plugins.retain(|p| !is_ours(p));
        plugins.push(Value::Object(entry.clone()));
    }
    list
}

/// Whether `conf` (a parsed `.conflist`) already ends with exactly `entry` and holds no other
/// egress-guard entry.
pub fn is_chained(conf: &Map<String, Value>, entry: &Map<String, Value>) -> bool {
    match conf.get("plugins") {
        Some(Value::Array(plugins)) => {
            plugins.last().and_then(Value::as_object) == Some(entry)
                && plugins.iter().filter(|p| is_ours(p)).count() == 1
        }
        _ => false,
    }
}

/// Whether any egress-guard entry is present (for `--check` with a config that changed).
pub fn has_entry(conf: &Map<String, Value>) -> bool {
    match conf.get("plugins") {
        Some(Value::Array(plugins)) => plugins.iter().any(is_ours),
        _ => false,
    }
}

/// The conflist without egress-guard entries, or `None` if there were none.
pub fn unchained(conf: &Map<String, Value>) -> Option<Map<String, Value>> {
    if !has_entry(conf) {
        return None;
    }
    let mut list = conf.clone();
    if let Some(Value::Array(plugins)) = list.get_mut("plugins") {
        plugins.retain(|p| !is_ours(p));
    }
    Some(list)
}

/// Serialised form written to disk: pretty JSON with a trailing newline.
pub fn to_bytes(conf: &Map<String, Value>) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(conf).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Path the list is written to: a `.conf`/`.json` becomes `<stem>.conflist` beside it.
pub fn list_path(path: &Path) -> PathBuf {
    match kind_of(path) {
        Kind::List => path.to_path_buf(),
        Kind::Single => path.with_extension("conflist"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn entry_forces_type_and_capability() {
        let e = entry_from_config(
            Path::new("c.json"),
            json!({"defaultMode": "enforce", "capabilities": {"portMappings": true}}),
        )
        .unwrap();
        assert_eq!(e["type"], "egress-guard");
        assert_eq!(
            e["capabilities"],
            json!({"portMappings": true, ANNOTATIONS_CAPABILITY: true})
        );
        assert!(entry_from_config(Path::new("c.json"), json!({"type": "bridge"})).is_err());
        assert!(entry_from_config(Path::new("c.json"), json!([1])).is_err());
    }

    #[test]
    fn chain_moves_entry_last_and_is_idempotent() {
        let entry = entry_from_config(Path::new("c"), json!({})).unwrap();
        let conf = obj(json!({"cniVersion": "1.0.0", "name": "n", "plugins": [
            {"type": "egress-guard"}, {"type": "bridge"}, {"type": "portmap"}]}));
        let once = chained(&conf, Kind::List, &entry);
        assert!(is_chained(&once, &entry));
        let types: Vec<_> = once["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].clone())
            .collect();
        assert_eq!(
            types,
            vec![json!("bridge"), json!("portmap"), json!("egress-guard")]
        );
        assert_eq!(chained(&once, Kind::List, &entry), once);
        let un = unchained(&once).unwrap();
        assert_eq!(un["plugins"].as_array().unwrap().len(), 2);
        assert!(unchained(&un).is_none());
    }

    #[test]
    fn single_becomes_list() {
        let entry = entry_from_config(Path::new("c"), json!({})).unwrap();
        let conf =
            obj(json!({"cniVersion": "0.4.0", "name": "n", "type": "bridge", "bridge": "cni0"}));
        let list = chained(&conf, Kind::Single, &entry);
        assert_eq!(list["name"], "n");
        assert_eq!(list["plugins"][0], Value::Object(conf));
        assert_eq!(
            list_path(Path::new("/d/10-x.conf")),
            Path::new("/d/10-x.conflist")
        );
    }

    #[test]
    fn parse_checks_shape() {
        assert!(parse(Path::new("a.conflist"), b"{\"plugins\": []}").is_err());
        assert!(parse(Path::new("a.conflist"), b"{\"name\": \"x\"}").is_err());
        assert!(parse(Path::new("a.conf"), b"{\"plugins\": [{\"type\": \"x\"}]}").is_err());
        assert!(parse(Path::new("a.conf"), b"{\"type\": \"bridge\"").is_err());
        assert!(parse(Path::new("a.json"), b"{\"type\": \"bridge\"}").is_ok());
    }
}
