//! Pods that `failurePolicy: "open"` let start unshaped: ADD could not set
//! the datapath up (no bpffs, a verifier that refused the programs, the pin
//! root's lock held too long, no pod cgroup), so it passed prevResult on and
//! wrote down why here. `list` and `metrics` show these pods, DEL and GC
//! remove their records, and a later ADD that shapes the pod removes it.
//!
//! On tmpfs under /run rather than in the pin root: the pin root's bpffs
//! (or its lock) may be the very thing that failed.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::node::pins::AttachmentId;
use crate::node::pod_meta::PodMeta;

pub const DIR: &str = "/run/bpf-ratelimit/unshaped";

/// One pod left unshaped, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Unshaped {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub reason: String,
    /// Seconds since the epoch when ADD gave up.
    pub since: u64,
}

/// DIR/network/container/ifname.json: every part was checked against the
/// CNI alphabet (no '/', never "." or "..") before it got here.
fn path_of(id: &AttachmentId) -> PathBuf {
    Path::new(DIR).join(&id.network).join(&id.container_id).join(format!("{}.json", id.ifname))
}

/// Records that `id` started unshaped because of `reason`.
pub fn record(id: &AttachmentId, meta: &PodMeta, reason: &str) -> Result<()> {
    let path = path_of(id);
    let dir = path.parent().expect("a record has a directory");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let entry = Unshaped {
        network: id.network.clone(),
        container_id: id.container_id.clone(),
        ifname: id.ifname.clone(),
        namespace: meta.namespace.clone(),
        pod: meta.name.clone(),
        uid: meta.uid.clone(),
        reason: reason.chars().take(1000).collect(),
        since,
    };
    // Written whole, then renamed into place: a reader never sees half.
    let tmp = path.with_extension(format!("json.{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec(&entry)?)?;
    fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// Forgets `id`; nothing to forget is fine.
pub fn remove(id: &AttachmentId) -> Result<()> {
    let path = path_of(id);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    // Empty parents go too (a non-empty one stays: remove_dir refuses it).
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| *d != Path::new(DIR)) {
        if fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Every pod recorded as unshaped.
pub fn all() -> Vec<Unshaped> {
    let mut out = Vec::new();
    let Ok(networks) = fs::read_dir(DIR) else { return out };
    for net in networks.flatten() {
        let Ok(containers) = fs::read_dir(net.path()) else { continue };
        for c in containers.flatten() {
            let Ok(files) = fs::read_dir(c.path()) else { continue };
            for f in files.flatten().filter(|f| f.path().extension().is_some_and(|e| e == "json")) {
                if let Some(entry) = fs::read(f.path()).ok().and_then(|b| serde_json::from_slice::<Unshaped>(&b).ok()) {
                    out.push(entry);
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.pod, &a.container_id).cmp(&(&b.namespace, &b.pod, &b.container_id)));
    out
}

/// GC: forgets every record of `network` whose (container, ifname) is not valid.
pub fn remove_stale(network: &str, valid: &BTreeSet<(String, String)>) -> Vec<String> {
    let mut failures = Vec::new();
    for u in all().into_iter().filter(|u| u.network == network) {
        if valid.contains(&(u.container_id.clone(), u.ifname.clone())) {
            continue;
        }
        let id = AttachmentId { network: u.network, container_id: u.container_id, ifname: u.ifname };
        if let Err(e) = remove(&id) {
            failures.push(format!("{e:#}"));
        }
    }
    failures
}
