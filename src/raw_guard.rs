//! The raw-frame guard on the pod's interface: AF_PACKET sockets hand frames
//! to the device past every cgroup hook, so a cls_bpf filter on the
//! interface's egress (clsact, inside the pod's netns) drops the frames whose
//! socket is AF_PACKET (ebpf/shaper.bpf.c: refuse_raw_frames).
//!
//! A tcx link would do the same and could be pinned like the cgroup links,
//! but attaching one waits for an RCU grace period: 15 ms of every ADD on
//! these machines, against 4 ms for `tc`. The filter lives and dies with the
//! interface; DEL removes it while the netns is still there. It is found by
//! its preference number.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::tc;

/// The filter's preference on the interface's egress hook.
pub const PREF: &str = "49100";
/// The kernel keeps 15 bytes of a program's name.
const PROG_NAME: &str = "refuse_raw_fram";

/// Adds the filter running the program pinned at `prog_pin` to the egress of
/// `ifname` in `netns`. Idempotent: an existing clsact is kept, our filter replaced.
pub fn attach(netns: &Path, ifname: &str, prog_pin: &Path) -> Result<()> {
    let prog = prog_pin.to_str().context("the datapath's pin path is not UTF-8")?;
    let batch = format!(
        "qdisc replace dev {ifname} clsact\nfilter replace dev {ifname} egress pref {PREF} handle 1 bpf da pinned {prog}\n"
    );
    tc::run_in(netns, &["-batch", "-"], Some(&batch))
        .map(drop)
        .with_context(|| format!("cannot add the raw-frame guard to {ifname} (set allowRawSockets to run without it)"))
}

/// Removes our filter, if the netns and the interface are still there.
pub fn detach(netns: &Path, ifname: &str) {
    if netns.exists() {
        let _ = tc::run_in(netns, &["filter", "del", "dev", ifname, "egress", "pref", PREF], None);
    }
}

/// For CHECK: our filter is on the interface's egress and runs our program.
pub fn verify(netns: &Path, ifname: &str) -> Result<()> {
    let out = tc::run_in(netns, &["-j", "filter", "show", "dev", ifname, "egress"], None)?;
    let filters: Value = serde_json::from_str(&out).unwrap_or(Value::Array(Vec::new()));
    let ours = filters.as_array().into_iter().flatten().any(|f| {
        f["pref"].as_u64().map(|p| p.to_string()).as_deref() == Some(PREF) && f["options"]["prog"]["name"] == PROG_NAME
    });
    if !ours {
        bail!("the raw-frame guard is missing from {ifname}");
    }
    Ok(())
}
