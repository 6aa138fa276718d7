//! The shapers the benchmark and the busy-node test compare, called as a
//! runtime calls them: CNI environment and a config on stdin with
//! `runtimeConfig` and the prevResult the testbed (playing the main plugin)
//! gives; DEL when the pod goes.
//!
//! - ours: the built bpf-ratelimit binary, with what containerd passes a
//!   plugin whose conflist asks for `bandwidth`, `cgroupPath` and the pod
//!   annotations (conflist/10-bridge-bpf-ratelimit.conflist);
//! - the reference: Debian's `bandwidth` plugin, with what containerd passes
//!   a plugin that asks for `bandwidth`: either containerd's "no burst
//!   given" value (row `RefContainerd`), or our default bursts (`RefFair`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crate::policy::limits::{default_burst, Direction};
use super::{Invocation, PluginOutput, Testbed};
use serde::Serialize;
use serde_json::{json, Value};

/// containerd's "no burst given" (u32::MAX bits), sent for a pod that sets
/// only kubernetes.io/*-bandwidth.
pub const CONTAINERD_NO_BURST: u64 = 4_294_967_295;
pub const REFERENCE: &str = "/usr/lib/cni/bandwidth";

/// Who shapes the pod in a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Row {
    /// bpf-ratelimit with its default bursts.
    Ours,
    /// The reference as containerd runs it: the rate, and 4294967295 bits of burst.
    RefContainerd,
    /// The reference given our default bursts: the fair comparison of tc queueing.
    RefFair,
    /// The reference given our default bursts and our ingress queue's depth
    /// as its TBFs' `limit` (rate x 20 ms, at least 256 KB; the reference
    /// sets rate x 25 ms + burst): like for like on latency.
    RefOurQueue,
    /// bpf-ratelimit with `ingressQueue: false`: ingress policed in the
    /// pod's cgroup, as where there is no host side (macvlan) or the root
    /// qdisc is taken.
    OursPolicer,
    /// bpf-ratelimit with `ingressTradeoff: "cpu"`: ingress queued 8 ms
    /// deep at every rate (the busy-node trade of issue 25).
    OursLowCpu,
    /// Nobody: what the path carries.
    Unshaped,
}

impl Row {
    pub const SHAPED: [Row; 3] = [Row::Ours, Row::RefContainerd, Row::RefFair];
    /// Every shaped row, in the order tables show them.
    pub const ALL_SHAPED: [Row; 6] = [Row::Ours, Row::RefContainerd, Row::RefFair, Row::RefOurQueue, Row::OursPolicer, Row::OursLowCpu];

    /// Ours, in any ingress mode.
    pub fn is_ours(self) -> bool {
        matches!(self, Row::Ours | Row::OursPolicer | Row::OursLowCpu)
    }

    /// Ours in a mode that differs from the default only in ingress.
    pub fn is_ingress_variant(self) -> bool {
        matches!(self, Row::OursPolicer | Row::OursLowCpu)
    }

    /// The `--rows` name.
    pub fn parse(name: &str) -> Option<Row> {
        match name {
            "ours" => Some(Row::Ours),
            "containerd" => Some(Row::RefContainerd),
            "fair" => Some(Row::RefFair),
            "fairqueue" => Some(Row::RefOurQueue),
            "policer" => Some(Row::OursPolicer),
            "lowcpu" => Some(Row::OursLowCpu),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Row::Ours => "bpf-ratelimit",
            Row::RefContainerd => "reference, containerd burst",
            Row::RefFair => "reference, our burst",
            Row::RefOurQueue => "reference, our burst and queue",
            Row::OursPolicer => "bpf-ratelimit, policer",
            Row::OursLowCpu => "bpf-ratelimit, ingressTradeoff cpu",
            Row::Unshaped => "unshaped path",
        }
    }

    pub fn tag(self) -> &'static str {
        match self {
            Row::Ours => "o",
            Row::RefContainerd => "c",
            Row::RefFair => "f",
            Row::RefOurQueue => "q",
            Row::OursPolicer => "p",
            Row::OursLowCpu => "l",
            Row::Unshaped => "u",
        }
    }

    /// The bursts (bits) this row asks for at `rate`: (ingress, egress).
    pub fn bursts(self, rate: u64) -> (u64, u64) {
        match self {
            Row::RefContainerd => (CONTAINERD_NO_BURST, CONTAINERD_NO_BURST),
            _ => (default_burst(Direction::Ingress, rate), default_burst(Direction::Egress, rate)),
        }
    }
}

/// What a plugin is given about a pod: what the main plugin left.
pub struct PodRef {
    pub netns: PathBuf,
    pub host_veth: String,
    /// Relative to the cgroup2 mount, as runtimeConfig.cgroupPath.
    pub cgroup_path: String,
    pub prev_result: Value,
}

impl PodRef {
    pub fn of(bed: &Testbed) -> Result<Self> {
        let mount = super::cgroup2_mount()?;
        Ok(PodRef {
            netns: bed.pod_netns_path(),
            host_veth: bed.pod_host_veth.clone(),
            cgroup_path: format!("/{}", bed.cgroup.strip_prefix(&mount)?.display()),
            prev_result: bed.prev_result("1.0.0"),
        })
    }
}

pub struct Plugins {
    pub ours: PathBuf,
    pub pin_root: PathBuf,
    pub network: String,
    next: AtomicU32,
}

/// The buckets a shaper holds for the pod, bytes, as configured (ours, read
/// back with `bpf-ratelimit stats`) or as the kernel holds them (the
/// reference's TBFs, read back over netlink: a TBF's bucket is a time,
/// and the kernel keeps it in 32 bits).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Buckets {
    pub ingress_bytes: f64,
    pub egress_bytes: f64,
}

/// A pod the plugin was ADDed for; DEL it with `del` (or on drop, best effort).
pub struct Attached<'a> {
    plugins: &'a Plugins,
    pod: &'a PodRef,
    row: Row,
    id: String,
    config: Value,
    /// What ADD printed.
    result: Value,
    pub add_elapsed: Duration,
    pub buckets: Buckets,
    deleted: bool,
}

fn cni_args(id: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={id};K8S_POD_INFRA_CONTAINER_ID={id}")
}

impl Plugins {
    /// Ours is the bpf-ratelimit binary at `ours`; the reference is Debian's.
    pub fn new(ours: PathBuf) -> Result<Self> {
        if !ours.exists() {
            bail!("{} is missing: build it with `cargo build --release --bin bpf-ratelimit` (bench/run.sh does)", ours.display());
        }
        if !Path::new(REFERENCE).exists() {
            bail!("{REFERENCE} is missing: apt-get install containernetworking-plugins (./install.sh --deps-only does)");
        }
        let pid = std::process::id();
        Ok(Plugins {
            ours,
            pin_root: PathBuf::from(format!("/sys/fs/bpf/brl-bench-{pid}")),
            network: format!("bench-{pid}"),
            next: AtomicU32::new(0),
        })
    }

    fn binary(&self, row: Row) -> &Path {
        match row {
            Row::Ours | Row::OursPolicer | Row::OursLowCpu => &self.ours,
            _ => Path::new(REFERENCE),
        }
    }

    /// The config a runtime sends for `row` at `rate` (both directions).
    pub fn config(&self, pod: &PodRef, row: Row, rate: u64) -> Value {
        let (ingress_burst, egress_burst) = row.bursts(rate);
        // go-cni's BandWidth struct has no JSON tags: containerd writes the keys capitalised.
        let bandwidth = json!({"IngressRate": rate, "IngressBurst": ingress_burst, "EgressRate": rate, "EgressBurst": egress_burst});
        match row {
            Row::Ours | Row::OursPolicer | Row::OursLowCpu => json!({
                "cniVersion": "1.0.0",
                "name": self.network,
                "type": "bpf-ratelimit",
                "pinRoot": self.pin_root,
                "ingressQueue": row != Row::OursPolicer,
                "ingressTradeoff": if row == Row::OursLowCpu { "cpu" } else { "latency" },
                "runtimeConfig": {
                    "bandwidth": bandwidth,
                    "cgroupPath": pod.cgroup_path,
                    "io.kubernetes.cri.pod-annotations": {
                        "kubernetes.io/ingress-bandwidth": rate.to_string(),
                        "kubernetes.io/egress-bandwidth": rate.to_string(),
                    },
                },
                "prevResult": pod.prev_result,
            }),
            _ => json!({
                "cniVersion": "1.0.0",
                "name": self.network,
                "type": "bandwidth",
                "runtimeConfig": {"bandwidth": bandwidth},
                "prevResult": pod.prev_result,
            }),
        }
    }

    /// Runs `command` of `row`'s plugin; the output and the wall time of
    /// the whole call, process start included (what a runtime waits for).
    pub fn invoke(&self, row: Row, command: &str, id: &str, pod: &PodRef, config: &Value) -> Result<(PluginOutput, Duration)> {
        let args = cni_args(id);
        let started = Instant::now();
        let out = Invocation { plugin: self.binary(row), command, container_id: id, ifname: "eth0", netns: &pod.netns, cni_args: &args, config }.run()?;
        let elapsed = started.elapsed();
        if out.code != 0 {
            bail!("{} {command} failed ({}): {}{}", row.label(), out.code, out.stdout, out.stderr);
        }
        Ok((out, elapsed))
    }

    /// ADDs `row`'s plugin for the pod at `rate` (see `add`), and reads
    /// back the buckets it holds.
    pub fn attach<'a>(&'a self, pod: &'a PodRef, row: Row, rate: u64) -> Result<Attached<'a>> {
        let mut attached = self.add(pod, row, rate)?;
        attached.buckets = match row {
            Row::Ours | Row::OursPolicer | Row::OursLowCpu => self.our_buckets()?,
            _ => reference_buckets(pod, &attached.result)?,
        };
        Ok(attached)
    }

    /// ADDs `row`'s plugin for the pod at `rate`, as a new pod sandbox (a
    /// new container ID: a fresh bucket, an empty queue).
    pub fn add<'a>(&'a self, pod: &'a PodRef, row: Row, rate: u64) -> Result<Attached<'a>> {
        if row == Row::Unshaped {
            bail!("an unshaped pod has no plugin to ADD");
        }
        let before = root_qdisc(&pod.host_veth)?;
        if let Some(q) = before {
            bail!("{} already has a root qdisc ({}): a previous shaper was not removed", pod.host_veth, q.kind);
        }
        let id = format!("brlb-{}-{}-{}", std::process::id(), row.tag(), self.next.fetch_add(1, Ordering::SeqCst));
        let config = self.config(pod, row, rate);
        let (out, add_elapsed) = self.invoke(row, "ADD", &id, pod, &config)?;
        let result = out.json()?;
        let attached = Attached { plugins: self, pod, row, id, config, result, add_elapsed, buckets: Buckets::default(), deleted: false };
        if row == Row::RefOurQueue {
            give_our_queue(pod, &attached.result, rate)?;
        }
        Ok(attached)
    }

    /// Our pod's bursts as it holds them (`bpf-ratelimit stats`), bytes.
    fn our_buckets(&self) -> Result<Buckets> {
        let out = std::process::Command::new(&self.ours).arg("stats").arg(&self.pin_root).output()?;
        let v: Value = serde_json::from_slice(&out.stdout).context("bpf-ratelimit stats printed no JSON")?;
        let state = &v["pods"][0]["state"];
        let burst = |dir: &str| state[dir]["burst"].as_f64().with_context(|| format!("no {dir} burst in bpf-ratelimit stats: {v}"));
        Ok(Buckets { ingress_bytes: burst("ingress")?, egress_bytes: burst("egress")? })
    }
}

impl Attached<'_> {
    /// DEL, as the runtime does when the pod goes; then what the main
    /// plugin's DEL would do to the host end of the veth (delete it): here,
    /// remove the qdiscs the reference leaves on it (its DEL removes only
    /// its ifb device). Returns DEL's wall time.
    pub fn del(mut self) -> Result<Duration> {
        self.deleted = true;
        let (_, elapsed) = self.plugins.invoke(self.row, "DEL", &self.id, self.pod, &self.config)?;
        if self.row.is_ours() {
            if let Some(q) = root_qdisc(&self.pod.host_veth)? {
                eprintln!("\nbench: bpf-ratelimit's DEL left a {} root qdisc on {}", q.kind, self.pod.host_veth);
            }
        }
        reset_host_veth(&self.pod.host_veth)?;
        Ok(elapsed)
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = self.plugins.invoke(self.row, "DEL", &self.id, self.pod, &self.config);
            let _ = reset_host_veth(&self.pod.host_veth);
        }
    }
}

/// The interface's root qdisc, unless it is the kernel's default.
fn root_qdisc(ifname: &str) -> Result<Option<crate::datapath::tc::Qdisc>> {
    let index = crate::node::netns::ifindex(ifname)?;
    Ok(crate::datapath::tc::qdiscs(index)?
        .into_iter()
        .find(|q| q.parent == crate::datapath::tc::ROOT && !matches!(q.kind.as_str(), "noqueue" | "noop" | "pfifo_fast" | "mq")))
}

/// Removes every qdisc from the host end of a pod's veth: the root one and
/// the ingress/clsact one (which share a handle).
pub fn reset_host_veth(ifname: &str) -> Result<()> {
    let index = crate::node::netns::ifindex(ifname)?;
    if let Some(q) = root_qdisc(ifname)? {
        crate::datapath::tc::qdisc_delete(index, crate::datapath::tc::ROOT, q.handle)?;
    }
    crate::datapath::tc::clsact_delete(index)?;
    Ok(())
}

/// Sets the reference's TBFs (the host veth's, its ifb's) to our ingress
/// queue's depth, keeping their rate and burst (a TBF change).
fn give_our_queue(pod: &PodRef, result: &Value, rate: u64) -> Result<()> {
    let limit = crate::datapath::ingress_queue::QueueSpec::for_limit(
        crate::policy::limits::Limit { rate, burst: default_burst(Direction::Ingress, rate) },
        crate::policy::operator::LimitBasis::Frames,
    )
    .limit_bytes;
    for ifname in [pod.host_veth.as_str(), reference_ifb(result)?] {
        let q = root_qdisc(ifname)?.with_context(|| format!("the reference left no root qdisc on {ifname}"))?;
        let t = q.tbf.with_context(|| format!("the root qdisc on {ifname} is {}, not tbf", q.kind))?;
        let index = crate::node::netns::ifindex(ifname)?;
        crate::datapath::tc::tbf(crate::datapath::tc::Verb::Change, index, crate::datapath::tc::ROOT, q.handle, &crate::datapath::tc::Tbf { limit_bytes: limit, ..t })
            .with_context(|| format!("cannot give the reference's TBF on {ifname} a {limit}-byte limit"))?;
    }
    Ok(())
}

fn reference_ifb(result: &Value) -> Result<&str> {
    result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str())
        .find(|n| n.starts_with("bwp"))
        .with_context(|| format!("the reference's result names no ifb device: {result}"))
}

/// The reference's buckets as the kernel holds them: the TBF on the host
/// veth (ingress) and on its ifb device (egress, named in its result).
fn reference_buckets(pod: &PodRef, result: &Value) -> Result<Buckets> {
    let tbf = |ifname: &str| -> Result<f64> {
        let q = root_qdisc(ifname)?.with_context(|| format!("the reference left no root qdisc on {ifname}"))?;
        let t = q.tbf.with_context(|| format!("the root qdisc on {ifname} is {}, not tbf", q.kind))?;
        Ok(t.burst_bytes as f64)
    };
    Ok(Buckets { ingress_bytes: tbf(&pod.host_veth)?, egress_bytes: tbf(reference_ifb(result)?)? })
}
