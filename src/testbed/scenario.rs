//! The traffic scenarios that tests assert and the benchmark reports, each
//! defined once: a scenario runs on a testbed, whoever shapes it (this
//! plugin, the reference one, or nothing), and returns what it measured.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::iperf::Transfer;
use super::{run_with_timeout, Testbed, SERVER_IP};

/// Which way a transfer goes, seen from the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// The pod sends (its egress).
    Upload,
    /// The pod receives (its ingress).
    Download,
}

impl Way {
    pub fn name(self) -> &'static str {
        match self {
            Way::Upload => "upload",
            Way::Download => "download",
        }
    }
}

/// A bulk TCP transfer between the pod and the server.
#[derive(Debug, Clone)]
pub struct Bulk {
    pub way: Way,
    /// The sender's congestion control (`cubic`, `bbr`).
    pub cc: String,
    pub flows: u32,
    /// Seconds left out first: slow start, and the burst of a full bucket.
    pub omit: u32,
    /// Seconds measured.
    pub seconds: u32,
    /// UDP at this many bits/s instead of TCP (`cc` and `flows` then unused).
    pub udp_bps: Option<u64>,
    /// Over IPv6 instead of IPv4.
    pub ipv6: bool,
}

impl Bulk {
    /// `flows` TCP flows from a `cc` sender, `omit` seconds left out, `seconds` measured.
    pub fn tcp(way: Way, cc: &str, flows: u32, omit: u32, seconds: u32) -> Self {
        Bulk { way, cc: cc.into(), flows, omit, seconds, udp_bps: None, ipv6: false }
    }

    /// The same over IPv6.
    pub fn over_ipv6(self) -> Self {
        Bulk { ipv6: true, ..self }
    }

    /// UDP offered at `bps`.
    pub fn udp(way: Way, bps: u64, omit: u32, seconds: u32) -> Self {
        Bulk { way, cc: String::new(), flows: 1, omit, seconds, udp_bps: Some(bps), ipv6: false }
    }
}

/// What a bulk transfer delivered.
#[derive(Debug, Clone)]
pub struct BulkResult {
    pub transfer: Transfer,
    /// Bits per second on the wire (every frame, per segment, with its
    /// headers) in the measured seconds: upload at the far end of the
    /// path, download where it reaches the pod.
    pub wire_bps: f64,
}

impl Testbed {
    /// The wire bytes so far in `way`: the delay line for what the pod
    /// sent, the counter on its interface for what it received.
    pub fn wire_bytes(&self, way: Way) -> Result<u64> {
        match way {
            Way::Upload => Ok(self.wire()?.a_to_b.wire_bytes),
            Way::Download => Ok(self.pod_wire()?.bytes),
        }
    }

    /// Runs a bulk transfer from a client in the pod (with `-R` for a
    /// download), and samples the wire once the omitted seconds are over
    /// and again just before the end. iperf3 runs `-O omit` seconds and
    /// then `-t seconds` more (its `-t` does not include the omitted ones),
    /// so the transfer lasts omit + seconds.
    pub fn bulk(&self, b: &Bulk) -> Result<BulkResult> {
        let total = b.omit + b.seconds;
        let mut cmd = self.pod_command("iperf3")?;
        let server = if b.ipv6 { super::SERVER_IP6 } else { SERVER_IP };
        cmd.args(["-c", server, "-p", "5201", "-J", "--connect-timeout", "3000"])
            .args(["-t", &b.seconds.to_string(), "-O", &b.omit.to_string()]);
        match b.udp_bps {
            Some(bps) => cmd.args(["-u", "-b", &bps.to_string()]),
            None => cmd.args(["-P", &b.flows.to_string(), "-C", &b.cc]),
        };
        if b.way == Way::Download {
            cmd.arg("-R");
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().context("cannot run iperf3")?;
        let started = Instant::now();
        let sample = |at: Duration| -> Result<(u64, Instant)> {
            let now = started.elapsed();
            if at > now {
                std::thread::sleep(at - now);
            }
            Ok((self.wire_bytes(b.way)?, Instant::now()))
        };
        // A few hundred ms inside the measured seconds at both ends.
        let sampled = sample(Duration::from_millis(u64::from(b.omit) * 1000 + 300))
            .and_then(|first| Ok((first, sample(Duration::from_millis(u64::from(total) * 1000 - 300))?)));
        let out = child.wait_with_output().context("iperf3 did not finish")?;
        let ((w0, t0), (w1, t1)) = sampled?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("iperf3 printed no JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
        let transfer = Transfer::from_json(&v)?;
        let seconds = t1.duration_since(t0).as_secs_f64();
        if seconds <= 0.0 {
            bail!("the transfer ended before it was measured");
        }
        Ok(BulkResult { transfer, wire_bps: (w1 - w0) as f64 * 8.0 / seconds })
    }
}

/// Runs `cmd` to completion within `timeout`; its stdout as JSON.
pub fn run_json(cmd: std::process::Command, timeout: Duration) -> Result<serde_json::Value> {
    let out = run_with_timeout(cmd, timeout)?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!("no JSON: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

/// The request/response tool of the workload tests and the benchmark.
pub const PODLOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/podload.py");
/// Where the testbed's request/response server listens.
pub const RR_PORT: &str = "7000";

/// Requests from the pod to the server, one every `gap_ms`.
#[derive(Debug, Clone)]
pub struct Requests {
    /// Bytes the pod sends per request, and the server answers with.
    pub size: u32,
    pub response: u32,
    pub count: u32,
    pub gap_ms: u32,
    /// A new connection per request (its handshake timed too), or one kept alive.
    pub fresh: bool,
}

/// Request latencies, in ms.
#[derive(Debug, Clone, Copy)]
pub struct Latencies {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub samples: u64,
    pub failed: u64,
}

impl Latencies {
    fn from_json(v: &serde_json::Value) -> Result<Self> {
        let num = |k: &str| v[k].as_f64().with_context(|| format!("podload printed no {k}: {v}"));
        Ok(Latencies { p50_ms: num("p50_ms")?, p99_ms: num("p99_ms")?, samples: num("samples")? as u64, failed: num("failed")? as u64 })
    }
}

impl Testbed {
    /// Starts the request/response server in the server's netns.
    pub fn start_rr_server(&mut self) -> Result<()> {
        let mut cmd = self.server_command("python3")?;
        cmd.args([PODLOAD, "serve", RR_PORT]).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().context("cannot start podload serve (is python3 installed?)")?;
        self.keep(child);
        super::wait_for_port(&self.pod_netns_path(), SERVER_IP, RR_PORT)
    }

    /// Sends `r` from the pod; their latencies.
    pub fn requests(&self, r: &Requests) -> Result<Latencies> {
        let mut cmd = self.pod_command("python3")?;
        cmd.args([PODLOAD, "requests", SERVER_IP, RR_PORT])
            .args([r.size.to_string(), r.count.to_string(), r.gap_ms.to_string(), r.response.to_string()]);
        if r.fresh {
            cmd.arg("fresh");
        }
        let timeout = Duration::from_millis(u64::from(r.count) * (u64::from(r.gap_ms) + 500) + 10_000);
        Latencies::from_json(&run_json(cmd, timeout)?)
    }

    /// Requests made while the pod runs `download` (or any bulk transfer),
    /// started after its omitted seconds; both results, so that a test can
    /// hold the transfer to its band in the same run.
    pub fn requests_beside(&self, bulk: &Bulk, r: &Requests) -> Result<(Latencies, BulkResult)> {
        std::thread::scope(|scope| {
            let transfer = scope.spawn(|| self.bulk(bulk));
            std::thread::sleep(Duration::from_secs(u64::from(bulk.omit)));
            let latencies = self.requests(r);
            let transfer = transfer.join().map_err(|_| anyhow::anyhow!("the transfer thread panicked"))?;
            Ok((latencies?, transfer?))
        })
    }

    /// Bytes on the wire in the first second of a transfer from an idle
    /// pod: from when its data starts to move (connection set-up excluded).
    pub fn first_second(&self, way: Way) -> Result<u64> {
        let mut cmd = self.pod_command("iperf3")?;
        cmd.args(["-c", SERVER_IP, "-p", "5201", "-t", "3", "--connect-timeout", "3000"]);
        if way == Way::Download {
            cmd.arg("-R");
        }
        let base = self.wire_bytes(way)?;
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("cannot run iperf3")?;
        let deadline = Instant::now() + Duration::from_secs(3);
        // iperf3's control connection moves a few kB; data is more.
        let started = loop {
            let now = self.wire_bytes(way)?;
            if now - base > 16_384 {
                break (now, Instant::now());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("no data moved within 3 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        std::thread::sleep(Duration::from_secs(1).saturating_sub(started.1.elapsed()));
        let bytes = self.wire_bytes(way)? - base;
        let _ = child.kill();
        let _ = child.wait();
        Ok(bytes)
    }
}
