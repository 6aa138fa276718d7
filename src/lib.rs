//! bpf-ratelimit: a chained CNI plugin that limits each pod's bandwidth with
//! eBPF programs attached to the pod's cgroup v2 directory.
//!
//! The request flows parse (`cni`, `netconf`) → limits (`limits`, `quantity`)
//! → cgroup (`cgroup`) → datapath and pins (`datapath`, `state`, `bpf_sys`)
//! → reply; `commands` holds the CNI verbs and `testbed` the throwaway pods
//! used by the demo, the tests and the benchmark.

pub mod bpf_sys;
pub mod cgroup;
pub mod cni;
pub mod commands;
pub mod datapath;
pub mod demo;
pub mod limits;
pub mod logging;
pub mod netconf;
pub mod pin_roots;
pub mod privilege;
pub mod quantity;
pub mod state;
pub mod status_cache;
pub mod testbed;
