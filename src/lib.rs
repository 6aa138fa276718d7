//! bpf-ratelimit: a chained CNI plugin that limits each pod's bandwidth with
//! eBPF programs attached to the pod's cgroup v2 directory and, where the
//! pod has one, its host-side interface.
//!
//! A CNI request flows down these folders, and no module imports one above it:
//!
//! - `plugin`: the CNI verbs ADD, DEL, CHECK, GC and STATUS;
//! - `datapath`: the eBPF programs, their state, each attachment's record,
//!   and the queue and guards on the host-side interface;
//! - `node`: what the plugin finds and keeps on the node (cgroups, network
//!   namespaces, bpf(2) and the pin root);
//! - `policy`: the network configuration and which limits a pod gets;
//! - `ops`: the commands for people (install, list, set, metrics, demo);
//! - `testbed`: the throwaway pods of the demo, the tests and the benchmark.
//!
//! `cni` (the protocol: environment, errors, results) and `logging` are
//! shared by all of them.

pub mod cni;
pub mod datapath;
pub mod logging;
pub mod node;
pub mod ops;
pub mod plugin;
pub mod policy;
pub mod testbed;
