//! What the plugin finds and keeps on the node: the pod's cgroup and network
//! namespace, the capabilities it runs with, the bpf(2) calls aya lacks, and
//! the pin root where each attachment's links, state and record outlive one
//! invocation.

pub mod bpf_sys;
pub mod cgroup;
pub mod kernel;
pub mod netns;
pub mod pin_roots;
pub mod pins;
pub mod pod_meta;
pub mod privilege;
