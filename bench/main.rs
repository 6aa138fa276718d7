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

const BRIDGE: &str = "brlbench0";
const SUBNET: &str = "10.253.0.0/24";
const CONTAINERD_NO_BURST: u64 = 4_294_967_295;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum Plugin {
    Ours,
    Reference,
}

impl Plugin {
    fn label(self) -> &'static str {
        match self {
            Plugin::Ours => "bpf-ratelimit",
            Plugin::Reference => "bandwidth (reference)",
        }
    }
}

struct Options {
    rates: Vec<(String, u64)>,
    seconds: u32,
    pods_for_timing: usize,
    out_dir: PathBuf,
    /// Which parts to run: the rate table and ADD/DEL timing, the workloads, or both.
    rate_table: bool,
    workloads: bool,
}

/// Runs CNI plugin chains the way libcni does: each plugin gets the previous
/// one's result as prevResult; DEL runs the chain backwards.
struct Cni {
    bin_dir: PathBuf,
    data_dir: PathBuf,
}

struct CniPod {
    name: String,
    netns: PathBuf,
    cgroup: PathBuf,
    chain: Vec<Value>,
    runtime_config: Value,
    ip: String,
}

impl Cni {
    fn new(work: &Path) -> Result<Self> {
        let bin_dir = work.join("bin");
        std::fs::create_dir_all(&bin_dir)?;
        for entry in std::fs::read_dir("/usr/lib/cni").context("Debian's CNI plugins are missing: apt-get install containernetworking-plugins")? {
            let entry = entry?;
            std::os::unix::fs::symlink(entry.path(), bin_dir.join(entry.file_name()))?;
        }
        let ours = std::env::current_exe()?.parent().unwrap().parent().unwrap().join("bpf-ratelimit");
        if !ours.exists() {
            bail!("{} is missing: build with cargo build --release first", ours.display());
        }
        std::os::unix::fs::symlink(&ours, bin_dir.join("bpf-ratelimit"))?;
        Ok(Cni { bin_dir, data_dir: work.join("ipam") })
    }

    fn bridge(&self) -> Value {
        json!({
            "type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]], "dataDir": self.data_dir}
        })
    }

    /// Invokes one plugin; returns its stdout and the wall time of the call.
    fn invoke(&self, command: &str, pod: &CniPod, conf: &Value, prev: Option<&Value>) -> Result<(Value, Duration)> {
        let mut conf = conf.clone();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!("bench");
        conf["runtimeConfig"] = pod.runtime_config.clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let plugin = conf["type"].as_str().unwrap().to_string();
        let started = Instant::now();
        let mut child = Command::new(self.bin_dir.join(&plugin))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.name)
            .env("CNI_NETNS", &pod.netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAME={};K8S_POD_NAMESPACE=bench", pod.name))
            .env("CNI_PATH", &self.bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let elapsed = started.elapsed();
        if !out.status.success() {
            bail!("{plugin} {command} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        let v = if out.stdout.is_empty() { Value::Null } else { serde_json::from_slice(&out.stdout)? };
        Ok((v, elapsed))
    }

    /// ADD the chain; returns the last plugin's own wall time.
    fn add(&self, pod: &mut CniPod) -> Result<Duration> {
        let mut prev: Option<Value> = None;
        let mut last = Duration::ZERO;
        for conf in pod.chain.clone() {
            let (result, t) = self.invoke("ADD", pod, &conf, prev.as_ref())?;
            prev = Some(result);
            last = t;
        }
        let result = prev.unwrap();
        let addr = result["ips"][0]["address"].as_str().context("no IP in the CNI result")?;
        pod.ip = addr.split('/').next().unwrap().to_string();
        Ok(last)
    }

    fn del(&self, pod: &CniPod) -> Result<Duration> {
        let mut first = Duration::ZERO;
        for (i, conf) in pod.chain.iter().rev().enumerate() {
            let (_, t) = self.invoke("DEL", pod, conf, None)?;
            if i == 0 {
                first = t;
            }
        }
        Ok(first)
    }
}

impl CniPod {
    fn new(name: &str, chain: Vec<Value>, runtime_config: Value) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let mount = cgroup2_mount()?;
        let cgroup = mount.join("bpf-ratelimit-bench").join(name);
        std::fs::create_dir_all(&cgroup)?;
        let cgroup_path = format!("/{}", cgroup.strip_prefix(&mount)?.display());
        let mut rc = runtime_config;
        rc["cgroupPath"] = json!(cgroup_path);
        Ok(CniPod {
            name: name.into(),
            netns: PathBuf::from("/var/run/netns").join(name),
            cgroup,
            chain,
            runtime_config: rc,
            ip: String::new(),
        })
    }

    fn command(&self, program: &str) -> Result<Command> {
        in_netns(Command::new(program), &self.netns, Some(&self.cgroup))
    }
}

impl Drop for CniPod {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        remove_cgroup(&self.cgroup);
    }
}

fn runtime_config(rate: Option<u64>) -> Value {
    match rate {
        None => json!({}),
        Some(r) => json!({
            "bandwidth": {"ingressRate": r, "ingressBurst": CONTAINERD_NO_BURST, "egressRate": r, "egressBurst": CONTAINERD_NO_BURST},
            "io.kubernetes.cri.pod-annotations": {
                "kubernetes.io/ingress-bandwidth": r.to_string(),
                "kubernetes.io/egress-bandwidth": r.to_string()
            }
        }),
    }
}

#[derive(Debug, Default, Clone, Serialize)]
struct Row {
    plugin: String,
    rate: String,
    direction: String,
    tcp1_ratio: f64,
    tcp8_ratio: f64,
    retransmits_1flow: u64,
    retransmits_8flow: u64,
    rtt_idle_ms: f64,
    rtt_loaded_mean_ms: f64,
    rtt_loaded_p99_ms: f64,
    rtt_added_mean_ms: f64,
    udp_2x_delivered_ratio: f64,
    first_second_bytes: f64,
    burst_bytes: f64,
    first_second_ratio: f64,
    /// Bytes in the first second ÷ (rate × 1 s): how far a fresh pod overshoots.
    first_second_over_rate: f64,
    /// (seconds, bits/s) every 0.2 s of the 1-flow TCP run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    series: Vec<(f64, f64)>,
}

#[derive(Debug, Default, Serialize)]
struct Timing {
    plugin: String,
    add_median_ms: f64,
    add_p99_ms: f64,
    del_median_ms: f64,
    del_p99_ms: f64,
}

struct Progress {
    done: usize,
    total: usize,
    started: Instant,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        eprint!("\r\x1b[K[{:>3}/{}] {:>4.0}s  {what}", self.done, self.total, self.started.elapsed().as_secs_f64());
        let _ = std::io::stderr().flush();
    }
}

/// Every run is made with `-R` from the receiving side, so iperf3's
/// intervals are receiver-side (what was delivered, not what was written
/// into a socket buffer):
/// - egress: the client runs in the server namespace, against an iperf3
///   server inside the pod (its accepted sockets belong to the pod cgroup);
/// - ingress: the client runs in the pod, against the server.
///
/// UDP egress is the exception (`udp_egress`): the client in the pod sends.
/// iperf3's server aborts a -R UDP test when sendmsg reports the drop
/// (ENOBUFS, as for a full qdisc), while its client carries on; the final
/// sum_received is the server's receiver-side count either way.
fn iperf(pod: &CniPod, server: &Server, egress: bool, args: &[&str], seconds: u32) -> Result<Value> {
    let udp_egress = egress && args.contains(&"-u");
    let (mut cmd, target) = if egress && !udp_egress {
        (in_netns(Command::new("iperf3"), &server.netns, None)?, pod.ip.clone())
    } else {
        (pod.command("iperf3")?, server.ip.clone())
    };
    let secs = seconds.to_string();
    cmd.args(["-c", &target, "-J", "-t", &secs, "--connect-timeout", "3000"]).args(args);
    if !udp_egress {
        cmd.arg("-R");
    }
    let out = run_with_timeout(cmd, Duration::from_secs(u64::from(seconds) + 30))?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| format!("iperf3: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = v.get("error") {
        bail!("iperf3 {args:?}: {e}");
    }
    Ok(v)
}

/// Pings the server every 10 ms from inside the pod (so the probe is the
/// pod's other traffic, through both shaped directions).
fn start_ping(pod: &CniPod, server: &str, seconds: u32) -> Result<Child> {
    Ok(pod
        .command("ping")?
        .args(["-n", "-i", "0.01", "-w", &seconds.to_string(), server])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?)
}

fn ping_times(child: Child) -> Result<Vec<f64>> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect())
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

fn bpf_prog_stats() -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(o) = Command::new("bpftool").args(["-j", "prog", "show"]).output() else { return out };
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    for p in v.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        if ["shape_egress_pr", "shape_ingress_p", "pace_tcp", "shape_egress_prog", "shape_ingress_prog"].contains(&name) {
            let e = out.entry(name.to_string()).or_insert((0, 0));
            e.0 += p["run_time_ns"].as_u64().unwrap_or(0);
            e.1 += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    out
}

/// Where the unshaped side runs.
struct Server {
    ip: String,
    netns: PathBuf,
}

fn measure(
    pod: &CniPod,
    plugin: Plugin,
    server: &Server,
    rate_name: &str,
    rate: u64,
    reverse: bool,
    opts: &Options,
    progress: &mut Progress,
    burst_bytes: f64,
    idle_rtt_ms: f64,
) -> Result<Row> {
    let dir = if reverse { "ingress" } else { "egress" };
    let egress = !reverse;
    let tag = format!("{} {rate_name} {dir}", plugin.label());
    let base: Vec<&str> = vec![];
    let r = rate as f64;
    let mut row = Row { plugin: plugin.label().into(), rate: rate_name.into(), direction: dir.into(), burst_bytes, ..Default::default() };

    // First second from a full bucket (the pod was just added, or idle for a while).
    progress.step(&format!("{tag}: bytes in the first second"));
    let v = iperf(pod, server, egress, &[base.as_slice(), &["-i", "1"]].concat(), 2)?;
    row.first_second_bytes = v["intervals"][0]["sum"]["bytes"].as_f64().unwrap_or(f64::NAN);
    row.first_second_ratio = row.first_second_bytes / (r / 8.0 + burst_bytes);
    row.first_second_over_rate = row.first_second_bytes / (r / 8.0);
    row.rtt_idle_ms = idle_rtt_ms;

    drain();
    progress.step(&format!("{tag}: TCP, 1 flow, with a ping probe"));
    let ping = start_ping(pod, &server.ip, opts.seconds)?;
    let v = iperf(pod, server, egress, &[base.as_slice(), &["-O", "1", "-i", "0.2"]].concat(), opts.seconds)?;
    let times = ping_times(ping)?;
    // Drop the probe's first second, like iperf3's -O 1.
    let loaded: Vec<f64> = times.iter().copied().skip(100).collect();
    row.rtt_loaded_mean_ms = mean(&loaded);
    row.rtt_loaded_p99_ms = percentile(&loaded, 0.99);
    row.rtt_added_mean_ms = row.rtt_loaded_mean_ms - row.rtt_idle_ms;
    row.tcp1_ratio = v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(f64::NAN) / r;
    row.retransmits_1flow = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    // Omitted intervals (the first second) restart the clock in iperf3's
    // output; place every interval by its own start so the series is continuous.
    let mut offset = 0.0;
    let mut omitted_end = 0.0;
    for i in v["intervals"].as_array().into_iter().flatten() {
        let s = &i["sum"];
        let (start, end) = (s["start"].as_f64().unwrap_or(0.0), s["end"].as_f64().unwrap_or(0.0));
        if s["omitted"].as_bool() == Some(true) {
            omitted_end = end;
        } else if offset == 0.0 && start < omitted_end {
            offset = omitted_end;
        }
        row.series.push((offset + end, s["bits_per_second"].as_f64().unwrap_or(0.0)));
    }

    drain();
    progress.step(&format!("{tag}: TCP, 8 flows"));
    let v = iperf(pod, server, egress, &[base.as_slice(), &["-O", "1", "-P", "8"]].concat(), opts.seconds)?;
    row.tcp8_ratio = v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(f64::NAN) / r;
    row.retransmits_8flow = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);

    drain();
    progress.step(&format!("{tag}: UDP offered at 2x"));
    let offered = (2 * rate).to_string();
    let v = iperf(pod, server, egress, &[base.as_slice(), &["-O", "1", "-u", "-b", &offered]].concat(), opts.seconds)?;
    row.udp_2x_delivered_ratio = v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(f64::NAN) / r;
    drain();
    Ok(row)
}

/// Lets queues from the previous test drain (the reference plugin's TBF
/// holds seconds of data at 10M) and buckets refill.
fn drain() {
    std::thread::sleep(Duration::from_secs(2));
}

/// The burst our plugin actually configured, read back from the pod's state
/// with `bpf-ratelimit stats` (not recomputed here, so it cannot drift).
fn configured_burst_bytes(ingress: bool) -> Result<f64> {
    let plugin = std::env::current_exe()?.parent().unwrap().parent().unwrap().join("bpf-ratelimit");
    let out = Command::new(plugin).args(["stats", &format!("/sys/fs/bpf/brl-bench-{}", std::process::id())]).output()?;
    let v: Value = serde_json::from_slice(&out.stdout).context("bpf-ratelimit stats printed no JSON")?;
    let dir = if ingress { "ingress" } else { "egress" };
    v["pods"][0]["state"][dir]["burst"].as_f64().context("no shaped pod in bpf-ratelimit stats")
}

fn timing(cni: &Cni, plugin: Plugin, n: usize, progress: &mut Progress) -> Result<Timing> {
    let mut adds = Vec::new();
    let mut dels = Vec::new();
    let mut pods = Vec::new();
    let added = (|| -> Result<()> {
        for i in 0..n {
            let mut pod = CniPod::new(&format!("brlt-{}-{}-{i}", plugin_tag(plugin), std::process::id()), chain(cni, plugin), runtime_config(Some(10_000_000)))?;
            let t = cni.add(&mut pod);
            // Kept even when ADD failed, so that it is DELed below.
            pods.push(pod);
            adds.push(t?.as_secs_f64() * 1e3);
            if i % 10 == 9 {
                progress.step(&format!("{}: ADD {} pods", plugin.label(), i + 1));
            }
        }
        Ok(())
    })();
    // DEL every pod, also after a failure: the reference plugin leaves ifb
    // devices on the host otherwise.
    let mut del_error = None;
    for pod in pods.drain(..).rev() {
        match cni.del(&pod) {
            Ok(t) => dels.push(t.as_secs_f64() * 1e3),
            Err(e) => del_error = Some(e),
        }
    }
    added?;
    if let Some(e) = del_error {
        return Err(e);
    }
    progress.step(&format!("{}: DEL {n} pods", plugin.label()));
    Ok(Timing {
        plugin: plugin.label().into(),
        add_median_ms: percentile(&adds, 0.5),
        add_p99_ms: percentile(&adds, 0.99),
        del_median_ms: percentile(&dels, 0.5),
        del_p99_ms: percentile(&dels, 0.99),
    })
}

fn plugin_tag(p: Plugin) -> &'static str {
    match p {
        Plugin::Ours => "o",
        Plugin::Reference => "r",
    }
}

fn chain(cni: &Cni, plugin: Plugin) -> Vec<Value> {
    let shaper = match plugin {
        Plugin::Ours => json!({"type": "bpf-ratelimit", "pinRoot": format!("/sys/fs/bpf/brl-bench-{}", std::process::id())}),
        Plugin::Reference => json!({"type": "bandwidth"}),
    };
    vec![cni.bridge(), shaper]
}

fn parse_args() -> Result<Options> {
    let mut opts = Options {
        rates: vec![("10M".into(), 10_000_000), ("100M".into(), 100_000_000), ("1G".into(), 1_000_000_000)],
        seconds: 6,
        pods_for_timing: 100,
        out_dir: PathBuf::from("bench/results"),
        rate_table: true,
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
                "workloads" => opts.rate_table = false,
                other => bail!("--only takes rates or workloads, not {other}"),
            },
            other => bail!("unknown option {other}; options: --rates 10M,100M,1G --seconds 6 --pods 100 --out bench/results --only rates|workloads"),
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
    let rate_steps = if opts.rate_table { opts.rates.len() * per_rate + 2 * (opts.pods_for_timing / 10 + 1) } else { 0 };
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
    let timings = if opts.rate_table {
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

fn markdown(rows: &[Row], bpf: &BTreeMap<String, f64>, timings: &[Timing]) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        return s; // --only workloads
    }
    let _ = writeln!(s, "| plugin | rate | dir | TCP 1 flow ÷ limit | TCP 8 flows ÷ limit | retrans 1 / 8 flows | ping RTT idle / loaded mean / p99 (ms) | added RTT (ms) | UDP 2× delivered ÷ limit | 1st second ÷ (rate·1s + burst) | 1st second ÷ rate·1s | burst (bytes) |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {:.3} | {} / {} | {:.3} / {:.3} / {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.0} |",
            r.plugin, r.rate, r.direction, r.tcp1_ratio, r.tcp8_ratio, r.retransmits_1flow, r.retransmits_8flow,
            r.rtt_idle_ms, r.rtt_loaded_mean_ms, r.rtt_loaded_p99_ms, r.rtt_added_mean_ms, r.udp_2x_delivered_ratio,
            r.first_second_ratio, r.first_second_over_rate, r.burst_bytes
        );
    }
    let _ = writeln!(s, "\nBPF cost per packet (bpf-ratelimit cgroup_skb programs, run_time_ns ÷ run_cnt, all tests at that rate):\n");
    let _ = writeln!(s, "| rate | ns/packet |\n|---|---|");
    for (rate, ns) in bpf {
        let _ = writeln!(s, "| {rate} | {ns:.0} |");
    }
    let _ = writeln!(s, "\nADD / DEL wall time of the shaping plugin itself (bridge not included):\n");
    let _ = writeln!(s, "| plugin | ADD median (ms) | ADD p99 (ms) | DEL median (ms) | DEL p99 (ms) |\n|---|---|---|---|---|");
    for t in timings {
        let _ = writeln!(s, "| {} | {:.1} | {:.1} | {:.1} | {:.1} |", t.plugin, t.add_median_ms, t.add_p99_ms, t.del_median_ms, t.del_p99_ms);
    }
    if let [ours, reference] = timings {
        let _ = writeln!(s, "\nADD p99 ratio ours ÷ reference: {:.2}", ours.add_p99_ms / reference.add_p99_ms);
    }
    s
}

/// Throughput over time of the 1-flow TCP runs: one panel per rate and
/// direction, both plugins, normalised to the limit.
fn svg(rows: &[Row], opts: &Options) -> String {
    let (pw, ph, m) = (420.0, 220.0, 40.0);
    let cols = 2.0;
    let nrows = opts.rates.len() as f64;
    let (w, h) = (cols * pw, nrows * ph + 30.0);
    let mut s = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(s, r##"<text x="10" y="18" font-size="13">TCP throughput ÷ limit over time (1 flow, 0.2 s intervals). <tspan fill="#1f77b4">bpf-ratelimit</tspan> vs <tspan fill="#d62728">bandwidth (reference)</tspan></text>"##);
    for (ri, (rate_name, _)) in opts.rates.iter().enumerate() {
        for (ci, dir) in ["egress", "ingress"].iter().enumerate() {
            let (x0, y0) = (ci as f64 * pw + m, 30.0 + ri as f64 * ph + 20.0);
            let (iw, ih) = (pw - 1.5 * m, ph - 2.0 * m);
            let ymax = 2.0;
            let _ = write!(s, r##"<rect x="{x0}" y="{y0}" width="{iw}" height="{ih}" fill="none" stroke="#999"/>"##);
            let _ = write!(s, r#"<text x="{x0}" y="{}">{rate_name} {dir}</text>"#, y0 - 4.0);
            let y1 = y0 + ih - ih / ymax;
            let _ = write!(s, r##"<line x1="{x0}" y1="{y1}" x2="{}" y2="{y1}" stroke="#999" stroke-dasharray="3,3"/><text x="{}" y="{}">1.0</text><text x="{}" y="{}">2.0</text><text x="{}" y="{}">0</text>"##,
                x0 + iw, x0 - 22.0, y1 + 4.0, x0 - 22.0, y0 + 8.0, x0 - 12.0, y0 + ih);
            let tmax = opts.seconds as f64;
            let _ = write!(s, r#"<text x="{}" y="{}">{tmax} s</text>"#, x0 + iw - 20.0, y0 + ih + 14.0);
            for (plugin, colour) in [("bpf-ratelimit", "#1f77b4"), ("bandwidth (reference)", "#d62728")] {
                let Some(row) = rows.iter().find(|r| r.plugin == plugin && &r.rate == rate_name && r.direction == *dir) else { continue };
                let rate = bpf_ratelimit::quantity::parse(rate_name).unwrap_or(1) as f64;
                let pts: Vec<String> = row
                    .series
                    .iter()
                    .map(|(t, bps)| {
                        let x = x0 + (t / tmax).min(1.0) * iw;
                        let y = y0 + ih - (bps / rate).min(ymax) / ymax * ih;
                        format!("{x:.1},{y:.1}")
                    })
                    .collect();
                let _ = write!(s, r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#, pts.join(" "));
            }
        }
    }
    s.push_str("</svg>\n");
    s
}
