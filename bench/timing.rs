//! ADD and DEL wall time of each plugin, as a runtime waits for it
//! (process start to exit). Pods are what a main plugin leaves: a netns
//! with eth0, the host end of its veth on a bridge, and a cgroup; no
//! traffic. The plugins take turns pod by pod (which goes first alternates)
//! so that both meet the same machine load and the same number of pods
//! already set up; all pods stay until every ADD is done, then are DELed
//! in reverse order. One pod of each plugin is ADDed first, uncounted, and
//! stays until the end, as on a node that already runs pods.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bpf_ratelimit::testbed::measure::percentile;
use bpf_ratelimit::testbed::{cgroup2_mount, ip, remove_cgroup};
use serde::Serialize;
use serde_json::json;

use bpf_ratelimit::testbed::shapers::{Attached, Plugins, PodRef, Row};
use crate::util::{check_interrupted, Progress};

const RATE: u64 = 10_000_000;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Timing {
    pub row: Option<Row>,
    pub pods: usize,
    pub add_median_ms: f64,
    pub add_p99_ms: f64,
    pub del_median_ms: f64,
    pub del_p99_ms: f64,
}

/// A process that does nothing (`/bin/true`), spawned and waited for
/// between the ADDs: the machine's own tail, against which the plugins'
/// p99 can be read (on this 2-vCPU VM a stalled vCPU adds the same 10-50 ms
/// to whichever process it meets).
#[derive(Debug, Default, Clone, Serialize)]
pub struct IdleProcess {
    pub runs: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
}

/// STATUS as a runtime polls it, on a node with no pod left (so no
/// datapath pinned: the cached verdict is what answers). Ours only: the
/// reference (CNI 1.0.0) has no STATUS.
#[derive(Debug, Default, Clone, Serialize)]
pub struct StatusTiming {
    pub calls: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A pod as a main plugin leaves it.
struct LightPod {
    netns: String,
    host_veth: String,
    cgroup: PathBuf,
    pod: PodRef,
}

impl LightPod {
    fn new(bridge: &str, n: usize) -> Result<Self> {
        let pid = std::process::id();
        let netns = format!("brlt-{pid}-{n}");
        let host_veth = format!("brlt{pid:x}x{n:x}");
        let mount = cgroup2_mount()?;
        let cgroup = mount.join("bpf-ratelimit-bench").join(&netns);
        let pod = LightPod {
            pod: PodRef {
                netns: bpf_ratelimit::testbed::netns_path(&netns),
                host_veth: host_veth.clone(),
                cgroup_path: format!("/{}", cgroup.strip_prefix(&mount)?.display()),
                prev_result: json!({
                    "cniVersion": "1.0.0",
                    "interfaces": [
                        {"name": bridge},
                        {"name": host_veth},
                        {"name": "eth0", "sandbox": bpf_ratelimit::testbed::netns_path(&netns)}
                    ],
                    "ips": [{"address": format!("10.252.{}.{}/16", n / 250, n % 250 + 2), "interface": 2}],
                    "dns": {}
                }),
            },
            netns,
            host_veth,
            cgroup,
        };
        ip(&["netns", "add", &pod.netns])?;
        ip(&["link", "add", "eth0", "netns", &pod.netns, "type", "veth", "peer", "name", &pod.host_veth])?;
        // No IPv6 link-local addresses: with hundreds of veths coming up
        // on one bridge, their DAD and MLD packets, flooded to every port
        // through br_netfilter, kept kworkers busy for seconds and stole
        // the CPU from whichever plugin ran (perf sched: 2-6 ms of an ADD's
        // 8-10 ms tail). Neither plugin touches IPv6.
        ip(&["link", "set", &pod.host_veth, "addrgenmode", "none"])?;
        ip(&["-n", &pod.netns, "link", "set", "eth0", "addrgenmode", "none"])?;
        ip(&["link", "set", &pod.host_veth, "master", bridge, "up"])?;
        ip(&["-n", &pod.netns, "link", "set", "eth0", "up"])?;
        std::fs::create_dir_all(&pod.cgroup)?;
        Ok(pod)
    }
}

impl Drop for LightPod {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_veth]);
        let _ = ip(&["netns", "del", &self.netns]);
        remove_cgroup(&self.cgroup);
    }
}

struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.0]);
    }
}

pub fn estimate(pods: usize) -> f64 {
    pods as f64 * 2.0 * 0.08 + pods as f64 * 0.005 + 2.0
}

/// `calls` STATUS invocations of ours, after every pod is gone.
pub fn status(plugins: &Plugins, calls: usize, progress: &mut Progress) -> Result<StatusTiming> {
    progress.step(calls as f64 * 0.005, &format!("timing: STATUS x {calls}"))?;
    let pod = PodRef { netns: String::new().into(), host_veth: String::new(), cgroup_path: String::new(), prev_result: json!(null) };
    let config = json!({"cniVersion": "1.1.0", "name": plugins.network, "type": "bpf-ratelimit", "pinRoot": plugins.pin_root});
    let mut ms = Vec::with_capacity(calls);
    for _ in 0..calls {
        check_interrupted()?;
        let (_, t) = plugins.invoke(Row::Ours, "STATUS", "", &pod, &config)?;
        ms.push(t.as_secs_f64() * 1e3);
    }
    Ok(StatusTiming {
        calls,
        median_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
        max_ms: ms.iter().copied().fold(0.0, f64::max),
    })
}

/// `policer`: time ours with `ingressQueue: false` (no qdisc or filter on
/// the host side) instead, to see what the queue's set-up costs.
pub fn run(plugins: &Plugins, pods: usize, policer: bool, progress: &mut Progress) -> Result<(Vec<Timing>, IdleProcess)> {
    let rows = [if policer { Row::OursPolicer } else { Row::Ours }, Row::RefContainerd];
    let bridge = Bridge(format!("brlt{:x}", std::process::id()));
    ip(&["link", "add", &bridge.0, "type", "bridge"])?;
    let _ = ip(&["link", "set", &bridge.0, "addrgenmode", "none"]);
    ip(&["link", "set", &bridge.0, "up"])?;
    progress.step(pods as f64 * 2.0 * 0.03, &format!("timing: {} pods as a main plugin leaves them", 2 * pods))?;
    let mut made = Vec::new();
    for n in 0..2 * pods + 2 {
        check_interrupted()?;
        made.push(LightPod::new(&bridge.0, n)?);
    }
    // One pod of each plugin first, not counted, which stays until the end,
    // as on a node that already runs pods: ours loads its programs on the
    // first ADD in a pin root (and unpins them with its last pod), and both
    // plugins' binaries come into the page cache.
    // Let the kernel finish what setting up the pods (and an earlier run's
    // netns teardown) queued before anything is timed.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut resident = Vec::new();
    for (k, row) in rows.iter().enumerate() {
        resident.push(plugins.add(&made[2 * pods + k].pod, *row, RATE)?);
    }
    let mut idle = Vec::with_capacity(pods);
    let mut adds: [Vec<f64>; 2] = Default::default();
    let mut dels: [Vec<f64>; 2] = Default::default();
    let mut attached: Vec<(usize, Attached)> = Vec::new();
    progress.step(pods as f64 * 2.0 * 0.025, &format!("timing: ADD x {pods} per plugin"))?;
    let added = (|| -> Result<()> {
        for i in 0..pods {
            check_interrupted()?;
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for k in order {
                let a = plugins.add(&made[2 * i + k].pod, rows[k], RATE)?;
                adds[k].push(a.add_elapsed.as_secs_f64() * 1e3);
                attached.push((k, a));
            }
            let started = std::time::Instant::now();
            std::process::Command::new("true").status().context("cannot run true")?;
            idle.push(started.elapsed().as_secs_f64() * 1e3);
        }
        Ok(())
    })();
    // DEL every pod that was ADDed, also after a failure (the reference
    // leaves ifb devices on the node otherwise).
    progress.step(pods as f64 * 2.0 * 0.025, &format!("timing: DEL x {pods} per plugin"))?;
    let mut del_error = None;
    while let Some((k, a)) = attached.pop() {
        match a.del() {
            Ok(t) => dels[k].push(t.as_secs_f64() * 1e3),
            Err(e) => del_error = Some(e),
        }
    }
    for a in resident {
        if let Err(e) = a.del() {
            del_error = Some(e);
        }
    }
    added.context("timing: ADD")?;
    if let Some(e) = del_error {
        return Err(e.context("timing: DEL"));
    }
    drop(attached);
    let idle = IdleProcess { runs: idle.len(), median_ms: percentile(&idle, 50.0), p99_ms: percentile(&idle, 99.0) };
    let timings = rows
        .iter()
        .enumerate()
        .map(|(k, row)| Timing {
            row: Some(*row),
            pods,
            add_median_ms: percentile(&adds[k], 50.0),
            add_p99_ms: percentile(&adds[k], 99.0),
            del_median_ms: percentile(&dels[k], 50.0),
            del_p99_ms: percentile(&dels[k], 99.0),
        })
        .collect();
    Ok((timings, idle))
}
