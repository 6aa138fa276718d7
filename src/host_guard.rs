//! The outer enforcement point of a pod's egress: a cls_bpf filter on the
//! ingress of the pod's host-side veth (clsact, in the node's netns), which
//! charges every frame the pod emits to its egress limit
//! (ebpf/shaper.bpf.c: guard_pod_egress). Nothing inside the pod reaches
//! it: AF_PACKET, AF_XDP, compat syscalls, sub-interfaces and tunnels all
//! leave through that veth. The filter lives and dies with the interface;
//! DEL removes it while the interface is still there. It is found by its
//! preference number.

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::tc;

/// The filter's preference on the interface's ingress hook.
pub const PREF: &str = "49101";
/// The kernel keeps 15 bytes of a program's name.
const PROG_NAME: &str = "guard_pod_egres";

/// Adds the filter running the program pinned at `prog_pin` to the ingress
/// of `ifname`. Idempotent: an existing clsact (another plugin's filters)
/// is kept, our filter replaced.
pub fn attach(ifname: &str, prog_pin: &std::path::Path) -> Result<()> {
    let prog = prog_pin.to_str().context("the datapath's pin path is not UTF-8")?;
    let batch = format!(
        "qdisc replace dev {ifname} clsact\nfilter replace dev {ifname} ingress pref {PREF} handle 1 bpf da pinned {prog}\n"
    );
    tc::run(&["-batch", "-"], Some(&batch))
        .map(drop)
        .with_context(|| format!("cannot add the egress guard to the pod's host-side interface {ifname}"))
}

/// Removes our filter from the interface `ifindex`, if it is still there.
pub fn detach(ifindex: u32) {
    if let Some(ifname) = crate::ingress_queue::ifname_of(ifindex) {
        let _ = tc::run(&["filter", "del", "dev", &ifname, "ingress", "pref", PREF], None);
    }
}

/// For CHECK: our filter is on the interface's ingress and runs our program.
pub fn verify(ifindex: u32) -> Result<()> {
    let Some(ifname) = crate::ingress_queue::ifname_of(ifindex) else {
        bail!("the pod's host-side interface (index {ifindex}) is gone")
    };
    let out = tc::run(&["-j", "filter", "show", "dev", &ifname, "ingress"], None)?;
    let filters: Value = serde_json::from_str(&out).unwrap_or(Value::Array(Vec::new()));
    let ours = filters.as_array().into_iter().flatten().any(|f| {
        f["pref"].as_u64().map(|p| p.to_string()).as_deref() == Some(PREF) && f["options"]["prog"]["name"] == PROG_NAME
    });
    if !ours {
        bail!("the egress guard is missing from {ifname}");
    }
    Ok(())
}
