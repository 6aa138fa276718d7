//! ADD, DEL, CHECK, GC and STATUS: each reads a Request and returns the
//! stdout reply or a CniError.

use std::path::PathBuf;

use serde_json::Value;

use crate::node::cgroup;
use crate::cni::{code, Command, CniError, Env};
use crate::node::bpf_sys::CgroupLinkInfo;
use crate::datapath::attach::{self, PodNetwork, LINK_PINS, RAW_GUARD_PINS};
use crate::node::pins::{AttachmentId, PinRoot};
use crate::datapath::state::IfaceState;
use crate::policy::limits::{self, Limits};
use crate::policy::resolve;
use crate::policy::netconf::{FailurePolicy, NetConf};

/// Everything one invocation was given.
pub struct Request {
    pub command: Command,
    pub env: Env,
    pub conf: NetConf,
}

pub fn run(req: &Request) -> Result<String, CniError> {
    crate::cni::require_version_for(req.command, &req.conf.cni_version)?;
    crate::node::pins::set_lock_timeout(req.conf.lock_timeout);
    let missing = crate::node::privilege::missing();
    if !missing.is_empty() {
        let code = if req.command == Command::Status { code::NOT_AVAILABLE } else { code::DATAPATH };
        let err = CniError::new(
            code,
            format!("bpf-ratelimit lacks {}: it needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN (run it as root, as runtimes do)", missing.join(", ")),
            "",
        );
        return match req.command {
            Command::Add if req.conf.failure_policy == FailurePolicy::Open => start_unshaped(req, err),
            Command::Status if req.conf.failure_policy == FailurePolicy::Open => status_open(err),
            _ => Err(err),
        };
    }
    match req.command {
        Command::Add => cmd_add(req),
        Command::Del => cmd_del(req).map(|_| String::new()),
        Command::Check => cmd_check(req).map(|_| String::new()),
        Command::Gc => cmd_gc(req).map(|_| String::new()),
        Command::Status => match cmd_status(req) {
            Err(e) if req.conf.failure_policy == FailurePolicy::Open => status_open(e),
            other => other.map(|_| String::new()),
        },
        Command::Version => unreachable!("VERSION is answered before a Request is built"),
    }
}

/// failurePolicy "open": ADD could not shape the pod, and lets it start
/// unshaped: prevResult passed on, an error logged, the reason recorded for
/// `list` and `metrics` (plugin::unshaped).
fn start_unshaped(req: &Request, err: CniError) -> Result<String, CniError> {
    let reply = pass_prev_result(&req.conf)?;
    let reason = if err.details.is_empty() { err.msg.clone() } else { format!("{}: {}", err.msg, err.details) };
    log::error!(
        "container {} ({}): failurePolicy open: the pod starts UNSHAPED, because {reason}",
        req.env.container_id,
        req.env.ifname
    );
    let meta = crate::node::pod_meta::PodMeta::from_args(&req.env.args, resolve::ceilings(&req.conf.policy_for(req.namespace())));
    if let Err(e) = crate::plugin::unshaped::record(&req.attachment(), &meta, &reason) {
        log::error!("container {}: cannot record that it is unshaped: {e:#}", req.env.container_id);
    }
    Ok(reply)
}

/// failurePolicy "open": a shaping add-on must not mark the node's network
/// not ready, so STATUS says it is available and logs what is not.
fn status_open(err: CniError) -> Result<String, CniError> {
    log::error!("STATUS: failurePolicy open: reporting available although {}: {}", err.msg, err.details);
    Ok(String::new())
}

impl Request {
    /// K8S_POD_NAMESPACE from CNI_ARGS, which picks the operator's
    /// per-namespace limits.
    pub fn namespace(&self) -> Option<&str> {
        self.env.args.get("K8S_POD_NAMESPACE").map(String::as_str).filter(|s| !s.is_empty())
    }

    pub fn attachment(&self) -> AttachmentId {
        AttachmentId {
            network: self.conf.name.clone(),
            container_id: self.env.container_id.clone(),
            ifname: self.env.ifname.clone(),
        }
    }
}

/// A datapath failure: "try again later" (11) when it was the pin root's
/// lock held past lockTimeoutSeconds, else code 101.
fn datapath_error(msg: &str, e: anyhow::Error) -> CniError {
    let busy = e.chain().any(|c| c.is::<crate::node::pins::LockTimeout>());
    CniError::from_anyhow(if busy { code::TRY_AGAIN_LATER } else { code::DATAPATH }, msg, &e)
}

fn pod_cgroup(req: &Request) -> Result<PathBuf, CniError> {
    let root = cgroup::cgroup2_root(req.conf.cgroup_root.as_deref())?;
    cgroup::find_pod_cgroup(&root, req.conf.cgroup_path.as_deref(), req.env.args.get("K8S_POD_UID").map(String::as_str))
}

/// prevResult passed through unchanged except for cniVersion.
fn pass_prev_result(conf: &NetConf) -> Result<String, CniError> {
    let mut result = conf.prev_result.clone().ok_or_else(|| {
        CniError::config("no prevResult: bpf-ratelimit is a chained plugin and must come after the main plugin in a conflist")
    })?;
    let Value::Object(obj) = &mut result else {
        return Err(CniError::config("prevResult is not a JSON object"));
    };
    obj.insert("cniVersion".into(), Value::String(conf.cni_version.clone()));
    Ok(result.to_string())
}

fn cmd_add(req: &Request) -> Result<String, CniError> {
    let reply = pass_prev_result(&req.conf)?;
    let mut clamped = Vec::new();
    let limits = resolve::resolve_noting(&req.conf.pod_request(req.namespace()), &mut clamped)?;
    if limits.is_empty() {
        // A repeated ADD of this attachment without limits replaces one with.
        del_everywhere(req).map_err(|e| datapath_error("cannot remove the earlier attachment", e))?;
        log::info!("container {}: no bandwidth limit requested, nothing attached", req.env.container_id);
        return Ok(reply);
    }
    match shape(req, &limits, clamped) {
        Ok(()) => {
            if let Err(e) = crate::plugin::unshaped::remove(&req.attachment()) {
                log::warn!("container {}: cannot remove its record of an earlier unshaped start: {e:#}", req.env.container_id);
            }
            Ok(reply)
        }
        Err(e) if req.conf.failure_policy == FailurePolicy::Open => start_unshaped(req, e),
        Err(e) => Err(e),
    }
}

/// Sets the datapath up for the pod; on failure, nothing is left behind.
fn shape(req: &Request, limits: &Limits, clamped: Vec<String>) -> Result<(), CniError> {
    let cgroup_dir = pod_cgroup(req)?;
    let root = PinRoot::create(&req.conf.pin_root).map_err(|e| datapath_error("cannot use the bpf filesystem", e))?;
    let network = PodNetwork {
        netns: std::path::Path::new(&req.env.netns),
        ifname: &req.env.ifname,
        allow_raw_sockets: req.conf.allow_raw_sockets,
        host_interface: crate::datapath::ingress_queue::host_interface(req.conf.prev_result.as_ref()),
        ingress_queue: req.conf.ingress_queue,
        ingress_tradeoff: req.conf.ingress_tradeoff,
        basis: req.conf.limit_basis,
    };
    let mode = attach::attach_pod(&root, &req.attachment(), &cgroup_dir, &network, limits)
        .map_err(|e| datapath_error("cannot attach the bandwidth shaper to the pod", e))?;
    let mut meta = crate::node::pod_meta::PodMeta::from_args(&req.env.args, resolve::ceilings(&req.conf.policy_for(req.namespace())));
    meta.notes = clamped;
    meta.log_file = req.conf.log_file.as_ref().map(|p| p.to_string_lossy().into_owned());
    if let Err(e) = crate::node::pod_meta::pin(&root.pod_dir(&req.attachment()), &meta) {
        let _ = root.remove_pod(&req.attachment(), Some(std::path::Path::new(&req.env.netns)));
        let _ = root.remove_datapath_if_unused();
        return Err(datapath_error("cannot record the pod's identity", e));
    }
    log::info!(
        "container {} ({}): shaping {} with {}; {mode}",
        req.env.container_id,
        req.env.ifname,
        cgroup_dir.display(),
        describe(limits)
    );
    Ok(())
}

pub fn describe(limits: &Limits) -> String {
    let one = |l: Option<limits::Limit>| match l {
        None => "unlimited".to_string(),
        Some(l) => format!("{}bit/s burst {} bytes", crate::policy::quantity::format_rate(l.rate), l.burst / 8),
    };
    format!("ingress {}, egress {}", one(limits.ingress), one(limits.egress))
}

/// DEL unpins the attachment's links (detaching them) and succeeds whether
/// or not anything was there; the pod cgroup may already be gone. It looks
/// in every pin root this node used (pin_roots), so a changed `pinRoot`
/// cannot strand a pod.
fn cmd_del(req: &Request) -> Result<(), CniError> {
    if let Err(e) = crate::plugin::unshaped::remove(&req.attachment()) {
        log::warn!("container {}: cannot remove its record of an unshaped start: {e:#}", req.env.container_id);
    }
    let removed = del_everywhere(req).map_err(|e| datapath_error("cannot remove the pod's attachment", e))?;
    log::info!(
        "container {} ({}): {}",
        req.env.container_id,
        req.env.ifname,
        if removed { "detached" } else { "nothing attached" }
    );
    Ok(())
}

/// Removes this request's attachment from every known pin root; whether one existed.
fn del_everywhere(req: &Request) -> anyhow::Result<bool> {
    let mut removed = false;
    for path in crate::node::pin_roots::known(&req.conf.pin_root) {
        let Some(root) = PinRoot::existing(&path)? else { continue };
        // The raw-frame guard lives on the pod's interface, not among the
        // pins; when the netns is already gone, so is the guard.
        let netns = Some(std::path::Path::new(&req.env.netns)).filter(|p| !p.as_os_str().is_empty());
        removed |= root.remove_pod(&req.attachment(), netns)?;
        // The pod is detached; a shared datapath that cannot be unpinned now
        // is retried by the next DEL or GC and must not block this teardown.
        if let Err(e) = root.remove_datapath_if_unused() {
            log::warn!("cannot unpin an unused datapath under {}: {e:#}", path.display());
        }
    }
    Ok(removed)
}

/// What CHECK found for the attachment: its links, the stored state, and the
/// pod cgroup's ID (0 when no limit was requested, so no cgroup was looked up).
pub struct Found {
    pub links: Vec<(&'static str, CgroupLinkInfo)>,
    pub state: Option<IfaceState>,
    pub cgroup_id: u64,
    /// The pod runs this build's datapath, not another release's.
    pub this_release: bool,
    /// What ADD recorded it set up (None for pods of layouts 1 and 2).
    pub record: Option<crate::datapath::attachment::AttachmentRecord>,
    /// What the config's `limitBasis` asks limits to count.
    pub basis: crate::policy::operator::LimitBasis,
    /// The ingress queue's door, where the record names one and it is there.
    pub door: Option<crate::datapath::state::QueueGate>,
}

/// CHECK's verdict, without I/O: what was requested against what was found.
pub fn check_verdict(requested: &Limits, found: Option<&Found>) -> Result<(), String> {
    match (requested.is_empty(), found) {
        (true, None) => Ok(()),
        (true, Some(_)) => Err("the pod has no bandwidth limit but a shaper is attached".into()),
        (false, None) => Err("no shaper is attached for this container".into()),
        (false, Some(f)) => {
            // A pod of another release has the links that release attached.
            let required: &[&str] = if f.this_release { &LINK_PINS } else { &attach::LINKS_OF_EVERY_RELEASE };
            if let Some(name) = required.iter().find(|name| !f.links.iter().any(|(n, _)| n == *name)) {
                return Err(format!("the {name} link is missing"));
            }
            let raw_guarded = f.record.as_ref().is_some_and(|r| r.raw_guarded);
            if f.this_release && raw_guarded && !f.links.iter().any(|(n, _)| *n == RAW_GUARD_PINS[0]) {
                return Err("the link refusing PACKET_QDISC_BYPASS and AF_XDP is missing".into());
            }
            if let Some((name, info)) = f.links.iter().find(|(_, i)| i.cgroup_id != f.cgroup_id) {
                return Err(format!(
                    "the {name} link is attached to cgroup id {} instead of the pod cgroup ({})",
                    info.cgroup_id, f.cgroup_id
                ));
            }
            match f.state {
                None => Err("the pod's limits are missing from its cgroup storage".into()),
                Some(s) if !s.enforces(requested, f.basis) => Err(format!(
                    "the pod's limits differ: requested {}, attached ingress {:?} egress {:?} (bits/s, bits)",
                    describe(requested),
                    s.ingress.limit(),
                    s.egress.limit()
                )),
                Some(_) => Ok(()),
            }
        }
    }
}

fn cmd_check(req: &Request) -> Result<(), CniError> {
    if req.conf.prev_result.is_none() {
        return Err(CniError::config("CHECK needs prevResult"));
    }
    let limits = resolve::resolve(&req.conf.pod_request(req.namespace()))?;
    let cgroup_id = if limits.is_empty() {
        0
    } else {
        let dir = pod_cgroup(req)?;
        cgroup::cgroup_id(&dir).map_err(|e| CniError::new(code::CGROUP, "cannot stat the pod cgroup", e.to_string()))?
    };
    let mut found = None;
    let mut pod_dir = None;
    // What `bpf-ratelimit set` changed for this sandbox, which the pod's
    // state holds instead of the config's request.
    let mut limits = limits;
    for path in crate::node::pin_roots::known(&req.conf.pin_root) {
        let Some(root) = PinRoot::existing(&path).map_err(|e| datapath_error("cannot open the pin root", e))? else { continue };
        if let Some(a) =
            attach::inspect_pod(&root, &req.attachment()).map_err(|e| datapath_error("cannot read the pod's attachment", e))?
        {
            if let Ok(meta) = crate::node::pod_meta::read(&root.pod_dir(&req.attachment())) {
                limits = meta.set.over(&limits);
            }
            found = Some(Found {
                links: a.links,
                state: a.state,
                cgroup_id,
                this_release: a.this_release,
                record: a.record,
                basis: req.conf.limit_basis,
                door: attach::door_from_pins(&root.pod_dir(&req.attachment())),
            });
            pod_dir = Some(root.pod_dir(&req.attachment()));
            break;
        }
    }
    check_verdict(&limits, found.as_ref()).map_err(|msg| {
        let msg = if found.is_none() && !limits.is_empty() { format!("no shaper is attached for container {}", req.env.container_id) } else { msg };
        CniError::new(code::CHECK_FAILED, msg, "")
    })?;
    // What lives outside the pins: the raw-frame filter on the pod's
    // interface, and the queue and the egress guard on its host side.
    let failed = |msg: String| CniError::new(code::CHECK_FAILED, msg, "");
    let wanted_basis = req.conf.limit_basis;
    if let Some(record) = found.as_ref().filter(|f| f.this_release).and_then(|f| f.record.as_ref()) {
        if record.basis != wanted_basis {
            return Err(failed(format!("the pod's limits count {:?}, the config asks for {wanted_basis:?}", record.basis)));
        }
        if record.raw_guarded {
            crate::datapath::raw_guard::verify(std::path::Path::new(&req.env.netns), &req.env.ifname).map_err(|e| failed(format!("{e:#}")))?;
        }
        if record.egress_guarded {
            crate::datapath::host_guard::verify(record.host_ifindex).map_err(|e| failed(format!("egress is guarded on the host side, but {e:#}")))?;
        }
        let netns = std::path::Path::new(&req.env.netns);
        if record.pod_guard != 0 {
            crate::node::netns::in_netns(netns, || crate::datapath::host_guard::verify_pod_side(record.ifindex))
                .map_err(|e| failed(format!("egress is guarded on the pod's interface, but {e:#}")))?;
        }
        let queue = if record.ingress_queued_in_pod {
            Some(crate::datapath::ingress_queue::QueueAt::Pod { netns: netns.to_path_buf(), pod_ifindex: record.ifindex, child: record.ingress_queue_child })
        } else if record.ingress_queued {
            Some(crate::datapath::ingress_queue::QueueAt::HostSide(record.host_ifindex))
        } else {
            None
        };
        if record.ingress_queue_door != 0 && found.as_ref().is_some_and(|f| f.door.is_none()) {
            return Err(failed("ingress is queued, but the queue's door is missing from the datapath's ingress_queues map".into()));
        }
        if let (Some(queue), Some(ingress)) = (queue, limits.ingress) {
            let spec = crate::datapath::ingress_queue::QueueSpec::for_limit(ingress, record.basis);
            queue.verify(spec).map_err(|e| failed(format!("ingress is queued, but {e:#}")))?;
        }
        // Last, as the one failure that leaves the limits holding: CHECK
        // says what an eBPF main CNI taking the host side leaves open.
        if let Some(dir) = &pod_dir {
            if let (Some(h), Some(p)) = (attach::guard_from_pins(dir), attach::pod_side_guard_from_pins(dir)) {
                if attach::host_side_skipped(&h, &p) {
                    let msg = format!("the pod's host side is skipped: {}", crate::ops::admin::HOST_SIDE_SKIPPED_CAUSE);
                    log::warn!("CHECK {} ({}): {msg}", req.env.container_id, req.env.ifname);
                    return Err(failed(msg));
                }
            }
        }
    }
    Ok(())
}

/// GC unpins every attachment that the runtime does not list as valid. A
/// removal that fails does not stop it: it goes on with the rest, in every
/// pin root, and then reports every failure (CNI 1.1: GC removes what it can).
fn cmd_gc(req: &Request) -> Result<(), CniError> {
    let Some(valid) = &req.conf.valid_attachments else {
        return Err(CniError::config("GC needs cni.dev/valid-attachments"));
    };
    let mut failures = crate::plugin::unshaped::remove_stale(&req.conf.name, valid);
    for path in crate::node::pin_roots::known(&req.conf.pin_root) {
        let root = match PinRoot::existing(&path) {
            Ok(Some(root)) => root,
            Ok(None) => continue,
            Err(e) => {
                failures.push(format!("cannot open pin root {}: {e:#}", path.display()));
                continue;
            }
        };
        let attachments = match root.attachments() {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("cannot list the attachments under {}: {e:#}", path.display()));
                continue;
            }
        };
        // valid-attachments speaks for this network only.
        for a in attachments.iter().filter(|a| a.network == req.conf.name) {
            if valid.contains(&(a.container_id.clone(), a.ifname.clone())) {
                continue;
            }
            match root.remove_pod(a, None) {
                Ok(_) => log::info!("GC: removed stale attachment {} ({}) under {}", a.container_id, a.ifname, path.display()),
                Err(e) => {
                    log::error!("GC: cannot remove stale attachment {} ({}) under {}: {e:#}", a.container_id, a.ifname, path.display());
                    failures.push(format!("container {} ({}) under {}: {e:#}", a.container_id, a.ifname, path.display()));
                }
            }
        }
        if let Err(e) = root.remove_datapath_if_unused() {
            failures.push(format!("cannot unpin the unused datapath under {}: {e:#}", path.display()));
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        code::DATAPATH,
        format!("GC removed what it could, but {} removal(s) failed", failures.len()),
        failures.join("; "),
    ))
}

/// STATUS: cgroup2, bpffs and loading the datapath all work. It mounts and
/// pins nothing.
fn cmd_status(req: &Request) -> Result<(), CniError> {
    let unavailable = |msg: &str, details: String| CniError::new(code::NOT_AVAILABLE, msg, details);
    cgroup::cgroup2_root(req.conf.cgroup_root.as_deref()).map_err(|e| unavailable("cgroup v2 is not usable", e.to_string()))?;
    crate::node::pins::bpffs_usable(&req.conf.pin_root)
        .map_err(|e| unavailable("the bpf filesystem is not usable", format!("{e:#}")))?;
    // A pinned datapath was verified when it was loaded, and a load that
    // passed once passes again on the same kernel and boot: runtimes poll
    // STATUS, so only the first call per kernel and datapath pays for a
    // verifier run (status_cache).
    if !attach::datapath_pinned(&req.conf.pin_root) && !crate::plugin::status_cache::verified() {
        attach::load().map_err(|e| unavailable("the kernel cannot load the eBPF datapath", format!("{e:#}")))?;
        crate::plugin::status_cache::record_verified();
    }
    Ok(())
}

/// Every attachment's limits and counters (bytes and packets passed, dropped
/// and ECN-marked per direction), as JSON for people and the benchmark:
/// under `pin_root`, or else under every pin root this node used.
pub fn stats(pin_root: Option<&std::path::Path>) -> anyhow::Result<String> {
    let roots = match pin_root {
        Some(p) => vec![p.to_path_buf()],
        None => crate::node::pin_roots::known(std::path::Path::new(crate::policy::netconf::DEFAULT_PIN_ROOT)),
    };
    let mut pods = Vec::new();
    for path in roots {
        let Some(root) = PinRoot::existing(&path)? else { continue };
        for a in root.attachments()? {
            let dir = root.pod_dir(&a);
            let entry = match attach::pod_state_from_pins(&dir) {
                Ok((cgroup_id, state)) => serde_json::json!({
                    "network": a.network, "containerID": a.container_id, "ifname": a.ifname,
                    "pinRoot": path, "cgroupId": cgroup_id, "ingressMode": ingress_mode(&dir, &state), "state": state,
                    "egressGuard": attach::guard_from_pins(&dir),
                    "podSideEgressGuard": attach::pod_side_guard_from_pins(&dir),
                    "ingressQueueDoor": attach::door_from_pins(&dir),
                    "ingressQueueChild": attach::queue_child_from_pins(&dir),
                    "hostSideSkipped": match (attach::guard_from_pins(&dir), attach::pod_side_guard_from_pins(&dir)) {
                        (Some(h), Some(p)) => serde_json::Value::Bool(attach::host_side_skipped(&h, &p)),
                        _ => serde_json::Value::Null,
                    },
                }),
                Err(e) => serde_json::json!({
                    "network": a.network, "containerID": a.container_id, "ifname": a.ifname,
                    "pinRoot": path, "error": format!("{e:#}"),
                }),
            };
            pods.push(entry);
        }
    }
    Ok(serde_json::to_string_pretty(&serde_json::json!({ "pods": pods }))?)
}

/// How a pod's ingress limit is enforced, as `stats` names it.
fn ingress_mode(dir: &std::path::Path, state: &IfaceState) -> String {
    if state.ingress.rate == 0 {
        return "none".into();
    }
    match attach::ingress_queue_of(dir, state) {
        Some(queue) if state.flags & crate::datapath::state::IFACE_INGRESS_LOW_CPU != 0 => {
            format!("{}, 8 ms deep at every rate (ingressTradeoff: cpu)", queue.describe())
        }
        Some(queue) => queue.describe(),
        None => "policer".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::limits::Limit;

    fn limits(rate: u64) -> Limits {
        Limits { ingress: Some(Limit { rate, burst: rate / 4 }), egress: Some(Limit { rate, burst: rate / 20 }) }
    }

    fn found(requested: &Limits, cgroup_id: u64) -> Found {
        let link = CgroupLinkInfo { cgroup_id, ..Default::default() };
        Found {
            links: LINK_PINS.iter().map(|n| (*n, link)).collect(),
            state: Some(IfaceState::new(requested, crate::policy::operator::LimitBasis::Frames)),
            cgroup_id,
            this_release: true,
            record: None,
            basis: crate::policy::operator::LimitBasis::Frames,
            door: None,
        }
    }

    #[test]
    fn check_passes_when_links_and_limits_are_as_requested() {
        let l = limits(20_000_000);
        assert_eq!(check_verdict(&l, Some(&found(&l, 7))), Ok(()));
        assert_eq!(check_verdict(&Limits::default(), None), Ok(()));
    }

    #[test]
    fn check_names_what_differs() {
        let l = limits(20_000_000);
        let err = |f: Option<&Found>, want: &Limits| check_verdict(want, f).unwrap_err();
        assert!(err(None, &l).contains("no shaper"));
        assert!(err(Some(&found(&l, 7)), &Limits::default()).contains("no bandwidth limit but a shaper"));
        assert!(err(Some(&found(&l, 7)), &limits(30_000_000)).contains("limits differ"));
        let mut f = found(&l, 7);
        f.links.retain(|(n, _)| *n != "sockops");
        assert!(err(Some(&f), &l).contains("sockops link is missing"));
        let mut f = found(&l, 7);
        f.links[1].1.cgroup_id = 8;
        assert!(err(Some(&f), &l).contains("attached to cgroup id 8"));
        // Another release's pod needs only the links every release attaches.
        let mut f = found(&l, 7);
        f.links.retain(|(n, _)| attach::LINKS_OF_EVERY_RELEASE.contains(n));
        f.this_release = false;
        assert_eq!(check_verdict(&l, Some(&f)), Ok(()));
        f.links.retain(|(n, _)| *n != "ingress");
        assert!(err(Some(&f), &l).contains("ingress link is missing"));
        let mut f = found(&l, 7);
        f.state = None;
        assert!(err(Some(&f), &l).contains("missing from its cgroup storage"));
    }
}
