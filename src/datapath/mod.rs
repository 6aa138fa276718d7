//! The datapath: the eBPF programs (ebpf/), loaded once per node and
//! attached per pod (`attach`), their maps as user space sees them
//! (`state`), each attachment's record (`attachment`), and what sits on the pod's host-side interface:
//! the ingress queue, the egress guard and, without one, the raw-frame guard
//! (`ingress_queue`, `host_guard`, `raw_guard`, over `tc`).

pub mod attach;
pub mod attachment;
pub mod host_guard;
pub mod ingress_queue;
pub mod raw_guard;
pub mod state;
pub mod tc;
