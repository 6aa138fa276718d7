//! What ADD records beside a pod's state for the commands people run
//! (`list`, `set`, `metrics`): its Kubernetes identity from CNI_ARGS and the
//! operator's ceilings that applied to it, which `set` enforces too; and
//! what `set` changed, which CHECK then expects instead of the config's
//! request. Kept as JSON in a one-entry array map pinned as `meta` in the
//! pod's pin directory, so DEL removes it with the rest.

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::node::bpf_sys;
use crate::policy::limits::{Ceilings, Direction, Limit, Limits};

pub const META_PIN: &str = "meta";
/// The record's size; the fields are capped well below it.
const RECORD_BYTES: usize = 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ceilings: Ceilings,
    /// The limits `bpf-ratelimit set` gave each direction (bits/s, bits),
    /// for the sandbox's life.
    #[serde(default, skip_serializing_if = "SetLimits::is_empty")]
    pub set: SetLimits,
    /// What ADD could not give as asked (a rate clamped to what the
    /// datapath enforces), for `list`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The config's `logFile` at ADD, where `set` appends its audit line:
    /// the commands people run have no conflist to read it from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
}

/// One direction's limit as `set` recorded it: rate in bits/s, burst in bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLimit {
    pub rate: u64,
    pub burst: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<SetLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<SetLimit>,
}

impl SetLimits {
    pub fn is_empty(&self) -> bool {
        self.ingress.is_none() && self.egress.is_none()
    }

    pub fn record(&mut self, dir: Direction, limit: Limit) {
        let slot = match dir {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        };
        *slot = Some(SetLimit { rate: limit.rate, burst: limit.burst });
    }

    /// `requested` with the directions `set` changed replaced by what it set:
    /// what the pod's state should hold.
    pub fn over(&self, requested: &Limits) -> Limits {
        let pick = |set: Option<SetLimit>, asked: Option<Limit>| set.map(|s| Limit { rate: s.rate, burst: s.burst }).or(asked);
        Limits { ingress: pick(self.ingress, requested.ingress), egress: pick(self.egress, requested.egress) }
    }
}

impl PodMeta {
    /// From CNI_ARGS, which the runtime fills from the pod: capped to
    /// Kubernetes' own lengths, so that a hostile value cannot overflow the record.
    pub fn from_args(args: &std::collections::BTreeMap<String, String>, ceilings: Ceilings) -> Self {
        let arg = |k: &str, max: usize| -> String { args.get(k).map(|v| v.chars().take(max).collect()).unwrap_or_default() };
        PodMeta {
            namespace: arg("K8S_POD_NAMESPACE", 63),
            name: arg("K8S_POD_NAME", 253),
            uid: arg("K8S_POD_UID", 36),
            ceilings,
            set: SetLimits::default(),
            notes: Vec::new(),
            log_file: None,
        }
    }

    /// `namespace/name`, or the container's pin name when the runtime gave no identity.
    pub fn display_name(&self, fallback: &str) -> String {
        if self.name.is_empty() {
            fallback.to_string()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

fn encode(meta: &PodMeta) -> Result<Vec<u8>> {
    let mut record = serde_json::to_vec(meta)?;
    if record.len() >= RECORD_BYTES && meta.log_file.is_some() {
        // A long log path must not fail ADD: `set` then audits to stderr only.
        log::warn!("logFile is too long to record with the pod; `set` will not append its audit line to it");
        record = serde_json::to_vec(&PodMeta { log_file: None, ..meta.clone() })?;
    }
    anyhow::ensure!(record.len() < RECORD_BYTES, "the pod's identity does not fit its record");
    record.resize(RECORD_BYTES, 0);
    Ok(record)
}

pub fn pin(pod_dir: &Path, meta: &PodMeta) -> Result<()> {
    let record = encode(meta)?;
    let map = bpf_sys::record_create("brl_pod_meta", &record).context("cannot create the pod's meta record")?;
    bpf_sys::obj_pin(map.as_fd(), &pod_dir.join(META_PIN)).context("cannot pin the pod's meta record")
}

/// Rewrites the pod's record in place (`set`); pins it anew for a pod
/// attached before records existed.
pub fn update(pod_dir: &Path, meta: &PodMeta) -> Result<()> {
    match bpf_sys::obj_get(&pod_dir.join(META_PIN)) {
        Ok(map) => bpf_sys::record_write(map.as_fd(), &encode(meta)?).context("cannot rewrite the pod's meta record"),
        Err(_) => pin(pod_dir, meta),
    }
}

/// The pod's record; a default one for pods attached before records existed.
pub fn read(pod_dir: &Path) -> Result<PodMeta> {
    let Ok(map) = bpf_sys::obj_get(&pod_dir.join(META_PIN)) else { return Ok(PodMeta::default()) };
    let bytes = bpf_sys::record_read(map.as_fd()).context("cannot read the pod's meta record")?;
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    serde_json::from_slice(&bytes[..end]).context("the pod's meta record is not valid")
}
