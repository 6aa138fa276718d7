//! The outer enforcement point of a pod's egress: a cls_bpf filter on the
//! ingress of the pod's host-side veth (clsact, in the node's netns), which
//! charges every frame the pod emits to its egress limit
//! (ebpf/shaper.bpf.c: guard_pod_egress). Nothing inside the pod reaches
//! it: AF_PACKET, AF_XDP, compat syscalls, sub-interfaces and tunnels all
//! leave through that veth. The filter lives and dies with the interface;
//! DEL removes it while the interface is still there. It is found by its
//! preference number, and set up over rtnetlink (crate::datapath::tc).

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::datapath::tc::{self, Hook};

/// The filter's preference on the interface's ingress hook.
pub const PREF: u16 = 49101;
const FILTER_HANDLE: u32 = 1;
/// The kernel keeps 15 bytes of a program's name.
const PROG_NAME: &str = "guard_pod_egres";

/// Adds the filter running the program pinned at `prog_pin` to the ingress
/// of `ifname`. Idempotent: an existing clsact (another plugin's filters)
/// is kept, our filter replaced.
pub fn attach(ifname: &str, prog_pin: &Path) -> Result<()> {
    let ifindex = crate::node::netns::ifindex(ifname)?;
    tc::attach_pinned_filter(ifindex, Hook::Ingress, PREF, FILTER_HANDLE, prog_pin, "guard_pod_egress")
        .with_context(|| format!("cannot add the egress guard to the pod's host-side interface {ifname}"))
}

/// Removes our filter from the interface `ifindex`, if it is still there.
pub fn detach(ifindex: u32) {
    if crate::datapath::ingress_queue::ifname_of(ifindex).is_some() {
        let _ = tc::filter_delete(ifindex, Hook::Ingress, PREF, 0);
    }
}

/// The guard's copy on the pod's own interface: the filter's preference on
/// its egress hook. Where an eBPF main CNI's program runs first on the host
/// side and ends the filter chain there (Cilium, Calico eBPF), only this copy
/// sees the pod's frames. It is keyed by its filter's classid
/// (`key` = POD_SIDE_GUARD | classid).
pub const POD_SIDE_PREF: u16 = 49103;

/// Adds the pod-side copy, running the program pinned at `prog_pin`, to the
/// egress of the pod's interface `ifindex` (in the calling thread's netns).
pub fn attach_pod_side(ifindex: u32, key: u32, prog_pin: &Path) -> Result<()> {
    let classid = (key & 0xffff) as u16;
    tc::attach_pinned_filter_with_classid(ifindex, Hook::Egress, POD_SIDE_PREF, FILTER_HANDLE, prog_pin, "guard_pod_egress", classid)
        .context("cannot add the egress guard to the pod's interface")
}

/// Removes the pod-side copy, if the interface is still there.
pub fn detach_pod_side(ifindex: u32) {
    if crate::datapath::ingress_queue::ifname_of(ifindex).is_some() {
        let _ = tc::filter_delete(ifindex, Hook::Egress, POD_SIDE_PREF, 0);
    }
}

/// For CHECK: the pod-side copy is on the interface's egress (in the calling
/// thread's netns) and runs our program.
pub fn verify_pod_side(ifindex: u32) -> Result<()> {
    if !tc::has_filter(ifindex, Hook::Egress, POD_SIDE_PREF, PROG_NAME)? {
        bail!("the egress guard is missing from the pod's interface");
    }
    Ok(())
}

/// For CHECK: our filter is on the interface's ingress and runs our program.
pub fn verify(ifindex: u32) -> Result<()> {
    let Some(ifname) = crate::datapath::ingress_queue::ifname_of(ifindex) else {
        bail!("the pod's host-side interface (index {ifindex}) is gone")
    };
    if !tc::has_filter(ifindex, Hook::Ingress, PREF, PROG_NAME)? {
        bail!("the egress guard is missing from {ifname}");
    }
    Ok(())
}
