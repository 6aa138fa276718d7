//! The traffic real pods make, through the built binary's ADD against real
//! netns, cgroups and traffic: a sidecar over loopback, light keep-alive
//! connections beside a bulk upload, requests after idle and beside the
//! pod's own upload, UDP beside TCP, IPv6, eight flows. Request/response
//! traffic comes from tests/tools/podload.py, bulk flows from iperf3; rates
//! are measured on the wire (tests/wire.rs has the hostile traffic). Each
//! check that a broken shaper could pass comes with a control that fails
//! it, or with the bulk flow's own band asserted in the same run.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bpf_ratelimit::testbed::measure::jain;
use bpf_ratelimit::testbed::scenario::{Bulk, Requests, Way};
use bpf_ratelimit::testbed::{POD_IP, SERVER_IP};
use common::{assert_bulk, assert_first_second, in_pod, FirstSecond, Pod, PODLOAD};
use serde_json::{json, Value};

const RR_PORT: &str = "7000";

fn shaped_pod(tag: &str, annotations: Value) -> Pod {
    let mut pod = Pod::new(tag);
    pod.bed.start_server().unwrap();
    pod.bed.start_rr_server().unwrap();
    pod.add(annotations);
    pod
}

/// Bytes the pod's state charged (passed or dropped), both directions, from `stats`.
fn charged_bytes(pod: &Pod) -> u64 {
    let out = Command::new(common::plugin()).arg("stats").arg(&pod.pin_root).output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["pods"][0]["state"];
    ["egress", "ingress"]
        .iter()
        .map(|d| s[d]["passed_bytes"].as_u64().expect("passed_bytes") + s[d]["dropped_bytes"].as_u64().expect("dropped_bytes"))
        .sum()
}

/// iperf3 between two processes of the pod over `addr` (the testbed's
/// sidecar scenario), 1 s: bits/s.
fn loopback_bps(pod: &Pod, addr: &str) -> f64 {
    pod.bed.sidecar(addr, 1).expect("sidecar traffic")
}

/// Loopback is CPU-bound: on a shared 2-vCPU VM one run moves by up to 30%
/// with what else the host runs (13.2 to 21.7 Gbit/s, unshaped, in past
/// suite runs), and CI once measured the shaped pod under 0.8 of a control
/// taken a few seconds earlier. So the shaped and unshaped runs alternate
/// (ADD, measure, DEL, measure, five rounds), and the best of each is
/// compared: the same noise falls on both. A shaped loopback would carry
/// 10M, under a thousandth of this; 0.8 also catches a per-packet cost.
#[test]
fn sidecar_traffic_over_loopback_is_neither_shaped_nor_charged() {
    let mut pod = Pod::new("sidecar");
    pod.bed.start_server().unwrap();
    let addrs = ["127.0.0.1", POD_IP];
    let (mut unshaped, mut shaped, mut charged) = ([vec![], vec![]], [vec![], vec![]], [0u64; 2]);
    for _ in 0..5 {
        for (i, addr) in addrs.iter().enumerate() {
            unshaped[i].push(loopback_bps(&pod, addr) / 1e9);
        }
        pod.add(json!({"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "10M"}));
        for (i, addr) in addrs.iter().enumerate() {
            let charged0 = charged_bytes(&pod);
            shaped[i].push(loopback_bps(&pod, addr) / 1e9);
            let after = charged_bytes(&pod);
            assert!(after >= charged0, "the pod's charged bytes went down: {charged0} then {after}");
            charged[i] = charged[i].max(after - charged0);
        }
        pod.del();
    }
    let best = |runs: &[f64]| runs.iter().cloned().fold(0.0, f64::max);
    for (i, addr) in addrs.iter().enumerate() {
        let (bps, before, charged) = (best(&shaped[i]), best(&unshaped[i]), charged[i]);
        println!(
            "app <-> sidecar over {addr} in a 10M pod: {bps:.2} Gbit/s, {before:.2} unshaped (best of {:.2?} and {:.2?}); at most {charged} bytes charged in a run",
            shaped[i], unshaped[i]
        );
        assert!(bps >= 0.8 * before, "loopback over {addr} is slowed: {bps:.2} Gbit/s, {before:.2} unshaped (runs: {:.2?} shaped, {:.2?} unshaped)", shaped[i], unshaped[i]);
        assert!(charged < 100_000, "loopback traffic over {addr} was charged {charged} bytes");
    }
}

/// Runs `cmd` to its end in a thread; its JSON report (exit 0 required)
/// when joined.
fn reported(cmd: std::process::Command) -> std::thread::JoinHandle<Value> {
    std::thread::spawn(move || {
        let shown = format!("{cmd:?}");
        let out = bpf_ratelimit::testbed::run_with_timeout(cmd, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
        let report = bpf_ratelimit::testbed::scenario::SenderReport {
            command: shown,
            exit: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_eq!(report.exit, Some(0), "{report:?}");
        report.json().unwrap_or_else(|| panic!("no JSON report: {report:?}"))
    })
}

#[test]
fn bulk_upload_beside_light_connections_gets_what_they_leave() {
    let pod = shaped_pod("light", json!({"kubernetes.io/egress-bandwidth": "100M"}));
    // 20 keep-alive connections at 16 kbit/s of payload each, for longer
    // than the bulk upload (1 s before it, 2 + 5 s of it and its set-up).
    let light = reported(in_pod(&pod, "python3", &[PODLOAD, "light", SERVER_IP, RR_PORT, "20", "16000", "10"]));
    std::thread::sleep(Duration::from_secs(1));
    let r = assert_bulk(&pod, &Bulk::tcp(Way::Upload, "cubic", 1, 2, 5), 100e6, (0.95, 1.02), "the pod's wire beside 20 light connections, 100M");
    // The other side: the light connections got what they asked for, in
    // time (a round is 20 requests of 200 bytes and their answers).
    let light = light.join().unwrap();
    let (sent, asked) = (light["bytes_sent"].as_f64().unwrap(), light["asked_bytes"].as_f64().unwrap());
    let (p50, p99) = (light["round_p50_ms"].as_f64().unwrap(), light["round_p99_ms"].as_f64().unwrap());
    println!("20 light connections beside it: {:.3} of what they asked sent; a round's p50 {p50:.2} ms, p99 {p99:.2} ms", sent / asked);
    assert!(sent >= 0.95 * asked, "the light connections sent {:.3} of what they asked", sent / asked);
    assert!(p99 <= 20.0, "a round of the light connections took {p99:.2} ms (p99) beside the bulk upload");
    // The light connections' frames (a 200-byte request and its ACK ten
    // times a second each) are at most 20 x 10 x 2 x 266 bytes/s on the wire.
    let light_wire = 20.0 * 10.0 * 2.0 * 266.0 * 8.0;
    let bulk_wire = r.transfer.goodput_bps * bpf_ratelimit::testbed::measure::FRAME_PER_PAYLOAD;
    println!("the bulk upload: {:.3} of what the light connections leave", bulk_wire / (100e6 - light_wire));
    assert!(bulk_wire >= 0.95 * (100e6 - light_wire), "the bulk upload got {:.3} of what they leave", bulk_wire / (100e6 - light_wire));
}

#[test]
fn eight_equal_flows_share_the_rate_fairly() {
    let pod = shaped_pod("eight", json!({"kubernetes.io/egress-bandwidth": "100M"}));
    let r = assert_bulk(&pod, &Bulk::tcp(Way::Upload, "cubic", 8, 2, 5), 100e6, (0.97, 1.02), "8 TCP flows at 100M egress");
    let fairness = jain(&r.transfer.streams_bps);
    println!("8 flows: Jain's index {fairness:.3} over {:?}", r.transfer.streams_bps);
    assert!(fairness >= 0.9, "Jain's index {fairness:.3}");
    pod.del();
}

/// 16 KB requests every 300 ms from an idle 10M pod leave within its burst,
/// at full speed; the same pod with a 2 kB burst (one full frame) is held
/// back: the check can fail. Not paced at 13 ms a request, though: a 16 KB
/// skb is larger than that burst, so it leaves debt, the next is refused,
/// and TCP waits for its retransmission timer (p50 ~680 ms here). A burst
/// below one GSO skb costs TCP that much (docs/configuration.md).
#[test]
fn an_idle_pod_sends_a_request_within_its_burst_at_full_speed() {
    let mut pod = Pod::new("idle");
    pod.bed.start_server().unwrap();
    pod.bed.start_rr_server().unwrap();
    let requests = Requests::keepalive_uploads(20, 300);
    let unshaped = pod.bed.requests(&requests).unwrap();
    pod.add(json!({"kubernetes.io/egress-bandwidth": "10M"}));
    let shaped = pod.bed.requests(&requests).unwrap();
    println!("16 KB requests from an idle 10M pod: p50 {:.2} ms, unshaped {:.2} ms", shaped.p50_ms, unshaped.p50_ms);
    assert_eq!(shaped.failed, 0);
    assert!(shaped.p50_ms <= unshaped.p50_ms + 1.0, "p50 {:.2} ms: the burst is not honoured", shaped.p50_ms);
    pod.add(json!({"kubernetes.io/egress-bandwidth": "10M", "bpf-ratelimit.io/egress-burst": "16000"}));
    let paced = pod.bed.requests(&Requests { count: 10, ..requests }).unwrap();
    println!("the same with a 2 kB burst: p50 {:.2} ms", paced.p50_ms);
    assert!(paced.p50_ms >= unshaped.p50_ms + 8.0, "a 2 kB burst should pace a 16 KB request: p50 {:.2} ms", paced.p50_ms);
    pod.del();
}

/// Beside the pod's own 10M upload, its 16 KB requests stay fast, the
/// upload holds its band in the same run, and the first second of a fresh
/// upload is the burst and a second of the rate: at most, and at least 0.9.
/// Both bounds are seen to fail in the same run: the first second of an
/// upload with no limit is many times the bound, and with a 1-packet burst
/// it is less than 0.9 of it.
#[test]
fn requests_beside_the_pods_own_upload_stay_fast_and_the_first_second_keeps_to_the_burst() {
    let pod = shaped_pod("loaded", json!({}));
    // rate x 1 s + the default burst (128 KiB), on the wire.
    let bound = 10e6 / 8.0 + 131_072.0;
    assert_first_second(&pod, Way::Upload, bound, FirstSecond::Unlimited, "an upload with no limit");
    std::thread::sleep(Duration::from_secs(1));
    pod.add(json!({"kubernetes.io/egress-bandwidth": "10M"}));
    std::thread::sleep(Duration::from_millis(500));
    assert_first_second(&pod, Way::Upload, bound, FirstSecond::WithTheBurst, "a fresh 10M upload");
    std::thread::sleep(Duration::from_secs(1));
    // A 1-packet burst (2 kB: one full frame), the same rate.
    pod.add(json!({"kubernetes.io/egress-bandwidth": "10M", "bpf-ratelimit.io/egress-burst": "16000"}));
    std::thread::sleep(Duration::from_millis(500));
    assert_first_second(&pod, Way::Upload, bound, FirstSecond::OnePacketBurst, "the same with a 1-packet burst");
    pod.add(json!({"kubernetes.io/egress-bandwidth": "10M"}));
    std::thread::sleep(Duration::from_secs(1));
    let upload = Bulk::tcp(Way::Upload, "cubic", 1, 2, 6);
    let (lat, bulk) = pod.bed.requests_beside(&upload, &Requests::keepalive_uploads(30, 150)).unwrap();
    println!("16 KB requests beside the pod's own 10M upload: p50 {:.2} ms, p99 {:.2} ms, {} failed; the pod's wire {:.3} of the limit",
             lat.p50_ms, lat.p99_ms, lat.failed, bulk.wire_bps / 10e6);
    assert_eq!(lat.failed, 0);
    assert!(lat.p99_ms <= 40.0, "p99 {} ms beside the pod's own upload", lat.p99_ms);
    assert!((0.95..=1.02).contains(&(bulk.wire_bps / 10e6)), "the pod sent {:.3} of its limit", bulk.wire_bps / 10e6);
    assert!(bulk.transfer.goodput_bps / 10e6 >= 0.75, "the upload's goodput {:.3} of the limit", bulk.transfer.goodput_bps / 10e6);
    pod.del();
}

#[test]
fn udp_beside_tcp_keeps_the_wire_to_the_limit() {
    let pod = shaped_pod("mixed", json!({"kubernetes.io/egress-bandwidth": "10M"}));
    // A one-off server whose own report (-J) says what it received, per second.
    let udp_server = {
        let mut c = pod.bed.server_command("iperf3").unwrap();
        c.args(["-s", "-1", "-J", "-p", "5202"]);
        reported(c)
    };
    std::thread::sleep(Duration::from_millis(300));
    let udp = reported(in_pod(&pod, "iperf3", &["-J", "-c", SERVER_IP, "-p", "5202", "-u", "-b", "6M", "-t", "10"]));
    let r = assert_bulk(&pod, &Bulk::tcp(Way::Upload, "cubic", 1, 2, 5), 10e6, (0.95, 1.02), "TCP bulk + 6M UDP from a 10M pod");
    println!("  of which TCP goodput {:.3} of the limit", r.transfer.goodput_bps / 10e6);
    assert!(r.transfer.goodput_bps >= 0.5e6, "UDP starved TCP: {:.0} bit/s", r.transfer.goodput_bps);
    // The UDP side: it offered its 6M all along, and while the TCP upload
    // ran (UDP's seconds 2-6) the server received a share of the limit:
    // TCP must not starve UDP either.
    let offered = udp.join().unwrap()["end"]["sum"]["bits_per_second"].as_f64().unwrap();
    let received: Vec<f64> = udp_server.join().unwrap()["intervals"].as_array().unwrap().iter().map(|i| i["sum"]["bits_per_second"].as_f64().unwrap()).collect();
    let beside_tcp = bpf_ratelimit::testbed::measure::percentile(&received[2..7.min(received.len())], 50.0);
    println!("  UDP: offered {:.2} Mbit/s; received per second {:?} Mbit/s; median while TCP ran {:.2}", offered / 1e6, received.iter().map(|b| (b / 1e5).round() / 10.0).collect::<Vec<_>>(), beside_tcp / 1e6);
    assert!(offered >= 0.95 * 6e6, "the UDP sender offered only {:.2} Mbit/s", offered / 1e6);
    // Both are counted senders, so each gets about half (0.48 of the limit
    // each here); before UDP sockets were counted, UDP got 0.0 while TCP
    // took it all.
    assert!(beside_tcp >= 0.35 * 10e6, "TCP starved UDP: {:.2} Mbit/s received while the TCP upload ran", beside_tcp / 1e6);
    assert!(r.transfer.goodput_bps >= 0.35 * 10e6, "UDP starved TCP: {:.3} of the limit", r.transfer.goodput_bps / 10e6);
    pod.del();
}

/// A light UDP flow beside the pod's own upload (64-byte datagrams every
/// 20 ms to an echo server, as DNS or a heartbeat makes) is answered as on
/// an idle pod, and the upload still holds the limit on the wire. Paced TCP
/// keeps the egress bucket near empty; before light UDP could borrow from
/// it as light TCP does, 38 of 75 such queries were answered (the rest
/// dropped; each lost one waits out its 200 ms timeout).
#[test]
fn light_udp_beside_the_pods_own_upload_is_answered() {
    let pod = shaped_pod("udplight", json!({"kubernetes.io/egress-bandwidth": "10M"}));
    let _echo = {
        let mut c = pod.bed.server_command("python3").unwrap();
        c.args([PODLOAD, "udpecho", "7777"]);
        common::background(c)
    };
    std::thread::sleep(Duration::from_millis(300));
    let queries = reported(in_pod(&pod, "python3", &[PODLOAD, "udpping", SERVER_IP, "7777", "8"]));
    let r = assert_bulk(&pod, &Bulk::tcp(Way::Upload, "cubic", 1, 2, 5), 10e6, (0.95, 1.02), "TCP upload beside light UDP from a 10M pod");
    let q = queries.join().unwrap();
    let (sent, answered) = (q["sent"].as_u64().unwrap(), q["answered"].as_u64().unwrap());
    let p99 = q["p99_ms"].as_f64().unwrap_or(f64::INFINITY);
    println!("  64-byte UDP queries every 20 ms beside it: {answered} of {sent} answered, p50 {:.2} ms, p99 {p99:.2} ms; the upload's goodput {:.3} of the limit",
             q["p50_ms"].as_f64().unwrap_or(f64::NAN), r.transfer.goodput_bps / 10e6);
    assert!(sent >= 300, "the queries did not run: {q}");
    assert!(answered * 100 >= sent * 99, "{answered} of {sent} UDP queries answered beside the upload");
    assert!(p99 <= 20.0, "UDP queries beside the upload: p99 {p99:.2} ms");
    pod.del();
}

#[test]
fn ipv6_tcp_is_shaped_both_ways() {
    let pod = shaped_pod("ipv6", json!({"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "10M"}));
    for way in [Way::Upload, Way::Download] {
        let started = Instant::now();
        assert_bulk(&pod, &Bulk::tcp(way, "cubic", 1, 2, 6).over_ipv6(), 10e6, (0.97, 1.02), &format!("IPv6 TCP {} at 10M", way.name()));
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    pod.del();
}
