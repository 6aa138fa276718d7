//! ADD, DEL, CHECK, GC and STATUS: each reads a Request and returns the
//! stdout reply or a CniError.

use std::path::PathBuf;

use serde_json::Value;

use crate::cgroup;
use crate::cni::{code, Command, CniError, Env};
use crate::datapath::{self, AttachmentId, PinRoot, PodNetwork, LINK_PINS, RAW_GUARD_PINS};
use crate::limits::{self, Limits};
use crate::netconf::NetConf;

/// Everything one invocation was given.
pub struct Request {
    pub command: Command,
    pub env: Env,
    pub conf: NetConf,
}

pub fn run(req: &Request) -> Result<String, CniError> {
    crate::cni::require_version_for(req.command, &req.conf.cni_version)?;
    match req.command {
        Command::Add => cmd_add(req),
        Command::Del => cmd_del(req).map(|_| String::new()),
        Command::Check => cmd_check(req).map(|_| String::new()),
        Command::Gc => cmd_gc(req).map(|_| String::new()),
        Command::Status => cmd_status(req).map(|_| String::new()),
        Command::Version => unreachable!("VERSION is answered before a Request is built"),
    }
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

fn datapath_error(msg: &str, e: anyhow::Error) -> CniError {
    CniError::from_anyhow(code::DATAPATH, msg, &e)
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
    let limits = limits::resolve(&req.conf, req.namespace())?;
    if limits.is_empty() {
        log::info!("container {}: no bandwidth limit requested, nothing attached", req.env.container_id);
        return Ok(reply);
    }
    let cgroup_dir = pod_cgroup(req)?;
    let root = PinRoot::create(&req.conf.pin_root).map_err(|e| datapath_error("cannot use the bpf filesystem", e))?;
    let network = PodNetwork {
        netns: std::path::Path::new(&req.env.netns),
        ifname: &req.env.ifname,
        allow_raw_sockets: req.conf.allow_raw_sockets,
        host_interface: if req.conf.ingress_queue {
            crate::ingress_queue::host_interface(req.conf.prev_result.as_ref())
        } else {
            None
        },
    };
    let mode = datapath::attach_pod(&root, &req.attachment(), &cgroup_dir, &network, &limits)
        .map_err(|e| datapath_error("cannot attach the bandwidth shaper to the pod", e))?;
    let meta = crate::pod_meta::PodMeta::from_args(&req.env.args, limits::ceilings(&req.conf, req.namespace())?);
    if let Err(e) = crate::pod_meta::pin(&root.pod_dir(&req.attachment()), &meta) {
        let _ = root.remove_pod(&req.attachment());
        let _ = root.remove_datapath_if_unused();
        return Err(datapath_error("cannot record the pod's identity", e));
    }
    log::info!(
        "container {} ({}): shaping {} with {}; {mode}",
        req.env.container_id,
        req.env.ifname,
        cgroup_dir.display(),
        describe(&limits)
    );
    Ok(reply)
}

pub fn describe(limits: &Limits) -> String {
    let one = |l: Option<limits::Limit>| match l {
        None => "unlimited".to_string(),
        Some(l) => format!("{}bit/s burst {} bytes", crate::quantity::format_rate(l.rate), l.burst / 8),
    };
    format!("ingress {}, egress {}", one(limits.ingress), one(limits.egress))
}

/// DEL unpins the attachment's links (detaching them) and succeeds whether
/// or not anything was there; the pod cgroup may already be gone.
fn cmd_del(req: &Request) -> Result<(), CniError> {
    let Some(root) = PinRoot::existing(&req.conf.pin_root).map_err(|e| datapath_error("cannot open the pin root", e))?
    else {
        return Ok(());
    };
    let removed = root
        .remove_pod(&req.attachment())
        .map_err(|e| datapath_error("cannot remove the pod's attachment", e))?;
    // The raw-frame guard lives on the pod's interface, not among the pins;
    // when the netns is already gone, so is the guard.
    if removed && !req.env.netns.is_empty() {
        crate::raw_guard::detach(std::path::Path::new(&req.env.netns), &req.env.ifname);
    }
    // The pod is detached; a shared datapath that cannot be unpinned now is
    // retried by the next DEL or GC and must not block this pod's teardown.
    if let Err(e) = root.remove_datapath_if_unused() {
        log::warn!("cannot unpin the unused datapath: {e:#}");
    }
    log::info!(
        "container {} ({}): {}",
        req.env.container_id,
        req.env.ifname,
        if removed { "detached" } else { "nothing attached" }
    );
    Ok(())
}

fn cmd_check(req: &Request) -> Result<(), CniError> {
    if req.conf.prev_result.is_none() {
        return Err(CniError::config("CHECK needs prevResult"));
    }
    let limits = limits::resolve(&req.conf, req.namespace())?;
    let failed = |msg: String| CniError::new(code::CHECK_FAILED, msg, "");
    let root = PinRoot::existing(&req.conf.pin_root).map_err(|e| datapath_error("cannot open the pin root", e))?;
    let attachment = match &root {
        None => None,
        Some(root) => {
            let cgroup_dir = if limits.is_empty() { None } else { Some(pod_cgroup(req)?) };
            let cgroup_id = cgroup_dir.as_deref().map(cgroup::cgroup_id).transpose().map_err(|e| {
                CniError::new(code::CGROUP, "cannot stat the pod cgroup", e.to_string())
            })?;
            datapath::inspect_pod(root, &req.attachment(), cgroup_id.unwrap_or(0))
                .map_err(|e| datapath_error("cannot read the pod's attachment", e))?
                .map(|a| (a, cgroup_id))
        }
    };
    match (limits.is_empty(), attachment) {
        (true, None) => Ok(()),
        (true, Some(_)) => Err(failed("the pod has no bandwidth limit but a shaper is attached".into())),
        (false, None) => Err(failed(format!("no shaper is attached for container {}", req.env.container_id))),
        (false, Some((a, cgroup_id))) => {
            let cgroup_id = cgroup_id.unwrap_or(0);
            for name in LINK_PINS {
                match a.links.iter().find(|(n, _)| *n == name) {
                    None => return Err(failed(format!("the {name} link is missing"))),
                    Some((_, info)) if info.cgroup_id != cgroup_id => {
                        return Err(failed(format!(
                            "the {name} link is attached to cgroup id {} instead of the pod cgroup ({cgroup_id})",
                            info.cgroup_id
                        )))
                    }
                    Some(_) => {}
                }
            }
            let guard = |name: &str| a.links.iter().find(|(n, _)| *n == name).map(|(_, info)| info);
            if !req.conf.allow_raw_sockets {
                match guard(RAW_GUARD_PINS[0]) {
                    Some(info) if info.cgroup_id == cgroup_id => {}
                    _ => return Err(failed("the link refusing PACKET_QDISC_BYPASS is missing or elsewhere".into())),
                }
                crate::raw_guard::verify(std::path::Path::new(&req.env.netns), &req.env.ifname)
                    .map_err(|e| failed(format!("{e:#}")))?;
            }
            match a.state {
                None => Err(failed("the pod's limits are missing from its cgroup storage".into())),
                Some(s) if !s.enforces(&limits) => Err(failed(format!(
                    "the pod's limits differ: requested {}, attached ingress {:?} egress {:?} (bits/s, bits)",
                    describe(&limits),
                    s.ingress.limit(),
                    s.egress.limit()
                ))),
                Some(s) => match limits.ingress {
                    Some(ingress) if s.flags & crate::state::POD_INGRESS_QUEUED != 0 => {
                        crate::ingress_queue::verify(s.host_ifindex, ingress.rate)
                            .map_err(|e| failed(format!("ingress is queued, but {e:#}")))
                    }
                    _ => Ok(()),
                },
            }
        }
    }
}

/// GC unpins every attachment that the runtime does not list as valid.
fn cmd_gc(req: &Request) -> Result<(), CniError> {
    let Some(valid) = &req.conf.valid_attachments else {
        return Err(CniError::config("GC needs cni.dev/valid-attachments"));
    };
    let Some(root) = PinRoot::existing(&req.conf.pin_root).map_err(|e| datapath_error("cannot open the pin root", e))?
    else {
        return Ok(());
    };
    let attachments = root.attachments().map_err(|e| datapath_error("cannot list attachments", e))?;
    // valid-attachments speaks for this network only.
    for a in attachments.iter().filter(|a| a.network == req.conf.name) {
        if !valid.contains(&(a.container_id.clone(), a.ifname.clone())) {
            root.remove_pod(a).map_err(|e| datapath_error("cannot remove a stale attachment", e))?;
            log::info!("GC: removed stale attachment {} ({})", a.container_id, a.ifname);
        }
    }
    root.remove_datapath_if_unused().map_err(|e| datapath_error("cannot unpin the unused datapath", e))
}

/// STATUS: cgroup2, bpffs and loading the datapath all work. It mounts and
/// pins nothing.
fn cmd_status(req: &Request) -> Result<(), CniError> {
    let unavailable = |msg: &str, details: String| CniError::new(code::NOT_AVAILABLE, msg, details);
    cgroup::cgroup2_root(req.conf.cgroup_root.as_deref()).map_err(|e| unavailable("cgroup v2 is not usable", e.to_string()))?;
    datapath::bpffs_usable(&req.conf.pin_root)
        .map_err(|e| unavailable("the bpf filesystem is not usable", format!("{e:#}")))?;
    // A pinned datapath was verified when it was loaded; runtimes may call
    // STATUS often, so only an unloaded node pays for a verifier run.
    if !datapath::datapath_pinned(&req.conf.pin_root) {
        datapath::load().map_err(|e| unavailable("the kernel cannot load the eBPF datapath", format!("{e:#}")))?;
    }
    Ok(())
}

/// Every attachment's limits and counters (bytes and packets passed, dropped
/// and ECN-marked per direction), as JSON for people and the benchmark.
pub fn stats(pin_root: Option<&std::path::Path>) -> anyhow::Result<String> {
    let pin_root = pin_root.unwrap_or(std::path::Path::new(crate::netconf::DEFAULT_PIN_ROOT));
    let mut pods = Vec::new();
    if let Some(root) = PinRoot::existing(pin_root)? {
        for a in root.attachments()? {
            let dir = root.pod_dir(&a);
            let entry = match datapath::pod_state_from_pins(&dir) {
                Ok((cgroup_id, state)) => serde_json::json!({
                    "network": a.network, "containerID": a.container_id, "ifname": a.ifname,
                    "cgroupId": cgroup_id, "ingressMode": ingress_mode(&state), "state": state,
                }),
                Err(e) => serde_json::json!({
                    "network": a.network, "containerID": a.container_id, "ifname": a.ifname,
                    "error": format!("{e:#}"),
                }),
            };
            pods.push(entry);
        }
    }
    Ok(serde_json::to_string_pretty(&serde_json::json!({ "pods": pods }))?)
}

/// How a pod's ingress limit is enforced, as `stats` names it.
fn ingress_mode(state: &crate::state::PodState) -> String {
    if state.ingress.rate == 0 {
        "none".into()
    } else if state.flags & crate::state::POD_INGRESS_QUEUED != 0 {
        match crate::ingress_queue::ifname_of(state.host_ifindex) {
            Some(name) => format!("queue on {name}"),
            None => format!("queue on interface {} (gone)", state.host_ifindex),
        }
    } else {
        "policer".into()
    }
}
