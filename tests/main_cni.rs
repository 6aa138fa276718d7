//! Limits under an eBPF main CNI (issue 21), and where two enforcement
//! layers count differently. The testbed emulates what Cilium with BPF host
//! routing and Calico in eBPF mode do (testbed::main_cni): a program at the
//! front of each host-side veth's tc ingress (cls_bpf at pref 1, or tcx
//! first) hands every IP frame straight to the other side with
//! `bpf_redirect_peer`. The host veths' qdiscs and every later filter on
//! those hooks then never see the pod's traffic; the pod's own interface,
//! its cgroup and its sockets still do.
//!
//! Every bound has its control in the same test: with the emulated CNI and
//! no limit, the same download goes far past the bound, and the host-side
//! veth carried none of it (the emulation really skips the host side).

mod common;

use std::process::Command;
use std::time::Duration;

use bpf_ratelimit::testbed::main_cni::Attach;
use bpf_ratelimit::testbed::scenario::{Bulk, Sender, Way};
use bpf_ratelimit::testbed::{GW_IP, POD_IP};
use common::{assert_bulk, background, Pod};
use serde_json::{json, Value};

const LIMIT: f64 = 100e6;
const BAND: (f64, f64) = (0.95, 1.02);

fn both(rate: &str) -> Value {
    json!({"kubernetes.io/ingress-bandwidth": rate, "kubernetes.io/egress-bandwidth": rate})
}

/// Bytes the pod's host-side veth has transmitted toward the pod.
fn host_veth_tx_bytes(pod: &Pod) -> u64 {
    let path = format!("/sys/class/net/{}/statistics/tx_bytes", pod.bed.pod_host_veth);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")).trim().parse().unwrap()
}

/// Datagrams dropped because a receiving UDP socket's buffer was full
/// (RcvbufErrors, IPv4 and IPv6), in the netns of the side that receives:
/// the pod's for a download, the server's for an upload.
fn receiver_drops(pod: &Pod, way: Way) -> u64 {
    let mut cmd = match way {
        Way::Download => pod.bed.pod_command("cat").unwrap(),
        Way::Upload => pod.bed.server_command("cat").unwrap(),
    };
    let out = cmd.args(["/proc/net/snmp", "/proc/net/snmp6"]).output().expect("cat /proc/net/snmp");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // snmp: a "Udp:" header line naming the fields, then a "Udp:" values line.
    let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp: ")).collect();
    let v4 = match udp.as_slice() {
        [names, values] => names.split_whitespace().zip(values.split_whitespace()).find(|(n, _)| *n == "RcvbufErrors").and_then(|(_, v)| v.parse::<u64>().ok()),
        _ => None,
    };
    let v6 = text.lines().find_map(|l| l.strip_prefix("Udp6RcvbufErrors")).and_then(|v| v.trim().parse::<u64>().ok());
    v4.expect("Udp RcvbufErrors in /proc/net/snmp") + v6.expect("Udp6RcvbufErrors in /proc/net/snmp6")
}

/// The control: under the emulated CNI, with nothing of ours attached, a
/// download runs far past the bound and never crosses the host veth's
/// transmit path (where a host-side queue would sit).
fn unshaped_download_breaks_the_bound(pod: &mut Pod) {
    let tx0 = host_veth_tx_bytes(pod);
    let r = pod.bed.bulk(&Bulk::tcp(Way::Download, "cubic", 1, 1, 3)).unwrap();
    let tx = host_veth_tx_bytes(pod) - tx0;
    println!("control, no limit: download {:.1}x 100M on the wire; the host veth transmitted {tx} bytes of it", r.wire_bps / LIMIT);
    assert!(r.wire_bps > 2.0 * LIMIT, "control: the unshaped download ran at only {:.2}x 100M", r.wire_bps / LIMIT);
    assert!(tx < 1_000_000, "the emulated CNI did not skip the host side: its veth transmitted {tx} bytes");
}

/// TCP both ways, UDP into the pod at 2x, and raw frames out of it, each
/// held to the limit under an eBPF main CNI in both forms. On kernels
/// without tcx (before 6.6) the tcx form cannot be emulated: say so.
#[test]
fn every_limit_holds_under_an_ebpf_main_cni() {
    let tcx = bpf_ratelimit::node::kernel::at_least(6, 6);
    let forms: &[Attach] = if tcx { &[Attach::Tc, Attach::Tcx] } else { &[Attach::Tc] };
    if !tcx {
        println!("this kernel has no tcx (before 6.6): only the cls_bpf form is emulated");
    }
    for &form in forms {
        let mut pod = Pod::new("ecni");
        pod.bed.start_server().unwrap();
        pod.bed.emulate_ebpf_main_cni(form).unwrap();
        unshaped_download_breaks_the_bound(&mut pod);
        pod.add(both("100M"));
        let what = |w: &str| format!("{form:?} main CNI, 100M pod: {w}");
        for cc in ["cubic", "bbr"] {
            for way in [Way::Download, Way::Upload] {
                let r = assert_bulk(&pod, &Bulk::tcp(way, cc, 1, 2, 5), LIMIT, BAND, &what(&format!("TCP {} {cc}", way.name())));
                assert!(r.transfer.resent_share(1448.0) <= 0.05, "{}: {:.1}% resent", what(way.name()), 100.0 * r.transfer.resent_share(1448.0));
            }
        }
        let udp = pod.bed.bulk(&Bulk::udp(Way::Download, 200_000_000, 2, 4)).unwrap();
        println!("{}: {:.3} of the limit on the wire, {:.3} delivered", what("UDP download at 2x"), udp.wire_bps / LIMIT, udp.transfer.goodput_bps / LIMIT);
        assert!(udp.wire_bps <= 1.03 * LIMIT && udp.transfer.goodput_bps <= 1.03 * LIMIT, "{}", what("UDP download at 2x"));
        assert!(udp.transfer.goodput_bps >= 0.9 * LIMIT, "{}: only {:.3} delivered", what("UDP download at 2x"), udp.transfer.goodput_bps / LIMIT);
        let raw = pod.bed.wire_while(Way::Upload, vec![pod.bed.sender(Sender::AfPacket, 8).unwrap()], Duration::from_secs(3), Duration::from_secs(4)).unwrap();
        println!("{}: {:.3} of the limit on the wire", what("AF_PACKET frames flat out"), raw.bps / LIMIT);
        assert!(raw.bps <= 1.05 * LIMIT, "{}: {:.3}", what("AF_PACKET"), raw.bps / LIMIT);
        assert!(raw.bps >= 0.5 * LIMIT, "{}: the sender put only {:.3} of the limit on the wire", what("AF_PACKET"), raw.bps / LIMIT);
        pod.del();
    }
}

/// The same through the delay line, 10 ms and 50 ms away: the limit holds
/// at the round trips real pods meet, with the host side skipped.
#[test]
fn far_servers_are_held_under_an_ebpf_main_cni() {
    for one_way_ms in [5, 25] {
        let mut pod = Pod::with_delay("ecnirtt", Duration::from_millis(one_way_ms));
        pod.bed.start_server().unwrap();
        pod.bed.emulate_ebpf_main_cni(Attach::Tc).unwrap();
        pod.add(both("100M"));
        for way in [Way::Download, Way::Upload] {
            let what = format!("{} ms RTT, 100M pod under an eBPF main CNI: TCP {}", 2 * one_way_ms, way.name());
            let r = assert_bulk(&pod, &Bulk::tcp(way, "cubic", 1, 3, 5), LIMIT, BAND, &what);
            assert!(r.transfer.resent_share(1448.0) <= 0.05, "{what}: {:.1}% resent", 100.0 * r.transfer.resent_share(1448.0));
        }
        pod.del();
    }
}

/// A main CNI that attaches its programs after ADD (Cilium regenerating an
/// endpoint) does not lift the limit: the pod-side queue and guard do not
/// depend on the host side. The same pod's raw frames stay held.
#[test]
fn a_main_cni_attached_after_add_does_not_lift_the_limit() {
    let mut pod = Pod::new("ecnilate");
    pod.bed.start_server().unwrap();
    pod.add(both("100M"));
    assert_bulk(&pod, &Bulk::tcp(Way::Download, "cubic", 1, 1, 3), LIMIT, BAND, "bridge, before the main CNI attaches: download");
    pod.bed.emulate_ebpf_main_cni(Attach::Tc).unwrap();
    let tx0 = host_veth_tx_bytes(&pod);
    assert_bulk(&pod, &Bulk::tcp(Way::Download, "cubic", 1, 2, 4), LIMIT, BAND, "main CNI attached after ADD: download");
    let tx = host_veth_tx_bytes(&pod) - tx0;
    assert!(tx < 1_000_000, "the emulated CNI did not skip the host side: its veth transmitted {tx} bytes");
    assert_bulk(&pod, &Bulk::tcp(Way::Upload, "cubic", 1, 2, 4), LIMIT, BAND, "main CNI attached after ADD: upload");
    // CHECK, `stats`, `list` and a log line say the host side is skipped,
    // and what that leaves open.
    let out = pod.invoke("CHECK", &pod.config(both("100M")));
    println!("CHECK under the main CNI: exit {}: {}", out.code, out.stdout.trim());
    assert_ne!(out.code, 0, "CHECK passed with the host side skipped");
    assert!(out.stdout.contains("host side is skipped") && out.stdout.contains("32-bit syscalls"), "CHECK: {}", out.stdout);
    let skipped = |pod: &Pod| -> Value { pod.stats()["hostSideSkipped"].clone() };
    assert_eq!(skipped(&pod), json!(true), "stats: the host side is skipped");
    let list = Command::new(common::plugin()).args(["list", "--pin-root"]).arg(&pod.pin_root).output().unwrap();
    let (table, log) = (String::from_utf8_lossy(&list.stdout), String::from_utf8_lossy(&list.stderr));
    println!("list under the main CNI:\n{table}{log}");
    assert!(table.contains("host side skipped"), "list does not say the host side is skipped:\n{table}");
    assert!(log.contains("redirects them past the host-side guard"), "list logs no cause:\n{log}");
    pod.bed.stop_ebpf_main_cni();
    assert_bulk(&pod, &Bulk::tcp(Way::Upload, "cubic", 1, 1, 3), LIMIT, BAND, "the main CNI gone again: upload");
    assert_eq!(skipped(&pod), json!(false), "stats: the host side sees the pod's frames again");
    let out = pod.invoke("CHECK", &pod.config(both("100M")));
    assert_eq!(out.code, 0, "CHECK with the host side back: {}\n{}", out.stdout, out.stderr);
    pod.del();
}

/// UDP datagrams the IP layer fragments (8000 bytes: 6 fragments; 64 KB:
/// 45), sent at 2x the limit, both ways, IPv4 and IPv6, under a bridge and
/// under an eBPF main CNI: at least 0.93 of the limit arrives. The control
/// is the same upload with the feature removed (the interface's MTU
/// unknown to the cgroup hooks, the host-side guard at exactly the rate):
/// it loses most datagrams, as it did before (0.08).
#[test]
fn fragmented_udp_at_twice_the_limit_delivers_the_limit() {
    for emulate in [false, true] {
        let mut pod = Pod::new("frag");
        pod.bed.start_server().unwrap();
        if emulate {
            pod.bed.emulate_ebpf_main_cni(Attach::Tc).unwrap();
        }
        pod.add(both("100M"));
        let under = if emulate { "eBPF main CNI" } else { "bridge" };
        // Every size and family under the bridge; under the eBPF main CNI,
        // whose paths for fragments are the same pod-side ones, two.
        let cases: &[(u32, bool)] = if emulate { &[(8000, false), (60000, true)] } else { &[(8000, false), (65000, false), (8000, true), (60000, true)] };
        for &(len, ipv6) in cases {
            for way in [Way::Upload, Way::Download] {
                let mut b = Bulk::udp(way, 200_000_000, 2, 4).with_args(&["-l", &len.to_string()]);
                if ipv6 {
                    b = b.over_ipv6();
                }
                let what = format!("{under}: {len}-byte UDP {} {} at 2x", if ipv6 { "IPv6" } else { "IPv4" }, way.name());
                for attempt in 0.. {
                    let before = receiver_drops(&pod, way);
                    let r = pod.bed.bulk(&b).unwrap();
                    let dropped = receiver_drops(&pod, way) - before;
                    let got = r.transfer.goodput_bps / LIMIT;
                    println!(
                        "{what}: {got:.3} of the limit delivered, {:.3} on the wire; the receiving socket dropped {dropped} datagrams",
                        r.wire_bps / LIMIT
                    );
                    assert!(got <= 1.03, "{what}: {got:.3} of the limit delivered");
                    if got >= 0.93 {
                        break;
                    }
                    // Datagrams the receiving iperf3 did not read in time
                    // were lost after the shaper and the wire: the machine
                    // stalled the receiver. That, and only that, allows one
                    // repeat, counted.
                    if attempt == 0 && dropped > 0 {
                        common::retries::record(&what, &format!("{got:.3} delivered, {dropped} datagrams dropped by the receiving socket (buffer full)"));
                        continue;
                    }
                    panic!("{under}: {len}-byte datagrams {}: only {got:.3} of the limit delivered", way.name());
                }
            }
        }
        if !emulate {
            remove_fragment_accounting(&pod);
            // Long enough for the guard's two bursts to drain at the ~2%
            // the pod's hooks then undercount.
            for way in [Way::Upload, Way::Download] {
                let r = pod.bed.bulk(&Bulk::udp(way, 200_000_000, 8, 4).with_args(&["-l", "8000"])).unwrap();
                let got = r.transfer.goodput_bps / LIMIT;
                println!("control, the feature removed: 8000-byte UDP {} at 2x: {got:.3} of the limit delivered", way.name());
                assert!(got < 0.5, "control: without the feature, 8000-byte datagrams {} still delivered {got:.3}", way.name());
            }
        }
        pod.del();
    }
}

/// The feature removed, for the control: the cgroup hooks no longer know
/// the interface's MTU, the guards run at exactly the rate, and the ingress
/// queue's door lets every first fragment in (TBF then drops fragments).
fn remove_fragment_accounting(pod: &Pod) {
    use bpf_ratelimit::datapath::{attach, attachment};
    use bpf_ratelimit::node::bpf_sys;
    use std::os::fd::AsFd;
    let root = bpf_ratelimit::node::pins::PinRoot::existing(&pod.pin_root).unwrap().unwrap();
    let id = root.attachments().unwrap().into_iter().next().unwrap();
    let dir = root.pod_dir(&id);
    let state = attach::update_pod_state(&dir, |s| s.flags &= 0xffff).unwrap();
    let record = attachment::read(&dir).unwrap().unwrap();
    let guards = bpf_sys::obj_get(&dir.join("guards")).unwrap();
    for key in [record.host_ifindex, record.pod_guard] {
        let mut g = bpf_ratelimit::datapath::state::HostGuard::for_egress(record.cgroup_id, &state.egress);
        g.egress.rate = state.egress.rate;
        bpf_sys::update_locked(guards.as_fd(), &key, &g).unwrap();
    }
    let mut door = attach::door_from_pins(&dir).expect("the ingress queue's door");
    door.limit = u64::MAX / 4;
    let queues = bpf_sys::obj_get(&dir.join("queues")).unwrap();
    bpf_sys::update_locked(queues.as_fd(), &record.ingress_queue_door, &door).unwrap();
}

/// A same-node peer pod (the gateway's netns, reached straight through the
/// emulated CNI) downloads from and uploads to the pod: both held.
#[test]
fn a_same_node_peer_is_held_under_an_ebpf_main_cni() {
    let mut pod = Pod::new("ecnipeer");
    pod.bed.emulate_ebpf_main_cni(Attach::Tc).unwrap();
    let mut server = pod.bed.gateway_command("iperf3").unwrap();
    server.args(["-s", "-p", "5202", "-B", GW_IP]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let _server = background(server);
    std::thread::sleep(Duration::from_millis(300));
    let peer_counter =
        bpf_ratelimit::testbed::wire::WireCounter::attach(&bpf_ratelimit::testbed::netns_path(&pod.bed.gw_ns), "eth0", &format!("{}-peer", pod.bed.name)).unwrap();
    let run = |reverse: bool| -> (f64, f64) {
        let mut c = pod.bed.pod_command("iperf3").unwrap();
        c.args(["-c", GW_IP, "-p", "5202", "-J", "-t", "6", "-O", "2", "-B", POD_IP]);
        if reverse {
            c.arg("-R");
        }
        let child = c.stdout(std::process::Stdio::piped()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        let count = |r: bool| if r { pod.bed.pod_wire().unwrap() } else { peer_counter.read().unwrap() };
        let (w0, t0) = (count(reverse), std::time::Instant::now());
        std::thread::sleep(Duration::from_secs(5));
        let (w1, t1) = (count(reverse), std::time::Instant::now());
        let out = child.wait_with_output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = bpf_ratelimit::testbed::iperf::Transfer::from_json(&v).unwrap();
        ((w1.bytes - w0.bytes) as f64 * 8.0 / t1.duration_since(t0).as_secs_f64(), t.resent_share(1448.0))
    };
    let (control, _) = run(true);
    println!("control, no limit: the peer's download into the pod at {:.1}x 100M", control / LIMIT);
    assert!(control > 2.0 * LIMIT, "control: {:.2}x", control / LIMIT);
    pod.add(both("100M"));
    for reverse in [true, false] {
        let (bps, resent) = run(reverse);
        let what = if reverse { "download from" } else { "upload to" };
        println!("100M pod, {what} a same-node peer under an eBPF main CNI: {:.3} of the limit on the wire, {:.2}% resent", bps / LIMIT, 100.0 * resent);
        assert!((BAND.0..=BAND.1).contains(&(bps / LIMIT)), "{what} a same-node peer: {:.3}", bps / LIMIT);
        assert!(resent <= 0.05, "{what} a same-node peer: {:.1}% resent", 100.0 * resent);
    }
    drop(peer_counter);
    pod.del();
    let _ = Command::new("true").status();
}

/// Tunnels a pod makes (ipip, GRE, VXLAN; it needs CAP_NET_ADMIN) carry
/// its traffic out by a device its cgroup hooks do not shape; the hooks
/// charge it to the pod's one shaped interface with 50 bytes of tunnel
/// headers a packet (exact for VXLAN, a little more than ipip and GRE
/// send), and the guards charge each outer frame. TCP with MSS 88 through
/// each, from a 10M pod to the gateway's end of the tunnel, under a bridge
/// and under an eBPF main CNI: on the wire into the gateway, at most what
/// the pod's egress bucket lets through in the window (rate x window + two
/// bursts, TCP borrowing one; +1% for timing). Before the hooks charged
/// tunnels, only the guards held them, by dropping, and a window reached
/// 1.054-1.070 (CI, bench/results/wire). The control is the same tunnels
/// before ADD.
#[test]
fn tunnels_the_pod_makes_are_charged_per_outer_frame() {
    const TEN: f64 = 10e6;
    for emulate in [false, true] {
        let mut pod = Pod::new("tunnel");
        if emulate {
            pod.bed.emulate_ebpf_main_cni(Attach::Tc).unwrap();
        }
        let under = if emulate { "eBPF main CNI" } else { "bridge" };
        let (pod_ns, gw_ns) = (pod.bed.pod_ns.clone(), pod.bed.gw_ns.clone());
        let ip = |args: &[&str]| bpf_ratelimit::testbed::ip(args).unwrap_or_else(|e| panic!("{e:#}"));
        // This host's kernel builds vxlan in but not ipip or GRE (and has no
        // modprobe); Debian's 6.1 in the CI's VM has all three. Every kind
        // the kernel has is tested; vxlan must be there.
        let all: [(&str, Vec<&str>); 3] = [
            ("ipip", vec!["type", "ipip"]),
            ("gre", vec!["type", "gre"]),
            ("vxlan", vec!["type", "vxlan", "id", "42", "dstport", "4789", "dev", "eth0"]),
        ];
        let probe = |spec: &[&str]| {
            let mut args = vec!["-n", pod_ns.as_str(), "link", "add", "tprobe"];
            args.extend_from_slice(spec);
            let ok = bpf_ratelimit::testbed::ip(&args).is_ok();
            let _ = bpf_ratelimit::testbed::ip(&["-n", &pod_ns, "link", "del", "tprobe"]);
            ok
        };
        let tunnels: Vec<(&str, Vec<&str>)> = all
            .iter()
            .filter(|(kind, spec)| {
                let mut spec = spec.clone();
                if *kind != "vxlan" {
                    spec.extend_from_slice(&["local", POD_IP, "remote", GW_IP]);
                } else {
                    spec.extend_from_slice(&["remote", GW_IP]);
                }
                let here = probe(&spec);
                if !here {
                    println!("kernel {}: no {kind} tunnels (not built, no module): not tested here", bpf_ratelimit::node::kernel::release());
                }
                here
            })
            .cloned()
            .collect();
        assert!(tunnels.iter().any(|(k, _)| *k == "vxlan"), "this kernel cannot make vxlan tunnels");
        for (i, (kind, spec)) in tunnels.iter().enumerate() {
            let dev = format!("t{kind}");
            for (ns, local, remote, addr) in [(&pod_ns, POD_IP, GW_IP, "2"), (&gw_ns, GW_IP, POD_IP, "1")] {
                let mut args = vec!["-n", ns.as_str(), "link", "add", &dev];
                args.extend_from_slice(spec);
                args.extend_from_slice(&["local", local, "remote", remote]);
                ip(&args);
                ip(&["-n", ns, "addr", "add", &format!("10.253.{i}.{addr}/24"), "dev", &dev]);
                ip(&["-n", ns, "link", "set", &dev, "up"]);
            }
        }
        let mut server = pod.bed.gateway_command("iperf3").unwrap();
        server.args(["-s", "-p", "5203"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let _server = background(server);
        std::thread::sleep(Duration::from_millis(300));
        let counter = bpf_ratelimit::testbed::wire::WireCounter::attach(
            &bpf_ratelimit::testbed::netns_path(&gw_ns),
            "eth0",
            &format!("{}-tun", pod.bed.name),
        )
        .unwrap();
        let through = |i: usize, seconds: u32| -> (f64, f64) {
            let mut c = pod.bed.pod_command("iperf3").unwrap();
            c.args(["-c", &format!("10.253.{i}.1"), "-p", "5203", "-M", "88", "-t", &seconds.to_string()]);
            c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            let mut child = c.spawn().unwrap();
            std::thread::sleep(Duration::from_secs(u64::from(seconds) / 2));
            let (w0, t0) = (counter.read().unwrap(), std::time::Instant::now());
            std::thread::sleep(Duration::from_secs(u64::from(seconds) / 2 - 1));
            let (w1, t1) = (counter.read().unwrap(), std::time::Instant::now());
            let status = child.wait().unwrap();
            assert!(status.success(), "iperf3 through the {} tunnel failed", tunnels[i].0);
            let seconds = t1.duration_since(t0).as_secs_f64();
            ((w1.bytes - w0.bytes) as f64 * 8.0 / seconds, seconds)
        };
        for (i, (kind, _)) in tunnels.iter().enumerate() {
            let (bps, _) = through(i, 4);
            println!("{under}, control, no limit: TCP MSS 88 through {kind}: {:.1}x 10M on the wire", bps / TEN);
            assert!(bps >= 3.0 * TEN, "control: only {:.2}x 10M through {kind}", bps / TEN);
        }
        pod.add(json!({"kubernetes.io/egress-bandwidth": "10M"}));
        for (i, (kind, _)) in tunnels.iter().enumerate() {
            // The buckets (the pod's, and the guard's two bursts and a
            // margin) are spent in the first half; 6 s of the second half
            // are measured.
            let (bps, seconds) = through(i, 14);
            let stats = pod.stats();
            let (egress, guard) = (&stats["state"]["egress"], &stats["podSideEgressGuard"]["egress"]);
            let bound = 1.0 + 2.0 * 8.0 * egress["burst"].as_f64().unwrap() / (TEN * seconds) + 0.01;
            println!(
                "{under}, 10M pod: TCP MSS 88 through {kind}: {:.3} of the limit on the wire (the bucket's bound in {seconds:.1} s: {bound:.3}); the pod-side guard dropped {} bytes",
                bps / TEN,
                guard["dropped_bytes"]
            );
            assert!(bps <= bound * TEN, "{under}: {kind}: {:.3} of the limit, above the bucket's {bound:.3}", bps / TEN);
            assert!(bps >= 0.5 * TEN, "{under}: {kind}: the tunnel carried only {:.3} of the limit", bps / TEN);
        }
        drop(counter);
        pod.del();
    }
}
