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
    /// and again just before the end.
    pub fn bulk(&self, b: &Bulk) -> Result<BulkResult> {
        let total = b.omit + b.seconds;
        let mut cmd = self.pod_command("iperf3")?;
        cmd.args(["-c", SERVER_IP, "-p", "5201", "-J", "--connect-timeout", "3000"])
            .args(["-t", &total.to_string(), "-O", &b.omit.to_string(), "-P", &b.flows.to_string(), "-C", &b.cc]);
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
