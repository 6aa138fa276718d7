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
        let [busy, _, total] = cpu_times();
        CpuSample { busy, total }
    }

    /// Busy share of all CPUs since `self`.
    pub fn busy_since(&self) -> f64 {
        let now = CpuSample::now();
        (now.busy - self.busy) as f64 / (now.total - self.total).max(1) as f64
    }
}

/// Starvation by something other than the test's own traffic: the share of
/// CPU time the hypervisor stole from this VM...
pub const STOLEN: f64 = 0.05;
/// ...or how late a sentinel thread, asking to wake every 5 ms, woke at its
/// 99th percentile. The test's own traffic keeps the CPUs busy, but the
/// scheduler wakes a sleeper within a millisecond or two of its time even
/// then (0.3 ms at p99 with the CPUs 95% busy with an 8-flow upload); a
/// host that stalls this VM, or stray processes hogging the CPUs, make it
/// late (four busy loops on the 2 vCPUs: 11 ms at p99; idle: 0.2 ms).
pub const LATE_MS: f64 = 10.0;

/// Watches the machine while a measurement runs: CPU busy and steal from
/// /proc/stat, and a sentinel thread's wake-up lateness.
pub struct Starvation {
    start: [u64; 3],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sentinel: Option<std::thread::JoinHandle<Vec<f64>>>,
}

/// What the watch saw.
pub struct Verdict {
    pub busy: f64,
    pub stolen: f64,
    pub late_p99_ms: f64,
}

impl Verdict {
    /// Whether the machine, not the test's own load, may have spoiled it.
    pub fn starved(&self) -> bool {
        self.stolen >= STOLEN || self.late_p99_ms >= LATE_MS
    }

    /// For the test's output and the ledger.
    pub fn evidence(&self) -> String {
        format!("CPUs {:.0}% busy, {:.1}% stolen by the host, a sentinel woke {:.1} ms late (p99)", self.busy * 100.0, self.stolen * 100.0, self.late_p99_ms)
    }
}

/// busy, steal and total jiffies of all CPUs.
fn cpu_times() -> [u64; 3] {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let v: Vec<u64> = stat.lines().next().expect("cpu line").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    [total - idle, v.get(7).copied().unwrap_or(0), total]
}

impl Starvation {
    pub fn watch() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let sentinel = std::thread::spawn(move || {
            let mut late = Vec::new();
            let period = std::time::Duration::from_millis(5);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let asked = std::time::Instant::now();
                std::thread::sleep(period);
                late.push((asked.elapsed().saturating_sub(period)).as_secs_f64() * 1000.0);
            }
            late
        });
        Starvation { start: cpu_times(), stop, sentinel: Some(sentinel) }
    }

    pub fn verdict(mut self) -> Verdict {
        let now = cpu_times();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let late = self.sentinel.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default();
        let total = (now[2] - self.start[2]).max(1) as f64;
        Verdict {
            busy: (now[0] - self.start[0]) as f64 / total,
            stolen: (now[1] - self.start[1]) as f64 / total,
            late_p99_ms: if late.is_empty() { 0.0 } else { bpf_ratelimit::testbed::measure::percentile(&late, 99.0) },
        }
    }
}

impl Drop for Starvation {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
