//! The traffic scenarios that tests assert and the benchmark reports, each
//! defined once: a scenario runs on a testbed, whoever shapes it (this
//! plugin, the reference one, or nothing), and returns what it measured.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::iperf::Transfer;
use super::wire::WireCount;
use super::{run_with_timeout, Background, Testbed, POD_IP, SERVER_IP, SERVER_IP6};

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
    /// More iperf3 client arguments, after the scenario's own: `-N -l 64`
    /// (64-byte TCP_NODELAY writes), `-M 88` (a tiny MSS).
    pub args: Vec<String>,
    /// The server's address, where it is not SERVER_IP (SERVER_IP6): the
    /// far end of a tunnel the pod made (testbed::tunnel).
    pub server: Option<String>,
    /// Run the client in the pod's netns but outside its cgroup: the pod's
    /// sock_ops never sees its sockets, so its receive windows and pacing
    /// are not sized (a control: the same path with them removed).
    pub outside_cgroup: bool,
}

impl Bulk {
    /// `flows` TCP flows from a `cc` sender, `omit` seconds left out, `seconds` measured.
    pub fn tcp(way: Way, cc: &str, flows: u32, omit: u32, seconds: u32) -> Self {
        Bulk { way, cc: cc.into(), flows, omit, seconds, udp_bps: None, ipv6: false, args: Vec::new(), server: None, outside_cgroup: false }
    }

    /// The same over IPv6.
    pub fn over_ipv6(self) -> Self {
        Bulk { ipv6: true, ..self }
    }

    /// UDP offered at `bps`.
    pub fn udp(way: Way, bps: u64, omit: u32, seconds: u32) -> Self {
        Bulk { way, cc: String::new(), flows: 1, omit, seconds, udp_bps: Some(bps), ipv6: false, args: Vec::new(), server: None, outside_cgroup: false }
    }

    /// The same transfer to the server at `addr`.
    pub fn to(self, addr: &str) -> Self {
        Bulk { server: Some(addr.into()), ..self }
    }

    /// The same transfer from outside the pod's cgroup (`outside_cgroup`).
    pub fn outside_cgroup(self) -> Self {
        Bulk { outside_cgroup: true, ..self }
    }

    /// The same transfer with more iperf3 client arguments.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
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
    /// The measured window's length.
    pub seconds: f64,
    /// What the pod's ingress queue held during the measured seconds, for
    /// a download into a pod that has one.
    pub queue: Option<QueueDepth>,
}

/// Bytes waiting in the pod's ingress queue (its TBF's backlog, as the
/// kernel reports it), sampled every QUEUE_SAMPLE_EVERY.
#[derive(Debug, Clone, Copy)]
pub struct QueueDepth {
    pub median: u64,
    pub max: u64,
    pub samples: usize,
}

const QUEUE_SAMPLE_EVERY: Duration = Duration::from_millis(100);

impl QueueDepth {
    fn of(mut samples: Vec<u64>) -> Option<Self> {
        samples.sort_unstable();
        Some(QueueDepth { median: *samples.get(samples.len() / 2)?, max: *samples.last()?, samples: samples.len() })
    }
}

impl Testbed {
    /// The wire bytes so far in `way`: the delay line for what the pod
    /// sent, the counter on its interface for what it received.
    pub fn wire_bytes(&self, way: Way) -> Result<u64> {
        Ok(self.wire_count(way)?.bytes)
    }

    /// Runs a bulk transfer from a client in the pod (with `-R` for a
    /// download), and samples the wire once the omitted seconds are over
    /// and again just before the end. iperf3 runs `-O omit` seconds and
    /// then `-t seconds` more (its `-t` does not include the omitted ones),
    /// so the transfer lasts omit + seconds.
    pub fn bulk(&self, b: &Bulk) -> Result<BulkResult> {
        let total = b.omit + b.seconds;
        let mut cmd = if b.outside_cgroup {
            super::in_netns(Command::new("iperf3"), &self.pod_netns_path(), None)?
        } else {
            self.pod_command("iperf3")?
        };
        let server = b.server.as_deref().unwrap_or(if b.ipv6 { super::SERVER_IP6 } else { SERVER_IP });
        cmd.args(["-c", server, "-p", "5201", "-J", "--connect-timeout", "3000"])
            .args(["-t", &b.seconds.to_string(), "-O", &b.omit.to_string()]);
        match b.udp_bps {
            Some(bps) => cmd.args(["-u", "-b", &bps.to_string()]),
            None => cmd.args(["-P", &b.flows.to_string(), "-C", &b.cc]),
        };
        if b.way == Way::Download {
            cmd.arg("-R");
        }
        cmd.args(&b.args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().context("cannot run iperf3")?;
        let started = Instant::now();
        let sample = |at: Duration| -> Result<(u64, Instant)> {
            let now = started.elapsed();
            if at > now {
                std::thread::sleep(at - now);
            }
            let (count, at) = timed(|| self.wire_bytes(b.way))?;
            Ok((count, at))
        };
        // A few hundred ms inside the measured seconds at both ends, and
        // the ingress queue between them.
        let end = Duration::from_millis(u64::from(total) * 1000 - 300);
        let mut backlog = Vec::new();
        let sampled = sample(Duration::from_millis(u64::from(b.omit) * 1000 + 300)).and_then(|first| {
            // Until the queue goes (a test may take the pod's limit off
            // during a transfer).
            let mut watch_queue = b.way == Way::Download && b.udp_bps.is_none();
            while watch_queue && started.elapsed() + QUEUE_SAMPLE_EVERY < end {
                std::thread::sleep(QUEUE_SAMPLE_EVERY);
                match self.ingress_queue_backlog()? {
                    Some(bytes) => backlog.push(bytes),
                    None => watch_queue = false,
                }
            }
            Ok((first, sample(end)?))
        });
        let out = child.wait_with_output().context("iperf3 did not finish")?;
        let ((w0, t0), (w1, t1)) = sampled?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("iperf3 printed no JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
        let transfer = Transfer::from_json(&v)?;
        let seconds = t1.duration_since(t0).as_secs_f64();
        if seconds <= 0.0 {
            bail!("the transfer ended before it was measured");
        }
        Ok(BulkResult { transfer, wire_bps: (w1 - w0) as f64 * 8.0 / seconds, seconds, queue: QueueDepth::of(backlog) })
    }

    /// Bytes in the pod's ingress queue now: the backlog of its TBF (the
    /// root qdisc with our handle, in the pod's netns); None where the pod
    /// has no such queue. An error where `tc` printed what this cannot read.
    pub fn ingress_queue_backlog(&self) -> Result<Option<u64>> {
        let mut cmd = super::in_netns(Command::new("tc"), &self.pod_netns_path(), None)?;
        cmd.args(["-s", "-j", "qdisc", "show"]);
        let v = run_json(cmd, Duration::from_secs(5))?;
        let queues: Vec<&serde_json::Value> = v
            .as_array()
            .context("tc -j qdisc show printed no list")?
            .iter()
            .filter(|q| q["kind"] == "tbf" && q["handle"] == crate::datapath::ingress_queue::HANDLE)
            .collect();
        match queues.as_slice() {
            [q] => q["backlog"].as_u64().map(Some).with_context(|| format!("the ingress queue's stats have no backlog: {q}")),
            [] => Ok(None),
            _ => bail!("the pod has {} ingress queues", queues.len()),
        }
    }
}

/// A counter read and the time it stands for: the middle of the read. A
/// read can take tens of ms (a netlink dump inside the pod's netns, in a
/// TCG guest), which stamped after the read would skew a rate by its
/// variation over the window.
pub fn timed<T>(read: impl FnOnce() -> Result<T>) -> Result<(T, Instant)> {
    let before = Instant::now();
    let value = read()?;
    let after = Instant::now();
    Ok((value, before + after.duration_since(before) / 2))
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
    /// Start no request after this long (those started are waited for):
    /// with a large `count`, requests for as long as a transfer beside them runs.
    pub within_ms: Option<u32>,
    /// Open loop: each request starts on schedule, on its own connection,
    /// whatever the earlier ones are doing, so every shaper compared gets
    /// `count` samples (`within_ms` does not apply).
    pub open_loop: bool,
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
        self.requests_with(self.pod_command("python3")?, r)
    }

    /// Sends `r` from the gateway: the same path to the server with no
    /// shaper on it, the control for the pod's own requests.
    pub fn requests_from_gateway(&self, r: &Requests) -> Result<Latencies> {
        self.requests_with(self.gateway_command("python3")?, r)
    }

    fn requests_with(&self, mut cmd: Command, r: &Requests) -> Result<Latencies> {
        cmd.args([PODLOAD, "requests", SERVER_IP, RR_PORT])
            .args([r.size.to_string(), r.count.to_string(), r.gap_ms.to_string(), r.response.to_string()]);
        if r.fresh {
            cmd.arg("fresh");
        }
        if r.open_loop {
            // Every request started on schedule, the last one given podload's 60 s.
            cmd.arg("open");
            return Latencies::from_json(&run_json(cmd, Duration::from_millis(u64::from(r.count) * u64::from(r.gap_ms) + 75_000))?);
        }
        let mut timeout = Duration::from_millis(u64::from(r.count) * (u64::from(r.gap_ms) + 500) + 10_000);
        if let Some(ms) = r.within_ms {
            cmd.arg(format!("within={:.3}", f64::from(ms) / 1e3));
            timeout = timeout.min(Duration::from_millis(u64::from(ms) + 30_000));
        }
        Latencies::from_json(&run_json(cmd, timeout)?)
    }

    /// Requests made while the pod runs `download` (or any bulk transfer),
    /// started after its omitted seconds; both results, so that a test can
    /// hold the transfer to its band in the same run. (Requests that take
    /// long may outlast the transfer, unless `within_ms` stops them.)
    pub fn requests_beside(&self, bulk: &Bulk, r: &Requests) -> Result<(Latencies, BulkResult)> {
        self.beside(bulk, || self.requests(r))
    }

    /// `r` from the pod and, at the same time, from the gateway (the
    /// control: the same path with no shaper, at the same moment).
    pub fn requests_with_control(&self, r: &Requests) -> Result<(Latencies, Latencies)> {
        std::thread::scope(|scope| {
            let control = scope.spawn(|| self.requests_from_gateway(r));
            let latencies = self.requests(r);
            let control = control.join().map_err(|_| anyhow::anyhow!("the control thread panicked"))?;
            Ok((latencies?, control?))
        })
    }

    /// As `requests_beside`, with the control of `requests_with_control`.
    pub fn requests_beside_with_control(&self, bulk: &Bulk, r: &Requests) -> Result<(Latencies, Latencies, BulkResult)> {
        let ((latencies, control), transfer) = self.beside(bulk, || self.requests_with_control(r))?;
        Ok((latencies, control, transfer))
    }

    /// Runs `during` once `bulk`'s omitted seconds are over, while it runs.
    fn beside<T>(&self, bulk: &Bulk, during: impl FnOnce() -> Result<T>) -> Result<(T, BulkResult)> {
        std::thread::scope(|scope| {
            let transfer = scope.spawn(|| self.bulk(bulk));
            std::thread::sleep(Duration::from_secs(u64::from(bulk.omit)));
            let result = during();
            let transfer = transfer.join().map_err(|_| anyhow::anyhow!("the transfer thread panicked"))?;
            Ok((result?, transfer?))
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

impl Requests {
    /// 100-byte requests, each answered with 16 KB on a new connection (its
    /// handshake timed too), one every `gap_ms`: a response to a pod.
    pub fn fresh_responses(count: u32, gap_ms: u32) -> Self {
        Requests { size: 100, response: 16_384, count, gap_ms, fresh: true, within_ms: None, open_loop: false }
    }

    /// `fresh_responses`, in an open loop: `count` of them whatever the
    /// shaper does to each.
    pub fn open_responses(count: u32, gap_ms: u32) -> Self {
        Requests { open_loop: true, ..Requests::fresh_responses(count, gap_ms) }
    }

    /// 16 KB requests from the pod, each answered with 64 bytes, one every
    /// `gap_ms` on one keep-alive connection.
    pub fn keepalive_uploads(count: u32, gap_ms: u32) -> Self {
        Requests { size: 16_384, response: 64, count, gap_ms, fresh: false, within_ms: None, open_loop: false }
    }
}

/// How many frames on the wire say the senders have started (a few ND or
/// ARP frames of the pod's own are fewer; any sender's traffic is more
/// within milliseconds).
const FIRST_FRAMES: u64 = 32;
/// How long the wire windows wait for the senders' first frames: a sender
/// that is refused (AF_XDP without the compat syscall) sends none.
const FIRST_FRAMES_WITHIN: Duration = Duration::from_secs(20);

/// How long `wire_while_reported` waits for its senders to end by themselves:
/// long, because a sender that ends is never waited for. Under TCG an
/// iperf3 with MSS 88 took over 5 s after its run to hand in its report (the
/// server reads every queued tiny segment first).
pub const SENDER_GRACE: Duration = Duration::from_secs(30);

/// What a sender said when it ended: its exit code (None: it was killed,
/// or ended by a signal) and its output.
#[derive(Debug, Clone)]
pub struct SenderReport {
    pub command: String,
    pub exit: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl SenderReport {
    /// Its report as JSON: the whole of stdout (`iperf3 -J`), else its last
    /// line (the tools in tests/tools, podload.py).
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.stdout).ok().or_else(|| self.stdout.lines().rev().find(|l| !l.trim().is_empty()).and_then(|l| serde_json::from_str(l).ok()))
    }
}

/// What crossed the wire while some senders ran.
#[derive(Debug, Clone, Copy)]
pub struct WireWindow {
    /// Bits per second on the wire (every frame, per segment, with its headers).
    pub bps: f64,
    pub frames_per_s: f64,
    /// The measured time.
    pub seconds: f64,
    /// How long the senders took to put their first frames on the wire
    /// (the window opened `settle` after that).
    pub first_frames_after: f64,
}


impl Testbed {
    /// The frames and bytes on the wire so far in `way` (see `wire_bytes`).
    pub fn wire_count(&self, way: Way) -> Result<WireCount> {
        match way {
            Way::Upload => {
                let c = self.wire()?.a_to_b;
                Ok(WireCount { frames: c.frames, bytes: c.wire_bytes })
            }
            Way::Download => self.pod_wire(),
        }
    }

    /// Starts `senders` (their output discarded), waits `settle` (a full
    /// bucket spent), measures the wire in `way` for `measure`, and stops
    /// them.
    pub fn wire_while(&self, way: Way, senders: Vec<Command>, settle: Duration, measure: Duration) -> Result<WireWindow> {
        let before = self.quiet_wire(way)?;
        let mut running = Vec::new();
        for mut c in senders {
            let child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().with_context(|| format!("cannot start {c:?}"))?;
            running.push(Background(child));
        }
        let window = self.await_first_frames(way, before, &mut running).and_then(|after| self.measure_wire(way, after, settle, measure));
        drop(running);
        window
    }

    /// As `wire_while`, but each sender runs to its own end (killed if it
    /// has not ended `SENDER_GRACE` after the window) and reports: its exit
    /// status and its output, which carries its own count of what it sent.
    /// A sender that never ran then shows, instead of a quiet wire that
    /// passes a "no more than the limit" bound.
    pub fn wire_while_reported(&self, way: Way, senders: Vec<Command>, settle: Duration, measure: Duration) -> Result<(WireWindow, Vec<SenderReport>)> {
        let before = self.quiet_wire(way)?;
        let mut running = Vec::new();
        for mut c in senders {
            let command = format!("{c:?}");
            let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| format!("cannot start {command}"))?;
            // Read as they write, so that a full pipe never stalls a sender.
            let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
                std::thread::spawn(move || {
                    let mut text = String::new();
                    if let Some(mut p) = pipe {
                        let _ = p.read_to_string(&mut text);
                    }
                    text
                })
            };
            let out = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
            let err = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
            running.push((command, Background(child), out, err));
        }
        let mut children: Vec<&mut Background> = running.iter_mut().map(|r| &mut r.1).collect();
        let window = self.await_first_frames(way, before, &mut children).and_then(|after| self.measure_wire(way, after, settle, measure));
        let deadline = Instant::now() + SENDER_GRACE;
        let mut reports = Vec::new();
        for (command, mut child, out, err) in running {
            let exit = loop {
                match child.0.try_wait() {
                    Ok(Some(status)) => break status.code(),
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    _ => {
                        let _ = child.0.kill();
                        break None;
                    }
                }
            };
            drop(child);
            reports.push(SenderReport { command, exit, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() });
        }
        Ok((window?, reports))
    }

    /// The wire count in `way` once fewer than `FIRST_FRAMES` cross it in
    /// 100 ms (or after `FIRST_FRAMES_WITHIN`): what an earlier sender left
    /// queued before the delay line must not pass for the next one's first
    /// frames. Under TCG the line forwarded a UDP_SEGMENT sender's frames
    /// for seconds after it ended, and MSS 88's window opened on them.
    fn quiet_wire(&self, way: Way) -> Result<WireCount> {
        let start = Instant::now();
        let mut last = self.wire_count(way)?;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.wire_count(way)?;
            if now.since(&last).frames < FIRST_FRAMES || start.elapsed() >= FIRST_FRAMES_WITHIN {
                return Ok(now);
            }
            last = now;
        }
    }

    /// Waits until the senders' first frames are on the wire in `way`
    /// (`FIRST_FRAMES` more than `before`), or every sender has ended, or
    /// `FIRST_FRAMES_WITHIN` has passed: the settle time counts from there,
    /// not from spawn. A process's start and iperf3's control exchange take
    /// well over a second under TCG (the 6.1 stage's VM); a window timed
    /// from spawn closed there before MSS 88's iperf3 sent its first
    /// segment, and counted 0 bytes of the 113 MB it said it sent.
    fn await_first_frames<B: std::borrow::BorrowMut<Background>>(&self, way: Way, before: WireCount, senders: &mut [B]) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if self.wire_count(way)?.since(&before).frames >= FIRST_FRAMES {
                return Ok(start.elapsed());
            }
            let all_ended = senders.iter_mut().all(|b| matches!(b.borrow_mut().0.try_wait(), Ok(Some(_))));
            if all_ended || start.elapsed() >= FIRST_FRAMES_WITHIN {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The wire in `way` over `measure`, after `settle`.
    fn measure_wire(&self, way: Way, first_frames_after: Duration, settle: Duration, measure: Duration) -> Result<WireWindow> {
        std::thread::sleep(settle);
        let (w0, t0) = timed(|| self.wire_count(way))?;
        std::thread::sleep(measure);
        let (w1, t1) = timed(|| self.wire_count(way))?;
        let d = w1.since(&w0);
        let seconds = t1.duration_since(t0).as_secs_f64();
        Ok(WireWindow { bps: d.bytes as f64 * 8.0 / seconds, frames_per_s: d.frames as f64 / seconds, seconds, first_frames_after: first_frames_after.as_secs_f64() })
    }

    /// The MAC address of the gateway's interface, where the pod's raw
    /// frames are addressed.
    pub fn gw_mac(&self) -> Result<String> {
        let out = super::ip(&["-n", &self.gw_ns, "-j", "link", "show", "eth0"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        v[0]["address"].as_str().map(String::from).context("the gateway's eth0 has no MAC address")
    }

    /// `sender` from inside the pod, flat out for `seconds`.
    pub fn sender(&self, sender: Sender, seconds: u32) -> Result<Command> {
        let secs = seconds.to_string();
        let frames = |extra: &[&str]| -> Result<Vec<String>> {
            let mac = self.gw_mac()?;
            let mut a = vec!["--ifname", "eth0", "--dst-mac", &mac, "--src-ip", POD_IP, "--dst-ip", SERVER_IP, "--size"];
            a.extend_from_slice(&[RAW_FRAME_STR, "--seconds", &secs, "--count", "1000000000"]);
            a.extend_from_slice(extra);
            Ok(a.iter().map(|s| s.to_string()).collect())
        };
        let strs = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (program, args) = match sender {
            Sender::UdpGso8 => (tool("udp_gso"), strs(&["--dst-ip", SERVER_IP, "--gso-size", "8", "--payload", "1024", "--seconds", &secs])),
            Sender::Mss88 | Sender::Nodelay64 => {
                // -J: its report says what it sent (SenderReport).
                let mut a = strs(&["-J", "-c", SERVER_IP, "-t", &secs]);
                a.extend(strs(sender.iperf3_args().unwrap_or_default()));
                ("iperf3".into(), a)
            }
            Sender::SynFlood => (
                tool("pktflood"),
                strs(&["--kind", "syn", "--src-ip", POD_IP, "--dst-ip", SERVER_IP, "--size", "41", "--seconds", &secs]),
            ),
            Sender::AfPacket => (tool("raw_tx"), frames(&[])?),
            Sender::AfXdp => (tool("xdp_tx"), frames(&[])?),
            Sender::AfPacketBypassCompat => (tool("raw_tx"), frames(&["--bypass", "--compat-setsockopt"])?),
            Sender::AfXdpCompat => (tool("xdp_tx"), frames(&["--compat-setsockopt"])?),
            Sender::Ipv6DstOpts => ("python3".into(), strs(&[PODLOAD, "udp6ext", SERVER_IP6, "9", &secs, "1024", "8"])),
            Sender::IcmpFlood => ("ping".into(), strs(&["-f", "-q", "-s", "1400", "-w", &secs, SERVER_IP])),
        };
        let mut cmd = self.pod_command(&program)?;
        cmd.args(args);
        Ok(cmd)
    }
}

/// The frame size (with its Ethernet header) of the raw senders.
pub const RAW_FRAME: u64 = 1000;
const RAW_FRAME_STR: &str = "1000";

/// The senders from tests/tools (built by build.rs).
pub const TOOLS: &str = env!("BRL_TEST_TOOLS");

/// The path of a sender built from tests/tools: xdp_tx, raw_tx, pktflood, udp_gso.
pub fn tool(name: &str) -> String {
    format!("{TOOLS}/{name}")
}

/// Every traffic shape a pod can make to put more on the wire than its
/// sockets' byte counts say, or to go around its cgroup hooks (issue 15):
/// what tests/wire.rs holds to the limit and the benchmark reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// UDP_SEGMENT (UDP GSO) with 8-byte segments: 1024 bytes a send.
    UdpGso8,
    /// iperf3 TCP with an MSS of 88.
    Mss88,
    /// Raw IPPROTO_TCP SYNs of 41 bytes.
    SynFlood,
    /// iperf3 TCP with TCP_NODELAY and 64-byte writes.
    Nodelay64,
    /// AF_PACKET frames of RAW_FRAME bytes (UDP to port 9).
    AfPacket,
    /// AF_XDP in copy mode, frames of RAW_FRAME bytes.
    AfXdp,
    AfPacketBypassCompat,
    AfXdpCompat,
    /// UDP over IPv6 with a destination options header, 8-byte GSO segments.
    Ipv6DstOpts,
    /// ping -f with 1400-byte payloads.
    IcmpFlood,
}

impl Sender {
    pub const ALL: [Sender; 10] = [
        Sender::UdpGso8,
        Sender::Mss88,
        Sender::SynFlood,
        Sender::Nodelay64,
        Sender::AfPacket,
        Sender::AfXdp,
        Sender::AfPacketBypassCompat,
        Sender::AfXdpCompat,
        Sender::Ipv6DstOpts,
        Sender::IcmpFlood,
    ];

    pub fn what(self) -> &'static str {
        match self {
            Sender::UdpGso8 => "UDP_SEGMENT, 8-byte segments",
            Sender::Mss88 => "TCP with MSS 88",
            Sender::SynFlood => "raw IPPROTO_TCP packets (SYN flood)",
            Sender::Nodelay64 => "64-byte TCP_NODELAY writes",
            Sender::AfPacket => "AF_PACKET frames",
            Sender::AfXdp => "AF_XDP, copy mode",
            Sender::AfPacketBypassCompat => "AF_PACKET with PACKET_QDISC_BYPASS through a compat syscall",
            Sender::AfXdpCompat => "AF_XDP set up through compat syscalls",
            Sender::Ipv6DstOpts => "IPv6 UDP with destination options, 8-byte segments",
            Sender::IcmpFlood => "ICMP echo flood",
        }
    }

    /// For the senders that are iperf3 TCP clients, their own arguments
    /// (a `Bulk` with these is the same sender, measured by iperf3 too).
    pub fn iperf3_args(self) -> Option<&'static [&'static str]> {
        match self {
            Sender::Mss88 => Some(&["-M", "88"]),
            Sender::Nodelay64 => Some(&["-N", "-l", "64"]),
            _ => None,
        }
    }

    /// Payload bytes each of its frames carries, where that is fixed (its
    /// goodput is then frames on the wire x this): UDP payload for the
    /// UDP senders.
    pub fn payload_per_frame(self) -> Option<u64> {
        match self {
            Sender::UdpGso8 | Sender::Ipv6DstOpts => Some(8),
            // Ethernet 14 + IPv4 20 + UDP 8.
            Sender::AfPacket | Sender::AfXdp | Sender::AfPacketBypassCompat | Sender::AfXdpCompat => Some(RAW_FRAME - 42),
            _ => None,
        }
    }
}

impl Testbed {
    /// Starts another iperf3 server in the server namespace, on `port`
    /// (two transfers at once need two servers), killed with the testbed.
    pub fn start_server_on(&mut self, port: &str) -> Result<()> {
        let child = self
            .server_command("iperf3")?
            .args(["-s", "-p", port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start iperf3 -s in the server's netns (is iperf3 installed?)")?;
        self.keep(child);
        super::wait_for_port(&self.pod_netns_path(), SERVER_IP, port)
    }

    /// An app and its sidecar inside the pod, over `addr` (127.0.0.1 or
    /// the pod's own IP): iperf3 server and client both in the pod for
    /// `seconds`; the goodput in bits/s.
    pub fn sidecar(&self, addr: &str, seconds: u32) -> Result<f64> {
        let server = self
            .pod_command("iperf3")?
            .args(["-s", "-p", SIDECAR_PORT, "-B", addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start iperf3 -s in the pod")?;
        let _server = Background(server);
        super::wait_for_port(&self.pod_netns_path(), addr, SIDECAR_PORT)?;
        let mut cmd = self.pod_command("iperf3")?;
        cmd.args(["-c", addr, "-p", SIDECAR_PORT, "-J", "-t", &seconds.to_string()]);
        let v = run_json(cmd, Duration::from_secs(u64::from(seconds) + 20))?;
        Ok(Transfer::from_json(&v)?.goodput_bps)
    }

    /// `bulk` while `conns` keep-alive connections from the pod each send
    /// `bps` bits/s to the request/response server (start_rr_server), which
    /// start a second before it.
    pub fn bulk_beside_light(&self, conns: u32, bps: u64, bulk: &Bulk) -> Result<BulkResult> {
        let seconds = bulk.omit + bulk.seconds + 3;
        let light = self
            .pod_command("python3")?
            .args([PODLOAD, "light", SERVER_IP, RR_PORT])
            .args([conns.to_string(), bps.to_string(), seconds.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start podload light")?;
        let _light = Background(light);
        std::thread::sleep(Duration::from_secs(1));
        self.bulk(bulk)
    }
}

/// Where `sidecar` listens inside the pod.
pub const SIDECAR_PORT: &str = "5301";

/// The port of the second iperf3 server (`start_server_on`) that
/// `tcp_with_udp` sends its UDP to.
pub const SECOND_IPERF_PORT: &str = "5202";

impl Testbed {
    /// A TCP upload and a UDP stream at `udp_bps` from the pod at once
    /// (the second iperf3 server, on SECOND_IPERF_PORT, must be running):
    /// the wire after `settle`, for `measure`.
    pub fn tcp_with_udp(&self, udp_bps: u64, settle: Duration, measure: Duration) -> Result<WireWindow> {
        let secs = (settle + measure + Duration::from_secs(1)).as_secs().to_string();
        let mut tcp = self.pod_command("iperf3")?;
        tcp.args(["-c", SERVER_IP, "-t", &secs]);
        let mut udp = self.pod_command("iperf3")?;
        udp.args(["-c", SERVER_IP, "-p", SECOND_IPERF_PORT, "-u", "-b", &udp_bps.to_string(), "-t", &secs]);
        self.wire_while(Way::Upload, vec![tcp, udp], settle, measure)
    }
}
