//! The traffic real pods make, side by side for both plugins (issue 7's
//! table): a sidecar over loopback, 16 KB requests from an idle pod and
//! beside the pod's own upload, a bulk upload beside 20 light keep-alive
//! connections, AF_PACKET frames, 64-byte TCP_NODELAY writes, and UDP beside
//! TCP. Wire volumes are read on the server's interface, past every shaper.
//! Load comes from iperf3 and tests/tools/podload.py.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::{chain, drain, ip, plugin_tag, run_with_timeout, runtime_config, Cni, CniPod, Kill, Plugin, Progress, Server};

const PODLOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/podload.py");
const RR_PORT: &str = "7000";
const RATE: u64 = 10_000_000;
const BULK_RATE: u64 = 100_000_000;
const LIGHT_CONNS: u32 = 20;
const LIGHT_BPS: u64 = 16_000;

#[derive(Debug, Default, Clone, Serialize)]
pub struct WorkloadRow {
    pub plugin: String,
    /// App <-> sidecar over 127.0.0.1 inside a 10M pod, bit/s.
    pub sidecar_bps: f64,
    /// 16 KB requests from an idle 10M pod, one every 300 ms.
    pub idle_request_p50_ms: f64,
    pub idle_request_p99_ms: f64,
    /// 16 KB requests beside the pod's own 10M upload.
    pub loaded_request_p50_ms: f64,
    pub loaded_request_p99_ms: f64,
    pub loaded_request_failed: u64,
    /// 16 KB responses to short requests beside the pod's own 10M download.
    pub response_beside_download_p50_ms: f64,
    pub response_beside_download_p99_ms: f64,
    pub response_beside_download_failed: u64,
    /// 100M upload beside 20 connections at 16 kbit/s, ÷ what they leave.
    pub bulk_beside_light_ratio: f64,
    /// 5 MB of AF_PACKET frames offered at full speed from a 10M pod: the
    /// wire rate while they were sent ÷ the limit.
    pub raw_wire_ratio: f64,
    /// 64-byte TCP_NODELAY writes at 10M: wire rate after the first 2 s ÷ limit.
    pub nodelay_wire_ratio: f64,
    /// TCP bulk + UDP at 0.6 × rate, at 10M: wire rate after the first 2 s ÷ limit.
    pub tcp_udp_wire_ratio: f64,
}

fn server_rx_bytes(server: &Server) -> Result<u64> {
    let out = ip(&["-n", server.netns.file_name().unwrap().to_str().unwrap(), "-s", "-j", "link", "show", "eth0"])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v[0]["stats64"]["rx"]["bytes"].as_u64().context("no rx bytes")
}

fn json_of(cmd: Command, timeout_s: u64) -> Result<Value> {
    let out = run_with_timeout(cmd, Duration::from_secs(timeout_s))?;
    serde_json::from_slice(&out.stdout).with_context(|| format!("no JSON: {}", String::from_utf8_lossy(&out.stderr)))
}

fn spawn(mut cmd: Command) -> Result<Kill> {
    Ok(Kill(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?))
}

/// The wire rate the server received while `runs` ran, from `skip` seconds
/// after their start (past any burst an idle pod may send at once; the
/// reference plugin's, given containerd's "no burst" value, is 537 MB) to
/// their completion, as a ratio of the limit. Clients are never killed
/// mid-test: an iperf3 server whose client vanished stays busy.
fn wire_ratio(server: &Server, runs: Vec<Command>, rate: u64, skip: f64) -> Result<f64> {
    let handles: Vec<_> =
        runs.into_iter().map(|c| std::thread::spawn(move || run_with_timeout(c, Duration::from_secs(60)))).collect();
    std::thread::sleep(Duration::from_secs_f64(skip));
    let rx0 = server_rx_bytes(server)?;
    let started = Instant::now();
    for h in handles {
        let out = h.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        if !out.status.success() {
            anyhow::bail!("load failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
    }
    let bytes = server_rx_bytes(server)? - rx0;
    Ok(bytes as f64 * 8.0 / started.elapsed().as_secs_f64() / rate as f64)
}

fn pod_cmd(pod: &CniPod, program: &str, args: &[&str]) -> Result<Command> {
    let mut c = pod.command(program)?;
    c.args(args);
    Ok(c)
}

/// One plugin's row.
pub fn measure(cni: &Cni, plugin: Plugin, server: &Server, progress: &mut Progress) -> Result<WorkloadRow> {
    let label = plugin.label();
    let mut row = WorkloadRow { plugin: label.into(), ..Default::default() };
    let srv = server.ip.as_str();

    let mut pod = CniPod::new(&format!("brlw-{}-{}", plugin_tag(plugin), std::process::id()), chain(cni, plugin), runtime_config(Some(RATE)))?;
    cni.add(&mut pod)?;
    let measured = (|| -> Result<()> {
        // A runtime brings the pod's loopback up (containerd's loopback
        // plugin); the chain here does not.
        ip(&["-n", &pod.name, "link", "set", "lo", "up"])?;
        progress.step(&format!("{label}: sidecar over loopback"));
        let _sidecar = spawn(pod_cmd(&pod, "iperf3", &["-s", "-p", "5301", "-B", "127.0.0.1"])?)?;
        std::thread::sleep(Duration::from_millis(300));
        let v = json_of(pod_cmd(&pod, "iperf3", &["-c", "127.0.0.1", "-p", "5301", "-J", "-t", "3"])?, 30)?;
        row.sidecar_bps = v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(f64::NAN);

        progress.step(&format!("{label}: 16 KB requests from an idle pod"));
        drain();
        let v = json_of(pod_cmd(&pod, "python3", &[PODLOAD, "requests", srv, RR_PORT, "16384", "30", "300"])?, 60)?;
        row.idle_request_p50_ms = v["p50_ms"].as_f64().unwrap_or(f64::NAN);
        row.idle_request_p99_ms = v["p99_ms"].as_f64().unwrap_or(f64::NAN);

        progress.step(&format!("{label}: 16 KB requests beside the pod's upload"));
        drain();
        let upload = pod_cmd(&pod, "iperf3", &["-c", srv, "-t", "12"])?;
        let upload = std::thread::spawn(move || run_with_timeout(upload, Duration::from_secs(40)));
        std::thread::sleep(Duration::from_secs(2));
        let v = json_of(pod_cmd(&pod, "python3", &[PODLOAD, "requests", srv, RR_PORT, "16384", "50", "100"])?, 90)?;
        row.loaded_request_p50_ms = v["p50_ms"].as_f64().unwrap_or(f64::NAN);
        row.loaded_request_p99_ms = v["p99_ms"].as_f64().unwrap_or(f64::NAN);
        row.loaded_request_failed = v["failed"].as_u64().unwrap_or(0);
        upload.join().map_err(|_| anyhow::anyhow!("the upload thread panicked"))??;

        progress.step(&format!("{label}: 16 KB responses beside the pod's download"));
        drain();
        let download = pod_cmd(&pod, "iperf3", &["-c", srv, "-R", "-t", "12"])?;
        let download = std::thread::spawn(move || run_with_timeout(download, Duration::from_secs(40)));
        std::thread::sleep(Duration::from_secs(2));
        let v = json_of(pod_cmd(&pod, "python3", &[PODLOAD, "requests", srv, RR_PORT, "100", "50", "100", "16384"])?, 90)?;
        row.response_beside_download_p50_ms = v["p50_ms"].as_f64().unwrap_or(f64::NAN);
        row.response_beside_download_p99_ms = v["p99_ms"].as_f64().unwrap_or(f64::NAN);
        row.response_beside_download_failed = v["failed"].as_u64().unwrap_or(0);
        download.join().map_err(|_| anyhow::anyhow!("the download thread panicked"))??;

        progress.step(&format!("{label}: AF_PACKET frames"));
        drain();
        // 5 MB of frames as fast as the pod can send them.
        let raw = pod_cmd(&pod, "python3", &[PODLOAD, "raw", "eth0", "5000", "1000"])?;
        row.raw_wire_ratio = wire_ratio(server, vec![raw], RATE, 0.0)?;

        progress.step(&format!("{label}: 64-byte TCP_NODELAY writes"));
        drain();
        let nodelay = pod_cmd(&pod, "iperf3", &["-c", srv, "-t", "8", "-N", "-l", "64"])?;
        row.nodelay_wire_ratio = wire_ratio(server, vec![nodelay], RATE, 2.0)?;

        progress.step(&format!("{label}: TCP beside UDP"));
        drain();
        let tcp = pod_cmd(&pod, "iperf3", &["-c", srv, "-t", "8"])?;
        let udp = pod_cmd(&pod, "iperf3", &["-c", srv, "-p", "5202", "-u", "-b", &(RATE * 6 / 10).to_string(), "-t", "8"])?;
        row.tcp_udp_wire_ratio = wire_ratio(server, vec![tcp, udp], RATE, 2.0)?;
        Ok(())
    })();
    cni.del(&pod)?;
    drop(pod);
    measured?;
    drain();

    progress.step(&format!("{label}: 100M upload beside {LIGHT_CONNS} light connections"));
    let mut pod = CniPod::new(&format!("brlw-{}-{}", plugin_tag(plugin), std::process::id()), chain(cni, plugin), runtime_config(Some(BULK_RATE)))?;
    cni.add(&mut pod)?;
    let measured = (|| -> Result<()> {
        let conns = LIGHT_CONNS.to_string();
        let bps = LIGHT_BPS.to_string();
        let _light = spawn(pod_cmd(&pod, "python3", &[PODLOAD, "light", srv, RR_PORT, &conns, &bps, "10"])?)?;
        std::thread::sleep(Duration::from_secs(1));
        let v = json_of(pod_cmd(&pod, "iperf3", &["-c", srv, "-J", "-t", "7", "-O", "1"])?, 40)?;
        let left = (BULK_RATE - u64::from(LIGHT_CONNS) * LIGHT_BPS) as f64;
        row.bulk_beside_light_ratio = v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(f64::NAN) / left;
        Ok(())
    })();
    cni.del(&pod)?;
    measured?;
    drain();
    Ok(row)
}

/// The servers the workloads talk to, in the server namespace: the
/// request/response server and a second iperf3 for UDP beside TCP.
pub fn start_servers(server: &Server) -> Result<Vec<Kill>> {
    let in_server = |program: &str, args: &[&str]| -> Result<Kill> {
        let mut c = bpf_ratelimit::testbed::in_netns(Command::new(program), &server.netns, None)?;
        c.args(args);
        spawn(c)
    };
    let servers = vec![in_server("python3", &[PODLOAD, "serve", RR_PORT])?, in_server("iperf3", &["-s", "-p", "5202"])?];
    std::thread::sleep(Duration::from_millis(500));
    Ok(servers)
}

pub fn markdown(rows: &[WorkloadRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| plugin | sidecar over loopback, 10M pod (Gbit/s) | idle 16 KB request p50 / p99 (ms) | 16 KB requests beside own upload p50 / p99 (ms), failed | 16 KB responses beside own download p50 / p99 (ms), failed | 100M upload beside 20 light conns ÷ what they leave | AF_PACKET on the wire ÷ limit | 64-byte NODELAY writes, wire ÷ limit | TCP + UDP, wire ÷ limit |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} / {:.2} | {:.1} / {:.1}, {} | {:.1} / {:.1}, {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            r.plugin,
            r.sidecar_bps / 1e9,
            r.idle_request_p50_ms,
            r.idle_request_p99_ms,
            r.loaded_request_p50_ms,
            r.loaded_request_p99_ms,
            r.loaded_request_failed,
            r.response_beside_download_p50_ms,
            r.response_beside_download_p99_ms,
            r.response_beside_download_failed,
            r.bulk_beside_light_ratio,
            r.raw_wire_ratio,
            r.nodelay_wire_ratio,
            r.tcp_udp_wire_ratio
        );
    }
    s
}
