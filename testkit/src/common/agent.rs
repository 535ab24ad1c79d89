//! The node agent (`egress-guard agent`) as a process in a namespace-built node, observed from
//! outside only: its stdout lines and its /metrics endpoint.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::node::Node;
use super::{plugin_bin, probe};

/// Where the agent of a test serves metrics, inside the node namespace.
pub const METRICS: &str = "127.0.0.1:9617";

pub fn state_dir(n: &Node) -> String {
    n.tmp.join("state")
}

/// `egress-guard` run inside the node's network namespace (`ip netns exec` execs it, so the
/// child's PID is egress-guard's).
pub fn on_node(n: &Node) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &n.node.name, plugin_bin().as_str()])
        .env_remove("CNI_COMMAND");
    c
}

/// The agent process in the node namespace; killed (by PID) on drop.
pub struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    node_ns: String,
}

impl Agent {
    pub fn start(n: &Node, extra: &[&str]) -> Agent {
        let state = state_dir(n);
        let mut child = on_node(n)
            .args([
                "agent",
                "--state-dir",
                state.as_str(),
                "--node-name",
                "test-node",
            ])
            .args([
                "--metrics-address",
                METRICS,
                "--interval",
                "1",
                "--flush-interval",
                "1",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let agent = Agent {
            child,
            lines,
            node_ns: n.node.name.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while http_get(&agent.node_ns, "/healthz").is_none() {
            assert!(
                Instant::now() < deadline,
                "agent did not start serving metrics"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        agent
    }

    pub fn records(&self, schema: &str) -> Vec<Value> {
        let lines = self.lines.lock().unwrap().clone();
        lines
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l)
                    .unwrap_or_else(|e| panic!("agent printed non-JSON {l:?}: {e}"))
            })
            .filter(|v| v["schema"] == schema)
            .collect()
    }

    pub fn flows(&self) -> Vec<Value> {
        self.records("egress-guard.flow/v1")
    }

    pub fn events(&self) -> Vec<Value> {
        self.records("egress-guard.event/v1")
    }

    /// Waits until a record of `schema` satisfies `pred`.
    pub fn wait_for(
        &self,
        schema: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.records(schema).into_iter().find(|v| pred(v)) {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn metrics(&self) -> String {
        http_get(&self.node_ns, "/metrics").expect("metrics scrape failed")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET over HTTP from inside the node namespace; the body on 200.
pub fn http_get(ns: &str, path: &str) -> Option<String> {
    let path = path.to_string();
    probe::in_ns(ns, move || {
        let mut c =
            TcpStream::connect_timeout(&METRICS.parse().unwrap(), Duration::from_secs(1)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut resp = String::new();
        c.read_to_string(&mut resp).ok()?;
        let (head, body) = resp.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    })
}

/// Value of the sample of `name` whose labels contain every `labels` pair (0 when absent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
