//! An egress limit no pod can exceed, counted the way the wire counts it:
//! every frame with its Ethernet, IP and L4 headers, per segment. Each
//! traffic shape a pod can make is sent flat out from a 10M pod, and what
//! reached the far end of the path (the delay line counts every segment on
//! its own) is held to 1.05 x the limit once the burst is spent: GSO with
//! tiny segments, tiny MSS, raw IP sockets, tiny writes, a sub-interface the
//! pod made, AF_PACKET, AF_XDP, a compat-syscall PACKET_QDISC_BYPASS, IPv6
//! with extension headers, ICMP floods both ways and the replies the kernel
//! sends by itself. Positive controls first: the same senders from a pod
//! with no limit put several times that on the wire, so the counter sees
//! them. Then the pod without a host-side peer (macvlan, ipvlan), where
//! refusal is the only guarantee, two networks on one pod, and a process in
//! the pod's netns outside its cgroup.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bpf_ratelimit::testbed::iperf::Transfer;
use bpf_ratelimit::testbed::scenario::{timed, Sender, SenderReport, Way};
use bpf_ratelimit::testbed::{GW_IP, POD_IP, SERVER_IP};
use common::{background, in_pod, tool, Pod};
use serde_json::{json, Value};

const LIMIT: f64 = 10e6;
const BOUND: f64 = 1.05;
/// What each sender must put on the wire unshaped, as a share of the limit.
const CONTROL: f64 = 1.4;

/// Egress wire bits/s (at the far end) while `senders` run, measured from
/// `settle` (spent burst) for `measure`.
fn egress_wire_bps(pod: &Pod, senders: Vec<Command>, settle: Duration, measure: Duration) -> f64 {
    pod.bed.wire_while(Way::Upload, senders, settle, measure).unwrap().bps
}

/// What `sender` says it sent, in its own unit (frames, sends, bytes), from
/// its report; what it said instead, when it reported sending nothing or
/// did not report.
fn sent_by(sender: Sender, report: &SenderReport) -> Result<u64, String> {
    let count = match sender {
        // ping -q: "N packets transmitted, M received, ..."
        Sender::IcmpFlood => report
            .stdout
            .split(" packets transmitted")
            .next()
            .and_then(|head| head.rsplit(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok()),
        Sender::Mss88 | Sender::Nodelay64 => report.json().and_then(|j| j["end"]["sum_sent"]["bytes"].as_u64()),
        Sender::UdpGso8 => report.json().and_then(|j| j["sends"].as_u64()),
        Sender::AfXdp | Sender::AfXdpCompat => report.json().and_then(|j| j["completed"].as_u64()),
        Sender::SynFlood | Sender::AfPacket | Sender::AfPacketBypassCompat | Sender::Ipv6DstOpts => report.json().and_then(|j| j["sent"].as_u64()),
    };
    match count {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!("exit {:?}, stdout {:?}, stderr {:?}", report.exit, report.stdout.trim(), report.stderr.trim())),
    }
}

/// Whether the sender ran to its end: exit 0, or, for the tools in
/// tests/tools, 4 ("some sends failed": ECONNREFUSED from the ICMP errors
/// the far end returns, ENOBUFS), whose report then counts the errors.
fn ran_to_its_end(sender: Sender, report: &SenderReport) -> bool {
    let tool = !matches!(sender, Sender::Mss88 | Sender::Nodelay64 | Sender::IcmpFlood | Sender::Ipv6DstOpts);
    report.exit == Some(0) || (tool && report.exit == Some(4) && report.json().is_some_and(|j| j["stage"] == "done" || j["tool"] == "xdp_tx"))
}

/// The wire is held to the limit whatever the pod sends; with no limit, the
/// same senders put several times that on the wire. Every sender proves it
/// ran: its exit status and its own count of what it sent, in both runs.
#[test]
fn no_traffic_shape_puts_more_than_the_limit_on_the_wire() {
    let mut pod = Pod::new("wire");
    pod.bed.start_server().unwrap();
    // The controls: unshaped, every sender runs, says so, and puts far
    // more than the bound on the wire the test counts.
    for sender in Sender::ALL {
        let cmd = pod.bed.sender(sender, 3).unwrap();
        let (window, reports) = pod.bed.wire_while_reported(Way::Upload, vec![cmd], Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        let sent = sent_by(sender, &reports[0]).unwrap_or_else(|e| panic!("control: {} did not run: {e}", sender.what()));
        let errors = reports[0].json().map(|j| j["errors"].to_string()).unwrap_or_default();
        println!("control, no limit: {}: {:.1} Mbit/s on the wire ({:.1}x 10M), first frames {:.2} s after start; exit {:?}, sent {sent} {errors}", sender.what(), window.bps / 1e6, window.bps / LIMIT, window.first_frames_after, reports[0].exit);
        assert!(ran_to_its_end(sender, &reports[0]), "control: {} failed: {:?}", sender.what(), reports[0]);
        // Well above the bound, so that the bound is seen to break without
        // the limit: the 41-byte SYN flood, the slowest sender, reached
        // 1.7x here (one raw socket's sendto per packet); under TCG (the
        // 6.1 stage's VM) the UDP_SEGMENT sender reached 2.3x, here 234x.
        assert!(window.bps >= CONTROL * LIMIT, "control: {} put only {:.3} of the limit on the wire unshaped", sender.what(), window.bps / LIMIT);
    }
    pod.add(json!({"kubernetes.io/egress-bandwidth": "10M", "kubernetes.io/ingress-bandwidth": "10M"}));
    for sender in Sender::ALL {
        // The host-side guard's bucket holds two bursts and a margin
        // (~320 kB at 10M): spent within 2.5 s even at 1.06x.
        let cmd = pod.bed.sender(sender, 8).unwrap();
        let (window, reports) = pod.bed.wire_while_reported(Way::Upload, vec![cmd], Duration::from_secs(3), Duration::from_secs(4)).unwrap();
        let bps = window.bps;
        let report = &reports[0];
        let proof = match sent_by(sender, report) {
            Ok(n) => format!("sent {n}"),
            // AF_XDP set up the ordinary way is refused (EPERM): it sends
            // nothing, and says why.
            Err(said) if sender == Sender::AfXdp && said.contains("EPERM") => "refused with EPERM, as it must be".to_string(),
            Err(said) => panic!("10M pod: {} did not run: {said}", sender.what()),
        };
        println!("10M pod: {}: {:.3} of the limit on the wire; exit {:?}, {proof}", sender.what(), bps / LIMIT, report.exit);
        assert!(report.exit.is_some(), "{} did not end by itself: {report:?}", sender.what());
        assert!(sender == Sender::AfXdp || ran_to_its_end(sender, report), "{} failed: {report:?}", sender.what());
        assert!(bps <= BOUND * LIMIT, "{}: {:.3} of the limit on the wire", sender.what(), bps / LIMIT);
        std::thread::sleep(Duration::from_secs(1));
    }
    let guard = &stats(&pod)["pods"][0]["egressGuard"]["egress"];
    println!("the host-side guard dropped {} frames in all", guard["dropped_packets"]);
    pod.del();
}

fn stats(pod: &Pod) -> Value {
    let out = Command::new(common::plugin()).arg("stats").arg(&pod.pin_root).output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A sub-interface the pod makes over its eth0 (a macvlan) is not the
/// interface its cgroup hooks shape; the host-side guard holds it.
#[test]
fn a_sub_interface_the_pod_made_is_held_by_the_host_side() {
    let mut pod = Pod::new("mvlan");
    pod.bed.start_server().unwrap();
    pod.add(json!({"kubernetes.io/egress-bandwidth": "10M"}));
    let ns = &pod.bed.pod_ns;
    let ip = |args: &[&str]| bpf_ratelimit::testbed::ip(args).unwrap_or_else(|e| panic!("{e:#}"));
    ip(&["-n", ns, "link", "add", "mv0", "link", "eth0", "type", "macvlan", "mode", "bridge"]);
    ip(&["-n", ns, "addr", "add", "10.251.0.3/24", "dev", "mv0"]);
    ip(&["-n", ns, "link", "set", "mv0", "up"]);
    ip(&["-n", ns, "rule", "add", "from", "10.251.0.3", "table", "100"]);
    ip(&["-n", ns, "route", "add", &format!("{SERVER_IP}/32"), "via", GW_IP, "dev", "mv0", "table", "100"]);
    let bps = egress_wire_bps(&pod, vec![in_pod(&pod, "iperf3", &["-c", SERVER_IP, "-B", "10.251.0.3", "-t", "8"])], Duration::from_secs(3), Duration::from_secs(4));
    println!("TCP from a macvlan the 10M pod made over its eth0: {:.3} of the limit on the wire", bps / LIMIT);
    assert!(bps <= BOUND * LIMIT, "{:.3} of the limit", bps / LIMIT);
    assert!(bps >= 0.5 * LIMIT, "the sub-interface's traffic did not flow: {:.3}", bps / LIMIT);
    pod.del();
}

/// Floods into the pod go through its ingress queue: what reaches it is
/// held to its limit; the kernel's own replies (echo replies, RSTs), which
/// no cgroup hook of the pod sees, are held by the host-side guard.
#[test]
fn floods_into_the_pod_and_the_kernels_replies_are_held() {
    let mut pod = Pod::new("flood");
    pod.bed.start_server().unwrap();
    pod.add(json!({"kubernetes.io/egress-bandwidth": "10M", "kubernetes.io/ingress-bandwidth": "10M"}));
    let from_server = |kind: &str| {
        let mut c = pod.bed.server_command(&tool("pktflood")).unwrap();
        c.args(["--kind", kind, "--src-ip", SERVER_IP, "--dst-ip", POD_IP, "--size", "1400", "--rate", "20000000", "--seconds", "9", "--dst-port", "9"]);
        c
    };
    // Each flood proves it ran (its own count), and what it provokes is
    // seen on the wire, so that "no more than the limit" is not a quiet wire.
    let flood = |way: Way, cmd: Command| {
        let (window, reports) = pod.bed.wire_while_reported(way, vec![cmd], Duration::from_secs(3), Duration::from_secs(4)).unwrap();
        let sent = reports[0].json().and_then(|j| j["sent"].as_u64()).unwrap_or(0);
        assert!(reports[0].exit.is_some() && sent > 0, "the flood did not run: {:?}", reports[0]);
        (window.bps, sent)
    };
    let (into, sent) = flood(Way::Download, from_server("icmp"));
    println!("ICMP echo flood at 2x into the 10M pod ({sent} sent): {:.3} of the limit reached it", into / LIMIT);
    assert!(into <= BOUND * LIMIT && into >= 0.9 * LIMIT, "{:.3}", into / LIMIT);
    std::thread::sleep(Duration::from_secs(1));
    let (replies, sent) = flood(Way::Upload, from_server("icmp"));
    println!("its echo replies out of the pod ({sent} requests sent): {:.3} of the egress limit", replies / LIMIT);
    assert!(replies <= BOUND * LIMIT, "echo replies: {:.3}", replies / LIMIT);
    assert!(replies >= 0.5 * LIMIT, "the pod's kernel did not answer the flood: {:.3}", replies / LIMIT);
    std::thread::sleep(Duration::from_secs(1));
    // SYNs to a closed port, 1400 bytes each: the pod answers each with a
    // small RST; at 2x the ingress limit the RSTs stay far below it, so use
    // ACK floods of small frames, answered one for one.
    let mut acks = pod.bed.server_command(&tool("pktflood")).unwrap();
    acks.args(["--kind", "ack", "--src-ip", SERVER_IP, "--dst-ip", POD_IP, "--size", "40", "--rate", "0", "--seconds", "9", "--dst-port", "9"]);
    let (rsts, sent) = flood(Way::Upload, acks);
    println!("RSTs the 10M pod's kernel sends to an ACK flood ({sent} sent): {:.3} of the egress limit", rsts / LIMIT);
    assert!(rsts <= BOUND * LIMIT, "RSTs: {:.3}", rsts / LIMIT);
    assert!(rsts >= 0.5 * LIMIT, "the pod's kernel did not answer the ACK flood: {:.3}", rsts / LIMIT);
    pod.del();
}

/// Without a host-side peer (macvlan, ipvlan: prevResult names none), the
/// pod's own refusals are the only guarantee: AF_PACKET frames of the pod's
/// cgroup are dropped at its interface, PACKET_QDISC_BYPASS and AF_XDP
/// refused; raw frames of other processes in the pod's netns (a DHCP client,
/// arping from the node) pass. A compat syscall gets past the setsockopt
/// refusal: that gap is measured and printed (docs/shaping.md).
#[test]
fn without_a_host_side_raw_frames_of_the_pod_are_refused_and_others_pass() {
    let mut pod = Pod::new("nohost");
    pod.bed.start_server().unwrap();
    let mut conf = pod.config(json!({"kubernetes.io/egress-bandwidth": "10M"}));
    conf["prevResult"]["interfaces"] = json!([{"name": "eth0", "sandbox": pod.bed.pod_netns_path()}]);
    conf["prevResult"]["ips"][0]["interface"] = json!(0);
    assert_eq!(pod.invoke("ADD", &conf).code, 0);
    assert_eq!(pod.invoke("CHECK", &conf).code, 0);
    let gw_mac = pod.bed.gw_mac().unwrap();
    let frames = |extra: &[&str]| {
        let mut a = vec!["--ifname", "eth0", "--dst-mac", &gw_mac, "--src-ip", POD_IP, "--dst-ip", SERVER_IP, "--size", "1000", "--count", "500"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |mut c: Command| -> (i32, Value) {
        let out = c.output().unwrap();
        (out.status.code().unwrap_or(-1), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    };
    let pod_cmd = |program: &str, args: Vec<String>| {
        let mut c = pod.bed.pod_command(program).unwrap();
        c.args(args);
        c
    };
    let (code, v) = run(pod_cmd(&tool("raw_tx"), frames(&[])));
    println!("AF_PACKET from the pod: exit {code} {v}");
    assert_eq!(v["errors"]["ENOBUFS"], 500, "every frame of the pod is refused: {v}");
    let (code, v) = run(pod_cmd(&tool("raw_tx"), frames(&["--bypass"])));
    assert_eq!((code, v["qdisc_bypass"].as_str()), (3, Some("EPERM")), "{v}");
    let (code, v) = run(pod_cmd(&tool("xdp_tx"), frames(&[])));
    assert_eq!(code, 3, "AF_XDP's SOL_XDP options are refused: {v}");
    // A process in the pod's netns but outside its cgroup (the node's).
    let mut outside = bpf_ratelimit::testbed::in_netns(Command::new(tool("raw_tx")), &pod.bed.pod_netns_path(), None).unwrap();
    outside.args(frames(&[]));
    let (code, v) = run(outside);
    println!("AF_PACKET from outside the pod's cgroup: exit {code} {v}");
    assert_eq!((code, v["sent"].as_u64()), (0, Some(500)), "{v}");
    // What is left: a compat syscall skips cgroup/setsockopt programs.
    let bps = egress_wire_bps(&pod, vec![pod_cmd(&tool("raw_tx"), frames(&["--bypass", "--compat-setsockopt", "--count", "1000000000", "--seconds", "6"]))], Duration::from_secs(1), Duration::from_secs(3));
    println!("left without a host side: AF_PACKET with PACKET_QDISC_BYPASS set through a compat syscall: {:.1}x the limit on the wire", bps / LIMIT);
    // A repeated ADD that allows raw sockets takes the filter away.
    conf["allowRawSockets"] = json!(true);
    assert_eq!(pod.invoke("ADD", &conf).code, 0);
    let (code, v) = run(pod_cmd(&tool("raw_tx"), frames(&[])));
    assert_eq!((code, v["sent"].as_u64()), (0, Some(500)), "allowRawSockets: {v}");
    pod.del();
}

/// Two networks on one pod (Multus: another CNI_IFNAME and network name),
/// each at its own limit, both at once; DEL of one leaves the other shaped.
#[test]
fn each_network_of_a_pod_is_shaped_at_its_own_limit() {
    let mut pod = Pod::new("multus");
    pod.bed.start_server().unwrap();
    let second = common::SecondInterface::new(&pod);
    let mut server2 = bpf_ratelimit::testbed::in_netns(Command::new("iperf3"), &second.server_netns(), None).unwrap();
    server2.args(["-s", "-p", "5201"]);
    let _server2 = background(server2);
    let counter2 = bpf_ratelimit::testbed::wire::WireCounter::attach(&second.server_netns(), "eth0", &format!("{}-2", pod.bed.name)).unwrap();
    pod.add(json!({"kubernetes.io/egress-bandwidth": "10M"}));
    let mut other = pod.config(json!({"kubernetes.io/egress-bandwidth": "30M"}));
    other["name"] = json!(format!("{}-other", pod.network()));
    other["prevResult"] = second.prev_result(&pod);
    let out = pod.invoke_if("ADD", &pod.bed.name, "net1", &other);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    std::thread::sleep(Duration::from_millis(500));
    let both = |pod: &Pod| {
        let a = background(in_pod(pod, "iperf3", &["-c", SERVER_IP, "-t", "8"]));
        let b = background(in_pod(pod, "iperf3", &["-c", common::SECOND_SERVER_IP, "-t", "8"]));
        std::thread::sleep(Duration::from_secs(3));
        // Each counter with its own time: the delay line answers a signal,
        // which under TCG took long enough, and varied enough, that one
        // clock for both read eth0 at 1.148 of its limit (6.1 stage's VM).
        let eth0 = || timed(|| Ok(pod.bed.wire()?.a_to_b.wire_bytes)).unwrap();
        let net1 = || timed(|| counter2.read().map(|c| c.bytes)).unwrap();
        let (a0, b0) = (eth0(), net1());
        std::thread::sleep(Duration::from_secs(4));
        let (a1, b1) = (eth0(), net1());
        drop((a, b));
        let bps = |(n0, t0): (u64, Instant), (n1, t1): (u64, Instant)| (n1 - n0) as f64 * 8.0 / t1.duration_since(t0).as_secs_f64();
        (bps(a0, a1), bps(b0, b1))
    };
    let (eth0, net1) = both(&pod);
    println!("at once: eth0 {:.3} of its 10M, net1 {:.3} of its 30M (on the wire)", eth0 / 10e6, net1 / 30e6);
    assert!((0.95..=1.02).contains(&(eth0 / 10e6)), "eth0: {:.3}", eth0 / 10e6);
    assert!((0.95..=1.02).contains(&(net1 / 30e6)), "net1: {:.3}", net1 / 30e6);
    // DEL of the other network: eth0 keeps its limit, net1 is free.
    let out = pod.invoke_if("DEL", &pod.bed.name, "net1", &other);
    assert_eq!(out.code, 0);
    std::thread::sleep(Duration::from_secs(1));
    let (eth0, net1) = both(&pod);
    println!("after net1's DEL: eth0 {:.3} of its 10M, net1 {:.1} Mbit/s", eth0 / 10e6, net1 / 1e6);
    assert!((0.95..=1.02).contains(&(eth0 / 10e6)), "eth0 after the other's DEL: {:.3}", eth0 / 10e6);
    assert!(net1 > 60e6, "net1 is no longer limited: {net1:.0} bit/s");
    pod.del();
    drop(counter2);
}

/// A process in the pod's netns but outside its cgroup (a tool the node runs
/// there with `ip netns exec`, a CNI's DHCP client) is not seen by the pod's
/// cgroup hooks, only on the way out. Its traffic is counted once, with the
/// pod's, on the wire: 1M of UDP from outside beside the pod's own TCP
/// upload keeps the wire at the limit, the UDP is delivered, and the pod's
/// upload keeps the rest without resending: the guard on the pod's own
/// interface drops a few of its frames (6 in 2402 here), a local drop that
/// TCP answers by slowing down, without a timeout. The control: the same
/// two senders with no limit put far more on the wire.
#[test]
fn a_process_outside_the_pods_cgroup_is_counted_once_and_does_not_starve_the_pod() {
    let mut pod = Pod::new("outside");
    pod.bed.start_server().unwrap();
    pod.bed.start_server_on("5202").unwrap();
    let senders = |pod: &Pod| {
        let tcp = in_pod(pod, "iperf3", &["-J", "-c", SERVER_IP, "-t", "10"]);
        let mut udp = bpf_ratelimit::testbed::in_netns(Command::new("iperf3"), &pod.bed.pod_netns_path(), None).unwrap();
        udp.args(["-J", "-c", SERVER_IP, "-p", "5202", "-u", "-b", "1M", "-t", "10"]);
        let (window, reports) = pod.bed.wire_while_reported(Way::Upload, vec![tcp, udp], Duration::from_secs(3), Duration::from_secs(4)).unwrap();
        for r in &reports {
            assert_eq!(r.exit, Some(0), "a sender failed: {r:?}");
        }
        let transfer = |r: &SenderReport| Transfer::from_json(&r.json().unwrap_or_default()).unwrap_or_else(|e| panic!("{e:#}: {r:?}"));
        let (tcp, udp) = (transfer(&reports[0]), transfer(&reports[1]));
        (window.bps, tcp.goodput_bps, tcp.resent_share(1448.0), udp.goodput_bps)
    };
    let (unlimited, ..) = senders(&pod);
    println!("no limit: the pod's TCP and 1M of UDP from outside its cgroup: {:.1}x 10M on the wire", unlimited / LIMIT);
    assert!(unlimited > 1.5 * LIMIT, "the control put only {:.3} of the limit on the wire", unlimited / LIMIT);
    pod.add(json!({"kubernetes.io/egress-bandwidth": "10M"}));
    std::thread::sleep(Duration::from_secs(1));
    let (wire, tcp, resent, udp) = senders(&pod);
    println!(
        "10M pod: the pod's TCP and 1M of UDP from outside its cgroup: {:.3} of the limit on the wire; TCP goodput {:.2} Mbit/s, {:.2}% resent; UDP delivered {:.2} Mbit/s",
        wire / LIMIT, tcp / 1e6, resent * 100.0, udp / 1e6
    );
    let guard = &stats(&pod)["pods"][0]["podSideEgressGuard"]["egress"];
    println!("the guard on the pod's interface dropped {} frames ({} bytes)", guard["dropped_packets"], guard["dropped_bytes"]);
    assert!(wire <= BOUND * LIMIT && wire >= 0.95 * LIMIT, "{:.3} of the limit on the wire", wire / LIMIT);
    assert!(udp >= 0.9e6, "the UDP from outside the pod's cgroup got {:.2} Mbit/s of its 1M", udp / 1e6);
    // What is left for the pod: 9M on the wire, 0.956 of it TCP goodput.
    assert!(tcp >= 0.85 * 9e6, "the pod's own upload got {:.2} Mbit/s beside 1M from outside its cgroup", tcp / 1e6);
    assert!(resent <= 0.05, "the pod's own upload resent {:.1}%", resent * 100.0);
    pod.del();
}
