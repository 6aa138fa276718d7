//! Small things the parts share: progress on stderr, a stop on Ctrl-C that
//! still cleans up, CPU load, BPF run-time statistics.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM stop the run at the next step, so that every
/// testbed, pin and cgroup is removed on the way out.
pub fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, unless interrupted.
pub fn pause(d: Duration) -> Result<()> {
    std::thread::sleep(d);
    check_interrupted()
}

pub struct Progress {
    pub done: f64,
    /// Estimated seconds of the whole run.
    pub total: f64,
    pub started: Instant,
}

impl Progress {
    pub fn new(total: f64) -> Self {
        Progress { done: 0.0, total, started: Instant::now() }
    }

    /// Announces a step that is expected to take `cost` seconds.
    pub fn step(&mut self, cost: f64, what: &str) -> Result<()> {
        check_interrupted()?;
        let elapsed = self.started.elapsed().as_secs_f64();
        let left = (self.total - self.done).max(0.0);
        self.done += cost;
        eprint!("\r\x1b[K[{:>5.0} s, ~{:>4.0} s left] {what}", elapsed, left);
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// The share of all CPUs' time spent busy between two /proc/stat readings.
pub struct CpuSample {
    busy: u64,
    total: u64,
}

impl CpuSample {
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let v: Vec<u64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        if v.len() < 5 {
            return CpuSample { busy: 0, total: 0 };
        }
        let idle = v[3] + v[4];
        let total: u64 = v.iter().take(8).sum();
        CpuSample { busy: total - idle, total }
    }

    pub fn busy_since(&self) -> f64 {
        let now = CpuSample::now();
        (now.busy.saturating_sub(self.busy)) as f64 / (now.total.saturating_sub(self.total)).max(1) as f64
    }
}

/// run_time_ns and run_cnt (kernel.bpf_stats_enabled) of the programs
/// attached to the pod's cgroup, by program name.
pub fn cgroup_prog_stats(cgroup: &Path) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    let Some(path) = cgroup.to_str() else { return out };
    let Ok(o) = Command::new("bpftool").args(["-j", "cgroup", "show", path]).output() else { return out };
    let attached: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    for a in attached.as_array().into_iter().flatten() {
        let Some(id) = a["id"].as_u64() else { continue };
        let Ok(o) = Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]).output() else { continue };
        let p: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let name = p["name"].as_str().unwrap_or("?").to_string();
        let e = out.entry(name).or_insert((0, 0));
        e.0 += p["run_time_ns"].as_u64().unwrap_or(0);
        e.1 += p["run_cnt"].as_u64().unwrap_or(0);
    }
    out
}

/// Adds what ran between two readings to `into`.
pub fn add_prog_stats(into: &mut BTreeMap<String, (u64, u64)>, before: &BTreeMap<String, (u64, u64)>, after: &BTreeMap<String, (u64, u64)>) {
    for (name, (ns, cnt)) in after {
        let (b_ns, b_cnt) = before.get(name).copied().unwrap_or((0, 0));
        let e = into.entry(name.clone()).or_insert((0, 0));
        e.0 += ns.saturating_sub(b_ns);
        e.1 += cnt.saturating_sub(b_cnt);
    }
}

/// A command's trimmed stdout, or "" if it cannot run.
pub fn output_of(program: &str, args: &[&str]) -> String {
    Command::new(program).args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

/// Waits (up to 20 s) until the testbed's iperf3 server has no test
/// running: no connection to its port still open on its side. A client
/// that was stopped (the first-second scenario stops its client), or whose
/// last segments sat in a deep queue, can leave it busy for a moment, and
/// a busy iperf3 server refuses the next test.
pub fn wait_server_idle(bed: &bpf_ratelimit::testbed::Testbed) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut ss = bed.server_command("ss")?;
        ss.args(["-Htn", "state", "established", "state", "close-wait", "state", "syn-recv", "(", "sport", "=", ":5201", ")"]);
        let out = ss.output()?;
        if out.status.success() && out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            eprintln!("\nbench: the iperf3 server still has connections after 20 s: {}", String::from_utf8_lossy(&out.stdout).trim());
            return Ok(());
        }
        pause(Duration::from_millis(100))?;
    }
}

/// `bed.bulk(b)` once the server is idle; again (up to twice more) if the
/// server still said it was busy.
pub fn bulk(bed: &bpf_ratelimit::testbed::Testbed, b: &bpf_ratelimit::testbed::scenario::Bulk) -> Result<bpf_ratelimit::testbed::scenario::BulkResult> {
    let mut tries = 0;
    loop {
        wait_server_idle(bed)?;
        match bed.bulk(b) {
            Err(e) if tries < 2 && format!("{e:#}").contains("server is busy") => {
                tries += 1;
                pause(Duration::from_secs(1))?;
            }
            other => return other,
        }
    }
}
