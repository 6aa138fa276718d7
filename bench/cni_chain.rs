//! The CNI side of the benchmark: the two plugins and the chains that run
//! them, as libcni does (ADD forwards prevResult, DEL runs backwards).

use super::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Plugin {
    Ours,
    Reference,
}

impl Plugin {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Plugin::Ours => "bpf-ratelimit",
            Plugin::Reference => "bandwidth (reference)",
        }
    }
}

/// Runs CNI plugin chains the way libcni does: each plugin gets the previous
/// one's result as prevResult; DEL runs the chain backwards.
pub(crate) struct Cni {
    pub(crate) bin_dir: PathBuf,
    pub(crate) data_dir: PathBuf,
}

pub(crate) struct CniPod {
    pub(crate) name: String,
    pub(crate) netns: PathBuf,
    pub(crate) cgroup: PathBuf,
    pub(crate) chain: Vec<Value>,
    pub(crate) runtime_config: Value,
    pub(crate) ip: String,
}

impl Cni {
    pub(crate) fn new(work: &Path) -> Result<Self> {
        let bin_dir = work.join("bin");
        std::fs::create_dir_all(&bin_dir)?;
        for entry in std::fs::read_dir("/usr/lib/cni").context("Debian's CNI plugins are missing: apt-get install containernetworking-plugins")? {
            let entry = entry?;
            std::os::unix::fs::symlink(entry.path(), bin_dir.join(entry.file_name()))?;
        }
        let ours = std::env::current_exe()?.parent().unwrap().parent().unwrap().join("bpf-ratelimit");
        if !ours.exists() {
            bail!("{} is missing: build with cargo build --release first", ours.display());
        }
        std::os::unix::fs::symlink(&ours, bin_dir.join("bpf-ratelimit"))?;
        Ok(Cni { bin_dir, data_dir: work.join("ipam") })
    }

    pub(crate) fn bridge(&self) -> Value {
        json!({
            "type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]], "dataDir": self.data_dir}
        })
    }

    /// Invokes one plugin; returns its stdout and the wall time of the call.
    pub(crate) fn invoke(&self, command: &str, pod: &CniPod, conf: &Value, prev: Option<&Value>) -> Result<(Value, Duration)> {
        let mut conf = conf.clone();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!("bench");
        conf["runtimeConfig"] = pod.runtime_config.clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let plugin = conf["type"].as_str().unwrap().to_string();
        let started = Instant::now();
        let mut child = Command::new(self.bin_dir.join(&plugin))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.name)
            .env("CNI_NETNS", &pod.netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAME={};K8S_POD_NAMESPACE=bench", pod.name))
            .env("CNI_PATH", &self.bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let elapsed = started.elapsed();
        if !out.status.success() {
            bail!("{plugin} {command} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        let v = if out.stdout.is_empty() { Value::Null } else { serde_json::from_slice(&out.stdout)? };
        Ok((v, elapsed))
    }

    /// ADD the chain; returns the last plugin's own wall time.
    pub(crate) fn add(&self, pod: &mut CniPod) -> Result<Duration> {
        let mut prev: Option<Value> = None;
        let mut last = Duration::ZERO;
        for conf in pod.chain.clone() {
            let (result, t) = self.invoke("ADD", pod, &conf, prev.as_ref())?;
            prev = Some(result);
            last = t;
        }
        let result = prev.unwrap();
        let addr = result["ips"][0]["address"].as_str().context("no IP in the CNI result")?;
        pod.ip = addr.split('/').next().unwrap().to_string();
        Ok(last)
    }

    pub(crate) fn del(&self, pod: &CniPod) -> Result<Duration> {
        let mut first = Duration::ZERO;
        for (i, conf) in pod.chain.iter().rev().enumerate() {
            let (_, t) = self.invoke("DEL", pod, conf, None)?;
            if i == 0 {
                first = t;
            }
        }
        Ok(first)
    }
}

impl CniPod {
    pub(crate) fn new(name: &str, chain: Vec<Value>, runtime_config: Value) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let mount = cgroup2_mount()?;
        let cgroup = mount.join("bpf-ratelimit-bench").join(name);
        std::fs::create_dir_all(&cgroup)?;
        let cgroup_path = format!("/{}", cgroup.strip_prefix(&mount)?.display());
        let mut rc = runtime_config;
        rc["cgroupPath"] = json!(cgroup_path);
        Ok(CniPod {
            name: name.into(),
            netns: PathBuf::from("/var/run/netns").join(name),
            cgroup,
            chain,
            runtime_config: rc,
            ip: String::new(),
        })
    }

    pub(crate) fn command(&self, program: &str) -> Result<Command> {
        in_netns(Command::new(program), &self.netns, Some(&self.cgroup))
    }
}

impl Drop for CniPod {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        remove_cgroup(&self.cgroup);
    }
}

pub(crate) fn runtime_config(rate: Option<u64>) -> Value {
    match rate {
        None => json!({}),
        Some(r) => json!({
            "bandwidth": {"ingressRate": r, "ingressBurst": CONTAINERD_NO_BURST, "egressRate": r, "egressBurst": CONTAINERD_NO_BURST},
            "io.kubernetes.cri.pod-annotations": {
                "kubernetes.io/ingress-bandwidth": r.to_string(),
                "kubernetes.io/egress-bandwidth": r.to_string()
            }
        }),
    }
}

pub(crate) fn plugin_tag(p: Plugin) -> &'static str {
    match p {
        Plugin::Ours => "o",
        Plugin::Reference => "r",
    }
}

pub(crate) fn chain(cni: &Cni, plugin: Plugin) -> Vec<Value> {
    let shaper = match plugin {
        Plugin::Ours => json!({"type": "bpf-ratelimit", "pinRoot": format!("/sys/fs/bpf/brl-bench-{}", std::process::id())}),
        Plugin::Reference => json!({"type": "bandwidth"}),
    };
    vec![cni.bridge(), shaper]
}

