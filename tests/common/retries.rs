//! The suite's retry ledger. A measurement may be repeated only with
//! evidence that the machine, not the shaper, spoiled it; every repeat is
//! written here, printed, and counted against one budget for the whole
//! `cargo test` run (tests/zz_retry_budget.rs checks it last).
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

/// Repeats the whole suite may use.
pub const BUDGET: usize = 4;

/// The ledger of this `cargo test` run: cargo is every test binary's parent.
pub fn ledger() -> PathBuf {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("retries-{parent}.log"))
}

/// Records one repeat of `what`, with the evidence that allowed it.
pub fn record(what: &str, evidence: &str) {
    println!("RETRY {what}: {evidence}");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(ledger()).expect("retry ledger");
    writeln!(f, "{what}: {evidence}").expect("retry ledger");
}

/// The repeats recorded so far in this run.
pub fn used() -> Vec<String> {
    std::fs::read_to_string(ledger()).map(|s| s.lines().map(String::from).collect()).unwrap_or_default()
}

/// The share of both CPUs' time spent busy between two /proc/stat readings.
pub struct CpuSample {
    busy: u64,
    total: u64,
}

impl CpuSample {
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        let line = stat.lines().next().expect("cpu line");
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = v[3] + v.get(4).copied().unwrap_or(0);
        let total: u64 = v.iter().take(8).sum();
        CpuSample { busy: total - idle, total }
    }

    /// Busy share of all CPUs since `self`.
    pub fn busy_since(&self) -> f64 {
        let now = CpuSample::now();
        (now.busy - self.busy) as f64 / (now.total - self.total).max(1) as f64
    }
}

/// A run whose CPUs were this busy may have been starved by the machine.
pub const STARVED: f64 = 0.90;
