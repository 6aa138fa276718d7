//! The eBPF datapath: loading it once per node, attaching it to pod cgroups
//! and interfaces, and removing both (the pin root's layout is pins.rs's).
//!
//! Removing a pod's link pins detaches it. The pod's cgroup storage value
//! outlives the detach (measured: it stays in the map until the cgroup is
//! removed, which the kubelet does, or the map is freed); a later ADD on the
//! same cgroup overwrites it.
//!
//! Upgrades: each build loads its own `datapath/<version>/`; pods attached by
//! an older build keep using the older one (their links hold its programs,
//! their `state` pin its map). A datapath version is unpinned when no pod's
//! link runs one of its programs (matched by program ID), so an old version
//! goes with its last pod and an idle node holds nothing. `loading-<pid>`
//! directories of loads that died part-way are removed on the way.

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::programs::{CgroupSkb, CgroupSockopt, SchedClassifier, SockOps};
use aya::{Ebpf, EbpfLoader};

use crate::bpf_sys::{self, CgroupLinkInfo};
use crate::pins::{process_alive, remove_pin_dir, AttachmentId, PinRoot};
use crate::limits::Limits;
use crate::state::PodState;

/// The production datapath, built from ebpf/shaper.bpf.c by build.rs.
pub static SHAPER_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shaper.bpf.o"));
/// The BPF_PROG_TEST_RUN harness, built from ebpf/harness.bpf.c.
pub static HARNESS_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/harness.bpf.o"));

const PROG_EGRESS: &str = "shape_egress_prog";
const PROG_INGRESS: &str = "shape_ingress_prog";
const PROG_SOCKOPS: &str = "pace_tcp";
const PROG_SETSOCKOPT: &str = "refuse_qdisc_bypass";
const PROG_RAW: &str = "refuse_raw_frames";
const MAP_POD_STATE: &str = "pod_state";
const MAP_FLOW_STATE: &str = "flow_state";
const DATAPATH_PINS: [&str; 7] =
    [PROG_EGRESS, PROG_INGRESS, PROG_SOCKOPS, PROG_SETSOCKOPT, PROG_RAW, MAP_POD_STATE, MAP_FLOW_STATE];
/// The programs of a datapath version that attach to pod cgroups or
/// interfaces: their IDs tell this plugin's attachments from others'.
const DATAPATH_PROGS: [&str; 5] = [PROG_EGRESS, PROG_INGRESS, PROG_SOCKOPS, PROG_SETSOCKOPT, PROG_RAW];
const LOADING_PREFIX: &str = "loading-";

/// The cgroup link pins every attachment has, and the map pin beside them.
pub const LINK_PINS: [&str; 3] = ["egress", "ingress", "sockops"];
pub const STATE_PIN: &str = "state";
/// The link that keeps raw frames under the limit beside the filter on the
/// pod's interface (raw_guard), unless the config sets `allowRawSockets`: a
/// cgroup link refusing PACKET_QDISC_BYPASS, which would skip that filter.
pub const RAW_GUARD_PINS: [&str; 1] = ["setsockopt"];
/// The pod's interface, as CNI_NETNS and CNI_IFNAME named it at ADD.
pub struct PodNetwork<'a> {
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// Whether AF_PACKET sockets may send (the `allowRawSockets` key).
    pub allow_raw_sockets: bool,
    /// The pod's host-side interface, where ingress may be queued (None:
    /// none in prevResult, or `ingressQueue` is off).
    pub host_interface: Option<String>,
}

/// How the pod's ingress limit is enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngressMode {
    /// No ingress limit.
    None,
    /// A queue on this host-side interface, with clamped receive windows.
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
/// while pods attached by the old one keep theirs. `BRL_DATAPATH_TAG` at
/// build time (build.rs) gives a build a version of its own: the upgrade
/// test builds "release N" that way.
pub fn datapath_version() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in SHAPER_OBJ.iter().chain(env!("BRL_DATAPATH_TAG").as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Whether this build's datapath is loaded and pinned under `pin_root`.
pub fn datapath_pinned(pin_root: &Path) -> bool {
    let dir = pin_root.join("datapath").join(datapath_version());
    DATAPATH_PINS.iter().all(|p| dir.join(p).exists())
}

impl PinRoot {
    /// Unpins an attachment, which detaches its links. Returns whether it existed.
    pub fn remove_pod(&self, id: &AttachmentId) -> Result<bool> {
        let dir = self.pod_dir(id);
        // The ingress queue lives on the host-side interface, which usually
        // goes with the pod's netns; when it is still there, it is ours to remove.
        if let Ok((_, state)) = pod_state_from_pins(&dir) {
            if state.flags & crate::state::POD_INGRESS_QUEUED != 0 {
                if let Err(e) = crate::ingress_queue::remove(state.host_ifindex) {
                    log::warn!("cannot remove the ingress queue: {e:#}");
                }
            }
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

    /// Unpins every datapath version no pod's link runs, and leftovers of
    /// loads that died part-way; removes the pin root when no pod is left.
    /// Waiting commands notice the removal in `lock` and start over.
    pub fn remove_datapath_if_unused(&self) -> Result<()> {
        let attachments = self.attachments()?;
        let mut used = std::collections::HashSet::new();
        for a in &attachments {
            let dir = self.pod_dir(a);
            for name in LINK_PINS {
                if let Ok(info) = bpf_sys::obj_get(&dir.join(name)).and_then(|l| bpf_sys::link_info(l.as_fd())) {
                    used.insert(info.prog_id);
                }
            }
        }
        let root = self.datapath_root();
        if let Ok(versions) = fs::read_dir(&root) {
            for v in versions {
                let v = v?;
                let name = v.file_name().to_string_lossy().into_owned();
                let unused = match name.strip_prefix(LOADING_PREFIX) {
                    Some(pid) => !process_alive(pid),
                    None => !datapath_prog_ids(&v.path()).iter().any(|id| used.contains(id)),
                };
                if unused {
                    remove_pin_dir(&v.path())?;
                    log::info!("unpinned datapath {name}: no pod uses it");
                }
            }
        }
        if attachments.is_empty() {
            let _ = fs::remove_dir(self.pods_dir());
            let _ = fs::remove_dir(&root);
            let _ = fs::remove_dir(&self.path());
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

/// The IDs of every program of every datapath version pinned under a pin root.
fn pinned_prog_ids(pin_root: &Path) -> Vec<u32> {
    let versions: Vec<PathBuf> =
        fs::read_dir(pin_root.join("datapath")).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    versions.iter().flat_map(|v| datapath_prog_ids(v)).collect()
}

/// The IDs of the programs pinned in one datapath directory.
fn datapath_prog_ids(dir: &Path) -> Vec<u32> {
    DATAPATH_PROGS
        .iter()
        .filter_map(|p| bpf_sys::obj_get(&dir.join(p)).and_then(|fd| bpf_sys::prog_info(fd.as_fd())).ok())
        .map(|info| info.id)
        .collect()
}






/// Loads the shaper object (maps and all three programs) into the kernel.
pub fn load() -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new().load(SHAPER_OBJ).context("cannot load the eBPF object")?;
    for name in [PROG_EGRESS, PROG_INGRESS] {
        let prog: &mut CgroupSkb = program(&mut ebpf, name)?.try_into()?;
        prog.load().with_context(|| format!("the kernel refused program {name}"))?;
    }
    let prog: &mut SockOps = program(&mut ebpf, PROG_SOCKOPS)?.try_into()?;
    prog.load().with_context(|| format!("the kernel refused program {PROG_SOCKOPS}"))?;
    let prog: &mut CgroupSockopt = program(&mut ebpf, PROG_SETSOCKOPT)?.try_into()?;
    prog.load().with_context(|| format!("the kernel refused program {PROG_SETSOCKOPT}"))?;
    let prog: &mut SchedClassifier = program(&mut ebpf, PROG_RAW)?.try_into()?;
    prog.load().with_context(|| format!("the kernel refused program {PROG_RAW}"))?;
    Ok(ebpf)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).with_context(|| format!("program {name} is missing from the eBPF object"))
}

fn load_and_pin(dir: &Path) -> Result<()> {
    let mut ebpf = load()?;
    for name in [PROG_EGRESS, PROG_INGRESS] {
        let prog: &mut CgroupSkb = program(&mut ebpf, name)?.try_into()?;
        prog.pin(dir.join(name)).with_context(|| format!("cannot pin {name}"))?;
    }
    let prog: &mut SockOps = program(&mut ebpf, PROG_SOCKOPS)?.try_into()?;
    prog.pin(dir.join(PROG_SOCKOPS)).with_context(|| format!("cannot pin {PROG_SOCKOPS}"))?;
    let prog: &mut CgroupSockopt = program(&mut ebpf, PROG_SETSOCKOPT)?.try_into()?;
    prog.pin(dir.join(PROG_SETSOCKOPT)).with_context(|| format!("cannot pin {PROG_SETSOCKOPT}"))?;
    let prog: &mut SchedClassifier = program(&mut ebpf, PROG_RAW)?.try_into()?;
    prog.pin(dir.join(PROG_RAW)).with_context(|| format!("cannot pin {PROG_RAW}"))?;
    for name in [MAP_POD_STATE, MAP_FLOW_STATE] {
        let map = ebpf.map(name).with_context(|| format!("map {name} is missing from the eBPF object"))?;
        map.pin(dir.join(name)).with_context(|| format!("cannot pin map {name}"))?;
    }
    Ok(())
}

/// Attaches the datapath to a pod cgroup and writes the pod's limits. On any
/// failure nothing of this attachment remains.
pub fn attach_pod(
    root: &PinRoot,
    id: &AttachmentId,
    cgroup_dir: &Path,
    network: &PodNetwork<'_>,
    limits: &Limits,
) -> Result<IngressMode> {
    // A repeated ADD replaces the attachment rather than stacking another.
    root.remove_pod(id)?;
    let result = make_room_on_cgroup(root, id, cgroup_dir)
        .and_then(|()| root.datapath())
        .and_then(|datapath| attach_and_pin(&datapath, &root.pod_dir(id), cgroup_dir, network, limits));
    if result.is_err() {
        let _ = root.remove_pod(id);
        let _ = root.remove_datapath_if_unused();
    }
    result
}

/// Cgroup links stack: a second attachment on the same cgroup would charge
/// every packet to two buckets. An earlier sandbox of the same pod on the
/// same network (its DEL never came) is stale and replaced; another network
/// on the pod (a Multus secondary chaining us too) is refused, naming the
/// owner. Our programs are recognised by ID, against every datapath version
/// pinned here or in another pin root this node used.
fn make_room_on_cgroup(root: &PinRoot, id: &AttachmentId, cgroup_dir: &Path) -> Result<()> {
    let cgroup = File::open(cgroup_dir).with_context(|| format!("cannot open pod cgroup {}", cgroup_dir.display()))?;
    let attached = || -> Result<Vec<u32>> {
        bpf_sys::attached_prog_ids(cgroup.as_fd(), bpf_sys::ATTACH_CGROUP_INET_EGRESS)
            .with_context(|| format!("cannot query the programs attached to {}", cgroup_dir.display()))
    };
    // Fast path: one query finds nothing attached.
    if attached()?.is_empty() {
        return Ok(());
    }
    let other_roots: Vec<PathBuf> = crate::pin_roots::known(root.path()).into_iter().filter(|p| p != root.path()).collect();
    // Reading program IDs needs no lock: pins are removed, never rewritten.
    let ours: Vec<u32> = std::iter::once(root.path()).chain(other_roots.iter().map(PathBuf::as_path)).flat_map(pinned_prog_ids).collect();
    let shaped = || -> Result<bool> { Ok(attached()?.iter().any(|p| ours.contains(p))) };
    if !shaped()? {
        return Ok(());
    }
    // Slow path: find the owner among the pins.
    let cgroup_id = crate::cgroup::cgroup_id(cgroup_dir).with_context(|| format!("cannot stat {}", cgroup_dir.display()))?;
    let clear = |r: &PinRoot| -> Result<()> {
        for other in r.attachments()?.into_iter().filter(|a| a != id || r.path() != root.path()) {
            let Ok(link) = bpf_sys::obj_get(&r.pod_dir(&other).join(LINK_PINS[0])) else { continue };
            if !bpf_sys::link_info(link.as_fd()).is_ok_and(|i| i.cgroup_id == cgroup_id) {
                continue;
            }
            if other.network != id.network {
                bail!(
                    "cgroup {} is already shaped by network {:?}, container {}, interface {}; run DEL for that attachment first",
                    cgroup_dir.display(),
                    other.network,
                    other.container_id,
                    other.ifname
                );
            }
            drop(link);
            log::warn!(
                "cgroup {}: replacing the stale attachment of an earlier sandbox (container {}, interface {}, pin root {})",
                cgroup_dir.display(),
                other.container_id,
                other.ifname,
                r.path().display()
            );
            r.remove_pod(&other)?;
        }
        Ok(())
    };
    clear(root)?;
    for p in &other_roots {
        if let Some(r) = PinRoot::existing_unless_busy(p)? {
            clear(&r)?;
            r.remove_datapath_if_unused()?;
        }
    }
    // Links whose pins were just removed by another process (a repeated
    // ADD racing a DEL) detach a moment later, from a kernel work item:
    // wait for that before refusing.
    for _ in 0..50 {
        if !shaped()? {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    bail!(
        "cgroup {} already has the bpf-ratelimit shaper attached by something outside pin root {}; detach it first",
        cgroup_dir.display(),
        root.path().display()
    )
}

fn attach_and_pin(
    datapath: &Path,
    pod_dir: &Path,
    cgroup_dir: &Path,
    network: &PodNetwork<'_>,
    limits: &Limits,
) -> Result<IngressMode> {
    let (mode, queued_on) = set_up_ingress_queue(network, limits);
    let attached = attach_and_pin_links(datapath, pod_dir, cgroup_dir, network, limits, queued_on);
    if attached.is_err() {
        if let Some(ifindex) = queued_on {
            let _ = crate::ingress_queue::remove(ifindex);
        }
    }
    attached.map(|()| mode)
}

/// Puts the ingress queue on the pod's host-side interface, where there is
/// one free to take it; returns the mode and the interface's index.
fn set_up_ingress_queue(network: &PodNetwork<'_>, limits: &Limits) -> (IngressMode, Option<u32>) {
    let Some(limit) = limits.ingress else { return (IngressMode::None, None) };
    let Some(ifname) = &network.host_interface else {
        return (IngressMode::Policer("no host-side interface in prevResult".into()), None);
    };
    let queued = crate::ingress_queue::install(ifname, crate::ingress_queue::QueueSpec::for_rate(limit.rate))
        .and_then(|()| crate::netns::ifindex(ifname));
    match queued {
        Ok(ifindex) => (IngressMode::Queue(ifname.clone()), Some(ifindex)),
        Err(e) => {
            log::warn!("cannot queue ingress on {ifname}, policing instead: {e:#}");
            (IngressMode::Policer(format!("cannot queue on {ifname}: {e}")), None)
        }
    }
}

fn attach_and_pin_links(
    datapath: &Path,
    pod_dir: &Path,
    cgroup_dir: &Path,
    network: &PodNetwork<'_>,
    limits: &Limits,
    queued_on: Option<u32>,
) -> Result<()> {
    let cgroup = File::open(cgroup_dir).with_context(|| format!("cannot open pod cgroup {}", cgroup_dir.display()))?;
    let cgroup_id = crate::cgroup::cgroup_id(cgroup_dir)?;
    let open_prog = |name: &str| {
        bpf_sys::obj_get(&datapath.join(name)).with_context(|| format!("cannot open pinned program {name}"))
    };

    // Links live only in this process until pinned: an early return drops
    // them, and dropping an unpinned link detaches it.
    let mut links = Vec::with_capacity(4);
    let mut cgroup_links = vec![
        (PROG_EGRESS, bpf_sys::ATTACH_CGROUP_INET_EGRESS, LINK_PINS[0]),
        (PROG_INGRESS, bpf_sys::ATTACH_CGROUP_INET_INGRESS, LINK_PINS[1]),
        (PROG_SOCKOPS, bpf_sys::ATTACH_CGROUP_SOCK_OPS, LINK_PINS[2]),
    ];
    if !network.allow_raw_sockets {
        cgroup_links.push((PROG_SETSOCKOPT, bpf_sys::ATTACH_CGROUP_SETSOCKOPT, RAW_GUARD_PINS[0]));
    }
    for (name, attach_type, pin) in cgroup_links {
        let link = bpf_sys::link_create(open_prog(name)?.as_fd(), cgroup.as_fd(), attach_type)
            .with_context(|| format!("cannot attach {name} to {}", cgroup_dir.display()))?;
        links.push((link, pin));
    }

    // The pod's interface: its index scopes shaping to it, and the raw-frame
    // guard filters its egress, both inside the pod's netns.
    let ifindex = crate::netns::in_netns(network.netns, || crate::netns::ifindex(network.ifname))
        .with_context(|| format!("cannot use interface {} of the pod", network.ifname))?;
    if !network.allow_raw_sockets {
        crate::raw_guard::attach(network.netns, network.ifname, &datapath.join(PROG_RAW))?;
    }
    let pinned = pin_pod(datapath, pod_dir, cgroup_id, &links, limits, ifindex, queued_on);
    if pinned.is_err() && !network.allow_raw_sockets {
        crate::raw_guard::detach(network.netns, network.ifname);
    }
    pinned
}

fn pin_pod(
    datapath: &Path,
    pod_dir: &Path,
    cgroup_id: u64,
    links: &[(std::os::fd::OwnedFd, &str)],
    limits: &Limits,
    ifindex: u32,
    queued_on: Option<u32>,
) -> Result<()> {
    let map = bpf_sys::obj_get(&datapath.join(MAP_POD_STATE)).context("cannot open the pod_state map")?;
    // update_locked checks that the map's value size is this build's PodState.
    let mut state = PodState::new(limits, ifindex);
    if let Some(host_ifindex) = queued_on {
        state.flags |= crate::state::POD_INGRESS_QUEUED;
        state.host_ifindex = host_ifindex;
    }
    bpf_sys::update_locked(map.as_fd(), cgroup_id, &state).context("cannot write the pod's limits into its cgroup storage")?;

    fs::create_dir_all(pod_dir).with_context(|| format!("cannot create {}", pod_dir.display()))?;
    for (link, name) in links {
        bpf_sys::obj_pin(link.as_fd(), &pod_dir.join(name)).with_context(|| format!("cannot pin link {name}"))?;
    }
    bpf_sys::obj_pin(map.as_fd(), &pod_dir.join(STATE_PIN)).context("cannot pin the pod's state map")?;
    Ok(())
}

/// What is attached for one pod, as read back from its pins.
#[derive(Debug)]
pub struct PodAttachment {
    /// (pin name, link info); a missing pin has no entry.
    pub links: Vec<(&'static str, CgroupLinkInfo)>,
    pub state: Option<PodState>,
    /// Whether its links run this build's datapath (else an older or newer
    /// release's, which may attach fewer links). True when unknown.
    pub this_release: bool,
}

pub fn inspect_pod(root: &PinRoot, id: &AttachmentId, cgroup_id: u64) -> Result<Option<PodAttachment>> {
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
    let state = bpf_sys::obj_get(&dir.join(STATE_PIN))
        .ok()
        .and_then(|fd| bpf_sys::lookup_locked_bytes(fd.as_fd(), cgroup_id).ok())
        .and_then(|v| PodState::from_value(&v).ok());
    let ours = datapath_prog_ids(&root.datapath_root().join(datapath_version()));
    let this_release = links.iter().find(|(n, _)| *n == LINK_PINS[0]).is_none_or(|(_, l)| ours.contains(&l.prog_id));
    Ok(Some(PodAttachment { links, state, this_release }))
}

/// Reads a pod's state given only its pins (for `stats`): the cgroup comes from its egress link.
pub fn pod_state_from_pins(dir: &Path) -> Result<(u64, PodState)> {
    let link = bpf_sys::obj_get(&dir.join(LINK_PINS[0])).context("cannot open the egress link pin")?;
    let info = bpf_sys::link_info(link.as_fd())?;
    let map = bpf_sys::obj_get(&dir.join(STATE_PIN)).context("cannot open the state pin")?;
    let value = bpf_sys::lookup_locked_bytes(map.as_fd(), info.cgroup_id)
        .with_context(|| format!("no state for cgroup id {}", info.cgroup_id))?;
    let state = PodState::from_value(&value).map_err(anyhow::Error::msg)?;
    Ok((info.cgroup_id, state))
}
