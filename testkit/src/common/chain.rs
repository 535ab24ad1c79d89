//! Executes a conflist the way libcni does: each entry gets `cniVersion` and `name`, the
//! runtime values of the capabilities it declares under `runtimeConfig`, and the previous
//! result as `prevResult`; DEL runs in reverse order with the cached result; CHECK in order.
//! Plugins run inside the node namespace, which plays the host.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::plugin_bin;

/// One pod attachment as the runtime sees it.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub namespace: String,
    pub pod: String,
    /// Pod annotations (capability io.kubernetes.cri.pod-annotations).
    pub annotations: Value,
}

impl Attachment {
    pub fn new(
        container_id: &str,
        netns: &str,
        namespace: &str,
        pod: &str,
        annotations: Value,
    ) -> Self {
        Attachment {
            container_id: container_id.to_string(),
            netns: netns.to_string(),
            ifname: "eth0".to_string(),
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            annotations,
        }
    }
    fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID=uid-{}",
            self.namespace, self.pod, self.container_id, self.pod
        )
    }
}

/// A plugin failed: its type, exit status and CNI error JSON.
#[derive(Debug, Clone)]
pub struct PluginError {
    pub plugin: String,
    pub code: Option<u64>,
    pub msg: String,
    pub raw: String,
}

pub struct Chain {
    pub node_ns: String,
    pub conflist: Value,
}

/// Runs one plugin binary with CNI env and stdin inside `node_ns`.
pub fn exec_plugin(
    node_ns: &str,
    plugin_type: &str,
    command: &str,
    env: &[(&str, String)],
    stdin: &Value,
) -> Result<Option<Value>, PluginError> {
    let bin = if plugin_type == "egress-guard" {
        plugin_bin()
    } else {
        format!("/usr/lib/cni/{plugin_type}")
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node_ns, &bin])
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.to_string().as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait plugin");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        let v: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        return Err(PluginError {
            plugin: plugin_type.to_string(),
            code: v.get("code").and_then(|c| c.as_u64()),
            msg: v
                .get("msg")
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .to_string(),
            raw: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        });
    }
    if stdout.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("{plugin_type} printed non-JSON {stdout:?}: {e}")
    })))
}

impl Chain {
    pub fn new(node_ns: &str, conflist: Value) -> Chain {
        Chain {
            node_ns: node_ns.to_string(),
            conflist,
        }
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn netconf(&self, plugin: &Value, att: &Attachment, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        conf["name"] = self.conflist["name"].clone();
        let caps = plugin
            .get("capabilities")
            .and_then(|c| c.as_object())
            .cloned()
            .unwrap_or_default();
        let mut rc = serde_json::Map::new();
        if caps.get("io.kubernetes.cri.pod-annotations") == Some(&Value::Bool(true)) {
            rc.insert(
                "io.kubernetes.cri.pod-annotations".into(),
                att.annotations.clone(),
            );
        }
        if !rc.is_empty() {
            conf["runtimeConfig"] = Value::Object(rc);
        }
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    fn env(att: &Attachment, netns: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_CONTAINERID", att.container_id.clone()),
            ("CNI_NETNS", netns.to_string()),
            ("CNI_IFNAME", att.ifname.clone()),
            ("CNI_ARGS", att.cni_args()),
        ]
    }

    /// ADD through the whole chain; returns the final result.
    pub fn add(&self, att: &Attachment) -> Result<Value, PluginError> {
        let mut prev: Option<Value> = None;
        for p in self.plugins() {
            let t = p["type"].as_str().unwrap_or("").to_string();
            let conf = self.netconf(&p, att, prev.as_ref());
            let out = exec_plugin(&self.node_ns, &t, "ADD", &Self::env(att, &att.netns), &conf)?;
            prev = Some(out.unwrap_or_else(|| panic!("{t} ADD printed nothing")));
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL in reverse order. `netns` may be "" and `cached` absent, as on RemovePodSandbox.
    pub fn del(
        &self,
        att: &Attachment,
        netns: &str,
        cached: Option<&Value>,
    ) -> Result<(), PluginError> {
        for p in self.plugins().iter().rev() {
            let t = p["type"].as_str().unwrap_or("").to_string();
            let conf = self.netconf(p, att, cached);
            exec_plugin(&self.node_ns, &t, "DEL", &Self::env(att, netns), &conf)?;
        }
        Ok(())
    }

    /// CHECK in order with the cached result.
    pub fn check(&self, att: &Attachment, cached: &Value) -> Result<(), PluginError> {
        for p in self.plugins() {
            let t = p["type"].as_str().unwrap_or("").to_string();
            let conf = self.netconf(&p, att, Some(cached));
            exec_plugin(
                &self.node_ns,
                &t,
                "CHECK",
                &Self::env(att, &att.netns),
                &conf,
            )?;
        }
        Ok(())
    }

    /// Runs only egress-guard's entry (for verbs tested alone: GC, STATUS, VERSION).
    pub fn guard_only(
        &self,
        command: &str,
        extra: Value,
        env: &[(&str, String)],
    ) -> Result<Option<Value>, PluginError> {
        let guard = self
            .plugins()
            .into_iter()
            .find(|p| p["type"] == "egress-guard")
            .expect("conflist has egress-guard");
        let mut conf = guard;
        conf["cniVersion"] = json!("1.1.0");
        conf["name"] = self.conflist["name"].clone();
        if let (Some(o), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        exec_plugin(&self.node_ns, "egress-guard", command, env, &conf)
    }
}
