//! Configuration and policy: the network configuration on stdin, what the
//! operator and the runtime can say about limits, and which limits a pod
//! gets within the operator's.

pub mod limits;
pub mod netconf;
pub mod operator;
pub mod quantity;
pub mod resolve;
#[cfg(test)]
mod resolve_tests;
