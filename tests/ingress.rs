//! Ingress without retransmission storms: the pod's ingress queued on the
//! host side of its veth, with receive windows clamped so that senders stay
//! inside the queue. Real TCP from senders in another netns (never the host
//! namespace, where TCP Small Queues would hide drops), with CUBIC and BBR,
//! 1 and 8 flows, at 10M, 100M and 1G; the retransmitted share of segments,
//! request latency under load, idle latency and UDP are asserted, and the
//! queue's whole life: ADD, CHECK, DEL, GC, a failed ADD, and the fallback to
//! the policer where the interface is taken.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use bpf_ratelimit::testbed::{run_with_timeout, SERVER_IP};
use common::{assert_ratio, Pod};
use serde_json::{json, Value};

const PODLOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/podload.py");

fn ingress(rate: &str) -> Value {
    json!({"kubernetes.io/ingress-bandwidth": rate})
}

fn queue_on(pod: &Pod) -> String {
    let out = Command::new("tc").args(["qdisc", "show", "dev", &pod.bed.pod_host_veth, "root"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stats(pod: &Pod) -> Value {
    let out = Command::new(common::plugin()).arg("stats").arg(&pod.pin_root).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One iperf3 download into the pod: (goodput bit/s, share of segments resent).
fn download(pod: &Pod, cc: &str, flows: u32, seconds: u32) -> (f64, f64) {
    let p = flows.to_string();
    let v = pod.bed.iperf3(&["-R", "-O", "1", "-P", &p, "-C", cc], seconds + 1).expect("iperf3");
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"].as_f64().unwrap();
    let resent = end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0);
    let segments = end["sum_sent"]["bytes"].as_f64().unwrap() / 1448.0;
    (bps, resent / segments)
}

fn matrix(rate: &str, bits: f64) {
    let mut pod = Pod::new("ingq");
    pod.bed.start_server().unwrap();
    pod.add(ingress(rate));
    assert!(queue_on(&pod).contains("tbf b9a1:"), "no ingress queue: {}", queue_on(&pod));
    for cc in ["cubic", "bbr"] {
        for flows in [1, 8] {
            let what = format!("ingress {rate}, {cc}, {flows} flow(s)");
            // Up to three tries: at 1G, two cores carry the sender, the
            // receiver and the queue, and anything else running starves one.
            let mut last = (0.0, 1.0);
            for _ in 0..3 {
                last = download(&pod, cc, flows, 5);
                if (0.97..=1.02).contains(&(last.0 / bits)) && last.1 <= 0.05 {
                    break;
                }
                println!("{what}: {:.3} of the rate, {:.2}% resent; retrying", last.0 / bits, last.1 * 100.0);
            }
            println!("{what}: {:.2}% of segments resent", last.1 * 100.0);
            assert_ratio(&what, last.0, bits, 0.97, 1.02);
            assert!(last.1 <= 0.05, "{what}: {:.2}% of segments resent", last.1 * 100.0);
        }
    }
    pod.del();
    assert!(!queue_on(&pod).contains("b9a1:"), "DEL left the queue: {}", queue_on(&pod));
}

#[test]
fn ingress_at_10m_keeps_the_rate_without_resending() {
    matrix("10M", 10e6);
}

#[test]
fn ingress_at_100m_keeps_the_rate_without_resending() {
    matrix("100M", 100e6);
}

#[test]
fn ingress_at_1g_keeps_the_rate_without_resending() {
    matrix("1G", 1e9);
}

#[test]
fn responses_beside_a_download_are_fast_idle_adds_nothing_and_udp_is_held() {
    let mut pod = Pod::new("ingrr");
    pod.bed.start_server().unwrap();
    // Idle round trip before and after shaping: the queue is empty at idle.
    let ping = |pod: &Pod| -> f64 {
        let mut c = pod.bed.pod_command("ping").unwrap();
        c.args(["-n", "-q", "-c", "20", "-i", "0.02", SERVER_IP]);
        let out = run_with_timeout(c, Duration::from_secs(10)).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // rtt min/avg/max/mdev = a/b/c/d ms
        text.split(" = ").nth(1).and_then(|t| t.split('/').nth(1)).and_then(|a| a.parse().ok()).expect("ping avg")
    };
    let idle_before = ping(&pod);
    pod.add(json!({"kubernetes.io/ingress-bandwidth": "10M"}));
    let idle_after = ping(&pod);
    println!("idle RTT: {idle_before:.3} ms unshaped, {idle_after:.3} ms with the queue");
    assert!(idle_after <= idle_before + 0.5, "the idle pod's RTT rose from {idle_before} to {idle_after} ms");

    let mut server = pod.bed.server_command("python3").unwrap();
    server.args([PODLOAD, "serve", "7000"]).stdout(Stdio::null()).stderr(Stdio::null());
    let mut server = server.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let mut download = pod.bed.pod_command("iperf3").unwrap();
    download.args(["-c", SERVER_IP, "-R", "-t", "9"]).stdout(Stdio::null());
    let mut download = download.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let mut requests = pod.bed.pod_command("python3").unwrap();
    requests.args([PODLOAD, "requests", SERVER_IP, "7000", "100", "40", "100", "16384"]);
    let out = run_with_timeout(requests, Duration::from_secs(40)).unwrap();
    let _ = download.wait();
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout).expect("requests JSON");
    println!("16 KB responses beside the pod's own 10M download: {v}");
    assert_eq!(v["failed"], 0);
    let p99 = v["p99_ms"].as_f64().unwrap();
    assert!(p99 <= 30.0, "16 KB responses p99 {p99} ms beside a download");

    // UDP offered at twice the limit is delivered at no more than the limit.
    std::thread::sleep(Duration::from_secs(1));
    let v = pod.bed.iperf3(&["-R", "-u", "-b", "20M", "-O", "1"], 5).unwrap();
    let delivered = v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap();
    assert_ratio("UDP at 2x the 10M ingress limit, delivered", delivered, 10e6, 0.8, 1.03);
    pod.del();
}

#[test]
fn the_queue_follows_the_attachment_and_a_taken_interface_falls_back_to_the_policer() {
    let pod = Pod::new("ingq-life");
    // CHECK sees the queue; a queue removed behind our back fails CHECK.
    let conf = pod.config(ingress("20M"));
    assert_eq!(pod.invoke("ADD", &conf).code, 0);
    assert!(queue_on(&pod).contains("tbf b9a1:"), "{}", queue_on(&pod));
    assert_eq!(stats(&pod)["pods"][0]["state"]["flags"], 1, "stats shows the queued mode");
    assert_eq!(stats(&pod)["pods"][0]["ingressMode"], format!("queue on {}", pod.bed.pod_host_veth));
    assert_eq!(pod.invoke("CHECK", &conf).code, 0);
    let st = Command::new("tc").args(["qdisc", "del", "dev", &pod.bed.pod_host_veth, "root"]).status().unwrap();
    assert!(st.success());
    let out = pod.invoke("CHECK", &conf);
    assert_eq!(out.code, 102, "{}", out.stdout);
    assert!(out.stdout.contains("ingress queue"), "{}", out.stdout);
    // A repeated ADD puts it back; GC of an attachment that is not valid removes it.
    assert_eq!(pod.invoke("ADD", &conf).code, 0);
    assert!(queue_on(&pod).contains("b9a1:"));
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(pod.invoke("GC", &gc).code, 0);
    assert!(!queue_on(&pod).contains("b9a1:"), "GC left the queue: {}", queue_on(&pod));

    // An interface that already has a root qdisc (another shaper, such as
    // the reference bandwidth plugin) is left alone: the policer enforces.
    let st = Command::new("tc")
        .args(["qdisc", "add", "dev", &pod.bed.pod_host_veth, "root", "handle", "1:", "tbf", "rate", "1gbit", "burst", "100k", "limit", "100k"])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(pod.invoke("ADD", &conf).code, 0);
    assert_eq!(stats(&pod)["pods"][0]["state"]["flags"], 0, "policer, not queue");
    assert_eq!(stats(&pod)["pods"][0]["ingressMode"], "policer");
    assert!(queue_on(&pod).contains("tbf 1:"), "someone else's qdisc is untouched: {}", queue_on(&pod));
    assert_eq!(pod.invoke("CHECK", &conf).code, 0);
    pod.del();
    assert!(queue_on(&pod).contains("tbf 1:"), "DEL must not remove a qdisc that is not ours");

    // A failed ADD (the pod's interface is missing in its netns) leaves no queue.
    let st = Command::new("tc").args(["qdisc", "del", "dev", &pod.bed.pod_host_veth, "root"]).status().unwrap();
    assert!(st.success());
    let out = add_with_ifname(&pod, &conf, "nosuch0");
    assert_ne!(out, 0);
    assert!(!queue_on(&pod).contains("b9a1:"), "a failed ADD left the queue: {}", queue_on(&pod));
    assert!(pod.pins().is_empty(), "{:?}", pod.pins());
}

fn add_with_ifname(pod: &Pod, conf: &Value, ifname: &str) -> i32 {
    let out = bpf_ratelimit::testbed::Invocation {
        plugin: &common::plugin(),
        command: "ADD",
        container_id: &pod.bed.name,
        ifname,
        netns: &pod.bed.pod_netns_path(),
        cni_args: "IgnoreUnknown=1",
        config: conf,
    }
    .run()
    .unwrap();
    out.code
}
