//! A wire counter on a pod's interface: the harness's `count_wire` program
//! (ebpf/harness.bpf.c) on its tc ingress hook counts what the wire
//! delivered to the pod, per segment and with every header, as a limit
//! counts it. Detached and unpinned on drop.
//!
//! Where the pod's ingress is queued, the queue sits behind that hook, in
//! the pod's netns (datapath::ingress_queue): what the pod got is then what
//! the queue's TBF sent, which TBF counts the same way (every segment with
//! its Ethernet header), and `read` reports that.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::programs::SchedClassifier;
use aya::EbpfLoader;

use crate::node::bpf_sys;

/// Frames and their bytes on the wire.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WireCount {
    pub frames: u64,
    pub bytes: u64,
}

impl WireCount {
    pub fn since(&self, before: &WireCount) -> WireCount {
        WireCount { frames: self.frames - before.frames, bytes: self.bytes - before.bytes }
    }
}

pub struct WireCounter {
    netns: PathBuf,
    ifname: String,
    pins: PathBuf,
}

const PREF: u16 = 7;

impl WireCounter {
    /// Counts what arrives on `ifname` in the netns at `netns`.
    pub fn attach(netns: &Path, ifname: &str, tag: &str) -> Result<Self> {
        let pins = PathBuf::from(format!("/sys/fs/bpf/brl-wire-{tag}"));
        let counter = WireCounter { netns: netns.into(), ifname: ifname.into(), pins: pins.clone() };
        std::fs::create_dir_all(&pins).with_context(|| format!("cannot create {}", pins.display()))?;
        let mut ebpf = EbpfLoader::new().load(crate::datapath::attach::HARNESS_OBJ).context("cannot load the harness object")?;
        let prog: &mut SchedClassifier = ebpf.program_mut("count_wire").context("no count_wire")?.try_into()?;
        prog.load().context("the kernel refused count_wire")?;
        prog.pin(pins.join("prog")).context("cannot pin count_wire")?;
        ebpf.map("wire_counts").context("no wire_counts")?.pin(pins.join("counts")).context("cannot pin wire_counts")?;
        let prog = pins.join("prog");
        crate::node::netns::in_netns(netns, || {
            crate::datapath::tc::attach_pinned_filter(crate::node::netns::ifindex(ifname)?, crate::datapath::tc::Hook::Ingress, PREF, 1, &prog, "count_wire")
        })
        .context("cannot attach the wire counter")?;
        Ok(counter)
    }

    pub fn read(&self) -> Result<WireCount> {
        let ifname = self.ifname.clone();
        let queued = crate::node::netns::in_netns(&self.netns, || {
            let Some(ifb) = crate::datapath::ingress_queue::ifb_index(crate::node::netns::ifindex(&ifname)?) else { return Ok(None) };
            Ok(crate::datapath::tc::qdiscs(ifb)?
                .into_iter()
                .find(|q| q.parent == crate::datapath::tc::ROOT && q.kind == "tbf")
                .map(|q| WireCount { frames: q.sent_packets, bytes: q.sent_bytes }))
        })?;
        if let Some(count) = queued {
            return Ok(count);
        }
        let map = bpf_sys::obj_get(&self.pins.join("counts"))?;
        let v = bpf_sys::record_read(map.as_fd())?;
        let at = |i: usize| u64::from_ne_bytes(v[i..i + 8].try_into().unwrap());
        Ok(WireCount { frames: at(0), bytes: at(8) })
    }
}

impl Drop for WireCounter {
    fn drop(&mut self) {
        if self.netns.exists() {
            let ifname = self.ifname.clone();
            let _ = crate::node::netns::in_netns(&self.netns, || {
                crate::datapath::tc::filter_delete(crate::node::netns::ifindex(&ifname)?, crate::datapath::tc::Hook::Ingress, PREF, 0)
            });
        }
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}
