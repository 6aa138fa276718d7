//! bpf-ratelimit: a chained CNI plugin that limits each pod's bandwidth with
//! eBPF programs attached to the pod's cgroup v2 directory.
//!
//! The request flows parse (`cni`, `netconf`) → limits (`limits`,
//! `quantity`) → cgroup (`cgroup`, `netns`) → datapath (`datapath`, `state`,
//! `bpf_sys`, and beside it `ingress_queue`, `raw_guard`, `tc`) → pins
//! (`pins`, `pin_roots`, `pod_meta`) → reply; `commands` holds the CNI verbs.
//! The commands for people are `admin` (list, set, metrics), `install`, and
//! `demo`; `testbed` makes the throwaway pods of the demo, the tests and the
//! benchmark.

pub mod admin;
pub mod attachment;
pub mod bpf_sys;
pub mod cgroup;
pub mod cni;
pub mod commands;
pub mod datapath;
pub mod ingress_queue;
pub mod demo;
pub mod host_guard;
pub mod install;
pub mod limits;
pub mod logging;
pub mod netconf;
pub mod netns;
pub mod pod_meta;
pub mod pin_roots;
pub mod pins;
pub mod privilege;
pub mod quantity;
pub mod raw_guard;
pub mod state;
pub mod tc;
pub mod status_cache;
pub mod testbed;
