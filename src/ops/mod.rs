//! The commands for people: `install`/`uninstall`, `list`, `set` and
//! `metrics` (admin, with their arguments in cli), and `demo`.

pub mod admin;
pub mod cli;
pub mod demo;
pub mod install;
