//! `deploy/daemonset.yaml` as CRI requests: the pod's host network, each container's command,
//! args, environment, hostPath and ConfigMap mounts and security context, exactly as the
//! manifest says, with host paths mapped into the test's directories. What the kubelet does
//! beyond CRI (ServiceAccount tokens, the API server) is not here.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1::{
    Capability, ContainerConfig, ContainerMetadata, ImageSpec, Int64Value, KeyValue,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, Mount, MountPropagation, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata,
};
use serde::Deserialize;
use serde_json::Value;

/// A volume of the pod spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Volume {
    HostPath(String),
    ConfigMap(String),
}

/// One container as the manifest declares it.
#[derive(Debug, Clone)]
pub struct DsContainer {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// `value`s, and `valueFrom.fieldRef` paths as `fieldRef:<path>`.
    pub env: Vec<(String, String)>,
    /// (volume name, mount path, read-only, propagation).
    pub mounts: Vec<(String, String, bool, Option<String>)>,
    pub caps_add: Vec<String>,
    pub caps_drop: Vec<String>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub read_only_root: bool,
    pub no_new_privs: bool,
    pub readiness_exec: Option<Vec<String>>,
}

/// The DaemonSet's pod template.
#[derive(Debug, Clone)]
pub struct DaemonSet {
    pub host_network: bool,
    pub volumes: HashMap<String, Volume>,
    pub containers: Vec<DsContainer>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl DaemonSet {
    /// Reads the DaemonSet of a manifest (the first document of kind DaemonSet).
    pub fn parse(text: &str) -> Result<DaemonSet, String> {
        let ds = serde_norway::Deserializer::from_str(text)
            .map(Value::deserialize)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("daemonset yaml: {e}"))?
            .into_iter()
            .find(|d| d["kind"] == "DaemonSet")
            .ok_or("no DaemonSet in the manifest")?;
        let spec = &ds["spec"]["template"]["spec"];
        let mut volumes = HashMap::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let name = v["name"]
                .as_str()
                .ok_or("a volume without a name")?
                .to_string();
            let vol = if let Some(p) = v["hostPath"]["path"].as_str() {
                Volume::HostPath(p.to_string())
            } else if let Some(c) = v["configMap"]["name"].as_str() {
                Volume::ConfigMap(c.to_string())
            } else {
                return Err(format!(
                    "volume {name}: only hostPath and configMap are mapped"
                ));
            };
            volumes.insert(name, vol);
        }
        let mut containers = Vec::new();
        for c in spec["containers"].as_array().ok_or("no containers")? {
            let sc = &c["securityContext"];
            let env = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let name = e["name"].as_str().unwrap_or_default().to_string();
                    let value = match (
                        e["value"].as_str(),
                        e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
                    ) {
                        (Some(v), _) => v.to_string(),
                        (None, Some(f)) => format!("fieldRef:{f}"),
                        (None, None) => String::new(),
                    };
                    (name, value)
                })
                .collect();
            let mounts = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or_default().to_string(),
                        m["mountPath"].as_str().unwrap_or_default().to_string(),
                        m["readOnly"].as_bool().unwrap_or(false),
                        m["mountPropagation"].as_str().map(str::to_string),
                    )
                })
                .collect();
            containers.push(DsContainer {
                name: c["name"]
                    .as_str()
                    .ok_or("a container without a name")?
                    .to_string(),
                image: c["image"].as_str().unwrap_or_default().to_string(),
                command: strings(&c["command"]),
                args: strings(&c["args"]),
                env,
                mounts,
                caps_add: strings(&sc["capabilities"]["add"]),
                caps_drop: strings(&sc["capabilities"]["drop"]),
                run_as_user: sc["runAsUser"].as_i64(),
                run_as_group: sc["runAsGroup"].as_i64(),
                read_only_root: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
                no_new_privs: sc["allowPrivilegeEscalation"].as_bool() == Some(false),
                readiness_exec: c["readinessProbe"]["exec"]["command"]
                    .as_array()
                    .map(|_| strings(&c["readinessProbe"]["exec"]["command"])),
            });
        }
        Ok(DaemonSet {
            host_network: spec["hostNetwork"].as_bool().unwrap_or(false),
            volumes,
            containers,
        })
    }

    pub fn container(&self, name: &str) -> Option<&DsContainer> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// The network namespace of the pod and its containers: the node's with `hostNetwork`.
    fn namespaces(&self) -> Option<NamespaceOption> {
        let network = if self.host_network {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        };
        Some(NamespaceOption {
            network: network as i32,
            ..Default::default()
        })
    }

    /// The PodSandboxConfig of the DaemonSet's pod on node `node`.
    pub fn sandbox_config(&self, name: &str, uid: &str, log_dir: &Path) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: uid.to_string(),
                namespace: "egress-guard".to_string(),
                attempt: 0,
            }),
            log_directory: log_dir.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: self.namespaces(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The ContainerConfig of container `c`: the image as `image`, each hostPath volume at
    /// `host(path)`, each ConfigMap volume at `config_maps[name]`, fieldRefs from `fields`.
    pub fn container_config(
        &self,
        c: &DsContainer,
        image: &str,
        host: &dyn Fn(&str) -> PathBuf,
        config_maps: &HashMap<String, PathBuf>,
        fields: &HashMap<String, String>,
    ) -> Result<ContainerConfig, String> {
        let mut mounts = Vec::new();
        for (vol, path, ro, propagation) in &c.mounts {
            let host_path = match self.volumes.get(vol) {
                Some(Volume::HostPath(p)) => host(p),
                Some(Volume::ConfigMap(cm)) => config_maps
                    .get(cm)
                    .cloned()
                    .ok_or_else(|| format!("no directory for ConfigMap {cm}"))?,
                None => return Err(format!("container {}: no volume {vol}", c.name)),
            };
            let propagation = match propagation.as_deref() {
                None | Some("None") => MountPropagation::PropagationPrivate,
                Some("HostToContainer") => MountPropagation::PropagationHostToContainer,
                Some("Bidirectional") => MountPropagation::PropagationBidirectional,
                Some(other) => return Err(format!("mountPropagation {other}")),
            };
            mounts.push(Mount {
                container_path: path.clone(),
                host_path: host_path.to_string_lossy().into_owned(),
                readonly: *ro,
                propagation: propagation as i32,
                ..Default::default()
            });
        }
        let envs = c
            .env
            .iter()
            .map(|(k, v)| {
                let value = match v.strip_prefix("fieldRef:") {
                    Some(f) => fields
                        .get(f)
                        .cloned()
                        .ok_or_else(|| format!("no value for fieldRef {f}"))?,
                    None => v.clone(),
                };
                Ok(KeyValue {
                    key: k.clone(),
                    value,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: c.name.clone(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            command: c.command.clone(),
            args: c.args.clone(),
            envs,
            mounts,
            log_path: format!("{}.log", c.name),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    capabilities: Some(Capability {
                        add_capabilities: c.caps_add.clone(),
                        drop_capabilities: c.caps_drop.clone(),
                        ..Default::default()
                    }),
                    run_as_user: c.run_as_user.map(|value| Int64Value { value }),
                    run_as_group: c.run_as_group.map(|value| Int64Value { value }),
                    readonly_rootfs: c.read_only_root,
                    no_new_privs: c.no_new_privs,
                    namespace_options: self.namespaces(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}
