//! The RTT matrix (issue 14): bulk TCP at each round-trip time, rate,
//! sender congestion control, flow count and direction, for each row
//! (ours, the reference as containerd runs it, the reference with our
//! bursts), plus the path unshaped; and at each RTT, for 10M and 100M, what
//! an idle pod gets (first second, a response) and responses beside its own
//! download. Every figure comes from the testbed's scenarios
//! (src/testbed/scenario.rs), the ones tests/rtt.rs and tests/ingress.rs assert.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bpf_ratelimit::testbed::measure::jain;
use bpf_ratelimit::testbed::scenario::{Bulk, BulkResult, Requests, Way};
use bpf_ratelimit::testbed::Testbed;
use serde::Serialize;

use bpf_ratelimit::testbed::shapers::{Buckets, Plugins, PodRef, Row};
use crate::util::{add_prog_stats, cgroup_prog_stats, pause, wait_server_idle, CpuSample, Progress};
use crate::Options;

pub const CCS: [&str; 2] = ["cubic", "bbr"];
pub const FLOWS: [u32; 2] = [1, 8];
pub const WAYS: [Way; 2] = [Way::Download, Way::Upload];
/// Rates the latency part runs at (those of them chosen with --rates).
pub const LATENCY_RATES: [u64; 2] = [10_000_000, 100_000_000];
/// Seconds the first omits (slow start, a full bucket), as tests/rtt.rs does.
pub const OMIT: u32 = 2;
/// Payload bytes of a full-sized segment (IPv4, TCP timestamps, 1500 MTU).
const MSS: f64 = 1448.0;

/// One bulk transfer.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub rtt_ms: f64,
    /// The limit in bits/s; None for the path unshaped.
    pub rate: Option<String>,
    pub rate_bps: Option<u64>,
    pub row: Row,
    pub way: &'static str,
    pub cc: String,
    pub flows: u32,
    /// Bits/s on the wire in the measured seconds: what the pod sent at the
    /// far end of the path (upload), what reached its interface (download).
    pub wire_bps: f64,
    /// Receiver-side goodput (iperf3) in the measured seconds.
    pub goodput_bps: f64,
    pub wire_ratio: Option<f64>,
    pub goodput_ratio: Option<f64>,
    pub retransmits: u64,
    /// Segments resent ÷ segments sent (payload ÷ 1448), or ÷ segments
    /// received where the sender wrote less (see `resent_share`).
    pub resent_share: f64,
    pub jain: Option<f64>,
    pub streams_bps: Vec<f64>,
    pub buckets: Option<Buckets>,
    /// Busy share of both CPUs while it ran.
    pub cpu_busy: f64,
    /// Wall time of the transfer, set-up and end included: past omit +
    /// seconds, iperf3's last exchange waited in the shaper's queue.
    pub took_s: f64,
}

impl Cell {
    #[allow(clippy::too_many_arguments)]
    fn new(rtt_ms: f64, rate: Option<(&str, u64)>, row: Row, bulk: &Bulk, r: &BulkResult, buckets: Option<Buckets>, cpu: f64, took: Duration) -> Self {
        let ratio = |bps: f64| rate.map(|(_, l)| bps / l as f64);
        Cell {
            rtt_ms,
            rate: rate.map(|(n, _)| n.to_string()),
            rate_bps: rate.map(|(_, l)| l),
            row,
            way: bulk.way.name(),
            cc: bulk.cc.clone(),
            flows: bulk.flows,
            wire_bps: r.wire_bps,
            goodput_bps: r.transfer.goodput_bps,
            wire_ratio: ratio(r.wire_bps),
            goodput_ratio: ratio(r.transfer.goodput_bps),
            retransmits: r.transfer.retransmits,
            resent_share: resent_share(bulk, r),
            jain: (bulk.flows > 1).then(|| jain(&r.transfer.streams_bps)),
            streams_bps: r.transfer.streams_bps.clone(),
            buckets,
            cpu_busy: cpu,
            took_s: took.as_secs_f64(),
        }
    }
}

/// Segments resent ÷ segments sent, as tests/rtt.rs counts it
/// (Transfer::resent_share); except that where the sender wrote less than
/// the receiver got in the measured seconds (its data sat for seconds in a
/// deep queue, written before them), ÷ the full-sized segments the receiver got.
fn resent_share(bulk: &Bulk, r: &BulkResult) -> f64 {
    let received = r.transfer.goodput_bps * f64::from(bulk.seconds) / 8.0 / MSS;
    let sent = r.transfer.sent_bytes / MSS;
    r.transfer.retransmits as f64 / sent.max(received).max(1.0)
}

/// What an idle pod gets, and responses beside its own download.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub rtt_ms: f64,
    pub rate: String,
    pub rate_bps: u64,
    pub row: Row,
    /// Bytes on the wire in the first second of a transfer into / out of an
    /// idle pod (`first_second`), with the bucket it held for that direction.
    pub first_second_download_bytes: f64,
    pub download_bucket_bytes: f64,
    pub first_second_upload_bytes: f64,
    pub upload_bucket_bytes: f64,
    /// ÷ (rate × 1 s + bucket): at most ~1 for a token bucket.
    pub first_second_download_ratio: f64,
    pub first_second_upload_ratio: f64,
    /// ÷ (rate × 1 s): how far past its rate a fresh pod goes.
    pub first_second_download_over_rate: f64,
    pub first_second_upload_over_rate: f64,
    /// 16 KB responses on fresh connections to the idle pod (`requests`).
    pub idle_response_p50_ms: f64,
    pub idle_response_p99_ms: f64,
    pub idle_response_failed: u64,
    /// The same unshaped, at this RTT.
    pub unshaped_response_p50_ms: f64,
    /// 16 KB responses on fresh connections beside the pod's own 1-flow
    /// CUBIC download (`requests_beside`).
    pub beside_p50_ms: f64,
    pub beside_p99_ms: f64,
    pub beside_failed: u64,
    pub beside_samples: u64,
    /// The download's wire ÷ limit in the same run.
    pub beside_download_wire_ratio: f64,
}

/// The matrix's results.
#[derive(Debug, Default, Serialize)]
pub struct MatrixResults {
    pub cells: Vec<Cell>,
    pub latency: Vec<Latency>,
    /// Per rate, per program: (run_time_ns, run_cnt) summed over our cells.
    pub bpf_stats: BTreeMap<String, BTreeMap<String, (u64, u64)>>,
    /// Packets the delay line could not deliver, per RTT (never expected).
    pub delay_line_dropped: BTreeMap<String, u64>,
}

/// Idle responses: how many, and how far apart.
const IDLE_RESPONSES: (u32, u32) = (8, 300);
/// Responses beside a download, one every this many ms, started while it
/// runs (after its omitted seconds, for all but the last half second of it).
const BESIDE_GAP_MS: u32 = 150;
const BESIDE_SECONDS: u32 = 5;
/// Idle time after an ADD, before a fresh pod's burst is measured.
const SETTLE: Duration = Duration::from_millis(500);
/// Between two transfers: the server's side of the last one closes.
const GAP: Duration = Duration::from_millis(200);

/// Estimated seconds of one RTT's part (for progress and the README).
pub fn estimate(opts: &Options, rtt_ms: f64) -> f64 {
    let cell = f64::from(OMIT + opts.seconds) + 0.6 + rtt_ms * 6e-3;
    let ways = |row: &Row| if row.is_ingress_variant() { 1 } else { WAYS.len() };
    let shaped = (opts.rates.len() * opts.rows.iter().map(ways).sum::<usize>() * CCS.len() * FLOWS.len()) as f64 * cell;
    // The reference with containerd's burst queues without bound: at the
    // end of an 8-flow download iperf3's last exchange waits behind what
    // its senders queued (measured at 10M: 13 s on a LAN, 20-23 s at 10 ms
    // RTT), 1-flow ones behind ~3 MB; so does the last response beside its
    // download.
    let drain: f64 = opts.rates.iter().map(|(_, r)| (CCS.len() as f64 * (25e6 + 3e6) + 10e6) * 8.0 / *r as f64).sum();
    let unshaped = (CCS.len() * WAYS.len()) as f64 * cell;
    let request = |count: u32, gap: u32| f64::from(count) * (f64::from(gap) * 1e-3 + 3.0 * rtt_ms * 1e-3 + 0.01);
    let latency_rates = opts.rates.iter().filter(|(_, r)| LATENCY_RATES.contains(r)).count() as f64;
    let per_row = 2.0 * (1.2 + 0.5 + 0.3) + request(IDLE_RESPONSES.0, IDLE_RESPONSES.1) + f64::from(OMIT + BESIDE_SECONDS) + 1.5;
    shaped + drain + unshaped + request(IDLE_RESPONSES.0, IDLE_RESPONSES.1) + latency_rates * opts.rows.len() as f64 * per_row + 2.0
}

pub fn run(opts: &Options, plugins: &Plugins, progress: &mut Progress, out: &mut MatrixResults) -> Result<()> {
    for &rtt_ms in &opts.rtts_ms {
        one_rtt(opts, plugins, progress, out, rtt_ms).with_context(|| format!("at {rtt_ms} ms RTT"))?;
    }
    Ok(())
}

fn rtt_name(rtt_ms: f64) -> String {
    format!("{rtt_ms} ms")
}

fn one_rtt(opts: &Options, plugins: &Plugins, progress: &mut Progress, out: &mut MatrixResults, rtt_ms: f64) -> Result<()> {
    let one_way = Duration::from_micros((rtt_ms * 500.0).round() as u64);
    let mut bed = Testbed::with_delay("brlb", one_way)?;
    bed.start_server()?;
    bed.start_rr_server()?;
    let pod = PodRef::of(&bed)?;
    let at = format!("{} RTT", rtt_name(rtt_ms));

    // The path unshaped, 1 flow: where the path, not a shaper, limits.
    for way in WAYS {
        for cc in CCS {
            let bulk = Bulk::tcp(way, cc, 1, OMIT, opts.seconds);
            progress.step(estimate_cell(opts, rtt_ms), &format!("{at}, unshaped path: {} {cc}", way.name()))?;
            let (cpu, t0) = (CpuSample::now(), Instant::now());
            let r = crate::util::bulk(&bed, &bulk)?;
            out.cells.push(Cell::new(rtt_ms, None, Row::Unshaped, &bulk, &r, None, cpu.busy_since(), t0.elapsed()));
            pause(GAP)?;
        }
    }
    progress.step(2.0, &format!("{at}, unshaped path: 16 KB responses"))?;
    let unshaped_responses = bed.requests(&Requests::fresh_responses(IDLE_RESPONSES.0, IDLE_RESPONSES.1))?;

    for (rate_name, rate) in &opts.rates {
        let rate = *rate;
        let mut stats = BTreeMap::new();
        // The rows take turns cell by cell, so that a change in the
        // machine's load falls on all of them alike.
        for way in WAYS {
            for cc in CCS {
                for flows in FLOWS {
                    for &row in &opts.rows {
                        // The policer and the cpu trade differ from ours only in ingress.
                        if row.is_ingress_variant() && way == Way::Upload {
                            continue;
                        }
                        let bulk = Bulk::tcp(way, cc, flows, OMIT, opts.seconds);
                        progress.step(estimate_cell(opts, rtt_ms), &format!("{at}, {rate_name}, {}: {} {cc} x{flows}", row.label(), way.name()))?;
                        let attached = plugins.attach(&pod, row, rate)?;
                        let before = row.is_ours().then(|| cgroup_prog_stats(&bed.cgroup));
                        let (cpu, t0) = (CpuSample::now(), Instant::now());
                        let r = crate::util::bulk(&bed, &bulk);
                        let (busy, took) = (cpu.busy_since(), t0.elapsed());
                        if let Some(before) = before {
                            add_prog_stats(&mut stats, &before, &cgroup_prog_stats(&bed.cgroup));
                        }
                        let buckets = attached.buckets;
                        attached.del()?;
                        let r = r.with_context(|| format!("{} {rate_name} {} {cc} x{flows}", row.label(), way.name()))?;
                        out.cells.push(Cell::new(rtt_ms, Some((rate_name, rate)), row, &bulk, &r, Some(buckets), busy, took));
                        pause(GAP)?;
                    }
                }
            }
        }
        let e = out.bpf_stats.entry(rate_name.clone()).or_default();
        add_prog_stats(e, &BTreeMap::new(), &stats);

        if LATENCY_RATES.contains(&rate) {
            for &row in &opts.rows {
                let l = latency(&bed, &pod, plugins, progress, rtt_ms, rate_name, rate, row, unshaped_responses.p50_ms)?;
                out.latency.push(l);
            }
        }
    }
    let wire = bed.wire()?;
    out.delay_line_dropped.insert(rtt_name(rtt_ms), wire.a_to_b.dropped + wire.b_to_a.dropped);
    Ok(())
}

fn estimate_cell(opts: &Options, rtt_ms: f64) -> f64 {
    f64::from(OMIT + opts.seconds) + 0.6 + rtt_ms * 6e-3
}

#[allow(clippy::too_many_arguments)]
fn latency(
    bed: &Testbed,
    pod: &PodRef,
    plugins: &Plugins,
    progress: &mut Progress,
    rtt_ms: f64,
    rate_name: &str,
    rate: u64,
    row: Row,
    unshaped_p50: f64,
) -> Result<Latency> {
    let at = format!("{} RTT, {rate_name}, {}", rtt_name(rtt_ms), row.label());
    let per_second = rate as f64 / 8.0;
    let mut first = |way: Way| -> Result<(f64, f64)> {
        progress.step(2.0, &format!("{at}: first second of an {} after idle", way.name()))?;
        let attached = plugins.attach(pod, row, rate)?;
        wait_server_idle(bed)?;
        pause(SETTLE)?;
        let bytes = bed.first_second(way);
        let bucket = match way {
            Way::Download => attached.buckets.ingress_bytes,
            Way::Upload => attached.buckets.egress_bytes,
        };
        attached.del()?;
        pause(GAP)?;
        Ok((bytes? as f64, bucket))
    };
    let (down, down_bucket) = first(Way::Download)?;
    let (up, up_bucket) = first(Way::Upload)?;

    progress.step(4.0, &format!("{at}: 16 KB responses to an idle pod"))?;
    let attached = plugins.attach(pod, row, rate)?;
    pause(SETTLE)?;
    let idle = bed.requests(&Requests::fresh_responses(IDLE_RESPONSES.0, IDLE_RESPONSES.1));
    attached.del()?;
    let idle = idle?;

    progress.step(f64::from(OMIT + BESIDE_SECONDS) + 1.0, &format!("{at}: 16 KB responses beside its download"))?;
    let attached = plugins.attach(pod, row, rate)?;
    let download = Bulk::tcp(Way::Download, "cubic", 1, OMIT, BESIDE_SECONDS);
    wait_server_idle(bed)?;
    // Open loop: every row gets the same requests at the same times, however
    // long each waits (a closed loop gave a slow shaper fewer samples).
    let responses = Requests::open_responses((BESIDE_SECONDS * 1000 - 500) / BESIDE_GAP_MS, BESIDE_GAP_MS);
    let beside = bed.requests_beside(&download, &responses);
    attached.del()?;
    let (lat, bulk) = beside?;
    pause(GAP)?;

    Ok(Latency {
        rtt_ms,
        rate: rate_name.into(),
        rate_bps: rate,
        row,
        first_second_download_bytes: down,
        download_bucket_bytes: down_bucket,
        first_second_upload_bytes: up,
        upload_bucket_bytes: up_bucket,
        first_second_download_ratio: down / (per_second + down_bucket),
        first_second_upload_ratio: up / (per_second + up_bucket),
        first_second_download_over_rate: down / per_second,
        first_second_upload_over_rate: up / per_second,
        idle_response_p50_ms: idle.p50_ms,
        idle_response_p99_ms: idle.p99_ms,
        idle_response_failed: idle.failed,
        unshaped_response_p50_ms: unshaped_p50,
        beside_p50_ms: lat.p50_ms,
        beside_p99_ms: lat.p99_ms,
        beside_failed: lat.failed,
        beside_samples: lat.samples,
        beside_download_wire_ratio: bulk.wire_bps / rate as f64,
    })
}
