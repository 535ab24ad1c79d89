//! `egress-guard render`: prints the ruleset a conflist entry and annotations would install for a
//! pod, through the same policy resolution and compiler as ADD. Reads files only.

use std::process::ExitCode;

use super::{CliError, Parsed};
use crate::cni::NetConf;
use crate::policy::{parse_annotations, Policy};
use crate::ruleset::{compile, render, Attach, PodNet, Target};

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
                "config" | "namespace" | "container-id" | "placement" | "device" | "pod-net" => {}
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
        })
    }

    fn render(self) -> Result<String, String> {
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
        let (config, namespace, cid) = (self.config, self.namespace, self.container_id);
        let mut v = read_json(&config)?;
        // A whole conflist: take the egress-guard entry.
        if let Some(plugins) = v.get("plugins").and_then(|p| p.as_array()) {
            v = plugins
                .iter()
                .find(|p| p.get("type").and_then(|t| t.as_str()) == Some("egress-guard"))
                .cloned()
                .ok_or("the conflist has no entry of type egress-guard")?;
        }
        let bytes = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
        let conf = NetConf::parse(&bytes).map_err(|e| e.to_string())?;
        let ann = parse_annotations(&annotations).map_err(|e| e.to_string())?;
        let policy = Policy::resolve(&conf.settings, namespace.as_deref(), &ann)
            .map_err(|e| e.to_string())?;
        let target = Target {
            container_id: cid,
            ifname: "eth0".to_string(),
            attach,
            log_group: conf.nflog_group,
        };
        match compile(&policy, &target) {
            Some(t) => Ok(render(&t)),
            None => Ok(format!(
                "# mode {}: nothing is installed for this pod\n",
                policy.mode
            )),
        }
    }
}
