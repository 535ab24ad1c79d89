//! `egress-guard render`: prints the ruleset a conflist entry and annotations would install for a
//! pod, through the same policy resolution and compiler as ADD, as nft text or nftables JSON.
//! Reads files only. [`render_pod`] is the same pipeline without files, for tests.

use std::process::ExitCode;

use super::{CliError, Parsed};
use crate::cni::config::ConfigError;
use crate::cni::NetConf;
use crate::policy::{
    parse_annotations, AnnotationError, PodAnnotations, Policy, PolicyError, Settings,
};
use crate::ruleset::{compile, render, render_json_text, Attach, PodNet, Table, Target};

/// Why a pod's ruleset could not be rendered; the message names the field or entry.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the conflist has no entry of type egress-guard")]
    NoEntry,
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Annotations(#[from] AnnotationError),
    #[error("{0}")]
    Policy(#[from] PolicyError),
}

/// One pod's compiled ruleset as `render` prints it.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub policy: Policy,
    /// `None` when the mode is off.
    pub table: Option<Table>,
    /// What the table was compiled for.
    pub target: Target,
    /// The pod's annotations as parsed, and the operator's settings they were resolved with.
    pub annotations: PodAnnotations,
    pub settings: Settings,
}

impl Rendered {
    /// nft text (`nft list table` form), or a comment line when nothing is installed.
    pub fn text(&self) -> String {
        match &self.table {
            Some(t) => render(t),
            None => format!(
                "# mode {}: nothing is installed for this pod\n",
                self.policy.mode
            ),
        }
    }
    /// nftables JSON of `add` commands; an empty command list when nothing is installed.
    pub fn json(&self) -> String {
        match &self.table {
            Some(t) => render_json_text(t),
            None => "{\"nftables\": []}\n".to_string(),
        }
    }
}

/// The ruleset ADD would install for a pod: `conf` is the egress-guard conflist entry or a
/// whole conflist holding one, `annotations` the pod's, `attach` where the table goes.
pub fn render_pod(
    conf: &serde_json::Value,
    annotations: &[(String, String)],
    namespace: Option<&str>,
    container_id: &str,
    attach: Attach,
) -> Result<Rendered, RenderError> {
    // A whole conflist: take the egress-guard entry.
    let entry = match conf.get("plugins").and_then(|p| p.as_array()) {
        Some(plugins) => plugins
            .iter()
            .find(|p| p.get("type").and_then(|t| t.as_str()) == Some("egress-guard"))
            .ok_or(RenderError::NoEntry)?,
        None => conf,
    };
    let conf = NetConf::parse(entry.to_string().as_bytes())?;
    let ann = parse_annotations(annotations)?;
    let policy = Policy::resolve(&conf.settings, namespace, &ann)?;
    let target = Target {
        container_id: container_id.to_string(),
        ifname: "eth0".to_string(),
        attach,
        log: conf.deny_log(),
    };
    let table = compile(&policy, &target);
    Ok(Rendered {
        policy,
        table,
        target,
        annotations: ann,
        settings: conf.settings,
    })
}

fn read_json(path: &str) -> Result<serde_json::Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
    crate::cni::json::parse_strict(&bytes).map_err(|e| format!("{path}: {e}"))
}

/// `egress-guard render`: prints the ruleset a conflist entry and annotations would install.
pub fn run(p: &Parsed) -> Result<ExitCode, CliError> {
    let args = Args::from_flags(p)?;
    match args.render() {
        Ok(text) => {
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("egress-guard render: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

/// The flags of `render`, interpreted; files are read by [`Args::render`].
pub(super) struct Args {
    config: String,
    /// `--annotations FILE` and `--annotation KEY=VALUE`, in the order given.
    annotations: Vec<Annotations>,
    namespace: Option<String>,
    container_id: String,
    placement: Placement,
    device: Option<String>,
    pod_net: Option<String>,
    json: bool,
}

enum Annotations {
    File(String),
    One(String, String),
}

#[derive(Clone, Copy)]
enum Placement {
    Host,
    Pod,
    PodInet,
}

impl Args {
    pub(super) fn from_flags(p: &Parsed) -> Result<Args, CliError> {
        Args::from_flags_and(p, &[])
    }

    /// The flags of `render`, and `also` for a subcommand that takes them and more.
    pub(super) fn from_flags_and(p: &Parsed, also: &[&str]) -> Result<Args, CliError> {
        let mut annotations = Vec::new();
        for (flag, v) in p.iter() {
            match flag {
                "annotations" => annotations.push(Annotations::File(v.to_string())),
                "annotation" => {
                    let (k, val) = v.split_once('=').ok_or_else(|| {
                        CliError::usage(format!("--annotation \"{v}\" is not KEY=VALUE"))
                    })?;
                    annotations.push(Annotations::One(k.to_string(), val.to_string()));
                }
                "config" | "namespace" | "container-id" | "placement" | "device" | "pod-net"
                | "json" => {}
                other if also.contains(&other) => {}
                other => return Err(CliError::unhandled(other)),
            }
        }
        let placement = match p.last("placement").unwrap_or("host") {
            "host" => Placement::Host,
            "pod" => Placement::Pod,
            "pod-inet" => Placement::PodInet,
            other => {
                return Err(CliError::usage(format!(
                    "--placement \"{other}\" is not host, pod or pod-inet"
                )))
            }
        };
        Ok(Args {
            config: p
                .last("config")
                .ok_or_else(|| CliError::usage("--config is required"))?
                .to_string(),
            annotations,
            namespace: p.last("namespace").map(str::to_string),
            container_id: p
                .last("container-id")
                .unwrap_or("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
                .to_string(),
            placement,
            device: p.last("device").map(str::to_string),
            pod_net: p.last("pod-net").map(str::to_string),
            json: p.has("json"),
        })
    }

    fn render(self) -> Result<String, String> {
        let json = self.json;
        let rendered = self.load()?;
        Ok(if json {
            rendered.json()
        } else {
            rendered.text()
        })
    }

    /// Reads the files and compiles the pod's table as ADD would.
    pub(super) fn load(self) -> Result<Rendered, String> {
        let mut annotations: Vec<(String, String)> = Vec::new();
        for a in self.annotations {
            match a {
                Annotations::One(k, v) => annotations.push((k, v)),
                Annotations::File(path) => {
                    let v = read_json(&path)?;
                    let obj = v
                        .as_object()
                        .ok_or_else(|| format!("--annotations {path}: not a JSON object"))?;
                    for (k, v) in obj {
                        let s = v.as_str().ok_or_else(|| {
                            format!("--annotations {path}: annotation \"{k}\" must be a string")
                        })?;
                        annotations.push((k.clone(), s.to_string()));
                    }
                }
            }
        }
        let pod = match &self.pod_net {
            Some(path) => serde_json::from_value(read_json(path)?)
                .map_err(|e| format!("--pod-net {path}: {e}"))?,
            None => PodNet::example(),
        };
        let device = self.device;
        let attach = match self.placement {
            Placement::Host => Attach::Host {
                device: device.unwrap_or_else(|| "veth0".to_string()),
                pod,
            },
            Placement::Pod => Attach::PodLink {
                device: device.unwrap_or_else(|| "eth0".to_string()),
                pod,
            },
            Placement::PodInet => Attach::Pod,
        };
        let conf = read_json(&self.config)?;
        render_pod(
            &conf,
            &annotations,
            self.namespace.as_deref(),
            &self.container_id,
            attach,
        )
        .map_err(|e| e.to_string())
    }
}
