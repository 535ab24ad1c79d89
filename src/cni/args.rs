//! `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`. Only the pod identity keys are used.

pub use crate::guard::PodIdentity;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("CNI_ARGS item \"{0}\" is not KEY=VALUE")]
    NotPair(String),
    #[error("CNI_ARGS key \"{0}\" is given more than once")]
    Duplicate(String),
    #[error("CNI_ARGS value of \"{key}\" is not a valid Kubernetes name: \"{value}\"")]
    BadValue { key: String, value: String },
}

fn valid_k8s_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

pub fn parse_cni_args(raw: &str) -> Result<PodIdentity, ArgsError> {
    let mut id = PodIdentity::default();
    let mut seen: Vec<String> = Vec::new();
    for item in raw.split(';').filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| ArgsError::NotPair(item.to_string()))?;
        if seen.iter().any(|s| s == k) {
            return Err(ArgsError::Duplicate(k.to_string()));
        }
        seen.push(k.to_string());
        let slot = match k {
            "K8S_POD_NAMESPACE" => &mut id.namespace,
            "K8S_POD_NAME" => &mut id.name,
            "K8S_POD_UID" => &mut id.uid,
            _ => continue,
        };
        if !valid_k8s_value(v) {
            return Err(ArgsError::BadValue {
                key: k.to_string(),
                value: v.to_string(),
            });
        }
        *slot = Some(v.to_string());
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_containerd_style_args() {
        let id = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=model-serving;K8S_POD_NAME=llm-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1b4e-22").unwrap();
        assert_eq!(id.display(), "model-serving/llm-0");
        assert_eq!(id.uid.as_deref(), Some("1b4e-22"));
        assert_eq!(parse_cni_args("").unwrap(), PodIdentity::default());
    }

    #[test]
    fn errors_name_the_item() {
        for (args, said) in [
            ("K8S_POD_NAME", "K8S_POD_NAME"),
            ("K8S_POD_NAME=a;K8S_POD_NAME=b", "more than once"),
            ("K8S_POD_NAMESPACE=a b", "\"a b\""),
            ("K8S_POD_NAME=", "K8S_POD_NAME"),
        ] {
            let e = parse_cni_args(args).unwrap_err().to_string();
            assert!(e.contains(said), "{args}: {e}");
        }
    }
}
