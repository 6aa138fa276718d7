//! The DaemonSet's container, run for real: deploy/build-image.sh builds its
//! image, the private containerd imports it, and a host-network pod runs the
//! container exactly as the DaemonSet specifies it (command, args, security
//! context with its seccomp profile, mounts), with its two host paths
//! pointed at temporary directories instead of /opt/cni/bin and
//! /etc/cni/net.d. The DaemonSet is `kubectl kustomize
//! deploy/overlays/kubeadm`'s. Only the Kubernetes object itself is not
//! exercised (no API server here).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bpf_ratelimit::testbed::run;
use k8s_cri::v1 as api;
use serde_json::Value;

use super::{cri, Node};

/// flannel's stock conflist (cniVersion 0.3.1, with portmap).
pub const FLANNEL: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
"#;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A document of the kubeadm overlay (the ConfigMap, the DaemonSet) as JSON.
pub fn document(kind: &str) -> Value {
    crate::common::kustomize::document(crate::common::kustomize::KUBEADM, kind)
}

/// The DaemonSet of the kubeadm overlay as JSON.
pub fn daemonset() -> Value {
    document("DaemonSet")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// What the test observed.
pub struct Outcome {
    pub stop_took: Duration,
    pub log: String,
    /// The installer process's seccomp mode (/proc/PID/status "Seccomp":
    /// 0 none, 2 a filter) while it waited.
    pub seccomp_mode: String,
}

/// Builds and imports the image, runs the container with `host_root/opt/cni/bin`
/// and `host_root/etc/cni/net.d` as its host paths, waits until it has
/// installed, then stops it with SIGTERM (StopContainer, 10 s grace).
pub fn run_daemonset_container(node: &Node, host_root: &Path) -> Result<Outcome> {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    let container = pod["containers"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "install")).context("no install container")?;
    let image = container["image"].as_str().context("no image in the DaemonSet")?.to_string();

    let archive = node.dir.join("images/daemonset.tar");
    run(Command::new("bash")
        .arg(repo().join("deploy/build-image.sh"))
        .arg(&archive)
        .arg(&image)
        .arg(crate::common::plugin()))
    .context("deploy/build-image.sh failed")?;
    run(Command::new("ctr").arg("--address").arg(&node.socket).args(["-n", "k8s.io", "images", "import"]).arg(&archive))
        .with_context(|| format!("cannot import {image}"))?;

    // hostPath volumes, by volume name, re-rooted under host_root; the
    // ConfigMap's data and emptyDirs in directories of their own there.
    let mut mounts = Vec::new();
    for m in container["volumeMounts"].as_array().context("no volumeMounts")? {
        let volume = pod["volumes"].as_array().and_then(|v| v.iter().find(|v| v["name"] == m["name"])).context("mount without volume")?;
        let host_path = if let Some(host) = volume["hostPath"]["path"].as_str() {
            host_root.join(host.trim_start_matches('/'))
        } else if let Some(name) = volume["configMap"]["name"].as_str() {
            let dir = host_root.join("configmaps").join(name);
            std::fs::create_dir_all(&dir)?;
            let cm = document("ConfigMap");
            for (key, text) in cm["data"].as_object().context("the ConfigMap has no data")? {
                std::fs::write(dir.join(key), text.as_str().unwrap_or_default())?;
            }
            dir
        } else if volume["emptyDir"].is_object() {
            host_root.join("emptydirs").join(m["name"].as_str().unwrap_or("empty"))
        } else {
            bail!("volume {} is neither hostPath, configMap nor emptyDir", volume["name"]);
        };
        std::fs::create_dir_all(&host_path)?; // type: DirectoryOrCreate
        mounts.push(api::Mount {
            container_path: m["mountPath"].as_str().context("no mountPath")?.into(),
            host_path: host_path.display().to_string(),
            readonly: m["readOnly"].as_bool().unwrap_or(false),
            ..Default::default()
        });
    }

    let host_network = api::NamespaceOption {
        network: if pod["hostNetwork"] == true { api::NamespaceMode::Node } else { api::NamespaceMode::Pod } as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    };
    let spec = node.pod_spec("daemonset");
    let log_dir = node.dir.join("logs").join(&spec.name);
    std::fs::create_dir_all(&log_dir)?;
    let sandbox = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: spec.name.clone(),
            uid: spec.uid.clone(),
            namespace: "kube-system".into(),
            attempt: 0,
        }),
        log_directory: log_dir.display().to_string(),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: format!("/{}", spec.cgroup_rel),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(host_network.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox_id = node.cri().run_pod_sandbox(sandbox.clone()).map_err(cri::cri_err)?;
    node.track(&sandbox_id);

    let sc = &container["securityContext"];
    let uid = |k: &str| sc[k].as_i64().map(|value| api::Int64Value { value });
    let seccomp = seccomp_profile(&pod["securityContext"], sc)?;
    let config = api::ContainerConfig {
        metadata: Some(api::ContainerMetadata { name: container["name"].as_str().unwrap_or("install").into(), attempt: 0 }),
        image: Some(api::ImageSpec { image: image.clone(), ..Default::default() }),
        command: strings(&container["command"]),
        args: strings(&container["args"]),
        mounts,
        log_path: "install.log".into(),
        linux: Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                capabilities: Some(api::Capability {
                    add_capabilities: strings(&sc["capabilities"]["add"]),
                    drop_capabilities: strings(&sc["capabilities"]["drop"]),
                    ..Default::default()
                }),
                privileged: sc["privileged"].as_bool().unwrap_or(false),
                readonly_rootfs: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
                no_new_privs: sc["allowPrivilegeEscalation"] == false,
                run_as_user: uid("runAsUser"),
                run_as_group: uid("runAsGroup"),
                namespace_options: Some(host_network),
                seccomp: Some(seccomp),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let container_id = node.cri().create_container(&sandbox_id, config, sandbox).map_err(cri::cri_err)?;
    node.track(&container_id);
    node.cri().start_container(&container_id).map_err(cri::cri_err)?;

    // Installed, and waiting for SIGTERM.
    let log_file = log_dir.join("install.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log_file).unwrap_or_default().contains("waiting for SIGTERM") {
        if Instant::now() > deadline {
            bail!("the DaemonSet container did not reach its wait: {}", std::fs::read_to_string(&log_file).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let seccomp_mode = seccomp_mode_in(&spec.cgroup)?;
    let stopping = Instant::now();
    node.cri().stop_container(&container_id, 10).map_err(cri::cri_err)?;
    let stop_took = stopping.elapsed();
    let log = std::fs::read_to_string(&log_file).unwrap_or_default();
    node.cri().stop_pod_sandbox(&sandbox_id).map_err(cri::cri_err)?;
    node.cri().remove_pod_sandbox(&sandbox_id).map_err(cri::cri_err)?;
    node.remove_pod_cgroup(&spec);
    Ok(Outcome { stop_took, log, seccomp_mode })
}

/// The seccomp profile kubelet asks the runtime for: the container's
/// seccompProfile, else the pod's, else Unconfined (kubelet's default
/// without the SeccompDefault setting). Said explicitly: in the CRI message
/// RuntimeDefault is the zero value.
fn seccomp_profile(pod_sc: &Value, container_sc: &Value) -> Result<api::SecurityProfile> {
    use api::security_profile::ProfileType;
    let kind = container_sc["seccompProfile"]["type"].as_str().or(pod_sc["seccompProfile"]["type"].as_str());
    let profile_type = match kind {
        Some("RuntimeDefault") => ProfileType::RuntimeDefault,
        Some("Unconfined") | None => ProfileType::Unconfined,
        Some(other) => bail!("seccompProfile type {other} is not run here"),
    };
    Ok(api::SecurityProfile { profile_type: profile_type as i32, ..Default::default() })
}

/// The seccomp mode of the bpf-ratelimit process in the pod's cgroup tree
/// (the sandbox's pause process is there too: told apart by name).
fn seccomp_mode_in(pod_cgroup: &Path) -> Result<String> {
    for entry in walk_procs(pod_cgroup)? {
        let comm = std::fs::read_to_string(format!("/proc/{entry}/comm")).unwrap_or_default();
        if comm.trim() != "bpf-ratelimit" {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{entry}/status"))?;
        let mode = status.lines().find_map(|l| l.strip_prefix("Seccomp:")).context("no Seccomp line")?;
        return Ok(mode.trim().to_string());
    }
    bail!("no bpf-ratelimit process under {}", pod_cgroup.display())
}

/// The PIDs in cgroup.procs of `dir` and every cgroup below it.
fn walk_procs(dir: &Path) -> Result<Vec<String>> {
    let mut pids: Vec<String> = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines().map(String::from).collect();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            pids.extend(walk_procs(&entry.path())?);
        }
    }
    Ok(pids)
}

/// The host paths under `host_root`.
pub fn host_dirs(host_root: &Path) -> (PathBuf, PathBuf) {
    (host_root.join("opt/cni/bin"), host_root.join("etc/cni/net.d"))
}
