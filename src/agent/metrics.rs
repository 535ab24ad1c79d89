//! Prometheus metrics of the agent: event counters kept by the agent loop, per-pod packet and
//! byte counters read from the kernel at scrape time, and a tiny blocking HTTP server that
//! serves them on `/metrics` (text format 0.0.4). Never changes kernel state.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::counters;
use crate::guard::record as state;
use crate::kernel::{Kernel, NetlinkKernel};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// Counters the agent loop increments.
#[derive(Debug, Default, Clone)]
pub struct Events {
    pub drift: u64,
    pub repairs: u64,
    pub gc_removals: u64,
    /// Pods on this node that ask for a guard and have none (last pass).
    pub unguarded: u64,
    /// Unguarded pods evicted (`--evict-unguarded`).
    pub evictions: u64,
    /// The plugin's failed ADDs, by CNI error code.
    pub plugin_failures: BTreeMap<u32, u64>,
    /// By kind: nflog, state, reconcile, repair, gc, counters, output, api, evict.
    pub errors: BTreeMap<&'static str, u64>,
    /// NFLOG packets received, by verdict.
    pub logged: BTreeMap<&'static str, u64>,
    /// Flow records written, by verdict.
    pub records: BTreeMap<&'static str, u64>,
}

/// What the HTTP thread shares with the agent loop.
pub struct Shared {
    pub events: Mutex<Events>,
    pub state_dir: PathBuf,
    pub node: String,
}

impl Shared {
    pub fn new(state_dir: PathBuf, node: String) -> Arc<Shared> {
        Arc::new(Shared {
            events: Mutex::new(Events::default()),
            state_dir,
            node,
        })
    }

    /// Runs `f` on the event counters (a poisoned lock is still usable: counters stay valid).
    pub fn with<T>(&self, f: impl FnOnce(&mut Events) -> T) -> T {
        let mut guard = match self.events.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut guard)
    }

    pub fn error(&self, kind: &'static str) {
        self.with(|e| *e.errors.entry(kind).or_default() += 1);
    }
}

/// Escapes a label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition: reads state files and, through `kernel`, kernel counters now.
pub fn render<K: Kernel>(shared: &Shared, kernel: &mut K) -> String {
    let (states, state_errors) = state::load_dir(&shared.state_dir);
    let mut out = String::new();
    let mut guarded: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for mode in ["audit", "enforce"] {
        for placement in ["host", "pod"] {
            guarded.insert((mode, placement), 0);
        }
    }
    let mut per_pod: Vec<(String, &'static str, counters::Counts)> = Vec::new();
    let mut counter_errors = 0u64;
    for s in &states {
        if let Some(n) = guarded.get_mut(&(s.mode.as_str(), s.placement.as_str())) {
            *n += 1;
        }
        let labels = format!(
            "namespace=\"{}\",pod=\"{}\",container_id=\"{}\"",
            label(s.pod.namespace.as_deref().unwrap_or("")),
            label(s.pod.name.as_deref().unwrap_or("")),
            label(&s.container_id)
        );
        let verdict = if s.mode == "audit" {
            "audited"
        } else {
            "denied"
        };
        match counters::read(kernel, s.place(), s.family(), &s.table) {
            Ok(Some(c)) => per_pod.push((labels, verdict, c)),
            Ok(None) => {}
            Err(e) => {
                counter_errors += 1;
                log::debug!("metrics: {e}");
            }
        }
    }
    let events = shared.with(|e| {
        *e.errors.entry("state").or_default() += state_errors.len() as u64;
        *e.errors.entry("counters").or_default() += counter_errors;
        e.clone()
    });

    for (verdict, what) in [
        ("denied", "dropped by an enforcing guard"),
        ("audited", "that an auditing guard would drop"),
    ] {
        for (unit, pick) in [("packets", 0), ("bytes", 1)] {
            let name = format!("egress_guard_{verdict}_{unit}_total");
            header(
                &mut out,
                &name,
                "counter",
                &format!("Egress {unit} {what}, per pod (kernel counter of the pod's table)."),
            );
            for (labels, v, c) in &per_pod {
                if *v == verdict {
                    let value = if pick == 0 { c.packets } else { c.bytes };
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        }
    }
    header(
        &mut out,
        "egress_guard_guarded_pods",
        "gauge",
        "Pods on this node with an egress guard, by mode and placement.",
    );
    for ((mode, placement), n) in &guarded {
        let _ = writeln!(
            out,
            "egress_guard_guarded_pods{{mode=\"{mode}\",placement=\"{placement}\"}} {n}"
        );
    }
    let simple = [
        (
            "egress_guard_drift_events_total",
            "Installed tables found missing or different from their policy.",
            events.drift,
        ),
        (
            "egress_guard_repairs_total",
            "Tables reinstalled by the agent (--repair).",
            events.repairs,
        ),
        (
            "egress_guard_gc_removals_total",
            "Tables (and state files) of pods that are gone, removed by the agent.",
            events.gc_removals,
        ),
        (
            "egress_guard_evictions_total",
            "Unguarded pods evicted so that they restart guarded (--evict-unguarded).",
            events.evictions,
        ),
    ];
    for (name, help, value) in simple {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    header(
        &mut out,
        "egress_guard_plugin_add_failures_total",
        "counter",
        "ADDs the plugin failed on this node (the pod did not start), by CNI error code.",
    );
    for (code, n) in &events.plugin_failures {
        let _ = writeln!(
            out,
            "egress_guard_plugin_add_failures_total{{code=\"{code}\"}} {n}"
        );
    }
    header(
        &mut out,
        "egress_guard_unguarded_pods",
        "gauge",
        "Running pods on this node that ask for a guard but have no table (started before the plugin was chained).",
    );
    let _ = writeln!(out, "egress_guard_unguarded_pods {}", events.unguarded);
    header(
        &mut out,
        "egress_guard_agent_errors_total",
        "counter",
        "Errors of the agent, by kind.",
    );
    for kind in [
        "nflog",
        "state",
        "reconcile",
        "repair",
        "gc",
        "counters",
        "output",
        "api",
        "evict",
    ] {
        let n = events.errors.get(kind).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "egress_guard_agent_errors_total{{kind=\"{kind}\"}} {n}"
        );
    }
    for (name, help, map) in [
        (
            "egress_guard_logged_packets_total",
            "Packets received from NFLOG (each distinct flow once per interval, new flows within the ruleset's budget), by verdict.",
            &events.logged,
        ),
        (
            "egress_guard_flow_records_total",
            "Aggregated flow records written to stdout, by verdict.",
            &events.records,
        ),
    ] {
        header(&mut out, name, "counter", help);
        for verdict in ["denied", "audited"] {
            let n = map.get(verdict).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}{{verdict=\"{verdict}\"}} {n}");
        }
    }
    header(
        &mut out,
        "egress_guard_agent_info",
        "gauge",
        "Agent version and node.",
    );
    let _ = writeln!(
        out,
        "egress_guard_agent_info{{version=\"{}\",node=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        label(&shared.node)
    );
    out
}

/// Binds the metrics address (before the agent starts, so a bad address fails at once).
pub fn bind(address: &str) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(address).map_err(|source| MetricsError::Bind {
        address: address.to_string(),
        source,
    })
}

/// Serves connections one at a time, forever.
pub fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut kernel = NetlinkKernel::new();
    for conn in listener.incoming() {
        match conn {
            Ok(c) => {
                if let Err(e) = handle(c, &shared, &mut kernel) {
                    log::debug!("metrics connection: {e}");
                }
            }
            Err(e) => log::warn!("metrics accept: {e}"),
        }
    }
}

fn handle<K: Kernel>(mut conn: TcpStream, shared: &Shared, kernel: &mut K) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(shared, kernel),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_event_counters_and_escapes_labels() {
        let dir = std::env::temp_dir().join(format!("eg-metrics-{}", std::process::id()));
        let shared = Shared::new(dir, "node\"1".into());
        shared.with(|e| {
            e.drift = 2;
            e.logged.insert("denied", 5);
        });
        shared.error("nflog");
        let text = render(&shared, &mut crate::kernel::fake::RecordingKernel::new());
        assert!(
            text.contains("egress_guard_drift_events_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("egress_guard_logged_packets_total{verdict=\"denied\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("egress_guard_agent_errors_total{kind=\"nflog\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("egress_guard_guarded_pods{mode=\"enforce\",placement=\"host\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("node=\"node\\\"1\""), "{text}");
        assert_eq!(label("a\\b\nc"), "a\\\\b\\nc");
    }
}
