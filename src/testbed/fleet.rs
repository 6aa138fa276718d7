//! A busy node: many pods on one bridge, and one server on the same bridge
//! that every pod talks to at once (issue 25). Each pod has its own netns,
//! veth (host end on the bridge, as a bridge main plugin leaves it) and
//! cgroup; the server runs one iperf3 server per pod. Everything is removed
//! on drop.
//!
//! ```text
//!  pod 0 netns  eth0 ── veth ── host_veth(0) ─┐
//!  pod 1 netns  eth0 ── veth ── host_veth(1) ─┼─ bridge ── veth ── eth0  server netns
//!  ...                                        ┘                   SERVER
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{cgroup2_mount, in_netns, ip, netns_path, remove_cgroup, wait_for_port, NEXT};

pub const FLEET_SERVER_IP: &str = "10.249.0.1";
/// Pod i's iperf3 server port on the server.
const FIRST_PORT: u32 = 7000;
/// A bridge holds at most 1024 ports (BR_MAX_PORTS), the server's among them.
pub const MAX_PODS: usize = 1000;
/// Pods that move traffic: the server holds a neighbour entry for each, and
/// the kernel's neighbour table is shared by every netns (gc_thresh3, 1024
/// by default).
pub const MAX_MOVING: usize = 400;

pub struct FleetPod {
    pub netns: PathBuf,
    pub host_veth: String,
    pub cgroup: PathBuf,
    pub ip: String,
    port: u32,
}

pub struct Fleet {
    pub name: String,
    pub bridge: String,
    server_veth: String,
    server_ns: String,
    pub pods: Vec<FleetPod>,
    cgroup_parent: PathBuf,
    servers: Vec<Child>,
}

/// One pod's transfer, as iperf3's receiver counted it.
#[derive(Debug, Clone)]
pub struct PodTransfer {
    pub goodput_bps: f64,
    pub retransmits: u64,
}

/// What a transfer run by every pod at once measured.
#[derive(Debug, Clone)]
pub struct FleetTransfer {
    pub pods: Vec<PodTransfer>,
    /// How long every pod was sending at once, past its omitted seconds:
    /// the time `transfer_all` gave its `during` callback.
    pub window: Duration,
}

impl FleetPod {
    /// The prevResult a bridge main plugin would give for this pod.
    pub fn prev_result(&self, bridge: &str, cni_version: &str) -> Value {
        serde_json::json!({
            "cniVersion": cni_version,
            "interfaces": [
                {"name": bridge, "mac": "aa:bb:cc:dd:ee:01"},
                {"name": self.host_veth, "mac": "aa:bb:cc:dd:ee:02"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": self.netns}
            ],
            "ips": [{"address": format!("{}/16", self.ip), "gateway": FLEET_SERVER_IP, "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        })
    }
}

impl Fleet {
    /// Each pod as a shaper is given it (what a bridge main plugin leaves).
    pub fn pod_refs(&self) -> Result<Vec<super::shapers::PodRef>> {
        let mount = cgroup2_mount()?;
        self.pods
            .iter()
            .map(|p| {
                Ok(super::shapers::PodRef {
                    netns: p.netns.clone(),
                    host_veth: p.host_veth.clone(),
                    cgroup_path: format!("/{}", p.cgroup.strip_prefix(&mount)?.display()),
                    prev_result: p.prev_result(&self.bridge, "1.0.0"),
                })
            })
            .collect()
    }

    /// `count` pods and the server on one bridge, with an iperf3 server
    /// for each pod.
    pub fn create(prefix: &str, count: usize) -> Result<Self> {
        Self::with_moving(prefix, count, count)
    }

    /// `count` pods on one bridge, of which the first `moving` have an
    /// iperf3 server and take part in `transfer_all`.
    pub fn with_moving(prefix: &str, count: usize, moving: usize) -> Result<Self> {
        if count == 0 || count > MAX_PODS {
            bail!("a fleet has 1 to {MAX_PODS} pods, not {count}");
        }
        if moving == 0 || moving > count.min(MAX_MOVING) {
            bail!("1 to {} of a fleet's {count} pods can move traffic, not {moving}", count.min(MAX_MOVING));
        }
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let tag = format!("{:x}{n:x}", std::process::id());
        let mut fleet = Fleet {
            bridge: format!("brf{tag}b"),
            server_veth: format!("brf{tag}s"),
            server_ns: format!("{name}-srv"),
            pods: Vec::new(),
            cgroup_parent: cgroup2_mount()?.join("bpf-ratelimit-test").join(&name),
            servers: Vec::new(),
            name,
        };
        fleet.setup(count, moving, &tag).with_context(|| format!("cannot set up a fleet of {count} pods"))?;
        Ok(fleet)
    }

    fn setup(&mut self, count: usize, moving: usize, tag: &str) -> Result<()> {
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        ip(&["netns", "add", &self.server_ns])?;
        ip(&["link", "add", "eth0", "address", &mac(0xffff), "netns", &self.server_ns, "type", "veth", "peer", "name", &self.server_veth])?;
        ip(&["link", "set", &self.server_veth, "master", &self.bridge, "up"])?;
        ip(&["-n", &self.server_ns, "addr", "add", &format!("{FLEET_SERVER_IP}/16"), "dev", "eth0"])?;
        ip(&["-n", &self.server_ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &self.server_ns, "link", "set", "lo", "up"])?;
        std::fs::create_dir_all(&self.cgroup_parent).with_context(|| format!("cannot create {}", self.cgroup_parent.display()))?;
        for i in 0..count {
            let ns = format!("{}-p{i}", self.name);
            let pod = FleetPod {
                netns: netns_path(&ns),
                host_veth: format!("brf{tag}p{i:x}"),
                cgroup: self.cgroup_parent.join(format!("pod{i}")),
                ip: format!("10.249.{}.{}", 1 + i / 250, 2 + i % 250),
                port: FIRST_PORT + i as u32,
            };
            ip(&["netns", "add", &ns])?;
            // Pushed before it is complete, so that drop removes what exists.
            self.pods.push(pod);
            let pod = self.pods.last().expect("just pushed");
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["link", "add", "eth0", "address", &mac(i), "netns", &ns, "type", "veth", "peer", "name", &pod.host_veth])?;
            // No IPv6 link-local addresses: their DAD, router solicitations
            // and MLD reports, sent by every pod and host end as it comes
            // up, are flooded to every port of the bridge, and at hundreds
            // of ports they overflow the CPUs' backlogs for seconds.
            ip(&["link", "set", &pod.host_veth, "master", &self.bridge, "addrgenmode", "none", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/16", pod.ip), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "addrgenmode", "none", "up"])?;
            std::fs::create_dir_all(&pod.cgroup).with_context(|| format!("cannot create {}", pod.cgroup.display()))?;
        }
        // Moving pods and the server know each other's addresses: an ARP
        // request is flooded to every port of the bridge, and with 1000
        // ports, 40 pods starting at once got no answer ("No route to
        // host"; the node's arp_cache counted resolution failures, not a
        // full table).
        for (i, pod) in self.pods[..moving].iter().enumerate() {
            let ns = pod.netns.file_name().and_then(|n| n.to_str()).context("netns name")?;
            ip(&["-n", ns, "neigh", "replace", FLEET_SERVER_IP, "lladdr", &mac(0xffff), "dev", "eth0", "nud", "permanent"])?;
            ip(&["-n", &self.server_ns, "neigh", "replace", &pod.ip, "lladdr", &mac(i), "dev", "eth0", "nud", "permanent"])?;
        }
        let server_ns = netns_path(&self.server_ns);
        for pod in &self.pods[..moving] {
            let child = in_netns(Command::new("iperf3"), &server_ns, None)?
                .args(["-s", "-p", &pod.port.to_string(), "-B", FLEET_SERVER_IP])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start iperf3 -s")?;
            self.servers.push(child);
        }
        for pod in &self.pods[..moving] {
            wait_for_port(&server_ns, FLEET_SERVER_IP, &pod.port.to_string())?;
        }
        // The probe's connection keeps an iperf3 server busy for a moment.
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    /// The pods that move traffic.
    pub fn moving(&self) -> &[FleetPod] {
        &self.pods[..self.servers.len()]
    }

    /// Every moving pod moves TCP at once for `omit` + `seconds` s (download:
    /// server → pod): one flow each, `cc` congestion control. `during` is
    /// called once every pod is past its omitted seconds, and is given the
    /// time left in which all of them are still sending.
    pub fn transfer_all(&self, download: bool, cc: &str, omit: u32, seconds: u32, during: impl FnOnce(Duration)) -> Result<FleetTransfer> {
        // Each client waits for a line on its stdin before it becomes
        // iperf3, and all are released together: started one by one, the
        // first ones' traffic saturated the CPUs while the last were still
        // being started (200 pods at 10M took 4-20 s to start, most of a
        // transfer).
        let mut clients = Vec::new();
        for pod in self.moving() {
            let mut cmd = in_netns(Command::new("sh"), &pod.netns, Some(&pod.cgroup))?;
            cmd.args(["-c", "read -r _ && exec \"$0\" \"$@\"", "iperf3"])
                .args(["-c", FLEET_SERVER_IP, "-p", &pod.port.to_string(), "-J", "-O", &omit.to_string(), "-t", &seconds.to_string()])
                .args(["-C", cc, "--connect-timeout", "5000"]);
            if download {
                cmd.arg("-R");
            }
            clients.push(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("cannot start iperf3 -c")?);
        }
        let started = Instant::now();
        for c in &mut clients {
            let mut go = c.stdin.take().context("a client's stdin")?;
            go.write_all(b"go\n").context("cannot release an iperf3 client")?;
        }
        let spawned = started.elapsed();
        // Every pod is sending from (last release + omit) to (first release + omit + seconds).
        let lead = Duration::from_millis(300);
        let window = (Duration::from_secs(u64::from(seconds)).saturating_sub(spawned)).saturating_sub(2 * lead);
        if window < Duration::from_secs(1) {
            bail!("releasing {} clients took {spawned:?}: too long for a {seconds} s transfer", self.moving().len());
        }
        std::thread::sleep(Duration::from_secs(u64::from(omit)) + lead);
        during(window);
        let mut pods = Vec::new();
        let deadline = started + Duration::from_secs(u64::from(omit + seconds) + 30);
        for (pod, child) in self.moving().iter().zip(clients) {
            let out = wait_output(child, deadline)?;
            let v: Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("iperf3 in pod {} printed no JSON: {}", pod.ip, String::from_utf8_lossy(&out.stderr)))?;
            if let Some(e) = v.get("error") {
                bail!("iperf3 in pod {} failed: {e}", pod.ip);
            }
            let t = super::iperf::Transfer::from_json(&v)?;
            pods.push(PodTransfer { goodput_bps: t.goodput_bps, retransmits: t.retransmits });
        }
        Ok(FleetTransfer { pods, window })
    }
}

/// The MAC address of pod `i`'s eth0 (0xffff: the server's).
fn mac(i: usize) -> String {
    format!("02:42:0a:f9:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff)
}

fn wait_output(mut child: Child, deadline: Instant) -> Result<std::process::Output> {
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("an iperf3 client outlived its transfer by 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for pod in &self.pods {
            let _ = ip(&["link", "del", &pod.host_veth]);
            if let Some(ns) = pod.netns.file_name().and_then(|n| n.to_str()) {
                let _ = ip(&["netns", "del", ns]);
            }
            remove_cgroup(&pod.cgroup);
        }
        let _ = ip(&["link", "del", &self.server_veth]);
        let _ = ip(&["netns", "del", &self.server_ns]);
        let _ = ip(&["link", "del", &self.bridge]);
        remove_cgroup(&self.cgroup_parent);
        if let Some(parent) = self.cgroup_parent.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}
