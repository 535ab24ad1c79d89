//! The pod's policy for a verb: its annotations (from the runtime's runtimeConfig, else from
//! the API server when a kubeconfig is configured) resolved against the conflist's settings.

use std::path::Path;

use super::{code, CniError, NetConf, PodIdentity};
use crate::policy::{parse_annotations, Mode, Policy};

/// Reads a pod's annotations from the API server: (kubeconfig, namespace, name).
pub type FetchPod<'a> = &'a dyn Fn(&Path, &str, &str) -> Result<Vec<(String, String)>, String>;

/// Annotations from runtimeConfig, else from the API server when a kubeconfig is configured.
fn pod_annotations(
    conf: &NetConf,
    pod: &PodIdentity,
    fetch_pod: FetchPod<'_>,
    subject: &str,
) -> Result<Vec<(String, String)>, CniError> {
    if let Some(a) = &conf.annotations {
        return Ok(a.clone());
    }
    let Some(kubeconfig) = &conf.kubeconfig else {
        log::debug!("{subject}: the runtime passed no annotations and no kubeconfig is configured");
        return Ok(Vec::new());
    };
    let (Some(ns), Some(name)) = (&pod.namespace, &pod.name) else {
        return Err(CniError::new(
            code::API_LOOKUP,
            format!("{subject}: no annotations from the runtime and CNI_ARGS lacks K8S_POD_NAMESPACE/K8S_POD_NAME to look the pod up"),
        ));
    };
    match fetch_pod(kubeconfig, ns, name) {
        Ok(a) => Ok(a),
        Err(e) => {
            let enforced = conf.settings.enforce_namespaces.iter().any(|n| n == ns);
            if enforced || conf.settings.default_mode != Mode::Off {
                Err(CniError::new(
                    code::API_LOOKUP,
                    format!("{subject}: reading the pod from the API server failed: {e}"),
                ))
            } else {
                log::warn!("{subject}: reading the pod from the API server failed, treating it as unannotated: {e}");
                Ok(Vec::new())
            }
        }
    }
}

/// The pod's policy: its annotations resolved against the conflist's settings.
pub fn pod_policy(
    conf: &NetConf,
    pod: &PodIdentity,
    fetch_pod: FetchPod<'_>,
    subject: &str,
) -> Result<Policy, CniError> {
    let raw = pod_annotations(conf, pod, fetch_pod, subject)?;
    let ann = parse_annotations(&raw)
        .map_err(|e| CniError::new(code::INVALID_POLICY, format!("{subject}: {e}")))?;
    let policy = Policy::resolve(&conf.settings, pod.namespace.as_deref(), &ann)
        .map_err(|e| CniError::new(code::INVALID_POLICY, format!("{subject}: {e}")))?;
    if policy.overrode_annotation(&ann) {
        log::warn!(
            "{subject}: namespace is in enforceNamespaces; annotation mode \"{}\" ignored, enforcing",
            ann.mode.map(|m| m.as_str()).unwrap_or("")
        );
    }
    Ok(policy)
}
