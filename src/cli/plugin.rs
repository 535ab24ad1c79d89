//! Running the plugin from the process: stdin, the CNI environment, the result or error JSON on
//! stdout and the exit code. The verbs themselves are `cni::plugin`'s.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use crate::cni::plugin::{run, Invocation};
use crate::cni::{code, CniError, Env};
use crate::kernel::NetlinkKernel;

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
    let mut kernel = NetlinkKernel::for_invocation();
    let outcome = run(Invocation {
        kernel: &mut kernel,
        env: &env,
        stdin: &stdin,
        fetch_pod: &fetch_pod_annotations,
    });
    crate::logging::write_record(outcome.log_file.as_deref(), &outcome.record);
    if outcome.result.is_err() && outcome.record.verb == "ADD" {
        let dir = outcome
            .state_dir
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from(crate::cni::config::DEFAULT_STATE_DIR));
        crate::guard::failures::record(&dir, &outcome.record);
    }
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
