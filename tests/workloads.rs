//! The traffic real pods make, through the built binary's ADD against real
//! netns, cgroups and traffic: a sidecar over loopback, light keep-alive
//! connections beside a bulk upload, requests after idle and under load, raw
//! sockets, tiny TCP_NODELAY writes, UDP beside TCP, IPv6, eight flows.
//! Request/response traffic comes from tests/tools/podload.py; bulk flows
//! from iperf3. Wire volumes are read from the server end of the veth.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bpf_ratelimit::testbed::{run_with_timeout, POD_IP, SERVER_IP, SERVER_IP6};
use common::{assert_ratio, Pod};
use serde_json::{json, Value};

const PODLOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/podload.py");
const RR_PORT: &str = "7000";

/// A background process, killed when dropped.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn background(mut cmd: Command) -> Background {
    Background(cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn"))
}

fn json_of(out: std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no JSON: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn shaped_pod(tag: &str, annotations: Value) -> Pod {
    let mut pod = Pod::new(tag);
    pod.bed.start_server().unwrap();
    pod.add(annotations);
    pod
}

/// The request/response server, in the server netns.
fn rr_server(pod: &Pod) -> Background {
    let mut cmd = pod.bed.server_command("python3").unwrap();
    cmd.args([PODLOAD, "serve", RR_PORT]);
    let server = background(cmd);
    std::thread::sleep(Duration::from_millis(400));
    server
}

fn in_pod(pod: &Pod, program: &str, args: &[&str]) -> Command {
    let mut cmd = pod.bed.pod_command(program).unwrap();
    cmd.args(args);
    cmd
}

fn run_json(cmd: Command, timeout_s: u64) -> Value {
    json_of(run_with_timeout(cmd, Duration::from_secs(timeout_s)).expect("command runs"))
}

fn iperf3_bps(v: &Value) -> f64 {
    v["end"]["sum_received"]["bits_per_second"].as_f64().expect("iperf3 sum_received")
}

/// Egress bytes the pod's state counted (passed or dropped), from `stats`.
fn charged_bytes(pod: &Pod) -> u64 {
    let out = Command::new(common::plugin()).arg("stats").arg(&pod.pin_root).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["pods"][0]["state"];
    ["egress", "ingress"]
        .iter()
        .map(|d| s[d]["passed_bytes"].as_u64().unwrap() + s[d]["dropped_bytes"].as_u64().unwrap())
        .sum()
}

#[test]
fn sidecar_traffic_over_loopback_is_neither_shaped_nor_charged() {
    let pod = shaped_pod("sidecar", json!({"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "10M"}));
    for addr in ["127.0.0.1", POD_IP] {
        let _server = background(in_pod(&pod, "iperf3", &["-s", "-p", "5301", "-B", addr]));
        std::thread::sleep(Duration::from_millis(300));
        let before = charged_bytes(&pod);
        let v = run_json(in_pod(&pod, "iperf3", &["-c", addr, "-p", "5301", "-J", "-t", "2"]), 20);
        let bps = iperf3_bps(&v);
        let charged = charged_bytes(&pod) - before;
        println!("app <-> sidecar over {addr} in a 10M pod: {:.2} Gbit/s, {charged} bytes charged", bps / 1e9);
        // A 10M pod's windows or pacing would hold it far below this.
        assert!(bps >= 5e9, "loopback traffic over {addr} is shaped: {bps} bit/s");
        assert!(charged < 100_000, "loopback traffic over {addr} was charged {charged} bytes");
    }
    pod.del();
}

#[test]
fn bulk_upload_beside_light_connections_gets_what_they_leave() {
    let pod = shaped_pod("light", json!({"kubernetes.io/egress-bandwidth": "100M"}));
    let _rr = rr_server(&pod);
    // 20 keep-alive connections at 16 kbit/s each.
    let light = background(in_pod(&pod, "python3", &[PODLOAD, "light", SERVER_IP, RR_PORT, "20", "16000", "9"]));
    std::thread::sleep(Duration::from_secs(1));
    let v = run_json(in_pod(&pod, "iperf3", &["-c", SERVER_IP, "-J", "-t", "6", "-O", "1"]), 30);
    let bulk = iperf3_bps(&v);
    drop(light);
    let left = 100e6 - 20.0 * 16e3;
    assert_ratio("bulk upload beside 20 light connections, of what they leave", bulk, left, 0.95, 1.02);
    pod.del();
}

#[test]
fn eight_equal_flows_share_the_rate() {
    let pod = shaped_pod("eight", json!({"kubernetes.io/egress-bandwidth": "100M"}));
    let mut last = 0.0;
    for _ in 0..2 {
        let v = run_json(in_pod(&pod, "iperf3", &["-c", SERVER_IP, "-J", "-t", "6", "-O", "1", "-P", "8"]), 30);
        last = iperf3_bps(&v);
        if (0.97..=1.02).contains(&(last / 100e6)) {
            break;
        }
    }
    assert_ratio("8 TCP flows at 100M egress", last, 100e6, 0.97, 1.02);
    pod.del();
}

#[test]
fn an_idle_pod_sends_a_request_within_its_burst_at_full_speed() {
    let pod = shaped_pod("idle", json!({"kubernetes.io/egress-bandwidth": "10M"}));
    let _rr = rr_server(&pod);
    // 16 KB every 300 ms: the bucket (128 KiB) refills between requests.
    let v = run_json(in_pod(&pod, "python3", &[PODLOAD, "requests", SERVER_IP, RR_PORT, "16384", "20", "300"]), 30);
    println!("16 KB requests from an idle 10M pod: {v}");
    assert_eq!(v["failed"], 0);
    // Paced from the first byte they took 13 ms at 10M.
    let p50 = v["p50_ms"].as_f64().unwrap();
    assert!(p50 <= 2.0, "p50 {p50} ms: the burst is not honoured");
    pod.del();
}

#[test]
fn requests_beside_the_pods_own_upload_stay_fast_and_the_first_second_keeps_to_the_burst() {
    let pod = shaped_pod("loaded", json!({"kubernetes.io/egress-bandwidth": "10M"}));
    let _rr = rr_server(&pod);
    let rx0 = pod.bed.server_rx_bytes().unwrap();
    let started = Instant::now();
    let bulk = background(in_pod(&pod, "iperf3", &["-c", SERVER_IP, "-J", "-t", "7"]));
    std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    let first_second = pod.bed.server_rx_bytes().unwrap() - rx0;
    let elapsed = started.elapsed().as_secs_f64();
    // rate x t + burst (128 KiB), with 5% for headers and timing.
    let bound = 10e6 / 8.0 * elapsed * 1.05 + 131072.0;
    println!("first {elapsed:.2} s of a fresh 10M upload: {first_second} bytes on the wire (bound {bound:.0})");
    assert!((first_second as f64) <= bound, "first second {first_second} bytes > rate x 1 s + burst");
    std::thread::sleep(Duration::from_millis(500));
    let v = run_json(in_pod(&pod, "python3", &[PODLOAD, "requests", SERVER_IP, RR_PORT, "16384", "30", "100"]), 40);
    println!("16 KB requests beside the pod's own 10M upload: {v}");
    drop(bulk);
    assert_eq!(v["failed"], 0);
    let p99 = v["p99_ms"].as_f64().unwrap();
    assert!(p99 <= 40.0, "p99 {p99} ms beside the pod's own upload");
    pod.del();
}

#[test]
fn raw_sockets_cannot_bypass_the_limit() {
    let run_raw = |pod: &Pod| {
        let rx0 = pod.bed.server_rx_bytes().unwrap();
        let v = run_json(in_pod(pod, "python3", &[PODLOAD, "raw", "eth0", "2000", "1000"]), 30);
        std::thread::sleep(Duration::from_millis(200));
        (v, pod.bed.server_rx_bytes().unwrap() - rx0)
    };
    let pod = shaped_pod("raw", json!({"kubernetes.io/egress-bandwidth": "10M"}));
    let (v, wire) = run_raw(&pod);
    println!("AF_PACKET from a 10M pod: {v}, {wire} bytes on the wire");
    assert_eq!(v["qdisc_bypass"], "EPERM", "PACKET_QDISC_BYPASS must be refused");
    assert_eq!(v["errors"]["ENOBUFS"], 2000, "every raw frame is refused at send");
    assert!(wire < 20_000, "{wire} bytes of raw frames reached the wire");
    pod.del();

    // allowRawSockets: the operator's trade-off, and proof the test can fail.
    let mut pod = Pod::new("rawok");
    pod.bed.start_server().unwrap();
    let mut conf = pod.config(json!({"kubernetes.io/egress-bandwidth": "10M"}));
    conf["allowRawSockets"] = json!(true);
    let out = pod.invoke("ADD", &conf);
    assert_eq!(out.code, 0, "{}", out.stdout);
    let (v, wire) = run_raw(&pod);
    assert_eq!(v["qdisc_bypass"], "allowed");
    assert!(wire >= 1_000_000, "with allowRawSockets raw frames pass: {wire} bytes");
    pod.del();
}

#[test]
fn tiny_nodelay_writes_and_udp_beside_tcp_keep_the_wire_to_the_limit() {
    let pod = shaped_pod("wire", json!({"kubernetes.io/egress-bandwidth": "10M"}));
    let _udp_server = background({
        let mut c = pod.bed.server_command("iperf3").unwrap();
        c.args(["-s", "-p", "5202"]);
        c
    });
    std::thread::sleep(Duration::from_millis(300));
    let wire_ratio = |runs: Vec<Command>, seconds: f64| {
        let rx0 = pod.bed.server_rx_bytes().unwrap();
        let started = Instant::now();
        let children: Vec<_> = runs.into_iter().map(background).collect();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let bytes = pod.bed.server_rx_bytes().unwrap() - rx0;
        let t = started.elapsed().as_secs_f64();
        drop(children);
        // Less the burst an idle pod may send at once.
        (bytes as f64 - 131072.0) * 8.0 / t / 10e6
    };
    let nodelay = wire_ratio(vec![in_pod(&pod, "iperf3", &["-c", SERVER_IP, "-t", "8", "-N", "-l", "64"])], 5.0);
    println!("64-byte TCP_NODELAY writes at 10M: wire {nodelay:.3} of the limit");
    assert!(nodelay <= 1.05 && nodelay >= 0.8, "64-byte writes: wire {nodelay:.3} of the limit");
    std::thread::sleep(Duration::from_secs(1));
    let mixed = wire_ratio(
        vec![
            in_pod(&pod, "iperf3", &["-c", SERVER_IP, "-t", "8"]),
            in_pod(&pod, "iperf3", &["-c", SERVER_IP, "-p", "5202", "-u", "-b", "6M", "-t", "8"]),
        ],
        5.0,
    );
    println!("TCP bulk + 6M UDP at 10M: wire {mixed:.3} of the limit");
    assert!(mixed <= 1.05 && mixed >= 0.9, "TCP + UDP: wire {mixed:.3} of the limit");
    pod.del();
}

#[test]
fn ipv6_tcp_is_shaped_both_ways() {
    let pod = shaped_pod("ipv6", json!({"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "10M"}));
    let _server6 = background({
        let mut c = pod.bed.server_command("iperf3").unwrap();
        c.args(["-s", "-p", "5203", "-B", SERVER_IP6]);
        c
    });
    std::thread::sleep(Duration::from_millis(500));
    for (what, reverse) in [("egress", false), ("ingress", true)] {
        let mut last = 0.0;
        for _ in 0..2 {
            let mut args = vec!["-6", "-c", SERVER_IP6, "-p", "5203", "-J", "-t", "11", "-O", "1"];
            if reverse {
                args.push("-R");
            }
            last = iperf3_bps(&run_json(in_pod(&pod, "iperf3", &args), 40));
            if (0.97..=1.02).contains(&(last / 10e6)) {
                break;
            }
        }
        assert_ratio(&format!("IPv6 {what} TCP at 10M"), last, 10e6, 0.97, 1.02);
    }
    pod.del();
}
