//! The suite's retry ledger. A measurement may be repeated only with
//! evidence that the machine, not the shaper, spoiled it; every repeat is
//! written here, printed, and counted against one budget for the whole
//! run of `./test.sh` (tests/zz_retry_budget.rs checks it last).
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

/// Repeats the whole suite may use.
pub const BUDGET: usize = 4;

/// The run ID, which `./test.sh` (and so `.ci/run`) creates and gives every
/// test binary it runs: one ledger per run, whatever runs the binaries and
/// in whatever order.
pub const RUN_VAR: &str = "BRL_TEST_RUN";

/// The ledger of this run; None outside `./test.sh`.
pub fn ledger() -> Option<PathBuf> {
    let id = std::env::var(RUN_VAR).ok()?;
    assert!(
        !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "{RUN_VAR}={id:?}: a run ID is letters, digits and '-'"
    );
    Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("retries-{id}.log")))
}

/// Records one repeat of `what`, with the evidence that allowed it. Outside
/// a run of `./test.sh` no repeat can be counted, so none is allowed: the
/// measurement fails instead (running binaries one by one or with a filter
/// must not escape the budget).
pub fn record(what: &str, evidence: &str) {
    let Some(ledger) = ledger() else {
        panic!("{what} would be repeated ({evidence}), but repeats are counted only in a run of ./test.sh ({RUN_VAR} is not set): failing instead");
    };
    println!("RETRY {what}: {evidence}");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&ledger).expect("retry ledger");
    writeln!(f, "{what}: {evidence}").expect("retry ledger");
}

/// The repeats recorded so far in this run (none outside `./test.sh`,
/// where none is allowed). A ledger that exists but cannot be read fails.
pub fn used() -> Vec<String> {
    let Some(ledger) = ledger() else { return Vec::new() };
    match std::fs::read_to_string(&ledger) {
        Ok(s) => s.lines().map(String::from).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot read the retry ledger {}: {e}", ledger.display()),
    }
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
