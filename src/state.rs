//! User space's view of `struct pod_state` in ebpf/shaper.h. The two layouts
//! must match; `POD_STATE_LAYOUT` and the map's value size guard that.
//!
//! Pods attached by another release keep that release's map, whose values
//! may be older or newer: fields are only ever appended to the C struct, so
//! every layout starts with the common prefix (lock, layout, sender window,
//! the two buckets). Reading takes the map's real value size and interprets
//! what both layouts share (`from_value`); writing refuses any map whose
//! value size is not this build's (bpf_sys::update_locked).

use serde::Serialize;

use crate::bpf_sys::Pod;
use crate::limits::{Limit, Limits};

/// Bumped whenever fields are appended to struct pod_state. Layout 2 added
/// the pod's interface and the ingress queue's receive-window state.
pub const POD_STATE_LAYOUT: u32 = 2;

/// Bytes every layout shares: lock, layout, window, the two sender counts
/// and the two buckets (layout 1 is exactly this).
pub const COMMON_PREFIX_LEN: usize = 4 + 4 + 8 + 4 + 4 + 2 * std::mem::size_of::<Bucket>();

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
    /// A full bucket for `limit` (bits). `last_ns` is 0 rather than user
    /// space's clock, which a time namespace can offset from the kernel's
    /// bpf_ktime_get_ns(): the first refill then sees an elapsed time above
    /// MAX_REFILL_NS, caps it, and leaves the bucket full.
    pub fn full(limit: Option<Limit>) -> Self {
        match limit {
            None => Bucket::default(),
            Some(l) => {
                let burst = l.burst.div_ceil(8);
                Bucket {
                    rate: l.rate / 8,
                    burst,
                    tokens: burst as i64,
                    last_ns: 0,
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
    pub fn new(limits: &Limits, ifindex: u32) -> Self {
        PodState {
            layout: POD_STATE_LAYOUT,
            ifindex,
            ingress: Bucket::full(limits.ingress),
            egress: Bucket::full(limits.egress),
            ..Default::default()
        }
    }

    /// Interprets a map value of any layout: the common prefix always, and
    /// as much of this build's later fields as the value holds (the rest
    /// stay zero). A value shorter than the prefix is not ours.
    pub fn from_value(value: &[u8]) -> Result<Self, String> {
        if value.len() < COMMON_PREFIX_LEN {
            return Err(format!("a {}-byte value is shorter than any pod_state layout ({COMMON_PREFIX_LEN} bytes)", value.len()));
        }
        let mut state = PodState::default();
        let n = value.len().min(std::mem::size_of::<PodState>());
        // SAFETY: PodState is repr(C) integers only (bpf_sys::Pod), so any
        // bytes are a valid value; n is within both buffers.
        unsafe { std::ptr::copy_nonoverlapping(value.as_ptr(), &mut state as *mut PodState as *mut u8, n) };
        if state.layout == 0 {
            return Err("the value has no layout: user space never wrote it".into());
        }
        Ok(state)
    }

    /// Whether the stored limits are the requested ones (rates and bursts,
    /// after the same byte rounding ADD applied). Only the common prefix is
    /// compared, so a pod attached by another release passes too.
    pub fn enforces(&self, limits: &Limits) -> bool {
        let fresh = PodState::new(limits, 0);
        (self.ingress.rate, self.ingress.burst) == (fresh.ingress.rate, fresh.ingress.burst)
            && (self.egress.rate, self.egress.burst) == (fresh.egress.rate, fresh.egress.burst)
    }
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
        let s = PodState::new(&limits, 7);
        assert_eq!(s.ifindex, 7);
        assert_eq!(s.ingress.rate, 1_250_000);
        assert_eq!(s.ingress.burst, 1_000_001);
        assert_eq!(s.ingress.tokens, 1_000_001);
        assert_eq!(s.ingress.last_ns, 0, "user space's clock is never trusted");
        assert_eq!(s.egress, Bucket::default());
        assert!(s.enforces(&limits));
        assert!(!s.enforces(&Limits::default()));
    }

    fn as_bytes(s: &PodState) -> Vec<u8> {
        // SAFETY: reading a repr(C) integer struct as bytes.
        unsafe { std::slice::from_raw_parts(s as *const PodState as *const u8, std::mem::size_of::<PodState>()) }.to_vec()
    }

    #[test]
    fn values_of_older_and_newer_layouts_read_their_common_prefix() {
        let limits = Limits { ingress: Some(Limit { rate: 8_000_000, burst: 800_000 }), egress: None };
        let mut s = PodState::new(&limits, 0);
        s.ingress.passed_bytes = 7;
        let bytes = as_bytes(&s);
        assert_eq!(COMMON_PREFIX_LEN, 184);
        // A newer release appended fields: they are ignored.
        let mut newer = bytes.clone();
        newer[4..8].copy_from_slice(&2u32.to_ne_bytes());
        newer.extend_from_slice(&[0xab; 24]);
        let n = PodState::from_value(&newer).unwrap();
        assert_eq!((n.layout, n.ingress, n.egress), (2, s.ingress, s.egress));
        assert!(n.enforces(&limits));
        // Exactly the prefix (layout 1) reads whole.
        assert_eq!(PodState::from_value(&bytes[..COMMON_PREFIX_LEN]).unwrap().ingress, s.ingress);
        // Shorter than any layout, or never written: not a pod state.
        assert!(PodState::from_value(&bytes[..100]).is_err());
        assert!(PodState::from_value(&vec![0u8; 184]).is_err());
    }
}
