//! Blocking CRI (runtime.v1) client over containerd's unix socket: just the sandbox verbs the
//! suite needs. Owns a small tokio runtime; never starts or stops containerd itself.
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerState, ContainerStatusRequest, CreateContainerRequest,
    ExecSyncRequest, LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxState, PodSandboxStatusRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StatusRequest,
    StopContainerRequest, StopPodSandboxRequest,
};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one CRI call may take before the suite calls it hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(90);

/// A pod sandbox to run: what a kubelet would put in PodSandboxConfig.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub annotations: Vec<(String, String)>,
}

impl PodSpec {
    pub fn new(name: &str, namespace: &str) -> Self {
        PodSpec {
            name: name.into(),
            namespace: namespace.into(),
            annotations: Vec::new(),
        }
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Self {
        self.annotations.push((key.into(), value.into()));
        self
    }
}

/// What PodSandboxStatus (verbose) says about a sandbox.
#[derive(Clone, Debug)]
pub struct SandboxStatus {
    pub ready: bool,
    pub ips: Vec<IpAddr>,
    pub netns: Option<PathBuf>,
    pub pid: Option<u32>,
}

pub struct Cri {
    rt: tokio::runtime::Runtime,
    sock: PathBuf,
    chan: Mutex<Option<Channel>>,
}

impl Cri {
    pub fn new(sock: &Path) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        Ok(Cri {
            rt,
            sock: sock.to_path_buf(),
            chan: Mutex::new(None),
        })
    }

    /// Drops the cached connection (after containerd restarted).
    pub fn reconnect(&self) {
        *self.chan.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn client(&self) -> Result<RuntimeServiceClient<Channel>, tonic::Status> {
        let mut guard = self.chan.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = guard.as_ref() {
            return Ok(RuntimeServiceClient::new(c.clone()));
        }
        let sock = self.sock.clone();
        let endpoint = Endpoint::try_from("http://[::]:50051")
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(5));
        let chan = self
            .rt
            .block_on(
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let sock = sock.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(sock).await?))
                    }
                })),
            )
            .map_err(|e| {
                tonic::Status::unavailable(format!("connect {}: {e}", self.sock.display()))
            })?;
        *guard = Some(chan.clone());
        Ok(RuntimeServiceClient::new(chan))
    }

    fn call<T, F>(
        &self,
        fut: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, tonic::Status>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client()?;
        self.rt.block_on(async {
            match tokio::time::timeout(CALL_TIMEOUT, fut(client)).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(tonic::Status::deadline_exceeded("CRI call timed out")),
            }
        })
    }

    /// RuntimeReady and NetworkReady (the conflist is loaded).
    pub fn ready(&self) -> Result<bool, tonic::Status> {
        let r =
            self.call(|mut c| async move { c.status(StatusRequest { verbose: false }).await })?;
        let conds = r.status.map(|s| s.conditions).unwrap_or_default();
        Ok(!conds.is_empty() && conds.iter().all(|c| c.status))
    }

    /// RunPodSandbox with a config the caller built (a host-network DaemonSet pod, say).
    pub fn run_config(&self, config: PodSandboxConfig) -> Result<String, tonic::Status> {
        let req = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        self.call(|mut c| async move { c.run_pod_sandbox(req).await })
            .map(|r| r.pod_sandbox_id)
    }

    /// CreateContainer + StartContainer; returns the container id.
    pub fn start_container(
        &self,
        sandbox: &str,
        config: ContainerConfig,
        sandbox_config: PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let req = CreateContainerRequest {
            pod_sandbox_id: sandbox.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        let id = self
            .call(|mut c| async move { c.create_container(req).await })?
            .container_id;
        let start = StartContainerRequest {
            container_id: id.clone(),
        };
        self.call(|mut c| async move { c.start_container(start).await })?;
        Ok(id)
    }

    /// Whether the container runs, and its exit code once it has exited.
    pub fn container_state(&self, id: &str) -> Result<(bool, Option<i32>), tonic::Status> {
        let req = ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        let st = self
            .call(|mut c| async move { c.container_status(req).await })?
            .status
            .unwrap_or_default();
        let running = st.state == ContainerState::ContainerRunning as i32;
        let exited = st.state == ContainerState::ContainerExited as i32;
        Ok((running, exited.then_some(st.exit_code)))
    }

    /// ExecSync: runs `cmd` in the container; returns its exit code, stdout and stderr.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<(i32, String, String), tonic::Status> {
        let req = ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.to_vec(),
            timeout: timeout.as_secs() as i64,
        };
        let r = self.call(|mut c| async move { c.exec_sync(req).await })?;
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    /// StopContainer (SIGTERM, then SIGKILL after `grace`) and RemoveContainer.
    pub fn stop_container(&self, id: &str, grace: Duration) -> Result<(), tonic::Status> {
        let req = StopContainerRequest {
            container_id: id.to_string(),
            timeout: grace.as_secs() as i64,
        };
        self.call(|mut c| async move { c.stop_container(req).await })?;
        Ok(())
    }

    pub fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        let req = RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.call(|mut c| async move { c.remove_container(req).await })?;
        Ok(())
    }

    pub fn run(&self, pod: &PodSpec, uid: &str) -> Result<String, tonic::Status> {
        let mut labels = HashMap::new();
        labels.insert("io.kubernetes.pod.name".to_string(), pod.name.clone());
        labels.insert(
            "io.kubernetes.pod.namespace".to_string(),
            pod.namespace.clone(),
        );
        labels.insert("io.kubernetes.pod.uid".to_string(), uid.to_string());
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: pod.name.clone(),
                uid: uid.to_string(),
                namespace: pod.namespace.clone(),
                attempt: 0,
            }),
            hostname: pod.name.clone(),
            labels,
            annotations: pod.annotations.iter().cloned().collect(),
            linux: Some(LinuxPodSandboxConfig::default()),
            ..Default::default()
        };
        let req = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        self.call(|mut c| async move { c.run_pod_sandbox(req).await })
            .map(|r| r.pod_sandbox_id)
    }

    pub fn stop(&self, id: &str) -> Result<(), tonic::Status> {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.call(|mut c| async move { c.stop_pod_sandbox(req).await })
            .map(|_| ())
    }

    pub fn remove(&self, id: &str) -> Result<(), tonic::Status> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.call(|mut c| async move { c.remove_pod_sandbox(req).await })
            .map(|_| ())
    }

    pub fn status(&self, id: &str) -> Result<SandboxStatus, tonic::Status> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        };
        let r = self.call(|mut c| async move { c.pod_sandbox_status(req).await })?;
        let st = r.status.unwrap_or_default();
        let mut ips = Vec::new();
        if let Some(n) = st.network.as_ref() {
            ips.extend(n.ip.parse::<IpAddr>().ok());
            ips.extend(
                n.additional_ips
                    .iter()
                    .filter_map(|p| p.ip.parse::<IpAddr>().ok()),
            );
        }
        let info: serde_json::Value = r
            .info
            .get("info")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(serde_json::Value::Null);
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["type"] == "network"))
            .and_then(|n| n["path"].as_str())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        Ok(SandboxStatus {
            ready: st.state == PodSandboxState::SandboxReady as i32,
            ips,
            netns,
            pid: info["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
        })
    }

    /// (id, ready, "namespace/name") of every sandbox containerd knows.
    pub fn list(&self) -> Result<Vec<(String, bool, String)>, tonic::Status> {
        let r = self.call(|mut c| async move {
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
        })?;
        Ok(r.items
            .into_iter()
            .map(|s| {
                let m = s.metadata.unwrap_or_default();
                (
                    s.id,
                    s.state == PodSandboxState::SandboxReady as i32,
                    format!("{}/{}", m.namespace, m.name),
                )
            })
            .collect())
    }
}
