//! A busy node at a size CI can afford (issue 25): 16 pods on one bridge,
//! each limited to 50M both ways, all moving TCP to one server at once,
//! downloading and then uploading. Ours and the reference (given our
//! bursts) run in the same test, and so does the same fleet unshaped, which
//! must break the rate band: the band proves itself.
//!
//! Asserted: every pod's goodput within the band and Jain's index ≥ 0.99
//! (ours, in every round), and our CPU per Gbit/s delivered within a stated
//! factor of the reference's, read from /proc/stat over the same window.
//! Ratios only. One round's ratio moves by ±40% on this 2-vCPU machine
//! (1.06-2.26 downloading, 13 runs at b0aeafb), so the ratio asserted is
//! the median of three rounds, ours and the reference taking turns to go
//! first.

mod common;

use std::path::PathBuf;

use bpf_ratelimit::testbed::fleet::Fleet;
use bpf_ratelimit::testbed::measure::{jain, percentile};
use bpf_ratelimit::testbed::shapers::{Attached, Plugins, PodRef, Row};
use common::retries::CpuSample;

const PODS: usize = 16;
const RATE: u64 = 50_000_000;
/// Goodput (TCP payload, as iperf3's receiver counts it) ÷ the limit. The
/// limit counts each frame whole, so at MSS 1448 payload is at most
/// 1448/1514 = 0.956 of it: 0.93 leaves 2.5% for the shaper's error.
const GOODPUT_BAND: (f64, f64) = (0.93, 0.99);
const MIN_JAIN: f64 = 0.99;
/// Rounds of ours beside the reference; the ratio asserted is their median.
const ROUNDS: usize = 3;

/// Which row goes first in round `r`: they take turns, ours first.
fn ours_first(r: usize) -> bool {
    r % 2 == 0
}
/// Ours ÷ the reference's CPU per Gbit/s, the median of the rounds, per
/// direction (download, upload).
/// - Upload: single rounds measured 0.99-1.62x at b0aeafb. The issue's
///   "before" was 2.6-2.8x: 2.0x catches a return to that.
/// - Download: not at parity (issue 25). Since the receive windows follow
///   the ingress queue's model (110c571) instead of a bucket that ratcheted
///   up, they hold 8 ms of queue at 50M and no more, and every byte takes
///   the ifb's second pass in smaller skbs: single rounds measured
///   1.06-2.26x (median 1.6) at b0aeafb, 3 of 13 above 2.0. 2.5x on the
///   median of three catches our cost growing by half again.
const CPU_FACTOR: [f64; 2] = [2.5, 2.0];

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

/// One round: both rows, in the order given, both ways each.
fn round(plugins: &Plugins, fleet: &Fleet, pods: &[PodRef], ours_first: bool) -> ([Way; 2], [Way; 2]) {
    if ours_first {
        let ours = both_ways(plugins, fleet, pods, Some(Row::Ours));
        (ours, both_ways(plugins, fleet, pods, Some(Row::RefFair)))
    } else {
        let reference = both_ways(plugins, fleet, pods, Some(Row::RefFair));
        (both_ways(plugins, fleet, pods, Some(Row::Ours)), reference)
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
    let rounds: Vec<([Way; 2], [Way; 2])> = (0..ROUNDS).map(|r| round(&plugins, &fleet, &pods, ours_first(r))).collect();

    let mut failures = Vec::new();
    for (i, way) in ["download", "upload"].iter().enumerate() {
        let u = &unshaped[i];
        let (u_min, u_max) = min_max(&u.ratios);
        let mut ratios = Vec::new();
        for (r, (ours, reference)) in rounds.iter().enumerate() {
            let (o, f) = (&ours[i], &reference[i]);
            let (o_min, o_max) = min_max(&o.ratios);
            let (f_min, f_max) = min_max(&f.ratios);
            let cpu_ratio = o.cpu_per_gbps / f.cpu_per_gbps;
            ratios.push(cpu_ratio);
            println!(
                "{PODS} x 50M {way}, round {} ({} first): goodput / limit ours {o_min:.3}-{o_max:.3} (Jain {:.4}, {} resent), reference {f_min:.3}-{f_max:.3} ({} resent); CPU-s per Gbit ours {:.3}, reference {:.3}: {cpu_ratio:.2}x",
                r + 1,
                if ours_first(r) { "ours" } else { "the reference" },
                jain(&o.ratios),
                o.retransmits,
                f.retransmits,
                o.cpu_per_gbps,
                f.cpu_per_gbps
            );
            if o_min < GOODPUT_BAND.0 || o_max > GOODPUT_BAND.1 {
                failures.push(format!("{way}, round {}: ours {o_min:.3}-{o_max:.3} outside {GOODPUT_BAND:?}", r + 1));
            }
            if jain(&o.ratios) < MIN_JAIN {
                failures.push(format!("{way}, round {}: ours Jain {:.4} < {MIN_JAIN}", r + 1, jain(&o.ratios)));
            }
        }
        let median = percentile(&ratios, 50.0);
        println!(
            "{PODS} x 50M {way}: ours / reference CPU per Gbit/s, median of {ROUNDS} rounds {median:.2} (bound {}); unshaped {u_min:.3}-{u_max:.3} of the limit at {:.3} CPU-s per Gbit",
            CPU_FACTOR[i], u.cpu_per_gbps
        );
        if median > CPU_FACTOR[i] {
            failures.push(format!("{way}: ours costs {median:.2}x the reference's CPU per Gbit/s (median of {ROUNDS} rounds; bound {})", CPU_FACTOR[i]));
        }
        // The negative control: without a limit the same fleet leaves the band.
        if u_max <= GOODPUT_BAND.1 {
            failures.push(format!("{way}: unshaped, the fleet stayed at {u_min:.3}-{u_max:.3} of 50M: the band would pass a no-op shaper"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
