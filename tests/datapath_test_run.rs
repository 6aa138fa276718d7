//! Every branch of the shaping logic (ebpf/shaper.h), run in the real kernel
//! through BPF_PROG_TEST_RUN. The harness programs (ebpf/harness.bpf.c) call
//! the same shape_egress/shape_ingress as production, with the pod state in
//! an array map the test presets and reads back, and "now" set by the test.

use aya::maps::Array;
use aya::programs::{CgroupSkb, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use bpf_ratelimit::datapath::HARNESS_OBJ;
use bpf_ratelimit::state::{Bucket, PodState, POD_STATE_LAYOUT};

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct HarnessInput {
    pod: PodState,
    now: u64,
    current_rate: u64,
    pending: u64,
    last_window: u64,
    last_bytes: u64,
    window: u64,
    bulk: u32,
    out_is_bulk: u32,
    out_rate: u64,
    out_rwnd: u32,
    out_is_bulk_receiver: u32,
}

// SAFETY: repr(C), integers only.
unsafe impl aya::Pod for HarnessInput {}

const PASS: u32 = 1;
const DROP: u32 = 0;
const DROP_CN: u32 = 2;
const SEC: u64 = 1_000_000_000;

/// IPv4 header length + payload = skb->len as the program sees it.
const ETH_HLEN: usize = 14;

struct Harness {
    ebpf: Ebpf,
}

impl Harness {
    fn new() -> Self {
        assert!(unsafe { libc::geteuid() } == 0, "BPF_PROG_TEST_RUN tests need root");
        let mut ebpf = EbpfLoader::new().load(HARNESS_OBJ).expect("load harness object");
        for name in ["harness_egress", "harness_ingress", "harness_pacing", "harness_egress6"] {
            let p: &mut CgroupSkb = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().unwrap_or_else(|e| panic!("verifier refused {name}: {e:#}"));
        }
        Harness { ebpf }
    }

    fn set(&mut self, input: HarnessInput) {
        let mut map: Array<_, HarnessInput> = Array::try_from(self.ebpf.map_mut("harness").unwrap()).unwrap();
        map.set(0, input, 0).unwrap();
    }

    fn get(&self) -> HarnessInput {
        let map: Array<_, HarnessInput> = Array::try_from(self.ebpf.map("harness").unwrap()).unwrap();
        map.get(&0, 0).unwrap()
    }

    /// Runs one packet with an IP payload of `ip_len` bytes; returns the
    /// verdict and the packet as the program left it.
    fn run(&mut self, prog: &str, ip_len: usize, tos: u8) -> (u32, Vec<u8>) {
        self.run_proto(prog, ip_len, tos, UDP)
    }

    fn run_proto(&mut self, prog: &str, ip_len: usize, tos: u8, proto: u8) -> (u32, Vec<u8>) {
        self.run_on(prog, ip_len, tos, proto, None)
    }

    /// Runs one packet as if on interface `ifindex` of the calling thread's
    /// netns (None: loopback, test_run's default).
    fn run_on(&mut self, prog: &str, ip_len: usize, tos: u8, proto: u8, ifindex: Option<u32>) -> (u32, Vec<u8>) {
        self.run_packet_on(prog, ipv4_packet(ip_len, tos, proto), ifindex)
    }

    /// Runs one packet (from the Ethernet header on) through `prog`.
    fn run_packet(&mut self, prog: &str, pkt: Vec<u8>) -> (u32, Vec<u8>) {
        self.run_packet_on(prog, pkt, None)
    }

    fn run_packet_on(&mut self, prog: &str, pkt: Vec<u8>, ifindex: Option<u32>) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; pkt.len()];
        let p: &CgroupSkb = self.ebpf.program(prog).unwrap().try_into().unwrap();
        // struct __sk_buff up to and including ifindex (offset 40); test_run
        // only accepts the fields it lets a context set, the rest zero.
        let mut ctx = [0u8; 44];
        if let Some(i) = ifindex {
            ctx[40..44].copy_from_slice(&i.to_ne_bytes());
        }
        let opts = TestRunOptions {
            data_in: Some(&pkt),
            data_out: Some(&mut out),
            ctx_in: ifindex.map(|_| &ctx[..]),
            ..TestRunOptions::new()
        };
        let r = p.test_run(opts).unwrap_or_else(|e| panic!("test_run {prog}: {e:#}"));
        (r.return_value, out)
    }
}

const UDP: u8 = 17;
const TCP: u8 = 6;

fn ipv4_packet(ip_len: usize, tos: u8, proto: u8) -> Vec<u8> {
    let mut p = vec![0u8; ETH_HLEN + ip_len];
    p[12] = 0x08; // ethertype IPv4
    let ip = &mut p[ETH_HLEN..];
    ip[0] = 0x45;
    ip[1] = tos;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let sum = ipv4_header_sum(&ip[..20]);
    ip[10..12].copy_from_slice(&(!sum).to_be_bytes());
    p
}

const NOT_ECT: u8 = 0;
const ECT0: u8 = 2;
const CE: u8 = 3;

fn bucket(rate: u64, burst: u64, tokens: i64, last_ns: u64) -> Bucket {
    Bucket { rate, burst, tokens, last_ns, ..Default::default() }
}

/// BPF_PROG_TEST_RUN gives the skb the loopback device unless the context
/// names another, so the pod's interface is loopback here.
const TEST_RUN_IFINDEX: u32 = 1;

fn input(ingress: Bucket, egress: Bucket, now: u64) -> HarnessInput {
    HarnessInput {
        pod: PodState { layout: POD_STATE_LAYOUT, ingress, egress, ifindex: TEST_RUN_IFINDEX, ..Default::default() },
        now,
        ..Default::default()
    }
}

#[test]
fn unlimited_direction_passes_and_counts() {
    let mut h = Harness::new();
    h.set(input(Bucket::default(), Bucket::default(), 10 * SEC));
    assert_eq!(h.run("harness_egress", 1000, NOT_ECT).0, PASS);
    assert_eq!(h.run("harness_ingress", 500, NOT_ECT).0, PASS);
    let s = h.get().pod;
    assert_eq!((s.egress.passed_bytes, s.egress.passed_packets), (1000, 1));
    assert_eq!((s.ingress.passed_bytes, s.ingress.passed_packets), (500, 1));
    assert_eq!(s.egress.tokens, 0, "an unlimited bucket is not drawn from");
}

#[test]
fn conforming_packet_passes_and_takes_tokens() {
    let mut h = Harness::new();
    h.set(input(Bucket::default(), bucket(1_000_000, 100_000, 100_000, 5 * SEC), 5 * SEC));
    let (verdict, out) = h.run("harness_egress", 1500, ECT0);
    assert_eq!(verdict, PASS);
    assert_eq!(out[ETH_HLEN + 1] & 3, ECT0, "a full bucket does not mark");
    let e = h.get().pod.egress;
    assert_eq!(e.tokens, 98_500);
    assert_eq!((e.passed_bytes, e.passed_packets, e.dropped_packets, e.marked_packets), (1500, 1, 0, 0));
}

#[test]
fn low_bucket_marks_ecn_capable_packets_ce_and_passes_others_unmarked() {
    for prog in ["harness_egress", "harness_ingress"] {
        let mut h = Harness::new();
        let low = bucket(1_000_000, 100_000, 40_000, SEC);
        h.set(input(low, low, SEC));
        let (verdict, out) = h.run(prog, 1500, ECT0);
        assert_eq!(verdict, PASS, "{prog}");
        assert_eq!(out[ETH_HLEN + 1] & 3, CE, "{prog}: ECT packet below half the burst is marked CE");
        assert_eq!(ipv4_header_sum(&out[ETH_HLEN..ETH_HLEN + 20]), 0xffff, "{prog}: the IP checksum is updated with the mark");
        let (verdict, out) = h.run(prog, 1500, NOT_ECT);
        assert_eq!(verdict, PASS, "{prog}");
        assert_eq!(out[ETH_HLEN + 1] & 3, NOT_ECT, "{prog}: non-ECT packet passes unmarked");
        let s = h.get().pod;
        let b = if prog == "harness_egress" { s.egress } else { s.ingress };
        assert_eq!((b.marked_packets, b.marked_bytes), (1, 1500), "{prog}");
        assert_eq!(b.passed_packets, 2, "{prog}");
        assert_eq!(b.tokens, 37_000, "{prog}");
    }
}

#[test]
fn exceeding_packet_is_dropped_with_cn_on_egress_and_plainly_on_ingress() {
    let mut h = Harness::new();
    let empty = bucket(1_000_000, 100_000, 1_000, SEC);
    h.set(input(empty, empty, SEC));
    assert_eq!(h.run("harness_egress", 1500, NOT_ECT).0, DROP_CN);
    assert_eq!(h.run("harness_ingress", 1500, NOT_ECT).0, DROP);
    let s = h.get().pod;
    for b in [s.egress, s.ingress] {
        assert_eq!((b.dropped_packets, b.dropped_bytes, b.passed_packets), (1, 1500, 0));
        assert_eq!(b.tokens, 1_000, "a dropped packet takes no tokens");
    }
}

#[test]
fn skb_larger_than_the_burst_passes_a_full_bucket_and_leaves_debt() {
    let mut h = Harness::new();
    // test_run takes packets up to a page, so a 3000-byte skb against a
    // 1000-byte burst stands in for a 64 KB GSO skb against a 16 KB burst.
    h.set(input(Bucket::default(), bucket(1_000_000, 1_000, 1_000, SEC), SEC));
    assert_eq!(h.run("harness_egress", 3_000, NOT_ECT).0, PASS);
    assert_eq!(h.get().pod.egress.tokens, 1_000 - 3_000);
    // In debt, even a small packet waits for the refill.
    assert_eq!(h.run("harness_egress", 100, NOT_ECT).0, DROP_CN);
}

#[test]
fn refill_adds_rate_times_elapsed_up_to_the_burst() {
    let mut h = Harness::new();
    // 1 MB/s; 10 ms later 10_000 bytes are back.
    h.set(input(Bucket::default(), bucket(1_000_000, 100_000, 0, SEC), SEC + 10_000_000));
    assert_eq!(h.run("harness_egress", 1000, NOT_ECT).0, PASS);
    let e = h.get().pod.egress;
    assert_eq!(e.tokens, 9_000);
    assert_eq!(e.last_ns, SEC + 10_000_000);

    // Whole seconds and the remainder both count: 2.5 s at 30 kB/s = 75 kB.
    h.set(input(Bucket::default(), bucket(30_000, 1_000_000, 0, SEC), SEC + 2_500_000_000));
    h.run("harness_egress", 1000, NOT_ECT);
    assert_eq!(h.get().pod.egress.tokens, 74_000);

    // Long idle: capped at the burst.
    h.set(input(Bucket::default(), bucket(1_000_000, 100_000, -50_000, SEC), 5000 * SEC));
    h.run("harness_egress", 1000, NOT_ECT);
    assert_eq!(h.get().pod.egress.tokens, 99_000);
}

#[test]
fn a_clock_behind_last_refill_adds_nothing() {
    let mut h = Harness::new();
    h.set(input(bucket(1_000_000, 100_000, 5_000, 2 * SEC), Bucket::default(), SEC));
    assert_eq!(h.run("harness_ingress", 1000, NOT_ECT).0, PASS);
    let i = h.get().pod.ingress;
    assert_eq!(i.tokens, 4_000);
    assert_eq!(i.last_ns, 2 * SEC, "last_ns never moves backwards");
}

#[test]
fn sustained_overload_passes_the_rate_and_drops_the_rest() {
    let mut h = Harness::new();
    // 1 MB/s, 10 kB burst, a 1000-byte packet every 0.5 ms (2 MB/s) for 1 s.
    let mut state = input(bucket(1_000_000, 10_000, 10_000, SEC), Bucket::default(), SEC);
    h.set(state);
    for i in 1..=2000u64 {
        state = h.get();
        state.now = SEC + i * 500_000;
        h.set(state);
        h.run("harness_ingress", 1000, NOT_ECT);
    }
    let i = h.get().pod.ingress;
    // rate x 1 s + burst, within one packet.
    assert!(i.passed_bytes <= 1_010_000 && i.passed_bytes >= 1_000_000, "passed {}", i.passed_bytes);
    assert_eq!(i.passed_bytes + i.dropped_bytes, 2_000_000);
}


#[test]
fn egress_tcp_over_the_rate_passes_on_credit_down_to_one_burst_of_debt() {
    let mut h = Harness::new();
    h.set(input(Bucket::default(), bucket(1_000_000, 3_000, 1_000, SEC), SEC));
    // TCP is charged its payload: the skb less 52 bytes of IPv4 + TCP headers.
    // Over the rate it passes on credit, into debt.
    assert_eq!(h.run_proto("harness_egress", 1500, NOT_ECT, TCP).0, PASS);
    assert_eq!(h.get().pod.egress.tokens, 1_000 - 1_448);
    assert_eq!(h.run_proto("harness_egress", 2500, NOT_ECT, TCP).0, PASS);
    assert_eq!(h.get().pod.egress.tokens, 1_000 - 1_448 - 2_448);
    // Beyond one burst of debt, TCP is dropped too.
    assert_eq!(h.run_proto("harness_egress", 200, NOT_ECT, TCP).0, DROP_CN);
    // UDP is charged the whole packet and never borrows; ingress never borrows.
    assert_eq!(h.run_proto("harness_egress", 100, NOT_ECT, UDP).0, DROP_CN);
    let e = h.get().pod.egress;
    assert_eq!((e.passed_packets, e.dropped_packets, e.dropped_bytes), (2, 2, 248));
    h.set(input(bucket(1_000_000, 3_000, 1_000, SEC), Bucket::default(), SEC));
    assert_eq!(h.run_proto("harness_ingress", 1500, NOT_ECT, TCP).0, DROP);
}

/// A veth pair in a netns of its own, for runs on an interface that is not
/// loopback; removed on drop.
struct TestInterface {
    netns: String,
    ifindex: u32,
}

impl TestInterface {
    fn new() -> Self {
        let netns = format!("brl-tr-{}", std::process::id());
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip").args(args).status().expect("ip");
            assert!(st.success(), "ip {args:?} failed");
        };
        ip(&["netns", "add", &netns]);
        ip(&["-n", &netns, "link", "add", "pod0", "type", "veth", "peer", "name", "peer0"]);
        let path = std::path::PathBuf::from(format!("/var/run/netns/{netns}"));
        let ifindex = bpf_ratelimit::netns::in_netns(&path, || bpf_ratelimit::netns::ifindex("pod0")).unwrap();
        TestInterface { netns, ifindex }
    }

    fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/var/run/netns/{}", self.netns))
    }
}

impl Drop for TestInterface {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

#[test]
fn only_the_pod_interface_is_shaped_and_charged() {
    let mut h = Harness::new();
    let tight = bucket(1_000_000, 1_000, 0, SEC);
    let dev = TestInterface::new();
    let netns = dev.path();

    // The pod's interface is recorded: loopback traffic (a sidecar over
    // 127.0.0.1 or the pod's own address) passes uncharged both ways.
    let mut state = input(tight, tight, SEC);
    state.pod.ifindex = dev.ifindex;
    h.set(state);
    for prog in ["harness_egress", "harness_ingress"] {
        assert_eq!(h.run_proto(prog, 1500, NOT_ECT, TCP).0, PASS, "{prog}: loopback is not shaped");
    }
    let s = h.get().pod;
    for b in [s.egress, s.ingress] {
        assert_eq!((b.tokens, b.passed_packets, b.dropped_packets), (0, 0, 0), "loopback is not charged or counted");
    }
    // The same packets on the pod's interface are shaped.
    let verdicts = bpf_ratelimit::netns::in_netns(&netns, || {
        Ok((
            h.run_on("harness_egress", 1500, NOT_ECT, UDP, Some(dev.ifindex)).0,
            h.run_on("harness_ingress", 1500, NOT_ECT, TCP, Some(dev.ifindex)).0,
        ))
    })
    .unwrap();
    assert_eq!(verdicts, (DROP_CN, DROP));

    // With no interface recorded (0), everything but loopback is shaped.
    let mut state = input(tight, tight, SEC);
    state.pod.ifindex = 0;
    h.set(state);
    assert_eq!(h.run_proto("harness_egress", 1500, NOT_ECT, UDP).0, PASS, "loopback passes");
    let dropped = bpf_ratelimit::netns::in_netns(&netns, || {
        Ok(h.run_on("harness_ingress", 1500, NOT_ECT, TCP, Some(dev.ifindex)).0)
    })
    .unwrap();
    assert_eq!(dropped, DROP);
    assert_eq!(h.get().pod.ingress.dropped_packets, 1);
    assert_eq!(h.get().pod.egress.passed_packets, 0);
}

#[test]
fn egress_tcp_is_marked_only_when_borrowing_udp_when_low() {
    let mut h = Harness::new();
    // Below half the burst but not in debt: paced TCP runs here by design.
    h.set(input(Bucket::default(), bucket(1_000_000, 100_000, 40_000, SEC), SEC));
    let (verdict, out) = h.run_proto("harness_egress", 1500, ECT0, TCP);
    assert_eq!((verdict, out[ETH_HLEN + 1] & 3), (PASS, ECT0), "low bucket: TCP passes unmarked");
    let (verdict, out) = h.run_proto("harness_egress", 1500, ECT0, UDP);
    assert_eq!((verdict, out[ETH_HLEN + 1] & 3), (PASS, CE), "low bucket: ECN-capable UDP is marked");
    // Borrowing: an ECN-capable TCP skb is marked CE, others pass unmarked.
    h.set(input(Bucket::default(), bucket(1_000_000, 100_000, 100, SEC), SEC));
    let (verdict, out) = h.run_proto("harness_egress", 1500, ECT0, TCP);
    assert_eq!((verdict, out[ETH_HLEN + 1] & 3), (PASS, CE));
    let (verdict, out) = h.run_proto("harness_egress", 1500, NOT_ECT, TCP);
    assert_eq!((verdict, out[ETH_HLEN + 1] & 3), (PASS, NOT_ECT));
    assert_eq!(h.get().pod.egress.marked_packets, 1);
}

const UNPACED: u64 = 0xffff_ffff;
/// One sender window of the pacing policy, 2^27 ns.
const WINDOW_NS: u64 = 1 << 27;

impl Harness {
    /// Evaluates the pacing and receive-window policies for `state`; returns
    /// the state with their outputs filled in.
    fn evaluate(&mut self, state: HarnessInput) -> HarnessInput {
        self.set(state);
        let p: &CgroupSkb = self.ebpf.program("harness_pacing").unwrap().try_into().unwrap();
        let pkt = ipv4_packet(100, 0, UDP);
        p.test_run(TestRunOptions { data_in: Some(&pkt), ..TestRunOptions::new() }).unwrap();
        self.get()
    }

    /// The pacing policy for `state`: (is_bulk_sender, pacing_rate).
    fn pacing(&mut self, state: HarnessInput) -> (bool, u64) {
        let out = self.evaluate(state);
        (out.out_is_bulk != 0, out.out_rate)
    }
}

fn pacing_input(tokens: i64, senders: u32, current_rate: u64, bulk: bool) -> HarnessInput {
    let mut s = input(Bucket::default(), bucket(1_000_000, 100_000, tokens, SEC), SEC);
    s.pod.senders_now = senders;
    s.current_rate = current_rate;
    s.bulk = bulk as u32;
    s
}

#[test]
fn pacing_honours_the_burst_with_hysteresis() {
    let mut h = Harness::new();
    // At least 3/4 full: full speed, whatever the socket had.
    assert_eq!(h.pacing(pacing_input(75_000, 1, 500_000, true)).1, UNPACED);
    // Between 1/4 and 3/4: the socket keeps its mode.
    assert_eq!(h.pacing(pacing_input(50_000, 1, UNPACED, true)).1, UNPACED);
    assert_eq!(h.pacing(pacing_input(50_000, 1, 500_000, true)).1, 1_000_000);
    // Below 1/4: paced at the share.
    assert_eq!(h.pacing(pacing_input(24_999, 1, UNPACED, true)).1, 1_000_000);
    // The skb about to leave counts: 80 kB in the bucket less a 60 kB skb is below 1/4.
    let mut s = pacing_input(80_000, 1, UNPACED, true);
    s.pending = 60_000;
    assert_eq!(h.pacing(s).1, 1_000_000);
    // The level is the one after the refill an idle period earned: 10 ms at
    // 1 MB/s adds 10 kB to 70 kB.
    let mut s = pacing_input(70_000, 1, 500_000, true);
    s.now = SEC + 5_000_000;
    assert_eq!(h.pacing(s).1, UNPACED);
}

#[test]
fn pacing_splits_the_rate_among_bulk_senders_and_repays_debt() {
    let mut h = Harness::new();
    // Four bulk senders, counted in this window or the one before.
    assert_eq!(h.pacing(pacing_input(0, 4, 1, true)).1, 250_000);
    let mut s = pacing_input(0, 0, 1, true);
    s.pod.senders_before = 4;
    assert_eq!(h.pacing(s).1, 250_000);
    // A light sender is paced as one more bulk sender; alone, it gets the rate.
    assert_eq!(h.pacing(pacing_input(0, 4, 1, false)).1, 200_000);
    assert_eq!(h.pacing(pacing_input(0, 0, 1, false)).1, 1_000_000);
    assert_eq!(h.pacing(pacing_input(0, 0, 1, true)).1, 1_000_000);
    // In debt, shares shrink in proportion: half a burst owed, half the share;
    // a burst or more owed, an eighth.
    assert_eq!(h.pacing(pacing_input(-50_000, 1, 1, true)).1, 500_000);
    assert_eq!(h.pacing(pacing_input(-100_000, 1, 1, true)).1, 125_000);
    assert_eq!(h.pacing(pacing_input(-99_999, 1, 1, true)).1, 125_000);
}

#[test]
fn senders_are_bulk_from_half_their_share() {
    let mut h = Harness::new();
    let window = (5 * SEC) / WINDOW_NS;
    // One bulk sender at 1 MB/s: its share per window is ~134 kB.
    let share_bytes = (1_000_000u64 * WINDOW_NS) / SEC;
    let classify = |h: &mut Harness, last_window: u64, last_bytes: u64| {
        let mut s = pacing_input(0, 1, 1, true);
        s.last_window = last_window;
        s.last_bytes = last_bytes;
        s.window = window;
        h.pacing(s).0
    };
    assert!(classify(&mut h, 0, 0), "a new socket counts as bulk for its first window");
    assert!(classify(&mut h, window - 1, share_bytes.div_ceil(2)), "half its share in the last window: bulk");
    assert!(!classify(&mut h, window - 1, share_bytes / 2 - 100), "less: light");
    assert!(!classify(&mut h, window - 2, share_bytes), "silent for a window: light");
}

#[test]
fn a_queued_ingress_is_counted_not_policed() {
    let mut h = Harness::new();
    let mut state = input(bucket(1_000_000, 1_000, 0, SEC), Bucket::default(), SEC);
    state.pod.flags = bpf_ratelimit::state::POD_INGRESS_QUEUED;
    h.set(state);
    // An empty bucket would drop; the host-side queue shapes instead.
    assert_eq!(h.run_proto("harness_ingress", 1500, ECT0, TCP).0, PASS);
    let i = h.get().pod.ingress;
    assert_eq!((i.passed_packets, i.passed_bytes, i.dropped_packets, i.marked_packets, i.tokens), (1, 1500, 0, 0, 0));
}

#[test]
fn receive_windows_split_the_rate_among_bulk_receivers() {
    let mut h = Harness::new();
    let rwnd = |h: &mut Harness, rate: u64, receivers: u32, bulk: bool| {
        let mut s = input(bucket(rate, 100_000, 0, SEC), Bucket::default(), SEC);
        s.pod.flags = bpf_ratelimit::state::POD_INGRESS_QUEUED;
        s.pod.receivers_now = receivers;
        s.bulk = bulk as u32;
        h.evaluate(s).out_rwnd
    };
    // 125 MB/s (1G) for 5 ms, split among bulk receivers.
    assert_eq!(rwnd(&mut h, 125_000_000, 1, true), 625_000);
    assert_eq!(rwnd(&mut h, 125_000_000, 5, true), 125_000);
    // At least four segments, however many share.
    assert_eq!(rwnd(&mut h, 1_250_000, 8, true), 4 * 1448);
    // A light receiver (a request awaiting its response) gets 16 KiB.
    assert_eq!(rwnd(&mut h, 1_250_000, 8, false), 16 * 1024);
}

#[test]
fn receivers_are_bulk_from_half_their_share() {
    let mut h = Harness::new();
    let window = (5 * SEC) / WINDOW_NS;
    let share_bytes = (1_000_000u64 * WINDOW_NS) / SEC;
    let classify = |h: &mut Harness, last_window: u64, last_bytes: u64| {
        let mut s = input(bucket(1_000_000, 100_000, 0, SEC), Bucket::default(), SEC);
        s.pod.receivers_now = 1;
        s.last_window = last_window;
        s.last_bytes = last_bytes;
        s.window = window;
        h.evaluate(s).out_is_bulk_receiver != 0
    };
    assert!(!classify(&mut h, 0, 0), "a new socket starts light: its first response is not held back");
    assert!(classify(&mut h, window - 1, share_bytes.div_ceil(2)), "half its share in the last window: bulk");
    assert!(!classify(&mut h, window - 1, share_bytes / 2 - 100), "less: light");
    assert!(!classify(&mut h, window - 2, share_bytes), "silent for a window: light");
}

fn ipv4_header_sum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn ipv6_packet(ip_len: usize, tclass: u8, proto: u8) -> Vec<u8> {
    let mut p = vec![0u8; ETH_HLEN + ip_len];
    p[12..14].copy_from_slice(&[0x86, 0xdd]); // ethertype IPv6
    let ip = &mut p[ETH_HLEN..];
    ip[0] = 0x60 | (tclass >> 4);
    ip[1] = tclass << 4;
    ip[4..6].copy_from_slice(&((ip_len - 40) as u16).to_be_bytes());
    ip[6] = proto;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    ip[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p
}

fn ipv6_ecn(pkt: &[u8]) -> u8 {
    (pkt[ETH_HLEN + 1] >> 4) & 3
}

#[test]
fn ipv6_is_charged_marked_and_dropped_in_both_directions() {
    for prog in ["harness_egress6", "harness_ingress"] {
        let mut h = Harness::new();
        // Full bucket: passes, charged the whole IPv6 packet, unmarked.
        let full = bucket(1_000_000, 100_000, 100_000, SEC);
        h.set(input(full, full, SEC));
        let (verdict, out) = h.run_packet(prog, ipv6_packet(1500, ECT0, UDP));
        assert_eq!(verdict, PASS, "{prog}");
        assert_eq!(ipv6_ecn(&out), ECT0, "{prog}: a full bucket does not mark");
        let s = h.get().pod;
        let b = if prog == "harness_ingress" { s.ingress } else { s.egress };
        assert_eq!((b.tokens, b.passed_bytes, b.passed_packets), (98_500, 1500, 1), "{prog}");

        // Low bucket: an ECN-capable packet is marked CE in its traffic class.
        let low = bucket(1_000_000, 100_000, 40_000, SEC);
        h.set(input(low, low, SEC));
        let (verdict, out) = h.run_packet(prog, ipv6_packet(1500, ECT0, UDP));
        assert_eq!(verdict, PASS, "{prog}");
        assert_eq!(ipv6_ecn(&out), CE, "{prog}: IPv6 ECT packet below half the burst is marked CE");
        assert_eq!(out[ETH_HLEN] >> 4, 6, "{prog}: still IPv6");
        let (_, out) = h.run_packet(prog, ipv6_packet(1500, NOT_ECT, UDP));
        assert_eq!(ipv6_ecn(&out), NOT_ECT, "{prog}: non-ECT passes unmarked");
        let s = h.get().pod;
        let b = if prog == "harness_ingress" { s.ingress } else { s.egress };
        assert_eq!((b.marked_packets, b.marked_bytes), (1, 1500), "{prog}");

        // Empty bucket: dropped (with congestion notification on egress).
        let empty = bucket(1_000_000, 100_000, 1_000, SEC);
        h.set(input(empty, empty, SEC));
        let want = if prog == "harness_ingress" { DROP } else { DROP_CN };
        assert_eq!(h.run_packet(prog, ipv6_packet(1500, NOT_ECT, UDP)).0, want, "{prog}");
        let s = h.get().pod;
        let b = if prog == "harness_ingress" { s.ingress } else { s.egress };
        assert_eq!((b.dropped_packets, b.dropped_bytes, b.tokens), (1, 1500, 1_000), "{prog}");
    }
}

#[test]
fn ipv6_egress_tcp_is_charged_its_payload() {
    let mut h = Harness::new();
    h.set(input(Bucket::default(), bucket(1_000_000, 100_000, 100_000, SEC), SEC));
    assert_eq!(h.run_packet("harness_egress6", ipv6_packet(1500, NOT_ECT, TCP)).0, PASS);
    // 72 bytes of IPv6 + TCP headers with timestamps are not charged.
    assert_eq!(h.get().pod.egress.tokens, 100_000 - (1500 - 72));
}

#[test]
fn a_fresh_pod_with_last_ns_0_starts_with_a_full_bucket() {
    use bpf_ratelimit::limits::{Limit, Limits};
    let mut h = Harness::new();
    let limits = Limits { ingress: Some(Limit { rate: 8_000_000, burst: 800_000 }), egress: Some(Limit { rate: 8_000_000, burst: 800_000 }) };
    let pod = PodState::new(&limits, TEST_RUN_IFINDEX);
    assert_eq!((pod.ingress.last_ns, pod.egress.last_ns), (0, 0));
    // Whatever the kernel clock reads at the first packet (just booted, or
    // up for days), the bucket is full: never more, never less.
    for now in [1_000, 5 * SEC, 100_000 * SEC] {
        h.set(HarnessInput { pod, now, ..Default::default() });
        assert_eq!(h.run("harness_ingress", 1000, NOT_ECT).0, PASS, "now {now}");
        let i = h.get().pod.ingress;
        assert_eq!((i.last_ns, i.tokens), (now, 100_000 - 1000), "now {now}");
    }
    // Even an emptied bucket with last_ns 0 is refilled to the burst, the
    // elapsed time capped at MAX_REFILL_NS so rate x elapsed cannot overflow.
    let mut empty = pod;
    empty.ingress.tokens = 0;
    empty.ingress.rate = 12_500_000_000; // 100 Gbit/s, the largest rate
    h.set(HarnessInput { pod: empty, now: u64::MAX / 2, ..Default::default() });
    assert_eq!(h.run("harness_ingress", 1000, NOT_ECT).0, PASS);
    assert_eq!(h.get().pod.ingress.tokens, 100_000 - 1000);
}
