//! Ingress from CUBIC and from BBR senders (issue 8's table): goodput ÷
//! limit and the share of segments the sender resent, 1 and 8 flows, for
//! both plugins. The sender is the server pod; the shaped pod receives.

use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;

use super::{drain, iperf, CniPod, Plugin, Progress, Server};

#[derive(Debug, Default, Clone, Serialize)]
pub struct IngressRow {
    pub plugin: String,
    pub rate: String,
    pub cc: String,
    pub flows: u32,
    pub ratio: f64,
    /// Retransmitted segments ÷ segments sent (bytes ÷ 1448).
    pub resent_share: f64,
}

pub const SENDERS: [&str; 2] = ["cubic", "bbr"];

pub fn measure(
    pod: &CniPod,
    plugin: Plugin,
    server: &Server,
    rate_name: &str,
    rate: u64,
    seconds: u32,
    progress: &mut Progress,
) -> Result<Vec<IngressRow>> {
    let mut rows = Vec::new();
    for cc in SENDERS {
        for flows in [1u32, 8] {
            progress.step(&format!("{} {rate_name} ingress: {cc}, {flows} flow(s)", plugin.label()));
            let p = flows.to_string();
            let v = iperf(pod, server, false, &["-O", "1", "-P", &p, "-C", cc], seconds)?;
            let end = &v["end"];
            let bps = end["sum_received"]["bits_per_second"].as_f64().unwrap_or(f64::NAN);
            let resent = end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0);
            let segments = end["sum_sent"]["bytes"].as_f64().unwrap_or(f64::NAN) / 1448.0;
            rows.push(IngressRow {
                plugin: plugin.label().into(),
                rate: rate_name.into(),
                cc: cc.into(),
                flows,
                ratio: bps / rate as f64,
                resent_share: resent / segments,
            });
            drain();
        }
    }
    Ok(rows)
}

pub fn markdown(rows: &[IngressRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| plugin | rate | sender | 1 flow: ratio / resent | 8 flows: ratio / resent |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for pair in rows.chunks(2) {
        if let [one, eight] = pair {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.3} / {:.1}% | {:.3} / {:.1}% |",
                one.plugin,
                one.rate,
                one.cc,
                one.ratio,
                one.resent_share * 100.0,
                eight.ratio,
                eight.resent_share * 100.0
            );
        }
    }
    s
}
