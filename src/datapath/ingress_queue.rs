//! The pod's ingress queue: a TBF qdisc on the host side of the pod's veth.
//!
//! A cgroup ingress hook can only pass or drop, and at in-cluster RTTs that
//! makes senders resend a large share of what they send (docs/shaping.md).
//! Where the main plugin leaves a host-side veth (bridge, ptp), ADD puts a
//! queue there instead, whose bucket is the pod's ingress burst, and the
//! datapath sizes the pod's receive windows from each flow's share and RTT
//! so that senders keep only a few ms of data in it. Where there is none (macvlan,
//! ipvlan, a main plugin that lists no host interface), or the interface
//! already has a root qdisc (another shaper, such as the reference bandwidth
//! plugin), the BPF policer stays in force; the logs, CHECK and `stats` say
//! which.
//!
//! Light flows toward the pod (a response, a handshake) pass its download:
//! the TBF's child is a pfifo_fast, and a filter on the interface's egress
//! gives them its first band (ebpf/shaper.bpf.c: prioritize_light_flows).
//!
//! The qdiscs are set up over rtnetlink (crate::datapath::tc; no `tc` binary is run)
//! and are recognised by their handles.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The root qdisc handle that marks a queue as ours ("b9a1:").
pub const HANDLE: &str = "b9a1:";
const HANDLE_MAJOR: u16 = 0xb9a1;
/// The queue's child: pfifo_fast, whose first band (priority
/// TC_PRIO_INTERACTIVE) leaves before the rest.
const CHILD_MAJOR: u16 = 0xb9a2;
/// The filter on the interface's egress that gives light flows that
/// priority (ebpf/shaper.bpf.c: prioritize_light_flows).
pub const PRIORITY_PREF: u16 = 49102;
const PRIORITY_PROG: &str = "prioritize_light_flows";
/// The kernel keeps 15 bytes of a program's name.
const PRIORITY_PROG_NAME: &str = "prioritize_ligh";

/// The queue holds max(rate x QUEUE_MS, QUEUE_MIN_BYTES): room for every
/// receiver's window beyond the path's round trip (ebpf/shaper.h:
/// rwnd_for keeps RWND_QUEUE_US per flow there), and for flows starting
/// together before they are counted.
const QUEUE_MS: u64 = 20;
const QUEUE_MIN_BYTES: u64 = 256 * 1024;
/// TBF's bucket is the pod's ingress burst, at least four frames.
const TBF_BURST_MIN_BYTES: u64 = 4 * 1514;

/// The queue's parameters: TBF counts every frame with its Ethernet header,
/// as the limit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSpec {
    pub rate_bits: u64,
    pub burst_bytes: u64,
    pub limit_bytes: u64,
}

impl QueueSpec {
    /// For an ingress limit counted in `basis`: the pod receives its burst
    /// at the path's speed after idle, then its rate.
    pub fn for_limit(limit: crate::policy::limits::Limit, basis: crate::policy::operator::LimitBasis) -> Self {
        let bytes_per_s = basis.wire_bytes_per_second(limit.rate);
        QueueSpec {
            rate_bits: bytes_per_s * 8,
            burst_bytes: limit.burst.div_ceil(8).max(TBF_BURST_MIN_BYTES),
            limit_bytes: (bytes_per_s * QUEUE_MS / 1000).max(QUEUE_MIN_BYTES),
        }
    }
}

/// The host-side interface of the pod in prevResult: one without a
/// `sandbox` that exists in this (the node's) netns and is not a bridge.
pub fn host_interface(prev_result: Option<&Value>) -> Option<String> {
    let interfaces = prev_result?.get("interfaces")?.as_array()?;
    interfaces.iter().find_map(|i| {
        if i.get("sandbox").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
            return None;
        }
        let name = i.get("name")?.as_str()?;
        // A name that is no interface name is never looked up.
        let valid = !name.is_empty() && name.len() < 16 && !name.contains(['/', ' ', '\0']) && name != "." && name != "..";
        let sys = Path::new("/sys/class/net").join(name);
        (valid && sys.exists() && !sys.join("bridge").exists()).then(|| name.to_string())
    })
}

/// Our queue's handle as the kernel stores it.
fn handle_id() -> u32 {
    crate::datapath::tc::handle(HANDLE_MAJOR)
}

fn tbf_of(spec: QueueSpec) -> crate::datapath::tc::Tbf {
    crate::datapath::tc::Tbf { rate_bits: spec.rate_bits, burst_bytes: spec.burst_bytes, limit_bytes: spec.limit_bytes }
}

/// Adds the queue as the root qdisc of `ifname`, its pfifo_fast child, and
/// the filter that gives light flows the first band, running the program
/// pinned at `classifier`. Fails, changing nothing, if the interface
/// already has a root qdisc of its own.
pub fn install(ifname: &str, spec: QueueSpec, classifier: &Path) -> Result<()> {
    let ifindex = crate::node::netns::ifindex(ifname)?;
    crate::datapath::tc::tbf(crate::datapath::tc::Verb::Add, ifindex, crate::datapath::tc::ROOT, handle_id(), &tbf_of(spec))
        .with_context(|| format!("cannot add the ingress queue (tbf, handle {HANDLE}) to {ifname}"))?;
    let rest = set_up_priority(ifindex, classifier);
    if rest.is_err() {
        let _ = remove(ifindex);
    }
    rest.with_context(|| format!("cannot set up the ingress queue's bands on {ifname}"))
}

/// The TBF's pfifo_fast child and the filter choosing its band.
fn set_up_priority(ifindex: u32, classifier: &Path) -> Result<()> {
    crate::datapath::tc::pfifo_fast(crate::datapath::tc::Verb::Replace, ifindex, handle_id() | 1, crate::datapath::tc::handle(CHILD_MAJOR))?;
    crate::datapath::tc::attach_pinned_filter(ifindex, crate::datapath::tc::Hook::Egress, PRIORITY_PREF, 1, classifier, PRIORITY_PROG)
}

/// Changes the rate of our queue on `ifindex` in place (`bpf-ratelimit set`):
/// packets in it stay queued.
pub fn change(ifindex: u32, spec: QueueSpec) -> Result<()> {
    let Some(ifname) = ifname_of(ifindex) else { bail!("the ingress queue's host interface (index {ifindex}) is gone") };
    crate::datapath::tc::tbf(crate::datapath::tc::Verb::Change, ifindex, crate::datapath::tc::ROOT, handle_id(), &tbf_of(spec))
        .with_context(|| format!("cannot change the ingress queue on {ifname}"))?;
    // A change of TBF's limit may give it a plain fifo child again.
    crate::datapath::tc::pfifo_fast(crate::datapath::tc::Verb::Replace, ifindex, handle_id() | 1, crate::datapath::tc::handle(CHILD_MAJOR))
        .with_context(|| format!("cannot keep the ingress queue's bands on {ifname}"))
}

/// The interface's name, if `ifindex` still exists in this netns.
pub fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

/// The root qdisc of `ifindex`, if it is ours: its parameters as read back.
pub fn our_qdisc(ifindex: u32) -> Result<Option<crate::datapath::tc::Tbf>> {
    Ok(crate::datapath::tc::qdiscs(ifindex)?
        .into_iter()
        .find(|q| q.parent == crate::datapath::tc::ROOT && q.kind == "tbf" && q.handle == handle_id())
        .map(|q| q.tbf.unwrap_or(crate::datapath::tc::Tbf { rate_bits: 0, burst_bytes: 0, limit_bytes: 0 })))
}

/// Removes our queue from the interface `ifindex`, if both are still there.
/// The interface usually goes with the pod's netns; that is not an error.
pub fn remove(ifindex: u32) -> Result<()> {
    let Some(ifname) = ifname_of(ifindex) else { return Ok(()) };
    let _ = crate::datapath::tc::filter_delete(ifindex, crate::datapath::tc::Hook::Egress, PRIORITY_PREF, 0);
    // The kernel deletes a root qdisc only if its handle is the one given,
    // so another shaper's qdisc is never touched; one request, as DEL is timed.
    match crate::datapath::tc::qdisc_delete(ifindex, crate::datapath::tc::ROOT, handle_id()) {
        Ok(_) => Ok(()),
        Err(_) if our_qdisc(ifindex)?.is_none() => Ok(()),
        Err(e) => Err(e.context(format!("cannot remove the ingress queue from {ifname}"))),
    }
}

/// For CHECK: the queue is on `ifindex` with the rate of `spec`.
pub fn verify_spec(ifindex: u32, spec: QueueSpec) -> Result<()> {
    let Some(ifname) = ifname_of(ifindex) else { bail!("the ingress queue's host interface (index {ifindex}) is gone") };
    let Some(q) = our_qdisc(ifindex)? else { bail!("the ingress queue is missing from {ifname}") };
    if !crate::datapath::tc::has_filter(ifindex, crate::datapath::tc::Hook::Egress, PRIORITY_PREF, PRIORITY_PROG_NAME)? {
        bail!("the ingress queue's band filter is missing from {ifname}");
    }
    let want = spec.rate_bits;
    // The kernel keeps the rate in bytes/s.
    if q.rate_bits.abs_diff(want) > want / 100 + 8 {
        bail!("the ingress queue on {ifname} runs at {} bit/s instead of {want}", q.rate_bits);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_counts_frames_holds_the_burst_and_scales_above_floors() {
        use crate::policy::limits::Limit;
        use crate::policy::operator::LimitBasis;
        let q = QueueSpec::for_limit(Limit { rate: 10_000_000, burst: 2_500_000 }, LimitBasis::Frames);
        assert_eq!(q.rate_bits, 10_000_000);
        assert_eq!(q.burst_bytes, 312_500);
        assert_eq!(q.limit_bytes, QUEUE_MIN_BYTES);
        let q = QueueSpec::for_limit(Limit { rate: 1_000_000_000, burst: 8 }, LimitBasis::Frames);
        assert_eq!(q.burst_bytes, TBF_BURST_MIN_BYTES);
        assert_eq!(q.limit_bytes, 2_500_000);
        let q = QueueSpec::for_limit(Limit { rate: 10_000_000, burst: 8 }, LimitBasis::TcpGoodput);
        assert_eq!(q.rate_bits, 10_455_800);
    }

    #[test]
    fn host_interface_skips_sandbox_bridges_and_missing_names() {
        // "lo" exists in every netns and is no bridge; the others do not exist.
        let prev = serde_json::json!({"interfaces": [
            {"name": "eth0", "sandbox": "/var/run/netns/x"},
            {"name": "no-such-if0"},
            {"name": "../../etc"},
            {"name": "lo"}
        ]});
        assert_eq!(host_interface(Some(&prev)).as_deref(), Some("lo"));
        assert_eq!(host_interface(Some(&serde_json::json!({"interfaces": [{"name": "eth0", "sandbox": "/x"}]}))), None);
        assert_eq!(host_interface(None), None);
    }
}
