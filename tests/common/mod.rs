//! Shared fixtures for the privileged integration tests. They need root,
//! cgroup v2, bpffs, iproute2, bpftool and iperf3, and fail loudly (never
//! skip) when any is missing.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use bpf_ratelimit::testbed::{Invocation, PluginOutput, Testbed};
use serde_json::{json, Value};

pub fn plugin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bpf-ratelimit"))
}

pub fn require_privileges() {
    assert!(unsafe { libc::geteuid() } == 0, "these tests load BPF programs and create netns: run them as root");
    for tool in ["ip", "bpftool", "iperf3"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map(|o| o.status.success());
        assert!(found.unwrap_or(false), "{tool} is missing: run sudo ./install.sh (or .ci/run) first");
    }
}

/// A pod under test: a testbed plus its own pin root, so tests never see
/// each other's pins.
pub struct Pod {
    pub bed: Testbed,
    pub pin_root: PathBuf,
    pub cgroup_path: String,
}

impl Pod {
    pub fn new(tag: &str) -> Pod {
        require_privileges();
        let bed = Testbed::create(&format!("brl-{tag}")).expect("testbed");
        let mount = bpf_ratelimit::testbed::cgroup2_mount().unwrap();
        let cgroup_path = format!("/{}", bed.cgroup.strip_prefix(&mount).unwrap().display());
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/brl-test-{}", bed.name));
        Pod { bed, pin_root, cgroup_path }
    }

    /// A network config as containerd sends it, with the pod's annotations.
    pub fn config(&self, annotations: Value) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "test",
            "type": "bpf-ratelimit",
            "pinRoot": self.pin_root,
            "runtimeConfig": {
                "cgroupPath": self.cgroup_path,
                "io.kubernetes.cri.pod-annotations": annotations,
            },
            "prevResult": self.bed.prev_result("1.0.0"),
        })
    }

    pub fn invoke(&self, command: &str, config: &Value) -> PluginOutput {
        self.invoke_as(command, &self.bed.name, config)
    }

    pub fn invoke_as(&self, command: &str, container_id: &str, config: &Value) -> PluginOutput {
        self.invoke_full(command, container_id, "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=test", config)
    }

    pub fn invoke_full(&self, command: &str, container_id: &str, cni_args: &str, config: &Value) -> PluginOutput {
        self.invoke_binary(&plugin(), command, container_id, cni_args, config)
    }

    /// Runs another build of the plugin (the upgrade test's older release).
    pub fn invoke_binary(&self, binary: &Path, command: &str, container_id: &str, cni_args: &str, config: &Value) -> PluginOutput {
        Invocation {
            plugin: binary,
            command,
            container_id,
            ifname: "eth0",
            netns: &self.bed.pod_netns_path(),
            cni_args,
            config,
        }
        .run()
        .expect("plugin runs")
    }

    pub fn add(&self, annotations: Value) -> PluginOutput {
        let out = self.invoke("ADD", &self.config(annotations));
        assert_eq!(out.code, 0, "ADD failed: {}\n{}", out.stdout, out.stderr);
        out
    }

    pub fn del(&self) {
        let out = self.invoke("DEL", &self.config(json!({})));
        assert_eq!(out.code, 0, "DEL failed: {}\n{}", out.stdout, out.stderr);
    }

    /// Files under the pin root (pins and directories), relative.
    pub fn pins(&self) -> Vec<String> {
        walk(&self.pin_root)
    }

    pub fn cgroup_attachments(&self) -> String {
        bpftool_cgroup_show(&self.bed.cgroup)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Whatever a failed test left: unpin it all, which detaches links.
        let _ = std::fs::remove_dir_all(&self.pin_root);
    }
}

pub fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(root).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

pub fn bpftool_cgroup_show(cgroup: &Path) -> String {
    let out = Command::new("bpftool").args(["cgroup", "show"]).arg(cgroup).output().expect("bpftool");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One cgroup bpf_link, as `bpftool link list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLink {
    pub id: u64,
    pub prog_id: u64,
    pub cgroup_id: u64,
}

/// Every cgroup link in the system.
pub fn cgroup_links() -> Vec<CgroupLink> {
    let out = Command::new("bpftool").args(["-j", "link", "list"]).output().expect("bpftool");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]));
    v.as_array()
        .unwrap()
        .iter()
        .filter(|l| l["type"] == "cgroup")
        .map(|l| CgroupLink {
            id: l["id"].as_u64().unwrap_or(0),
            prog_id: l["prog_id"].as_u64().unwrap_or(0),
            cgroup_id: l["cgroup_id"].as_u64().unwrap_or(0),
        })
        .collect()
}

pub fn assert_ratio(what: &str, measured: f64, configured: f64, low: f64, high: f64) {
    let ratio = measured / configured;
    println!("{what}: configured {configured:.0} bit/s, measured {measured:.0} bit/s, ratio {ratio:.3}");
    assert!((low..=high).contains(&ratio), "{what}: ratio {ratio:.3} outside {low}..{high}");
}
