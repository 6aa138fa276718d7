//! User space's view of `struct pod_state` in ebpf/shaper.h. The two layouts
//! must match; `POD_STATE_LAYOUT` and the map's value size guard that.

use serde::Serialize;

use crate::bpf_sys::Pod;
use crate::limits::{Limit, Limits};

/// Bumped whenever fields are appended to struct pod_state. Layout 2 added
/// the pod's interface and the ingress queue's receive-window state.
pub const POD_STATE_LAYOUT: u32 = 2;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Bytes per second; 0 means unlimited.
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

#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PodState {
    /// struct bpf_spin_lock; BPF_F_LOCK copies skip it.
    #[serde(skip)]
    pub lock: u32,
    pub layout: u32,
    /// The sender window the counts are for, and the bulk TCP senders in it
    /// and in the window before.
    pub window: u64,
    pub senders_now: u32,
    pub senders_before: u32,
    pub ingress: Bucket,
    pub egress: Bucket,
    /// Layout 2: the pod's interface index inside its netns (0: every
    /// interface but loopback is shaped).
    pub ifindex: u32,
    /// POD_INGRESS_QUEUED: ingress is shaped by a queue on `host_ifindex`.
    pub flags: u32,
    /// The receiver window the counts are for, and the bulk TCP receivers
    /// in it and the window before.
    pub rx_window: u64,
    pub receivers_now: u32,
    pub receivers_before: u32,
    /// The host-side interface holding the pod's ingress queue.
    pub host_ifindex: u32,
    #[serde(skip)]
    pub pad: u32,
}

/// `PodState::flags`: ingress is shaped by a queue on the host side of the
/// pod's veth, and the datapath clamps receive windows instead of policing.
pub const POD_INGRESS_QUEUED: u32 = 1;

// SAFETY: repr(C), integers only, every bit pattern valid.
unsafe impl Pod for PodState {}

impl Bucket {
    /// A full bucket for `limit` (bits), starting at `now_ns`.
    pub fn full(limit: Option<Limit>, now_ns: u64) -> Self {
        match limit {
            None => Bucket::default(),
            Some(l) => {
                let burst = l.burst.div_ceil(8);
                Bucket {
                    rate: l.rate / 8,
                    burst,
                    tokens: burst as i64,
                    last_ns: now_ns,
                    ..Default::default()
                }
            }
        }
    }

    /// The limit this bucket enforces, in bits, as a Limits field compares it.
    pub fn limit(&self) -> Option<(u64, u64)> {
        (self.rate != 0).then_some((self.rate * 8, self.burst * 8))
    }
}

impl PodState {
    pub fn new(limits: &Limits, ifindex: u32, now_ns: u64) -> Self {
        PodState {
            layout: POD_STATE_LAYOUT,
            ifindex,
            ingress: Bucket::full(limits.ingress, now_ns),
            egress: Bucket::full(limits.egress, now_ns),
            ..Default::default()
        }
    }

    /// Whether the stored limits are the requested ones (rates and bursts,
    /// after the same byte rounding ADD applied).
    pub fn enforces(&self, limits: &Limits) -> bool {
        let fresh = PodState::new(limits, 0, 0);
        self.layout == POD_STATE_LAYOUT
            && (self.ingress.rate, self.ingress.burst) == (fresh.ingress.rate, fresh.ingress.burst)
            && (self.egress.rate, self.egress.burst) == (fresh.egress.rate, fresh.egress.burst)
    }
}

/// CLOCK_MONOTONIC in ns, the clock bpf_ktime_get_ns() reads.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_c_struct() {
        // 4 (lock) + 4 + 8 + 4 + 4 + 2 * 10 * 8, then layout 2's 4 + 4 + 8 + 4 + 4 + 4 + 4;
        // ebpf/shaper.h asserts the same size.
        assert_eq!(std::mem::size_of::<PodState>(), 216);
        assert_eq!(std::mem::size_of::<Bucket>(), 80);
    }

    #[test]
    fn new_state_is_full_and_in_bytes() {
        let limits = Limits { ingress: Some(Limit { rate: 10_000_000, burst: 8_000_001 }), egress: None };
        let s = PodState::new(&limits, 7, 42);
        assert_eq!(s.ifindex, 7);
        assert_eq!(s.ingress.rate, 1_250_000);
        assert_eq!(s.ingress.burst, 1_000_001);
        assert_eq!(s.ingress.tokens, 1_000_001);
        assert_eq!(s.ingress.last_ns, 42);
        assert_eq!(s.egress, Bucket::default());
        assert!(s.enforces(&limits));
        assert!(!s.enforces(&Limits::default()));
    }
}
