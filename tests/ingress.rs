//! What the pod receives, beyond bulk rates (tests/rtt.rs): the burst an
//! idle pod gets, responses beside its own download, the latency a download
//! adds, UDP, the policer where no queue can be had, and the queue's and the
//! egress guard's whole life (ADD, CHECK, DEL, GC, a failed ADD, a taken
//! interface). Real TCP from a server in another netns, on a LAN and 10 ms
//! away through the delay line; every rate is measured on the wire.

mod common;

use std::process::Command;
use std::time::Duration;

use bpf_ratelimit::testbed::main_cni::Attach;
use bpf_ratelimit::testbed::measure::FRAME_PER_PAYLOAD;
use bpf_ratelimit::testbed::scenario::{Bulk, BulkResult, Latencies, Requests, Way};
use bpf_ratelimit::testbed::{run_with_timeout, SERVER_IP};
use common::{assert_bulk, assert_first_second, FirstSecond, Pod};
use serde_json::{json, Value};

fn ingress(rate: &str) -> Value {
    json!({"kubernetes.io/ingress-bandwidth": rate})
}

/// The qdiscs in the pod's netns, where its ingress queue is.
fn queue_on(pod: &Pod) -> String {
    let out = Command::new("ip").args(["netns", "exec", &pod.bed.pod_ns, "tc", "qdisc", "show"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The name of the pod's ingress queue's ifb, in its netns.
fn pod_ifb(pod: &Pod) -> String {
    let out = Command::new("ip").args(["-n", &pod.bed.pod_ns, "-o", "link", "show", "type", "ifb"]).output().unwrap();
    let links = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = links.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap_or(n)).collect();
    assert_eq!(names.len(), 1, "the pod should have one ifb: {links}");
    names[0].to_string()
}

/// Gives the pod's ingress queue (its TBF, `b9a1:`) a child of `kind` in
/// place of ours, for a negative control; the queue's ifb.
fn replace_queue_child(pod: &Pod, kind: &str) -> String {
    let ifb = pod_ifb(pod);
    let out = Command::new("ip")
        .args(["netns", "exec", &pod.bed.pod_ns, "tc", "qdisc", "replace", "dev", &ifb, "parent", "b9a1:1", "handle", "b9a3:", kind])
        .output()
        .unwrap();
    assert!(out.status.success(), "cannot give the queue a {kind} child: {}", String::from_utf8_lossy(&out.stderr));
    ifb
}

/// The filters on the pod's eth0, `hook` (ingress or egress).
fn pod_filters(pod: &Pod, hook: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", &pod.bed.pod_ns, "tc", "filter", "show", "dev", "eth0", hook]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn host_root_qdisc(pod: &Pod) -> String {
    let out = Command::new("tc").args(["qdisc", "show", "dev", &pod.bed.pod_host_veth, "root"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn guard_on(pod: &Pod) -> String {
    let out = Command::new("tc").args(["filter", "show", "dev", &pod.bed.pod_host_veth, "ingress"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stats(pod: &Pod) -> Value {
    let out = Command::new(common::plugin()).arg("stats").arg(&pod.pin_root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The path's round trip, the least of a few pings from the idle pod.
fn min_rtt_ms(pod: &Pod) -> f64 {
    let mut c = pod.bed.pod_command("ping").unwrap();
    c.args(["-n", "-q", "-c", "10", "-i", "0.05", SERVER_IP]);
    let out = run_with_timeout(c, Duration::from_secs(10)).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // rtt min/avg/max/mdev = a/b/c/d ms
    text.split(" = ").nth(1).and_then(|t| t.split('/').next()).and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("ping: {text}"))
}

fn responses(count: u32) -> Requests {
    Requests::fresh_responses(count, 300)
}

/// A 16 KB response to an idle 10M pod arrives at the path's speed (its
/// burst), p50 within 1 ms of the same path unshaped; the first second of a
/// download after idle carries rate x 1 s + burst, at least 0.9 of it. Each
/// bound is seen to fail in the same run: with no limit the first second
/// carries many times the bound; with a 1-packet burst, less than 0.9 of it;
/// at 1M with a 2 kB burst a response takes 130 ms.
///
/// Unshaped and shaped are measured a few seconds apart, and on this 2-vCPU
/// VM the delay line's timing drifts between two such windows (by 1.1 ms at
/// p50 once, which failed the check); so each is taken beside the same
/// requests from the gateway, and compared as its excess over them.
fn idle_pod_gets_its_burst(one_way_ms: u64) {
    let mut pod = Pod::with_delay("burst", Duration::from_millis(one_way_ms));
    pod.bed.start_server().unwrap();
    pod.bed.start_rr_server().unwrap();
    let rtt = format!("{} ms RTT", 2 * one_way_ms);
    let (unshaped, control_before) = pod.bed.requests_with_control(&responses(15)).unwrap();
    // rate x 1 s + the default burst (2.5 Mbit at 10M), on the wire.
    let bound = 10e6 / 8.0 + 312_500.0;
    assert_first_second(&pod, Way::Download, bound, FirstSecond::Unlimited, &format!("a download into the pod with no limit, {rtt}"));
    std::thread::sleep(Duration::from_secs(1));
    pod.add(ingress("10M"));
    std::thread::sleep(Duration::from_millis(500));
    let (shaped, control) = pod.bed.requests_with_control(&responses(15)).unwrap();
    let (excess, excess_unshaped) = (shaped.p50_ms - control.p50_ms, unshaped.p50_ms - control_before.p50_ms);
    println!("16 KB responses on fresh connections, idle 10M pod, {rtt}: p50 {:.2} ms shaped, {:.2} ms unshaped; from the gateway at the same times {:.2} and {:.2} ms",
             shaped.p50_ms, unshaped.p50_ms, control.p50_ms, control_before.p50_ms);
    assert_eq!(shaped.failed, 0);
    assert!(excess <= excess_unshaped + 1.0, "{rtt}: p50 {:.2} ms shaped ({excess:.2} over the gateway's), unshaped {:.2} ms ({excess_unshaped:.2} over)", shaped.p50_ms, unshaped.p50_ms);

    std::thread::sleep(Duration::from_secs(1));
    assert_first_second(&pod, Way::Download, bound, FirstSecond::WithTheBurst, &format!("a download into an idle 10M pod, {rtt}"));

    // The first second's control, with a 1-packet burst (2 kB: one full
    // frame): the same rate without the burst breaks the lower bound.
    pod.add(json!({"kubernetes.io/ingress-bandwidth": "10M", "bpf-ratelimit.io/ingress-burst": "16000"}));
    std::thread::sleep(Duration::from_secs(1));
    assert_first_second(&pod, Way::Download, bound, FirstSecond::OnePacketBurst, &format!("the same with a 1-packet burst, {rtt}"));

    // The responses' control: at 1M with a 2 kB burst, 16 KB take 130 ms.
    pod.add(json!({"kubernetes.io/ingress-bandwidth": "1M", "bpf-ratelimit.io/ingress-burst": "16000"}));
    std::thread::sleep(Duration::from_millis(500));
    let starved = pod.bed.requests(&responses(6)).unwrap();
    println!("the same at 1M with a 2 kB burst: p50 {:.2} ms", starved.p50_ms);
    assert!(starved.p50_ms >= unshaped.p50_ms + 50.0, "a 2 kB burst at 1M should hold a 16 KB response back: p50 {:.2} ms", starved.p50_ms);
    pod.del();
}

#[test]
fn an_idle_pod_receives_its_burst_at_path_speed_on_a_lan() {
    idle_pod_gets_its_burst(0);
}

#[test]
fn an_idle_pod_receives_its_burst_at_path_speed_10_ms_away() {
    idle_pod_gets_its_burst(5);
}

/// The bounds of one cell of the responses-beside-a-download tests (ms):
/// p99 within max(3 x RTT, the control's p99) + `slack` and within
/// `ceiling` whatever the control did, p50 within `ceiling_p50`.
#[derive(Clone, Copy)]
struct ResponseBounds {
    slack: f64,
    ceiling: f64,
    ceiling_p50: f64,
}

/// 16 KB responses on fresh connections beside the pod's own download, none
/// failed, p50 and p99 within their bounds (ResponseBounds); the download
/// holds its band in the same run. p99 is the nearest rank of 100
/// responses at 10M (one every 150 ms, about 8% of the limit) and of 200
/// at 100M (one every 40 ms).
///
/// 3 x RTT is what a wire gives. This testbed's delay line is a process on
/// a 2-vCPU VM that also runs the transfer, and at times it holds packets
/// 5-20 ms late (pings across the line alone, no shaper, during a 100M
/// download 10 ms away: p99 17.4 ms). So the same requests also go from
/// the gateway at the same time, across the same line with no shaper, and
/// where they take longer than 3 x RTT at p99 the bound starts from theirs;
/// the absolute ceiling keeps a busy machine from widening it past what
/// the feature is for.
///
/// The negative control, in the same run: the queue's child becomes one
/// FIFO (no first band for light flows), and the same responses beside the
/// same download must break the bounds.
///
/// Measured here (with the band / without it), p50 and p99 in ms: 10M on a
/// LAN 12.8-14.9 and 16.2-22.4 / 22.7 and 24.1-27.1 (p50 separates them,
/// p99 barely); 100M on a LAN 2.1-2.7 and 5.1-5.4 / 33.7-51.4 and
/// 37.0-56.2; 10M 10 ms away 32.4-34.1 and 38.1-47.5 / 95.0-97.1 and
/// 95.1-101.8; 100M 10 ms away 32.0-32.7 and 36.3-41.6 / 112.3-118.0 and
/// 136.2-190.8.
fn responses_beside_download(one_way_ms: u64, rate: &str, bits: f64, bounds: ResponseBounds) {
    responses_beside_download_under(None, one_way_ms, rate, bits, bounds)
}

/// `responses_beside_download`, optionally under an emulated eBPF main CNI.
fn responses_beside_download_under(cni: Option<Attach>, one_way_ms: u64, rate: &str, bits: f64, bounds: ResponseBounds) {
    let mut pod = Pod::with_delay("beside", Duration::from_millis(one_way_ms));
    if let Some(form) = cni {
        pod.bed.emulate_ebpf_main_cni(form).unwrap();
    }
    pod.bed.start_server().unwrap();
    pod.bed.start_rr_server().unwrap();
    let rtt_ms = min_rtt_ms(&pod);
    pod.add(ingress(rate));
    let (count, gap_ms) = if bits < 50e6 { (100, 150) } else { (200, 40) };
    let under = cni.map_or(String::new(), |f| format!(" under an eBPF main CNI ({f:?})"));
    let what = format!("16 KB responses beside the pod's own {rate} download, {rtt_ms:.2} ms RTT{under}");
    let measure = |seconds: u32, count: u32| {
        let download = Bulk::tcp(Way::Download, "cubic", 1, 2, seconds);
        let requests = Requests { gap_ms, within_ms: Some(seconds * 1000 - 500), ..responses(count) };
        let (lat, control, bulk) = pod.bed.requests_beside_with_control(&download, &requests).unwrap();
        let bound = (3.0 * rtt_ms).max(control.p99_ms) + bounds.slack;
        let within = lat.p99_ms <= bound && lat.p99_ms <= bounds.ceiling && lat.p50_ms <= bounds.ceiling_p50;
        (lat, control, bulk, bound, within)
    };
    let (mut lat, mut control, mut bulk, mut bound, mut within) = measure(18, count);
    // Once, counted in the suite's retry budget: when the same requests
    // from the gateway, with no shaper, were themselves late by more than
    // the slack, the delay line (a process on the same 2 vCPUs) held them,
    // not the shaper. (CI, 100M 10 ms away: the pod's p99 50.2 ms against
    // a 50 ms ceiling, the gateway's own p99 46.3 ms, 3 x RTT 30.5 ms.)
    if !within && control.p99_ms > 3.0 * rtt_ms + bounds.slack {
        println!("{what}: p50 {:.2} ms, p99 {:.2} ms: beyond the bounds, with the gateway's p99 at {:.2} ms", lat.p50_ms, lat.p99_ms, control.p99_ms);
        common::retries::record(
            &what,
            &format!("p99 {:.2} ms beyond the bounds while the unshaped control's p99 was {:.2} ms, over 3 x RTT ({:.1} ms) + the slack", lat.p99_ms, control.p99_ms, 3.0 * rtt_ms),
        );
        (lat, control, bulk, bound, within) = measure(18, count);
    }
    println!("{what}: p50 {:.2} ms (ceiling {:.1}), p99 {:.2} ms (bound {bound:.1}, ceiling {:.1}) of {} responses, {} failed; from the gateway, no shaper: p50 {:.2} ms, p99 {:.2} ms; the download: wire {:.3} of the limit",
             lat.p50_ms, bounds.ceiling_p50, lat.p99_ms, bounds.ceiling, lat.samples, lat.failed, control.p50_ms, control.p99_ms, bulk.wire_bps / bits);
    assert_eq!(lat.failed, 0, "{what}");
    // Closed loop: 10 ms away each takes 3 x RTT more, and fewer fit.
    let enough = if one_way_ms == 0 { count as u64 } else { count as u64 * 85 / 100 };
    assert!(lat.samples >= enough && control.samples >= enough, "{what}: only {} responses (control {}) within the download", lat.samples, control.samples);
    assert!(within, "{what}: p50 {:.2} ms, p99 {:.2} ms: beyond the bounds", lat.p50_ms, lat.p99_ms);
    // The pod holds its limit with both; the download, the bulk of it, is
    // not starved by the responses that pass it.
    assert!((0.95..=1.02).contains(&(bulk.wire_bps / bits)), "{what}: the pod received {:.3} of the limit", bulk.wire_bps / bits);
    assert!(bulk.transfer.goodput_bps / bits >= 0.85, "{what}: the download's goodput {:.3} of the limit", bulk.transfer.goodput_bps / bits);
    // The negative control: without the light-flow band, the same bounds
    // break. The queue's pfifo_fast child (whose first band the door gives
    // light flows) becomes one FIFO; the door, and the windows sized from
    // its model of the queue, stay.
    let ifb = replace_queue_child(&pod, "pfifo");
    let qdiscs = Command::new("ip").args(["netns", "exec", &pod.bed.pod_ns, "tc", "qdisc", "show", "dev", &ifb]).output().unwrap();
    let qdiscs = String::from_utf8_lossy(&qdiscs.stdout);
    assert!(qdiscs.contains("pfifo b9a3:") && !qdiscs.contains("pfifo_fast"), "the queue still has its bands: {qdiscs}");
    let (lat, control, bulk, bound, within) = measure(10, count / 2);
    println!("  negative control, the light-flow band removed: p50 {:.2} ms, p99 {:.2} ms (bound {bound:.1}, ceiling {:.1}) of {} responses; from the gateway p99 {:.2} ms; the download: wire {:.3} of the limit",
             lat.p50_ms, lat.p99_ms, bounds.ceiling, lat.samples, control.p99_ms, bulk.wire_bps / bits);
    // Slow without the band, so fewer fit; enough for p50 and a tail.
    assert!(lat.samples >= 20, "{what}, negative control: only {} responses", lat.samples);
    assert!(!within, "{what}: with the light-flow band removed the responses still met the bounds (p50 {:.2}, p99 {:.2} ms): they do not test it", lat.p50_ms, lat.p99_ms);
    pod.del();
}

#[test]
fn responses_beside_a_download_are_fast() {
    responses_beside_download(0, "10M", 10e6, ResponseBounds { slack: 25.0, ceiling: 30.0, ceiling_p50: 18.0 });
    responses_beside_download(0, "100M", 100e6, ResponseBounds { slack: 5.0, ceiling: 15.0, ceiling_p50: 10.0 });
}

#[test]
fn responses_beside_a_download_are_fast_10_ms_away() {
    responses_beside_download(5, "100M", 100e6, ResponseBounds { slack: 5.0, ceiling: 50.0, ceiling_p50: 42.0 });
    responses_beside_download(5, "10M", 10e6, ResponseBounds { slack: 25.0, ceiling: 60.0, ceiling_p50: 45.0 });
}

/// `requests` beside the pod's own 20 s download (`requests_beside_with_control`)
/// and `sender`, started `lead` before them (it must end by itself, printing
/// JSON): the latencies, the control's, the download, and what the sender
/// reported; a sender that failed fails the test.
fn responses_beside_download_and(
    pod: &Pod,
    mut sender: Command,
    lead: Duration,
    requests: &Requests,
    name: &str,
) -> (Latencies, Latencies, BulkResult, Value) {
    let sender = sender.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(lead);
    let download = Bulk::tcp(Way::Download, "cubic", 1, 2, 18);
    let (lat, control, bulk) = pod.bed.requests_beside_with_control(&download, requests).unwrap();
    let out = sender.wait_with_output().unwrap();
    assert!(out.status.success(), "{name} failed: {}", String::from_utf8_lossy(&out.stderr));
    let sent = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{name} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (lat, control, bulk, sent)
}

/// The queue holds what it is configured to hold, so a UDP flood cannot
/// stand a long queue in front of the pod's responses: a 10M pod receives
/// 20M of UDP (1400-byte datagrams, from the server, to a sink in the pod)
/// beside its own TCP download, and 16 KB responses keep the bound they
/// have beside the download alone (3 x RTT or the gateway's control, + 25
/// ms). The pod's wire holds the limit with all three; the flood's sender
/// proves it sent. (Before the ifb's txqueuelen followed the TBF's limit,
/// its pfifo_fast child held 3 x 1000 frames whatever that limit said.)
///
/// Where the kernel has prio and fq_codel (the 6.1 VM; this host has
/// neither), the queue's child shares the rate between flows, and the
/// download keeps at least 0.3 of the limit beside the flood; the negative
/// control, in the same run, gives the queue pfifo_fast (what kernels
/// without them get) and the same download beside the same flood must fall
/// below 0.2. (Measured: 0.41 with fq_codel on 6.1; with pfifo_fast, 0.07
/// on this host.)
#[test]
fn responses_beside_a_download_and_a_udp_flood_are_fast() {
    let mut pod = Pod::new("flood");
    pod.bed.start_server().unwrap();
    pod.bed.start_rr_server().unwrap();
    let mut sink = pod.bed.pod_command("iperf3").unwrap();
    sink.args(["-s", "-p", "5210"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    pod.bed.keep(sink.spawn().unwrap());
    let rtt_ms = min_rtt_ms(&pod);
    pod.add(ingress("10M"));
    let child = stats(&pod)["pods"][0]["ingressQueueChild"].as_str().unwrap_or_default().to_string();
    let flow_fair = common::kernel_has_prio_and_fq_codel();
    assert_eq!(child, if flow_fair { "flowFair" } else { "bands" }, "the queue's child on kernel {}", bpf_ratelimit::node::kernel::release());
    std::thread::sleep(Duration::from_millis(300));
    let flood = |seconds: u32| {
        let mut flood = pod.bed.server_command("iperf3").unwrap();
        flood.args(["-c", bpf_ratelimit::testbed::POD_IP, "-p", "5210", "-u", "-b", "20M", "-l", "1400", "-t", &seconds.to_string(), "-J"]);
        flood
    };
    let requests = Requests { gap_ms: 150, within_ms: Some(17_500), ..responses(100) };
    let (lat, control, bulk, sent) = responses_beside_download_and(&pod, flood(23), Duration::from_secs(1), &requests, "the UDP flood");
    let sent_bps = sent["end"]["sum"]["bits_per_second"].as_f64().unwrap_or(0.0);
    let bound = (3.0 * rtt_ms).max(control.p99_ms) + 25.0;
    let download = bulk.transfer.goodput_bps / 10e6;
    let what = format!("16 KB responses beside a 10M pod's download and 20M of UDP into it, {rtt_ms:.2} ms RTT, queue child {child}");
    println!("{what}: p50 {:.2} ms, p99 {:.2} ms (bound {bound:.1}) of {} responses, {} failed; from the gateway, no shaper: p99 {:.2} ms; the flood sent {:.1} Mbit/s; the pod's wire {:.3} of the limit, the download's goodput {download:.3}",
             lat.p50_ms, lat.p99_ms, lat.samples, lat.failed, control.p99_ms, sent_bps / 1e6, bulk.wire_bps / 10e6);
    assert!(sent_bps >= 0.9 * 20e6, "the UDP flood sent only {:.1} Mbit/s", sent_bps / 1e6);
    assert_eq!(lat.failed, 0, "{what}");
    assert!(lat.samples >= 100, "{what}: only {} responses", lat.samples);
    assert!(lat.p99_ms <= bound, "{what}: p99 {:.2} ms > {bound:.1}", lat.p99_ms);
    assert!((0.95..=1.02).contains(&(bulk.wire_bps / 10e6)), "{what}: the pod received {:.3} of the limit", bulk.wire_bps / 10e6);
    if flow_fair {
        assert!(download >= 0.3, "{what}: with fq_codel the download beside the flood got {download:.3} of the limit");
        // The negative control: pfifo_fast in place of prio and fq_codel.
        replace_queue_child(&pod, "pfifo_fast");
        let sender = flood(14).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        std::thread::sleep(Duration::from_secs(1));
        let without = pod.bed.bulk(&Bulk::tcp(Way::Download, "cubic", 1, 2, 8)).unwrap();
        let out = sender.wait_with_output().unwrap();
        assert!(out.status.success(), "the control's flood failed: {}", String::from_utf8_lossy(&out.stderr));
        let without = without.transfer.goodput_bps / 10e6;
        println!("  negative control, pfifo_fast in place of fq_codel: the download beside the flood got {without:.3} of the limit");
        assert!(without < 0.2, "{what}: with pfifo_fast the download beside the flood still got {without:.3}: the test does not tell the children apart");
    }
    pod.del();
}

/// The same bounds where an eBPF main CNI delivers past the host side: the
/// queue and its light-flow band are in the pod's netns.
#[test]
fn responses_beside_a_download_are_fast_under_an_ebpf_main_cni() {
    responses_beside_download_under(Some(Attach::Tc), 0, "10M", 10e6, ResponseBounds { slack: 25.0, ceiling: 30.0, ceiling_p50: 18.0 });
    responses_beside_download_under(Some(Attach::Tc), 0, "100M", 100e6, ResponseBounds { slack: 5.0, ceiling: 15.0, ceiling_p50: 10.0 });
}

/// A download at its limit keeps a short queue: the pod's pings wait at most
/// a few ms more; and UDP offered at twice the limit is delivered at it.
#[test]
fn a_download_at_its_limit_adds_little_latency_and_udp_is_held() {
    let mut pod = Pod::new("ingrr");
    pod.bed.start_server().unwrap();
    pod.add(ingress("10M"));
    let ping = |pod: &Pod, count: &str| -> f64 {
        let mut c = pod.bed.pod_command("ping").unwrap();
        c.args(["-n", "-q", "-c", count, "-i", "0.05", SERVER_IP]);
        let out = run_with_timeout(c, Duration::from_secs(20)).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // rtt min/avg/max/mdev = a/b/c/d ms
        text.split(" = ").nth(1).and_then(|t| t.split('/').nth(1)).and_then(|a| a.parse().ok()).expect("ping avg")
    };
    let idle = ping(&pod, "20");
    let (loaded, bulk) = std::thread::scope(|s| {
        let download = s.spawn(|| pod.bed.bulk(&Bulk::tcp(Way::Download, "cubic", 1, 2, 5)));
        std::thread::sleep(Duration::from_secs(2));
        let loaded = ping(&pod, "60");
        (loaded, download.join().unwrap().unwrap())
    });
    println!("ping from a 10M pod: {idle:.2} ms idle, {loaded:.2} ms during its download (wire {:.3} of the limit)", bulk.wire_bps / 10e6);
    assert!((0.95..=1.02).contains(&(bulk.wire_bps / 10e6)), "the download got {:.3} of the limit", bulk.wire_bps / 10e6);
    assert!(loaded <= idle + 10.0, "a download at its limit added {:.1} ms", loaded - idle);

    std::thread::sleep(Duration::from_secs(1));
    let udp = assert_bulk(&pod, &Bulk::udp(Way::Download, 20_000_000, 2, 5), 10e6, (0.95, 1.02), "UDP offered at 2x the 10M ingress limit");
    println!("  UDP goodput {:.3} of the limit", udp.transfer.goodput_bps / 10e6);
    pod.del();
}

/// Where no queue can be had (`ingressQueue: false` here; macvlan, or a taken
/// root qdisc, alike), the policer holds at least 0.9 of the limit on a LAN
/// and 10 ms away; what it resends is printed (docs/shaping.md).
#[test]
fn the_policer_delivers_the_limit_at_every_rtt() {
    for one_way in [0, 5] {
        let pod = Pod::with_delay("policer", Duration::from_millis(one_way));
        let mut pod = pod;
        pod.bed.start_server().unwrap();
        let mut conf = pod.config(ingress("10M"));
        conf["ingressQueue"] = json!(false);
        assert_eq!(pod.invoke("ADD", &conf).code, 0);
        assert_eq!(stats(&pod)["pods"][0]["ingressMode"], "policer");
        for cc in ["cubic", "bbr"] {
            let what = format!("policed download at 10M, {} ms RTT, {cc}", 2 * one_way);
            let r = pod.bed.bulk(&Bulk::tcp(Way::Download, cc, 1, 2, 6)).unwrap();
            // What the policer let through: bulk TCP's full frames. The wire
            // into the pod carries what it dropped as well.
            let delivered = r.transfer.goodput_bps * FRAME_PER_PAYLOAD / 10e6;
            println!(
                "{what}: delivered {delivered:.3} of the limit, {:.1}% of segments resent; the wire into the pod carried {:.3}",
                100.0 * r.transfer.resent_share(1448.0),
                r.wire_bps / 10e6
            );
            // The policer's burst (rate x 250 ms) may be spent inside the
            // measured seconds: up to 250 ms / 6 s above.
            assert!(delivered >= 0.9, "{what}: {delivered:.3} of the limit");
            assert!(delivered <= 1.02 + 0.25 / 6.0, "{what}: {delivered:.3} of the limit");
        }
        pod.del();
    }
}

/// The queue (an ifb in the pod's netns, fed from eth0's tc ingress) and
/// the egress guards (the host veth's ingress, eth0's egress) live and die
/// with the attachment; CHECK fails when any is taken away; another
/// shaper's root qdisc on the host veth is none of ours and stays.
#[test]
fn the_queue_and_the_guards_follow_the_attachment() {
    let pod = Pod::new("ingq-life");
    let conf = pod.config(json!({"kubernetes.io/ingress-bandwidth": "20M", "kubernetes.io/egress-bandwidth": "20M"}));
    assert_eq!(pod.invoke("ADD", &conf).code, 0);
    let ours = |pod: &Pod| {
        let q = queue_on(pod);
        (q.contains("tbf b9a1:") && q.contains("dev brlq"), pod_filters(pod, "ingress").contains("redirect_to_que"), guard_on(pod).contains("guard_pod_egres"), pod_filters(pod, "egress").contains("guard_pod_egres"))
    };
    assert_eq!(ours(&pod), (true, true, true, true), "queue, its feed, host-side and pod-side guards: {}", queue_on(&pod));
    let st = stats(&pod);
    assert_eq!(st["pods"][0]["state"]["flags"].as_u64().unwrap() & 1, 1, "stats shows the queued mode");
    assert!(st["pods"][0]["ingressMode"].as_str().unwrap().ends_with("in the pod's netns"), "{}", st["pods"][0]["ingressMode"]);
    assert_eq!(st["pods"][0]["egressGuard"]["egress"]["rate"], 20_000_000 / 8 + 20_000_000 / 8 / 32);
    assert_eq!(st["pods"][0]["podSideEgressGuard"]["egress"]["rate"], 20_000_000 / 8 + 20_000_000 / 8 / 32);
    assert_eq!(pod.invoke("CHECK", &conf).code, 0);
    // Anything removed behind our back fails CHECK, naming it; a repeated ADD puts it back.
    let ns = |args: &[&str]| assert!(Command::new("ip").args(["netns", "exec", &pod.bed.pod_ns]).args(args).status().unwrap().success(), "{args:?}");
    let take_away: [(&str, Box<dyn Fn()>); 4] = [
        ("ingress queue", Box::new(|| ns(&["ip", "link", "del", &format!("brlq{}", eth0_index(&pod))]))),
        ("filter feeding the ingress queue", Box::new(|| ns(&["tc", "filter", "del", "dev", "eth0", "ingress", "pref", "49104"]))),
        ("egress guard", Box::new(|| assert!(Command::new("tc").args(["filter", "del", "dev", &pod.bed.pod_host_veth, "ingress", "pref", "49101"]).status().unwrap().success()))),
        ("egress guard is missing from the pod's interface", Box::new(|| ns(&["tc", "filter", "del", "dev", "eth0", "egress", "pref", "49103"]))),
    ];
    for (what, take) in take_away {
        take();
        let out = pod.invoke("CHECK", &conf);
        assert_eq!(out.code, 102, "CHECK after removing the {what}: {}", out.stdout);
        assert!(out.stdout.contains(what), "CHECK names the {what}: {}", out.stdout);
        assert_eq!(pod.invoke("ADD", &conf).code, 0);
        assert_eq!(ours(&pod), (true, true, true, true), "a repeated ADD puts back the {what}");
    }
    // GC of an attachment that is not valid removes all of it.
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(pod.invoke("GC", &gc).code, 0);
    assert_eq!(ours(&pod), (false, false, false, false), "GC left some of it: {}", queue_on(&pod));

    // Another shaper's root qdisc on the host veth (the reference bandwidth
    // plugin's) is none of ours: the queue is in the pod's netns, and that
    // qdisc stays through ADD and DEL.
    let st = Command::new("tc")
        .args(["qdisc", "add", "dev", &pod.bed.pod_host_veth, "root", "handle", "1:", "tbf", "rate", "1gbit", "burst", "100k", "limit", "100k"])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(pod.invoke("ADD", &conf).code, 0);
    assert_eq!(ours(&pod).0, true);
    assert_eq!(pod.invoke("CHECK", &conf).code, 0);
    pod.del();
    assert!(host_root_qdisc(&pod).contains("tbf 1:"), "DEL must not remove a qdisc that is not ours");
    assert_eq!(ours(&pod), (false, false, false, false), "DEL left some of it: {}", queue_on(&pod));

    // A failed ADD (the pod's interface is missing in its netns) leaves no
    // queue, no guard and no pins.
    assert!(Command::new("tc").args(["qdisc", "del", "dev", &pod.bed.pod_host_veth, "root"]).status().unwrap().success());
    let out = pod.invoke_if("ADD", &pod.bed.name, "nosuch0", &conf);
    assert_ne!(out.code, 0);
    assert_eq!(ours(&pod), (false, false, false, false), "a failed ADD left some of it: {}", queue_on(&pod));
    assert!(pod.pins().is_empty(), "{:?}", pod.pins());
}

fn eth0_index(pod: &Pod) -> u32 {
    bpf_ratelimit::node::netns::in_netns(&pod.bed.pod_netns_path(), || bpf_ratelimit::node::netns::ifindex("eth0")).unwrap()
}

/// The ACKs of the pod's own upload skip the ingress queue while its bucket
/// is nearly full (queue_bypass): each frame through the ifb costs the node
/// a tasklet and a second trip through the receive path. Counted by the
/// door (`stats`: ingressQueueDoor.queue.marked_*). With a download at the
/// limit beside the upload, the model is in deficit and the ACKs queue
/// again: what the wire carries toward the pod, the download and the
/// upload's ACKs together, still holds the limit.
#[test]
fn acks_of_an_upload_skip_the_queue_and_a_download_beside_it_holds() {
    use bpf_ratelimit::testbed::scenario::SECOND_IPERF_PORT;
    let mut pod = Pod::new("ingack");
    pod.bed.start_server().unwrap();
    pod.bed.start_server_on(SECOND_IPERF_PORT).unwrap();
    pod.add(json!({"kubernetes.io/ingress-bandwidth": "100M", "kubernetes.io/egress-bandwidth": "100M"}));
    let door = |pod: &Pod| -> (u64, u64) {
        let q = &pod.stats()["ingressQueueDoor"]["queue"];
        (q["passed_packets"].as_u64().expect("the door's passed packets"), q["marked_packets"].as_u64().expect("the door's bypassed packets"))
    };

    let (passed0, bypassed0) = door(&pod);
    let upload = pod.bed.bulk(&Bulk::tcp(Way::Upload, "cubic", 1, 1, 3)).unwrap();
    let (passed1, bypassed1) = door(&pod);
    let (frames, skipped) = (passed1 - passed0, bypassed1 - bypassed0);
    println!(
        "a 100M pod's upload alone ({:.3} of its egress limit on the wire): {skipped} of the {frames} frames toward the pod skipped the queue",
        upload.wire_bps / 100e6
    );
    assert!(frames > 200, "the upload's ACKs never reached the door ({frames} frames)");
    assert!(skipped * 10 >= frames * 9, "only {skipped} of {frames} ACKs skipped the queue");

    std::thread::sleep(Duration::from_secs(1));
    let (down, up) = std::thread::scope(|s| {
        let up = s.spawn(|| pod.bed.bulk(&Bulk::tcp(Way::Upload, "cubic", 1, 1, 6).with_args(&["-p", SECOND_IPERF_PORT])));
        std::thread::sleep(Duration::from_millis(500));
        let down = pod.bed.bulk(&Bulk::tcp(Way::Download, "cubic", 1, 2, 4)).unwrap();
        (down, up.join().unwrap().unwrap())
    });
    println!(
        "its download beside its upload: wire toward the pod {:.3} of the ingress limit (the download and the upload's ACKs), {:.2}% resent; the upload {:.3} of the egress limit",
        down.wire_bps / 100e6,
        down.transfer.resent_share(1448.0) * 100.0,
        up.wire_bps / 100e6
    );
    assert!((0.95..=1.02).contains(&(down.wire_bps / 100e6)), "toward the pod: {:.3} of the limit", down.wire_bps / 100e6);
    assert!(down.transfer.resent_share(1448.0) <= 0.05);
    assert!(up.wire_bps / 100e6 >= 0.9, "the upload beside the download: {:.3} of its limit", up.wire_bps / 100e6);
    pod.del();
}

/// Entries in the node's flow table (`queued_flows`, shared by every pod of
/// a pin root), read through its pin.
fn flow_table_entries(pod: &Pod) -> usize {
    let version = std::fs::read_dir(pod.pin_root.join("datapath")).unwrap().flatten().next().expect("a loaded datapath").path();
    let data = aya::maps::MapData::from_pin(version.join("queued_flows")).expect("queued_flows is pinned");
    // struct flow_tuple (40 bytes) -> struct queued_flow (24 bytes).
    let table: aya::maps::HashMap<_, [u8; 40], [u8; 24]> = aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).unwrap();
    table.keys().count()
}

/// The flow table that sorts light flows from bulk ones holds 65,536 flows
/// for the whole node (MAX_QUEUED_FLOWS; 8.4 MB). Past that, the kernel's
/// LRU forgets the flows least recently seen: a bulk flow, seen on every
/// packet, stays, and a flow it forgot is light again when it comes back,
/// as a new flow is. So 100,000 flows into one 100M pod (one UDP datagram
/// each, from the server, over 16 s) beside its download and 16 KB
/// responses: the table fills and stays at its size, the sender proves it
/// sent every one, and the download's wire and the responses keep the
/// bounds they have without the flows.
#[test]
fn a_hundred_thousand_flows_overflow_the_flow_table_and_the_limit_and_responses_hold() {
    let mut pod = Pod::new("flows");
    pod.bed.start_server().unwrap();
    pod.bed.start_rr_server().unwrap();
    let rtt_ms = min_rtt_ms(&pod);
    pod.add(ingress("100M"));
    let before = flow_table_entries(&pod);
    let mut spray = pod.bed.server_command("python3").unwrap();
    spray.args([common::PODLOAD, "flows", bpf_ratelimit::testbed::POD_IP, "100000", "16"]);
    let requests = Requests { gap_ms: 40, within_ms: Some(17_500), ..responses(200) };
    let (lat, control, bulk, sent) = responses_beside_download_and(&pod, spray, Duration::ZERO, &requests, "the flow sprayer");
    let entries = flow_table_entries(&pod);
    let bound = (3.0 * rtt_ms).max(control.p99_ms) + 5.0;
    let what = format!("16 KB responses beside a 100M pod's download and 100,000 other flows into it, {rtt_ms:.2} ms RTT");
    println!(
        "{what}: p50 {:.2} ms, p99 {:.2} ms (bound {bound:.1}) of {} responses, {} failed; from the gateway, no shaper: p99 {:.2} ms; \
         the pod's wire {:.3} of the limit; the sprayer sent {}; the flow table held {before} flows before, {entries} after (size 65536)",
        lat.p50_ms, lat.p99_ms, lat.samples, lat.failed, control.p99_ms, bulk.wire_bps / 100e6, sent["sent"]
    );
    assert_eq!(sent["sent"].as_u64(), Some(100_000), "the sprayer's report: {sent}");
    assert!((60_000..=65_536).contains(&entries), "the flow table holds {entries} flows after 100,000: it did not fill, or outgrew its size");
    assert_eq!(lat.failed, 0, "{what}");
    assert!(lat.samples >= 100, "{what}: only {} responses", lat.samples);
    assert!(lat.p99_ms <= bound, "{what}: p99 {:.2} ms > {bound:.1}", lat.p99_ms);
    assert!((0.95..=1.02).contains(&(bulk.wire_bps / 100e6)), "{what}: the pod received {:.3} of the limit", bulk.wire_bps / 100e6);
    pod.del();
}

/// The mean backlog of the pod's ingress queue (the TBF on its ifb), in
/// bytes, sampled every 50 ms while `during` runs.
fn queue_backlog_while<T: Send>(pod: &Pod, during: impl FnOnce() -> T + Send) -> (f64, usize, T) {
    let ifb = format!("brlq{}", eth0_index(pod));
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples = Vec::new();
            // After the download's slow start and the burst it may spend.
            std::thread::sleep(Duration::from_secs(3));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = Command::new("ip").args(["netns", "exec", &pod.bed.pod_ns, "tc", "-s", "qdisc", "show", "dev", &ifb, "root"]).output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let backlog = text
                    .split_whitespace()
                    .skip_while(|w| *w != "backlog")
                    .nth(1)
                    .and_then(|b| b.strip_suffix('b'))
                    .unwrap_or_else(|| panic!("no backlog in `tc -s qdisc show dev {ifb}`: {text}"));
                let bytes: f64 = match backlog.strip_suffix('K') {
                    Some(k) => k.parse::<f64>().unwrap() * 1024.0,
                    None => backlog.parse().unwrap_or_else(|_| panic!("backlog {backlog:?} in {text}")),
                };
                samples.push(bytes);
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        let out = during();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = sampler.join().unwrap();
        assert!(samples.len() >= 20, "only {} samples of the queue's backlog", samples.len());
        (samples.iter().sum::<f64>() / samples.len() as f64, samples.len(), out)
    })
}

/// `ingressTradeoff: "cpu"` (the busy-node option of issue 25): below 40M
/// the receive windows keep 8 ms of queue instead of 2 ms, so downloads
/// move in fewer, larger skbs. The same 10M download under each, in one
/// run: the default's queue held 2.8-3.7 ms of the rate (2 ms plus the
/// two-segment floor), the option's 7.9-8.3 ms; both keep the limit on the
/// wire. Each is the other's control. The queue and the flag live in the
/// pod's netns and state, so the same holds under an eBPF main CNI.
#[test]
fn the_cpu_tradeoff_keeps_a_deeper_queue_below_40m() {
    cpu_tradeoff_under(None);
    cpu_tradeoff_under(Some(Attach::Tc));
}

fn cpu_tradeoff_under(cni: Option<Attach>) {
    let mut pod = Pod::new("tradeoff");
    if let Some(form) = cni {
        pod.bed.emulate_ebpf_main_cni(form).unwrap();
    }
    pod.bed.start_server().unwrap();
    let under = cni.map_or(String::new(), |f| format!(" under an eBPF main CNI ({f:?})"));
    let mut delays = Vec::new();
    for tradeoff in ["latency", "cpu"] {
        let mut conf = pod.config(ingress("10M"));
        conf["ingressTradeoff"] = json!(tradeoff);
        assert_eq!(pod.invoke("ADD", &conf).code, 0);
        let mode = stats(&pod)["pods"][0]["ingressMode"].as_str().unwrap().to_string();
        assert_eq!(mode.contains("ingressTradeoff: cpu"), tradeoff == "cpu", "stats' ingressMode under {tradeoff}: {mode}");
        assert_eq!(pod.invoke("CHECK", &conf).code, 0);
        let (backlog, samples, bulk) = queue_backlog_while(&pod, || pod.bed.bulk(&Bulk::tcp(Way::Download, "cubic", 1, 3, 5)).unwrap());
        let wire = bulk.wire_bps / 10e6;
        let delay_ms = backlog * 8.0 / 10e6 * 1e3;
        println!("ingressTradeoff {tradeoff}, 10M download{under}: the queue held {backlog:.0} bytes on average ({delay_ms:.1} ms of the rate, {samples} samples); wire {wire:.3} of the limit");
        assert!((0.95..=1.02).contains(&wire), "ingressTradeoff {tradeoff}{under}: the download got {wire:.3} of the limit");
        delays.push(delay_ms);
        assert_eq!(pod.invoke("DEL", &conf).code, 0);
    }
    assert!(delays[0] <= 5.5, "the default (latency) queue{under} held {:.1} ms", delays[0]);
    assert!((6.5..=11.0).contains(&delays[1]), "ingressTradeoff cpu{under}: the queue held {:.1} ms, not about 8", delays[1]);
    assert!(delays[1] - delays[0] >= 3.0, "ingressTradeoff cpu{under} deepened the queue by only {:.1} ms", delays[1] - delays[0]);
}

#[test]
fn an_unknown_ingress_tradeoff_is_a_config_error() {
    let pod = Pod::new("tradeoff-bad");
    let mut conf = pod.config(ingress("10M"));
    conf["ingressTradeoff"] = json!("fast");
    let out = pod.invoke("ADD", &conf);
    assert_ne!(out.code, 0);
    assert!(out.stdout.contains("ingressTradeoff must be"), "{}", out.stdout);
    assert_eq!(pod.invoke("DEL", &conf).code, 0);
}
