//! The traffic real pods make (issue 7's table), for each row, on a LAN
//! testbed, through the testbed's scenarios (src/testbed/scenario.rs): a
//! sidecar over loopback, 16 KB requests from an idle pod and beside the
//! pod's own upload, an upload beside 20 light keep-alive connections, and
//! TCP with UDP.

use std::time::Duration;

use anyhow::{Context, Result};
use bpf_ratelimit::testbed::scenario::{Bulk, Requests, Way, SECOND_IPERF_PORT};
use bpf_ratelimit::testbed::Testbed;
use serde::Serialize;

use bpf_ratelimit::testbed::shapers::{Plugins, PodRef, Row};
use crate::util::{pause, wait_server_idle, Progress};

const RATE: u64 = 10_000_000;
const BULK_RATE: u64 = 100_000_000;
const LIGHT_CONNS: u32 = 20;
const LIGHT_BPS: u64 = 16_000;
const IDLE_REQUESTS: (u32, u32) = (20, 300);
/// Requests beside the upload, one every this many ms, started while it runs.
const BESIDE_GAP_MS: u32 = 100;
const BESIDE_SECONDS: u32 = 5;
const SETTLE: u32 = 3;
const MEASURE: u32 = 4;

#[derive(Debug, Default, Clone, Serialize)]
pub struct WorkloadRow {
    pub row: Option<Row>,
    /// An app and its sidecar over 127.0.0.1 inside a 10M pod, bits/s.
    pub sidecar_bps: f64,
    /// 16 KB requests (64-byte replies) on a keep-alive connection from an
    /// idle 10M pod, one every 300 ms.
    pub idle_request_p50_ms: f64,
    pub idle_request_p99_ms: f64,
    pub idle_request_failed: u64,
    /// The same, one every 100 ms, beside the pod's own 10M upload (1 CUBIC flow).
    pub beside_upload_p50_ms: f64,
    pub beside_upload_p99_ms: f64,
    pub beside_upload_failed: u64,
    pub beside_upload_samples: u64,
    pub beside_upload_wire_ratio: f64,
    /// A 100M upload beside 20 keep-alive connections at 16 kbit/s each:
    /// goodput ÷ what they leave (limit − 320 kbit/s), and wire ÷ limit.
    pub bulk_beside_light_goodput_ratio: f64,
    pub bulk_beside_light_wire_ratio: f64,
    /// A TCP upload and 6M of UDP at once from a 10M pod: wire ÷ limit after the bucket.
    pub tcp_udp_wire_ratio: f64,
}

pub fn estimate() -> f64 {
    let request = |(count, gap): (u32, u32)| f64::from(count) * (f64::from(gap) * 1e-3 + 0.005);
    let per_row = 4.0 + request(IDLE_REQUESTS) + 0.5 + f64::from(2 + BESIDE_SECONDS) + 1.0 + 1.0 + f64::from(2 + 4) + 1.0 + f64::from(SETTLE + MEASURE) + 1.0;
    per_row * Row::SHAPED.len() as f64 + 3.0
}

pub fn run(plugins: &Plugins, progress: &mut Progress) -> Result<Vec<WorkloadRow>> {
    let mut bed = Testbed::create("brlk")?;
    bed.start_server()?;
    bed.start_server_on(SECOND_IPERF_PORT)?;
    bed.start_rr_server()?;
    let pod = PodRef::of(&bed)?;
    let mut rows = Vec::new();
    for row in Row::SHAPED {
        rows.push(one_row(&bed, &pod, plugins, progress, row).with_context(|| row.label())?);
    }
    Ok(rows)
}

fn one_row(bed: &Testbed, pod: &PodRef, plugins: &Plugins, progress: &mut Progress, row: Row) -> Result<WorkloadRow> {
    let label = row.label();
    let mut out = WorkloadRow { row: Some(row), ..Default::default() };

    progress.step(4.0, &format!("workloads, {label}: sidecar over loopback"))?;
    let a = plugins.attach(pod, row, RATE)?;
    let r = bed.sidecar("127.0.0.1", 3);
    a.del()?;
    out.sidecar_bps = r?;

    progress.step(7.0, &format!("workloads, {label}: 16 KB requests from an idle pod"))?;
    let a = plugins.attach(pod, row, RATE)?;
    pause(Duration::from_millis(500))?;
    let r = bed.requests(&Requests::keepalive_uploads(IDLE_REQUESTS.0, IDLE_REQUESTS.1));
    a.del()?;
    let r = r?;
    (out.idle_request_p50_ms, out.idle_request_p99_ms, out.idle_request_failed) = (r.p50_ms, r.p99_ms, r.failed);

    progress.step(f64::from(2 + BESIDE_SECONDS) + 1.0, &format!("workloads, {label}: 16 KB requests beside its own upload"))?;
    wait_server_idle(bed)?;
    let a = plugins.attach(pod, row, RATE)?;
    let requests = Requests { within_ms: Some(BESIDE_SECONDS * 1000 - 500), ..Requests::keepalive_uploads(10_000, BESIDE_GAP_MS) };
    let r = bed.requests_beside(&Bulk::tcp(Way::Upload, "cubic", 1, 2, BESIDE_SECONDS), &requests);
    a.del()?;
    let (lat, bulk) = r?;
    (out.beside_upload_p50_ms, out.beside_upload_p99_ms, out.beside_upload_failed) = (lat.p50_ms, lat.p99_ms, lat.failed);
    out.beside_upload_samples = lat.samples;
    out.beside_upload_wire_ratio = bulk.wire_bps / RATE as f64;

    progress.step(8.0, &format!("workloads, {label}: 100M upload beside {LIGHT_CONNS} light connections"))?;
    wait_server_idle(bed)?;
    let a = plugins.attach(pod, row, BULK_RATE)?;
    let r = bed.bulk_beside_light(LIGHT_CONNS, LIGHT_BPS, &Bulk::tcp(Way::Upload, "cubic", 1, 2, 4));
    a.del()?;
    let r = r?;
    let left = (BULK_RATE - u64::from(LIGHT_CONNS) * LIGHT_BPS) as f64;
    out.bulk_beside_light_goodput_ratio = r.transfer.goodput_bps / left;
    out.bulk_beside_light_wire_ratio = r.wire_bps / BULK_RATE as f64;

    progress.step(f64::from(SETTLE + MEASURE) + 1.0, &format!("workloads, {label}: TCP and UDP at once"))?;
    wait_server_idle(bed)?;
    let a = plugins.attach(pod, row, RATE)?;
    let r = bed.tcp_with_udp(RATE * 6 / 10, Duration::from_secs(SETTLE.into()), Duration::from_secs(MEASURE.into()));
    a.del()?;
    out.tcp_udp_wire_ratio = r?.bps / RATE as f64;
    pause(Duration::from_millis(300))?;
    Ok(out)
}
