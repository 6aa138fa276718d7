//! Downloads and uploads at the round-trip times real pods meet: on a LAN,
//! 10 ms and 50 ms away, through the testbed's delay line. Each cell is a
//! real TCP transfer from CUBIC and BBR senders, 1 and 8 flows, at 10M and
//! 1G. Asserted per cell, on the wire (every frame, per segment, as the limit
//! counts it), after the first seconds:
//!
//! - 0.95-1.02 of the limit, or of what the same path delivers unshaped
//!   where that is less (measured in the same try, only when a cell falls
//!   short: a single flow 50 ms away is held by its sender's buffer);
//! - at most 5% of segments resent;
//! - with 8 flows, a fair split (Jain's index >= 0.9).
//!
//! The pods are given bursts of 50 ms at their rate, so that a cell measures
//! the rate, not the burst a full bucket lets through first (the burst has
//! tests of its own, tests/ingress.rs).

mod common;

use std::time::Duration;

use bpf_ratelimit::testbed::measure::jain;
use bpf_ratelimit::testbed::scenario::{Bulk, BulkResult, Way};
use common::{retries, Pod};
use serde_json::{json, Value};

const BAND: (f64, f64) = (0.95, 1.02);
const RESENT_MAX: f64 = 0.05;
const JAIN_MIN: f64 = 0.9;

fn annotations(rate: &str, bits: f64) -> Value {
    let burst = format!("{}", (bits * 0.05) as u64);
    json!({
        "kubernetes.io/ingress-bandwidth": rate, "kubernetes.io/egress-bandwidth": rate,
        "bpf-ratelimit.io/ingress-burst": burst, "bpf-ratelimit.io/egress-burst": burst,
    })
}

fn run(pod: &Pod, bulk: &Bulk, what: &str) -> (BulkResult, f64) {
    let cpu = retries::CpuSample::now();
    let r = pod.bed.bulk(bulk).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    (r, cpu.busy_since())
}

/// One cell: measured shaped; if it falls short, the same path unshaped
/// (the pod's attachment removed and put back) sets what it can deliver.
fn cell(pod: &Pod, annotations: &Value, bits: f64, bulk: &Bulk, what: &str) {
    let mut attempt = 0;
    loop {
        let (r, busy) = run(pod, bulk, what);
        let ratio = r.wire_bps / bits;
        let resent = r.transfer.resent_share(1448.0);
        let fairness = jain(&r.transfer.streams_bps);
        println!(
            "{what}: wire {ratio:.3} of the limit (goodput {:.3}), {:.2}% resent, Jain {fairness:.3}, CPUs {:.0}% busy",
            r.transfer.goodput_bps / bits,
            resent * 100.0,
            busy * 100.0
        );
        assert!(ratio <= BAND.1, "{what}: {ratio:.3} of the limit on the wire, above {}", BAND.1);
        assert!(resent <= RESENT_MAX, "{what}: {:.2}% of segments resent", resent * 100.0);
        if bulk.flows > 1 {
            assert!(fairness >= JAIN_MIN, "{what}: Jain's index {fairness:.3} < {JAIN_MIN}: {:?}", r.transfer.streams_bps);
        }
        if ratio >= BAND.0 {
            return;
        }
        pod.del();
        let (unshaped, _) = run(pod, bulk, &format!("{what}, unshaped"));
        assert_eq!(pod.invoke("ADD", &pod.config(annotations.clone())).code, 0);
        let can = unshaped.wire_bps.min(bits);
        let of_path = r.wire_bps / can;
        println!("{what}: the path unshaped carries {:.3} of the limit; shaped delivered {of_path:.3} of that", unshaped.wire_bps / bits);
        if of_path >= BAND.0 {
            return;
        }
        if attempt == 0 && busy >= retries::STARVED {
            retries::record(what, &format!("{of_path:.3} of what the path carries, CPUs {:.0}% busy", busy * 100.0));
            attempt += 1;
            continue;
        }
        panic!("{what}: {of_path:.3} of what the path carries unshaped ({:.3} of the limit), below {}", ratio, BAND.0);
    }
}

fn matrix(one_way_ms: u64) {
    let mut pod = Pod::with_delay("rtt", Duration::from_millis(one_way_ms));
    pod.bed.start_server().unwrap();
    for (rate, bits) in [("10M", 10e6), ("1G", 1e9)] {
        let ann = annotations(rate, bits);
        pod.add(ann.clone());
        for way in [Way::Download, Way::Upload] {
            for cc in ["cubic", "bbr"] {
                for flows in [1, 8] {
                    let bulk = Bulk::tcp(way, cc, flows, 2, 4);
                    let what = format!("{} at {rate}, {} ms RTT, {cc}, {flows} flow(s)", way.name(), 2 * one_way_ms);
                    cell(&pod, &ann, bits, &bulk, &what);
                }
            }
        }
        pod.del();
    }
    let wire = pod.bed.wire().unwrap();
    assert_eq!((wire.a_to_b.dropped, wire.b_to_a.dropped), (0, 0), "the delay line lost packets");
}

#[test]
fn transfers_hold_the_limit_on_a_lan() {
    matrix(0);
}

#[test]
fn transfers_hold_the_limit_10_ms_away() {
    matrix(5);
}

#[test]
fn transfers_hold_the_limit_50_ms_away() {
    matrix(25);
}
