//! Side-by-side benchmark: bpf-ratelimit against the reference `bandwidth`
//! CNI plugin (Debian's containernetworking-plugins), in the same run, on
//! the testbed the tests use (src/testbed): a pod netns and cgroup, the
//! host end of its veth on a bridge, a gateway netns, and the server behind
//! a delay line at the chosen one-way delay. The testbed plays the main
//! plugin; each shaper is then called as a runtime calls it (src/testbed/shapers.rs),
//! and every measurement is a scenario of src/testbed/scenario.rs, the ones
//! the tests assert. See bench/README.md.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use bpf_ratelimit::testbed::shapers as plugins;

mod busy_node;
mod main_cni;
mod matrix;
mod report;
mod timing;
mod util;
mod wire_table;
mod workloads;

use util::{output_of, Progress};

const USAGE: &str = "options:
  --rtts 0,1.5,10,20,50     round-trip times in ms (the delay line adds half each way; 0 = LAN)
  --rates 10M,100M,1G       limits (both directions)
  --rows ours,containerd,fair
                            the matrix's shaped rows (also: policer, ours with ingressQueue: false; lowcpu, ours with ingressTradeoff: cpu; each also adds a busy-node row)
  --only matrix,wire,workloads,timing,maincni,busynode
                            parts to run (comma-separated; default all)
  --seconds 4               measured seconds per bulk transfer (2 more are omitted first)
  --pods 100                pods per plugin for the ADD/DEL timing
  --busy 40x50M,200x10M     busy-node fleets: pods on one bridge x the limit of each;
                            1000x50M:40 shapes 1000 pods of which 40 move traffic
  --out bench/results       where results.json, results.md and ratio_vs_rtt.svg go
  --estimate                print how long the run would take, and exit";

pub struct Options {
    pub rtts_ms: Vec<f64>,
    pub rates: Vec<(String, u64)>,
    pub rows: Vec<plugins::Row>,
    pub seconds: u32,
    pub pods: usize,
    pub out: PathBuf,
    pub matrix: bool,
    pub wire: bool,
    pub workloads: bool,
    pub timing: bool,
    pub main_cni: bool,
    pub busy_node: bool,
    pub busy_shapes: Vec<busy_node::Shape>,
    pub estimate_only: bool,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut o = Options {
        rtts_ms: vec![0.0, 1.5, 10.0, 20.0, 50.0],
        rates: ["10M", "100M", "1G"].iter().map(|r| (r.to_string(), bpf_ratelimit::policy::quantity::parse(r).unwrap())).collect(),
        rows: plugins::Row::SHAPED.to_vec(),
        seconds: 4,
        pods: 100,
        out: PathBuf::from("bench/results"),
        matrix: true,
        wire: true,
        workloads: true,
        timing: true,
        main_cni: true,
        busy_node: true,
        busy_shapes: vec![busy_node::Shape::parse("40x50M")?, busy_node::Shape::parse("200x10M")?],
        estimate_only: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().with_context(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--rtts" => {
                o.rtts_ms = val()?
                    .split(',')
                    .map(|r| r.trim().trim_end_matches("ms").parse::<f64>().with_context(|| format!("--rtts: {r:?} is not a number of ms")))
                    .collect::<Result<_>>()?;
                if o.rtts_ms.iter().any(|r| !(0.0..=2000.0).contains(r)) {
                    bail!("--rtts: each RTT must be 0..2000 ms");
                }
            }
            "--rates" => {
                o.rates = val()?
                    .split(',')
                    .map(|r| Ok((r.to_string(), bpf_ratelimit::policy::quantity::parse(r).map_err(|e| anyhow::anyhow!("--rates: {e}"))?)))
                    .collect::<Result<_>>()?
            }
            "--seconds" => {
                o.seconds = val()?.parse().context("--seconds")?;
                if o.seconds < 2 {
                    bail!("--seconds: at least 2 (the wire is sampled 0.3 s inside both ends)");
                }
            }
            "--pods" => o.pods = val()?.parse().context("--pods")?,
            "--busy" => o.busy_shapes = val()?.split(',').map(busy_node::Shape::parse).collect::<Result<_>>()?,
            "--rows" => {
                o.rows = val()?
                    .split(',')
                    .map(|r| plugins::Row::parse(r.trim()).with_context(|| format!("--rows: unknown row {r:?}\n{USAGE}")))
                    .collect::<Result<_>>()?
            }
            "--out" => o.out = PathBuf::from(val()?),
            "--only" => {
                let parts = val()?;
                (o.matrix, o.wire, o.workloads, o.timing, o.main_cni, o.busy_node) = (false, false, false, false, false, false);
                for p in parts.split(',') {
                    match p.trim() {
                        "matrix" | "rtt" => o.matrix = true,
                        "wire" => o.wire = true,
                        "workloads" => o.workloads = true,
                        "timing" => o.timing = true,
                        "maincni" => o.main_cni = true,
                        "busynode" => o.busy_node = true,
                        other => bail!("--only: unknown part {other:?}\n{USAGE}"),
                    }
                }
            }
            "--estimate" => o.estimate_only = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    Ok(o)
}

/// Seconds the run is expected to take.
fn estimate(o: &Options) -> f64 {
    let mut s = 0.0;
    if o.matrix {
        s += o.rtts_ms.iter().map(|r| matrix::estimate(o, *r)).sum::<f64>();
    }
    if o.wire {
        s += wire_table::estimate();
    }
    if o.workloads {
        s += workloads::estimate();
    }
    if o.timing {
        s += timing::estimate(o.pods);
    }
    if o.main_cni {
        s += main_cni::estimate();
    }
    if o.busy_node {
        s += busy_node::estimate(&o.busy_shapes, &o.rows);
    }
    s
}

#[derive(Debug, Default, Serialize)]
pub struct Meta {
    pub command: String,
    pub date_utc: String,
    pub commit: String,
    /// Uncommitted changes in the tree the run started from.
    pub dirty: bool,
    pub kernel: String,
    pub cpus: usize,
    pub reference_path: String,
    /// `bandwidth --version` (Debian's build prints "version unknown").
    pub reference_version_output: String,
    /// dpkg-query -W containernetworking-plugins.
    pub reference_package: String,
    pub rtts_ms: Vec<f64>,
    pub rates: Vec<(String, u64)>,
    pub omit: u32,
    pub seconds: u32,
    pub parts: Vec<&'static str>,
    /// Per rate, per shaper: the bursts asked for, bits (ingress, egress).
    pub bursts_asked_bits: Vec<(String, &'static str, u64, u64)>,
    pub estimated_s: f64,
    pub elapsed_s: f64,
    pub load_average_at_start: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub meta: Meta,
    /// False while the run goes on, or if it stopped early.
    pub complete: bool,
    pub matrix: matrix::MatrixResults,
    pub wire: Vec<wire_table::WireRow>,
    pub workloads: Vec<workloads::WorkloadRow>,
    pub timing: Vec<timing::Timing>,
    pub status: Option<timing::StatusTiming>,
    pub idle_process: Option<timing::IdleProcess>,
    pub main_cni: Vec<main_cni::MainCniRow>,
    pub busy_node: Vec<busy_node::BusyRow>,
    pub busy_state: Vec<busy_node::StateRow>,
}

/// Restores what the run changed on the node, however it ends.
struct Node {
    bpf_stats_was: Option<String>,
    pin_root: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(was) = &self.bpf_stats_was {
            let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", was);
        }
        let _ = std::fs::remove_dir_all(&self.pin_root);
        if let Ok(m) = bpf_ratelimit::testbed::cgroup2_mount() {
            let _ = std::fs::remove_dir(m.join("bpf-ratelimit-bench"));
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("\nbench: {e:#}");
        std::process::exit(1);
    }
}

fn meta(o: &Options, args: &[String]) -> Meta {
    let repo = env!("CARGO_MANIFEST_DIR");
    let git = |a: &[&str]| output_of("git", &[&["-C", repo], a].concat());
    let mut parts = Vec::new();
    for (on, name) in [(o.matrix, "matrix"), (o.wire, "wire"), (o.workloads, "workloads"), (o.timing, "timing"), (o.main_cni, "maincni"), (o.busy_node, "busynode")] {
        if on {
            parts.push(name);
        }
    }
    let mut bursts = Vec::new();
    for (name, rate) in &o.rates {
        for row in plugins::Row::SHAPED {
            let (i, e) = row.bursts(*rate);
            bursts.push((name.clone(), row.label(), i, e));
        }
    }
    Meta {
        command: format!("bench/run.sh {}", args.join(" ")).trim().to_string(),
        date_utc: output_of("date", &["-u", "+%Y-%m-%d %H:%M:%S"]),
        commit: Some(git(&["rev-parse", "HEAD"])).filter(|c| !c.is_empty()).unwrap_or_else(|| "unknown".into()),
        // Results of earlier runs, and the pages bench/publish.py rewrites
        // from them after each run, are not the code that ran.
        dirty: !git(&["status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results", ":(exclude)README.md", ":(exclude)bench/README.md"])
            .is_empty(),
        kernel: output_of("uname", &["-r"]),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        reference_path: plugins::REFERENCE.into(),
        reference_version_output: {
            let o = std::process::Command::new(plugins::REFERENCE).arg("--version").output();
            o.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)).trim().to_string()).unwrap_or_default()
        },
        reference_package: output_of("dpkg-query", &["-W", "-f", "${Package} ${Version}", "containernetworking-plugins"]),
        rtts_ms: o.rtts_ms.clone(),
        rates: o.rates.clone(),
        omit: matrix::OMIT,
        seconds: o.seconds,
        parts,
        bursts_asked_bits: bursts,
        estimated_s: estimate(o),
        elapsed_s: 0.0,
        load_average_at_start: std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string(),
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = parse_args(&args)?;
    let total = estimate(&opts);
    if opts.estimate_only {
        println!("estimated duration: {:.0} s ({:.1} min)", total, total / 60.0);
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: the benchmark creates network namespaces and loads BPF programs");
    }
    util::catch_interrupts();
    let ours = std::env::current_exe()?
        .parent()
        .and_then(std::path::Path::parent)
        .map(|d| d.join("bpf-ratelimit"))
        .context("cannot find the build directory")?;
    let plugins = plugins::Plugins::new(ours)?;
    let _node = Node {
        bpf_stats_was: std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").ok(),
        pin_root: plugins.pin_root.clone(),
    };
    if opts.matrix || opts.busy_node {
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").context("cannot enable kernel.bpf_stats_enabled")?;
    }
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;
    let mut results = Results { meta: meta(&opts, &args), ..Default::default() };
    // Published figures (bench/results/) come from committed code only.
    let published = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    let out = std::fs::canonicalize(&opts.out).unwrap_or_else(|_| opts.out.clone());
    if results.meta.dirty && out.starts_with(std::fs::canonicalize(&published).unwrap_or(published)) {
        bail!("the tree has uncommitted changes: commit them before writing results under bench/results/ (published figures), or give --out another directory");
    }
    eprintln!("bench: about {:.0} min ({}); results in {}", total / 60.0, results.meta.parts.join(", "), opts.out.display());
    let started = Instant::now();
    let mut progress = Progress::new(total);

    let outcome = (|| -> Result<()> {
        if opts.matrix {
            let r = matrix::run(&opts, &plugins, &mut progress, &mut results.matrix);
            save(&opts, &mut results, started)?;
            r?;
        }
        if opts.wire {
            results.wire = wire_table::run(&plugins, &mut progress)?;
            save(&opts, &mut results, started)?;
        }
        if opts.workloads {
            results.workloads = workloads::run(&plugins, &mut progress)?;
            save(&opts, &mut results, started)?;
        }
        if opts.main_cni {
            results.main_cni = main_cni::run(&plugins, &mut progress)?;
            save(&opts, &mut results, started)?;
        }
        if opts.busy_node {
            (results.busy_node, results.busy_state) = busy_node::run(&plugins, &opts.busy_shapes, &opts.rows, &mut progress)?;
            save(&opts, &mut results, started)?;
        }
        if opts.timing {
            (results.timing, results.idle_process) =
                timing::run(&plugins, opts.pods, opts.rows.contains(&plugins::Row::OursPolicer), &mut progress).map(|(t, i)| (t, Some(i)))?;
            results.status = Some(timing::status(&plugins, opts.pods, &mut progress)?);
        }
        Ok(())
    })();
    eprintln!();
    results.complete = outcome.is_ok();
    save(&opts, &mut results, started)?;
    outcome?;
    println!("{}", report::markdown(&results));
    println!("wrote {0}/results.json, {0}/results.md{1}", opts.out.display(), if opts.matrix { format!(", {}/ratio_vs_rtt.svg", opts.out.display()) } else { String::new() });
    Ok(())
}

/// Writes what there is so far: a run that stops keeps its figures.
fn save(opts: &Options, results: &mut Results, started: Instant) -> Result<()> {
    results.meta.elapsed_s = started.elapsed().as_secs_f64();
    std::fs::write(opts.out.join("results.json"), serde_json::to_string_pretty(results)?)?;
    std::fs::write(opts.out.join("results.md"), report::markdown(results))?;
    if !results.matrix.cells.is_empty() {
        std::fs::write(opts.out.join("ratio_vs_rtt.svg"), report::svg(results))?;
    }
    Ok(())
}
