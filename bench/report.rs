//! The results as Markdown (bench/README.md tables) and an SVG of throughput over time.

use super::*;

pub(crate) fn markdown(rows: &[Row], bpf: &BTreeMap<String, f64>, timings: &[Timing]) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        return s; // --only workloads
    }
    let _ = writeln!(s, "| plugin | rate | dir | TCP 1 flow ÷ limit | TCP 8 flows ÷ limit | retrans 1 / 8 flows | ping RTT idle / loaded mean / p99 (ms) | added RTT (ms) | UDP 2× delivered ÷ limit | 1st second ÷ (rate·1s + burst) | 1st second ÷ rate·1s | burst (bytes) |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {:.3} | {} / {} | {:.3} / {:.3} / {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.0} |",
            r.plugin, r.rate, r.direction, r.tcp1_ratio, r.tcp8_ratio, r.retransmits_1flow, r.retransmits_8flow,
            r.rtt_idle_ms, r.rtt_loaded_mean_ms, r.rtt_loaded_p99_ms, r.rtt_added_mean_ms, r.udp_2x_delivered_ratio,
            r.first_second_ratio, r.first_second_over_rate, r.burst_bytes
        );
    }
    let _ = writeln!(s, "\nBPF cost per packet (bpf-ratelimit cgroup_skb programs, run_time_ns ÷ run_cnt, all tests at that rate):\n");
    let _ = writeln!(s, "| rate | ns/packet |\n|---|---|");
    for (rate, ns) in bpf {
        let _ = writeln!(s, "| {rate} | {ns:.0} |");
    }
    let _ = writeln!(s, "\nADD / DEL wall time of the shaping plugin itself (bridge not included):\n");
    let _ = writeln!(s, "| plugin | ADD median (ms) | ADD p99 (ms) | DEL median (ms) | DEL p99 (ms) |\n|---|---|---|---|---|");
    for t in timings {
        let _ = writeln!(s, "| {} | {:.1} | {:.1} | {:.1} | {:.1} |", t.plugin, t.add_median_ms, t.add_p99_ms, t.del_median_ms, t.del_p99_ms);
    }
    if let [ours, reference] = timings {
        let _ = writeln!(s, "\nADD p99 ratio ours ÷ reference: {:.2}", ours.add_p99_ms / reference.add_p99_ms);
    }
    s
}

/// Throughput over time of the 1-flow TCP runs: one panel per rate and
/// direction, both plugins, normalised to the limit.
pub(crate) fn svg(rows: &[Row], opts: &Options) -> String {
    let (pw, ph, m) = (420.0, 220.0, 40.0);
    let cols = 2.0;
    let nrows = opts.rates.len() as f64;
    let (w, h) = (cols * pw, nrows * ph + 30.0);
    let mut s = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(s, r##"<text x="10" y="18" font-size="13">TCP throughput ÷ limit over time (1 flow, 0.2 s intervals). <tspan fill="#1f77b4">bpf-ratelimit</tspan> vs <tspan fill="#d62728">bandwidth (reference)</tspan></text>"##);
    for (ri, (rate_name, _)) in opts.rates.iter().enumerate() {
        for (ci, dir) in ["egress", "ingress"].iter().enumerate() {
            let (x0, y0) = (ci as f64 * pw + m, 30.0 + ri as f64 * ph + 20.0);
            let (iw, ih) = (pw - 1.5 * m, ph - 2.0 * m);
            let ymax = 2.0;
            let _ = write!(s, r##"<rect x="{x0}" y="{y0}" width="{iw}" height="{ih}" fill="none" stroke="#999"/>"##);
            let _ = write!(s, r#"<text x="{x0}" y="{}">{rate_name} {dir}</text>"#, y0 - 4.0);
            let y1 = y0 + ih - ih / ymax;
            let _ = write!(s, r##"<line x1="{x0}" y1="{y1}" x2="{}" y2="{y1}" stroke="#999" stroke-dasharray="3,3"/><text x="{}" y="{}">1.0</text><text x="{}" y="{}">2.0</text><text x="{}" y="{}">0</text>"##,
                x0 + iw, x0 - 22.0, y1 + 4.0, x0 - 22.0, y0 + 8.0, x0 - 12.0, y0 + ih);
            let tmax = opts.seconds as f64;
            let _ = write!(s, r#"<text x="{}" y="{}">{tmax} s</text>"#, x0 + iw - 20.0, y0 + ih + 14.0);
            for (plugin, colour) in [("bpf-ratelimit", "#1f77b4"), ("bandwidth (reference)", "#d62728")] {
                let Some(row) = rows.iter().find(|r| r.plugin == plugin && &r.rate == rate_name && r.direction == *dir) else { continue };
                let rate = bpf_ratelimit::quantity::parse(rate_name).unwrap_or(1) as f64;
                let pts: Vec<String> = row
                    .series
                    .iter()
                    .map(|(t, bps)| {
                        let x = x0 + (t / tmax).min(1.0) * iw;
                        let y = y0 + ih - (bps / rate).min(ymax) / ymax * ih;
                        format!("{x:.1},{y:.1}")
                    })
                    .collect();
                let _ = write!(s, r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#, pts.join(" "));
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

