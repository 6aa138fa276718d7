//! An eBPF main CNI, emulated on a testbed's node: what Cilium with BPF host
//! routing and Calico in eBPF mode do on each pod's host-side veth. The
//! harness's `ebpf_main_cni` program (ebpf/harness.bpf.c) runs first on the
//! tc ingress of the pod's and the gateway's host-side veths and hands every
//! IP frame for the other side straight to it with `bpf_redirect_peer`:
//! the bridge, the host veths' egress qdiscs and every later filter on
//! those hooks never see it. The gateway's netns is then both a same-node
//! peer pod and the way to the far server.
//!
//! Two forms, as the clusters run them: cls_bpf at pref 1 on a
//! clsact qdisc (any kernel), and a tcx link attached first (6.6+), which
//! runs before every clsact filter. Detached and unpinned on drop.

use std::path::PathBuf;

use anyhow::{Context, Result};
use aya::maps::HashMap;
use aya::programs::tc::{TcAttachOptions, TcAttachType};
use aya::programs::{LinkOrder, SchedClassifier};
use aya::{Ebpf, EbpfLoader};

use crate::datapath::tc::{self, Hook};

/// How the emulated CNI's program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// cls_bpf, direct action, at pref 1 of the clsact ingress hook.
    Tc,
    /// A tcx link at the front of the ingress hook (kernel 6.6 and later).
    Tcx,
}

/// The program at pref 1: before any filter a chained plugin adds.
const PREF: u16 = 1;

pub struct MainCni {
    ebpf: Ebpf,
    attach: Attach,
    ifnames: Vec<String>,
    pin: PathBuf,
}

/// One destination: frames for `addr` go to the peer of `ifname`.
pub struct Route<'a> {
    pub addr: std::net::IpAddr,
    pub ifname: &'a str,
}

impl MainCni {
    /// Loads the program and routes, and attaches it to the ingress of each
    /// of `ifnames` (host-side veths in the node's netns).
    pub fn attach(attach: Attach, ifnames: &[&str], routes: &[Route<'_>], tag: &str) -> Result<Self> {
        let mut ebpf = EbpfLoader::new().load(crate::datapath::attach::HARNESS_OBJ).context("cannot load the harness object")?;
        let pin = PathBuf::from(format!("/sys/fs/bpf/brl-cni-{tag}"));
        {
            let mut map: HashMap<_, [u32; 5], [u32; 2]> =
                HashMap::try_from(ebpf.map_mut("cni_routes").context("no cni_routes")?).context("cni_routes")?;
            for r in routes {
                let key = match r.addr {
                    std::net::IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0, 4],
                    std::net::IpAddr::V6(a) => {
                        let o = a.octets();
                        let w = |i: usize| u32::from_ne_bytes(o[i..i + 4].try_into().unwrap());
                        [w(0), w(4), w(8), w(12), 6]
                    }
                };
                let ifindex = crate::node::netns::ifindex(r.ifname)?;
                map.insert(key, [ifindex, 1], 0).context("cannot write a route")?;
            }
        }
        let prog: &mut SchedClassifier = ebpf.program_mut("ebpf_main_cni").context("no ebpf_main_cni")?.try_into()?;
        prog.load().context("the kernel refused ebpf_main_cni")?;
        let mut cni = MainCni { ebpf, attach, ifnames: Vec::new(), pin };
        match attach {
            Attach::Tc => {
                let prog: &mut SchedClassifier = cni.ebpf.program_mut("ebpf_main_cni").unwrap().try_into()?;
                let _ = std::fs::remove_file(&cni.pin);
                prog.pin(&cni.pin).context("cannot pin ebpf_main_cni")?;
                for name in ifnames {
                    let ifindex = crate::node::netns::ifindex(name)?;
                    tc::attach_pinned_filter(ifindex, Hook::Ingress, PREF, 1, &cni.pin, "ebpf_main_cni")
                        .with_context(|| format!("cannot attach the main CNI's program to {name}"))?;
                    cni.ifnames.push(name.to_string());
                }
            }
            Attach::Tcx => {
                let prog: &mut SchedClassifier = cni.ebpf.program_mut("ebpf_main_cni").unwrap().try_into()?;
                for name in ifnames {
                    prog.attach_with_options(name, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::first()))
                        .with_context(|| format!("cannot attach the main CNI's program to {name} with tcx"))?;
                    cni.ifnames.push(name.to_string());
                }
            }
        }
        Ok(cni)
    }

    pub fn form(&self) -> Attach {
        self.attach
    }
}

impl Drop for MainCni {
    fn drop(&mut self) {
        if self.attach == Attach::Tc {
            for name in &self.ifnames {
                if let Ok(ifindex) = crate::node::netns::ifindex(name) {
                    let _ = tc::filter_delete(ifindex, Hook::Ingress, PREF, 0);
                }
            }
            let _ = std::fs::remove_file(&self.pin);
        }
        // tcx links go with the Ebpf object.
    }
}
