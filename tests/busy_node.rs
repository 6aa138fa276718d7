//! A busy node at a size CI can afford (issue 25): 16 pods on one bridge,
//! each limited to 50M both ways, all moving TCP to one server at once,
//! downloading and then uploading. Ours and the reference (given our
//! bursts) run in the same test, and so does the same fleet unshaped, which
//! must break the rate band: the band proves itself.
//!
//! Asserted: every pod's goodput within the band and Jain's index ≥ 0.99
//! (ours), and our CPU per Gbit/s delivered within `CPU_FACTOR` of the
//! reference's, read from /proc/stat over the same window. Ratios only.

mod common;

use std::path::PathBuf;

use bpf_ratelimit::testbed::fleet::Fleet;
use bpf_ratelimit::testbed::measure::jain;
use bpf_ratelimit::testbed::shapers::{Attached, Plugins, PodRef, Row};
use common::retries::CpuSample;

const PODS: usize = 16;
const RATE: u64 = 50_000_000;
/// Goodput (TCP payload, as iperf3's receiver counts it) ÷ the limit. The
/// limit counts each frame whole, so at MSS 1448 payload is at most
/// 1448/1514 = 0.956 of it: 0.93 leaves 2.5% for the shaper's error.
const GOODPUT_BAND: (f64, f64) = (0.93, 0.99);
const MIN_JAIN: f64 = 0.99;
/// Ours ÷ the reference's CPU per Gbit/s. This test measured 0.81-1.31x
/// in five runs; the bench 1.00-1.78x at 40 x 50M (bench/README.md, "A
/// busy node"), where the reference's own CPU moves most. The issue's
/// "before" was 2.6-2.8x uploading: 2.0x catches a return to that.
const CPU_FACTOR: f64 = 2.0;

struct Way {
    ratios: Vec<f64>,
    cpu_per_gbps: f64,
    retransmits: u64,
}

/// Every pod sends at once (download: server → pods); goodput ÷ limit per
/// pod, and CPU-seconds per Gbit delivered while every pod was sending.
fn transfer(fleet: &Fleet, download: bool) -> Way {
    let mut busy = 0.0;
    let t = fleet
        .transfer_all(download, "cubic", 2, 8, |window| {
            let cpu = CpuSample::now();
            std::thread::sleep(window);
            busy = cpu.busy_since();
        })
        .expect("every pod's iperf3 ran");
    assert_eq!(t.pods.len(), PODS, "an iperf3 result per pod");
    let gbps = t.pods.iter().map(|p| p.goodput_bps).sum::<f64>() / 1e9;
    assert!(gbps > 0.1, "the fleet moved {gbps:.3} Gbit/s: the transfer did not run");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Way {
        ratios: t.pods.iter().map(|p| p.goodput_bps / RATE as f64).collect(),
        cpu_per_gbps: busy * cpus / gbps,
        retransmits: t.pods.iter().map(|p| p.retransmits).sum(),
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(0.0, f64::max))
}

/// Both ways with `row` ADDed on every pod (None: unshaped).
fn both_ways(plugins: &Plugins, fleet: &Fleet, pods: &[PodRef], row: Option<Row>) -> [Way; 2] {
    let attached: Vec<Attached<'_>> = match row {
        Some(row) => pods.iter().map(|p| plugins.add(p, row, RATE).expect("ADD")).collect(),
        None => Vec::new(),
    };
    let ways = [transfer(fleet, true), transfer(fleet, false)];
    for a in attached {
        a.del().expect("DEL");
    }
    ways
}

struct PinRoot(PathBuf);

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_busy_node_holds_every_pod_and_costs_about_what_the_reference_does() {
    common::require_privileges();
    let plugins = Plugins::new(common::plugin()).expect("both plugins");
    let _pins = PinRoot(plugins.pin_root.clone());
    let fleet = Fleet::create("brl-busy", PODS).expect("fleet");
    let pods = fleet.pod_refs().expect("pods");

    let unshaped = both_ways(&plugins, &fleet, &pods, None);
    let ours = both_ways(&plugins, &fleet, &pods, Some(Row::Ours));
    let reference = both_ways(&plugins, &fleet, &pods, Some(Row::RefFair));

    let mut failures = Vec::new();
    for (i, way) in ["download", "upload"].iter().enumerate() {
        let (o, r, u) = (&ours[i], &reference[i], &unshaped[i]);
        let (o_min, o_max) = min_max(&o.ratios);
        let (r_min, r_max) = min_max(&r.ratios);
        let (u_min, u_max) = min_max(&u.ratios);
        let cpu_ratio = o.cpu_per_gbps / r.cpu_per_gbps;
        println!(
            "{PODS} x 50M {way}: goodput / limit ours {o_min:.3}-{o_max:.3} (Jain {:.4}, {} resent), reference {r_min:.3}-{r_max:.3} ({} resent), unshaped {u_min:.3}-{u_max:.3}",
            jain(&o.ratios),
            o.retransmits,
            r.retransmits
        );
        println!(
            "{PODS} x 50M {way}: CPU-s per Gbit ours {:.3}, reference {:.3}, unshaped {:.3}: ours / reference {cpu_ratio:.2} (bound {CPU_FACTOR})",
            o.cpu_per_gbps, r.cpu_per_gbps, u.cpu_per_gbps
        );
        if o_min < GOODPUT_BAND.0 || o_max > GOODPUT_BAND.1 {
            failures.push(format!("{way}: ours {o_min:.3}-{o_max:.3} outside {GOODPUT_BAND:?}"));
        }
        if jain(&o.ratios) < MIN_JAIN {
            failures.push(format!("{way}: ours Jain {:.4} < {MIN_JAIN}", jain(&o.ratios)));
        }
        if cpu_ratio > CPU_FACTOR {
            failures.push(format!("{way}: ours costs {cpu_ratio:.2}x the reference's CPU per Gbit/s (bound {CPU_FACTOR})"));
        }
        // The negative control: without a limit the same fleet leaves the band.
        if u_max <= GOODPUT_BAND.1 {
            failures.push(format!("{way}: unshaped, the fleet stayed at {u_min:.3}-{u_max:.3} of 50M: the band would pass a no-op shaper"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
