//! A busy node (issue 25): N pods on one bridge, each limited to the same
//! rate both ways, all moving TCP to one server at once, for ours and the
//! reference given our bursts, download then upload. Reports per-pod
//! goodput ÷ limit, Jain's index, the node's CPU busy share over the
//! transfer (/proc/stat) and CPU per Gbit/s delivered, and each of our BPF
//! programs' run time per run (kernel.bpf_stats_enabled), so the cost can
//! be attributed.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bpf_ratelimit::testbed::fleet::Fleet;
use bpf_ratelimit::testbed::measure::{jain, percentile};
use serde::Serialize;
use serde_json::Value;

use bpf_ratelimit::testbed::shapers::{Attached, Plugins, Row};
use crate::util::{CpuSample, Progress};

pub const OMIT: u32 = 2;
pub const SECONDS: u32 = 8;
/// The rows compared: ours, and the reference with the same bursts (and
/// ours with `ingressQueue: false` when `--rows` names the policer).
fn rows(policer: bool) -> Vec<Row> {
    let mut rows = vec![Row::Ours, Row::RefFair];
    if policer {
        rows.insert(1, Row::OursPolicer);
    }
    rows
}

/// A fleet size and rate, e.g. "40x50M".
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub pods: usize,
    pub rate_name: String,
    pub rate: u64,
}

impl Shape {
    pub fn parse(s: &str) -> Result<Shape> {
        let (n, r) = s.split_once('x').with_context(|| format!("--busy: {s:?} is not PODSxRATE (e.g. 40x50M)"))?;
        let pods: usize = n.trim().parse().with_context(|| format!("--busy: {n:?} is not a number of pods"))?;
        if pods == 0 || pods > bpf_ratelimit::testbed::fleet::MAX_PODS {
            bail!("--busy: 1 to {} pods, not {pods}", bpf_ratelimit::testbed::fleet::MAX_PODS);
        }
        let rate = bpf_ratelimit::policy::quantity::parse(r.trim()).map_err(|e| anyhow::anyhow!("--busy: {e}"))?;
        Ok(Shape { pods, rate_name: r.trim().to_string(), rate })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BusyRow {
    pub pods: usize,
    pub rate: String,
    pub row: Row,
    /// "download" (server → pods) or "upload".
    pub way: &'static str,
    /// Goodput ÷ limit over the pods: min, median, max.
    pub goodput_min: f64,
    pub goodput_median: f64,
    pub goodput_max: f64,
    pub jain: f64,
    pub retransmits: u64,
    /// Sum of every pod's goodput, Gbit/s.
    pub delivered_gbps: f64,
    /// Share of all CPUs' time busy while every pod was sending.
    pub cpu_busy: f64,
    /// CPUs' busy time per second ÷ Gbit/s delivered: CPU-seconds per Gbit.
    pub cpu_per_gbps: f64,
    /// The window over which CPU and BPF were sampled, s.
    pub window_s: f64,
    /// Our programs over the same window, by name: (run_time_ns, run_cnt).
    pub bpf: BTreeMap<String, (u64, u64)>,
}

pub fn estimate(shapes: &[Shape], policer: bool) -> f64 {
    shapes.iter().map(|s| s.pods as f64 * 0.08 + rows(policer).len() as f64 * (s.pods as f64 * 0.4 + 2.0 * (f64::from(OMIT + SECONDS) + 3.0))).sum()
}

/// run_time_ns and run_cnt of every loaded program, summed by name.
fn all_prog_stats() -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(o) = Command::new("bpftool").args(["-j", "prog", "show"]).output() else { return out };
    let progs: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    for p in progs.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("?").to_string();
        let e = out.entry(name).or_insert((0, 0));
        e.0 += p["run_time_ns"].as_u64().unwrap_or(0);
        e.1 += p["run_cnt"].as_u64().unwrap_or(0);
    }
    out
}

pub fn run(plugins: &Plugins, shapes: &[Shape], policer: bool, progress: &mut Progress) -> Result<Vec<BusyRow>> {
    let mut out = Vec::new();
    for shape in shapes {
        progress.step(shape.pods as f64 * 0.08, &format!("busy node: {} pods on one bridge", shape.pods))?;
        let fleet = Fleet::create("brln", shape.pods)?;
        let pods = fleet.pod_refs()?;
        for row in rows(policer) {
            progress.step(shape.pods as f64 * 0.4, &format!("busy node, {}x{}: {} ADD", shape.pods, shape.rate_name, row.label()))?;
            let attached: Vec<Attached<'_>> = pods.iter().map(|p| plugins.add(p, row, shape.rate)).collect::<Result<_>>()?;
            for download in [true, false] {
                let way = if download { "download" } else { "upload" };
                progress.step(f64::from(OMIT + SECONDS) + 3.0, &format!("busy node, {}x{}: {}, every pod's {way}", shape.pods, shape.rate_name, row.label()))?;
                out.push(measure(&fleet, shape, row, download).with_context(|| format!("{} {way}", row.label()))?);
            }
            for a in attached {
                a.del()?;
            }
        }
    }
    Ok(out)
}

fn measure(fleet: &Fleet, shape: &Shape, row: Row, download: bool) -> Result<BusyRow> {
    let mut cpu_busy = 0.0;
    let mut window_s = 0.0;
    let mut bpf = BTreeMap::new();
    let t = fleet.transfer_all(download, "cubic", OMIT, SECONDS, |window: Duration| {
        let (cpu, before) = (CpuSample::now(), all_prog_stats());
        std::thread::sleep(window);
        window_s = window.as_secs_f64();
        cpu_busy = cpu.busy_since();
        let after = all_prog_stats();
        crate::util::add_prog_stats(&mut bpf, &before, &after);
    })?;
    // Only the datapath's programs: the names of ours (15 bytes at most).
    bpf.retain(|name, (_, runs)| *runs > 0 && OUR_PROGRAMS.iter().any(|p| p.starts_with(name.as_str())));
    let ratios: Vec<f64> = t.pods.iter().map(|p| p.goodput_bps / shape.rate as f64).collect();
    let delivered_gbps = t.pods.iter().map(|p| p.goodput_bps).sum::<f64>() / 1e9;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Ok(BusyRow {
        pods: shape.pods,
        rate: shape.rate_name.clone(),
        row,
        way: if download { "download" } else { "upload" },
        goodput_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        goodput_median: percentile(&ratios, 50.0),
        goodput_max: ratios.iter().copied().fold(0.0, f64::max),
        jain: jain(&ratios),
        retransmits: t.pods.iter().map(|p| p.retransmits).sum(),
        delivered_gbps,
        cpu_busy,
        cpu_per_gbps: cpu_busy * cpus / delivered_gbps.max(1e-9),
        window_s,
        bpf,
    })
}

/// The datapath's program names (ebpf/shaper.bpf.c); the kernel keeps 15 bytes of each.
const OUR_PROGRAMS: [&str; 8] = [
    "shape_egress_prog",
    "shape_ingress_prog",
    "pace_tcp",
    "guard_pod_egress",
    "queue_pod_ingress",
    "redirect_to_queue",
    "refuse_raw_frames",
    "refuse_raw_bypass",
];
