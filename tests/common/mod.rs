//! Shared fixtures for the privileged integration tests. They need root,
//! cgroup v2, bpffs, iproute2, bpftool and iperf3, and fail loudly (never
//! skip) when any is missing.
#![allow(dead_code)]

pub mod kustomize;
pub mod retries;

/// The request/response and odd-traffic tool (tests/tools/podload.py).
pub const PODLOAD: &str = bpf_ratelimit::testbed::scenario::PODLOAD;

use std::path::{Path, PathBuf};
use std::process::Command;

use bpf_ratelimit::testbed::scenario::{Bulk, BulkResult};
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
    /// The network name of this pod's configs: its own unless a test puts
    /// pods on one network, so that a GC in one test never touches another's.
    pub net: String,
}

impl Pod {
    pub fn new(tag: &str) -> Pod {
        Self::with_delay(tag, std::time::Duration::ZERO)
    }

    /// A pod whose server is `one_way` away each way.
    pub fn with_delay(tag: &str, one_way: std::time::Duration) -> Pod {
        require_privileges();
        let bed = Testbed::with_delay(&format!("brl-{tag}"), one_way).expect("testbed");
        let mount = bpf_ratelimit::testbed::cgroup2_mount().unwrap();
        let cgroup_path = format!("/{}", bed.cgroup.strip_prefix(&mount).unwrap().display());
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/brl-test-{}", bed.name));
        let net = format!("net-{}", bed.name);
        Pod { bed, pin_root, cgroup_path, net }
    }

    /// The network name of this pod's configs.
    pub fn network(&self) -> String {
        self.net.clone()
    }

    /// A network config as containerd sends it, with the pod's annotations.
    pub fn config(&self, annotations: Value) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": self.network(),
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

    /// Invokes the plugin for interface `ifname` of the pod.
    pub fn invoke_if(&self, command: &str, container_id: &str, ifname: &str, config: &Value) -> PluginOutput {
        Invocation {
            plugin: &plugin(),
            command,
            container_id,
            ifname,
            netns: &self.bed.pod_netns_path(),
            cni_args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=test",
            config,
        }
        .run()
        .expect("plugin runs")
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

    /// This pod's entry in `bpf-ratelimit stats` (its state and guards, as
    /// loaded into the kernel).
    pub fn stats(&self) -> Value {
        let out = Command::new(plugin()).arg("stats").arg(&self.pin_root).output().expect("bpf-ratelimit stats");
        assert!(out.status.success(), "stats: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("stats prints JSON");
        v["pods"][0].clone()
    }

    pub fn cgroup_attachments(&self) -> String {
        bpftool_cgroup_show(&self.bed.cgroup)
    }
}

/// A second interface of a pod, as a Multus secondary network leaves it:
/// `net1` in the pod's netns, its veth peer on the node, on a subnet of its
/// own (10.250.0.0/24) shared with a server netns reached through it.
pub struct SecondInterface {
    pub host_veth: String,
    pub server_ns: String,
    pub server_veth: String,
    pub bridge: String,
}

pub const SECOND_POD_IP: &str = "10.250.0.2";
pub const SECOND_SERVER_IP: &str = "10.250.0.1";

impl SecondInterface {
    pub fn new(pod: &Pod) -> Self {
        let tag = pod.bed.pod_host_veth.trim_start_matches("brlp").to_string();
        let s = SecondInterface {
            host_veth: format!("brlq{tag}"),
            server_ns: format!("{}-srv2", pod.bed.name),
            server_veth: format!("brlr{tag}"),
            bridge: format!("brlc{tag}"),
        };
        let ip = |args: &[&str]| bpf_ratelimit::testbed::ip(args).unwrap_or_else(|e| panic!("{e:#}"));
        ip(&["netns", "add", &s.server_ns]);
        ip(&["link", "add", &s.bridge, "type", "bridge"]);
        ip(&["link", "set", &s.bridge, "up"]);
        ip(&["link", "add", "net1", "netns", &pod.bed.pod_ns, "type", "veth", "peer", "name", &s.host_veth]);
        ip(&["link", "add", "eth0", "netns", &s.server_ns, "type", "veth", "peer", "name", &s.server_veth]);
        for host in [&s.host_veth, &s.server_veth] {
            ip(&["link", "set", host, "master", &s.bridge, "up"]);
        }
        for (ns, dev, addr) in [(&pod.bed.pod_ns, "net1", SECOND_POD_IP), (&s.server_ns, "eth0", SECOND_SERVER_IP)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip(&["-n", &s.server_ns, "link", "set", "lo", "up"]);
        s
    }

    /// prevResult as a bridge plugin gives it for net1.
    pub fn prev_result(&self, pod: &Pod) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": self.bridge},
                {"name": self.host_veth},
                {"name": "net1", "sandbox": pod.bed.pod_netns_path()}
            ],
            "ips": [{"address": format!("{SECOND_POD_IP}/24"), "interface": 2}],
        })
    }

    pub fn server_netns(&self) -> PathBuf {
        bpf_ratelimit::testbed::netns_path(&self.server_ns)
    }
}

impl Drop for SecondInterface {
    fn drop(&mut self) {
        let _ = bpf_ratelimit::testbed::ip(&["link", "del", &self.host_veth]);
        let _ = bpf_ratelimit::testbed::ip(&["link", "del", &self.server_veth]);
        let _ = bpf_ratelimit::testbed::ip(&["netns", "del", &self.server_ns]);
        let _ = bpf_ratelimit::testbed::ip(&["link", "del", &self.bridge]);
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

/// bpftool's output for a command that must succeed.
fn bpftool(args: &[&str]) -> Vec<u8> {
    let out = Command::new("bpftool").args(args).output().expect("bpftool runs");
    assert!(out.status.success(), "bpftool {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

pub fn bpftool_cgroup_show(cgroup: &Path) -> String {
    let path = cgroup.to_str().expect("cgroup path");
    String::from_utf8_lossy(&bpftool(&["cgroup", "show", path])).trim().to_string()
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
    let v: Value = serde_json::from_slice(&bpftool(&["-j", "link", "list"])).expect("bpftool -j prints JSON");
    let field = |l: &Value, k: &str| l[k].as_u64().unwrap_or_else(|| panic!("bpftool link without {k}: {l}"));
    v.as_array()
        .expect("a list of links")
        .iter()
        .filter(|l| l["type"] == "cgroup")
        .map(|l| CgroupLink { id: field(l, "id"), prog_id: field(l, "prog_id"), cgroup_id: field(l, "cgroup_id") })
        .collect()
}

/// Runs `bulk` and asserts its rate on the wire lies in `band` x `limit`
/// (bits/s). Above the band fails at once: a busy CPU cannot make a shaper
/// let more through. Below it, the run is repeated once (recorded against
/// the suite's retry budget) only if the machine starved it while it ran
/// (host steal or a late sentinel, not the test's own load: retries.rs);
/// else it fails.
pub fn assert_bulk(pod: &Pod, bulk: &Bulk, limit: f64, band: (f64, f64), what: &str) -> BulkResult {
    for attempt in 0..2 {
        let watch = retries::Starvation::watch();
        let r = pod.bed.bulk(bulk).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let machine = watch.verdict();
        let ratio = r.wire_bps / limit;
        println!(
            "{what}: wire {ratio:.3} of the limit (goodput {:.3}), {:.2}% of segments resent, Jain {:.3}, {}",
            r.transfer.goodput_bps / limit,
            100.0 * r.transfer.resent_share(1448.0),
            bpf_ratelimit::testbed::measure::jain(&r.transfer.streams_bps),
            machine.evidence()
        );
        assert!(ratio <= band.1, "{what}: {ratio:.3} of the limit on the wire, above {}", band.1);
        if ratio >= band.0 {
            return r;
        }
        if attempt == 0 && machine.starved() {
            retries::record(what, &format!("{ratio:.3} < {} with {}", band.0, machine.evidence()));
            continue;
        }
        panic!("{what}: {ratio:.3} of the limit on the wire, below {} ({})", band.0, machine.evidence());
    }
    unreachable!()
}

pub fn assert_ratio(what: &str, measured: f64, configured: f64, low: f64, high: f64) {
    let ratio = measured / configured;
    println!("{what}: configured {configured:.0} bit/s, measured {measured:.0} bit/s, ratio {ratio:.3}");
    assert!((low..=high).contains(&ratio), "{what}: ratio {ratio:.3} outside {low}..{high}");
}

pub use bpf_ratelimit::testbed::Background;

/// Starts `cmd` in the background, its output discarded.
pub fn background(mut cmd: Command) -> Background {
    use std::process::Stdio;
    Background(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")))
}

/// `program` with `args` in the pod (its cgroup and netns).
pub fn in_pod(pod: &Pod, program: &str, args: &[&str]) -> Command {
    let mut cmd = pod.bed.pod_command(program).unwrap();
    cmd.args(args);
    cmd
}

/// A sender tool built from tests/tools (xdp_tx, raw_tx, pktflood, udp_gso).
pub fn tool(name: &str) -> String {
    bpf_ratelimit::testbed::scenario::tool(name)
}

/// The address a `metrics --listen` server says it bound (its first line on
/// stderr), within 10 s; a server that never says fails the test, not hangs it.
pub fn listening_address(server: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let stderr = server.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stderr).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap_or_default();
    let addr = line.trim().rsplit("http://").next().unwrap_or_default().trim_end_matches("/metrics").to_string();
    if addr.is_empty() {
        let _ = server.kill();
        panic!("metrics --listen did not say where it listens: {line:?}");
    }
    addr
}

/// What the first second of a transfer into or out of an idle pod must
/// carry, on the wire, against `rate x 1 s + burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstSecond {
    /// The limit with its burst: at most 1.01, at least 0.9 of it.
    WithTheBurst,
    /// The control with no limit: above the upper bound.
    Unlimited,
    /// The control with a 1-packet burst at the same rate: below the lower bound.
    OnePacketBurst,
}

/// Measures the first second of a transfer in `way` (Testbed::first_second),
/// prints it as `what`, and holds it to `expect` against `bound`.
pub fn assert_first_second(pod: &Pod, way: bpf_ratelimit::testbed::scenario::Way, bound: f64, expect: FirstSecond, what: &str) {
    let bytes = pod.bed.first_second(way).unwrap_or_else(|e| panic!("{what}: {e:#}")) as f64;
    let share = bytes / bound;
    println!("{what}: first second {bytes:.0} bytes on the wire, {share:.3} of rate x 1 s + burst");
    match expect {
        FirstSecond::WithTheBurst => {
            assert!(share <= 1.01, "{what}: {bytes} bytes > rate x 1 s + burst ({bound})");
            assert!(share >= 0.9, "{what}: {bytes} bytes < 0.9 x (rate x 1 s + burst) ({bound})");
        }
        FirstSecond::Unlimited => assert!(share > 1.01, "{what}: only {share:.3} of the bound with no limit: the upper bound cannot fail"),
        FirstSecond::OnePacketBurst => assert!(share < 0.9, "{what}: {share:.3} of the bound with a 1-packet burst: the lower bound cannot fail"),
    }
}

/// Whether this kernel makes prio and fq_codel (the ingress queue's
/// flow-fair child), asked through iproute2's `tc` on a veth of its own,
/// removed after.
pub fn kernel_has_prio_and_fq_codel() -> bool {
    let probe = format!("brlpr{:x}", std::process::id() % 0xffff);
    bpf_ratelimit::testbed::ip(&["link", "add", &probe, "type", "veth", "peer", "name", &format!("{probe}p")]).unwrap();
    let tc = |args: &[&str]| Command::new("tc").args(args).output().unwrap().status.success();
    let has = tc(&["qdisc", "add", "dev", &probe, "root", "handle", "9:", "prio"])
        && tc(&["qdisc", "add", "dev", &probe, "parent", "9:2", "handle", "10:", "fq_codel"]);
    bpf_ratelimit::testbed::ip(&["link", "del", &probe]).unwrap();
    has
}
