//! The eBPF datapath: loading it once per node, attaching it to pod cgroups
//! and interfaces, and removing both (the pin root's layout is node/pins.rs's).
//!
//! One attachment (a CNI network's interface of a pod) is:
//!
//! - the cgroup links (egress, ingress, sockops, and setsockopt where raw
//!   frames are refused) on the pod cgroup, shared by every attachment of
//!   the same sandbox: each pins the same links, so they stay attached
//!   until its last attachment goes;
//! - its interface's state in `iface_state`, keyed by pod cgroup and
//!   interface, and the pod cgroup's `pod_state` naming the cgroup;
//! - in the pod's netns: the ingress queue (ingress_queue: an ifb fed from
//!   the interface's tc ingress), which every main CNI's delivery passes;
//! - on the pod's host-side peer, where prevResult names one: the egress
//!   guard (host_guard, `host_guards`), out of the pod's reach; and its copy
//!   on the pod's interface (host_guard::attach_pod_side), which holds where
//!   an eBPF main CNI skips the host side; PACKET_QDISC_BYPASS and AF_XDP,
//!   which skip that copy, are refused (the setsockopt link);
//! - where there is no host-side peer: the raw-frame filter on the pod's
//!   interface (raw_guard, `raw_guarded`);
//! - its record (attachment), which says which of these it made.
//!
//! Removing an attachment's pins detaches links no other attachment holds.
//! The pod cgroup's storage value outlives the detach (measured: it stays
//! in the map until the cgroup is removed, which the kubelet does, or the
//! map is freed); a later ADD on the same cgroup overwrites it.
//!
//! Upgrades: each build loads its own `datapath/<version>/`; pods attached by
//! an older build keep using the older one (their links hold its programs,
//! their `state` pin its map). A datapath version is unpinned when no pod's
//! link runs one of its programs (matched by program ID), so an old version
//! goes with its last pod and an idle node holds nothing. `loading-<pid>`
//! directories of loads that died part-way are removed on the way.

use std::fs::{self, File};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::programs::{CgroupSkb, CgroupSockopt, SchedClassifier, SockOps};
use aya::{Ebpf, EbpfLoader};

use crate::datapath::attachment::{self, AttachmentRecord};
use crate::node::bpf_sys::{self, CgroupLinkInfo};
use crate::policy::limits::Limits;
use crate::node::pins::{process_alive, remove_pin_dir, AttachmentId, PinRoot};
use crate::datapath::state::{
    HostGuard, IfaceState, PodRecord, QueueGate, IFACE_INGRESS_LOW_CPU, IFACE_INGRESS_QUEUED, IFACE_MTU_SHIFT, POD_SIDE_GUARD, STATE_LAYOUT,
};
use crate::policy::netconf::IngressTradeoff;
use crate::policy::operator::LimitBasis;

/// The production datapath, built from ebpf/shaper.bpf.c by build.rs.
pub static SHAPER_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shaper.bpf.o"));
/// The BPF_PROG_TEST_RUN harness, built from ebpf/harness.bpf.c.
pub static HARNESS_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/harness.bpf.o"));

const PROG_EGRESS: &str = "shape_egress_prog";
const PROG_INGRESS: &str = "shape_ingress_prog";
const PROG_SOCKOPS: &str = "pace_tcp";
const PROG_SETSOCKOPT: &str = "refuse_raw_bypass";
const PROG_RAW: &str = "refuse_raw_frames";
const PROG_GUARD: &str = "guard_pod_egress";
const PROG_QUEUE: &str = crate::datapath::ingress_queue::QUEUE_PROG;
const PROG_REDIRECT: &str = crate::datapath::ingress_queue::REDIRECT_PROG;
const CGROUP_SKB_PROGS: [&str; 2] = [PROG_EGRESS, PROG_INGRESS];
const CLASSIFIER_PROGS: [&str; 4] = [PROG_RAW, PROG_GUARD, PROG_QUEUE, PROG_REDIRECT];
const MAP_POD_STATE: &str = "pod_state";
const MAP_IFACE_STATE: &str = "iface_state";
const MAP_FLOW_STATE: &str = "flow_state";
const MAP_HOST_GUARDS: &str = "host_guards";
const MAP_RAW_GUARDED: &str = "raw_guarded";
const MAP_QUEUED_FLOWS: &str = "queued_flows";
const MAP_INGRESS_QUEUES: &str = "ingress_queues";
const MAP_TURNED_AWAY: &str = "turned_away";
const MAP_LIGHT_WINDOWS: &str = "light_windows";
const DATAPATH_MAPS: [&str; 9] = [
    MAP_POD_STATE,
    MAP_IFACE_STATE,
    MAP_FLOW_STATE,
    MAP_HOST_GUARDS,
    MAP_RAW_GUARDED,
    MAP_QUEUED_FLOWS,
    MAP_INGRESS_QUEUES,
    MAP_TURNED_AWAY,
    MAP_LIGHT_WINDOWS,
];
const DATAPATH_PROGS: [&str; 8] = [PROG_EGRESS, PROG_INGRESS, PROG_SOCKOPS, PROG_SETSOCKOPT, PROG_RAW, PROG_GUARD, PROG_QUEUE, PROG_REDIRECT];
const LOADING_PREFIX: &str = "loading-";

/// The cgroup link pins every attachment has, and the map pins beside them.
pub const LINK_PINS: [&str; 3] = ["egress", "ingress", "sockops"];
/// The interface state map (`iface_state`; a pod's `pod_state` before layout 3).
pub const STATE_PIN: &str = "state";
const GUARDS_PIN: &str = "guards";
const RAW_GUARDED_PIN: &str = "rawguard";
/// The ingress queues' doors (`ingress_queues`), pinned by attachments
/// whose ingress is queued in the pod's netns.
const QUEUES_PIN: &str = "queues";
/// The link refusing PACKET_QDISC_BYPASS and AF_XDP where raw frames are
/// refused on the pod's interface (raw_guard).
pub const RAW_GUARD_PINS: [&str; 1] = ["setsockopt"];

/// The pod's interface, as CNI_NETNS and CNI_IFNAME named it at ADD, and
/// what the config asks of it.
pub struct PodNetwork<'a> {
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// Whether AF_PACKET sockets may send where no host-side guard
    /// charges them (the `allowRawSockets` key).
    pub allow_raw_sockets: bool,
    /// The pod's host-side interface from prevResult, if any.
    pub host_interface: Option<String>,
    /// Whether ingress may be queued there (the `ingressQueue` key).
    pub ingress_queue: bool,
    /// What the queue's depth favours (the `ingressTradeoff` key).
    pub ingress_tradeoff: IngressTradeoff,
    pub basis: LimitBasis,
}

/// How the pod's ingress limit is enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngressMode {
    /// No ingress limit.
    None,
    /// A queue on this host-side interface, with sized receive windows.
    Queue(String),
    /// The BPF policer, and why no queue.
    Policer(String),
}

impl std::fmt::Display for IngressMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IngressMode::None => write!(f, "ingress unlimited"),
            IngressMode::Queue(i) => write!(f, "ingress queued on {i}"),
            IngressMode::Policer(why) => write!(f, "ingress policed ({why})"),
        }
    }
}

/// The links every release attaches. A later release may attach more
/// (LINK_PINS grows); CHECK requires those only of pods on its own datapath.
pub const LINKS_OF_EVERY_RELEASE: [&str; 3] = ["egress", "ingress", "sockops"];

/// Identifies this build's datapath, so an upgraded plugin loads its own copy
/// while pods attached by the old one keep theirs: a hash of the shaper
/// object, computed by build.rs. `BRL_DATAPATH_TAG` at build time gives a
/// build a version of its own: the upgrade test builds "release N" that way.
pub fn datapath_version() -> &'static str {
    env!("BRL_DATAPATH_VERSION")
}

/// The datapath's parts this build turned into pass-throughs (build.rs,
/// BRL_BPF_KNOCKOUT, for bench/knockout.sh); empty in every real build.
pub const KNOCKOUTS: &str = env!("BRL_BPF_KNOCKOUT");

/// Whether this build's datapath is loaded and pinned under `pin_root`.
pub fn datapath_pinned(pin_root: &Path) -> bool {
    let dir = pin_root.join("datapath").join(datapath_version());
    DATAPATH_PROGS.iter().chain(&DATAPATH_MAPS).all(|p| dir.join(p).exists())
}

/// Undoes the steps of an ADD that fails part-way, newest first, unless
/// disarmed.
#[derive(Default)]
struct Rollback<'a> {
    steps: Vec<Box<dyn FnOnce() + 'a>>,
}

impl<'a> Rollback<'a> {
    fn push(&mut self, step: impl FnOnce() + 'a) {
        self.steps.push(Box::new(step));
    }

    fn disarm(mut self) {
        self.steps.clear();
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        while let Some(step) = self.steps.pop() {
            step();
        }
    }
}

impl PinRoot {
    /// Removes an attachment: what it set up outside its pins (its record
    /// says what), its interface state, and its pins, which detaches links
    /// no other attachment holds. `netns`, when DEL still has it, lets the
    /// raw-frame filter on the pod's interface go too (else it goes with the
    /// interface). Returns whether the attachment existed.
    pub fn remove_pod(&self, id: &AttachmentId, netns: Option<&Path>) -> Result<bool> {
        let dir = self.pod_dir(id);
        match attachment::read(&dir) {
            Ok(Some(record)) => self.remove_outside_pins(id, &dir, &record, netns),
            Ok(None) => remove_legacy_outside_pins(&dir, id, netns),
            Err(e) => log::warn!("{}: {e:#}; removing its pins only", dir.display()),
        }
        // Hold the links open while unpinning: the last reference then drops
        // when these fds close, in this process, which detaches the links
        // before we return. An unpin alone drops it from a kernel work item,
        // a moment later.
        let held: Vec<_> =
            LINK_PINS.iter().chain(&RAW_GUARD_PINS).filter_map(|n| bpf_sys::obj_get(&dir.join(n)).ok()).collect();
        let existed = remove_pin_dir(&dir)?;
        drop(held);
        // Other interfaces of the same container, or other containers of the
        // same network, may remain; remove_dir fails on a non-empty directory.
        let mut parent = dir.parent();
        for _ in 0..2 {
            if let Some(p) = parent {
                let _ = fs::remove_dir(p);
                parent = p.parent();
            }
        }
        Ok(existed)
    }

    fn remove_outside_pins(&self, id: &AttachmentId, dir: &Path, record: &AttachmentRecord, netns: Option<&Path>) {
        let recorded = (!record.netns.is_empty()).then(|| Path::new(&record.netns));
        let pod_netns = netns.or(recorded).filter(|ns| ns.exists());
        if record.ingress_queued {
            if let Err(e) = crate::datapath::ingress_queue::remove_host_side(record.host_ifindex) {
                log::warn!("cannot remove the ingress queue: {e:#}");
            }
        }
        // The pod-side queue and guard go with the pod's netns; DEL removes
        // them while it is still there, as a replacing ADD must.
        if let Some(ns) = pod_netns.filter(|_| record.ingress_queued_in_pod || record.pod_guard != 0) {
            let removed = crate::node::netns::in_netns(ns, || {
                if record.ingress_queued_in_pod {
                    crate::datapath::ingress_queue::remove(record.ifindex)?;
                }
                if record.pod_guard != 0 {
                    crate::datapath::host_guard::detach_pod_side(record.ifindex);
                }
                Ok(())
            });
            if let Err(e) = removed {
                log::warn!("cannot remove the ingress queue or the egress guard from the pod's netns: {e:#}");
            }
        }
        if record.ingress_queue_door != 0 {
            delete_if_ours(&dir.join(QUEUES_PIN), record.ingress_queue_door, record.cgroup_id);
        }
        if record.pod_guard != 0 {
            delete_if_ours(&dir.join(GUARDS_PIN), record.pod_guard, record.cgroup_id);
        }
        if record.egress_guarded {
            crate::datapath::host_guard::detach(record.host_ifindex);
            // The host-side index may have been reused by a newer pod's
            // veth since: only our own entry is removed.
            delete_if_ours(&dir.join(GUARDS_PIN), record.host_ifindex, record.cgroup_id);
        }
        if record.raw_guarded {
            if let Some(ns) = pod_netns {
                crate::datapath::raw_guard::detach(ns, &id.ifname);
            }
            let others = self.attachments().unwrap_or_default().into_iter().filter(|a| a != id).any(|a| {
                attachment::read(&self.pod_dir(&a)).ok().flatten().is_some_and(|r| r.raw_guarded && r.cgroup_id == record.cgroup_id)
            });
            if !others {
                if let Ok(map) = bpf_sys::obj_get(&dir.join(RAW_GUARDED_PIN)) {
                    let _ = bpf_sys::delete(map.as_fd(), &record.cgroup_id);
                }
            }
        }
        if let Ok(map) = bpf_sys::obj_get(&dir.join(STATE_PIN)) {
            let _ = bpf_sys::delete(map.as_fd(), &record.key());
        }
    }

    /// Unpins every datapath version no pod's link runs, and leftovers of
    /// loads that died part-way; removes the pin root when no pod is left.
    /// Waiting commands notice the removal in `lock` and start over.
    pub fn remove_datapath_if_unused(&self) -> Result<()> {
        let attachments = self.attachments()?;
        let root = self.datapath_root();
        let mut versions = Vec::new();
        if let Ok(entries) = fs::read_dir(&root) {
            for v in entries {
                let v = v?;
                let name = v.file_name().to_string_lossy().into_owned();
                match name.strip_prefix(LOADING_PREFIX) {
                    Some(pid) if !process_alive(pid) => {
                        remove_pin_dir(&v.path())?;
                        log::info!("unpinned datapath {name}: the ADD loading it is gone");
                    }
                    Some(_) => {}
                    None => versions.push((name, v.path(), datapath_prog_ids(&v.path()))),
                }
            }
        }
        // Every DEL runs this, so it stops reading pods' links as soon as
        // each version has a user: one pod's, as a rule (a DEL among 1000
        // pods read all 1000 pods' links, 60 ms; bench/README.md).
        for a in &attachments {
            if versions.is_empty() {
                break;
            }
            let dir = self.pod_dir(a);
            for name in LINK_PINS {
                if let Ok(info) = bpf_sys::obj_get(&dir.join(name)).and_then(|l| bpf_sys::link_info(l.as_fd())) {
                    versions.retain(|(_, _, ids)| !ids.contains(&info.prog_id));
                }
            }
        }
        for (name, path, _) in versions {
            remove_pin_dir(&path)?;
            log::info!("unpinned datapath {name}: no pod uses it");
        }
        if attachments.is_empty() {
            let _ = fs::remove_dir(self.pods_dir());
            let _ = fs::remove_dir(&root);
            let _ = fs::remove_dir(self.path());
        }
        Ok(())
    }

    /// The directory of this build's datapath, loading and pinning it first if
    /// it is not there. Loading runs the verifier; later ADDs only attach.
    pub fn datapath(&self) -> Result<PathBuf> {
        let dir = self.datapath_root().join(datapath_version());
        if datapath_pinned(self.path()) {
            return Ok(dir);
        }
        // A crash during an earlier load can leave a partial directory.
        remove_pin_dir(&dir)?;
        let tmp = self.datapath_root().join(format!("{LOADING_PREFIX}{}", std::process::id()));
        remove_pin_dir(&tmp)?;
        fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let loaded = load_and_pin(&tmp).and_then(|()| {
            fs::rename(&tmp, &dir).with_context(|| format!("cannot move the datapath into {}", dir.display()))
        });
        if let Err(e) = loaded {
            let _ = remove_pin_dir(&tmp);
            return Err(e);
        }
        log::info!("loaded the datapath into {}", dir.display());
        Ok(dir)
    }
}

/// Deletes `key` from the map pinned at `pin` if its value (a guard's or a
/// queue door's: the pod's cgroup ID at bytes 8..16) is the pod's: the key,
/// an interface index or an id, may since belong to a newer pod.
fn delete_if_ours(pin: &Path, key: u32, cgroup_id: u64) {
    if let Ok(map) = bpf_sys::obj_get(pin) {
        let ours = bpf_sys::lookup_locked_bytes(map.as_fd(), &key)
            .is_ok_and(|v| v.len() >= 16 && u64::from_ne_bytes(v[8..16].try_into().unwrap()) == cgroup_id);
        if ours {
            let _ = bpf_sys::delete(map.as_fd(), &key);
        }
    }
}

/// What pods of layouts 1 and 2 (no record) set up outside their pins: the
/// ingress queue their state names, and the raw-frame filter.
fn remove_legacy_outside_pins(dir: &Path, id: &AttachmentId, netns: Option<&Path>) {
    if let Ok((_, state)) = pod_state_from_pins(dir) {
        if state.flags & IFACE_INGRESS_QUEUED != 0 {
            if let Err(e) = crate::datapath::ingress_queue::remove_host_side(state.host_ifindex) {
                log::warn!("cannot remove the ingress queue: {e:#}");
            }
        }
    }
    if let Some(ns) = netns.filter(|ns| ns.exists()) {
        if dir.join(RAW_GUARD_PINS[0]).exists() {
            crate::datapath::raw_guard::detach(ns, &id.ifname);
        }
    }
}

/// The IDs of every program of every datapath version pinned under a pin root.
fn pinned_prog_ids(pin_root: &Path) -> Vec<u32> {
    let versions: Vec<PathBuf> =
        fs::read_dir(pin_root.join("datapath")).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    versions.iter().flat_map(|v| datapath_prog_ids(v)).collect()
}

/// The IDs of the programs pinned in one datapath directory, whatever a
/// release named them.
fn datapath_prog_ids(dir: &Path) -> Vec<u32> {
    let entries: Vec<PathBuf> = fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    entries
        .iter()
        .filter_map(|p| bpf_sys::obj_get(p).and_then(|fd| bpf_sys::prog_info(fd.as_fd())).ok())
        .map(|info| info.id)
        .collect()
}

/// Loads the shaper object (maps and programs) into the kernel.
pub fn load() -> Result<Ebpf> {
    if !KNOCKOUTS.is_empty() {
        log::warn!("this build's datapath has parts knocked out ({KNOCKOUTS}): a build for measuring their cost, which does not hold the limits");
    }
    let mut ebpf = EbpfLoader::new().load(SHAPER_OBJ).context("cannot load the eBPF object")?;
    for name in CGROUP_SKB_PROGS {
        let prog: &mut CgroupSkb = program(&mut ebpf, name)?.try_into()?;
        prog.load().with_context(|| format!("the kernel refused program {name}"))?;
    }
    let prog: &mut SockOps = program(&mut ebpf, PROG_SOCKOPS)?.try_into()?;
    prog.load().with_context(|| format!("the kernel refused program {PROG_SOCKOPS}"))?;
    let prog: &mut CgroupSockopt = program(&mut ebpf, PROG_SETSOCKOPT)?.try_into()?;
    prog.load().with_context(|| format!("the kernel refused program {PROG_SETSOCKOPT}"))?;
    for name in CLASSIFIER_PROGS {
        let prog: &mut SchedClassifier = program(&mut ebpf, name)?.try_into()?;
        prog.load().with_context(|| format!("the kernel refused program {name}"))?;
    }
    Ok(ebpf)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).with_context(|| format!("program {name} is missing from the eBPF object"))
}

fn load_and_pin(dir: &Path) -> Result<()> {
    let mut ebpf = load()?;
    for name in CGROUP_SKB_PROGS {
        let prog: &mut CgroupSkb = program(&mut ebpf, name)?.try_into()?;
        prog.pin(dir.join(name)).with_context(|| format!("cannot pin {name}"))?;
    }
    let prog: &mut SockOps = program(&mut ebpf, PROG_SOCKOPS)?.try_into()?;
    prog.pin(dir.join(PROG_SOCKOPS)).with_context(|| format!("cannot pin {PROG_SOCKOPS}"))?;
    let prog: &mut CgroupSockopt = program(&mut ebpf, PROG_SETSOCKOPT)?.try_into()?;
    prog.pin(dir.join(PROG_SETSOCKOPT)).with_context(|| format!("cannot pin {PROG_SETSOCKOPT}"))?;
    for name in CLASSIFIER_PROGS {
        let prog: &mut SchedClassifier = program(&mut ebpf, name)?.try_into()?;
        prog.pin(dir.join(name)).with_context(|| format!("cannot pin {name}"))?;
    }
    for name in DATAPATH_MAPS {
        let map = ebpf.map(name).with_context(|| format!("map {name} is missing from the eBPF object"))?;
        map.pin(dir.join(name)).with_context(|| format!("cannot pin map {name}"))?;
    }
    Ok(())
}

/// Attaches the datapath to a pod's interface and writes its limits. On any
/// failure nothing of this attachment remains.
pub fn attach_pod(
    root: &PinRoot,
    id: &AttachmentId,
    cgroup_dir: &Path,
    network: &PodNetwork<'_>,
    limits: &Limits,
) -> Result<IngressMode> {
    // A repeated ADD replaces the attachment rather than stacking another.
    root.remove_pod(id, Some(network.netns))?;
    let result = make_room_on_cgroup(root, id, cgroup_dir).and_then(|sibling| {
        let datapath = root.datapath()?;
        attach_and_pin(&datapath, &root.pod_dir(id), cgroup_dir, network, limits, sibling.as_deref())
    });
    if result.is_err() {
        let _ = root.remove_pod(id, Some(network.netns));
        let _ = root.remove_datapath_if_unused();
    }
    result
}

/// Makes the pod cgroup ready for this attachment; returns the directory
/// of another attachment of the same sandbox (another network, or another
/// interface) whose links this one shares.
///
/// Cgroup links stack: a second set on the same cgroup would charge every
/// packet twice, so attachments of one sandbox share one set. An earlier
/// sandbox of the same pod (another container ID; its DEL never came) is
/// stale and replaced. Our programs are recognised by ID, against every
/// datapath version pinned here or in another pin root this node used.
fn make_room_on_cgroup(root: &PinRoot, id: &AttachmentId, cgroup_dir: &Path) -> Result<Option<PathBuf>> {
    let cgroup = File::open(cgroup_dir).with_context(|| format!("cannot open pod cgroup {}", cgroup_dir.display()))?;
    let attached = || -> Result<Vec<u32>> {
        bpf_sys::attached_prog_ids(cgroup.as_fd(), bpf_sys::ATTACH_CGROUP_INET_EGRESS)
            .with_context(|| format!("cannot query the programs attached to {}", cgroup_dir.display()))
    };
    // Fast path: one query finds nothing attached.
    if attached()?.is_empty() {
        return Ok(None);
    }
    let other_roots: Vec<PathBuf> = crate::node::pin_roots::known(root.path()).into_iter().filter(|p| p != root.path()).collect();
    // Reading program IDs needs no lock: pins are removed, never rewritten.
    let ours: Vec<u32> = std::iter::once(root.path()).chain(other_roots.iter().map(PathBuf::as_path)).flat_map(pinned_prog_ids).collect();
    let shaped = || -> Result<bool> { Ok(attached()?.iter().any(|p| ours.contains(p))) };
    if !shaped()? {
        return Ok(None);
    }
    // Slow path: find the owners among the pins.
    let cgroup_id = crate::node::cgroup::cgroup_id(cgroup_dir).with_context(|| format!("cannot stat {}", cgroup_dir.display()))?;
    let this_release = datapath_prog_ids(&root.datapath_root().join(datapath_version()));
    let mut sibling = None;
    let mut clear = |r: &PinRoot, same_root: bool| -> Result<()> {
        for other in r.attachments()?.into_iter().filter(|a| a != id || !same_root) {
            let dir = r.pod_dir(&other);
            let Ok(link) = bpf_sys::obj_get(&dir.join(LINK_PINS[0])) else { continue };
            let Ok(info) = bpf_sys::link_info(link.as_fd()) else { continue };
            if info.cgroup_id != cgroup_id {
                continue;
            }
            if other.container_id == id.container_id && other != *id {
                // The same sandbox on another network or interface.
                if !same_root || !this_release.contains(&info.prog_id) {
                    bail!(
                        "cgroup {} is shaped for network {:?}, interface {} by {}; to shape several networks, chain the same plugin release with the same pinRoot in each, or DEL that attachment first",
                        cgroup_dir.display(),
                        other.network,
                        other.ifname,
                        if same_root { "another plugin release" } else { "another pin root" }
                    );
                }
                sibling.get_or_insert(dir);
                continue;
            }
            drop(link);
            log::warn!(
                "cgroup {}: replacing the stale attachment of an earlier sandbox (network {:?}, container {}, interface {}, pin root {})",
                cgroup_dir.display(),
                other.network,
                other.container_id,
                other.ifname,
                r.path().display()
            );
            r.remove_pod(&other, None)?;
        }
        Ok(())
    };
    clear(root, true)?;
    for p in &other_roots {
        if let Some(r) = PinRoot::existing_unless_busy(p)? {
            clear(&r, false)?;
            r.remove_datapath_if_unused()?;
        }
    }
    if sibling.is_some() {
        return Ok(sibling);
    }
    // Links whose pins were just removed by another process (a repeated
    // ADD racing a DEL) detach a moment later, from a kernel work item:
    // wait for that before refusing.
    for _ in 0..50 {
        if !shaped()? {
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    bail!(
        "cgroup {} already has the bpf-ratelimit shaper attached by something outside pin root {}; detach it first",
        cgroup_dir.display(),
        root.path().display()
    )
}

/// Sets up everything of one attachment and pins it (see the module's
/// comment), undoing what it did when a step fails.
fn attach_and_pin(
    datapath: &Path,
    pod_dir: &Path,
    cgroup_dir: &Path,
    network: &PodNetwork<'_>,
    limits: &Limits,
    sibling: Option<&Path>,
) -> Result<IngressMode> {
    let cgroup = File::open(cgroup_dir).with_context(|| format!("cannot open pod cgroup {}", cgroup_dir.display()))?;
    let cgroup_id = crate::node::cgroup::cgroup_id(cgroup_dir)?;
    let open = |name: &str| bpf_sys::obj_get(&datapath.join(name)).with_context(|| format!("cannot open the datapath's {name}"));
    let (pod_map, iface_map) = (open(MAP_POD_STATE)?, open(MAP_IFACE_STATE)?);
    let (guards, raw_guarded) = (open(MAP_HOST_GUARDS)?, open(MAP_RAW_GUARDED)?);
    let queues = open(MAP_INGRESS_QUEUES)?;
    let mut rollback = Rollback::default();

    // The pod's interface: its index keys its state, inside the pod's netns;
    // its MTU lets the cgroup hooks charge IP fragments as the wire does.
    let (ifindex, mtu) = crate::node::netns::in_netns(network.netns, || {
        Ok((crate::node::netns::ifindex(network.ifname)?, crate::node::netns::mtu(network.ifname)?))
    })
    .with_context(|| format!("cannot use interface {} of the pod", network.ifname))?;
    let host = match &network.host_interface {
        Some(name) => Some((name.as_str(), crate::node::netns::ifindex(name)?)),
        None => None,
    };
    let mut record = AttachmentRecord {
        cgroup_id,
        ifindex,
        host_ifindex: host.map_or(0, |(_, i)| i),
        netns: network.netns.to_string_lossy().into_owned(),
        basis: network.basis,
        ..Default::default()
    };
    let mut state = IfaceState::new(limits, network.basis);
    state.host_ifindex = record.host_ifindex;
    state.flags |= mtu.min(0xffff) << IFACE_MTU_SHIFT;

    // Ingress: queued in the pod's netns, which every main CNI's delivery
    // passes (ingress_queue); policed where the operator asks or the queue
    // cannot be made.
    let mode = match limits.ingress {
        None => IngressMode::None,
        Some(_) if !network.ingress_queue => IngressMode::Policer("ingressQueue is false".into()),
        Some(limit) => {
            let spec = crate::datapath::ingress_queue::QueueSpec::for_limit(limit, network.basis);
            let (prog, redirect) = (datapath.join(PROG_QUEUE), datapath.join(PROG_REDIRECT));
            // The door first, with no ifb yet (frames pass it unqueued),
            // then the queue, then the door with the queue's ifb.
            let door = QueueGate::new(cgroup_id, 0, spec.rate_bits / 8, spec.burst_bytes, spec.limit_bytes);
            let door_key = allocate_key(queues.as_fd(), &door, 0, cgroup_id ^ u64::from(ifindex)).context("cannot write the ingress queue's door")?;
            let q = &queues;
            rollback.push(move || {
                let _ = bpf_sys::delete(q.as_fd(), &door_key);
            });
            let installed = crate::node::netns::in_netns(network.netns, || {
                crate::datapath::ingress_queue::install(ifindex, spec, &prog, &redirect, (door_key & 0xffff) as u16)
            })
            .and_then(|(ifb, child)| {
                let door = QueueGate { ifb, ..door };
                bpf_sys::update_locked(queues.as_fd(), &door_key, &door).context("cannot open the ingress queue's door")?;
                Ok(child)
            });
            match installed {
                Ok(child) => {
                    let ns = network.netns;
                    rollback.push(move || {
                        let _ = crate::node::netns::in_netns(ns, || crate::datapath::ingress_queue::remove(ifindex));
                    });
                    record.ingress_queued_in_pod = true;
                    record.ingress_queue_door = door_key;
                    record.ingress_queue_child = child;
                    state.flags |= IFACE_INGRESS_QUEUED;
                    let mut how = format!("{} in the pod's netns ({})", crate::datapath::ingress_queue::ifb_name(ifindex), child.describe());
                    if network.ingress_tradeoff == IngressTradeoff::Cpu {
                        state.flags |= IFACE_INGRESS_LOW_CPU;
                        how.push_str(", 8 ms deep at every rate (ingressTradeoff: cpu)");
                    }
                    IngressMode::Queue(how)
                }
                Err(e) => {
                    log::warn!("cannot queue ingress in the pod's netns, policing instead: {e:#}");
                    IngressMode::Policer(format!("cannot queue in the pod's netns: {e:#}"))
                }
            }
        }
    };

    // Egress: guarded on the host side where there is one, and on the pod's
    // interface, which an eBPF main CNI cannot skip; else the pod's raw
    // frames are refused on its interface, unless allowed.
    if let (Some(_), Some((name, index))) = (limits.egress, host) {
        let guard = HostGuard::for_egress(cgroup_id, &state.egress);
        bpf_sys::update(guards.as_fd(), &index, &guard, bpf_sys::Update::Locked).context("cannot write the egress guard")?;
        let g = &guards;
        rollback.push(move || {
            let _ = bpf_sys::delete(g.as_fd(), &index);
        });
        crate::datapath::host_guard::attach(name, &datapath.join(PROG_GUARD))?;
        rollback.push(move || crate::datapath::host_guard::detach(index));
        record.egress_guarded = true;

        let key = allocate_key(guards.as_fd(), &guard, POD_SIDE_GUARD, cgroup_id ^ u64::from(ifindex)).context("cannot write the pod-side egress guard")?;
        rollback.push(move || {
            let _ = bpf_sys::delete(g.as_fd(), &key);
        });
        let prog = datapath.join(PROG_GUARD);
        crate::node::netns::in_netns(network.netns, || crate::datapath::host_guard::attach_pod_side(ifindex, key, &prog))?;
        let ns = network.netns;
        rollback.push(move || {
            let _ = crate::node::netns::in_netns(ns, || {
                crate::datapath::host_guard::detach_pod_side(ifindex);
                Ok(())
            });
        });
        record.pod_guard = key;
    } else if limits.egress.is_some() && !network.allow_raw_sockets {
        let already = bpf_sys::lookup_locked_bytes(raw_guarded.as_fd(), &cgroup_id).is_ok();
        bpf_sys::update(raw_guarded.as_fd(), &cgroup_id, &1u32, bpf_sys::Update::Plain).context("cannot record the pod for the raw-frame guard")?;
        if !already {
            let r = &raw_guarded;
            rollback.push(move || {
                let _ = bpf_sys::delete(r.as_fd(), &cgroup_id);
            });
        }
        crate::datapath::raw_guard::attach(network.netns, network.ifname, &datapath.join(PROG_RAW))?;
        let (netns, ifname) = (network.netns, network.ifname);
        rollback.push(move || crate::datapath::raw_guard::detach(netns, ifname));
        record.raw_guarded = true;
    }

    // The cgroup links: the sibling's, or new ones. Links live only in this
    // process until pinned: an early return drops them, and dropping an
    // unpinned link detaches it.
    let mut link_names: Vec<&str> = LINK_PINS.to_vec();
    // PACKET_QDISC_BYPASS and AF_XDP skip the pod's interface's egress hook,
    // and with it the raw-frame filter or the pod-side guard.
    if record.raw_guarded || (record.pod_guard != 0 && !network.allow_raw_sockets) {
        link_names.push(RAW_GUARD_PINS[0]);
    }
    let mut links: Vec<(OwnedFd, &str)> = Vec::with_capacity(link_names.len());
    for pin in link_names {
        let shared = sibling.and_then(|s| bpf_sys::obj_get(&s.join(pin)).ok());
        let link = match shared {
            Some(link) => link,
            None => {
                let (prog, attach_type) = match pin {
                    "egress" => (PROG_EGRESS, bpf_sys::ATTACH_CGROUP_INET_EGRESS),
                    "ingress" => (PROG_INGRESS, bpf_sys::ATTACH_CGROUP_INET_INGRESS),
                    "sockops" => (PROG_SOCKOPS, bpf_sys::ATTACH_CGROUP_SOCK_OPS),
                    _ => (PROG_SETSOCKOPT, bpf_sys::ATTACH_CGROUP_SETSOCKOPT),
                };
                bpf_sys::link_create(open(prog)?.as_fd(), cgroup.as_fd(), attach_type)
                    .with_context(|| format!("cannot attach {prog} to {}", cgroup_dir.display()))?
            }
        };
        links.push((link, pin));
    }

    // The state: the pod cgroup's record, then this interface's.
    // A second interface of the pod (a sibling attachment) makes it
    // ambiguous which one a tunnel's frames leave by: then none.
    let pod = PodRecord { cgroup_id, layout: STATE_LAYOUT, sole_ifindex: if sibling.is_none() { ifindex } else { 0 } };
    bpf_sys::update(pod_map.as_fd(), &cgroup_id, &pod, bpf_sys::Update::Plain)
        .context("cannot write the pod cgroup's storage")?;
    let key = record.key();
    bpf_sys::update(iface_map.as_fd(), &key, &state, bpf_sys::Update::Locked)
        .context("cannot write the interface's limits")?;
    let m = &iface_map;
    rollback.push(move || {
        let _ = bpf_sys::delete(m.as_fd(), &key);
    });

    // The pins.
    fs::create_dir_all(pod_dir).with_context(|| format!("cannot create {}", pod_dir.display()))?;
    rollback.push(move || {
        let _ = remove_pin_dir(pod_dir);
    });
    for (link, name) in &links {
        bpf_sys::obj_pin(link.as_fd(), &pod_dir.join(name)).with_context(|| format!("cannot pin link {name}"))?;
    }
    bpf_sys::obj_pin(iface_map.as_fd(), &pod_dir.join(STATE_PIN)).context("cannot pin the interface state map")?;
    if record.egress_guarded || record.pod_guard != 0 {
        bpf_sys::obj_pin(guards.as_fd(), &pod_dir.join(GUARDS_PIN)).context("cannot pin the egress guard map")?;
    }
    if record.ingress_queue_door != 0 {
        bpf_sys::obj_pin(queues.as_fd(), &pod_dir.join(QUEUES_PIN)).context("cannot pin the ingress queues map")?;
    }
    if record.raw_guarded {
        bpf_sys::obj_pin(raw_guarded.as_fd(), &pod_dir.join(RAW_GUARDED_PIN)).context("cannot pin the raw-frame guard map")?;
    }
    attachment::pin(pod_dir, &record)?;
    rollback.disarm();
    Ok(mode)
}

/// Writes `value` under a free key of `map` and returns the key: `prefix`
/// | a 16-bit id (a tc filter's classid, which is all cls_bpf hands its
/// program), probed from `seed`.
fn allocate_key<V: bpf_sys::Pod>(map: std::os::fd::BorrowedFd<'_>, value: &V, prefix: u32, seed: u64) -> Result<u32> {
    let start = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) as u32;
    for i in 0..0xffff_u32 {
        let key = prefix | ((start + i) % 0xffff + 1);
        match bpf_sys::update(map, &key, value, bpf_sys::Update::LockedNew) {
            Ok(()) => return Ok(key),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("every 16-bit id is in use: 65535 shaped interfaces on this node")
}

/// What is attached for one pod, as read back from its pins.
#[derive(Debug)]
pub struct PodAttachment {
    /// (pin name, link info); a missing pin has no entry.
    pub links: Vec<(&'static str, CgroupLinkInfo)>,
    pub state: Option<IfaceState>,
    /// What ADD set up (None for pods of layouts 1 and 2).
    pub record: Option<AttachmentRecord>,
    /// Whether its links run this build's datapath (else an older or newer
    /// release's, which may attach fewer links). True when unknown.
    pub this_release: bool,
}

pub fn inspect_pod(root: &PinRoot, id: &AttachmentId) -> Result<Option<PodAttachment>> {
    let dir = root.pod_dir(id);
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut links = Vec::new();
    for name in LINK_PINS.into_iter().chain(RAW_GUARD_PINS) {
        if let Ok(fd) = bpf_sys::obj_get(&dir.join(name)) {
            links.push((name, bpf_sys::link_info(fd.as_fd()).with_context(|| format!("cannot read link {name}"))?));
        }
    }
    let state = pod_state_from_pins(&dir).ok().map(|(_, s)| s);
    let record = attachment::read(&dir)?;
    let ours = datapath_prog_ids(&root.datapath_root().join(datapath_version()));
    let this_release = links.iter().find(|(n, _)| *n == LINK_PINS[0]).is_none_or(|(_, l)| ours.contains(&l.prog_id));
    Ok(Some(PodAttachment { links, state, record, this_release }))
}

/// Reads an attachment's interface state given only its pins: through its
/// record's key, or (layouts 1 and 2) under the cgroup its egress link is
/// attached to. Returns that cgroup's ID and the state.
pub fn pod_state_from_pins(dir: &Path) -> Result<(u64, IfaceState)> {
    let map = bpf_sys::obj_get(&dir.join(STATE_PIN)).context("cannot open the state pin")?;
    let (cgroup_id, value) = match attachment::read(dir)? {
        Some(record) => (
            record.cgroup_id,
            bpf_sys::lookup_locked_bytes(map.as_fd(), &record.key())
                .with_context(|| format!("no state for interface {} of cgroup id {}", record.ifindex, record.cgroup_id))?,
        ),
        None => {
            let link = bpf_sys::obj_get(&dir.join(LINK_PINS[0])).context("cannot open the egress link pin")?;
            let info = bpf_sys::link_info(link.as_fd())?;
            let value = bpf_sys::lookup_locked_bytes(map.as_fd(), &info.cgroup_id)
                .with_context(|| format!("no state for cgroup id {}", info.cgroup_id))?;
            (info.cgroup_id, value)
        }
    };
    let state = IfaceState::from_value(&value).map_err(anyhow::Error::msg)?;
    Ok((cgroup_id, state))
}

/// Rewrites an attachment's interface state under its lock with `change`
/// applied to the latest value: for `set`, which must not write back
/// counters or tokens from a stale copy.
pub fn update_pod_state(dir: &Path, change: impl FnOnce(&mut IfaceState)) -> Result<IfaceState> {
    let record = attachment::read(dir)?.context("the pod was attached by a release before layout 3; DEL and ADD it again to change it")?;
    let map = bpf_sys::obj_get(&dir.join(STATE_PIN)).context("cannot open the state pin")?;
    let value = bpf_sys::lookup_locked_bytes(map.as_fd(), &record.key()).context("cannot read the interface state")?;
    let mut state = IfaceState::from_value(&value).map_err(anyhow::Error::msg)?;
    change(&mut state);
    bpf_sys::update_locked(map.as_fd(), &record.key(), &state).context("cannot write the interface state")?;
    // The host-side guard follows the egress limit, or it would hold the
    // pod to the old one.
    // So does the ingress queue's door.
    if let Some(mut door) = door_from_pins(dir) {
        let spec = crate::datapath::ingress_queue::QueueSpec::for_bucket(&state.ingress);
        door.queue.rate = spec.rate_bits / 8;
        door.queue.burst = spec.burst_bytes;
        door.queue.tokens = door.queue.tokens.min(spec.burst_bytes as i64);
        door.limit = spec.limit_bytes;
        let queues = bpf_sys::obj_get(&dir.join(QUEUES_PIN)).context("cannot open the ingress queues map")?;
        bpf_sys::update_locked(queues.as_fd(), &record.ingress_queue_door, &door).context("cannot write the ingress queue's door")?;
    }
    for (key, guard) in guards_from_pins(dir) {
        let mut guard = guard;
        let fresh = HostGuard::for_egress(record.cgroup_id, &state.egress);
        guard.egress.rate = fresh.egress.rate;
        guard.egress.burst = fresh.egress.burst;
        guard.egress.tokens = guard.egress.tokens.min(fresh.egress.burst as i64);
        let guards = bpf_sys::obj_get(&dir.join(GUARDS_PIN)).context("cannot open the egress guard map")?;
        bpf_sys::update_locked(guards.as_fd(), &key, &guard).context("cannot write the egress guard")?;
    }
    Ok(state)
}

/// Where the attachment's ingress queue is, if it has one: its record says;
/// pods of layouts 1 and 2 (no record) had it on the host side.
pub fn ingress_queue_of(dir: &Path, state: &IfaceState) -> Option<crate::datapath::ingress_queue::QueueAt> {
    use crate::datapath::ingress_queue::QueueAt;
    match attachment::read(dir).ok().flatten() {
        Some(r) if r.ingress_queued_in_pod => Some(QueueAt::Pod { netns: PathBuf::from(&r.netns), pod_ifindex: r.ifindex, child: r.ingress_queue_child }),
        Some(r) if r.ingress_queued => Some(QueueAt::HostSide(r.host_ifindex)),
        Some(_) => None,
        None => (state.flags & IFACE_INGRESS_QUEUED != 0).then_some(QueueAt::HostSide(state.host_ifindex)),
    }
}

/// What the TBF of the attachment's ingress queue in the pod's netns hands
/// frames to, if it has such a queue.
pub fn queue_child_from_pins(dir: &Path) -> Option<crate::datapath::ingress_queue::QueueChild> {
    attachment::read(dir).ok().flatten().filter(|r| r.ingress_queued_in_pod).map(|r| r.ingress_queue_child)
}

/// The egress guard's state on the host side, if the attachment has one.
pub fn guard_from_pins(dir: &Path) -> Option<HostGuard> {
    let record = attachment::read(dir).ok().flatten().filter(|r| r.egress_guarded)?;
    guard_at(dir, &record, record.host_ifindex)
}

/// The egress guard's state on the pod's interface, if the attachment has one.
pub fn pod_side_guard_from_pins(dir: &Path) -> Option<HostGuard> {
    let record = attachment::read(dir).ok().flatten().filter(|r| r.pod_guard != 0)?;
    guard_at(dir, &record, record.pod_guard)
}

/// The door of the attachment's ingress queue, if it has one.
pub fn door_from_pins(dir: &Path) -> Option<QueueGate> {
    let record = attachment::read(dir).ok().flatten().filter(|r| r.ingress_queue_door != 0)?;
    let map = bpf_sys::obj_get(&dir.join(QUEUES_PIN)).ok()?;
    let value = bpf_sys::lookup_locked_bytes(map.as_fd(), &record.ingress_queue_door).ok()?;
    if value.len() != std::mem::size_of::<QueueGate>() {
        return None;
    }
    let mut door = QueueGate::default();
    // SAFETY: QueueGate is repr(C) integers only; the sizes match.
    unsafe { std::ptr::copy_nonoverlapping(value.as_ptr(), &mut door as *mut QueueGate as *mut u8, value.len()) };
    (door.cgroup_id == record.cgroup_id).then_some(door)
}

/// Whether the pod's host side has lately seen none of what its interface
/// sends: both guards see the same frames, so each one's bucket was last
/// refilled (`last_ns`, the kernel's monotonic clock) by the same packets,
/// unless the host-side one saw nothing for HOST_SIDE_SILENT_NS while the
/// pod-side one did. An eBPF main CNI that runs first on the host veth and
/// redirects the pod's frames past it does this; the pod-side guard then
/// holds the limit alone (and what skips it, compat-syscall
/// PACKET_QDISC_BYPASS or AF_XDP, is unlimited).
pub fn host_side_skipped(host: &HostGuard, pod_side: &HostGuard) -> bool {
    pod_side.egress.last_ns > host.egress.last_ns.saturating_add(HOST_SIDE_SILENT_NS)
}

/// See host_side_skipped.
const HOST_SIDE_SILENT_NS: u64 = 5_000_000_000;

/// Every egress guard of the attachment, with its key.
fn guards_from_pins(dir: &Path) -> Vec<(u32, HostGuard)> {
    let Some(record) = attachment::read(dir).ok().flatten() else { return Vec::new() };
    let host = record.egress_guarded.then_some(record.host_ifindex);
    let pod = (record.pod_guard != 0).then_some(record.pod_guard);
    host.into_iter().chain(pod).filter_map(|k| guard_at(dir, &record, k).map(|g| (k, g))).collect()
}

fn guard_at(dir: &Path, record: &AttachmentRecord, key: u32) -> Option<HostGuard> {
    let map = bpf_sys::obj_get(&dir.join(GUARDS_PIN)).ok()?;
    let value = bpf_sys::lookup_locked_bytes(map.as_fd(), &key).ok()?;
    if value.len() != std::mem::size_of::<HostGuard>() {
        return None;
    }
    let mut guard = HostGuard::default();
    // SAFETY: HostGuard is repr(C) integers only; the sizes match.
    unsafe { std::ptr::copy_nonoverlapping(value.as_ptr(), &mut guard as *mut HostGuard as *mut u8, value.len()) };
    (guard.cgroup_id == record.cgroup_id).then_some(guard)
}

#[cfg(test)]
mod tests {
    /// The version build.rs hashed is that of the object this binary embeds.
    #[test]
    fn the_datapath_version_is_the_hash_of_the_embedded_object() {
        let h = super::SHAPER_OBJ
            .iter()
            .chain(env!("BRL_DATAPATH_TAG").as_bytes())
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
        assert_eq!(super::datapath_version(), format!("{h:016x}"));
    }

    /// The suite tests the datapath nodes run: BRL_BPF_KNOCKOUT (build.rs)
    /// is for bench/knockout.sh's builds only.
    #[test]
    fn this_build_has_no_part_of_the_datapath_knocked_out() {
        assert_eq!(super::KNOCKOUTS, "", "built with BRL_BPF_KNOCKOUT set: unset it and build again");
    }
}
