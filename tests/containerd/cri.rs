//! A blocking CRI client over containerd's unix socket: the calls the
//! kubelet makes to run a pod, made with the `k8s-cri` (tonic) bindings.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Cri {
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

/// What ExecSync returned.
pub struct Exec {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Cri {
    pub fn connect(socket: &Path) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let path: PathBuf = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                Endpoint::try_from("http://[::]:50051")?
                    .connect_timeout(Duration::from_secs(5))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                    }))
                    .await
            })
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        Ok(Cri { rt, channel })
    }

    fn call<T>(&self, what: &str, fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Result<T, CriError> {
        match self.rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, fut).await }) {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(CriError { call: what.to_string(), message: status.message().to_string(), code: status.code() }),
            Err(_) => Err(CriError { call: what.to_string(), message: format!("timed out after {CALL_TIMEOUT:?}"), code: tonic::Code::DeadlineExceeded }),
        }
    }

    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    pub fn version(&self) -> Result<VersionResponse, CriError> {
        self.call("Version", self.runtime().version(VersionRequest { version: "v1".into() }))
    }

    /// The runtime's RuntimeReady and NetworkReady conditions, as "type=status" strings.
    pub fn conditions(&self) -> Result<Vec<(String, bool, String)>, CriError> {
        let status = self.call("Status", self.runtime().status(StatusRequest { verbose: false }))?;
        Ok(status
            .status
            .map(|s| s.conditions.into_iter().map(|c| (c.r#type, c.status, c.message)).collect())
            .unwrap_or_default())
    }

    pub fn image_present(&self, image: &str) -> Result<bool, CriError> {
        let resp = self.call(
            "ImageStatus",
            ImageServiceClient::new(self.channel.clone())
                .image_status(ImageStatusRequest { image: Some(ImageSpec { image: image.into(), ..Default::default() }), verbose: false }),
        )?;
        Ok(resp.image.is_some())
    }

    pub fn run_pod_sandbox(&self, config: PodSandboxConfig) -> Result<String, CriError> {
        let req = RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
        Ok(self.call("RunPodSandbox", self.runtime().run_pod_sandbox(req))?.pod_sandbox_id)
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        self.call("StopPodSandbox", self.runtime().stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.into() }))
            .map(|_| ())
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        self.call("RemovePodSandbox", self.runtime().remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.into() }))
            .map(|_| ())
    }

    /// The sandbox's status and, verbosely, containerd's info (runtime spec, netns path …).
    pub fn pod_sandbox_status(&self, id: &str) -> Result<(PodSandboxStatus, HashMap<String, String>), CriError> {
        let resp = self.call(
            "PodSandboxStatus",
            self.runtime().pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: true }),
        )?;
        let status = resp.status.ok_or_else(|| CriError::other("PodSandboxStatus", "no status in the reply"))?;
        Ok((status, resp.info))
    }

    pub fn list_pod_sandboxes(&self) -> Result<Vec<PodSandbox>, CriError> {
        Ok(self.call("ListPodSandbox", self.runtime().list_pod_sandbox(ListPodSandboxRequest { filter: None }))?.items)
    }

    pub fn create_container(&self, sandbox_id: &str, config: ContainerConfig, sandbox: PodSandboxConfig) -> Result<String, CriError> {
        let req = CreateContainerRequest { pod_sandbox_id: sandbox_id.into(), config: Some(config), sandbox_config: Some(sandbox) };
        Ok(self.call("CreateContainer", self.runtime().create_container(req))?.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), CriError> {
        self.call("StartContainer", self.runtime().start_container(StartContainerRequest { container_id: id.into() })).map(|_| ())
    }

    /// StopContainer: the stop signal, then SIGKILL after `timeout_s`.
    pub fn stop_container(&self, id: &str, timeout_s: i64) -> Result<(), CriError> {
        self.call("StopContainer", self.runtime().stop_container(StopContainerRequest { container_id: id.into(), timeout: timeout_s }))
            .map(|_| ())
    }

    pub fn exec_sync(&self, container_id: &str, cmd: &[&str], timeout_s: i64) -> Result<Exec, CriError> {
        let req = ExecSyncRequest { container_id: container_id.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), timeout: timeout_s };
        let resp = self.call("ExecSync", self.runtime().exec_sync(req))?;
        Ok(Exec {
            exit_code: resp.exit_code,
            stdout: String::from_utf8_lossy(&resp.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&resp.stderr).into_owned(),
        })
    }
}

#[derive(Debug)]
pub struct CriError {
    pub call: String,
    pub code: tonic::Code,
    pub message: String,
}

impl CriError {
    fn other(call: &str, message: &str) -> Self {
        CriError { call: call.into(), code: tonic::Code::Unknown, message: message.into() }
    }
}

impl std::fmt::Display for CriError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CRI {} failed ({:?}): {}", self.call, self.code, self.message)
    }
}

impl std::error::Error for CriError {}

pub fn cri_err(e: CriError) -> anyhow::Error {
    anyhow!("{e}")
}
