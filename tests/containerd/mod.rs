//! A private containerd for the end-to-end test: its root, state, socket,
//! runc root, CNI binaries, CNI config, IPAM data, pod netns mounts and the
//! plugin's pin root all live under names unique to this test process, so
//! it never touches a system containerd, /etc/containerd, /opt/cni/bin or
//! /etc/cni. The node set-up steps come from deploy/node-setup.sh, which the
//! Vagrant cluster uses too.
//!
//! Everything is torn down on drop, also when the test fails: pods, the
//! containerd process and its shims, mounts, the bridge, cgroups, pins and
//! the temporary directory.

pub mod cri;
pub mod daemonset;
pub mod image;

use std::collections::{BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bpf_ratelimit::testbed::{cgroup2_mount, run};
use k8s_cri::v1 as api;
use serde_json::Value;

use cri::{Cri, CriError};

static NEXT_POD: AtomicU32 = AtomicU32::new(1);

/// Directories outside our own that containerd 1.6 and libcni create on
/// their own (shim sockets, the CNI result cache). Removed at the end only
/// when they did not exist before and are empty again.
const SYSTEM_DIRS: [&str; 4] = ["/run/containerd/s", "/run/containerd", "/var/lib/cni/results", "/var/lib/cni"];
const CNI_CACHE: &str = "/var/lib/cni/results";

pub struct Node {
    /// `brl-ctrd-<pid>`: the CNI network name, the cgroup parent and the temp dir name.
    pub id: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub bridge: String,
    pub subnet: String,
    pub pin_root: PathBuf,
    pub cg2: PathBuf,
    pub pause_image: String,
    pub tools_image: String,
    containerd: Option<Child>,
    cri: Option<Cri>,
    absent_system_dirs: Vec<PathBuf>,
    /// Sandbox and container ids, to find their shims' sockets.
    ids: Mutex<BTreeSet<String>>,
    cleaned: bool,
}

/// A running pod: its sandbox, one tools container, and where the plugin
/// should find it.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub uid: String,
    pub sandbox_id: String,
    pub container_id: String,
    pub ip: String,
    /// The pod's cgroup v2 directory, which the kubelet would create.
    pub cgroup: PathBuf,
    /// The pod's netns mount, as containerd reports it.
    pub netns: PathBuf,
}

/// A pod's identity before RunPodSandbox: the cgroup exists, nothing else.
pub struct PodSpec {
    pub name: String,
    pub uid: String,
    /// Relative to each cgroup hierarchy: `<id>/kubepods/burstable/pod<uid>`.
    pub cgroup_rel: String,
    pub cgroup: PathBuf,
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn require_tools() {
    for tool in ["containerd", "containerd-shim-runc-v2", "runc", "ctr", "gcc", "tar", "sha256sum", "ldd", "jq", "bash"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map(|o| o.status.success());
        assert!(
            found.unwrap_or(false),
            "{tool} is missing: the containerd e2e test needs Debian's containerd, runc, containernetworking-plugins, gcc and jq (run ./install.sh --deps-only)"
        );
    }
    for p in ["bridge", "host-local", "loopback"] {
        assert!(
            Path::new("/usr/lib/cni").join(p).exists(),
            "/usr/lib/cni/{p} is missing: install containernetworking-plugins (./install.sh --deps-only)"
        );
    }
    let bpffs = Command::new("mountpoint").args(["-q", "/sys/fs/bpf"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(bpffs, "no bpffs at /sys/fs/bpf (./install.sh --deps-only mounts it)");
}

/// A free /24 in 10.252.0.0/16, starting from one derived from our pid.
fn free_subnet() -> Result<String> {
    let out = run(Command::new("ip").args(["-4", "route", "show", "table", "all"]))?;
    let routes = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = std::process::id() % 250;
    for i in 0..250 {
        let n = (start + i) % 250 + 1;
        let net = format!("10.252.{n}.");
        if !routes.contains(&net) {
            return Ok(format!("10.252.{n}.0/24"));
        }
    }
    bail!("no free /24 in 10.252.0.0/16")
}

impl Node {
    /// Prepares everything and starts containerd with both images imported.
    pub fn start() -> Node {
        crate::common::require_privileges();
        require_tools();
        let pid = std::process::id();
        let id = format!("brl-ctrd-{pid}");
        let dir = std::env::temp_dir().join(&id);
        let mut node = Node {
            socket: dir.join("containerd.sock"),
            bridge: format!("brlc{pid}"),
            subnet: free_subnet().expect("subnet"),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/{id}")),
            cg2: cgroup2_mount().expect("cgroup2 mount"),
            pause_image: format!("brl.local/pause:{pid}"),
            tools_image: format!("brl.local/tools:{pid}"),
            containerd: None,
            cri: None,
            absent_system_dirs: SYSTEM_DIRS.iter().map(PathBuf::from).filter(|p| !p.exists()).collect(),
            ids: Mutex::new(BTreeSet::new()),
            cleaned: false,
            id,
            dir,
        };
        if let Err(e) = node.prepare() {
            panic!("cannot set up the private containerd: {e:#}\n{}", node.logs());
        }
        node
    }

    fn prepare(&mut self) -> Result<()> {
        assert!(!self.dir.exists(), "{} exists: a previous run with this pid left it; remove it", self.dir.display());
        for sub in ["root", "state", "cni/bin", "cni/conf", "ipam", "logs", "opt", "images"] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        let setup = manifest_dir().join("deploy/node-setup.sh");
        let plugin = crate::common::plugin();
        run(Command::new("bash").arg(&setup).arg("cni-bin").arg(self.dir.join("cni/bin")).arg(&plugin))?;

        let conflist = run(Command::new("bash")
            .arg(&setup)
            .arg("conflist")
            .env("NETWORK_NAME", &self.id)
            .env("BRIDGE", &self.bridge)
            .env("SUBNET", &self.subnet)
            .env("IPMASQ", "false")
            .env("IPAM_DATA_DIR", self.dir.join("ipam"))
            .env("PIN_ROOT", &self.pin_root)
            // A test-unique cgroup parent: the plugin searches K8S_POD_UID
            // under kubepods/… relative to cgroupRoot (containerd 1.6 sends no cgroupPath).
            .env("CGROUP_ROOT", self.cg2.join(&self.id))
            .env("LOG_FILE", self.dir.join("plugin.log"))
            .env("LOG_LEVEL", "info"))?;
        std::fs::write(self.dir.join("cni/conf/10-bpf-ratelimit.conflist"), &conflist.stdout)?;

        let config = run(Command::new("bash")
            .arg(&setup)
            .arg("containerd-config")
            .env("ROOT", self.dir.join("root"))
            .env("STATE", self.dir.join("state"))
            .env("SOCKET", &self.socket)
            .env("CNI_BIN_DIR", self.dir.join("cni/bin"))
            .env("CNI_CONF_DIR", self.dir.join("cni/conf"))
            .env("SANDBOX_IMAGE", &self.pause_image)
            .env("SYSTEMD_CGROUP", "false")
            .env("RESTRICT_OOM_SCORE_ADJ", "true")
            .env("RUNC_ROOT", self.dir.join("runc"))
            .env("OPT_DIR", self.dir.join("opt"))
            .env("NETNS_UNDER_STATE", "true"))?;
        std::fs::write(self.dir.join("config.toml"), &config.stdout)?;

        // The cgroup parent of every pod; the kubelet's kubepods tree in miniature.
        std::fs::create_dir_all(self.cg2.join(&self.id).join("kubepods/burstable"))?;

        let images = self.dir.join("images");
        image::pause_rootfs(&images.join("pause-root"))?;
        std::fs::create_dir_all(images.join("pause"))?;
        let pause = image::build_archive(&images.join("pause-root"), &self.pause_image, &["/pause"], &images.join("pause"))?;
        image::tools_rootfs(&images.join("tools-root"))?;
        std::fs::create_dir_all(images.join("tools"))?;
        let tools =
            image::build_archive(&images.join("tools-root"), &self.tools_image, &["/bin/sleep", "infinity"], &images.join("tools"))?;

        self.start_containerd()?;
        for (archive, name) in [(&pause, &self.pause_image), (&tools, &self.tools_image)] {
            run(Command::new("ctr").arg("--address").arg(&self.socket).args(["-n", "k8s.io", "images", "import"]).arg(archive))
                .with_context(|| format!("cannot import {name}"))?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for name in [&self.pause_image, &self.tools_image] {
            while !self.cri().image_present(name).map_err(cri::cri_err)? {
                if Instant::now() > deadline {
                    bail!("the CRI plugin does not see the imported image {name}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    pub fn cri(&self) -> &Cri {
        self.cri.as_ref().expect("containerd is not running")
    }

    /// Starts containerd with our config and waits until the CRI plugin
    /// reports the runtime and the network ready.
    pub fn start_containerd(&mut self) -> Result<()> {
        assert!(self.containerd.is_none(), "containerd is already running");
        let log = OpenOptions::new().create(true).append(true).open(self.dir.join("containerd.log"))?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(self.dir.join("config.toml")).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // SAFETY: prctl is async-signal-safe. If the test process dies without
        // running its destructors, containerd goes with it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.containerd = Some(cmd.spawn().context("cannot start containerd")?);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::from("no socket yet");
        loop {
            if let Some(status) = self.containerd.as_mut().unwrap().try_wait()? {
                self.containerd = None;
                bail!("containerd exited at start-up ({status})");
            }
            if self.socket.exists() {
                match Cri::connect(&self.socket) {
                    Ok(c) => match c.conditions() {
                        Ok(conds) if conds.iter().all(|(_, ok, _)| *ok) && !conds.is_empty() => {
                            self.cri = Some(c);
                            return Ok(());
                        }
                        Ok(conds) => last = format!("conditions {conds:?}"),
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if Instant::now() > deadline {
                bail!("containerd did not become ready in 30 s: {last}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills containerd as a crash would (SIGKILL). Pods, shims and
    /// containers keep running.
    pub fn kill_containerd(&mut self) {
        self.cri = None;
        if let Some(mut c) = self.containerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn containerd_pid(&self) -> Option<u32> {
        self.containerd.as_ref().map(Child::id)
    }

    /// Creates the pod's cgroup, as the kubelet does before RunPodSandbox.
    pub fn pod_spec(&self, name: &str) -> PodSpec {
        let n = NEXT_POD.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let uid = format!("{:08x}-{n:04x}-4000-8000-{:012x}", std::process::id(), u64::from(nanos));
        let cgroup_rel = format!("{}/kubepods/burstable/pod{uid}", self.id);
        let cgroup = self.cg2.join(&cgroup_rel);
        std::fs::create_dir_all(&cgroup).unwrap_or_else(|e| panic!("cannot create {}: {e}", cgroup.display()));
        PodSpec { name: format!("{name}-{}", std::process::id()), uid, cgroup_rel, cgroup }
    }

    fn sandbox_config(&self, spec: &PodSpec, annotations: &[(&str, &str)]) -> api::PodSandboxConfig {
        let log_dir = self.dir.join("logs").join(&spec.name);
        let _ = std::fs::create_dir_all(&log_dir);
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: spec.name.clone(),
            log_directory: log_dir.display().to_string(),
            annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            labels: HashMap::from([("app".to_string(), spec.name.clone())]),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: format!("/{}", spec.cgroup_rel),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox alone: the sandbox id, or the CRI error.
    pub fn run_sandbox(&self, spec: &PodSpec, annotations: &[(&str, &str)]) -> Result<String, CriError> {
        let result = self.cri().run_pod_sandbox(self.sandbox_config(spec, annotations));
        match &result {
            Ok(id) => {
                self.ids.lock().unwrap().insert(id.clone());
            }
            // 'failed to setup network for sandbox "<id>": …'
            Err(e) => {
                if let Some(id) = e.message.split('"').find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit())) {
                    self.ids.lock().unwrap().insert(id.to_string());
                }
            }
        }
        result
    }

    /// RunPodSandbox, then one tools container running `command`.
    pub fn run_pod(&self, name: &str, annotations: &[(&str, &str)], command: &[&str]) -> Result<Pod> {
        let spec = self.pod_spec(name);
        let sandbox_id = self.run_sandbox(&spec, annotations).map_err(cri::cri_err)?;
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata { name: "tools".into(), attempt: 0 }),
            image: Some(api::ImageSpec { image: self.tools_image.clone(), ..Default::default() }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: "tools.log".into(),
            linux: Some(api::LinuxContainerConfig {
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let container_id = self
            .cri()
            .create_container(&sandbox_id, config, self.sandbox_config(&spec, annotations))
            .map_err(cri::cri_err)?;
        self.ids.lock().unwrap().insert(container_id.clone());
        self.cri().start_container(&container_id).map_err(cri::cri_err)?;
        let (status, info) = self.cri().pod_sandbox_status(&sandbox_id).map_err(cri::cri_err)?;
        let ip = status.network.map(|n| n.ip).filter(|ip| !ip.is_empty()).context("the sandbox has no IP")?;
        let netns = netns_from_info(&info).context("no network namespace path in PodSandboxStatus info")?;
        Ok(Pod { name: spec.name, uid: spec.uid, sandbox_id, container_id, ip, cgroup: spec.cgroup, netns })
    }

    /// Remembers a sandbox or container id made outside run_pod, so that
    /// cleanup finds its shim socket.
    pub fn track(&self, id: &str) {
        self.ids.lock().unwrap().insert(id.to_string());
    }

    /// StopPodSandbox + RemovePodSandbox.
    pub fn remove_pod(&self, pod: &Pod) -> Result<()> {
        self.cri().stop_pod_sandbox(&pod.sandbox_id).map_err(cri::cri_err)?;
        self.cri().remove_pod_sandbox(&pod.sandbox_id).map_err(cri::cri_err)?;
        Ok(())
    }

    /// Removes the pod's cgroup in every hierarchy, as the kubelet does after RemovePodSandbox.
    pub fn remove_pod_cgroups(&self, pod: &Pod) {
        let rel = pod.cgroup.strip_prefix(&self.cg2).unwrap().to_path_buf();
        for mount in cgroup_mounts() {
            remove_cgroup_tree(&mount.join(&rel));
        }
    }

    pub fn remove_pod_cgroup(&self, spec: &PodSpec) {
        for mount in cgroup_mounts() {
            remove_cgroup_tree(&mount.join(&spec.cgroup_rel));
        }
    }

    pub fn exec(&self, pod: &Pod, cmd: &[&str], timeout_s: i64) -> Result<cri::Exec> {
        self.cri().exec_sync(&pod.container_id, cmd, timeout_s).map_err(cri::cri_err)
    }

    /// Pins under the private pin root, relative.
    pub fn pins(&self) -> Vec<String> {
        crate::common::walk(&self.pin_root)
    }

    /// Pins of one sandbox.
    pub fn pod_pins(&self, sandbox_id: &str) -> Vec<String> {
        crate::common::walk(&self.pin_root.join("pods").join(&self.id).join(sandbox_id))
    }

    /// Ports on our bridge (the pods' host-side veths).
    pub fn bridge_ports(&self) -> Vec<String> {
        let out = Command::new("ip").args(["-j", "link", "show", "master", &self.bridge]).output().expect("ip");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]));
        v.as_array().map(|a| a.iter().filter_map(|l| l["ifname"].as_str().map(String::from)).collect()).unwrap_or_default()
    }

    /// host-local's reservations (one file per reserved IP).
    pub fn ipam_reservations(&self) -> Vec<String> {
        crate::common::walk(&self.dir.join("ipam").join(&self.id))
            .into_iter()
            .filter(|f| f.starts_with("10.252."))
            .collect()
    }

    /// Where containerd mounts pod netns (netns_mounts_under_state_dir).
    pub fn netns_dir(&self) -> PathBuf {
        self.dir.join("state/io.containerd.grpc.v1.cri/netns")
    }

    /// The pods' netns mounts.
    pub fn netns_mounts(&self) -> Vec<String> {
        list_dir(&self.netns_dir()).into_iter().map(|p| p.display().to_string()).collect()
    }

    /// libcni's cached results (containerd 1.6 cannot move them): ours are
    /// `<network>-<sandbox>-eth0` and `cni-loopback-<sandbox>-lo`.
    pub fn cni_cache_all() -> Vec<String> {
        list_dir(Path::new(CNI_CACHE))
            .into_iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect()
    }

    /// Cached results of this network or of any sandbox this test ran.
    pub fn cni_cache(&self) -> Vec<String> {
        let ids = self.ids.lock().unwrap();
        Self::cni_cache_all()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{}-", self.id)) || ids.iter().any(|id| n.contains(id.as_str())))
            .collect()
    }

    /// Processes that belong to this containerd: containerd itself and its
    /// shims (found by the socket address on their command line).
    pub fn our_processes(&self) -> Vec<u32> {
        let sock = self.socket.display().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let ours = args.windows(2).any(|w| w[0] == b"-address" && w[1] == sock.as_bytes())
                || args.iter().any(|a| *a == self.dir.join("config.toml").display().to_string().as_bytes());
            if ours {
                pids.push(pid);
            }
        }
        pids
    }

    pub fn logs(&self) -> String {
        let tail = |p: &Path, n: usize| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "--- containerd.log (tail) ---\n{}\n--- plugin.log (tail) ---\n{}",
            tail(&self.dir.join("containerd.log"), 40),
            tail(&self.dir.join("plugin.log"), 40)
        )
    }

    /// Tears everything down and returns what could not be removed.
    pub fn cleanup(&mut self) -> Vec<String> {
        if self.cleaned {
            return Vec::new();
        }
        self.cleaned = true;
        // 1. Pods, the kubelet's way, while containerd still runs.
        if let Some(cri) = &self.cri {
            for sb in cri.list_pod_sandboxes().unwrap_or_default() {
                self.ids.lock().unwrap().insert(sb.id.clone());
                let _ = cri.stop_pod_sandbox(&sb.id);
                let _ = cri.remove_pod_sandbox(&sb.id);
            }
        }
        // 2. containerd, whatever is left in the pods' cgroups, then the shims.
        self.kill_containerd();
        let base = self.cg2.join(&self.id);
        if base.exists() {
            let _ = std::fs::write(base.join("cgroup.kill"), "1");
        }
        for pid in self.our_processes() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.our_processes().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // 3. Mounts under our directory (rootfs overlays, shm, netns), deepest first.
        for m in mounts_under(&self.dir).into_iter().rev() {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        // 4. Pins (which detaches any link still there), the bridge, cgroups.
        let _ = std::fs::remove_dir_all(&self.pin_root);
        if Command::new("ip").args(["link", "show", "dev", &self.bridge]).output().is_ok_and(|o| o.status.success()) {
            let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
        }
        for mount in cgroup_mounts() {
            remove_cgroup_tree(&mount.join(&self.id));
        }
        // 5. Files containerd and libcni keep outside our directory.
        for name in self.cni_cache() {
            let _ = std::fs::remove_file(Path::new(CNI_CACHE).join(name));
        }
        // containerd 1.6 puts shim sockets in /run/containerd/s whatever its
        // state dir, named sha256("<address>/<namespace>/<id>"). A killed shim leaves its socket.
        for id in self.ids.lock().unwrap().iter() {
            let key = format!("{}/k8s.io/{id}", self.socket.display());
            if let Ok(hex) = image::sha256_of(key.as_bytes()) {
                let _ = std::fs::remove_file(Path::new("/run/containerd/s").join(hex));
            }
        }
        for d in &self.absent_system_dirs {
            let _ = std::fs::remove_dir(d);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = std::fs::remove_dir_all(&self.dir);

        let mut left = Vec::new();
        if !self.our_processes().is_empty() {
            left.push(format!("processes {:?}", self.our_processes()));
        }
        let m = mounts_under(&self.dir);
        if !m.is_empty() {
            left.push(format!("mounts {m:?}"));
        }
        for p in [&self.dir, &self.pin_root] {
            if p.exists() {
                left.push(format!("{} exists", p.display()));
            }
        }
        if Command::new("ip").args(["link", "show", "dev", &self.bridge]).output().is_ok_and(|o| o.status.success()) {
            left.push(format!("bridge {}", self.bridge));
        }
        for mount in cgroup_mounts() {
            if mount.join(&self.id).exists() {
                left.push(format!("cgroup {}", mount.join(&self.id).display()));
            }
        }
        if !self.cni_cache().is_empty() {
            left.push(format!("CNI cache {:?}", self.cni_cache()));
        }
        left
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let left = self.cleanup();
        if !left.is_empty() {
            eprintln!("containerd e2e: could not remove {left:?}");
        }
    }
}

fn namespaces() -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Pod as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The network namespace path from containerd's verbose sandbox info.
fn netns_from_info(info: &HashMap<String, String>) -> Option<PathBuf> {
    let v: Value = serde_json::from_str(info.get("info")?).ok()?;
    v["runtimeSpec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")
        .and_then(|ns| ns["path"].as_str())
        .map(PathBuf::from)
}

fn list_dir(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect()
}

/// Mount points of every cgroup hierarchy (v1 controllers and v2): runc
/// creates the pod's cgroup parent in all of them on a hybrid host.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mi.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            if !matches!(fstype, "cgroup" | "cgroup2") {
                return None;
            }
            Some(PathBuf::from(left.split_whitespace().nth(4)?))
        })
        .collect()
}

/// Mount points at or below `dir`, in mount order.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mi.lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(|p| PathBuf::from(p.replace("\\040", " "))))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Removes a cgroup directory and its children, deepest first, waiting
/// briefly for exiting processes.
pub fn remove_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let mut dirs = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        for e in std::fs::read_dir(&dirs[i]).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
        i += 1;
    }
    for d in dirs.iter().rev() {
        bpf_ratelimit::testbed::remove_cgroup(d);
    }
}
