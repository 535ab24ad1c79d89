//! Read-only view of the host's nf_tables ruleset through `nft -j` (test-only use of the nft
//! binary): which egress-guard tables exist, what they bind to, a stable fingerprint of one.
use serde_json::Value;

pub const TABLE_PREFIX: &str = "egress_guard_";

/// The table of a container's `eth0` (a hash of the ID: the plugin's own naming).
pub fn table_name(container_id: &str) -> String {
    egress_guard::ruleset::table_name(container_id, "eth0")
}

fn ruleset() -> Result<Vec<Value>, String> {
    let out = crate::cri::node::run("nft", &["-j", "list", "ruleset"])?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("nft -j: {e}"))?;
    Ok(v["nftables"].as_array().cloned().unwrap_or_default())
}

/// Every table, chain, set, map or flowtable in the host netns whose table is named
/// `egress_guard_*` or whose own name mentions one of `ids`: "kind family table name".
pub fn ours(ids: &[&str]) -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    for obj in ruleset()? {
        let Some((kind, body)) = obj.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        if !matches!(
            kind.as_str(),
            "table" | "chain" | "set" | "map" | "flowtable"
        ) {
            continue;
        }
        let table = body["table"].as_str().or(if kind == "table" {
            body["name"].as_str()
        } else {
            None
        });
        let name = body["name"].as_str().unwrap_or("");
        let hit = table.is_some_and(|t| t.starts_with(TABLE_PREFIX))
            || ids
                .iter()
                .any(|id| name.contains(id) || table.is_some_and(|t| t.contains(id)));
        if hit {
            found.push(format!(
                "{kind} {} {} {name}",
                body["family"].as_str().unwrap_or("?"),
                table.unwrap_or("")
            ));
        }
    }
    Ok(found)
}

/// Names of all `egress_guard_*` tables (any family) in the host netns.
pub fn guard_tables() -> Result<Vec<String>, String> {
    Ok(ruleset()?
        .iter()
        .filter_map(|o| o["table"]["name"].as_str())
        .filter(|n| n.starts_with(TABLE_PREFIX))
        .map(str::to_string)
        .collect())
}

/// The table of one container: (family, devices its base chains are bound to, fingerprint).
/// The fingerprint holds the table handle, chains and rules, with counters and set elements
/// left out, so it changes when the table is recreated or its rules change, not with traffic.
pub struct Table {
    pub family: String,
    pub devices: Vec<String>,
    pub hooks: Vec<String>,
    pub fingerprint: String,
}

pub fn table(container_id: &str) -> Result<Option<Table>, String> {
    let name = table_name(container_id);
    let mut family = None;
    let mut devices = Vec::new();
    let mut hooks = Vec::new();
    let mut fp = Vec::new();
    for obj in ruleset()? {
        let Some((kind, body)) = obj.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let mine = if kind == "table" {
            body["name"] == name.as_str()
        } else {
            body["table"] == name.as_str()
        };
        if !mine {
            continue;
        }
        match kind.as_str() {
            "table" => {
                family = body["family"].as_str().map(str::to_string);
                fp.push(format!("table handle {}", body["handle"]));
            }
            "chain" => {
                if let Some(h) = body["hook"].as_str() {
                    hooks.push(h.to_string());
                }
                fp.push(format!("chain {body}"));
            }
            "set" | "map" => {
                let mut b = body.clone();
                if let Some(o) = b.as_object_mut() {
                    o.remove("elem");
                }
                fp.push(format!("{kind} {b}"));
            }
            "rule" => {
                let mut b = body.clone();
                strip_counters(&mut b);
                fp.push(format!("rule {b}"));
            }
            _ => {}
        }
    }
    let Some(family) = family else {
        return Ok(None);
    };
    // nft 1.0.6 leaves the device out of its JSON chains: read it from the text listing.
    let text = crate::cri::node::run("nft", &["list", "table", &family, &name])?;
    for line in text.lines().filter(|l| l.contains(" hook ")) {
        if let Some(rest) = line
            .split("device ")
            .nth(1)
            .or_else(|| line.split("devices = {").nth(1))
        {
            let list = rest.split(['}', ';']).next().unwrap_or("");
            let list = if line.contains("devices = {") {
                list
            } else {
                list.split(' ').next().unwrap_or("")
            };
            devices.extend(
                list.split(',')
                    .map(|d| d.trim().trim_matches('"').to_string())
                    .filter(|d| !d.is_empty()),
            );
        }
    }
    Ok(Some(Table {
        family,
        devices,
        hooks,
        fingerprint: fp.join("\n"),
    }))
}

fn strip_counters(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(c) = o.get_mut("counter") {
                *c = Value::Null;
            }
            o.values_mut().for_each(strip_counters);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_counters),
        _ => {}
    }
}
