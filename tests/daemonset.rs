//! The DaemonSet as `kubectl kustomize deploy/overlays/kubeadm` renders it
//! (a ServiceAccount, a ConfigMap with the operator's policy, and the
//! DaemonSet), parsed and checked field by field; its containers' commands
//! run for real against temporary directories standing in for their
//! mounts. The install container also runs under a real containerd in
//! tests/containerd_e2e.rs; the other overlays and the components are
//! checked in tests/kustomize.rs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn kind(kind: &str) -> Value {
    common::kustomize::document(common::kustomize::KUBEADM, kind)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(|s| s.as_str().unwrap()).collect()
}

fn container<'a>(ds: &'a Value, name: &str) -> &'a Value {
    ds["spec"]["template"]["spec"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no container {name}"))
}

/// The volume mounted at `mount_path` in container `c`, and the mount.
fn volume_at<'a>(pod: &'a Value, c: &'a Value, mount_path: &Path) -> (&'a Value, &'a Value) {
    let m = c["volumeMounts"].as_array().unwrap().iter().find(|m| mount_path.starts_with(m["mountPath"].as_str().unwrap()));
    let m = m.unwrap_or_else(|| panic!("nothing is mounted at {}", mount_path.display()));
    (pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == m["name"]).unwrap(), m)
}

#[test]
fn daemonset_runs_install_and_metrics_on_every_node_with_no_privilege() {
    let ds = kind("DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");
    assert_eq!(ds["metadata"]["namespace"], "kube-system");
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in ds["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the selector does not match the pod template's label {k}");
    }
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "an installer must not depend on the pod network");
    assert!(pod["tolerations"].as_array().unwrap().iter().any(|t| t["operator"] == "Exists"), "it must run on every node");
    assert_eq!(pod["automountServiceAccountToken"], false, "it needs no API access");
    let sa = kind("ServiceAccount");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(sa["metadata"]["namespace"], ds["metadata"]["namespace"]);
    assert_eq!(sa["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "both containers under the runtime's syscall filter");
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["nodeSelector"]["kubernetes.io/arch"], "amd64", "deploy/build-image.sh builds a linux/amd64 image only");
    assert_eq!(pod["containers"].as_array().unwrap().len(), 2);
    for c in pod["containers"].as_array().unwrap() {
        assert_eq!(c["image"], format!("bpf-ratelimit.local/bpf-ratelimit:{}", env!("CARGO_PKG_VERSION")), "deploy/build-image.sh's default name");
        assert_eq!(strings(&c["command"]), ["/usr/local/bin/bpf-ratelimit"], "where deploy/build-image.sh puts the binary");
        let sc = &c["securityContext"];
        assert_eq!(sc["privileged"], false);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["runAsUser"], 0);
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
        assert!(c["resources"]["limits"]["memory"].is_string());
    }

    // install: valid options, the host CNI dirs, the ConfigMap's policy,
    // --wait, and a ready file on a volume of its own that the probe reads.
    let c = container(&ds, "install");
    let args: Vec<String> = strings(&c["args"]).into_iter().map(String::from).collect();
    assert_eq!(args[0], "install");
    let opts = bpf_ratelimit::ops::install::Options::parse(&args[1..], true).unwrap();
    assert!(opts.wait, "the container must stay up after installing");
    assert!(opts.conflist.is_none() && !opts.replace_bandwidth);
    assert!(c["securityContext"]["capabilities"]["add"].is_null(), "install needs no capability");
    let host_path = |mount: &Path| {
        let (v, m) = volume_at(pod, c, mount);
        assert_ne!(m["readOnly"], true);
        assert_eq!(v["hostPath"]["type"], "DirectoryOrCreate");
        v["hostPath"]["path"].as_str().unwrap().to_string()
    };
    assert_eq!(host_path(&opts.bin_dir), "/opt/cni/bin");
    assert_eq!(host_path(&opts.conf_dir), "/etc/cni/net.d");
    let config = opts.config.as_ref().expect("install takes its policy with --config");
    let (v, m) = volume_at(pod, c, config);
    assert_eq!(v["configMap"]["name"], kind("ConfigMap")["metadata"]["name"]);
    assert!(m["subPath"].is_null(), "a subPath mount never sees ConfigMap updates");
    let key = config.file_name().unwrap().to_str().unwrap();
    assert!(kind("ConfigMap")["data"][key].is_string(), "the ConfigMap has no {key}");
    let ready = opts.ready_file.as_ref().expect("--ready-file");
    assert!(volume_at(pod, c, ready).0["emptyDir"].is_object(), "the ready file needs a writable volume (the root filesystem is read-only)");
    let probe = strings(&c["readinessProbe"]["exec"]["command"]);
    assert_eq!(probe, ["/usr/local/bin/bpf-ratelimit", "ready", ready.to_str().unwrap()]);

    // metrics: on the node's loopback only (the pod shares the node's
    // network), probed there, the pin roots read-only, CAP_BPF only.
    let c = container(&ds, "metrics");
    let args = strings(&c["args"]);
    assert_eq!(args, ["metrics", "--listen", "127.0.0.1:9637"], "the metrics must not be published on the node's addresses");
    assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(9637));
    assert_eq!(c["ports"][0]["name"], "metrics");
    let probe = &c["livenessProbe"]["httpGet"];
    assert_eq!((probe["host"].as_str(), probe["port"].as_u64(), probe["path"].as_str()), (Some("127.0.0.1"), Some(9637), Some("/metrics")), "kubelet probes the node's address unless told 127.0.0.1");
    assert_eq!(strings(&c["securityContext"]["capabilities"]["add"]), ["BPF"]);
    for (mount, host) in [("/sys/fs/bpf", "/sys/fs/bpf"), (bpf_ratelimit::node::pin_roots::INDEX_DIR, "/run/bpf-ratelimit")] {
        let (v, m) = volume_at(pod, c, Path::new(mount));
        assert_eq!(m["readOnly"], true, "{mount}");
        assert_eq!(v["hostPath"]["path"], host);
    }
    assert_eq!(volume_at(pod, c, Path::new("/sys/fs/bpf")).1["mountPropagation"], "HostToContainer");

    // No host path beyond these four.
    let host_paths: Vec<&str> = pod["volumes"].as_array().unwrap().iter().filter_map(|v| v["hostPath"]["path"].as_str()).collect();
    assert_eq!(host_paths, ["/opt/cni/bin", "/etc/cni/net.d", "/sys/fs/bpf", "/run/bpf-ratelimit"]);
}

#[test]
fn the_configmaps_policy_is_one_install_accepts() {
    let cm = kind("ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "kube-system");
    let policy: Value = serde_json::from_str(cm["data"]["policy.json"].as_str().unwrap()).expect("policy.json is JSON");
    bpf_ratelimit::ops::install::validate_config(policy.as_object().expect("a JSON object")).unwrap();
}

/// A container's mounts stood in for by directories under `root`.
struct Mounts {
    root: PathBuf,
    mounts: Vec<(String, PathBuf)>,
}

impl Mounts {
    fn new(tag: &str, c: &Value) -> Mounts {
        let root = std::env::temp_dir().join(format!("brl-ds-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut mounts: Vec<(String, PathBuf)> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["mountPath"].as_str().unwrap().to_string(), root.join(m["name"].as_str().unwrap())))
            .collect();
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        for (_, dir) in &mounts {
            std::fs::create_dir_all(dir).unwrap();
        }
        Mounts { root, mounts }
    }

    /// A container path as the host directory standing in for its mount.
    fn host(&self, path: &str) -> String {
        for (mount, dir) in &self.mounts {
            if let Some(rest) = path.strip_prefix(mount.as_str()) {
                return format!("{}{rest}", dir.display());
            }
        }
        path.to_string()
    }

    /// The binary with `args`, their container paths turned into host ones.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bpf-ratelimit"));
        cmd.args(args.iter().map(|a| self.host(a))).env_remove("CNI_COMMAND");
        cmd
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

const FLANNEL: &str = r#"{"name": "cbr0", "cniVersion": "0.3.1", "plugins": [
  {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;

/// A ConfigMap volume as kubelet writes it: the data in a timestamped
/// directory, `..data` pointing at it, and each key a link through `..data`;
/// an update swaps `..data` atomically.
fn write_configmap(dir: &Path, key: &str, text: &str, generation: u32) {
    let data = dir.join(format!("..{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join(key), text).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join(key);
    if link.symlink_metadata().is_err() {
        std::os::unix::fs::symlink(format!("..data/{key}"), &link).unwrap();
    }
}

/// The install container's command, with its args, against directories
/// standing in for its mounts: it chains flannel's conflist with the
/// ConfigMap's policy, its readiness probe passes only then, and a
/// ConfigMap update reaches the conflist.
#[test]
fn the_install_container_chains_the_configmaps_policy_and_turns_ready() {
    let ds = kind("DaemonSet");
    let c = container(&ds, "install");
    let mounts = Mounts::new("install", c);
    let args = strings(&c["args"]);
    let opts = bpf_ratelimit::ops::install::Options::parse(&args[1..].iter().map(|a| mounts.host(a)).collect::<Vec<_>>(), true).unwrap();
    let config = opts.config.clone().unwrap();
    let key = config.file_name().unwrap().to_str().unwrap().to_string();
    let policy = r#"{"maxEgressRate": 100000000, "maxIngressRate": 100000000}"#;
    write_configmap(config.parent().unwrap(), &key, policy, 1);
    let probe = strings(&c["readinessProbe"]["exec"]["command"]);
    let probe_ok = || mounts.command(&probe[1..]).output().unwrap().status.success();

    let mut child = mounts.command(&args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!probe_ok(), "ready before any conflist exists");
    let conflist = opts.conf_dir.join("10-flannel.conflist");
    std::fs::write(&conflist, FLANNEL).unwrap();
    let entry = |list: &Path| -> Value {
        let v: Value = serde_json::from_slice(&std::fs::read(list).unwrap()).unwrap();
        v["plugins"].as_array().unwrap().iter().find(|p| p["type"] == "bpf-ratelimit").cloned().unwrap_or(Value::Null)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(probe_ok() && entry(&conflist)["maxEgressRate"] == 100_000_000) {
        assert!(Instant::now() < deadline, "not chained with the policy: {}", entry(&conflist));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(opts.bin_dir.join("bpf-ratelimit").exists());
    // kubelet updates the ConfigMap volume: the entry follows.
    write_configmap(config.parent().unwrap(), &key, r#"{"maxEgressRate": 50000000}"#, 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while entry(&conflist) != json!({"type": "bpf-ratelimit", "maxEgressRate": 50000000, "capabilities": {"bandwidth": true, "cgroupPath": true, "io.kubernetes.cri.pod-annotations": true}}) {
        assert!(Instant::now() < deadline, "the ConfigMap update did not reach the conflist: {}", entry(&conflist));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(probe_ok());
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// The metrics container's command serves Prometheus text over HTTP (on a
/// free loopback port here instead of its node port).
#[test]
fn the_metrics_container_serves_prometheus_text() {
    use std::io::{Read, Write};
    let ds = kind("DaemonSet");
    let c = container(&ds, "metrics");
    let mut args: Vec<&str> = strings(&c["args"]);
    let listen = args.iter().position(|a| *a == "--listen").unwrap() + 1;
    args[listen] = "127.0.0.1:0";
    let mut child = Command::new(env!("CARGO_BIN_EXE_bpf-ratelimit")).args(&args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let addr = common::listening_address(&mut child);
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: node\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("# TYPE bpf_ratelimit_up gauge"), "{reply}");
}
/// deploy/build-image.sh puts the binary cargo builds (statically linked,
/// tests/install.rs) into the image, and nothing else: no shared library
/// from the build machine reaches a node. It refuses a dynamic binary.
#[test]
fn the_image_holds_only_the_static_binary() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = std::env::temp_dir().join(format!("brl-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("oci")).unwrap();
    let build = |binary: &str| {
        std::process::Command::new("bash")
            .arg(repo.join("deploy/build-image.sh"))
            .arg(work.join("image.tar"))
            .arg("bpf-ratelimit.local/test:1")
            .arg(binary)
            .output()
            .unwrap()
    };
    let refused = build("/bin/sh");
    assert!(!refused.status.success(), "a dynamically linked binary went into the image");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("dynamically linked"), "{}", String::from_utf8_lossy(&refused.stderr));

    let out = build(env!("CARGO_BIN_EXE_bpf-ratelimit"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tar = |args: &[&str]| {
        let o = std::process::Command::new("tar").args(args).output().unwrap();
        assert!(o.status.success(), "tar {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    tar(&["-xf", work.join("image.tar").to_str().unwrap(), "-C", work.join("oci").to_str().unwrap()]);
    let blob = |digest: &str| work.join("oci/blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let index: Value = serde_json::from_slice(&std::fs::read(work.join("oci/index.json")).unwrap()).unwrap();
    let manifest: Value = serde_json::from_slice(&std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap()).unwrap();
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let files: Vec<String> = tar(&["-tf", layer.to_str().unwrap()]).lines().filter(|l| !l.ends_with('/')).map(String::from).collect();
    assert_eq!(files, ["./usr/local/bin/bpf-ratelimit"], "the image holds more than the binary");
    tar(&["-xf", layer.to_str().unwrap(), "-C", work.to_str().unwrap(), "./usr/local/bin/bpf-ratelimit"]);
    assert_eq!(
        std::fs::read(work.join("usr/local/bin/bpf-ratelimit")).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_bpf-ratelimit")).unwrap(),
        "the image's binary is not the one cargo built"
    );
    std::fs::remove_dir_all(&work).unwrap();
}
