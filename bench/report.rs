//! results.md (the tables) and ratio_vs_rtt.svg (wire ÷ limit against RTT),
//! from the results alone: every figure printed is one in results.json.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::matrix::{Cell, CCS, FLOWS, WAYS};
use bpf_ratelimit::testbed::shapers::Row;
use crate::Results;

/// A run whose CPUs were this busy may have been starved by the machine.
const STARVED: f64 = 0.90;

fn f3(x: Option<f64>) -> String {
    x.map_or("—".into(), |v| format!("{v:.3}"))
}

fn rtt_label(rtt_ms: f64) -> String {
    if rtt_ms == 0.0 {
        "LAN".into()
    } else {
        format!("{rtt_ms} ms")
    }
}

fn find<'a>(cells: &'a [Cell], rtt: f64, rate: Option<&str>, row: Row, way: &str, cc: &str, flows: u32) -> Option<&'a Cell> {
    cells.iter().find(|c| c.rtt_ms == rtt && c.rate.as_deref() == rate && c.row == row && c.way == way && c.cc == cc && c.flows == flows)
}

/// "wire / goodput · resent · Jain", with a mark when the CPUs were starved.
fn cell_text(c: &Cell) -> String {
    let mut s = format!("{} / {} · {:.1}%", f3(c.wire_ratio), f3(c.goodput_ratio), c.resent_share * 100.0);
    if let Some(j) = c.jain {
        let _ = write!(s, " · J {j:.2}");
    }
    if c.cpu_busy >= STARVED {
        s.push_str(" ‡");
    }
    s
}

pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.meta;
    let _ = writeln!(s, "# bpf-ratelimit against the reference `bandwidth` plugin\n");
    let _ = writeln!(
        s,
        "Run {} (UTC), commit `{}`{}, kernel {}, reference plugin {} ({}), {} CPUs; `{}`; took {:.0} min{}.\n",
        m.date_utc,
        m.commit,
        if m.dirty { " with uncommitted changes" } else { "" },
        m.kernel,
        m.reference_package,
        m.reference_version_output.replace('\n', "; "),
        m.cpus,
        m.command,
        m.elapsed_s / 60.0,
        if r.complete { "" } else { " — **incomplete: the run stopped early**" }
    );
    matrix_tables(&mut s, r);
    latency_table(&mut s, r);
    wire_table(&mut s, r);
    workloads_table(&mut s, r);
    main_cni_table(&mut s, r);
    busy_node_table(&mut s, r);
    busy_state_table(&mut s, r);
    bpf_table(&mut s, r);
    timing_table(&mut s, r);
    s
}

fn matrix_tables(s: &mut String, r: &Results) {
    let cells = &r.matrix.cells;
    if cells.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Bulk TCP at each round-trip time\n");
    let _ = writeln!(
        s,
        "Each cell: **wire ÷ limit** / goodput ÷ limit · share of segments resent · Jain's index (8 flows). \
         Measured after {} s omitted, for {} s, on a fresh pod (a new ADD: full bucket, empty queue). \
         *Path unshaped ÷ limit*: the same 1-flow transfer with no shaper, what the path carries. \
         *Resent*: segments the sender retransmitted in the measured seconds ÷ the segments it sent in them (or the receiver got, where that is more: \
         a sender whose data waits seconds in a deep queue writes little while the wire still carries it; its timeouts may then resend the same \
         data many times over, and this exceeds 100%). \
         ‡: the CPUs were ≥ {:.0}% busy during the cell.\n",
        crate::matrix::OMIT,
        r.meta.seconds,
        STARVED * 100.0
    );
    let rows: Vec<Row> = Row::ALL_SHAPED.into_iter().filter(|row| cells.iter().any(|c| c.row == *row)).collect();
    let labels: Vec<&str> = rows.iter().map(|r| r.label()).collect();
    for (rate_name, _) in &r.meta.rates {
        for way in WAYS {
            let _ = writeln!(s, "### {rate_name}, {}\n", way.name());
            let _ = writeln!(s, "| RTT | sender | flows | path unshaped ÷ limit | {} |", labels.join(" | "));
            let _ = writeln!(s, "|---|---|---|---|{}", "---|".repeat(rows.len()));
            let limit = r.meta.rates.iter().find(|(n, _)| n == rate_name).map(|(_, l)| *l as f64).unwrap_or(f64::NAN);
            for &rtt in &r.meta.rtts_ms {
                for cc in CCS {
                    for flows in FLOWS {
                        let path = if flows == 1 {
                            find(cells, rtt, None, Row::Unshaped, way.name(), cc, 1).map_or("—".into(), |c| format!("{:.2}", c.wire_bps / limit))
                        } else {
                            "".into()
                        };
                        let text = |row| find(cells, rtt, Some(rate_name), row, way.name(), cc, flows).map_or("—".into(), cell_text);
                        if rows.iter().all(|row| find(cells, rtt, Some(rate_name), *row, way.name(), cc, flows).is_none()) {
                            continue;
                        }
                        let texts: Vec<String> = rows.iter().map(|row| text(*row)).collect();
                        let _ = writeln!(s, "| {} | {cc} | {flows} | {path} | {} |", rtt_label(rtt), texts.join(" | "));
                    }
                }
            }
            let _ = writeln!(s);
        }
    }
    // The buckets each row held, as read back.
    let _ = writeln!(s, "Buckets held (bytes, ingress / egress): ours as `bpf-ratelimit stats` reports them; the reference's as the kernel holds its TBFs (read back over netlink).\n");
    let _ = writeln!(s, "| rate | {} |\n|---|{}", labels.join(" | "), "---|".repeat(rows.len()));
    for (rate_name, _) in &r.meta.rates {
        let b = |row: Row| {
            cells
                .iter()
                .find(|c| c.rate.as_deref() == Some(rate_name) && c.row == row)
                .and_then(|c| c.buckets)
                .map_or("—".into(), |b| format!("{:.0} / {:.0}", b.ingress_bytes, b.egress_bytes))
        };
        if cells.iter().any(|c| c.rate.as_deref() == Some(rate_name)) {
            let held: Vec<String> = rows.iter().map(|row| b(*row)).collect();
            let _ = writeln!(s, "| {rate_name} | {} |", held.join(" | "));
        }
    }
    let _ = writeln!(s);
    let dropped: u64 = r.matrix.delay_line_dropped.values().sum();
    if dropped > 0 {
        let _ = writeln!(s, "**The delay line dropped {dropped} packets** ({:?}): the path, not a shaper, lost them.\n", r.matrix.delay_line_dropped);
    }
}

fn latency_table(s: &mut String, r: &Results) {
    let l = &r.matrix.latency;
    if l.is_empty() {
        return;
    }
    let _ = writeln!(s, "## An idle pod, and responses beside its own download\n");
    let _ = writeln!(
        s,
        "*First second*: bytes on the wire in the first second of a transfer into (download) or out of (upload) a pod idle since its ADD, \
         ÷ (rate × 1 s + the bucket it holds for that direction), and ÷ (rate × 1 s). \
         *Idle response*: 100-byte requests answered with 16 KB on a new connection each, to the idle pod (p50; the same path unshaped in brackets). \
         *Beside download*: the same responses, one every 150 ms plus its own time, started while the pod runs a 1-flow CUBIC download (p50 / p99, failed, how many), and that download's wire ÷ limit.\n"
    );
    let _ = writeln!(s, "| RTT | rate | shaper | 1st s download ÷ (rate·1s + bucket) / ÷ rate·1s | 1st s upload ÷ (rate·1s + bucket) / ÷ rate·1s | idle 16 KB response p50 ms (unshaped) | beside download p50 / p99 ms, failed | its download wire ÷ limit |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for x in l {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} / {:.2} | {:.3} / {:.2} | {:.2} ({:.2}) | {:.1} / {:.1}, {} (n = {}) | {:.3} |",
            rtt_label(x.rtt_ms),
            x.rate,
            x.row.label(),
            x.first_second_download_ratio,
            x.first_second_download_over_rate,
            x.first_second_upload_ratio,
            x.first_second_upload_over_rate,
            x.idle_response_p50_ms,
            x.unshaped_response_p50_ms,
            x.beside_p50_ms,
            x.beside_p99_ms,
            x.beside_failed,
            x.beside_samples,
            x.beside_download_wire_ratio
        );
    }
    let _ = writeln!(s);
}

fn wire_table(s: &mut String, r: &Results) {
    if r.wire.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Every traffic shape, on the wire (10M pod, LAN)\n");
    let _ = writeln!(
        s,
        "Each cell: **wire ÷ limit** / goodput ÷ limit. Wire: every frame with its Ethernet, IP and L4 headers, per segment, \
         at the far end of the path (upload) or at the pod's interface (download), after the first 3 s (a full bucket spent), for 4 s. \
         Goodput: what the receiver got (iperf3's receiver side; for the UDP_SEGMENT, AF_PACKET and AF_XDP senders, frames on the wire × the UDP payload each carries). \
         *Unshaped*: the same sender with no shaper (after 1 s, for 2 s): the counter sees its frames. \
         A shaper given containerd's burst lets a sender through unshaped until its bucket is spent: at 10M, whether that happened \
         within 3 s depends on how fast the sender goes. Flat-out senders keep both CPUs busy.\n"
    );
    let _ = writeln!(s, "| traffic | unshaped | {} | {} | {} |\n|---|---|---|---|---|", Row::Ours.label(), Row::RefContainerd.label(), Row::RefFair.label());
    let mut shapes: Vec<&str> = Vec::new();
    for w in &r.wire {
        if !shapes.contains(&w.shape.as_str()) {
            shapes.push(&w.shape);
        }
    }
    for shape in shapes {
        let text = |row: Row| {
            r.wire.iter().find(|w| w.shape == shape && w.row == row).map_or("—".into(), |w| {
                match w.goodput_ratio {
                    Some(g) => format!("{:.3} / {g:.3}", w.wire_ratio),
                    None => format!("{:.3} / —", w.wire_ratio),
                }
            })
        };
        let _ = writeln!(s, "| {shape} | {} | {} | {} | {} |", text(Row::Unshaped), text(Row::Ours), text(Row::RefContainerd), text(Row::RefFair));
    }
    let _ = writeln!(s);
}

fn main_cni_table(s: &mut String, r: &Results) {
    if r.main_cni.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Under an eBPF main CNI (100M pod, LAN)\n");
    let _ = writeln!(
        s,
        "The testbed emulates Cilium's and Calico eBPF's program at the front of each host veth's tc ingress \
         (src/testbed/main_cni.rs: `bpf_redirect_peer` past the bridge and the host veths' qdiscs). Each cell ÷ the limit: \
         wire for TCP (1 CUBIC flow, after 2 s, for 4 s) and AF_PACKET frames flat out, what iperf3's receiver got for UDP offered at 2×. \
         *Control*: the same download with no shaper. Kernel {}.\n",
        r.main_cni[0].kernel
    );
    let _ = writeln!(s, "| CNI program | shaper | control download | TCP download | TCP upload | UDP download at 2× | AF_PACKET upload |\n|---|---|---|---|---|---|---|");
    for m in &r.main_cni {
        let f = |x: Option<f64>| x.map_or("—".into(), |v| format!("{v:.3}"));
        match &m.add_error {
            Some(e) => {
                let short: String = e.chars().take(120).collect();
                let _ = writeln!(s, "| {} | {} | {:.1}× | **ADD failed**: {} | | | |", m.form, m.row.label(), m.control_download, short.replace('|', "/").replace('\n', " "));
            }
            None => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.1}× | {} | {} | {} | {} |",
                    m.form,
                    m.row.label(),
                    m.control_download,
                    f(m.tcp_download),
                    f(m.tcp_upload),
                    f(m.udp_download_delivered),
                    f(m.af_packet_upload)
                );
            }
        }
    }
    let _ = writeln!(s);
}

fn busy_node_table(s: &mut String, r: &Results) {
    if r.busy_node.is_empty() {
        return;
    }
    let _ = writeln!(s, "## A busy node\n");
    let _ = writeln!(
        s,
        "N pods on one bridge, each limited to the same rate both ways, every pod moving 1 CUBIC flow to one server on the bridge at once \
         ({} s after {} s omitted). *Goodput ÷ limit*: iperf3's receiver, min / median / max over the pods. *CPU busy*: the share of all {} CPUs' \
         time (/proc/stat) while every pod was sending. *CPU per Gbit/s*: busy CPUs ÷ Gbit/s delivered; *ours ÷ ref*: that figure of ours over the \
         reference's (given our bursts) in the same run. *BPF*: our programs' run time per run (kernel.bpf_stats_enabled) and runs per second.\n",
        crate::busy_node::SECONDS,
        crate::busy_node::OMIT,
        r.meta.cpus
    );
    let _ = writeln!(s, "| pods × limit | direction | shaper | goodput ÷ limit | Jain | resent segs | Gbit/s | CPU busy | CPU per Gbit/s | ours ÷ ref | BPF: ns per run (runs/s) |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for b in &r.busy_node {
        let reference =
            r.busy_node.iter().find(|x| x.pods == b.pods && x.moving == b.moving && x.rate == b.rate && x.way == b.way && x.row == Row::RefFair);
        let ratio = match (b.row, reference) {
            (row, Some(f)) if row.is_ours() => format!("**{:.2}×**", b.cpu_per_gbps / f.cpu_per_gbps),
            _ => String::new(),
        };
        let window = b.window_s.max(1e-3);
        let bpf: Vec<String> = b
            .bpf
            .iter()
            .map(|(name, (ns, cnt))| format!("{name} {:.0} ({:.0}k)", *ns as f64 / *cnt as f64, *cnt as f64 / window / 1e3))
            .collect();
        let _ = writeln!(
            s,
            "| {}×{}{} | {} | {} | {:.3} / {:.3} / {:.3} | {:.3} | {} | {:.2} | {:.0}% | {:.2} | {} | {} |",
            b.pods,
            b.rate,
            if b.moving == b.pods { String::new() } else { format!(" ({} moving)", b.moving) },
            b.way,
            b.row.label(),
            b.goodput_min,
            b.goodput_median,
            b.goodput_max,
            b.jain,
            b.retransmits,
            b.delivered_gbps,
            b.cpu_busy * 100.0,
            b.cpu_per_gbps,
            ratio,
            bpf.join(", ")
        );
    }
    let _ = writeln!(s);
}

fn busy_state_table(s: &mut String, r: &Results) {
    if r.busy_state.is_empty() {
        return;
    }
    let _ = writeln!(s, "## ADD, DEL and our maps with many pods shaped\n");
    let _ = writeln!(
        s,
        "The busy node's fleets: ADD's and DEL's wall time (process start included), median / p99 in ms, over the first and the last tenth \
         of the pods (ADD: with none and with all the others shaped; DEL: with all and with none left).\n"
    );
    let _ = writeln!(s, "| pods | shaper | ADD, first tenth | ADD, last tenth | DEL, first tenth | DEL, last tenth |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for st in &r.busy_state {
        let f = |(m, p): (f64, f64)| format!("{m:.2} / {p:.2}");
        let _ = writeln!(s, "| {}×{} | {} | {} | {} | {} | {} |", st.pods, st.rate, st.row.label(), f(st.add_first), f(st.add_last), f(st.del_first), f(st.del_last));
    }
    let _ = writeln!(s);
    for st in r.busy_state.iter().filter(|st| !st.maps.is_empty()) {
        let _ = writeln!(
            s,
            "Our maps, {} pods shaped ({} moving traffic): the bytes the kernel accounts to each (`bpftool map show`, memlock), after the first \
             pod's ADD, after all of them, and after the traffic. Socket and cgroup storage account only their map, not the per-socket or \
             per-cgroup values (value bytes each, plus the kernel's element header).\n",
            st.pods, st.moving
        );
        let _ = writeln!(s, "| map | type | max entries | value bytes | 1 pod | {} pods | after traffic |", st.pods);
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        let kb = |b: u64| format!("{:.1} kB", b as f64 / 1e3);
        for m in &st.maps {
            let _ = writeln!(s, "| {} | {} | {} | {} | {} | {} | {} |", m.name, m.kind, m.max_entries, m.value_bytes, kb(m.one_pod), kb(m.all_pods), kb(m.after_traffic));
        }
        let total = |f: fn(&crate::busy_node::MapMemory) -> u64| st.maps.iter().map(f).sum::<u64>();
        let _ = writeln!(s, "| all | | | | {} | {} | {} |\n", kb(total(|m| m.one_pod)), kb(total(|m| m.all_pods)), kb(total(|m| m.after_traffic)));
    }
}

fn workloads_table(s: &mut String, r: &Results) {
    if r.workloads.is_empty() {
        return;
    }
    let _ = writeln!(s, "## The traffic real pods make (LAN)\n");
    let _ = writeln!(
        s,
        "*Sidecar*: iperf3 client and server inside a 10M pod over 127.0.0.1. \
         *Idle requests*: 16 KB requests with 64-byte replies on a keep-alive connection from an idle 10M pod, every 300 ms. \
         *Beside own upload*: the same, one every 100 ms plus its own time, started while the pod uploads (1 CUBIC flow); and that upload's wire ÷ limit. \
         *Beside 20 light connections*: a 100M pod's upload beside 20 keep-alive connections sending 16 kbit/s each: goodput ÷ (limit − 320 kbit/s), wire ÷ limit. \
         *TCP + UDP*: a TCP upload and 6M of UDP at once from a 10M pod, wire ÷ limit after 3 s.\n"
    );
    let _ = writeln!(s, "| shaper | sidecar (Gbit/s) | idle requests p50 / p99 ms, failed | beside own upload p50 / p99 ms, failed, n (upload wire ÷ limit) | 100M beside 20 light: goodput ÷ what they leave / wire ÷ limit | TCP + UDP wire ÷ limit |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for w in &r.workloads {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} / {:.2}, {} | {:.1} / {:.1}, {}, {} ({:.3}) | {:.3} / {:.3} | {:.3} |",
            w.row.map_or("?", Row::label),
            w.sidecar_bps / 1e9,
            w.idle_request_p50_ms,
            w.idle_request_p99_ms,
            w.idle_request_failed,
            w.beside_upload_p50_ms,
            w.beside_upload_p99_ms,
            w.beside_upload_failed,
            w.beside_upload_samples,
            w.beside_upload_wire_ratio,
            w.bulk_beside_light_goodput_ratio,
            w.bulk_beside_light_wire_ratio,
            w.tcp_udp_wire_ratio
        );
    }
    let _ = writeln!(s);
}

fn bpf_table(s: &mut String, r: &Results) {
    let stats: &BTreeMap<String, BTreeMap<String, (u64, u64)>> = &r.matrix.bpf_stats;
    if stats.values().all(|m| m.is_empty()) {
        return;
    }
    let _ = writeln!(s, "## BPF cost (bpf-ratelimit)\n");
    let _ = writeln!(
        s,
        "kernel.bpf_stats_enabled: run_time_ns ÷ run_cnt of the programs attached to the pod's cgroup, over every bpf-ratelimit cell of the matrix at that rate (a mean, with bpf_stats' own two clock reads per run).\n"
    );
    let _ = writeln!(s, "| rate | program | ns per run | runs |\n|---|---|---|---|");
    for (rate, progs) in stats {
        for (name, (ns, cnt)) in progs {
            if *cnt > 0 {
                let _ = writeln!(s, "| {rate} | {name} | {:.0} | {cnt} |", *ns as f64 / *cnt as f64);
            }
        }
    }
    let _ = writeln!(s);
}

fn timing_table(s: &mut String, r: &Results) {
    if r.timing.is_empty() {
        return;
    }
    let _ = writeln!(s, "## ADD and DEL\n");
    let _ = writeln!(
        s,
        "Wall time of one plugin invocation as a runtime waits for it (process start to exit), {} pods per plugin, taking turns; \
         the reference with containerd's values. Pods stay until all are ADDed.\n",
        r.timing[0].pods
    );
    let _ = writeln!(s, "| plugin | ADD median (ms) | ADD p99 (ms) | DEL median (ms) | DEL p99 (ms) |\n|---|---|---|---|---|");
    for t in &r.timing {
        let _ = writeln!(s, "| {} | {:.2} | {:.2} | {:.2} | {:.2} |", t.row.map_or("?", Row::label), t.add_median_ms, t.add_p99_ms, t.del_median_ms, t.del_p99_ms);
    }
    if let [ours, reference] = &r.timing[..] {
        let _ = writeln!(
            s,
            "| ours ÷ reference | {:.2} | {:.2} | {:.2} | {:.2} |",
            ours.add_median_ms / reference.add_median_ms,
            ours.add_p99_ms / reference.add_p99_ms,
            ours.del_median_ms / reference.del_median_ms,
            ours.del_p99_ms / reference.del_p99_ms
        );
    }
    let _ = writeln!(s);
    if let Some(idle) = &r.idle_process {
        let _ = writeln!(
            s,
            "A process that does nothing (`true`), spawned the same way between the ADDs, {} times: median {:.2} ms, p99 {:.2} ms. That p99 is the machine's own tail, which reaches either plugin's.\n",
            idle.runs, idle.median_ms, idle.p99_ms
        );
    }
    if let Some(st) = &r.status {
        let _ = writeln!(
            s,
            "STATUS (ours; the reference has none), {} calls on a node with no pod left, as a runtime polls it: median {:.2} ms, p99 {:.2} ms, max {:.2} ms.\n",
            st.calls, st.median_ms, st.p99_ms, st.max_ms
        );
    }
}

const COLOURS: [(Row, &str); 7] =
    [(Row::Ours, "#1f77b4"), (Row::RefContainerd, "#d62728"), (Row::RefFair, "#ff7f0e"), (Row::RefOurQueue, "#8c564b"), (Row::OursPolicer, "#2ca02c"), (Row::OursLowCpu, "#9467bd"), (Row::Unshaped, "#7f7f7f")];

fn dash(cc: &str, flows: u32) -> &'static str {
    match (cc, flows) {
        ("cubic", 1) => "",
        ("cubic", _) => "6,3",
        (_, 1) => "2,2",
        _ => "8,3,2,3",
    }
}

/// Wire ÷ limit against RTT: one panel per rate (rows) and direction
/// (columns); one line per shaper (colour) and sender × flows (dash); the
/// path unshaped in grey. Values above the axis are marked at its top with
/// their value.
pub fn svg(r: &Results) -> String {
    let cells = &r.matrix.cells;
    let rtts = &r.meta.rtts_ms;
    let rates = &r.meta.rates;
    let (pw, ph) = (430.0, 250.0);
    let (ml, mt, mr, mb) = (46.0, 26.0, 14.0, 34.0);
    let head = 64.0;
    let (w, h) = (2.0 * pw, head + rates.len() as f64 * ph);
    let ymax = 1.6;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = write!(s, r#"<text x="10" y="16" font-size="13">Bulk TCP: bytes on the wire ÷ limit, against round-trip time (after {} s, for {} s)</text>"#, crate::matrix::OMIT, r.meta.seconds);
    let mut x = 10.0;
    for (row, colour) in COLOURS.into_iter().filter(|(row, _)| r.matrix.cells.iter().any(|c| c.row == *row)) {
        let _ = write!(s, r#"<line x1="{x}" y1="32" x2="{}" y2="32" stroke="{colour}" stroke-width="2.5"/><text x="{}" y="36">{}</text>"#, x + 18.0, x + 22.0, row.label());
        x += 34.0 + row.label().len() as f64 * 6.0;
    }
    let mut x = 10.0;
    for cc in CCS {
        for flows in FLOWS {
            let label = format!("{cc}, {flows} flow{}", if flows > 1 { "s" } else { "" });
            let _ = write!(s, r##"<line x1="{x}" y1="50" x2="{}" y2="50" stroke="#333" stroke-width="1.5" stroke-dasharray="{}"/><text x="{}" y="54">{label}</text>"##, x + 26.0, dash(cc, flows), x + 30.0);
            x += 44.0 + label.len() as f64 * 6.0;
        }
    }
    for (ri, (rate_name, limit)) in rates.iter().enumerate() {
        for (ci, way) in WAYS.iter().enumerate() {
            let (x0, y0) = (ci as f64 * pw + ml, head + ri as f64 * ph + mt);
            let (iw, ih) = (pw - ml - mr, ph - mt - mb);
            let xat = |i: usize| x0 + if rtts.len() > 1 { i as f64 / (rtts.len() - 1) as f64 * iw } else { iw / 2.0 };
            let yat = |v: f64| y0 + ih - v.min(ymax) / ymax * ih;
            let _ = write!(s, r##"<rect x="{x0}" y="{y0}" width="{iw}" height="{ih}" fill="none" stroke="#999"/>"##);
            let _ = write!(s, r#"<text x="{x0}" y="{}" font-weight="bold">{rate_name}, {}</text>"#, y0 - 6.0, way.name());
            for v in [0.5, 1.0, 1.5] {
                let y = yat(v);
                let _ = write!(s, r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#ccc" stroke-dasharray="{}"/><text x="{}" y="{}" text-anchor="end">{v:.1}</text>"##,
                    x0 + iw, if v == 1.0 { "" } else { "2,3" }, x0 - 4.0, y + 4.0);
            }
            let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end">0</text>"#, x0 - 4.0, y0 + ih + 4.0);
            for (i, rtt) in rtts.iter().enumerate() {
                let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, xat(i), y0 + ih + 14.0, rtt_label(*rtt));
            }
            let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">RTT</text>"#, x0 + iw / 2.0, y0 + ih + 28.0);
            let mut over: Vec<(f64, f64, &str)> = Vec::new();
            for (row, colour) in COLOURS {
                for cc in CCS {
                    for flows in FLOWS {
                        let pts: Vec<(f64, f64)> = rtts
                            .iter()
                            .enumerate()
                            .filter_map(|(i, rtt)| {
                                let c = if row == Row::Unshaped {
                                    if flows > 1 {
                                        return None;
                                    }
                                    find(cells, *rtt, None, row, way.name(), cc, 1)?
                                } else {
                                    find(cells, *rtt, Some(rate_name), row, way.name(), cc, flows)?
                                };
                                Some((i as f64, c.wire_bps / *limit as f64))
                            })
                            .collect();
                        if pts.is_empty() {
                            continue;
                        }
                        let line: Vec<String> = pts.iter().map(|(i, v)| format!("{:.1},{:.1}", xat(*i as usize), yat(*v))).collect();
                        let _ = write!(s, r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" stroke-dasharray="{}" points="{}"/>"#, dash(cc, flows), line.join(" "));
                        for (i, v) in &pts {
                            let _ = write!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{colour}"/>"#, xat(*i as usize), yat(*v));
                            if *v > ymax {
                                over.push((xat(*i as usize), *v, colour));
                            }
                        }
                    }
                }
            }
            // Off-scale values, stacked under the top edge at their RTT.
            let mut stacked: BTreeMap<i64, f64> = BTreeMap::new();
            for (x, v, colour) in over {
                let dy = stacked.entry(x as i64).or_insert(0.0);
                let _ = write!(s, r#"<text x="{:.1}" y="{:.1}" fill="{colour}" font-size="9" text-anchor="middle">↑{}</text>"#, x, y0 + 10.0 + *dy, if v >= 10.0 { format!("{v:.0}") } else { format!("{v:.1}") });
                *dy += 9.0;
            }
        }
    }
    s.push_str("</svg>\n");
    s
}
