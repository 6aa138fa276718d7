//! User space's view of the datapath's state (ebpf/shaper.h): each shaped
//! interface's `struct iface_state`, the pod cgroup's `struct pod_state`,
//! and the host-side `struct host_guard`. The layouts must match;
//! `STATE_LAYOUT` and the maps' value sizes guard that.
//!
//! Pods attached by another release keep that release's maps. Releases
//! before layout 3 kept one `pod_state` per pod cgroup, which held the pod's
//! one interface; `IfaceState::from_value` reads those too, so that this
//! release can list, check and remove their pods. Fields are only ever
//! appended to a layout, so a newer release's values read as their common
//! prefix.

use serde::Serialize;

use crate::node::bpf_sys::Pod;
use crate::policy::limits::{Limit, Limits};
use crate::policy::operator::LimitBasis;

/// Layout 3: per-interface state in a hash map, keyed by pod cgroup and
/// interface, so that a pod on several networks has each shaped on its own.
pub const STATE_LAYOUT: u32 = 3;

/// `IfaceState::flags`: ingress is shaped by a queue (an ifb in the pod's
/// netns; a host-side TBF for pods of earlier releases), and the datapath
/// sizes receive windows for that queue.
pub const IFACE_INGRESS_QUEUED: u32 = 1;
/// `IfaceState::flags`: receive windows hold 8 ms of queue at every rate,
/// not only from 40M on (`ingressTradeoff: "cpu"`; ebpf/shaper.h: rwnd_for).
pub const IFACE_INGRESS_LOW_CPU: u32 = 2;
/// `IfaceState::flags >> IFACE_MTU_SHIFT`: the interface's MTU, so that the
/// cgroup hooks charge a datagram the IP layer fragments as its fragments
/// (ebpf/shaper.h: cgroup_wire_bytes). 0: unknown.
pub const IFACE_MTU_SHIFT: u32 = 16;
/// `host_guards` keys of guards on the pod's own interface (ebpf/shaper.bpf.c:
/// guard_pod_egress): this bit and the filter's 16-bit classid. Host-side
/// guards are keyed by their interface's index, which never has it.
pub const POD_SIDE_GUARD: u32 = 0x8000_0000;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Bytes on the wire per second; 0 means unlimited.
    pub rate: u64,
    /// Bytes.
    pub burst: u64,
    pub tokens: i64,
    pub last_ns: u64,
    pub passed_bytes: u64,
    pub passed_packets: u64,
    pub dropped_bytes: u64,
    pub dropped_packets: u64,
    pub marked_bytes: u64,
    pub marked_packets: u64,
}

/// The flows of one direction that take a share of its rate: those
/// counted in each of the last 8 windows (by the window they were last
/// counted in), and those seen in this window and the one before.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FlowCounts {
    pub window: u64,
    pub counted: [i32; 8],
    pub seen_now: u32,
    pub seen_before: u32,
}

impl FlowCounts {
    /// The flows counted now: each is in one of the windows.
    pub fn counted_flows(&self) -> u32 {
        self.counted.iter().sum::<i32>().max(0) as u32
    }
}

/// One shaped interface of one pod (`struct iface_state`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IfaceState {
    /// struct bpf_spin_lock; BPF_F_LOCK copies skip it.
    #[serde(skip)]
    pub lock: u32,
    pub layout: u32,
    /// IFACE_INGRESS_QUEUED.
    pub flags: u32,
    /// The pod's host-side peer in the node's netns (0: none).
    pub host_ifindex: u32,
    pub senders: FlowCounts,
    pub receivers: FlowCounts,
    pub ingress: Bucket,
    pub egress: Bucket,
}

// SAFETY: repr(C), integers only, every bit pattern valid.
unsafe impl Pod for IfaceState {}

// SAFETY: repr(C), integers only.
unsafe impl Pod for Bucket {}

/// The key of an `IfaceState`: the pod cgroup and the interface's index in
/// the pod's netns (`struct iface_key`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IfaceKey {
    pub cgroup_id: u64,
    pub ifindex: u32,
    pub pad: u32,
}

// SAFETY: repr(C), integers only.
unsafe impl Pod for IfaceKey {}

/// The pod cgroup's storage value (`struct pod_state`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PodRecord {
    pub cgroup_id: u64,
    pub layout: u32,
    /// The pod's one shaped interface, when it has exactly one (0: none or
    /// several): its tunnels' traffic is charged to it (ebpf/shaper.bpf.c
    /// egress_iface_of). Padding before, so the layout is unchanged.
    pub sole_ifindex: u32,
}

// SAFETY: repr(C), integers only.
unsafe impl Pod for PodRecord {}

/// The outer enforcement point of a pod's egress, on its host-side veth
/// (`struct host_guard`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HostGuard {
    #[serde(skip)]
    pub lock: u32,
    #[serde(skip)]
    pub pad: u32,
    pub cgroup_id: u64,
    pub egress: Bucket,
}

// SAFETY: repr(C), integers only.
unsafe impl Pod for HostGuard {}

/// The door of a pod interface's ingress queue (`struct queue_gate`): the
/// queue's ifb, and a model of its TBF that turns fragmented datagrams
/// away whole (ebpf/shaper.h: queue_admit). Keyed in `ingress_queues` by
/// its filter's classid. The queue never marks: its bucket's `marked_*`
/// count the bare TCP segments (ACKs) that skipped the queue while its
/// bucket was nearly full (queue_bypass).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueGate {
    #[serde(skip)]
    pub lock: u32,
    pub ifb: u32,
    pub cgroup_id: u64,
    /// Bytes the TBF queues.
    pub limit: u64,
    pub queue: Bucket,
}

// SAFETY: repr(C), integers only.
unsafe impl Pod for QueueGate {}

impl QueueGate {
    /// The door of a queue of `rate_bytes` per second, `burst` and `limit`
    /// bytes, on the ifb `ifb`, for the pod cgroup `cgroup_id`.
    pub fn new(cgroup_id: u64, ifb: u32, rate_bytes: u64, burst: u64, limit: u64) -> Self {
        QueueGate {
            ifb,
            cgroup_id,
            limit,
            queue: Bucket { rate: rate_bytes, burst, tokens: burst as i64, ..Default::default() },
            ..Default::default()
        }
    }
}

/// How much more than the pod's own egress bucket the host-side guard
/// holds. The pod's hooks let through at most rate x t + 2 x burst (TCP
/// may borrow one burst), so a guard holding that, plus the largest GSO skb
/// and a few ms of the rate for packets in flight between the two points,
/// never drops what those hooks shaped: it drops only what went around them.
pub const GUARD_MARGIN_MS: u64 = 5;
pub const GUARD_MARGIN_MIN_BYTES: u64 = 64 * 1024;
/// The guard also runs 1/GUARD_RATE_HEADROOM (3.1%) faster than the pod's
/// bucket: the frames of the pod's netns that its cgroup hooks never see
/// (ARP and ND, the kernel's own RSTs and ICMP errors, processes outside
/// the pod cgroup) reach the guard only. Two layers policing at the same
/// rate, the outer one charged more, would drain the outer one at a
/// sustained rate and drop the pod's own traffic there. What goes around
/// the pod's hooks still gets at most 1.031 of the limit. 1/64 was too
/// little: eight CUBIC uploads from a 10M pod on a LAN then met the guard
/// (0.795 of the limit, Jain 0.878; 1.000 and 1.000 at 1/32).
pub const GUARD_RATE_HEADROOM: u64 = 32;

impl Bucket {
    /// A full bucket for `limit` (bits), counted in `basis`. `last_ns` is 0
    /// rather than user space's clock, which a time namespace can offset
    /// from the kernel's bpf_ktime_get_ns(): the first refill then sees an
    /// elapsed time above MAX_REFILL_NS, caps it, and leaves the bucket full.
    pub fn full(limit: Option<Limit>, basis: LimitBasis) -> Self {
        match limit {
            None => Bucket::default(),
            Some(l) => {
                let burst = l.burst.div_ceil(8);
                Bucket {
                    rate: basis.wire_bytes_per_second(l.rate),
                    burst,
                    tokens: burst as i64,
                    last_ns: 0,
                    ..Default::default()
                }
            }
        }
    }

    /// The limit this bucket enforces, as (rate bits/s, burst bits) on the wire.
    pub fn limit(&self) -> Option<(u64, u64)> {
        (self.rate != 0).then_some((self.rate * 8, self.burst * 8))
    }
}

impl HostGuard {
    /// The guard for a pod whose egress bucket is `egress` (see GUARD_MARGIN_MS).
    pub fn for_egress(cgroup_id: u64, egress: &Bucket) -> Self {
        let margin = (egress.rate * GUARD_MARGIN_MS / 1000).max(GUARD_MARGIN_MIN_BYTES);
        let burst = 2 * egress.burst + margin;
        HostGuard {
            cgroup_id,
            egress: Bucket { rate: egress.rate + egress.rate / GUARD_RATE_HEADROOM, burst, tokens: burst as i64, ..Default::default() },
            ..Default::default()
        }
    }
}

impl IfaceState {
    pub fn new(limits: &Limits, basis: LimitBasis) -> Self {
        IfaceState {
            layout: STATE_LAYOUT,
            ingress: Bucket::full(limits.ingress, basis),
            egress: Bucket::full(limits.egress, basis),
            ..Default::default()
        }
    }

    /// Interprets a map value of any layout: an interface's value of layout
    /// 3 or later (its common prefix), or a pod cgroup's value of layout 1
    /// or 2 (before state per interface), whose one interface it held.
    pub fn from_value(value: &[u8]) -> Result<Self, String> {
        if value.len() < 8 {
            return Err(format!("a {}-byte value is no datapath state", value.len()));
        }
        let layout = u32::from_ne_bytes(value[4..8].try_into().unwrap());
        match layout {
            0 => Err("the value has no layout: user space never wrote it".into()),
            1 | 2 => legacy::read(value),
            _ => {
                let size = std::mem::size_of::<IfaceState>();
                if value.len() < size {
                    return Err(format!("a {}-byte value of layout {layout} is shorter than {size} bytes", value.len()));
                }
                let mut state = IfaceState::default();
                // SAFETY: IfaceState is repr(C) integers only (Pod), so any
                // bytes are a valid value; `size` is within both buffers.
                unsafe { std::ptr::copy_nonoverlapping(value.as_ptr(), &mut state as *mut IfaceState as *mut u8, size) };
                Ok(state)
            }
        }
    }

    /// Whether the stored limits are the requested ones (rates and bursts,
    /// after the same byte rounding ADD applied).
    pub fn enforces(&self, limits: &Limits, basis: LimitBasis) -> bool {
        let fresh = IfaceState::new(limits, basis);
        (self.ingress.rate, self.ingress.burst) == (fresh.ingress.rate, fresh.ingress.burst)
            && (self.egress.rate, self.egress.burst) == (fresh.egress.rate, fresh.egress.burst)
    }
}

/// Values of layouts 1 and 2: one `struct pod_state` per pod cgroup. Only
/// read, for pods an older release attached.
mod legacy {
    use super::{Bucket, FlowCounts, IfaceState};

    /// lock, layout, sender window, senders now and before, then the two buckets.
    const BUCKETS_AT: usize = 24;
    const LAYOUT_1_LEN: usize = BUCKETS_AT + 2 * std::mem::size_of::<Bucket>();

    fn u32_at(v: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(v[at..at + 4].try_into().unwrap())
    }

    fn u64_at(v: &[u8], at: usize) -> u64 {
        u64::from_ne_bytes(v[at..at + 8].try_into().unwrap())
    }

    fn bucket_at(v: &[u8], at: usize) -> Bucket {
        let f = |i: usize| u64_at(v, at + 8 * i);
        Bucket {
            rate: f(0),
            burst: f(1),
            tokens: f(2) as i64,
            last_ns: f(3),
            passed_bytes: f(4),
            passed_packets: f(5),
            dropped_bytes: f(6),
            dropped_packets: f(7),
            marked_bytes: f(8),
            marked_packets: f(9),
        }
    }

    pub fn read(v: &[u8]) -> Result<IfaceState, String> {
        if v.len() < LAYOUT_1_LEN {
            return Err(format!("a {}-byte value is shorter than any pod_state layout ({LAYOUT_1_LEN} bytes)", v.len()));
        }
        let mut s = IfaceState {
            layout: u32_at(v, 4),
            senders: FlowCounts { window: u64_at(v, 8), counted: [u32_at(v, 16).max(u32_at(v, 20)) as i32, 0, 0, 0, 0, 0, 0, 0], ..Default::default() },
            ingress: bucket_at(v, BUCKETS_AT),
            egress: bucket_at(v, BUCKETS_AT + std::mem::size_of::<Bucket>()),
            ..Default::default()
        };
        // Layout 2 appended: ifindex, flags, rx_window, receivers now and before, host_ifindex.
        let l2 = LAYOUT_1_LEN;
        if s.layout >= 2 && v.len() >= l2 + 32 {
            s.flags = u32_at(v, l2 + 4);
            s.receivers = FlowCounts {
                window: u64_at(v, l2 + 8),
                counted: [u32_at(v, l2 + 16).max(u32_at(v, l2 + 20)) as i32, 0, 0, 0, 0, 0, 0, 0],
                ..Default::default()
            };
            s.host_ifindex = u32_at(v, l2 + 24);
        }
        Ok(s)
    }

    #[cfg(test)]
    pub const LEN_1: usize = LAYOUT_1_LEN;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_structs() {
        // ebpf/shaper.h asserts the same sizes.
        assert_eq!(std::mem::size_of::<IfaceState>(), 272);
        assert_eq!(std::mem::size_of::<Bucket>(), 80);
        assert_eq!(std::mem::size_of::<HostGuard>(), 96);
        assert_eq!(std::mem::size_of::<QueueGate>(), 104);
        assert_eq!(std::mem::size_of::<IfaceKey>(), 16);
        assert_eq!(std::mem::size_of::<PodRecord>(), 16);
    }

    #[test]
    fn new_state_is_full_and_in_wire_bytes() {
        let limits = Limits { ingress: Some(Limit { rate: 10_000_000, burst: 8_000_001 }), egress: None };
        let s = IfaceState::new(&limits, LimitBasis::Frames);
        assert_eq!(s.layout, STATE_LAYOUT);
        assert_eq!(s.ingress.rate, 1_250_000);
        assert_eq!(s.ingress.burst, 1_000_001);
        assert_eq!(s.ingress.tokens, 1_000_001);
        assert_eq!(s.ingress.last_ns, 0, "user space's clock is never trusted");
        assert_eq!(s.egress, Bucket::default());
        assert!(s.enforces(&limits, LimitBasis::Frames));
        assert!(!s.enforces(&limits, LimitBasis::TcpGoodput));
        assert!(!s.enforces(&Limits::default(), LimitBasis::Frames));
    }

    #[test]
    fn tcp_goodput_scales_the_frame_budget_by_a_full_segments_frame() {
        assert_eq!(LimitBasis::Frames.wire_bytes_per_second(10_000_000), 1_250_000);
        // 1.25 MB/s x 1514/1448
        assert_eq!(LimitBasis::TcpGoodput.wire_bytes_per_second(10_000_000), 1_306_975);
        assert!(LimitBasis::TcpGoodput.wire_bytes_per_second(100_000_000_000) as f64 / 12.5e9 <= 1.05);
        assert_eq!(LimitBasis::parse("tcp-goodput"), Some(LimitBasis::TcpGoodput));
        assert_eq!(LimitBasis::parse("payload"), None);
    }

    #[test]
    fn the_guard_holds_what_the_pods_hooks_can_pass_beyond_the_rate() {
        let egress = Bucket::full(Some(Limit { rate: 10_000_000, burst: 131_072 * 8 }), LimitBasis::Frames);
        let g = HostGuard::for_egress(9, &egress);
        assert_eq!(g.egress.rate, egress.rate + egress.rate / 32);
        assert_eq!(g.egress.burst, 2 * 131_072 + GUARD_MARGIN_MIN_BYTES);
        assert_eq!(g.egress.tokens, g.egress.burst as i64);
        let fast = Bucket::full(Some(Limit { rate: 1_000_000_000, burst: 6_250_000 * 8 }), LimitBasis::Frames);
        assert_eq!(HostGuard::for_egress(9, &fast).egress.burst, 2 * 6_250_000 + 625_000);
    }

    fn as_bytes<T: Pod>(s: &T) -> Vec<u8> {
        // SAFETY: reading a repr(C) integer struct as bytes.
        unsafe { std::slice::from_raw_parts(s as *const T as *const u8, std::mem::size_of::<T>()) }.to_vec()
    }

    #[test]
    fn values_of_layout_3_and_later_read_their_common_prefix() {
        let limits = Limits { ingress: Some(Limit { rate: 8_000_000, burst: 800_000 }), egress: None };
        let mut s = IfaceState::new(&limits, LimitBasis::Frames);
        s.ingress.passed_bytes = 7;
        s.flags = IFACE_INGRESS_QUEUED;
        let mut newer = as_bytes(&s);
        newer[4..8].copy_from_slice(&4u32.to_ne_bytes());
        newer.extend_from_slice(&[0xab; 24]);
        let n = IfaceState::from_value(&newer).unwrap();
        assert_eq!((n.layout, n.flags, n.ingress, n.egress), (4, IFACE_INGRESS_QUEUED, s.ingress, s.egress));
        assert!(IfaceState::from_value(&as_bytes(&s)[..250]).is_err(), "truncated");
        assert!(IfaceState::from_value(&[0u8; 272]).is_err(), "never written");
    }

    #[test]
    fn pod_values_of_layouts_1_and_2_read_as_their_one_interface() {
        // Layout 2 as release N wrote it: lock, layout, window, senders, two
        // buckets, then ifindex, flags, rx_window, receivers, host_ifindex, pad.
        let ingress = Bucket { rate: 1_250_000, burst: 312_500, tokens: 5, passed_bytes: 99, ..Default::default() };
        let egress = Bucket { rate: 2_500_000, burst: 131_072, dropped_packets: 3, ..Default::default() };
        let mut v = Vec::new();
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(&2u32.to_ne_bytes());
        v.extend_from_slice(&41u64.to_ne_bytes());
        v.extend_from_slice(&3u32.to_ne_bytes());
        v.extend_from_slice(&2u32.to_ne_bytes());
        v.extend(as_bytes(&ingress));
        v.extend(as_bytes(&egress));
        assert_eq!(v.len(), legacy::LEN_1);
        let one = IfaceState::from_value(&{
            let mut l1 = v.clone();
            l1[4..8].copy_from_slice(&1u32.to_ne_bytes());
            l1
        })
        .unwrap();
        assert_eq!((one.layout, one.ingress, one.egress, one.senders.counted_flows()), (1, ingress, egress, 3));
        for x in [7u32, 1, 0, 0] {
            v.extend_from_slice(&x.to_ne_bytes());
        }
        v.extend_from_slice(&[0u8; 8]);
        v.extend_from_slice(&9u32.to_ne_bytes()); // host_ifindex
        v.extend_from_slice(&0u32.to_ne_bytes());
        assert_eq!(v.len(), 216);
        let two = IfaceState::from_value(&v).unwrap();
        assert_eq!((two.layout, two.flags, two.host_ifindex, two.ingress, two.egress), (2, IFACE_INGRESS_QUEUED, 9, ingress, egress));
        assert!(IfaceState::from_value(&v[..100]).is_err());
    }
}
