//! What one attachment put where, recorded by ADD beside its links so that
//! DEL, CHECK, GC and the commands for people find it again without the
//! pod's netns (which may be gone by DEL): the key of its interface state,
//! and what it set up outside the pins (the host-side guard and queue, the
//! raw-frame filter). Kept as JSON in a one-entry array map pinned as
//! `iface`, as pod_meta keeps the pod's identity.
//!
//! Pods attached before state per interface (layouts 1 and 2) have no
//! record; the datapath reads those the old way.

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::node::bpf_sys;
use crate::datapath::state::IfaceKey;
use crate::policy::operator::LimitBasis;

pub const RECORD_PIN: &str = "iface";
/// Room for the fields and a netns path of up to 4096 bytes.
const RECORD_BYTES: usize = 4608;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    /// The pod cgroup the links are attached to.
    pub cgroup_id: u64,
    /// The pod's interface (CNI_IFNAME), in its netns.
    pub ifindex: u32,
    /// Its host-side peer in the node's netns, where there is one (0: none).
    pub host_ifindex: u32,
    /// Ingress is queued on the host-side peer (a TBF root qdisc): pods of
    /// releases before the queue moved into the pod's netns.
    pub ingress_queued: bool,
    /// Ingress is queued in the pod's netns: an ifb named after `ifindex`
    /// and a filter on the interface's ingress (datapath::ingress_queue).
    #[serde(default)]
    pub ingress_queued_in_pod: bool,
    /// Its door's key in `ingress_queues` (its filter's classid); 0: none.
    #[serde(default)]
    pub ingress_queue_door: u32,
    /// What the queue's TBF hands frames to (earlier releases: pfifo_fast).
    #[serde(default)]
    pub ingress_queue_child: crate::datapath::ingress_queue::QueueChild,
    /// The pod-side egress guard's key in `host_guards` (POD_SIDE_GUARD |
    /// its filter's classid), whose filter is on the interface's egress; 0:
    /// none.
    #[serde(default)]
    pub pod_guard: u32,
    /// Egress is guarded on the host-side peer (a tc ingress filter and a
    /// `host_guards` entry).
    pub egress_guarded: bool,
    /// The pod's AF_PACKET frames are refused on its interface (a tc egress
    /// filter in its netns and a `raw_guarded` entry): no host side to guard.
    pub raw_guarded: bool,
    /// CNI_NETNS at ADD: where the raw-frame filter is, for a GC or a
    /// replacing ADD that has no netns of its own for this attachment.
    pub netns: String,
    pub basis: LimitBasis,
}

impl AttachmentRecord {
    pub fn key(&self) -> IfaceKey {
        IfaceKey { cgroup_id: self.cgroup_id, ifindex: self.ifindex, pad: 0 }
    }
}

pub fn pin(pod_dir: &Path, record: &AttachmentRecord) -> Result<()> {
    let mut bytes = serde_json::to_vec(record)?;
    anyhow::ensure!(bytes.len() < RECORD_BYTES, "the attachment record does not fit");
    bytes.resize(RECORD_BYTES, 0);
    let map = bpf_sys::record_create("brl_attachment", &bytes).context("cannot create the attachment record")?;
    bpf_sys::obj_pin(map.as_fd(), &pod_dir.join(RECORD_PIN)).context("cannot pin the attachment record")
}

/// The attachment's record; None for pods attached before records existed.
pub fn read(pod_dir: &Path) -> Result<Option<AttachmentRecord>> {
    let Ok(map) = bpf_sys::obj_get(&pod_dir.join(RECORD_PIN)) else { return Ok(None) };
    let bytes = bpf_sys::record_read(map.as_fd()).context("cannot read the attachment record")?;
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    serde_json::from_slice(&bytes[..end]).map(Some).context("the attachment record is not valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_through_json_within_its_size() {
        let r = AttachmentRecord {
            cgroup_id: u64::MAX,
            ifindex: u32::MAX,
            host_ifindex: u32::MAX,
            ingress_queued: true,
            ingress_queued_in_pod: true,
            ingress_queue_door: 0xffff,
            ingress_queue_child: crate::datapath::ingress_queue::QueueChild::FlowFair,
            pod_guard: u32::MAX,
            egress_guarded: true,
            raw_guarded: true,
            netns: "/var/run/netns/cni-0123456789abcdef0123456789abcdef01234567".into(),
            basis: LimitBasis::TcpGoodput,
        };
        let json = serde_json::to_vec(&r).unwrap();
        assert!(json.len() < RECORD_BYTES);
        assert_eq!(serde_json::from_slice::<AttachmentRecord>(&json).unwrap(), r);
        assert_eq!(r.key(), IfaceKey { cgroup_id: u64::MAX, ifindex: u32::MAX, pad: 0 });
    }

    #[test]
    fn a_record_of_an_earlier_release_reads_with_no_pod_side_queue_or_guard() {
        let old = r#"{"cgroupId":7,"ifindex":2,"hostIfindex":9,"ingressQueued":true,"egressGuarded":true,"rawGuarded":false,"netns":"/x","basis":"frames"}"#;
        let r: AttachmentRecord = serde_json::from_str(old).unwrap();
        assert!(r.ingress_queued && !r.ingress_queued_in_pod);
        assert_eq!(r.pod_guard, 0);
        assert_eq!(r.ingress_queue_child, crate::datapath::ingress_queue::QueueChild::Bands);
    }
}
