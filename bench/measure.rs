//! Measurements: iperf3 runs, ping RTTs, per-program BPF run time, the
//! configured burst, and ADD/DEL timing; one Row per plugin, rate and direction.

use super::*;

#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) plugin: String,
    pub(crate) rate: String,
    pub(crate) direction: String,
    pub(crate) tcp1_ratio: f64,
    pub(crate) tcp8_ratio: f64,
    pub(crate) retransmits_1flow: u64,
    pub(crate) retransmits_8flow: u64,
    pub(crate) rtt_idle_ms: f64,
    pub(crate) rtt_loaded_mean_ms: f64,
    pub(crate) rtt_loaded_p99_ms: f64,
    pub(crate) rtt_added_mean_ms: f64,
    pub(crate) udp_2x_delivered_ratio: f64,
    pub(crate) first_second_bytes: f64,
    pub(crate) burst_bytes: f64,
    pub(crate) first_second_ratio: f64,
    /// Bytes in the first second ÷ (rate × 1 s): how far a fresh pod overshoots.
    pub(crate) first_second_over_rate: f64,
    /// (seconds, bits/s) every 0.2 s of the 1-flow TCP run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) series: Vec<(f64, f64)>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Timing {
    pub(crate) plugin: String,
    pub(crate) add_median_ms: f64,
    pub(crate) add_p99_ms: f64,
    pub(crate) del_median_ms: f64,
    pub(crate) del_p99_ms: f64,
}

pub(crate) struct Progress {
    pub(crate) done: usize,
    pub(crate) total: usize,
    pub(crate) started: Instant,
}

impl Progress {
    pub(crate) fn step(&mut self, what: &str) {
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
pub(crate) fn iperf(pod: &CniPod, server: &Server, egress: bool, args: &[&str], seconds: u32) -> Result<Value> {
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
pub(crate) fn start_ping(pod: &CniPod, server: &str, seconds: u32) -> Result<Child> {
    Ok(pod
        .command("ping")?
        .args(["-n", "-i", "0.01", "-w", &seconds.to_string(), server])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?)
}

pub(crate) fn ping_times(child: Child) -> Result<Vec<f64>> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect())
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

pub(crate) fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) fn bpf_prog_stats() -> BTreeMap<String, (u64, u64)> {
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
pub(crate) struct Server {
    pub(crate) ip: String,
    pub(crate) netns: PathBuf,
}

pub(crate) fn measure(
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
pub(crate) fn drain() {
    std::thread::sleep(Duration::from_secs(2));
}

/// The burst our plugin actually configured, read back from the pod's state
/// with `bpf-ratelimit stats` (not recomputed here, so it cannot drift).
pub(crate) fn configured_burst_bytes(ingress: bool) -> Result<f64> {
    let plugin = std::env::current_exe()?.parent().unwrap().parent().unwrap().join("bpf-ratelimit");
    let out = Command::new(plugin).args(["stats", &format!("/sys/fs/bpf/brl-bench-{}", std::process::id())]).output()?;
    let v: Value = serde_json::from_slice(&out.stdout).context("bpf-ratelimit stats printed no JSON")?;
    let dir = if ingress { "ingress" } else { "egress" };
    v["pods"][0]["state"][dir]["burst"].as_f64().context("no shaped pod in bpf-ratelimit stats")
}

pub(crate) fn timing(cni: &Cni, plugin: Plugin, n: usize, progress: &mut Progress) -> Result<Timing> {
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

