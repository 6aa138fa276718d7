//! Every branch of the shaping logic (ebpf/shaper.h), run in the real kernel
//! through BPF_PROG_TEST_RUN. The harness programs (ebpf/harness.bpf.c) call
//! the same shape_egress/shape_ingress/guard_egress and policies as
//! production, with the interface state in an array map the test presets
//! and reads back, and "now" set by the test.

use aya::maps::{Array, HashMap};
use aya::programs::{CgroupSkb, SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use bpf_ratelimit::datapath::attach::HARNESS_OBJ;
use bpf_ratelimit::datapath::state::{Bucket, FlowCounts, HostGuard, IfaceKey, IfaceState, QueueGate, IFACE_INGRESS_QUEUED, IFACE_MTU_SHIFT, STATE_LAYOUT};
use bpf_ratelimit::policy::operator::LimitBasis;

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct FlowClass {
    window: u64,
    bytes: u64,
    counted_window: u64,
}

/// The harness's input and outputs: the interface's state (in the map
/// `harness_iface`: kernels before 6.x refuse a spin lock nested in a map
/// value) and the rest (in `harness`), which the fields reach through.
#[derive(Clone, Copy, Default, Debug)]
struct HarnessInput {
    iface: IfaceState,
    rest: HarnessRest,
}

/// The `harness` map's value (ebpf/harness.bpf.c: struct harness_input).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct HarnessRest {
    now: u64,
    current_rate: u64,
    pending: u64,
    counted: u32,
    rtt_us: u32,
    mss: u32,
    ipv6: u32,
    flow: FlowClass,
    flow_len: u64,
    out_rate: u64,
    out_wire: u64,
    out_rwnd: u32,
    out_cwnd: u32,
    cgroup_id: u64,
    half: u32,
    pad: u32,
    queued: QueuedFlow,
    out_light: u64,
    band: LightWindow,
    out_room: u64,
}

/// The light frames a pod's first band took in a window (struct light_window).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct LightWindow {
    window: u64,
    bytes: u64,
}

/// What the queue's door remembers of a flow (ebpf/shaper.h: struct queued_flow).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct QueuedFlow {
    window: u64,
    bytes: u32,
    prev_bytes: u32,
    prev_prev_bytes: u32,
    heavy: u32,
}

// SAFETY: repr(C), integers only.
unsafe impl aya::Pod for HarnessRest {}

impl std::ops::Deref for HarnessInput {
    type Target = HarnessRest;
    fn deref(&self) -> &HarnessRest {
        &self.rest
    }
}

impl std::ops::DerefMut for HarnessInput {
    fn deref_mut(&mut self) -> &mut HarnessRest {
        &mut self.rest
    }
}

#[repr(transparent)]
#[derive(Clone, Copy)]
struct Key(IfaceKey);
// SAFETY: repr(C) integers.
unsafe impl aya::Pod for Key {}
#[repr(transparent)]
#[derive(Clone, Copy)]
struct Value(IfaceState);
// SAFETY: repr(C) integers.
unsafe impl aya::Pod for Value {}
#[repr(transparent)]
#[derive(Clone, Copy)]
struct Guard(HostGuard);
// SAFETY: repr(C) integers.
unsafe impl aya::Pod for Guard {}
#[repr(transparent)]
#[derive(Clone, Copy)]
struct Door(QueueGate);
// SAFETY: repr(C) integers.
unsafe impl aya::Pod for Door {}

const PASS: u32 = 1;
const DROP: u32 = 0;
const DROP_CN: u32 = 2;
const TC_UNSPEC: u32 = u32::MAX; // -1
const TC_SHOT: u32 = 2;
const SEC: u64 = 1_000_000_000;
const ETH_HLEN: usize = 14;
const UDP: u8 = 17;
const TCP: u8 = 6;
const ICMP: u8 = 1;
const NOT_ECT: u8 = 0;
const ECT0: u8 = 2;
const CE: u8 = 3;
const UNPACED: u64 = 0xffff_ffff;
/// One classification window, 2^26 ns.
const WINDOW_NS: u64 = 1 << 26;

struct Harness {
    ebpf: Ebpf,
}

/// An skb's GSO fields, as test_run lets a context set them.
#[derive(Clone, Copy, Default)]
struct Gso {
    segs: u32,
    size: u32,
}

impl Harness {
    fn new() -> Self {
        assert!(unsafe { libc::geteuid() } == 0, "BPF_PROG_TEST_RUN tests need root");
        let mut ebpf = EbpfLoader::new().load(HARNESS_OBJ).expect("load harness object");
        for name in ["harness_egress", "harness_ingress", "harness_policy", "harness_lookup", "harness_light"] {
            let p: &mut CgroupSkb = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().unwrap_or_else(|e| panic!("verifier refused {name}: {e:#}"));
        }
        for name in ["harness_guard", "count_wire", "harness_door"] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().unwrap_or_else(|e| panic!("verifier refused {name}: {e:#}"));
        }
        Harness { ebpf }
    }

    fn set(&mut self, input: HarnessInput) {
        let mut map: Array<_, HarnessRest> = Array::try_from(self.ebpf.map_mut("harness").unwrap()).unwrap();
        map.set(0, input.rest, 0).unwrap();
        let mut map: Array<_, Value> = Array::try_from(self.ebpf.map_mut("harness_iface").unwrap()).unwrap();
        map.set(0, Value(input.iface), 0).unwrap();
    }

    fn get(&self) -> HarnessInput {
        let map: Array<_, HarnessRest> = Array::try_from(self.ebpf.map("harness").unwrap()).unwrap();
        let rest = map.get(&0, 0).unwrap();
        let map: Array<_, Value> = Array::try_from(self.ebpf.map("harness_iface").unwrap()).unwrap();
        HarnessInput { iface: map.get(&0, 0).unwrap().0, rest }
    }

    fn set_guard(&mut self, guard: HostGuard) {
        let mut map: Array<_, Guard> = Array::try_from(self.ebpf.map_mut("harness_guards").unwrap()).unwrap();
        map.set(0, Guard(guard), 0).unwrap();
    }

    fn set_door(&mut self, door: QueueGate) {
        let mut map: Array<_, Door> = Array::try_from(self.ebpf.map_mut("harness_doors").unwrap()).unwrap();
        map.set(0, Door(door), 0).unwrap();
    }

    fn door(&self) -> QueueGate {
        let map: Array<_, Door> = Array::try_from(self.ebpf.map("harness_doors").unwrap()).unwrap();
        map.get(&0, 0).unwrap().0
    }

    fn guard(&self) -> HostGuard {
        let map: Array<_, Guard> = Array::try_from(self.ebpf.map("harness_guards").unwrap()).unwrap();
        map.get(&0, 0).unwrap().0
    }

    /// Runs one packet (from its Ethernet header on) through `prog`, on
    /// interface `ifindex` (None: test_run's loopback) with `gso`.
    fn run_with(&mut self, prog: &str, pkt: Vec<u8>, ifindex: Option<u32>, gso: Gso) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; pkt.len()];
        // struct __sk_buff: ifindex at 40, gso_segs at 164, gso_size at 176;
        // test_run accepts only the fields a context may set, the rest zero.
        let mut ctx = [0u8; 192];
        if let Some(i) = ifindex {
            ctx[40..44].copy_from_slice(&i.to_ne_bytes());
        }
        ctx[164..168].copy_from_slice(&gso.segs.to_ne_bytes());
        ctx[176..180].copy_from_slice(&gso.size.to_ne_bytes());
        let with_ctx = ifindex.is_some() || gso.segs != 0 || gso.size != 0;
        let opts = TestRunOptions {
            data_in: Some(&pkt),
            data_out: Some(&mut out),
            ctx_in: with_ctx.then_some(&ctx[..]),
            ..TestRunOptions::new()
        };
        let r = if ["harness_guard", "count_wire", "harness_door"].contains(&prog) {
            let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
            p.test_run(opts)
        } else {
            let p: &CgroupSkb = self.ebpf.program(prog).unwrap().try_into().unwrap();
            p.test_run(opts)
        };
        (r.unwrap_or_else(|e| panic!("test_run {prog}: {e:#}")).return_value, out)
    }

    fn run_packet(&mut self, prog: &str, pkt: Vec<u8>) -> (u32, Vec<u8>) {
        self.run_with(prog, pkt, None, Gso::default())
    }

    /// One IPv4 packet of `ip_len` bytes.
    fn run(&mut self, prog: &str, ip_len: usize, tos: u8, proto: u8) -> (u32, Vec<u8>) {
        self.run_packet(prog, ipv4_packet(ip_len, tos, proto))
    }

    /// Evaluates the sock_ops policies (and classifies `flow` if `flow_len`).
    fn evaluate(&mut self, state: HarnessInput) -> HarnessInput {
        self.set(state);
        self.run("harness_policy", 100, 0, UDP);
        self.get()
    }
}

/// An IPv4 packet with `ip_len` bytes of IP header and payload; TCP gets a
/// 32-byte header (timestamps), UDP 8.
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
    if proto == TCP && ip_len >= 40 {
        ip[20 + 12] = 8 << 4; // data offset: 8 words
    }
    let sum = ipv4_header_sum(&ip[..20]);
    ip[10..12].copy_from_slice(&(!sum).to_be_bytes());
    p
}

fn ipv4_header_sum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// An IPv6 packet of `ip_len` bytes whose next headers are `ext` (each
/// (type, 8-byte units less one) for hop-by-hop/routing/destination options,
/// fragment is 8 bytes, AH (type 51) in 4-byte units less two) then `proto`.
fn ipv6_packet_ext(ip_len: usize, tclass: u8, ext: &[(u8, u8)], proto: u8) -> Vec<u8> {
    let mut p = vec![0u8; ETH_HLEN + ip_len];
    p[12..14].copy_from_slice(&[0x86, 0xdd]);
    let ip = &mut p[ETH_HLEN..];
    ip[0] = 0x60 | (tclass >> 4);
    ip[1] = tclass << 4;
    ip[4..6].copy_from_slice(&((ip_len - 40) as u16).to_be_bytes());
    ip[7] = 64;
    ip[8] = 0xfd;
    ip[24] = 0xfd;
    let mut at = 40;
    let mut next_field = 6;
    for (kind, len) in ext {
        ip[next_field] = *kind;
        ip[at + 1] = *len;
        next_field = at;
        at += match kind {
            44 => 8,
            51 => (usize::from(*len) + 2) * 4,
            _ => (usize::from(*len) + 1) * 8,
        };
    }
    ip[next_field] = proto;
    if proto == TCP {
        ip[at + 12] = 8 << 4;
    }
    p
}

fn ipv6_ecn(pkt: &[u8]) -> u8 {
    (pkt[ETH_HLEN + 1] >> 4) & 3
}

fn bucket(rate: u64, burst: u64, tokens: i64, last_ns: u64) -> Bucket {
    Bucket { rate, burst, tokens, last_ns, ..Default::default() }
}

fn input(ingress: Bucket, egress: Bucket, now: u64) -> HarnessInput {
    HarnessInput { iface: IfaceState { layout: STATE_LAYOUT, ingress, egress, ..Default::default() }, rest: HarnessRest { now, ..Default::default() } }
}

// ---- Bytes on the wire ----------------------------------------------------

#[test]
fn a_frame_is_charged_its_ethernet_ip_and_l4_headers_and_payload() {
    let mut h = Harness::new();
    h.set(input(Bucket::default(), Bucket::default(), SEC));
    // In a cgroup hook the skb starts at IP: 14 bytes of Ethernet are added.
    for (proto, len) in [(TCP, 1500), (UDP, 100), (ICMP, 84)] {
        h.run("harness_egress", len, 0, proto);
        assert_eq!(h.get().out_wire, len as u64 + 14, "proto {proto}");
    }
    h.run_packet("harness_egress", ipv6_packet_ext(1500, 0, &[], UDP));
    assert_eq!(h.get().out_wire, 1514);
    // On tc the skb holds its Ethernet header already.
    h.set_guard(HostGuard::default());
    h.run_packet("harness_guard", ipv4_packet(1500, 0, TCP));
    assert_eq!(h.get().out_wire, 1514);
}

/// The cgroup hooks see a datagram whole, before the IP layer fragments it
/// (and after it reassembles one); the wire and the host-side guard see
/// every fragment with its own headers. With the interface's MTU known,
/// the datagram is charged as its fragments, in both directions.
#[test]
fn a_datagram_over_the_mtu_is_charged_as_its_fragments() {
    let mut h = Harness::new();
    let mut i = input(Bucket::default(), Bucket::default(), SEC);
    i.iface.flags = IFACE_INGRESS_QUEUED | (1500 << IFACE_MTU_SHIFT);
    h.set(i);
    for prog in ["harness_egress", "harness_ingress"] {
        // 3000 bytes of IPv4: 2980 of payload in fragments of 1480, 1480, 20.
        h.run(prog, 3000, 0, UDP);
        assert_eq!(h.get().out_wire, 3 * (14 + 20) + 2980, "{prog}");
        // Within the MTU: one frame.
        h.run(prog, 1500, 0, UDP);
        assert_eq!(h.get().out_wire, 1514, "{prog}");
        // IPv6: 1448 bytes a fragment, each with a fragment header.
        h.run_packet(prog, ipv6_packet_ext(3040, 0, &[], UDP));
        assert_eq!(h.get().out_wire, 3 * (14 + 48) + 3000, "{prog}");
    }
    // A GSO skb is counted by its segments, not as a datagram to fragment.
    h.run_with("harness_egress", ipv4_packet(52 + 3_000, 0, TCP), None, Gso { segs: 3, size: 1000 });
    assert_eq!(h.get().out_wire, (52 + 3_000) + 14 + 2 * (52 + 14));
    // A UDP tunnel's GSO skb (VXLAN around TCP, MSS 88): each segment
    // repeats the outer headers (IP 20, UDP 8, VXLAN 8) and the inner ones
    // (Ethernet 14, IP 20, TCP 32), not only the outer IP and UDP parsed.
    let encapsulated = 20 + 8 + 8 + 14 + 20 + 32;
    h.run_with("harness_egress", ipv4_packet(encapsulated + 3 * 88, 0, UDP), None, Gso { segs: 3, size: 88 });
    assert_eq!(h.get().out_wire, (encapsulated + 3 * 88) as u64 + 14 + 2 * (encapsulated as u64 + 14));
    // MTU unknown (a pod attached by an earlier release): one frame.
    let mut i = input(Bucket::default(), Bucket::default(), SEC);
    i.iface.flags = IFACE_INGRESS_QUEUED;
    h.set(i);
    h.run("harness_egress", 3000, 0, UDP);
    assert_eq!(h.get().out_wire, 3014);
}

#[test]
fn a_gso_skb_is_charged_every_segments_headers() {
    let mut h = Harness::new();
    h.set(input(Bucket::default(), Bucket::default(), SEC));
    // TCP: 20 + 32 bytes of headers, 3 segments of 1000 bytes (the last shorter).
    let pkt = ipv4_packet(52 + 2_800, 0, TCP);
    h.run_with("harness_egress", pkt.clone(), None, Gso { segs: 3, size: 1000 });
    assert_eq!(h.get().out_wire, (52 + 2_800) + 14 + 2 * (52 + 14));
    // The same skb on tc, Ethernet included.
    h.set_guard(HostGuard::default());
    h.run_with("harness_guard", pkt, None, Gso { segs: 3, size: 1000 });
    assert_eq!(h.get().out_wire, (14 + 52 + 2_800) + 2 * (52 + 14));
    // UDP_SEGMENT with 8-byte segments: 28 bytes of headers each.
    h.run_with("harness_egress", ipv4_packet(28 + 8 * 64, 0, UDP), None, Gso { segs: 64, size: 8 });
    assert_eq!(h.get().out_wire, (28 + 8 * 64) + 14 + 63 * (28 + 14));
    // A GSO skb whose sender has not counted its segments yet (a raw
    // socket's virtio header): counted from its size.
    h.run_with("harness_egress", ipv4_packet(52 + 3_000, 0, TCP), None, Gso { segs: 0, size: 1000 });
    assert_eq!(h.get().out_wire, (52 + 3_000) + 14 + 2 * (52 + 14));
}

#[test]
fn ipv6_extension_headers_are_charged_per_segment_too() {
    let mut h = Harness::new();
    h.set(input(Bucket::default(), Bucket::default(), SEC));
    // hop-by-hop (8), routing (24), fragment (8), destination options (16),
    // AH (12), then TCP (32): 140 bytes of headers per segment.
    let ext = [(0, 0), (43, 2), (44, 0), (60, 1), (51, 1)];
    let headers = 40 + 8 + 24 + 8 + 16 + 12 + 32;
    assert_eq!(headers, 140);
    let pkt = ipv6_packet_ext(headers + 2_000, 0, &ext, TCP);
    h.run_with("harness_egress", pkt, None, Gso { segs: 2, size: 1000 });
    assert_eq!(h.get().out_wire, (headers + 2_000) as u64 + 14 + (headers as u64 + 14));
    // Headers that cannot be read (not IP): every segment pays at least
    // what the sizes imply.
    let mut junk = ipv4_packet(2_100, 0, TCP);
    junk[12] = 0x88; // not IPv4
    h.run_with("harness_egress", junk, None, Gso { segs: 2, size: 1000 });
    assert_eq!(h.get().out_wire, 2_100 + 14 + (100 + 14));
}

#[test]
fn the_wire_counter_counts_frames_and_bytes_per_segment() {
    let mut h = Harness::new();
    h.run_with("count_wire", ipv4_packet(52 + 2_800, 0, TCP), None, Gso { segs: 3, size: 1000 });
    h.run_packet("count_wire", ipv4_packet(100, 0, UDP));
    let map: Array<_, [u64; 2]> = Array::try_from(h.ebpf.map("wire_counts").unwrap()).unwrap();
    assert_eq!(map.get(&0, 0).unwrap(), [4, (14 + 52 + 2_800) + 2 * 66 + 114]);
}

// ---- Token buckets ----------------------------------------------------------

#[test]
fn unlimited_direction_passes_and_counts() {
    let mut h = Harness::new();
    h.set(input(Bucket::default(), Bucket::default(), 10 * SEC));
    assert_eq!(h.run("harness_egress", 1000, NOT_ECT, UDP).0, PASS);
    assert_eq!(h.run("harness_ingress", 500, NOT_ECT, UDP).0, PASS);
    let s = h.get().iface;
    assert_eq!((s.egress.passed_bytes, s.egress.passed_packets), (1014, 1));
    assert_eq!((s.ingress.passed_bytes, s.ingress.passed_packets), (514, 1));
    assert_eq!(s.egress.tokens, 0, "an unlimited bucket is not drawn from");
}

#[test]
fn conforming_packet_passes_and_takes_tokens() {
    let mut h = Harness::new();
    h.set(input(Bucket::default(), bucket(1_000_000, 100_000, 100_000, 5 * SEC), 5 * SEC));
    let (verdict, out) = h.run("harness_egress", 1500, ECT0, UDP);
    assert_eq!(verdict, PASS);
    assert_eq!(out[ETH_HLEN + 1] & 3, ECT0, "a full bucket does not mark");
    let e = h.get().iface.egress;
    assert_eq!(e.tokens, 100_000 - 1514);
    assert_eq!((e.passed_bytes, e.passed_packets, e.dropped_packets, e.marked_packets), (1514, 1, 0, 0));
}

#[test]
fn low_bucket_marks_ecn_capable_packets_ce_and_passes_others_unmarked() {
    for prog in ["harness_egress", "harness_ingress"] {
        let mut h = Harness::new();
        let low = bucket(1_000_000, 100_000, 40_000, SEC);
        h.set(input(low, low, SEC));
        let (verdict, out) = h.run(prog, 1500, ECT0, UDP);
        assert_eq!(verdict, PASS, "{prog}");
        assert_eq!(out[ETH_HLEN + 1] & 3, CE, "{prog}: ECT packet below half the burst is marked CE");
        assert_eq!(ipv4_header_sum(&out[ETH_HLEN..ETH_HLEN + 20]), 0xffff, "{prog}: the IP checksum is updated with the mark");
        let (verdict, out) = h.run(prog, 1500, NOT_ECT, UDP);
        assert_eq!(verdict, PASS, "{prog}");
        assert_eq!(out[ETH_HLEN + 1] & 3, NOT_ECT, "{prog}: non-ECT packet passes unmarked");
        let s = h.get().iface;
        let b = if prog == "harness_egress" { s.egress } else { s.ingress };
        assert_eq!((b.marked_packets, b.marked_bytes), (1, 1514), "{prog}");
        assert_eq!(b.passed_packets, 2, "{prog}");
        assert_eq!(b.tokens, 40_000 - 2 * 1514, "{prog}");
    }
}

#[test]
fn exceeding_packet_is_dropped_with_cn_on_egress_and_plainly_on_ingress() {
    let mut h = Harness::new();
    let empty = bucket(1_000_000, 100_000, 1_000, SEC);
    h.set(input(empty, empty, SEC));
    assert_eq!(h.run("harness_egress", 1500, NOT_ECT, UDP).0, DROP_CN);
    assert_eq!(h.run("harness_ingress", 1500, NOT_ECT, TCP).0, DROP);
    let s = h.get().iface;
    for b in [s.egress, s.ingress] {
        assert_eq!((b.dropped_packets, b.dropped_bytes, b.passed_packets), (1, 1514, 0));
        assert_eq!(b.tokens, 1_000, "a dropped packet takes no tokens");
    }
}

#[test]
fn skb_larger_than_the_burst_passes_a_full_bucket_and_leaves_debt() {
    let mut h = Harness::new();
    h.set(input(Bucket::default(), bucket(1_000_000, 1_000, 1_000, SEC), SEC));
    assert_eq!(h.run("harness_egress", 2_986, NOT_ECT, UDP).0, PASS);
    assert_eq!(h.get().iface.egress.tokens, 1_000 - 3_000);
    // In debt, even a small packet waits for the refill.
    assert_eq!(h.run("harness_egress", 100, NOT_ECT, UDP).0, DROP_CN);
}

#[test]
fn refill_adds_rate_times_elapsed_up_to_the_burst() {
    let mut h = Harness::new();
    // 1 MB/s; 10 ms later 10_000 bytes are back.
    h.set(input(Bucket::default(), bucket(1_000_000, 100_000, 0, SEC), SEC + 10_000_000));
    assert_eq!(h.run("harness_egress", 986, NOT_ECT, UDP).0, PASS);
    let e = h.get().iface.egress;
    assert_eq!(e.tokens, 9_000);
    assert_eq!(e.last_ns, SEC + 10_000_000);
    // Whole seconds and the remainder both count: 2.5 s at 30 kB/s = 75 kB.
    h.set(input(Bucket::default(), bucket(30_000, 1_000_000, 0, SEC), SEC + 2_500_000_000));
    h.run("harness_egress", 986, NOT_ECT, UDP);
    assert_eq!(h.get().iface.egress.tokens, 74_000);
    // Long idle: capped at the burst.
    h.set(input(Bucket::default(), bucket(1_000_000, 100_000, -50_000, SEC), 5000 * SEC));
    h.run("harness_egress", 986, NOT_ECT, UDP);
    assert_eq!(h.get().iface.egress.tokens, 99_000);
}

#[test]
fn refills_keep_the_fraction_of_a_byte_they_have_not_credited() {
    let mut h = Harness::new();
    // 1.25 MB/s (10 Mbit/s) refilled every 500 ns: 0.625 bytes each. Rounded
    // away, a sender refilling that often would never earn a byte.
    let mut s = input(Bucket::default(), bucket(1_250_000, 1_000_000, 0, SEC), SEC);
    h.set(s);
    for i in 1..=2_000u64 {
        s = h.get();
        s.now = SEC + i * 500;
        h.set(s);
        h.run("harness_egress", 20, NOT_ECT, UDP); // 34 bytes: dropped until earned
    }
    let e = h.get().iface.egress;
    // 1 ms at 1.25 MB/s is 1 250 bytes: 36 packets of 34 bytes fit.
    assert_eq!(e.passed_bytes + e.tokens as u64, 1_250, "{e:?}");
    assert!(SEC + 1_000_000 - e.last_ns < 1_000, "last_ns lags by less than a byte's time: {}", e.last_ns);
}

#[test]
fn a_clock_behind_last_refill_adds_nothing() {
    let mut h = Harness::new();
    h.set(input(bucket(1_000_000, 100_000, 5_000, 2 * SEC), Bucket::default(), SEC));
    assert_eq!(h.run("harness_ingress", 986, NOT_ECT, UDP).0, PASS);
    let i = h.get().iface.ingress;
    assert_eq!(i.tokens, 4_000);
    assert_eq!(i.last_ns, 2 * SEC, "last_ns never moves backwards");
}

#[test]
fn sustained_overload_passes_the_rate_and_drops_the_rest() {
    let mut h = Harness::new();
    // 1 MB/s, 10 kB burst, a 1000-byte frame every 0.5 ms (2 MB/s) for 1 s.
    let mut state = input(bucket(1_000_000, 10_000, 10_000, SEC), Bucket::default(), SEC);
    h.set(state);
    for i in 1..=2000u64 {
        state = h.get();
        state.now = SEC + i * 500_000;
        h.set(state);
        h.run("harness_ingress", 986, NOT_ECT, UDP);
    }
    let i = h.get().iface.ingress;
    assert!(i.passed_bytes <= 1_010_000 && i.passed_bytes >= 1_000_000, "passed {}", i.passed_bytes);
    assert_eq!(i.passed_bytes + i.dropped_bytes, 2_000_000);
}

#[test]
fn a_fresh_interface_with_last_ns_0_starts_with_a_full_bucket() {
    use bpf_ratelimit::policy::limits::{Limit, Limits};
    let mut h = Harness::new();
    let limits = Limits { ingress: Some(Limit { rate: 8_000_000, burst: 800_000 }), egress: Some(Limit { rate: 8_000_000, burst: 800_000 }) };
    let iface = IfaceState::new(&limits, LimitBasis::Frames);
    assert_eq!((iface.ingress.last_ns, iface.egress.last_ns), (0, 0));
    for now in [1_000, 5 * SEC, 100_000 * SEC] {
        h.set(HarnessInput { iface, rest: HarnessRest { now, ..Default::default() } });
        assert_eq!(h.run("harness_ingress", 986, NOT_ECT, UDP).0, PASS, "now {now}");
        let i = h.get().iface.ingress;
        assert_eq!((i.last_ns, i.tokens), (now, 100_000 - 1000), "now {now}");
    }
    // Even an emptied bucket with last_ns 0 is refilled to the burst, the
    // elapsed time capped at MAX_REFILL_NS so rate x elapsed cannot overflow.
    let mut empty = iface;
    empty.ingress.tokens = 0;
    empty.ingress.rate = 12_500_000_000; // 100 Gbit/s, the largest rate
    h.set(HarnessInput { iface: empty, rest: HarnessRest { now: u64::MAX / 2, ..Default::default() } });
    assert_eq!(h.run("harness_ingress", 986, NOT_ECT, UDP).0, PASS);
    assert_eq!(h.get().iface.ingress.tokens, 100_000 - 1000);
}

// ---- The pod's hooks ------------------------------------------------------

#[test]
fn egress_tcp_over_the_rate_passes_on_credit_down_to_one_burst_of_debt() {
    let mut h = Harness::new();
    h.set(input(Bucket::default(), bucket(1_000_000, 3_000, 1_000, SEC), SEC));
    // Over the rate, TCP passes on credit, into debt; it is charged its frame.
    assert_eq!(h.run("harness_egress", 1500, NOT_ECT, TCP).0, PASS);
    assert_eq!(h.get().iface.egress.tokens, 1_000 - 1_514);
    assert_eq!(h.run("harness_egress", 2472, NOT_ECT, TCP).0, PASS);
    assert_eq!(h.get().iface.egress.tokens, -3_000);
    // Beyond one burst of debt, TCP is dropped too.
    assert_eq!(h.run("harness_egress", 200, NOT_ECT, TCP).0, DROP_CN);
    // UDP never borrows.
    assert_eq!(h.run("harness_egress", 100, NOT_ECT, UDP).0, DROP_CN);
    let e = h.get().iface.egress;
    assert_eq!((e.passed_packets, e.dropped_packets, e.dropped_bytes), (2, 2, 214 + 114));
    // Ingress never borrows.
    h.set(input(bucket(1_000_000, 3_000, 1_000, SEC), Bucket::default(), SEC));
    assert_eq!(h.run("harness_ingress", 1500, NOT_ECT, TCP).0, DROP);
}

#[test]
fn egress_tcp_is_marked_only_when_borrowing_udp_when_low() {
    let mut h = Harness::new();
    // Below half the burst but not in debt: paced TCP runs here by design.
    h.set(input(Bucket::default(), bucket(1_000_000, 100_000, 40_000, SEC), SEC));
    let (verdict, out) = h.run("harness_egress", 1500, ECT0, TCP);
    assert_eq!((verdict, out[ETH_HLEN + 1] & 3), (PASS, ECT0), "low bucket: TCP passes unmarked");
    let (verdict, out) = h.run("harness_egress", 1500, ECT0, UDP);
    assert_eq!((verdict, out[ETH_HLEN + 1] & 3), (PASS, CE), "low bucket: ECN-capable UDP is marked");
    // Borrowing: an ECN-capable TCP skb is marked CE, others pass unmarked.
    h.set(input(Bucket::default(), bucket(1_000_000, 100_000, 100, SEC), SEC));
    let (verdict, out) = h.run("harness_egress", 1500, ECT0, TCP);
    assert_eq!((verdict, out[ETH_HLEN + 1] & 3), (PASS, CE));
    let (verdict, out) = h.run("harness_egress", 1500, NOT_ECT, TCP);
    assert_eq!((verdict, out[ETH_HLEN + 1] & 3), (PASS, NOT_ECT));
    assert_eq!(h.get().iface.egress.marked_packets, 1);
}

#[test]
fn a_queued_ingress_is_counted_not_policed() {
    let mut h = Harness::new();
    let mut state = input(bucket(1_000_000, 1_000, 0, SEC), Bucket::default(), SEC);
    state.iface.flags = IFACE_INGRESS_QUEUED;
    h.set(state);
    assert_eq!(h.run("harness_ingress", 1500, ECT0, TCP).0, PASS);
    let i = h.get().iface.ingress;
    assert_eq!((i.passed_packets, i.passed_bytes, i.dropped_packets, i.marked_packets, i.tokens), (1, 1514, 0, 0, 0));
    // The bucket is the queue door's (share_queue_level): what reaches a
    // socket leaves it alone, TCP or not.
    let mut state = input(bucket(1_000_000, 100_000, 2_000, SEC), Bucket::default(), SEC);
    state.iface.flags = IFACE_INGRESS_QUEUED;
    h.set(state);
    h.run("harness_ingress", 1500, NOT_ECT, TCP);
    h.run("harness_ingress", 1500, NOT_ECT, UDP);
    let i = h.get().iface.ingress;
    assert_eq!((i.tokens, i.last_ns, i.passed_packets), (2_000, SEC, 2));
}

/// A flow toward the pod is light (the queue's first band) until it moves
/// more than 32 KB in a window, or moves in three windows in a row; then
/// heavy until it has been idle for two whole windows. A bulk flow with a
/// small share is not light, a response after idle is, and no flow moves
/// back to the first band while frames of it may still wait in the other.
#[test]
fn the_queue_door_tells_light_flows_from_bulk_flows_with_small_shares() {
    let mut h = Harness::new();
    let mut light = |queued: QueuedFlow, window: u64, len: u32| -> (bool, QueuedFlow) {
        let mut i = input(Bucket::default(), Bucket::default(), window * WINDOW_NS + 1);
        i.queued = queued;
        i.flow_len = u64::from(len);
        h.set(i);
        h.run("harness_light", 100, 0, UDP);
        let out = h.get();
        (out.out_light == 1, out.queued)
    };
    let at = |window, bytes, prev_bytes, prev_prev_bytes, heavy| QueuedFlow { window, bytes, prev_bytes, prev_prev_bytes, heavy };
    // A response after idle: light up to 32 KB in its window, not beyond.
    assert_eq!(light(at(10, 0, 0, 0, 0), 10, 16_384), (true, at(10, 16_384, 0, 0, 0)));
    assert_eq!(light(at(10, 30_000, 0, 0, 0), 10, 4_000), (false, at(10, 34_000, 0, 0, 1)));
    // Straddling two windows after an idle one: still light.
    assert_eq!(light(at(10, 10_000, 0, 0, 0), 11, 6_000), (true, at(11, 6_000, 10_000, 0, 0)));
    // A bulk flow with a small share (~10 kB a window), in its third window
    // in a row: heavy.
    assert_eq!(light(at(11, 10_000, 10_000, 0, 0), 12, 1_500), (false, at(12, 1_500, 10_000, 10_000, 1)));
    // Over 32 KB in the window before: heavy.
    assert_eq!(light(at(11, 40_000, 0, 0, 0), 12, 100), (false, at(12, 100, 40_000, 0, 1)));
    // Heavy stays heavy while the flow moves, however little,
    assert_eq!(light(at(11, 100, 0, 0, 1), 12, 100), (false, at(12, 100, 100, 0, 1)));
    assert_eq!(light(at(12, 100, 100, 0, 1), 12, 100), (false, at(12, 200, 100, 0, 1)));
    // and after one idle window (a round trip behind a long queue),
    assert_eq!(light(at(10, 40_000, 40_000, 40_000, 1), 12, 100), (false, at(12, 100, 0, 40_000, 1)));
    // until two whole windows without a byte of it.
    assert_eq!(light(at(10, 40_000, 40_000, 40_000, 1), 13, 100), (true, at(13, 100, 0, 0, 0)));
}

/// Light frames take at most half of what the pod's queue passes in a
/// window; beyond it they wait with the rest, and the next window starts
/// afresh.
#[test]
fn the_first_band_takes_at_most_half_the_rate() {
    let mut h = Harness::new();
    // 1.25 MB/s (10M): 83,886 bytes a window, 41,943 of them light.
    let rate = 1_250_000;
    let mut room = |band: LightWindow, window: u64, len: u64| -> (bool, LightWindow) {
        let mut i = input(Bucket::default(), Bucket::default(), window * WINDOW_NS + 1);
        i.band = band;
        i.flow_len = len;
        i.current_rate = rate;
        h.set(i);
        h.run("harness_light", 100, 0, UDP);
        let out = h.get();
        (out.out_room == 1, out.band)
    };
    let share = ((rate << 26) / 1_000_000_000) / 2;
    assert_eq!(share, 41_943);
    let at = |window, bytes| LightWindow { window, bytes };
    assert_eq!(room(at(7, 0), 7, 16_384), (true, at(7, 16_384)));
    assert_eq!(room(at(7, 16_384), 7, share - 16_384), (true, at(7, share)));
    assert_eq!(room(at(7, share), 7, 1), (false, at(7, share + 1)));
    // A new window: room again.
    assert_eq!(room(at(7, 90_000), 8, 1_514), (true, at(8, 1_514)));
}

/// The ingress queue's door charges every frame it queues, past the
/// queue's limit in bytes too (its TBF's child holds packets, and a GRO
/// skb of 64 KB is one), and hands its model to the interface: a receiver's
/// window has a share of the burst only while the queue is empty.
#[test]
fn the_queue_door_charges_every_frame_and_windows_follow_it() {
    let mut h = Harness::new();
    let rate = 1_000_000;
    let door = |tokens: i64| QueueGate { limit: 10_000, queue: bucket(rate, 100_000, tokens, SEC), ..Default::default() };
    let mut state = input(bucket(rate, 100_000, 100_000, SEC), Bucket::default(), SEC);
    state.iface.flags = IFACE_INGRESS_QUEUED;
    state.iface.receivers.counted[0] = 2;
    state.counted = 1;
    state.rtt_us = 20_000;
    state.mss = 1448;
    // A full bucket: each of the 2 flows may have half of it in flight.
    h.set(state);
    h.set_door(door(100_000));
    assert_eq!(h.run_packet("harness_door", ipv4_packet(1500, 0, TCP)).0, TC_UNSPEC);
    let full = h.get();
    assert_eq!((full.iface.ingress.tokens, full.iface.ingress.last_ns), (100_000 - 1514, SEC));
    // The share for the RTT and the 2 ms the queue keeps (rwnd_for).
    let share_window = (rate / 2) * 1448 / 1514 * 22_000 / 1_000_000;
    assert_eq!(u64::from(full.out_rwnd), share_window + (100_000 - 1514) / 2, "a full bucket lends its burst");
    // 80 frames: 21,120 bytes past empty, twice the limit, all charged.
    h.set(state);
    h.set_door(door(100_000));
    for _ in 0..80 {
        assert_eq!(h.run_packet("harness_door", ipv4_packet(1500, 0, TCP)).0, TC_UNSPEC);
    }
    let queued = h.get();
    assert_eq!(h.door().queue.tokens, 100_000 - 80 * 1514, "every queued frame is charged");
    assert_eq!(queued.iface.ingress.tokens, h.door().queue.tokens, "the interface holds the door's model");
    assert_eq!(u64::from(queued.out_rwnd), share_window, "frames waiting: no share of the burst");
    // Beyond half the limit, a frame kept to the lower half is turned away
    // and not charged.
    let mut half = queued;
    half.half = 1;
    h.set(half);
    assert_eq!(h.run_packet("harness_door", ipv4_packet(1500, 0, UDP)).0, TC_SHOT);
    assert_eq!((h.door().queue.tokens, h.door().queue.dropped_packets), (100_000 - 80 * 1514, 1));
    // Within half the limit it is queued.
    h.set_door(door(-4_000));
    assert_eq!(h.run_packet("harness_door", ipv4_packet(1500, 0, UDP)).0, TC_UNSPEC);
    assert_eq!(h.door().queue.tokens, -4_000 - 1514);
}

#[test]
fn ipv6_is_charged_marked_and_dropped_in_both_directions() {
    for prog in ["harness_egress", "harness_ingress"] {
        let mut h = Harness::new();
        let full = bucket(1_000_000, 100_000, 100_000, SEC);
        h.set(input(full, full, SEC));
        let (verdict, out) = h.run_packet(prog, ipv6_packet_ext(1500, ECT0, &[], UDP));
        assert_eq!(verdict, PASS, "{prog}");
        assert_eq!(ipv6_ecn(&out), ECT0, "{prog}: a full bucket does not mark");
        let s = h.get().iface;
        let b = if prog == "harness_ingress" { s.ingress } else { s.egress };
        assert_eq!((b.tokens, b.passed_bytes, b.passed_packets), (100_000 - 1514, 1514, 1), "{prog}");

        let low = bucket(1_000_000, 100_000, 40_000, SEC);
        h.set(input(low, low, SEC));
        let (verdict, out) = h.run_packet(prog, ipv6_packet_ext(1500, ECT0, &[], UDP));
        assert_eq!((verdict, ipv6_ecn(&out)), (PASS, CE), "{prog}: IPv6 ECT packet below half the burst is marked CE");
        let (_, out) = h.run_packet(prog, ipv6_packet_ext(1500, NOT_ECT, &[], UDP));
        assert_eq!(ipv6_ecn(&out), NOT_ECT, "{prog}");

        let empty = bucket(1_000_000, 100_000, 1_000, SEC);
        h.set(input(empty, empty, SEC));
        let want = if prog == "harness_ingress" { DROP } else { DROP_CN };
        assert_eq!(h.run_packet(prog, ipv6_packet_ext(1500, NOT_ECT, &[], UDP)).0, want, "{prog}");
    }
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
        let ifindex = bpf_ratelimit::node::netns::in_netns(&path, || bpf_ratelimit::node::netns::ifindex("pod0")).unwrap();
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
fn only_a_shaped_interface_is_shaped_and_charged() {
    let mut h = Harness::new();
    let dev = TestInterface::new();
    let tight = bucket(1_000_000, 1_000, 0, SEC);
    let cgroup_id = 7;
    let mut ifaces: HashMap<_, Key, Value> = HashMap::try_from(h.ebpf.map_mut("harness_ifaces").unwrap()).unwrap();
    let key = IfaceKey { cgroup_id, ifindex: dev.ifindex, pad: 0 };
    ifaces.insert(Key(key), Value(input(Bucket::default(), tight, SEC).iface), 0).unwrap();
    h.set(HarnessInput { rest: HarnessRest { cgroup_id, now: SEC, ..Default::default() }, ..Default::default() });
    // Loopback (a sidecar over 127.0.0.1 or the pod's own address) has no
    // state: it passes uncharged.
    assert_eq!(h.run("harness_lookup", 1500, NOT_ECT, UDP).0, PASS);
    // The pod's interface is shaped.
    let verdict = bpf_ratelimit::node::netns::in_netns(&dev.path(), || {
        Ok(h.run_with("harness_lookup", ipv4_packet(1500, NOT_ECT, UDP), Some(dev.ifindex), Gso::default()).0)
    })
    .unwrap();
    assert_eq!(verdict, DROP_CN);
    let ifaces: HashMap<_, Key, Value> = HashMap::try_from(h.ebpf.map("harness_ifaces").unwrap()).unwrap();
    let e = ifaces.get(&Key(key), 0).unwrap().0.egress;
    assert_eq!((e.dropped_packets, e.passed_packets), (1, 0));
    // Another pod's cgroup, and a cgroup of 0 (storage never written), find nothing.
    for other in [8, 0] {
        h.set(HarnessInput { rest: HarnessRest { cgroup_id: other, now: SEC, ..Default::default() }, ..Default::default() });
        let verdict = bpf_ratelimit::node::netns::in_netns(&dev.path(), || {
            Ok(h.run_with("harness_lookup", ipv4_packet(1500, NOT_ECT, UDP), Some(dev.ifindex), Gso::default()).0)
        })
        .unwrap();
        assert_eq!(verdict, PASS, "cgroup {other}");
    }
}

// ---- The host-side guard ---------------------------------------------------

#[test]
fn the_host_side_guard_charges_every_frame_and_drops_beyond_its_bucket() {
    let mut h = Harness::new();
    h.set(input(Bucket::default(), Bucket::default(), SEC));
    let egress = bucket(1_000_000, 10_000, 10_000, SEC);
    let guard = HostGuard::for_egress(7, &egress);
    assert_eq!(guard.egress.burst, 2 * 10_000 + 64 * 1024);
    h.set_guard(guard);
    let mut passed = 0;
    loop {
        let (verdict, _) = h.run_with("harness_guard", ipv4_packet(1000, 0, UDP), None, Gso::default());
        if verdict == TC_SHOT {
            break;
        }
        assert_eq!(verdict, TC_UNSPEC, "a passing frame goes on to other filters");
        passed += 1;
    }
    // Everything the bucket held passed, then the next frame was dropped.
    assert_eq!(passed, (guard.egress.burst / 1014) as u32);
    let g = h.guard();
    assert_eq!((g.egress.passed_packets, g.egress.dropped_packets, g.egress.dropped_bytes), (u64::from(passed), 1, 1014));
}

// ---- Flow classification -----------------------------------------------------

fn classify(h: &mut Harness, counts: FlowCounts, flow: FlowClass, now: u64, len: u64) -> HarnessInput {
    let mut s = input(Bucket::default(), bucket(1_000_000, 100_000, 0, SEC), now);
    s.iface.senders = counts;
    s.flow = flow;
    s.flow_len = len;
    h.evaluate(s)
}

#[test]
fn a_flow_is_counted_once_it_moves_its_threshold_in_a_window() {
    let mut h = Harness::new();
    let now = 100 * WINDOW_NS + 5;
    let w = now / WINDOW_NS;
    // Alone at 1 MB/s, half a share per window is ~33 kB: the threshold is
    // LIGHT_FLOW_BYTES (32 KiB).
    let out = classify(&mut h, FlowCounts::default(), FlowClass::default(), now, 20_000);
    assert_eq!((out.flow.window, out.flow.bytes, out.flow.counted_window), (w, 20_000, 0), "a 20 kB response is light");
    assert_eq!((out.iface.senders.seen_now, out.iface.senders.counted_flows()), (1, 0));
    let out = classify(&mut h, out.iface.senders, out.flow, now, 20_000);
    assert_eq!(out.flow.counted_window, w, "40 kB in the window: counted");
    assert_eq!((out.iface.senders.seen_now, out.iface.senders.counted_flows()), (1, 1), "seen once, counted once");
    // Among many flows seen, half an even share is the threshold.
    let crowd = FlowCounts { window: w, seen_now: 16, ..Default::default() };
    let half_share = (1_000_000 / 16) * WINDOW_NS / SEC / 2;
    let out = classify(&mut h, crowd, FlowClass { window: w, ..Default::default() }, now, half_share - 1);
    assert_eq!(out.flow.counted_window, 0);
    let out = classify(&mut h, out.iface.senders, out.flow, now, 1);
    assert_eq!(out.flow.counted_window, w);
}

#[test]
fn a_counted_flow_is_carried_into_the_next_window_and_stays_counted_for_eight() {
    let mut h = Harness::new();
    let w = 100;
    let counted_in = |counts: &FlowCounts, window: u64| counts.counted[(window % 8) as usize];
    let mut counts = FlowCounts { window: w, seen_now: 1, ..Default::default() };
    counts.counted[(w % 8) as usize] = 1;
    let busy = FlowClass { window: w, bytes: 40_000, counted_window: w };
    // Its first skb of the next window counts it there at once, moved from
    // the window before: still one flow.
    let out = classify(&mut h, counts, busy, (w + 1) * WINDOW_NS, 100);
    assert_eq!(out.flow.counted_window, w + 1);
    assert_eq!((counted_in(&out.iface.senders, w), counted_in(&out.iface.senders, w + 1)), (0, 1));
    assert_eq!(out.iface.senders.counted_flows(), 1);
    assert_eq!(out.iface.senders.seen_before, 1, "the last window's seen count moved to before");
    // A quiet flow (a few bytes in its window) is not carried, but stays
    // counted where it was until eight windows have passed.
    let quiet = FlowClass { window: w, bytes: 100, counted_window: w };
    let out = classify(&mut h, counts, quiet, (w + 3) * WINDOW_NS, 100);
    assert_eq!(out.flow.counted_window, w);
    assert_eq!(out.iface.senders.counted_flows(), 1, "counted from window {w} still");
    let out = classify(&mut h, out.iface.senders, out.flow, (w + 8) * WINDOW_NS, 100);
    assert_eq!(out.iface.senders.counted_flows(), 0, "eight windows on, it is no longer counted");
}

// ---- Egress pacing --------------------------------------------------------

fn pacing(h: &mut Harness, tokens: i64, counted_flows: i32, current: u64, counted: bool) -> u64 {
    let mut s = input(Bucket::default(), bucket(1_000_000, 100_000, tokens, SEC), SEC);
    s.iface.senders.window = SEC / WINDOW_NS;
    s.iface.senders.counted[0] = counted_flows;
    s.current_rate = current;
    s.counted = counted as u32;
    h.evaluate(s).out_rate
}

/// Pacing without an MSS is in bytes on the wire: the share, and a quarter
/// more while tokens are left.
const SHARE_1: u64 = 1_000_000;
const WITH_HEADROOM: u64 = 1_250_000;

#[test]
fn pacing_honours_the_burst_with_hysteresis() {
    let mut h = Harness::new();
    // At least 3/4 full: full speed, whatever the socket had.
    assert_eq!(pacing(&mut h, 75_000, 1, 500_000, true), UNPACED);
    // Between 1/4 and 3/4: the socket keeps its mode.
    assert_eq!(pacing(&mut h, 50_000, 1, UNPACED, true), UNPACED);
    assert_eq!(pacing(&mut h, 50_000, 1, 500_000, true), WITH_HEADROOM);
    // Below 1/4: paced at its share, a quarter more while tokens are left.
    assert_eq!(pacing(&mut h, 24_999, 1, UNPACED, true), WITH_HEADROOM);
    assert_eq!(pacing(&mut h, 0, 1, UNPACED, true), SHARE_1);
    // The skb about to leave counts: 80 kB less a 60 kB skb (and its
    // frames' headers) is below 1/4.
    let mut s = input(Bucket::default(), bucket(1_000_000, 100_000, 80_000, SEC), SEC);
    s.current_rate = UNPACED;
    s.counted = 1;
    s.mss = 1448;
    s.pending = 60_000;
    assert_ne!(h.evaluate(s).out_rate, UNPACED);
    // The level is the one after the refill an idle period earned: 10 ms at
    // 1 MB/s adds 10 kB to 70 kB.
    let mut s = input(Bucket::default(), bucket(1_000_000, 100_000, 70_000, SEC), SEC + 5_000_000);
    s.current_rate = 500_000;
    s.counted = 1;
    assert_eq!(h.evaluate(s).out_rate, UNPACED);
}

#[test]
fn pacing_splits_the_rate_among_counted_senders_and_repays_debt() {
    let mut h = Harness::new();
    assert_eq!(pacing(&mut h, 0, 4, 1, true), SHARE_1 / 4);
    assert_eq!(pacing(&mut h, 0, 0, 1, true), SHARE_1);
    // Debt within a quarter of a burst leaves shares exact; from there they
    // shrink to an eighth at a whole burst owed.
    assert_eq!(pacing(&mut h, -25_000, 1, 1, true), SHARE_1);
    assert_eq!(pacing(&mut h, -50_000, 1, 1, true), SHARE_1 * (1024 - 25_000 * 896 / 75_000) / 1024);
    assert_eq!(pacing(&mut h, -100_000, 1, 1, true), SHARE_1 * 128 / 1024);
    assert_eq!(pacing(&mut h, -400_000, 1, 1, true), SHARE_1 * 128 / 1024);
}

#[test]
fn a_light_flow_goes_at_full_speed_while_its_bytes_can_be_borrowed() {
    let mut h = Harness::new();
    // Not counted (a request): unpaced in debt, while the pod owes less
    // than a burst after it.
    assert_eq!(pacing(&mut h, -50_000, 4, 1, false), UNPACED);
    let mut s = input(Bucket::default(), bucket(1_000_000, 100_000, -50_000, SEC), SEC);
    s.iface.senders.window = SEC / WINDOW_NS;
    s.iface.senders.counted[0] = 4;
    s.current_rate = 1;
    s.pending = 60_000;
    // Deeper than a burst with its skb: paced as one more flow. Repaying
    // the debt would leave an eighth of that share, and a 2.4 s gap after
    // the 60 kB skb; the gap is held to what the skb costs at its share.
    assert_eq!(h.evaluate(s).out_rate, SHARE_1 / 5);
    // Owing more than a burst already: a 1 kB skb at an eighth of the share
    // (25 kB/s) leaves 43 ms; a 3 kB one would leave 123 ms, and is held
    // to 100 ms.
    s.iface.egress.tokens = -150_000;
    s.pending = 1_000;
    assert_eq!(h.evaluate(s).out_rate, SHARE_1 / 5 * 128 / 1024);
    s.pending = 3_000;
    assert_eq!(h.evaluate(s).out_rate, (3_000 + 66) * 10);
}

#[test]
fn pacing_counts_payload_so_that_frames_meet_the_share() {
    let mut h = Harness::new();
    let mut s = input(Bucket::default(), bucket(1_000_000, 100_000, 0, SEC), SEC);
    s.counted = 1;
    s.current_rate = 1;
    s.mss = 1448;
    assert_eq!(h.evaluate(s).out_rate, SHARE_1 * 1448 / 1514);
    s.ipv6 = 1;
    s.mss = 1428;
    assert_eq!(h.evaluate(s).out_rate, SHARE_1 * 1428 / 1514);
}

#[test]
fn a_paced_sockets_window_is_clamped_to_keep_its_skbs_small() {
    let mut h = Harness::new();
    let mut s = input(Bucket::default(), bucket(1_000_000, 100_000, 0, SEC), SEC);
    s.counted = 1;
    s.current_rate = 1;
    s.mss = 1000;
    s.rtt_us = 10_000;
    // Paced at 1 MB/s: 2 x 10 kB per 10 ms round trip, and a slack of the
    // flow's share of an eighth of the 100 kB bucket (12 segments).
    let out = h.evaluate(s);
    assert_eq!(out.out_rate, SHARE_1 * 1000 / 1066);
    assert_eq!(out.out_cwnd as u64, 12 + 2 * out.out_rate * 10_000 / 1_000_000 / 1000);
    // Eight counted senders share that eighth: 1.5 segments each, raised to
    // the floor of 4, as many small flows at a low rate need.
    s.iface.senders.counted[0] = 8;
    let out = h.evaluate(s);
    assert_eq!(out.out_cwnd as u64, 4 + 2 * out.out_rate * 10_000 / 1_000_000 / 1000);
    // A large bucket (1G's 50 ms) lets a lone flow's skbs grow to 64 kB
    // and more: the window is no longer what keeps them small.
    let mut s = input(Bucket::default(), bucket(125_000_000, 6_250_000, 0, SEC), SEC);
    s.counted = 1;
    s.current_rate = 1;
    s.mss = 1448;
    s.rtt_us = 100;
    assert!(h.evaluate(s).out_cwnd as u64 >= 6_250_000 / 8 / 1448);
    // Unpaced (the burst): room for the whole 100 kB burst and twice the
    // pod's 1 MB/s for the 10 ms round trip, in 1000-byte segments.
    let mut s = input(Bucket::default(), bucket(1_000_000, 100_000, 100_000, SEC), SEC);
    s.current_rate = UNPACED;
    s.mss = 1000;
    s.rtt_us = 10_000;
    assert_eq!(h.evaluate(s).out_cwnd, (100_000 + 20_000) / 1000);
}

#[test]
fn unpaced_senders_share_the_room_of_one_burst() {
    let mut h = Harness::new();
    let mut s = input(Bucket::default(), bucket(1_000_000, 100_000, 100_000, SEC), SEC);
    s.current_rate = UNPACED;
    s.mss = 1000;
    s.rtt_us = 10_000;
    let alone = h.evaluate(s).out_cwnd;
    // Eight counted senders split the 120 segments, so together they can
    // put no more in flight than one sender alone: 8 x 64 KB skbs into a
    // 100 kB bucket are refused at the hook.
    s.iface.senders.counted[0] = 8;
    let shared = h.evaluate(s).out_cwnd;
    println!("unpaced window: {alone} segments alone, {shared} each of 8");
    assert_eq!(shared, 120 / 8);
    assert!(8 * shared <= alone, "8 senders x {shared} segments > one sender's {alone}");
    // Many senders and a small burst: each keeps the floor of 4 segments,
    // as a window below that stalls TCP (delayed ACKs, no fast retransmit).
    s.iface.senders.counted[0] = 100;
    assert_eq!(h.evaluate(s).out_cwnd, 4);
}

// ---- Ingress receive windows ----------------------------------------------

fn rwnd(h: &mut Harness, rate: u64, counted_flows: i32, counted: bool, rtt_us: u32, queued: bool) -> u32 {
    rwnd_with_burst_left(h, rate, counted_flows, counted, rtt_us, queued, 0)
}

fn rwnd_with_burst_left(h: &mut Harness, rate: u64, counted_flows: i32, counted: bool, rtt_us: u32, queued: bool, tokens: i64) -> u32 {
    let mut s = input(bucket(rate, 1 << 30, tokens, SEC), Bucket::default(), SEC);
    if queued {
        s.iface.flags = IFACE_INGRESS_QUEUED;
    }
    s.iface.receivers.window = SEC / WINDOW_NS;
    s.iface.receivers.counted[0] = counted_flows;
    s.counted = counted as u32;
    s.rtt_us = rtt_us;
    s.mss = 1448;
    h.evaluate(s).out_rwnd
}

#[test]
fn receive_windows_hold_the_share_for_the_rtt_plus_a_short_queue() {
    let mut h = Harness::new();
    let payload = |wire: u64| wire * 1448 / 1514;
    // 1G (125 MB/s), one flow, 10 ms: 18 ms of its share (payload bytes):
    // from 40M on, 8 ms of queue.
    assert_eq!(rwnd(&mut h, 125_000_000, 1, true, 10_000, true) as u64, payload(125_000_000) * 18_000 / 1_000_000);
    // Five flows share it.
    assert_eq!(rwnd(&mut h, 125_000_000, 5, true, 10_000, true) as u64, payload(25_000_000) * 18_000 / 1_000_000);
    // Below 40M, 2 ms of queue: 10M, 10 ms.
    assert_eq!(rwnd(&mut h, 1_250_000, 1, true, 10_000, true) as u64, payload(1_250_000) * 12_000 / 1_000_000);
    assert_eq!(rwnd(&mut h, 4_999_999, 1, true, 10_000, true) as u64, payload(4_999_999) * 12_000 / 1_000_000);
    assert_eq!(rwnd(&mut h, 5_000_000, 1, true, 10_000, true) as u64, payload(5_000_000) * 18_000 / 1_000_000);
    // Under the policer, no queue to fill: the RTT alone.
    assert_eq!(rwnd(&mut h, 125_000_000, 1, true, 10_000, false) as u64, payload(125_000_000) * 10_000 / 1_000_000);
    // An RTT not known yet counts as 1 ms.
    assert_eq!(rwnd(&mut h, 125_000_000, 1, true, 0, true) as u64, payload(125_000_000) * 9_000 / 1_000_000);
    // At least two segments for a counted flow, however many share.
    assert_eq!(rwnd(&mut h, 1_250_000, 8, true, 50, true), 2 * 1448);
    // A flow not counted (a request awaiting its response) gets at least 16 KiB.
    assert_eq!(rwnd(&mut h, 1_250_000, 8, false, 50, true), 16 * 1024);
    // and otherwise one more flow's share.
    assert_eq!(rwnd(&mut h, 125_000_000, 4, false, 10_000, true) as u64, payload(25_000_000) * 18_000 / 1_000_000);
    // Capped at 1 GiB.
    assert_eq!(rwnd(&mut h, 12_500_000_000, 1, true, 10_000_000, true), 1 << 30);
}

#[test]
fn a_queued_ingress_opens_windows_by_what_is_left_of_its_burst() {
    let mut h = Harness::new();
    let base = rwnd(&mut h, 1_250_000, 2, true, 10_000, true);
    // 300 kB left in the queue's bucket, two flows: each may have half more
    // in flight, so an idle pod gets its burst in one round trip.
    assert_eq!(rwnd_with_burst_left(&mut h, 1_250_000, 2, true, 10_000, true, 300_000), base + 150_000);
    // A flow not counted takes one more flow's part (its 16 KiB floor is
    // then exceeded).
    let light_share: u64 = 1_250_000 / 3 * 1448 / 1514 * 12_000 / 1_000_000;
    assert_eq!(rwnd_with_burst_left(&mut h, 1_250_000, 2, false, 10_000, true, 300_000), light_share as u32 + 100_000);
    // Under the policer there is no queue's bucket to spend.
    assert_eq!(
        rwnd_with_burst_left(&mut h, 1_250_000, 2, true, 10_000, false, 300_000),
        rwnd(&mut h, 1_250_000, 2, true, 10_000, false)
    );
}
