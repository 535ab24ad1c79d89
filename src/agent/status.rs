//! `egress-guard status`: a table of the guarded pods on this node (from the state files) with
//! mode, placement, allowlist size, the kernel's denied/audited counters and whether the table
//! matches its policy. Read-only.

use std::path::PathBuf;
use std::process::ExitCode;

use super::counters;
use crate::cli::table::text_table;
use crate::cli::{CliError, Parsed};
use crate::cni::config::DEFAULT_STATE_DIR;
use crate::guard::inspect::{inspect, Inspection};
use crate::guard::record::{self as state, PodRecord};
use crate::guard::Guard;
use crate::kernel::{Kernel, NetlinkKernel};

/// One row of the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container_id: String,
    pub mode: String,
    pub placement: String,
    pub device: Option<String>,
    pub allow_entries: usize,
    /// Denied (enforce) or audited (audit) packets and bytes; `None` when unreadable.
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    /// `ok`, `drift`, `missing`, `gone` (the pod's network is gone; GC removes the rest) or
    /// `error`.
    pub table: &'static str,
    /// What is wrong with the table: each rule missing (nft text) or unexpected, or the error.
    pub problems: Vec<String>,
}

impl Row {
    /// Whether this pod's guard is not what its policy says.
    pub fn unhealthy(&self) -> bool {
        matches!(self.table, "drift" | "missing" | "error")
    }
}

fn health<K: Kernel>(guard: &mut Guard<'_, K>, s: &PodRecord) -> (&'static str, Vec<String>) {
    if guard.pod_gone(s) {
        return ("gone", Vec::new());
    }
    let table = match s.expected_table() {
        Ok(t) => t,
        Err(e) => return ("error", vec![e.to_string()]),
    };
    match inspect(guard.kernel, s.place(), &table) {
        Ok(Inspection::Missing) => ("missing", Inspection::Missing.problems(&table)),
        Ok(Inspection::Matches) => ("ok", Vec::new()),
        Ok(Inspection::Drift(p)) => ("drift", p),
        Err(e) => ("error", vec![e.to_string()]),
    }
}

/// The rows for every state file in `dir`.
pub fn rows<K: Kernel>(
    kernel: &mut K,
    dir: &std::path::Path,
) -> (Vec<Row>, Vec<state::RecordError>) {
    let (states, errors) = state::load_dir(dir);
    let mut guard = Guard::new(kernel, dir, "status".to_string());
    let rows = states
        .iter()
        .map(|s| {
            let c = counters::read(guard.kernel, s.place(), s.family(), &s.table)
                .ok()
                .flatten();
            let (table, problems) = health(&mut guard, s);
            Row {
                namespace: s.pod.namespace.clone(),
                pod: s.pod.name.clone(),
                container_id: s.container_id.clone(),
                mode: s.mode.clone(),
                placement: s.placement.clone(),
                device: s.device.clone(),
                allow_entries: s.entries.len(),
                packets: c.map(|c| c.packets),
                bytes: c.map(|c| c.bytes),
                table,
                problems,
            }
        })
        .collect();
    (rows, errors)
}

/// Renders rows as an aligned text table.
pub fn render_table(rows: &[Row]) -> String {
    let num = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.namespace.clone().unwrap_or_else(|| "-".into()),
                r.pod.clone().unwrap_or_else(|| "-".into()),
                r.container_id.chars().take(12).collect(),
                r.mode.clone(),
                r.placement.clone(),
                r.device.clone().unwrap_or_else(|| "-".into()),
                r.allow_entries.to_string(),
                num(r.packets),
                num(r.bytes),
                r.table.to_string(),
            ]
        })
        .collect();
    text_table(
        &[
            "NAMESPACE",
            "POD",
            "CONTAINER",
            "MODE",
            "PLACEMENT",
            "DEVICE",
            "ALLOW",
            "PACKETS",
            "BYTES",
            "TABLE",
        ],
        &cells,
    )
}

pub(crate) fn parse(p: &Parsed) -> Result<(PathBuf, bool), CliError> {
    let mut dir = PathBuf::from(DEFAULT_STATE_DIR);
    if let Some(path) = p.last("plugin-config") {
        dir = super::plugin_config(path)?.state_dir;
    }
    if let Some(d) = p.last("state-dir") {
        dir = PathBuf::from(d);
    }
    Ok((dir, p.has("json")))
}

/// The problems of the unhealthy rows, a line each, under the pod they belong to.
pub fn render_problems(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows.iter().filter(|r| !r.problems.is_empty()) {
        out.push_str(&format!(
            "\n{}/{} ({}): table {}\n",
            r.namespace.as_deref().unwrap_or("-"),
            r.pod.as_deref().unwrap_or("-"),
            r.container_id.chars().take(12).collect::<String>(),
            r.table
        ));
        for p in &r.problems {
            out.push_str(&format!("  {p}\n"));
        }
    }
    out
}

/// Entry point of the `status` subcommand.
pub fn status(p: &Parsed) -> Result<ExitCode, CliError> {
    let (dir, json) = parse(p)?;
    if !dir.is_dir() {
        eprintln!(
            "egress-guard status: state directory {} does not exist: the plugin has guarded no \
             pod on this node (is it chained? see `egress-guard install --check`), or \
             --state-dir/--plugin-config name another directory",
            dir.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let (rows, errors) = rows(&mut NetlinkKernel::new(), &dir);
    for e in &errors {
        eprintln!("egress-guard status: {e}");
    }
    if json {
        match serde_json::to_string_pretty(&rows) {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("egress-guard status: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    } else if rows.is_empty() {
        println!(
            "no guarded pods on this node (state directory {})",
            dir.display()
        );
    } else {
        print!("{}", render_table(&rows));
        print!("{}", render_problems(&rows));
    }
    Ok(if errors.is_empty() && !rows.iter().any(Row::unhealthy) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let row = Row {
            namespace: Some("ml".into()),
            pod: Some("llm-0".into()),
            container_id: "0123456789abcdef".into(),
            mode: "enforce".into(),
            placement: "host".into(),
            device: Some("veth1".into()),
            allow_entries: 2,
            packets: Some(5),
            bytes: None,
            table: "ok",
            problems: Vec::new(),
        };
        let t = render_table(&[row]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAMESPACE  POD    CONTAINER"), "{t}");
        assert!(lines[1].contains("0123456789ab "), "{t}");
        assert!(lines[1].ends_with("5        ?      ok"), "{t}");
    }
}
