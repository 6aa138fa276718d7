//! The pod's ingress queue: a TBF qdisc on an ifb device in the pod's own
//! netns, fed by a filter on the pod interface's tc ingress.
//!
//! A cgroup ingress hook can only pass or drop, and at in-cluster RTTs that
//! makes senders resend a large share of what they send (docs/shaping.md).
//! So ADD puts a queue in front of the pod, whose bucket is the pod's
//! ingress burst, and the datapath sizes the pod's receive windows from
//! each flow's share and RTT so that senders keep only a few ms of data in it.
//!
//! Why in the pod's netns, and not on the host side of its veth as earlier
//! releases did: an eBPF main CNI (Cilium with BPF host routing, Calico
//! eBPF) delivers to pods with `bpf_redirect_peer`, which skips the host
//! veth's qdisc; a pod then downloaded at 79x its limit. Every main CNI
//! delivers through the pod interface's tc ingress, macvlan and ipvlan too.
//! There `queue_pod_ingress` (ebpf/shaper.bpf.c) redirects each frame to the
//! ifb, whose index is the filter's classid; the ifb hands it back to the
//! interface's receive path once the TBF lets it go. The device goes with
//! the pod's netns, whatever happens to DEL. A pod with CAP_NET_ADMIN could
//! remove it (as it could any filter in its netns); Kubernetes does not
//! grant that by default.
//!
//! Light flows toward the pod (a response, a handshake) pass its download:
//! `queue_pod_ingress` gives them priority TC_PRIO_INTERACTIVE, and the
//! TBF's child sends those first. Which child (`QueueChild`), by what the
//! kernel has:
//! - prio, whose first band (a pfifo) holds the light flows and whose
//!   second is an fq_codel: the rest share the rate flow by flow, so a UDP
//!   flood cannot take the download beside it. Debian 12's 6.1 builds
//!   fq_codel in and prio as a module.
//! - pfifo_fast, on kernels without prio or fq_codel (this project's CI
//!   host): light flows first, then one FIFO for the rest.
//!
//! Either child holds up to the device's txqueuelen packets a band (the
//! pfifos) or 10240 (fq_codel), whatever TBF's own limit says, so the ifb's
//! txqueuelen is set from that limit in full-sized frames, and the door
//! (`queue_admit`) is what holds the queue to the limit in bytes.
//!
//! Everything here works in the calling thread's netns (the pod's: call it
//! from `crate::node::netns::in_netns`), over rtnetlink (crate::datapath::tc),
//! and finds its objects by name and handle.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::datapath::tc::{self, Hook, Verb};

/// The root qdisc handle that marks a queue as ours ("b9a1:").
pub const HANDLE: &str = "b9a1:";
const HANDLE_MAJOR: u16 = 0xb9a1;
/// The queue's child (pfifo_fast or prio), whose first band (priority
/// TC_PRIO_INTERACTIVE) leaves before the rest.
const CHILD_MAJOR: u16 = 0xb9a2;
/// The fq_codel in prio's second band.
const FLOWS_MAJOR: u16 = 0xb9a4;
/// prio's map from a packet's priority to its band: TC_PRIO_INTERACTIVE
/// (6, the door's light flows) and TC_PRIO_CONTROL (7) to the first, as
/// pfifo_fast does; everything else (the door sets TC_PRIO_BESTEFFORT) to
/// the fq_codel.
const PRIOMAP: [u8; tc::PRIOMAP_LEN] = [1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
/// fq_codel is here to share the rate between flows, not to drop: the
/// receive windows keep each flow's standing queue at a few ms (19 ms for 8
/// flows at 10M), and the door holds the whole queue to its limit in bytes
/// and keeps a model of it that the windows are sized from; a drop below
/// the door would make that model wrong. So CoDel's target is above any
/// time the door lets a frame stand (its limit, 256 KB, at 1 Mbit/s is 2.1
/// s), and it does not depend on the rate: `set` never changes fq_codel in
/// place (lowering its limits under a parent is a NULL dereference on
/// unpatched kernels).
const FLOWS_CODEL: tc::FqCodel = tc::FqCodel { target_us: 5_000_000, interval_us: 10_000_000 };

/// What the queue's TBF hands frames to, by what the node's kernel has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum QueueChild {
    /// pfifo_fast: the light flows' band, then one FIFO for everything else
    /// (a flood into the pod shares it with the pod's download). Every
    /// kernel has it; records of earlier releases mean it.
    #[default]
    Bands,
    /// prio: the light flows' pfifo, then an fq_codel that shares the rest
    /// of the rate between flows.
    FlowFair,
}

impl QueueChild {
    /// For people and `stats`: the qdiscs, and what they leave open.
    pub fn describe(self) -> &'static str {
        match self {
            QueueChild::FlowFair => "light flows first, then fq_codel (prio)",
            QueueChild::Bands => "light flows first, then one FIFO (pfifo_fast: the kernel had no prio or fq_codel when the queue was made, or an earlier release made it)",
        }
    }
}
/// The filter on the pod interface's ingress that feeds the queue
/// (ebpf/shaper.bpf.c: queue_pod_ingress).
pub const QUEUE_FILTER_PREF: u16 = 49102;
pub const QUEUE_PROG: &str = "queue_pod_ingress";
/// The filter after it, whose mirred action puts frames in the queue
/// (ebpf/shaper.bpf.c: redirect_to_queue).
pub const REDIRECT_FILTER_PREF: u16 = 49104;
pub const REDIRECT_PROG: &str = "redirect_to_queue";
const REDIRECT_PROG_NAME: &str = "redirect_to_que";
/// The kernel keeps 15 bytes of a program's name.
const QUEUE_PROG_NAME: &str = "queue_pod_ingre";
/// Earlier releases' band filter on the host side's egress.
const HOST_SIDE_PRIORITY_PREF: u16 = 49102;

/// The queue holds max(rate x QUEUE_MS, QUEUE_MIN_BYTES): room for every
/// receiver's window beyond the path's round trip (ebpf/shaper.h:
/// rwnd_for keeps RWND_QUEUE_US per flow there), and for flows starting
/// together before they are counted.
const QUEUE_MS: u64 = 20;
const QUEUE_MIN_BYTES: u64 = 256 * 1024;
/// TBF's bucket is the pod's ingress burst, at least four frames.
const TBF_BURST_MIN_BYTES: u64 = 4 * 1514;
/// A full-sized frame, for the queue's length in packets.
const FULL_FRAME_BYTES: u64 = 1514;

/// The queue's parameters: TBF counts every frame with its Ethernet header,
/// as the limit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSpec {
    pub rate_bits: u64,
    pub burst_bytes: u64,
    pub limit_bytes: u64,
}

impl QueueSpec {
    /// For an ingress bucket already in wire bytes (the datapath's state).
    pub fn for_bucket(b: &crate::datapath::state::Bucket) -> Self {
        QueueSpec {
            rate_bits: b.rate * 8,
            burst_bytes: b.burst.max(TBF_BURST_MIN_BYTES),
            limit_bytes: (b.rate * QUEUE_MS / 1000).max(QUEUE_MIN_BYTES),
        }
    }

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

    /// The ifb's txqueuelen: the queue's limit in full-sized frames, which
    /// is what each pfifo_fast band holds.
    pub fn txqueuelen(&self) -> u32 {
        u32::try_from(self.limit_bytes.div_ceil(FULL_FRAME_BYTES)).unwrap_or(u32::MAX)
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
    tc::handle(HANDLE_MAJOR)
}

fn tbf_of(spec: QueueSpec) -> tc::Tbf {
    tc::Tbf { rate_bits: spec.rate_bits, burst_bytes: spec.burst_bytes, limit_bytes: spec.limit_bytes }
}

/// The name of the ifb holding the queue of the pod's interface
/// `pod_ifindex`: one per interface, so several networks each get their own.
pub fn ifb_name(pod_ifindex: u32) -> String {
    format!("brlq{pod_ifindex}")
}

/// The index of the queue's ifb for `pod_ifindex`, if it exists.
pub fn ifb_index(pod_ifindex: u32) -> Option<u32> {
    crate::node::netns::ifindex(&ifb_name(pod_ifindex)).ok()
}

/// Gives the queue's TBF on `ifb` its child: prio and fq_codel where the
/// kernel has them, else pfifo_fast.
fn add_child(ifb: u32) -> Result<QueueChild> {
    let flow_fair = (|| {
        tc::prio(Verb::Replace, ifb, handle_id() | 1, tc::handle(CHILD_MAJOR), 2, PRIOMAP).context("cannot add a prio qdisc")?;
        tc::fq_codel(Verb::Add, ifb, tc::handle(CHILD_MAJOR) | 2, tc::handle(FLOWS_MAJOR), &FLOWS_CODEL).context("cannot add an fq_codel qdisc")
    })();
    match flow_fair {
        Ok(()) => Ok(QueueChild::FlowFair),
        Err(e) => {
            // A kernel without them refuses with ENOENT ("Specified qdisc
            // kind is unknown"); whatever the reason, pfifo_fast replaces
            // what was made (the prio, and the fq_codel with it).
            log::info!("the ingress queue's child is pfifo_fast: {e:#}");
            tc::pfifo_fast(Verb::Replace, ifb, handle_id() | 1, tc::handle(CHILD_MAJOR)).context("cannot add the queue's bands")?;
            Ok(QueueChild::Bands)
        }
    }
}

/// The child the queue's TBF on `ifb` has, as the kernel reports it; None
/// when it is neither of ours (a plain FIFO, or something else).
pub fn child_of(ifb: u32) -> Result<Option<QueueChild>> {
    let qdiscs = tc::qdiscs(ifb)?;
    let at = |parent: u32, kind: &str, handle: u32| qdiscs.iter().any(|q| q.parent == parent && q.kind == kind && q.handle == handle);
    let child = tc::handle(CHILD_MAJOR);
    Ok(if at(handle_id() | 1, "prio", child) && at(child | 2, "fq_codel", tc::handle(FLOWS_MAJOR)) {
        Some(QueueChild::FlowFair)
    } else if at(handle_id() | 1, "pfifo_fast", child) {
        Some(QueueChild::Bands)
    } else {
        None
    })
}

/// Puts the queue in front of the pod's interface `pod_ifindex`: the ifb,
/// its TBF and child (`add_child`), and two filters on the interface's
/// ingress: the door, running the program pinned at `classifier`, whose
/// classid `door` keys the queue's door in `ingress_queues` (the caller
/// writes it, with the ifb's index this returns); then the redirect into
/// the ifb, running the program pinned at `redirect`. A queue left by an
/// earlier ADD of the same interface is replaced. On failure nothing remains.
/// Returns the ifb's index and the TBF's child.
pub fn install(pod_ifindex: u32, spec: QueueSpec, classifier: &Path, redirect: &Path, door: u16) -> Result<(u32, QueueChild)> {
    let _ = remove(pod_ifindex);
    let name = ifb_name(pod_ifindex);
    let ifb = tc::ifb_add(&name, spec.txqueuelen()).with_context(|| format!("cannot create the ingress queue's device {name} (needs the ifb module)"))?;
    let rest = (|| -> Result<QueueChild> {
        tc::tbf(Verb::Add, ifb, tc::ROOT, handle_id(), &tbf_of(spec)).context("cannot add the queue's tbf")?;
        let child = add_child(ifb)?;
        tc::attach_pinned_filter_with_classid(pod_ifindex, Hook::Ingress, QUEUE_FILTER_PREF, 1, classifier, QUEUE_PROG, door)
            .context("cannot add the queue's door")?;
        let prog = crate::node::bpf_sys::obj_get(redirect).with_context(|| format!("cannot open the pinned program {}", redirect.display()))?;
        tc::bpf_filter_redirecting(pod_ifindex, Hook::Ingress, REDIRECT_FILTER_PREF, 1, std::os::fd::AsFd::as_fd(&prog), REDIRECT_PROG, ifb)
            .context("cannot add the filter feeding the queue")?;
        Ok(child)
    })();
    if rest.is_err() {
        let _ = remove(pod_ifindex);
    }
    let child = rest.with_context(|| format!("cannot set up the ingress queue on {name}"))?;
    Ok((ifb, child))
}

/// Changes the rate of the queue in place (`bpf-ratelimit set`): packets in
/// it stay queued.
pub fn change(pod_ifindex: u32, spec: QueueSpec) -> Result<()> {
    let name = ifb_name(pod_ifindex);
    let Some(ifb) = ifb_index(pod_ifindex) else { bail!("the ingress queue's device {name} is gone") };
    tc::tbf(Verb::Change, ifb, tc::ROOT, handle_id(), &tbf_of(spec)).with_context(|| format!("cannot change the ingress queue on {name}"))?;
    // TBF keeps a child that is no fifo; should it have a plain fifo again,
    // the bands come back (pfifo_fast: whatever the kernel has, nothing in
    // flight is lost to making a new prio).
    if child_of(ifb)?.is_none() {
        tc::pfifo_fast(Verb::Replace, ifb, handle_id() | 1, tc::handle(CHILD_MAJOR))
            .with_context(|| format!("cannot keep the ingress queue's bands on {name}"))?;
    }
    tc::set_txqueuelen(ifb, spec.txqueuelen()).with_context(|| format!("cannot change the queue length of {name}"))
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
pub fn our_qdisc(ifindex: u32) -> Result<Option<tc::Tbf>> {
    Ok(tc::qdiscs(ifindex)?
        .into_iter()
        .find(|q| q.parent == tc::ROOT && q.kind == "tbf" && q.handle == handle_id())
        .map(|q| q.tbf.unwrap_or(tc::Tbf { rate_bits: 0, burst_bytes: 0, limit_bytes: 0 })))
}

/// Removes the queue of the pod's interface `pod_ifindex`: the filter and
/// the ifb (its qdiscs go with it). What is already gone is no error.
pub fn remove(pod_ifindex: u32) -> Result<()> {
    if crate::datapath::ingress_queue::ifname_of(pod_ifindex).is_some() {
        let _ = tc::filter_delete(pod_ifindex, Hook::Ingress, QUEUE_FILTER_PREF, 0);
        let _ = tc::filter_delete(pod_ifindex, Hook::Ingress, REDIRECT_FILTER_PREF, 0);
    }
    match ifb_index(pod_ifindex) {
        Some(ifb) => tc::link_delete(ifb).map(drop).with_context(|| format!("cannot remove the ingress queue's device {}", ifb_name(pod_ifindex))),
        None => Ok(()),
    }
}

/// Removes the host-side queue an earlier release put on `host_ifindex`
/// (in the node's netns), if both are still there.
pub fn remove_host_side(host_ifindex: u32) -> Result<()> {
    let Some(ifname) = ifname_of(host_ifindex) else { return Ok(()) };
    let _ = tc::filter_delete(host_ifindex, Hook::Egress, HOST_SIDE_PRIORITY_PREF, 0);
    // The kernel deletes a root qdisc only if its handle is the one given,
    // so another shaper's qdisc is never touched.
    match tc::qdisc_delete(host_ifindex, tc::ROOT, handle_id()) {
        Ok(_) => Ok(()),
        Err(_) if our_qdisc(host_ifindex)?.is_none() => Ok(()),
        Err(e) => Err(e.context(format!("cannot remove the ingress queue from {ifname}"))),
    }
}

/// Where an attachment's ingress queue is: in the pod's netns, or (pods of
/// earlier releases) on the host side of its veth, in the node's netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueAt {
    /// `child`: what ADD gave the queue's TBF (records of earlier releases: Bands).
    Pod { netns: std::path::PathBuf, pod_ifindex: u32, child: QueueChild },
    HostSide(u32),
}

impl QueueAt {
    /// Changes the queue's rate in place (`bpf-ratelimit set`).
    pub fn change(&self, spec: QueueSpec) -> Result<()> {
        match self {
            QueueAt::Pod { netns, pod_ifindex, .. } => crate::node::netns::in_netns(netns, || change(*pod_ifindex, spec)),
            QueueAt::HostSide(host) => change_host_side(*host, spec),
        }
    }

    /// For CHECK: the queue is there, at the rate of `spec`.
    pub fn verify(&self, spec: QueueSpec) -> Result<()> {
        match self {
            QueueAt::Pod { netns, pod_ifindex, child } => crate::node::netns::in_netns(netns, || verify_spec(*pod_ifindex, spec, *child)),
            QueueAt::HostSide(host) => verify_host_side(*host, spec),
        }
    }

    /// For people: where the queue is.
    pub fn describe(&self) -> String {
        match self {
            QueueAt::Pod { pod_ifindex, .. } => format!("queue on {} in the pod's netns", ifb_name(*pod_ifindex)),
            QueueAt::HostSide(host) => match ifname_of(*host) {
                Some(name) => format!("queue on {name}"),
                None => format!("queue on interface {host} (gone)"),
            },
        }
    }
}

fn change_host_side(host_ifindex: u32, spec: QueueSpec) -> Result<()> {
    let Some(ifname) = ifname_of(host_ifindex) else { bail!("the ingress queue's host interface (index {host_ifindex}) is gone") };
    tc::tbf(Verb::Change, host_ifindex, tc::ROOT, handle_id(), &tbf_of(spec)).with_context(|| format!("cannot change the ingress queue on {ifname}"))?;
    tc::pfifo_fast(Verb::Replace, host_ifindex, handle_id() | 1, tc::handle(CHILD_MAJOR))
        .with_context(|| format!("cannot keep the ingress queue's bands on {ifname}"))
}

fn verify_host_side(host_ifindex: u32, spec: QueueSpec) -> Result<()> {
    let Some(ifname) = ifname_of(host_ifindex) else { bail!("the ingress queue's host interface (index {host_ifindex}) is gone") };
    let Some(q) = our_qdisc(host_ifindex)? else { bail!("the ingress queue is missing from {ifname}") };
    check_rate(&q, spec, &ifname)
}

fn check_rate(q: &tc::Tbf, spec: QueueSpec, name: &str) -> Result<()> {
    let want = spec.rate_bits;
    // The kernel keeps the rate in bytes/s.
    if q.rate_bits.abs_diff(want) > want / 100 + 8 {
        bail!("the ingress queue on {name} runs at {} bit/s instead of {want}", q.rate_bits);
    }
    Ok(())
}

/// For CHECK: the queue of the pod's interface `pod_ifindex` is in place,
/// fed by our filter, at the rate of `spec`, with the child ADD gave it.
pub fn verify_spec(pod_ifindex: u32, spec: QueueSpec, child: QueueChild) -> Result<()> {
    let name = ifb_name(pod_ifindex);
    let Some(ifb) = ifb_index(pod_ifindex) else { bail!("the ingress queue's device {name} is missing") };
    let Some(q) = our_qdisc(ifb)? else { bail!("the ingress queue is missing from {name}") };
    let filters = tc::bpf_filters(pod_ifindex, Hook::Ingress)?;
    let door = filters.iter().any(|f| {
        f.pref == QUEUE_FILTER_PREF && f.direct_action && crate::node::bpf_sys::prog_name(f.prog_id).is_ok_and(|n| n == QUEUE_PROG_NAME)
    });
    if !door {
        bail!("the door of the ingress queue {name} is missing from the pod's interface");
    }
    let feeds = filters.iter().any(|f| {
        f.pref == REDIRECT_FILTER_PREF && !f.direct_action && crate::node::bpf_sys::prog_name(f.prog_id).is_ok_and(|n| n == REDIRECT_PROG_NAME)
    });
    if !feeds {
        bail!("the filter feeding the ingress queue {name} is missing from the pod's interface");
    }
    match child_of(ifb)? {
        Some(c) if c == child => {}
        Some(c) => bail!("the ingress queue on {name} has {} instead of {}", c.describe(), child.describe()),
        None => bail!("the ingress queue on {name} has lost its bands (it should have {})", child.describe()),
    }
    check_rate(&q, spec, &name)
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
        // pfifo_fast holds txqueuelen packets: the limit in full-sized frames.
        assert_eq!(QueueSpec::for_limit(Limit { rate: 10_000_000, burst: 8 }, LimitBasis::Frames).txqueuelen(), 174);
        assert_eq!(QueueSpec::for_limit(Limit { rate: 1_000_000_000, burst: 8 }, LimitBasis::Frames).txqueuelen(), 1652);
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
