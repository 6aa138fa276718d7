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
/// ours in another ingress mode, `policer` or `lowcpu`, where `--rows`
/// names it).
fn rows(variants: &[Row]) -> Vec<Row> {
    let mut rows = vec![Row::Ours];
    rows.extend(variants.iter().copied().filter(|r| r.is_ingress_variant()));
    rows.push(Row::RefFair);
    rows
}

/// A fleet size and rate, e.g. "40x50M", and optionally how many of its
/// pods move traffic: "1000x50M:40" (every pod, if not given).
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub pods: usize,
    pub rate_name: String,
    pub rate: u64,
    pub moving: usize,
}

impl Shape {
    /// "40x50M", or "1000x50M (40 moving)".
    pub fn label(&self) -> String {
        if self.moving == self.pods {
            format!("{}x{}", self.pods, self.rate_name)
        } else {
            format!("{}x{} ({} moving)", self.pods, self.rate_name, self.moving)
        }
    }

    pub fn parse(s: &str) -> Result<Shape> {
        use bpf_ratelimit::testbed::fleet::{MAX_MOVING, MAX_PODS};
        let (n, r) = s.split_once('x').with_context(|| format!("--busy: {s:?} is not PODSxRATE[:MOVING] (e.g. 40x50M, 1000x50M:40)"))?;
        let pods: usize = n.trim().parse().with_context(|| format!("--busy: {n:?} is not a number of pods"))?;
        if pods == 0 || pods > MAX_PODS {
            bail!("--busy: 1 to {MAX_PODS} pods, not {pods}");
        }
        let (r, moving) = match r.split_once(':') {
            Some((r, m)) => (r, m.trim().parse().with_context(|| format!("--busy: {m:?} is not a number of pods"))?),
            None => (r, pods),
        };
        if moving == 0 || moving > pods.min(MAX_MOVING) {
            bail!("--busy: 1 to {} of {pods} pods can move traffic, not {moving}", pods.min(MAX_MOVING));
        }
        let rate = bpf_ratelimit::policy::quantity::parse(r.trim()).map_err(|e| anyhow::anyhow!("--busy: {e}"))?;
        Ok(Shape { pods, rate_name: r.trim().to_string(), rate, moving })
    }
}

/// ADD and DEL with many pods shaped, and what our maps hold (issue 25,
/// "scale of state"): per shaper and fleet.
#[derive(Debug, Clone, Serialize)]
pub struct StateRow {
    pub pods: usize,
    pub moving: usize,
    pub rate: String,
    pub row: Row,
    /// ADD's wall time, ms (median, p99), over the first and the last tenth
    /// of the pods ADDed: with (almost) no pod shaped, and with all of them.
    pub add_first: (f64, f64),
    pub add_last: (f64, f64),
    /// DEL's, over the first tenth DELeted (every pod still shaped) and the last.
    pub del_first: (f64, f64),
    pub del_last: (f64, f64),
    /// Ours: each map's memory as the kernel accounts it, after the first
    /// pod's ADD, after every pod's, and after the traffic.
    pub maps: Vec<MapMemory>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MapMemory {
    pub name: String,
    pub kind: String,
    pub max_entries: u64,
    pub value_bytes: u64,
    pub one_pod: u64,
    pub all_pods: u64,
    pub after_traffic: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BusyRow {
    pub pods: usize,
    /// Of which moving traffic.
    pub moving: usize,
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

pub fn estimate(shapes: &[Shape], variants: &[Row]) -> f64 {
    shapes
        .iter()
        .map(|s| s.pods as f64 * 0.08 + rows(variants).len() as f64 * (s.pods as f64 * 0.1 + s.moving as f64 * 0.3 + 2.0 * (f64::from(OMIT + SECONDS) + 3.0)))
        .sum()
}

/// Every map pinned under `pin_root`, by name: (type, max_entries,
/// value size, bytes the kernel accounts to it).
fn pinned_maps(pin_root: &std::path::Path) -> BTreeMap<String, (String, u64, u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(o) = Command::new("bpftool").args(["-j", "-f", "map", "show"]).output() else { return out };
    let maps: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    let root = pin_root.to_string_lossy();
    for m in maps.as_array().into_iter().flatten() {
        let pinned = m["pinned"].as_array().into_iter().flatten().filter_map(Value::as_str).any(|p| p.starts_with(root.as_ref()));
        if !pinned {
            continue;
        }
        let e = out.entry(m["name"].as_str().unwrap_or("?").to_string()).or_insert((
            m["type"].as_str().unwrap_or("?").to_string(),
            m["max_entries"].as_u64().unwrap_or(0),
            m["bytes_value"].as_u64().unwrap_or(0),
            0,
        ));
        e.3 += m["bytes_memlock"].as_u64().unwrap_or(0);
    }
    out
}

/// Median and p99 of the first and the last tenth of `times`, ms.
fn tenths(times: &[Duration]) -> ((f64, f64), (f64, f64)) {
    let ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let n = (ms.len() / 10).max(1);
    let of = |v: &[f64]| (percentile(v, 50.0), percentile(v, 99.0));
    (of(&ms[..n]), of(&ms[ms.len() - n..]))
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

pub fn run(plugins: &Plugins, shapes: &[Shape], variants: &[Row], progress: &mut Progress) -> Result<(Vec<BusyRow>, Vec<StateRow>)> {
    let mut out = Vec::new();
    let mut state = Vec::new();
    for shape in shapes {
        progress.step(shape.pods as f64 * 0.08, &format!("busy node: {} pods on one bridge", shape.pods))?;
        let fleet = Fleet::with_moving("brln", shape.pods, shape.moving)?;
        let pods = fleet.pod_refs()?;
        for row in rows(variants) {
            progress.step(shape.pods as f64 * 0.1 + shape.moving as f64 * 0.3, &format!("busy node, {}: {} ADD", shape.label(), row.label()))?;
            let mut attached: Vec<Attached<'_>> = Vec::new();
            let mut one_pod = BTreeMap::new();
            for p in &pods {
                attached.push(plugins.add(p, row, shape.rate)?);
                if attached.len() == 1 {
                    one_pod = pinned_maps(&plugins.pin_root);
                }
            }
            let all_pods = pinned_maps(&plugins.pin_root);
            let add_times: Vec<Duration> = attached.iter().map(|a| a.add_elapsed).collect();
            for download in [true, false] {
                let way = if download { "download" } else { "upload" };
                progress.step(f64::from(OMIT + SECONDS) + 3.0, &format!("busy node, {}: {}, every moving pod's {way}", shape.label(), row.label()))?;
                out.push(measure(&fleet, shape, row, download).with_context(|| format!("{} {way}", row.label()))?);
            }
            let after_traffic = pinned_maps(&plugins.pin_root);
            let mut del_times = Vec::new();
            for a in attached {
                del_times.push(a.del()?);
            }
            let (add_first, add_last) = tenths(&add_times);
            let (del_first, del_last) = tenths(&del_times);
            let maps = all_pods
                .iter()
                .map(|(name, (kind, max_entries, value_bytes, bytes))| MapMemory {
                    name: name.clone(),
                    kind: kind.clone(),
                    max_entries: *max_entries,
                    value_bytes: *value_bytes,
                    one_pod: one_pod.get(name).map_or(0, |m| m.3),
                    all_pods: *bytes,
                    after_traffic: after_traffic.get(name).map_or(0, |m| m.3),
                })
                .collect();
            state.push(StateRow { pods: shape.pods, moving: shape.moving, rate: shape.rate_name.clone(), row, add_first, add_last, del_first, del_last, maps });
        }
    }
    Ok((out, state))
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
        moving: shape.moving,
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
