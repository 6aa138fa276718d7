//! Side-by-side benchmark: bpf-ratelimit against the reference `bandwidth`
//! CNI plugin (Debian's containernetworking-plugins), in the same run.
//!
//! Three pods behind one bridge, each set up by real CNI ADDs of a chain:
//!   server: bridge + host-local
//!   ours:   bridge + host-local + bpf-ratelimit
//!   ref:    bridge + host-local + bandwidth
//! Both shaped pods get the same runtimeConfig.bandwidth as containerd sends
//! it (the rate, and containerd's "no burst given" value), plus the same
//! pod annotations. See bench/README.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bpf_ratelimit::testbed::{cgroup2_mount, in_netns, ip, remove_cgroup, run_with_timeout};
use serde::Serialize;
use serde_json::{json, Value};

mod ingress;
mod workloads;
mod cni_chain;
mod measure;
mod report;

use cni_chain::*;
use measure::*;
use report::*;

const BRIDGE: &str = "brlbench0";
const SUBNET: &str = "10.253.0.0/24";
const CONTAINERD_NO_BURST: u64 = 4_294_967_295;

struct Options {
    rates: Vec<(String, u64)>,
    seconds: u32,
    pods_for_timing: usize,
    out_dir: PathBuf,
    /// Which parts to run: the rate table, ADD/DEL timing, the workloads.
    rate_table: bool,
    timing: bool,
    workloads: bool,
}

fn parse_args() -> Result<Options> {
    let mut opts = Options {
        rates: vec![("10M".into(), 10_000_000), ("100M".into(), 100_000_000), ("1G".into(), 1_000_000_000)],
        seconds: 6,
        pods_for_timing: 100,
        out_dir: PathBuf::from("bench/results"),
        rate_table: true,
        timing: true,
        workloads: true,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| anyhow::anyhow!("{a} needs a value"));
        match a.as_str() {
            "--rates" => {
                opts.rates = val()?
                    .split(',')
                    .map(|r| Ok((r.to_string(), bpf_ratelimit::quantity::parse(r)?)))
                    .collect::<Result<_>>()?
            }
            "--seconds" => opts.seconds = val()?.parse()?,
            "--pods" => opts.pods_for_timing = val()?.parse()?,
            "--out" => opts.out_dir = PathBuf::from(val()?),
            "--only" => match val()?.as_str() {
                "rates" => opts.workloads = false,
                "workloads" => (opts.rate_table, opts.timing) = (false, false),
                "timing" => (opts.rate_table, opts.workloads) = (false, false),
                other => bail!("--only takes rates (with ADD/DEL timing), timing or workloads, not {other}"),
            },
            other => bail!("unknown option {other}; options: --rates 10M,100M,1G --seconds 6 --pods 100 --out bench/results --only rates|timing|workloads"),
        }
    }
    Ok(opts)
}

/// Kills a background process (an iperf3 server) when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct BenchEnv {
    work: PathBuf,
    bpf_stats_was: String,
}

impl Drop for BenchEnv {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", BRIDGE]);
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.bpf_stats_was);
        let _ = std::fs::remove_dir_all(&self.work);
        if let Ok(m) = cgroup2_mount() {
            let _ = std::fs::remove_dir(m.join("bpf-ratelimit-bench"));
        }
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/brl-bench-{}", std::process::id()));
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("\nbench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let opts = parse_args()?;
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: the benchmark creates network namespaces and loads BPF programs");
    }
    let work = std::env::temp_dir().join(format!("brl-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let env = BenchEnv {
        bpf_stats_was: std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_else(|_| "0".into()),
        work: work.clone(),
    };
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").context("cannot enable kernel.bpf_stats_enabled")?;
    let cni = Cni::new(&env.work)?;
    let per_rate = 2 * (1 + 2 * 4 + 2 * ingress::SENDERS.len());
    let rate_steps = if opts.rate_table { opts.rates.len() * per_rate } else { 0 } + if opts.timing { 2 * (opts.pods_for_timing / 10 + 1) } else { 0 };
    let workload_steps = if opts.workloads { 2 * 8 } else { 0 };
    let mut progress = Progress { done: 0, total: rate_steps + workload_steps, started: Instant::now() };

    let mut server = CniPod::new(&format!("brlb-srv-{}", std::process::id()), vec![cni.bridge()], json!({}))?;
    cni.add(&mut server)?;
    let iperf_server = in_netns(Command::new("iperf3"), &server.netns, None)?
        .args(["-s", "-B", &server.ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _server_guard = Kill(iperf_server);
    let server_at = Server { ip: server.ip.clone(), netns: server.netns.clone() };
    std::thread::sleep(Duration::from_millis(300));

    let mut rows = Vec::new();
    let mut bpf_cost = BTreeMap::new();
    let mut workload_rows = Vec::new();
    let mut ingress_rows = Vec::new();
    if opts.workloads {
        let _servers = workloads::start_servers(&server_at)?;
        for plugin in [Plugin::Ours, Plugin::Reference] {
            workload_rows.push(workloads::measure(&cni, plugin, &server_at, &mut progress)?);
        }
    }
    let rates = if opts.rate_table { opts.rates.clone() } else { Vec::new() };
    for (rate_name, rate) in &rates {
        for plugin in [Plugin::Ours, Plugin::Reference] {
            let mut pod = CniPod::new(&format!("brlb-{}-{}", plugin_tag(plugin), std::process::id()), chain(&cni, plugin), runtime_config(Some(*rate)))?;
            cni.add(&mut pod)?;
            let _pod_server = Kill(
                pod.command("iperf3")?.args(["-s", "-B", &pod.ip]).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?,
            );
            std::thread::sleep(Duration::from_millis(300));
            progress.step(&format!("{} {rate_name}: idle RTT", plugin.label()));
            let idle_rtt_ms = mean(&ping_times(start_ping(&pod, &server_at.ip, 2)?)?);
            let before = bpf_prog_stats();
            let result = (|| -> Result<Vec<Row>> {
                let mut out = Vec::new();
                for reverse in [false, true] {
                    let burst = match plugin {
                        Plugin::Ours => configured_burst_bytes(reverse)?,
                        Plugin::Reference => CONTAINERD_NO_BURST as f64 / 8.0,
                    };
                    out.push(measure(&pod, plugin, &server_at, rate_name, *rate, reverse, &opts, &mut progress, burst, idle_rtt_ms)?);
                }
                ingress_rows.extend(ingress::measure(&pod, plugin, &server_at, rate_name, *rate, opts.seconds, &mut progress)?);
                Ok(out)
            })();
            if plugin == Plugin::Ours {
                let after = bpf_prog_stats();
                let (mut ns, mut cnt) = (0u64, 0u64);
                for (name, (a_ns, a_cnt)) in &after {
                    let (b_ns, b_cnt) = before.get(name).copied().unwrap_or((0, 0));
                    if name.starts_with("shape") {
                        ns += a_ns - b_ns;
                        cnt += a_cnt - b_cnt;
                    }
                }
                bpf_cost.insert(rate_name.clone(), if cnt > 0 { ns as f64 / cnt as f64 } else { f64::NAN });
            }
            cni.del(&pod)?;
            rows.extend(result?);
        }
    }
    let timings = if opts.timing {
        vec![
            timing(&cni, Plugin::Ours, opts.pods_for_timing, &mut progress)?,
            timing(&cni, Plugin::Reference, opts.pods_for_timing, &mut progress)?,
        ]
    } else {
        Vec::new()
    };
    cni.del(&server)?;
    eprintln!();

    std::fs::create_dir_all(&opts.out_dir)?;
    let json_out = json!({"rows": rows, "bpf_ns_per_packet": bpf_cost, "timings": timings, "seconds": opts.seconds,
                          "workloads": workload_rows, "ingress_senders": ingress_rows});
    std::fs::write(opts.out_dir.join("results.json"), serde_json::to_string_pretty(&json_out)?)?;
    let mut md = markdown(&rows, &bpf_cost, &timings);
    if !ingress_rows.is_empty() {
        md.push_str("\nIngress from CUBIC and BBR senders (goodput ÷ limit / share of segments resent):\n\n");
        md.push_str(&ingress::markdown(&ingress_rows));
    }
    if !workload_rows.is_empty() {
        md.push_str("\nThe traffic real pods make (10M pod unless stated; wire ratios after the first 2 s, past any burst):\n\n");
        md.push_str(&workloads::markdown(&workload_rows));
    }
    std::fs::write(opts.out_dir.join("results.md"), &md)?;
    std::fs::write(opts.out_dir.join("throughput.svg"), svg(&rows, &opts))?;
    println!("{md}");
    println!("wrote {0}/results.json, {0}/results.md, {0}/throughput.svg", opts.out_dir.display());
    drop(env);
    Ok(())
}

