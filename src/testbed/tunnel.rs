//! A tunnel the pod makes to the server (it needs CAP_NET_ADMIN in its
//! netns): its traffic leaves by a device the pod's cgroup hooks do not
//! shape, in outer frames that cross the delay line, where the wire counts
//! them per segment. Removed on drop.

use anyhow::{Context, Result};

use super::{ip, Testbed, POD_IP, SERVER_IP};

/// The tunnel's addresses inside it.
pub const POD_END: &str = "10.254.0.2";
pub const SERVER_END: &str = "10.254.0.1";
const DEVICE: &str = "brltun";

pub struct PodTunnel {
    namespaces: [String; 2],
}

impl PodTunnel {
    /// A VXLAN tunnel (VNI 42, UDP 4789) from the pod to the server.
    pub fn vxlan(bed: &Testbed) -> Result<PodTunnel> {
        let tunnel = PodTunnel { namespaces: [bed.pod_ns.clone(), bed.server_ns.clone()] };
        for (ns, local, remote, addr) in [(&bed.pod_ns, POD_IP, SERVER_IP, POD_END), (&bed.server_ns, SERVER_IP, POD_IP, SERVER_END)] {
            ip(&["-n", ns, "link", "add", DEVICE, "type", "vxlan", "id", "42", "dstport", "4789", "local", local, "remote", remote])
                .with_context(|| format!("cannot make a vxlan device in {ns}"))?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", DEVICE])?;
            ip(&["-n", ns, "link", "set", DEVICE, "up"])?;
        }
        Ok(tunnel)
    }
}

impl Drop for PodTunnel {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ip(&["-n", ns, "link", "del", DEVICE]);
        }
    }
}
