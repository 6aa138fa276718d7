//! The commands for people on the node: `list` (which pods are shaped, how
//! fast they go, what was dropped), `set` (change a running pod's limits)
//! and `metrics` (Prometheus exposition). All read the pinned state only, so
//! they need no runtime, and `set` writes it under the same lock as ADD.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::datapath;
use crate::pins::{AttachmentId, PinRoot};
use crate::limits::{self, Direction, Limit};
use crate::pod_meta::{self, PodMeta};
use crate::quantity;
use crate::state::{Bucket, IfaceState as PodState, LimitBasis, IFACE_INGRESS_QUEUED as POD_INGRESS_QUEUED};

/// One shaped pod as its pins show it.
pub struct PodView {
    pub id: AttachmentId,
    pub dir: PathBuf,
    pub meta: PodMeta,
    pub cgroup_id: u64,
    pub state: PodState,
}

impl PodView {
    pub fn display_name(&self) -> String {
        self.meta.display_name(&self.id.container_id)
    }

    fn bucket(&self, dir: Direction) -> &Bucket {
        match dir {
            Direction::Ingress => &self.state.ingress,
            Direction::Egress => &self.state.egress,
        }
    }
}

/// Every shaped pod under the pin root. Attachments whose state cannot be
/// read (a DEL in progress) are skipped.
pub fn pods(root: &PinRoot) -> Result<Vec<PodView>> {
    let mut out = Vec::new();
    for id in root.attachments()? {
        let dir = root.pod_dir(&id);
        let Ok((cgroup_id, state)) = datapath::pod_state_from_pins(&dir) else { continue };
        let meta = pod_meta::read(&dir).unwrap_or_default();
        out.push(PodView { id, dir, meta, cgroup_id, state });
    }
    Ok(out)
}

fn open_root(pin_root: &Path) -> Result<Option<PinRoot>> {
    PinRoot::existing(pin_root).with_context(|| format!("cannot open pin root {}", pin_root.display()))
}

/// One direction of one pod in `list`: exact numbers (bits/s, bits, bytes).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectionRow {
    pub limit_bits_per_second: u64,
    pub burst_bits: u64,
    pub rate_bits_per_second: u64,
    pub passed_bytes: u64,
    pub dropped_bytes: u64,
    pub marked_bytes: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListRow {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container_id: String,
    pub ifname: String,
    pub ingress: DirectionRow,
    pub egress: DirectionRow,
}

/// Samples every pod twice, `interval` apart, for the current rates.
pub fn list_rows(pin_root: &Path, interval: Duration) -> Result<Vec<ListRow>> {
    let first = match open_root(pin_root)? {
        Some(root) => pods(&root)?,
        None => return Ok(Vec::new()),
    };
    let started = Instant::now();
    std::thread::sleep(interval);
    let second = match open_root(pin_root)? {
        Some(root) => pods(&root)?,
        None => Vec::new(),
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut rows = Vec::new();
    for now in &second {
        let before = first.iter().find(|p| p.id == now.id && p.cgroup_id == now.cgroup_id);
        let direction = |dir: Direction| {
            let b = now.bucket(dir);
            let passed_before = before.map(|p| p.bucket(dir).passed_bytes).unwrap_or(b.passed_bytes);
            DirectionRow {
                limit_bits_per_second: b.rate * 8,
                burst_bits: b.burst * 8,
                rate_bits_per_second: ((b.passed_bytes.saturating_sub(passed_before)) as f64 * 8.0 / seconds) as u64,
                passed_bytes: b.passed_bytes,
                dropped_bytes: b.dropped_bytes,
                marked_bytes: b.marked_bytes,
            }
        };
        rows.push(ListRow {
            namespace: now.meta.namespace.clone(),
            pod: if now.meta.name.is_empty() { now.id.container_id.clone() } else { now.meta.name.clone() },
            uid: now.meta.uid.clone(),
            container_id: now.id.container_id.clone(),
            ifname: now.id.ifname.clone(),
            ingress: direction(Direction::Ingress),
            egress: direction(Direction::Egress),
        });
    }
    Ok(rows)
}

fn human_bytes(n: u64) -> String {
    for (div, suffix) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if n >= div {
            return format!("{:.1}{suffix}", n as f64 / div as f64);
        }
    }
    format!("{n}B")
}

fn human_rate(bits: u64, limit: u64) -> String {
    if limit == 0 {
        "-".into()
    } else {
        format!("{}bit/s", quantity::format_rate(bits))
    }
}

pub fn list_table(rows: &[ListRow]) -> String {
    let mut out = String::new();
    let header = [
        "NAMESPACE/POD", "IN LIMIT", "IN BURST", "IN RATE", "IN PASSED", "IN DROP/MARK", "EG LIMIT", "EG BURST", "EG RATE",
        "EG PASSED", "EG DROP/MARK",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let mut line = vec![format!("{}/{}", r.namespace, r.pod)];
        for d in [&r.ingress, &r.egress] {
            line.push(human_rate(d.limit_bits_per_second, d.limit_bits_per_second));
            line.push(if d.limit_bits_per_second == 0 { "-".into() } else { human_bytes(d.burst_bits / 8) });
            line.push(format!("{}bit/s", quantity::format_rate(d.rate_bits_per_second)));
            line.push(human_bytes(d.passed_bytes));
            line.push(format!("{}/{}", human_bytes(d.dropped_bytes), human_bytes(d.marked_bytes)));
        }
        table.push(line);
    }
    let widths: Vec<usize> = (0..header.len()).map(|c| table.iter().map(|l| l[c].len()).max().unwrap_or(0)).collect();
    for line in table {
        let cells: Vec<String> = line.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// What `set` changes; `None` leaves a field as it is.
#[derive(Debug, Default, Clone, Copy)]
pub struct Change {
    pub ingress: Option<u64>,
    pub egress: Option<u64>,
    pub ingress_burst: Option<u64>,
    pub egress_burst: Option<u64>,
}

impl Change {
    fn get(&self, dir: Direction) -> (Option<u64>, Option<u64>) {
        match dir {
            Direction::Ingress => (self.ingress, self.ingress_burst),
            Direction::Egress => (self.egress, self.egress_burst),
        }
    }
}

/// Changes the limits of the pods that `target` names (`namespace/name` or
/// a pod UID), live: the attachments stay, only their state is rewritten,
/// under the pin root's lock. The ceilings ADD recorded apply. Returns a
/// line per attachment changed.
pub fn set(pin_root: &Path, target: &str, change: Change) -> Result<Vec<String>> {
    let Some(root) = open_root(pin_root)? else { bail!("no pod is shaped on this node (no pin root at {})", pin_root.display()) };
    let matches: Vec<PodView> = pods(&root)?
        .into_iter()
        .filter(|p| (!p.meta.uid.is_empty() && p.meta.uid == target) || (!p.meta.name.is_empty() && format!("{}/{}", p.meta.namespace, p.meta.name) == target))
        .collect();
    if matches.is_empty() {
        bail!("no shaped pod is named {target:?}: give namespace/name or the pod's UID (see bpf-ratelimit list)");
    }
    let mut done = Vec::new();
    for pod in matches {
        let mut state = pod.state;
        let basis: LimitBasis = crate::attachment::read(&pod.dir).ok().flatten().map(|r| r.basis).unwrap_or_default();
        let mut notes = Vec::new();
        for dir in Direction::BOTH {
            let (rate, burst) = change.get(dir);
            if rate.is_none() && burst.is_none() {
                continue;
            }
            let current = match dir {
                Direction::Ingress => &mut state.ingress,
                Direction::Egress => &mut state.egress,
            };
            let old = Limit { rate: current.rate * 8, burst: current.burst * 8 };
            let new_rate = rate.unwrap_or(old.rate);
            if new_rate == 0 {
                bail!("{} has no {} limit to change a burst of; give --{} too", pod.display_name(), dir.name(), dir.name());
            }
            if !(limits::MIN_RATE..=limits::MAX_RATE).contains(&new_rate) {
                bail!("a {} rate must be between {} and {} bits/s", dir.name(), limits::MIN_RATE, limits::MAX_RATE);
            }
            // A burst that was the default for the old rate follows the rate.
            let defaulted = old.rate == 0 || old.burst == limits::default_burst(dir, old.rate).div_ceil(8) * 8;
            let new_burst = burst.unwrap_or(if defaulted { limits::default_burst(dir, new_rate) } else { old.burst });
            if new_burst > limits::MAX_BURST {
                bail!("a burst can be at most {} bits (1 GiB)", limits::MAX_BURST);
            }
            let (limit, capped) = pod.meta.ceilings.cap(dir, Limit { rate: new_rate, burst: new_burst });
            if let Some(note) = capped {
                notes.push(note);
            }
            let fresh = Bucket::full(Some(limit), basis);
            current.rate = fresh.rate;
            current.burst = fresh.burst;
            // Tokens above the new burst are dropped; a newly limited
            // direction starts full (last_ns 0: the next refill fills it).
            if old.rate == 0 {
                current.tokens = fresh.burst as i64;
                current.last_ns = 0;
            } else {
                current.tokens = current.tokens.min(fresh.burst as i64);
            }
            if dir == Direction::Ingress && state.flags & POD_INGRESS_QUEUED != 0 {
                crate::ingress_queue::change(state.host_ifindex, crate::ingress_queue::QueueSpec::for_limit(limit, basis))
                    .with_context(|| format!("cannot change the ingress queue of {}", pod.display_name()))?;
            }
        }
        // Counters and tokens move while we hold the copy: the limits are
        // written into the latest value, under its lock.
        let write = datapath::update_pod_state(&pod.dir, |latest| {
            for (b, new) in [(&mut latest.ingress, &state.ingress), (&mut latest.egress, &state.egress)] {
                let fresh = b.rate == 0 && new.rate != 0;
                b.rate = new.rate;
                b.burst = new.burst;
                if fresh {
                    b.tokens = new.burst as i64;
                    b.last_ns = 0;
                } else {
                    b.tokens = b.tokens.min(new.burst as i64);
                }
            }
        })
        .with_context(|| format!("cannot change the limits of {}", pod.display_name()))?;
        let describe = |b: &Bucket| {
            if b.rate == 0 { "unlimited".to_string() } else { format!("{}bit/s burst {}", quantity::format_rate(b.rate * 8), human_bytes(b.burst)) }
        };
        let mut line = format!(
            "{} ({}): ingress {}, egress {}",
            pod.display_name(),
            pod.id.container_id,
            describe(&write.ingress),
            describe(&write.egress)
        );
        for n in notes {
            let _ = write!(line, "; {n}");
        }
        log::info!("set {line}");
        done.push(line);
    }
    Ok(done)
}

/// Prometheus text exposition (format 0.0.4, what node_exporter's textfile
/// collector and every scraper read) of every shaped pod: limits as gauges,
/// counters as counters, labelled by namespace, pod and direction.
pub fn metrics(pin_root: &Path) -> Result<String> {
    use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

    const LABELS: [&str; 3] = ["namespace", "pod", "direction"];
    let registry = Registry::new();
    let gauge = |name: &str, help: &str| -> Result<IntGaugeVec> {
        let g = IntGaugeVec::new(Opts::new(name, help), &LABELS)?;
        registry.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let counter = |name: &str, help: &str| -> Result<IntCounterVec> {
        let c = IntCounterVec::new(Opts::new(name, help), &LABELS)?;
        registry.register(Box::new(c.clone()))?;
        Ok(c)
    };
    let limit = gauge("bpf_ratelimit_limit_bits_per_second", "The pod's rate limit (0: unlimited)")?;
    let burst = gauge("bpf_ratelimit_burst_bytes", "The pod's burst (token bucket size)")?;
    let counters = [
        counter("bpf_ratelimit_passed_bytes_total", "Bytes the shaper passed")?,
        counter("bpf_ratelimit_dropped_bytes_total", "Bytes the shaper dropped over the limit")?,
        counter("bpf_ratelimit_marked_bytes_total", "Bytes the shaper marked ECN CE (they passed, and count in passed too)")?,
        counter("bpf_ratelimit_passed_packets_total", "Packets (skbs) the shaper passed")?,
        counter("bpf_ratelimit_dropped_packets_total", "Packets (skbs) the shaper dropped")?,
        counter("bpf_ratelimit_marked_packets_total", "Packets (skbs) the shaper marked ECN CE")?,
    ];
    let pods = match open_root(pin_root)? {
        Some(root) => pods(&root)?,
        None => Vec::new(),
    };
    for pod in &pods {
        let name = if pod.meta.name.is_empty() { pod.id.container_id.clone() } else { pod.meta.name.clone() };
        for dir in Direction::BOTH {
            let b = pod.bucket(dir);
            let labels = [pod.meta.namespace.as_str(), name.as_str(), dir.name()];
            limit.with_label_values(&labels).set(i64::try_from(b.rate * 8).unwrap_or(i64::MAX));
            burst.with_label_values(&labels).set(i64::try_from(b.burst).unwrap_or(i64::MAX));
            let values = [b.passed_bytes, b.dropped_bytes, b.marked_bytes, b.passed_packets, b.dropped_packets, b.marked_packets];
            for (family, v) in counters.iter().zip(values) {
                family.with_label_values(&labels).inc_by(v);
            }
        }
    }
    Ok(TextEncoder::new().encode_to_string(&registry.gather())?)
}

/// Serves `metrics` on http://ADDR/metrics until killed: for a DaemonSet,
/// or for node_exporter's textfile collector use `metrics` alone.
pub fn serve_metrics(pin_root: &Path, addr: &str) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    log::info!("serving metrics on http://{addr}/metrics");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut request_line = String::new();
        if BufReader::new(&stream).read_line(&mut request_line).is_err() {
            continue;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("");
        let (status, ctype, body) = if path == "/metrics" || path.starts_with("/metrics?") {
            match metrics(pin_root) {
                Ok(b) => ("200 OK", prometheus::TEXT_FORMAT, b),
                Err(e) => ("500 Internal Server Error", "text/plain", format!("{e:#}\n")),
            }
        } else {
            ("404 Not Found", "text/plain", "try /metrics\n".to_string())
        };
        let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    }
    Ok(())
}
