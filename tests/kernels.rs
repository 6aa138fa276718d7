//! The rates the LTS kernels' CI stage checks (tests/vm/suite.sh runs this
//! on Debian 12's 6.1 in a VM, and the suite on this host's kernel): TCP
//! downloads and uploads at 10M and 50M on a LAN, 10M and 100M 10 ms away, held to
//! at least 0.95 of the limit on the wire with at most 5% resent, and at
//! most what the limit's token bucket allows in the measured window (rate x
//! window + burst, two for an upload, whose TCP may borrow one; +1% for the
//! counters' timing). That, not 1.02 of the rate, is the bound: a TCG
//! guest's TCP stalls now and then, the bucket fills meanwhile, and a 100M
//! download 10 ms away measured 1.042 of the rate in a 4.4 s window, within
//! its 3.1 MB (250 ms) burst's 1.057. UDP offered at
//! 2x a 10M pod delivered at 0.9-1.03 of it. Rates a TCG guest can carry:
//! the control measures, in the same test, that the path unshaped carries
//! well over the limit, so each cell can fail. (Under TCG a TBF kept
//! throttled by 200M of UDP sent out only 0.18 of a 100M limit: the guest's
//! timers, not the kernel; UDP is checked at 10M there.)
//!
//! And the same under an emulated eBPF main CNI in the form every kernel
//! has (cls_bpf at pref 1 on the host veth, delivering with
//! `bpf_redirect_peer`; tcx, the other form, came in 6.6): on 6.1 the
//! pod-side queue and guard hold a 10M pod both ways, where the same
//! download with nothing of ours runs far past the limit and never crosses
//! the host veth.

mod common;

use std::time::Duration;

use bpf_ratelimit::testbed::main_cni::Attach;
use bpf_ratelimit::testbed::scenario::{Bulk, Way};
use common::{assert_bulk, Pod};
use serde_json::json;

const LOWEST: f64 = 0.95;

/// The most the token bucket of `direction` ("ingress", "egress") lets
/// through in `seconds`, as a share of `rate` bits/s, from the pod's state
/// as `stats` reads it from the kernel.
fn bucket_bound(pod: &Pod, direction: &str, rate: f64, seconds: f64) -> f64 {
    let bucket = &pod.stats()["state"][direction];
    let burst_bits = 8.0 * bucket["burst"].as_f64().unwrap_or_else(|| panic!("stats has no {direction} burst: {bucket}"));
    let bursts = if direction == "egress" { 2.0 } else { 1.0 };
    1.0 + bursts * burst_bits / (rate * seconds) + 0.01
}

fn cells(one_way: Duration) {
    let rtt_ms = 2 * one_way.as_millis();
    let kernel = bpf_ratelimit::node::kernel::release();
    // On a LAN a TCG guest carries a shaped 100M download only when the
    // host leaves it enough CPU: 0.927 and 0.932 of the limit in 2 of 7 CI
    // runs, both when the unshaped path carried only 1.8-2.3x of 100M
    // (1.000 when it carried 2.8-4.3x; the LAN's small windows mean more,
    // smaller skbs, each through the ifb a second time). So the LAN cells
    // are 10M and 50M there; 10 ms away, where 100M held in every run, 100M.
    let rates: [(&str, f64); 2] = if one_way.is_zero() { [("10M", 10e6), ("50M", 50e6)] } else { [("10M", 10e6), ("100M", 100e6)] };
    for (rate, bits) in rates {
        let mut pod = Pod::with_delay("kern", one_way);
        pod.bed.start_server().unwrap();
        for way in [Way::Download, Way::Upload] {
            let r = pod.bed.bulk(&Bulk::tcp(way, "cubic", 1, 1, 3)).unwrap();
            println!("kernel {kernel}, {rtt_ms} ms RTT, control, no limit: {} at {:.2}x {rate}", way.name(), r.wire_bps / bits);
            assert!(r.wire_bps >= 1.5 * bits, "control: the unshaped path carries only {:.2}x {rate} ({})", r.wire_bps / bits, way.name());
        }
        pod.add(json!({"kubernetes.io/ingress-bandwidth": rate, "kubernetes.io/egress-bandwidth": rate}));
        for way in [Way::Download, Way::Upload] {
            let what = format!("kernel {kernel}, {rtt_ms} ms RTT, {rate} pod: TCP {}", way.name());
            let r = assert_bulk(&pod, &Bulk::tcp(way, "cubic", 1, 2, 5), bits, (LOWEST, f64::INFINITY), &what);
            let direction = if way == Way::Download { "ingress" } else { "egress" };
            let bound = bucket_bound(&pod, direction, bits, r.seconds);
            println!("{what}: the bucket's bound in {:.1} s: {bound:.3}", r.seconds);
            assert!(r.wire_bps / bits <= bound, "{what}: {:.3} of the limit on the wire, above the bucket's {bound:.3}", r.wire_bps / bits);
            let resent = r.transfer.resent_share(1448.0);
            assert!(resent <= 0.05, "{what}: {:.1}% resent", 100.0 * resent);
        }
        if rate == "10M" {
            let udp = pod.bed.bulk(&Bulk::udp(Way::Download, 20_000_000, 2, 4)).unwrap();
            let got = udp.transfer.goodput_bps / bits;
            println!("kernel {kernel}, {rtt_ms} ms RTT, 10M pod: UDP download offered at 2x: {got:.3} delivered, {:.3} on the wire", udp.wire_bps / bits);
            assert!((0.9..=1.03).contains(&got), "kernel {kernel}: UDP at 2x into a 10M pod: {got:.3} delivered");
        }
        pod.del();
    }
}

#[test]
fn rates_hold_on_a_lan() {
    cells(Duration::ZERO);
}

#[test]
fn rates_hold_10_ms_away() {
    cells(Duration::from_millis(5));
}

#[test]
fn rates_hold_under_an_ebpf_main_cni() {
    let kernel = bpf_ratelimit::node::kernel::release();
    let tx_bytes = |pod: &Pod| -> u64 {
        let path = format!("/sys/class/net/{}/statistics/tx_bytes", pod.bed.pod_host_veth);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")).trim().parse().unwrap()
    };
    let mut pod = Pod::new("kerncni");
    pod.bed.start_server().unwrap();
    pod.bed.emulate_ebpf_main_cni(Attach::Tc).unwrap();
    let tx0 = tx_bytes(&pod);
    let r = pod.bed.bulk(&Bulk::tcp(Way::Download, "cubic", 1, 1, 3)).unwrap();
    let tx = tx_bytes(&pod) - tx0;
    println!("kernel {kernel}, eBPF main CNI (tc), control, no limit: download at {:.2}x 10M; the host veth transmitted {tx} bytes", r.wire_bps / 10e6);
    assert!(r.wire_bps >= 1.5 * 10e6, "control: the unshaped download ran at only {:.2}x 10M", r.wire_bps / 10e6);
    assert!(tx < 1_000_000, "the emulated CNI did not skip the host side: its veth transmitted {tx} bytes");
    pod.add(json!({"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "10M"}));
    for way in [Way::Download, Way::Upload] {
        let what = format!("kernel {kernel}, eBPF main CNI (tc), 10M pod: TCP {}", way.name());
        let r = assert_bulk(&pod, &Bulk::tcp(way, "cubic", 1, 2, 5), 10e6, (LOWEST, f64::INFINITY), &what);
        let direction = if way == Way::Download { "ingress" } else { "egress" };
        let bound = bucket_bound(&pod, direction, 10e6, r.seconds);
        assert!(r.wire_bps / 10e6 <= bound, "{what}: {:.3} of the limit on the wire, above the bucket's {bound:.3}", r.wire_bps / 10e6);
        let resent = r.transfer.resent_share(1448.0);
        assert!(resent <= 0.05, "{what}: {:.1}% resent", 100.0 * resent);
    }
    pod.del();
}
