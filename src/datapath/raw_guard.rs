//! The raw-frame guard on the pod's interface: AF_PACKET sockets hand frames
//! to the device past every cgroup hook, so a cls_bpf filter on the
//! interface's egress (clsact, inside the pod's netns) drops the frames whose
//! socket is AF_PACKET (ebpf/shaper.bpf.c: refuse_raw_frames).
//!
//! A tcx link would do the same and could be pinned like the cgroup links,
//! but attaching one waits for an RCU grace period: 15 ms of every ADD on
//! these machines, against 4 ms for running `tc` (the filter is now added over
//! rtnetlink, crate::datapath::tc). The filter lives and dies with the
//! interface; DEL removes it while the netns is still there. It is found by
//! its preference number.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::node::netns::{ifindex, in_netns};
use crate::datapath::tc::{self, Hook};

/// The filter's preference on the interface's egress hook.
pub const PREF: &str = "49100";
const PREF_NUM: u16 = 49100;
/// The filter's handle.
const FILTER_HANDLE: u32 = 1;
/// The kernel keeps 15 bytes of a program's name.
const PROG_NAME: &str = "refuse_raw_fram";

/// Adds the filter running the program pinned at `prog_pin` to the egress of
/// `ifname` in `netns`. Idempotent: an existing clsact is kept, our filter replaced.
pub fn attach(netns: &Path, ifname: &str, prog_pin: &Path) -> Result<()> {
    in_netns(netns, || tc::attach_pinned_filter(ifindex(ifname)?, Hook::Egress, PREF_NUM, FILTER_HANDLE, prog_pin, "refuse_raw_frames"))
        .with_context(|| format!("cannot add the raw-frame guard to {ifname} (set allowRawSockets to run without it)"))
}

/// Removes our filter, if the netns and the interface are still there.
pub fn detach(netns: &Path, ifname: &str) {
    if netns.exists() {
        let _ = in_netns(netns, || tc::filter_delete(ifindex(ifname)?, Hook::Egress, PREF_NUM, 0));
    }
}

/// For CHECK: our filter is on the interface's egress and runs our program.
pub fn verify(netns: &Path, ifname: &str) -> Result<()> {
    if !in_netns(netns, || tc::has_filter(ifindex(ifname)?, Hook::Egress, PREF_NUM, PROG_NAME))? {
        bail!("the raw-frame guard is missing from {ifname}");
    }
    Ok(())
}
