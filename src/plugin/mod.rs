//! The plugin's CNI verbs: ADD, DEL, CHECK, GC and STATUS, each a short
//! function over the layers below (policy, node, datapath).

pub mod commands;
pub mod unshaped;
pub mod status_cache;
