//! Command-line front ends that are not CNI verbs' logic: running the plugin (stdin, stdout,
//! exit code) and `egress-guard render`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use crate::cni::plugin::{run, Invocation};
use crate::cni::{code, CniError, Env, NetConf};
use crate::kernel::NetlinkKernel;
use crate::policy::{parse_annotations, Policy};
use crate::ruleset::{compile, render, Attach, PodNet, Target};

/// Looks a pod up in the API server and returns its annotations.
pub fn fetch_pod_annotations(
    kubeconfig: &Path,
    namespace: &str,
    name: &str,
) -> Result<Vec<(String, String)>, String> {
    let client =
        crate::kube::Client::from_kubeconfig(kubeconfig, std::time::Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
    let pod = client.get_pod(namespace, name).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Some(obj) = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.as_object())
    {
        for (k, v) in obj {
            if let Some(s) = v.as_str() {
                out.push((k.clone(), s.to_string()));
            }
        }
    }
    Ok(out)
}

/// The plugin entry point (CNI_COMMAND is set).
pub fn run_plugin() -> ExitCode {
    let env = Env::from_process();
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let err = CniError::new(code::IO_FAILURE, format!("reading stdin failed: {e}"));
        println!("{}", err.to_json("1.1.0"));
        return ExitCode::FAILURE;
    }
    let mut kernel = NetlinkKernel::new();
    let outcome = run(Invocation {
        kernel: &mut kernel,
        env: &env,
        stdin: &stdin,
        fetch_pod: &fetch_pod_annotations,
    });
    crate::logging::write_record(outcome.log_file.as_deref(), &outcome.record);
    let mut out = std::io::stdout().lock();
    match outcome.result {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&outcome.cni_version));
            ExitCode::FAILURE
        }
    }
}

const RENDER_USAGE: &str =
    "usage: egress-guard render --config FILE [--annotations FILE] [--annotation KEY=VALUE]...
                           [--namespace NS] [--container-id ID] [--placement host|pod|pod-inet]
                           [--device IFNAME] [--pod-net FILE]
  --config       the egress-guard conflist entry, or a whole conflist holding one
  --annotations  a JSON object of pod annotations
  --placement    host (default): netdev table on the pod's host-side veth (--device, veth0);
                 pod: netdev table in the pod netns on the pod's interface (--device, eth0);
                 pod-inet: inet table in the pod netns (kernels without the netdev egress hook)
  --pod-net      the pod's identity on its interface (host and pod placement), a JSON object:
                 {\"mac\": \"0a:58:0a:16:00:05\", \"addrs\": [\"10.22.0.5/24\"], \"link_local\": [\"fe80::1\"],
                  \"gateway_mac\": \"0a:58:0a:16:00:01\"}; without it, an example pod with those
                 values and fd00:22::5/64";

fn read_json(path: &str) -> Result<serde_json::Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
    crate::cni::json::parse_strict(&bytes).map_err(|e| format!("{path}: {e}"))
}

/// `egress-guard render`: prints the ruleset a conflist entry and annotations would install.
pub fn render_command(args: &[String]) -> ExitCode {
    match render_inner(args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egress-guard render: {e}");
            ExitCode::from(2)
        }
    }
}

fn render_inner(args: &[String]) -> Result<String, String> {
    let mut config = None;
    let mut annotations: Vec<(String, String)> = Vec::new();
    let mut namespace = None;
    let mut cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".to_string();
    let mut device = None;
    let mut pod = PodNet::example();
    let mut placement = "host".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value\n{RENDER_USAGE}"))
        };
        match a.as_str() {
            "--config" => config = Some(val()?),
            "--annotations" => {
                let v = read_json(&val()?)?;
                let obj = v
                    .as_object()
                    .ok_or("--annotations must hold a JSON object")?;
                for (k, v) in obj {
                    let s = v
                        .as_str()
                        .ok_or_else(|| format!("annotation \"{k}\" must be a string"))?;
                    annotations.push((k.clone(), s.to_string()));
                }
            }
            "--annotation" => {
                let kv = val()?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--annotation \"{kv}\" is not KEY=VALUE"))?;
                annotations.push((k.to_string(), v.to_string()));
            }
            "--namespace" => namespace = Some(val()?),
            "--container-id" => cid = val()?,
            "--device" => device = Some(val()?),
            "--pod-net" => {
                let v = read_json(&val()?)?;
                pod = serde_json::from_value(v).map_err(|e| format!("--pod-net: {e}"))?;
            }
            "--placement" => placement = val()?,
            "-h" | "--help" => return Err(RENDER_USAGE.to_string()),
            other => return Err(format!("unknown argument \"{other}\"\n{RENDER_USAGE}")),
        }
    }
    let attach = match placement.as_str() {
        "host" => Attach::Host {
            device: device.unwrap_or_else(|| "veth0".to_string()),
            pod,
        },
        "pod" => Attach::PodLink {
            device: device.unwrap_or_else(|| "eth0".to_string()),
            pod,
        },
        "pod-inet" => Attach::Pod,
        other => {
            return Err(format!(
                "--placement \"{other}\" (expected host, pod or pod-inet)"
            ))
        }
    };
    let config = config.ok_or_else(|| format!("--config is required\n{RENDER_USAGE}"))?;
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
    let policy =
        Policy::resolve(&conf.settings, namespace.as_deref(), &ann).map_err(|e| e.to_string())?;
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
