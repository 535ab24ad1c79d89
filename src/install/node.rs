//! Node readiness: removes the `egress-guard.io/not-ready:NoSchedule` taint from this node once
//! the plugin is chained. Touches nothing else on the Node object.

use serde_json::{json, Value};

use super::InstallError;
use crate::kube::{self, Client, KubeError};

/// Key of the taint the operator may put on new nodes until egress-guard is chained.
pub const NOT_READY_TAINT: &str = "egress-guard.io/not-ready";

/// The JSON patch that drops our NoSchedule taint, guarded by a `test` of the whole list so a
/// concurrent change makes it fail instead of removing the wrong entry; `None` if not tainted.
pub fn taint_patch(node: &Value) -> Option<Value> {
    let taints = node.pointer("/spec/taints")?.as_array()?;
    let ours = |t: &Value| {
        t.get("key").and_then(Value::as_str) == Some(NOT_READY_TAINT)
            && t.get("effect").and_then(Value::as_str) == Some("NoSchedule")
    };
    if !taints.iter().any(ours) {
        return None;
    }
    let kept: Vec<Value> = taints.iter().filter(|t| !ours(t)).cloned().collect();
    Some(json!([
        {"op": "test", "path": "/spec/taints", "value": taints},
        {"op": "replace", "path": "/spec/taints", "value": kept},
    ]))
}

/// Removes the taint from `node_name`. Returns whether a patch was sent. Retries a few times
/// when the node changed between GET and PATCH.
pub fn mark_ready(client: &Client, node_name: &str) -> Result<bool, InstallError> {
    let path = kube::node_path(node_name).map_err(|e| InstallError::Kube {
        action: "remove the not-ready taint",
        source: Box::new(e),
    })?;
    let mut last = None;
    for _ in 0..3 {
        let node = client.get_json(&path).map_err(|e| InstallError::Kube {
            action: "read this node",
            source: Box::new(e),
        })?;
        let Some(patch) = taint_patch(&node) else {
            return Ok(false);
        };
        match client.patch_json(&path, "application/json-patch+json", &patch) {
            Ok(_) => return Ok(true),
            // A failed `test` op (422) or a conflict (409): read again and retry.
            Err(
                e @ KubeError::Status {
                    status: 409 | 422, ..
                },
            ) => last = Some(e),
            Err(e) => {
                return Err(InstallError::Kube {
                    action: "remove the not-ready taint",
                    source: Box::new(e),
                })
            }
        }
    }
    match last {
        Some(e) => Err(InstallError::Kube {
            action: "remove the not-ready taint",
            source: Box::new(e),
        }),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_removes_only_our_taint() {
        let node = json!({"spec": {"taints": [
            {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
            {"key": NOT_READY_TAINT, "effect": "NoSchedule"},
        ]}});
        let patch = taint_patch(&node).unwrap();
        assert_eq!(patch[0]["op"], "test");
        assert_eq!(
            patch[1]["value"],
            json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}])
        );
        assert!(taint_patch(&json!({"spec": {}})).is_none());
        assert!(taint_patch(
            &json!({"spec": {"taints": [{"key": NOT_READY_TAINT, "effect": "NoExecute"}]}})
        )
        .is_none());
    }
}
