//! The wire table (issue 15): what each traffic shape a 10M pod can make
//! puts on the wire, beside what it delivers, for each row; the senders are
//! the testbed's (src/testbed/scenario.rs `Sender`), the ones tests/wire.rs
//! holds to the limit. The path unshaped is the positive control: the
//! counter sees each sender's frames.

use std::time::Duration;

use anyhow::{Context, Result};
use bpf_ratelimit::testbed::scenario::{Bulk, Sender, Way};
use bpf_ratelimit::testbed::Testbed;
use serde::Serialize;

use bpf_ratelimit::testbed::shapers::{Plugins, PodRef, Row};
use crate::util::{pause, CpuSample, Progress};

pub const RATE: (&str, u64) = ("10M", 10_000_000);
/// Shaped: the bucket spent first (the host-side guard holds two bursts and
/// a margin, ~320 kB at 10M), as tests/wire.rs waits; then measured.
const SETTLE: u32 = 3;
const MEASURE: u32 = 4;
/// The unshaped control needs no bucket spent.
const CONTROL: (u32, u32) = (1, 2);

#[derive(Debug, Clone, Copy)]
enum Shape {
    BulkTcp,
    Udp2x(Way),
    /// UDP in 8000-byte datagrams (six IPv4 fragments each) at 2x.
    UdpFragments(Way),
    Iperf(Sender),
    /// TCP with MSS 88 through a VXLAN tunnel the pod made to the server.
    Tunnel,
    Flood(Sender),
}

const SHAPES: [Shape; 14] = [
    Shape::BulkTcp,
    Shape::Udp2x(Way::Upload),
    Shape::Udp2x(Way::Download),
    Shape::UdpFragments(Way::Upload),
    Shape::UdpFragments(Way::Download),
    Shape::Tunnel,
    Shape::Iperf(Sender::Nodelay64),
    Shape::Iperf(Sender::Mss88),
    Shape::Flood(Sender::UdpGso8),
    Shape::Flood(Sender::AfPacket),
    Shape::Flood(Sender::AfXdp),
    Shape::Flood(Sender::SynFlood),
    Shape::Flood(Sender::Ipv6DstOpts),
    Shape::Flood(Sender::IcmpFlood),
];

impl Shape {
    fn what(self) -> String {
        match self {
            Shape::BulkTcp => "bulk TCP (1 flow, CUBIC), upload".into(),
            Shape::Udp2x(way) => format!("UDP at 2x the limit, {}", way.name()),
            Shape::UdpFragments(way) => format!("UDP in 8000-byte datagrams (IP fragments) at 2x the limit, {}", way.name()),
            Shape::Tunnel => "TCP with MSS 88 through a VXLAN tunnel the pod made (CUBIC), upload".into(),
            Shape::Iperf(s) => format!("{} (CUBIC), upload", s.what()),
            Shape::Flood(s) => format!("{}, upload", s.what()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WireRow {
    pub shape: String,
    pub row: Row,
    pub rate: String,
    pub wire_bps: f64,
    pub wire_ratio: f64,
    /// What the receiver got: iperf3's receiver side, or for the raw and
    /// GSO senders their frames on the wire x the UDP payload each carries;
    /// none for the senders that carry no payload (SYN and ICMP floods).
    pub goodput_bps: Option<f64>,
    pub goodput_ratio: Option<f64>,
    pub frames_per_s: Option<f64>,
    pub settle_s: u32,
    pub measured_s: f64,
    pub cpu_busy: f64,
}

pub fn estimate() -> f64 {
    let shaped = SHAPES.len() as f64 * Row::SHAPED.len() as f64 * f64::from(SETTLE + MEASURE + 1);
    let control = SHAPES.len() as f64 * f64::from(CONTROL.0 + CONTROL.1 + 1);
    shaped + control + 3.0
}

pub fn run(plugins: &Plugins, progress: &mut Progress) -> Result<Vec<WireRow>> {
    let mut bed = Testbed::create("brlw")?;
    bed.start_server()?;
    let pod = PodRef::of(&bed)?;
    let mut out = Vec::new();
    for shape in SHAPES {
        for row in [Row::Unshaped, Row::Ours, Row::RefContainerd, Row::RefFair] {
            let (settle, measure) = if row == Row::Unshaped { CONTROL } else { (SETTLE, MEASURE) };
            progress.step(f64::from(settle + measure + 1), &format!("wire, {} {}: {}", RATE.0, row.label(), shape.what()))?;
            let attached = if row == Row::Unshaped { None } else { Some(plugins.attach(&pod, row, RATE.1)?) };
            crate::util::wait_server_idle(&bed)?;
            let cpu = CpuSample::now();
            let measured = measure_shape(&bed, shape, settle, measure);
            let busy = cpu.busy_since();
            if let Some(a) = attached {
                a.del()?;
            }
            let (wire_bps, goodput_bps, frames_per_s, measured_s) = measured.with_context(|| format!("{}: {}", row.label(), shape.what()))?;
            out.push(WireRow {
                shape: shape.what(),
                row,
                rate: RATE.0.into(),
                wire_bps,
                wire_ratio: wire_bps / RATE.1 as f64,
                goodput_bps,
                goodput_ratio: goodput_bps.map(|g| g / RATE.1 as f64),
                frames_per_s,
                settle_s: settle,
                measured_s,
                cpu_busy: busy,
            });
            pause(Duration::from_millis(300))?;
        }
    }
    Ok(out)
}

/// (wire bits/s, goodput bits/s, frames/s, measured seconds).
fn measure_shape(bed: &Testbed, shape: Shape, settle: u32, measure: u32) -> Result<(f64, Option<f64>, Option<f64>, f64)> {
    let bulk = |b: Bulk| -> Result<(f64, Option<f64>, Option<f64>, f64)> {
        let r = crate::util::bulk(bed, &b)?;
        // Testbed::bulk samples the wire 0.3 s inside both ends.
        Ok((r.wire_bps, Some(r.transfer.goodput_bps), None, f64::from(measure) - 0.6))
    };
    match shape {
        Shape::BulkTcp => bulk(Bulk::tcp(Way::Upload, "cubic", 1, settle, measure)),
        Shape::Udp2x(way) => bulk(Bulk::udp(way, 2 * RATE.1, settle, measure)),
        Shape::UdpFragments(way) => bulk(Bulk::udp(way, 2 * RATE.1, settle, measure).with_args(&["-l", "8000"])),
        Shape::Tunnel => {
            let _tunnel = bpf_ratelimit::testbed::tunnel::PodTunnel::vxlan(bed)?;
            let b = Bulk::tcp(Way::Upload, "cubic", 1, settle, measure).with_args(&["-M", "88"]);
            bulk(b.to(bpf_ratelimit::testbed::tunnel::SERVER_END))
        }
        Shape::Iperf(s) => bulk(Bulk::tcp(Way::Upload, "cubic", 1, settle, measure).with_args(s.iperf3_args().unwrap_or_default())),
        Shape::Flood(s) => {
            let sender = bed.sender(s, settle + measure + 1)?;
            let w = bed.wire_while(Way::Upload, vec![sender], Duration::from_secs(settle.into()), Duration::from_secs(measure.into()))?;
            let goodput = s.payload_per_frame().map(|payload| w.frames_per_s * payload as f64 * 8.0);
            Ok((w.bps, goodput, Some(w.frames_per_s), w.seconds))
        }
    }
}
