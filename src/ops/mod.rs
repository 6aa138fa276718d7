//! The commands for people: `install`/`uninstall`, `list`, `set` and
//! `metrics` (admin, with their arguments in cli; who may read `metrics
//! --listen` in metrics_access), and `demo`.

pub mod admin;
pub mod cli;
pub mod demo;
pub mod install;
pub mod metrics_access;
