//! Under an eBPF main CNI (issue 21): the testbed emulates Cilium's and
//! Calico eBPF's program at the front of each host veth's tc ingress
//! (src/testbed/main_cni.rs: cls_bpf at pref 1, and tcx first where the
//! kernel has it), and each shaper is ADDed under it at 100M both ways. A
//! shaper whose ADD fails there (the reference: its ingress qdisc collides
//! with the CNI's clsact) is reported as that failure, not dropped.

use std::time::Duration;

use anyhow::Result;
use bpf_ratelimit::testbed::main_cni::Attach;
use bpf_ratelimit::testbed::scenario::{Bulk, Sender, Way};
use bpf_ratelimit::testbed::Testbed;
use serde::Serialize;

use bpf_ratelimit::testbed::shapers::{PodRef, Plugins, Row};
use crate::util::Progress;

const RATE: (&str, u64) = ("100M", 100_000_000);
const OMIT: u32 = 2;
const SECONDS: u32 = 4;

#[derive(Debug, Clone, Serialize)]
pub struct MainCniRow {
    /// "tc (pref 1)" or "tcx (first)".
    pub form: String,
    pub row: Row,
    pub kernel: String,
    /// The shaper's ADD error under this CNI, if it failed.
    pub add_error: Option<String>,
    /// Wire ÷ limit of a download with no shaper (the control).
    pub control_download: f64,
    pub tcp_download: Option<f64>,
    pub tcp_upload: Option<f64>,
    /// UDP offered at 2× into the pod: what iperf3's receiver got ÷ limit.
    pub udp_download_delivered: Option<f64>,
    /// AF_PACKET frames flat out from the pod: wire ÷ limit.
    pub af_packet_upload: Option<f64>,
}

fn forms() -> Vec<Attach> {
    if bpf_ratelimit::node::kernel::at_least(6, 6) {
        vec![Attach::Tc, Attach::Tcx]
    } else {
        vec![Attach::Tc]
    }
}

pub fn form_name(a: Attach) -> &'static str {
    match a {
        Attach::Tc => "tc (pref 1)",
        Attach::Tcx => "tcx (first)",
    }
}

pub fn estimate() -> f64 {
    forms().len() as f64 * 2.0 * (f64::from(OMIT + SECONDS) * 4.0 + 8.0 + 6.0)
}

pub fn run(plugins: &Plugins, progress: &mut Progress) -> Result<Vec<MainCniRow>> {
    let mut out = Vec::new();
    let bits = RATE.1 as f64;
    for form in forms() {
        for row in [Row::Ours, Row::RefContainerd] {
            progress.step(f64::from(OMIT + SECONDS) * 4.0 + 14.0, &format!("under an eBPF main CNI, {}: {}", form_name(form), row.label()))?;
            let mut bed = Testbed::create("brlc")?;
            bed.start_server()?;
            bed.emulate_ebpf_main_cni(form)?;
            let pod = PodRef::of(&bed)?;
            let control = crate::util::bulk(&bed, &Bulk::tcp(Way::Download, "cubic", 1, 1, 3))?.wire_bps / bits;
            let mut r = MainCniRow {
                form: form_name(form).into(),
                row,
                kernel: bpf_ratelimit::node::kernel::release(),
                add_error: None,
                control_download: control,
                tcp_download: None,
                tcp_upload: None,
                udp_download_delivered: None,
                af_packet_upload: None,
            };
            match plugins.attach(&pod, row, RATE.1) {
                Err(e) => r.add_error = Some(format!("{e:#}")),
                Ok(attached) => {
                    let tcp = |way| crate::util::bulk(&bed, &Bulk::tcp(way, "cubic", 1, OMIT, SECONDS)).map(|b| b.wire_bps / bits);
                    r.tcp_download = Some(tcp(Way::Download)?);
                    r.tcp_upload = Some(tcp(Way::Upload)?);
                    let udp = crate::util::bulk(&bed, &Bulk::udp(Way::Download, 2 * RATE.1, OMIT, SECONDS))?;
                    r.udp_download_delivered = Some(udp.transfer.goodput_bps / bits);
                    let raw = bed.wire_while(Way::Upload, vec![bed.sender(Sender::AfPacket, 8)?], Duration::from_secs(3), Duration::from_secs(4))?;
                    r.af_packet_upload = Some(raw.bps / bits);
                    attached.del()?;
                }
            }
            out.push(r);
        }
    }
    Ok(out)
}
