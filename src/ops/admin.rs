//! The commands for people on the node: `list` (which pods are shaped, how
//! fast they go, what was dropped), `set` (change a running pod's limits)
//! and `metrics` (Prometheus exposition). All read the pinned state only, so
//! they need no runtime, and `set` writes it under the same lock as ADD;
//! `metrics` reads without that lock, so that scrapes never delay an ADD.
//! Without `--pin-root` they look in every pin root this node used, as DEL,
//! CHECK, GC and `stats` do.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::datapath::attach;
use crate::datapath::ingress_queue::QueueChild;
use crate::policy::limits::{self, Direction, Limit};
use crate::node::pins::{AttachmentId, PinRoot, UnlockedPinRoot};
use crate::node::pod_meta::{self, PodMeta};
use crate::policy::quantity;
use crate::datapath::state::{Bucket, IfaceState as PodState};
use crate::policy::operator::LimitBasis;

/// One shaped pod as its pins show it.
pub struct PodView {
    pub pin_root: PathBuf,
    pub id: AttachmentId,
    pub dir: PathBuf,
    pub meta: PodMeta,
    pub cgroup_id: u64,
    pub state: PodState,
    /// How the pod's limits are counted (its attachment record): the state
    /// holds wire bytes, which under `tcp-goodput` are more than the limit.
    pub basis: LimitBasis,
}

impl PodView {
    pub fn display_name(&self) -> String {
        self.meta.display_name(&self.id.container_id)
    }

    /// The limit one direction enforces, as it was asked for (bits/s and
    /// bits; rate 0: unlimited), from the state's wire budget.
    fn limit(&self, dir: Direction) -> Limit {
        let b = self.bucket(dir);
        Limit { rate: self.basis.limit_for_wire_bytes_per_second(b.rate), burst: b.burst * 8 }
    }

    fn bucket(&self, dir: Direction) -> &Bucket {
        match dir {
            Direction::Ingress => &self.state.ingress,
            Direction::Egress => &self.state.egress,
        }
    }

    /// The pod's name for tables and labels: its Kubernetes name, else its container ID.
    fn pod_name(&self) -> String {
        if self.meta.name.is_empty() {
            self.id.container_id.clone()
        } else {
            self.meta.name.clone()
        }
    }
}

/// The pin roots to read: the one given (`--pin-root`), else every pin root
/// this node used (the default one and those ADD recorded).
pub fn pin_roots(given: Option<&Path>) -> Vec<PathBuf> {
    match given {
        Some(p) => vec![p.to_path_buf()],
        None => crate::node::pin_roots::known(Path::new(crate::policy::netconf::DEFAULT_PIN_ROOT)),
    }
}

/// Opens a pin root: `None` when there is none (nothing is shaped there), an
/// error when it exists but cannot be read (no privileges, say).
fn open_root(pin_root: &Path) -> Result<Option<PinRoot>> {
    match std::fs::metadata(pin_root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read pin root {}", pin_root.display())),
        Ok(_) => {}
    }
    PinRoot::existing(pin_root).with_context(|| format!("cannot open pin root {}", pin_root.display()))
}

/// Every shaped pod under these pin roots, locked one root at a time, and
/// what could not be read (a pin root or a pod's state), one line each.
pub fn read_pods(roots: &[PathBuf]) -> (Vec<PodView>, Vec<String>) {
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    for path in roots {
        match open_root(path) {
            Ok(Some(root)) => read_root(&root, &mut out, &mut errors),
            Ok(None) => {}
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    (out, errors)
}

/// The pods under one pin root, whose lock the caller holds.
fn read_root(root: &PinRoot, out: &mut Vec<PodView>, errors: &mut Vec<String>) {
    let path = root.path();
    let ids = match root.attachments() {
        Ok(ids) => ids,
        Err(e) => {
            errors.push(format!("cannot list the pods under {}: {e:#}", path.display()));
            return;
        }
    };
    for id in ids {
        let dir = root.pod_dir(&id);
        // Every command holds the pin root's lock, so no ADD or DEL is
        // half done here: a state that cannot be read is an error.
        match attach::pod_state_from_pins(&dir) {
            Ok((cgroup_id, state)) => {
                let meta = pod_meta::read(&dir).unwrap_or_default();
                let basis = crate::datapath::attachment::read(&dir).ok().flatten().map(|r| r.basis).unwrap_or_default();
                out.push(PodView { pin_root: path.to_path_buf(), id, dir, meta, cgroup_id, state, basis });
            }
            Err(e) => errors.push(format!("cannot read {}: {e:#}", dir.display())),
        }
    }
}

/// What a scrape read: the pods, what could not be read (a pin root), and
/// how many pods were skipped because they were being added or removed.
struct UnlockedRead {
    pods: Vec<PodView>,
    errors: Vec<String>,
    skipped: usize,
}

/// Every shaped pod under these pin roots, read WITHOUT their locks, for
/// `metrics`: a scrape every few seconds on every node must never make an
/// ADD or DEL wait (nor wait behind one). An ADD pins its attachment record
/// and then the pod's meta record last, and a DEL unpins files in any order,
/// so a pod whose pins are missing or unreadable, or that has a record but
/// no meta yet, is being added or removed: it is skipped and counted, not an
/// error; unless the kernel refused us (EACCES, EPERM: a scraper without
/// privileges), which is an error, or every pod would vanish unnoticed.
/// `list` keeps the lock: it names each unreadable pod as an error, which is
/// only true when no ADD or DEL can be half done.
fn read_pods_unlocked(roots: &[PathBuf]) -> UnlockedRead {
    let mut read = UnlockedRead { pods: Vec::new(), errors: Vec::new(), skipped: 0 };
    for path in roots {
        // As open_root: a pin root we may not look into is an error, not "none".
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                read.errors.push(format!("cannot read pin root {}: {e}", path.display()));
                continue;
            }
            Ok(_) => {}
        }
        let Some(root) = UnlockedPinRoot::existing(path) else { continue };
        let ids = match root.attachments() {
            Ok(ids) => ids,
            Err(e) => {
                read.errors.push(format!("cannot list the pods under {}: {e:#}", path.display()));
                continue;
            }
        };
        for id in ids {
            let dir = root.pod_dir(&id);
            match read_pod_unlocked(&dir) {
                Ok((meta, cgroup_id, state, basis)) => {
                    read.pods.push(PodView { pin_root: path.to_path_buf(), id, dir, meta, cgroup_id, state, basis })
                }
                // No privileges is no ADD under way: it would hide every pod.
                Err(why) if permission_denied(&why) => read.errors.push(format!("cannot read {}: {why:#}", dir.display())),
                Err(why) => {
                    log::debug!("metrics: skipped {} (an ADD or DEL under way?): {why:#}", dir.display());
                    read.skipped += 1;
                }
            }
        }
    }
    read
}

fn permission_denied(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| matches!(io.raw_os_error(), Some(libc::EACCES | libc::EPERM))))
}

/// One pod's pins read without the lock; an error means they are not all
/// there or not all readable (see read_pods_unlocked).
fn read_pod_unlocked(dir: &Path) -> Result<(PodMeta, u64, PodState, LimitBasis)> {
    let record = crate::datapath::attachment::read(dir)?;
    // Releases that pin a record pin the meta record after it: without it,
    // ADD has not finished (or DEL has begun).
    if record.is_some() && !dir.join(pod_meta::META_PIN).exists() {
        bail!("it has an attachment record but no meta record yet");
    }
    let (cgroup_id, state) = attach::pod_state_from_pins(dir)?;
    let meta = pod_meta::read(dir)?;
    Ok((meta, cgroup_id, state, record.map(|r| r.basis).unwrap_or_default()))
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
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub pin_root: PathBuf,
    pub ingress: DirectionRow,
    pub egress: DirectionRow,
    /// The pod's host-side veth sees none of what it sends (see
    /// attach::host_side_skipped): the pod side holds its limits alone.
    pub host_side_skipped: bool,
    /// failurePolicy "open" let the pod start unshaped, for this reason
    /// (plugin::unshaped); its limits and counters are then all 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unshaped: Option<String>,
    /// What the ingress queue's TBF hands frames to, where the pod's queue
    /// is in its netns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_queue_child: Option<QueueChild>,
    /// What ADD could not give as asked (a clamped rate).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// `list`'s note on a pod whose ingress queue has no flow-fair child.
pub const NO_FLOW_FAIR_QUEUE_NOTE: &str = "ingress queue without fq_codel";

/// Samples every pod twice, `interval` apart, for the current rates; and
/// what could not be read (the rows hold the rest).
pub fn list_rows(pin_root: Option<&Path>, interval: Duration) -> (Vec<ListRow>, Vec<String>) {
    let roots = pin_roots(pin_root);
    let (first, _) = read_pods(&roots);
    let started = Instant::now();
    std::thread::sleep(interval);
    let (second, errors) = read_pods(&roots);
    let seconds = started.elapsed().as_secs_f64();
    let mut rows = Vec::new();
    for now in &second {
        let before = first.iter().find(|p| p.id == now.id && p.pin_root == now.pin_root && p.cgroup_id == now.cgroup_id);
        let direction = |dir: Direction| {
            let b = now.bucket(dir);
            let passed_before = before.map(|p| p.bucket(dir).passed_bytes).unwrap_or(b.passed_bytes);
            DirectionRow {
                limit_bits_per_second: now.limit(dir).rate,
                burst_bits: b.burst * 8,
                rate_bits_per_second: ((b.passed_bytes.saturating_sub(passed_before)) as f64 * 8.0 / seconds) as u64,
                passed_bytes: b.passed_bytes,
                dropped_bytes: b.dropped_bytes,
                marked_bytes: b.marked_bytes,
            }
        };
        rows.push(ListRow {
            namespace: now.meta.namespace.clone(),
            pod: now.pod_name(),
            uid: now.meta.uid.clone(),
            network: now.id.network.clone(),
            container_id: now.id.container_id.clone(),
            ifname: now.id.ifname.clone(),
            pin_root: now.pin_root.clone(),
            ingress: direction(Direction::Ingress),
            egress: direction(Direction::Egress),
            host_side_skipped: match (attach::guard_from_pins(&now.dir), attach::pod_side_guard_from_pins(&now.dir)) {
                (Some(h), Some(p)) => attach::host_side_skipped(&h, &p),
                _ => false,
            },
            unshaped: None,
            ingress_queue_child: attach::queue_child_from_pins(&now.dir),
            notes: now.meta.notes.clone(),
        });
    }
    // Pods that started unshaped have no pins: they are read from their
    // records, whatever pin root was asked for.
    for u in crate::plugin::unshaped::all() {
        let none = || DirectionRow { limit_bits_per_second: 0, burst_bits: 0, rate_bits_per_second: 0, passed_bytes: 0, dropped_bytes: 0, marked_bytes: 0 };
        rows.push(ListRow {
            pod: if u.pod.is_empty() { u.container_id.clone() } else { u.pod.clone() },
            namespace: u.namespace,
            uid: u.uid,
            network: u.network,
            container_id: u.container_id,
            ifname: u.ifname,
            pin_root: PathBuf::new(),
            ingress: none(),
            egress: none(),
            host_side_skipped: false,
            unshaped: Some(u.reason),
            ingress_queue_child: None,
            notes: Vec::new(),
        });
    }
    (rows, errors)
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

/// `list`'s note on a pod whose host side is skipped.
pub const HOST_SIDE_SKIPPED_NOTE: &str = "host side skipped";

/// What a pod whose host side is skipped has left open, for CHECK, `list`
/// and the log.
pub const HOST_SIDE_SKIPPED_CAUSE: &str = "its host-side veth has seen none of its frames for 5 s while its interface sent: \
a program ahead of ours there (an eBPF main CNI) redirects them past the host-side guard. Its limits hold on the pod side \
(its cgroup hooks, the guard on its interface, its ingress queue); raw sockets set up through 32-bit syscalls \
(PACKET_QDISC_BYPASS, AF_XDP) get past those, and only the host side held them";

pub fn list_table(rows: &[ListRow]) -> String {
    let mut out = String::new();
    let header = [
        "NAMESPACE/POD", "IN LIMIT", "IN BURST", "IN RATE", "IN PASSED", "IN DROP/MARK", "EG LIMIT", "EG BURST", "EG RATE",
        "EG PASSED", "EG DROP/MARK", "NOTE",
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
        let mut notes: Vec<String> = r.notes.clone();
        match (&r.unshaped, r.host_side_skipped) {
            (Some(reason), _) => notes.push(format!("unshaped: {}", reason.chars().take(120).collect::<String>())),
            (None, true) => notes.push(HOST_SIDE_SKIPPED_NOTE.into()),
            (None, false) => {}
        }
        // What the kernel leaves open: a flood into the pod shares one FIFO
        // with its download (docs/shaping.md).
        if r.ingress_queue_child == Some(QueueChild::Bands) {
            notes.push(NO_FLOW_FAIR_QUEUE_NOTE.into());
        }
        line.push(notes.join("; "));
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

    /// Refuses what `set` cannot do, before any pod is looked at.
    pub fn check(&self) -> Result<()> {
        for dir in Direction::BOTH {
            let (rate, burst) = self.get(dir);
            if rate == Some(0) {
                bail!(
                    "--{0} 0 would remove the pod's {0} limit, which set cannot do: whether a pod is limited is decided at ADD \
                     by its annotations and the operator's policy. Give a rate between 8k and 100G",
                    dir.name()
                );
            }
            if let Some(r) = rate.filter(|r| !(limits::MIN_RATE..=limits::MAX_RATE).contains(r)) {
                bail!("--{} {r}: a rate must be between {} and {} bits/s (8k to 100G)", dir.name(), limits::MIN_RATE, limits::MAX_RATE);
            }
            if burst == Some(0) {
                bail!("--{}-burst 0: a burst must be above 0 (leave it out for the default)", dir.name());
            }
            if let Some(b) = burst.filter(|b| *b > limits::MAX_BURST) {
                bail!("--{}-burst {b}: a burst can be at most {} bits (1 GiB)", dir.name(), limits::MAX_BURST);
            }
        }
        if self.ingress.is_none() && self.egress.is_none() && self.ingress_burst.is_none() && self.egress_burst.is_none() {
            bail!("nothing to set: give --ingress, --egress, --ingress-burst or --egress-burst");
        }
        Ok(())
    }
}

/// The limit `change` gives one direction of a pod now enforcing `old`
/// (bits/s, bits; rate 0: unlimited), within the pod's ceilings; `None`
/// when it leaves the direction alone; and what was capped.
fn plan(dir: Direction, old: Limit, change: &Change, ceilings: &limits::Ceilings) -> Result<Option<(Limit, Option<String>)>> {
    let (rate, burst) = change.get(dir);
    if rate.is_none() && burst.is_none() {
        return Ok(None);
    }
    let new_rate = rate.unwrap_or(old.rate);
    if new_rate == 0 {
        bail!("the pod has no {0} limit to change a burst of; give --{0} too", dir.name());
    }
    // A burst that was the default for the old rate follows the rate.
    let defaulted = old.rate == 0 || old.burst == limits::default_burst(dir, old.rate).div_ceil(8) * 8;
    let new_burst = burst.unwrap_or(if defaulted { limits::default_burst(dir, new_rate) } else { old.burst });
    let (limit, capped) = ceilings.cap(dir, Limit { rate: new_rate, burst: new_burst });
    Ok(Some((limit, capped)))
}

/// The state to write: `latest` (read at the last moment) with the new
/// limits. The bucket's tokens and refill time are the latest ones, so
/// nothing the pod spent since it was first read is credited back; tokens
/// above a smaller burst are dropped, and a newly limited direction starts full.
pub fn rewrite(latest: &PodState, new: &[(Direction, Limit)], basis: LimitBasis) -> PodState {
    let mut write = *latest;
    for (dir, limit) in new {
        let bucket = match dir {
            Direction::Ingress => &mut write.ingress,
            Direction::Egress => &mut write.egress,
        };
        let fresh = Bucket::full(Some(*limit), basis);
        let was_limited = bucket.rate != 0;
        bucket.rate = fresh.rate;
        bucket.burst = fresh.burst;
        if was_limited {
            bucket.tokens = bucket.tokens.min(fresh.burst as i64);
        } else {
            // last_ns 0: the next refill fills it (see Bucket::full).
            bucket.tokens = fresh.burst as i64;
            bucket.last_ns = 0;
        }
    }
    write
}

/// Changes the limits of the pods that `target` names (`namespace/name` or
/// a pod UID), live: the attachments stay, only their state is rewritten,
/// under the pin root's lock. The ceilings ADD recorded apply, and what was
/// set is recorded for CHECK. Returns a line per attachment changed.
pub fn set(pin_root: Option<&Path>, target: &str, change: Change) -> Result<Vec<String>> {
    change.check()?;
    let roots = pin_roots(pin_root);
    let mut done = Vec::new();
    let mut found = false;
    // One pin root at a time, under its lock, from the read to the write.
    for path in &roots {
        let root = match open_root(path) {
            Ok(Some(root)) => root,
            Ok(None) => continue,
            Err(e) => {
                log::warn!("set: {e:#}");
                continue;
            }
        };
        let (mut pods, mut errors) = (Vec::new(), Vec::new());
        read_root(&root, &mut pods, &mut errors);
        let matches: Vec<PodView> = pods
            .into_iter()
            .filter(|p| (!p.meta.uid.is_empty() && p.meta.uid == target) || (!p.meta.name.is_empty() && format!("{}/{}", p.meta.namespace, p.meta.name) == target))
            .collect();
        if matches.is_empty() {
            if let Some(e) = errors.first() {
                log::warn!("set: {e}");
            }
            continue;
        }
        found = true;
        for pod in matches {
            done.push(set_one(&pod, &change)?);
        }
        drop(root);
    }
    if !found {
        bail!("no shaped pod is named {target:?}: give namespace/name or the pod's UID (see bpf-ratelimit list)");
    }
    Ok(done)
}

/// Who runs this command: the user ID, and the user sudo was run by.
fn invoker() -> String {
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    match std::env::var("SUDO_USER") {
        Ok(user) if !user.is_empty() => format!("uid {uid} (sudo from {:?})", user.chars().take(64).collect::<String>()),
        _ => format!("uid {uid}"),
    }
}

fn set_one(pod: &PodView, change: &Change) -> Result<String> {
    let mut new = Vec::new();
    let mut notes = Vec::new();
    for dir in Direction::BOTH {
        // The limit as asked for: the state's wire budget is 4.6% above it
        // under tcp-goodput, and read back as the limit each `set` that
        // kept the rate raised it by that much.
        let old = pod.limit(dir);
        let planned = plan(dir, old, change, &pod.meta.ceilings).with_context(|| pod.display_name())?;
        if let Some((limit, capped)) = planned {
            notes.extend(capped);
            new.push((dir, limit));
        }
    }
    let basis = pod.basis;
    // The queue first (a netlink request), then the state's read and write
    // back to back, so that the value written is the latest one.
    if let Some((_, limit)) = new.iter().find(|(d, _)| *d == Direction::Ingress) {
        if let Some(queue) = attach::ingress_queue_of(&pod.dir, &pod.state) {
            queue
                .change(crate::datapath::ingress_queue::QueueSpec::for_limit(*limit, basis))
                .with_context(|| format!("cannot change the ingress queue of {}", pod.display_name()))?;
        }
    }
    let write = attach::update_pod_state(&pod.dir, |latest| *latest = rewrite(latest, &new, basis))
        .with_context(|| format!("cannot change the limits of {}", pod.display_name()))?;
    // CHECK compares against what was set from now on.
    let mut meta = pod.meta.clone();
    for (dir, limit) in &new {
        meta.set.record(*dir, *limit);
    }
    if let Err(e) = pod_meta::update(&pod.dir, &meta) {
        log::warn!("{}: cannot record what was set, so CHECK will compare against the config: {e:#}", pod.display_name());
    }
    let describe = |b: &Bucket| {
        if b.rate == 0 {
            "unlimited".to_string()
        } else {
            format!("{}bit/s burst {}", quantity::format_rate(basis.limit_for_wire_bytes_per_second(b.rate)), human_bytes(b.burst))
        }
    };
    let mut line = format!("{} ({}): ingress {}, egress {}", pod.display_name(), pod.id.container_id, describe(&write.ingress), describe(&write.egress));
    for n in notes {
        let _ = write!(line, "; {n}");
    }
    // Who changed which pod's limits from what to what, in the node's
    // plugin log, whatever its level: a change by hand is an operator
    // action on a security boundary.
    let audit = format!(
        "set by {}: {} (uid {:?}, container {}, pin root {}): ingress {} -> {}, egress {} -> {}",
        invoker(),
        pod.display_name(),
        pod.meta.uid,
        pod.id.container_id,
        pod.pin_root.display(),
        describe(pod.bucket(Direction::Ingress)),
        describe(&write.ingress),
        describe(pod.bucket(Direction::Egress)),
        describe(&write.egress)
    );
    if let Some(e) = crate::logging::audit(pod.meta.log_file.as_deref().map(Path::new), &audit) {
        log::warn!("{e}");
    }
    Ok(line)
}

/// A metrics exposition and what could not be read for it.
pub struct Scrape {
    pub text: String,
    pub errors: Vec<String>,
}

/// Prometheus text exposition (format 0.0.4, what node_exporter's textfile
/// collector and every scraper read) of every shaped pod, in base units:
/// limits in bytes per second and bursts in bytes, as gauges, only for the
/// directions that have a limit; traffic counters for both directions.
/// Series are labelled by pod (namespace, name, UID), attachment (network,
/// container ID, interface) and direction, so two attachments never add up
/// in one series. `bpf_ratelimit_up` is 0 when a pin root could not be read
/// (Scrape::errors says what). The pins are read without the pin roots'
/// locks (read_pods_unlocked): a pod being added or removed during the
/// scrape is left out and counted in bpf_ratelimit_scrape_skipped_pods.
pub fn metrics(pin_root: Option<&Path>) -> Result<Scrape> {
    use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

    const LABELS: [&str; 7] = ["namespace", "pod", "uid", "network", "container_id", "interface", "direction"];
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
    let single = |name: &str, help: &str| -> Result<IntGauge> {
        let g = IntGauge::new(name, help)?;
        registry.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let limit = gauge("bpf_ratelimit_limit_bytes_per_second", "The pod's rate limit in this direction (no series: unlimited)")?;
    let burst = gauge("bpf_ratelimit_burst_bytes", "The pod's burst (token bucket size) in this direction (no series: unlimited)")?;
    let counters = [
        counter("bpf_ratelimit_passed_bytes_total", "Bytes the shaper passed")?,
        counter("bpf_ratelimit_dropped_bytes_total", "Bytes the shaper dropped over the limit")?,
        counter("bpf_ratelimit_marked_bytes_total", "Bytes the shaper marked ECN CE (they passed, and count in passed too)")?,
        counter("bpf_ratelimit_passed_packets_total", "Packets (skbs) the shaper passed")?,
        counter("bpf_ratelimit_dropped_packets_total", "Packets (skbs) the shaper dropped")?,
        counter("bpf_ratelimit_marked_packets_total", "Packets (skbs) the shaper marked ECN CE")?,
    ];
    const GUARD_LABELS: [&str; 7] = ["namespace", "pod", "uid", "network", "container_id", "interface", "side"];
    let guard_counter = |name: &str, help: &str| -> Result<IntCounterVec> {
        let c = IntCounterVec::new(Opts::new(name, help), &GUARD_LABELS)?;
        registry.register(Box::new(c.clone()))?;
        Ok(c)
    };
    let guard_passed = guard_counter("bpf_ratelimit_egress_guard_passed_bytes_total", "Bytes an egress guard (side: host, the pod's host-side veth; pod, its interface) passed")?;
    let guard_dropped = guard_counter("bpf_ratelimit_egress_guard_dropped_bytes_total", "Bytes an egress guard dropped: traffic that went around the pod's own hooks")?;
    // One series per pod attachment (LABELS without the direction).
    let per_pod = |name: &str, help: &str| -> Result<IntGaugeVec> {
        let g = IntGaugeVec::new(Opts::new(name, help), &LABELS[..6])?;
        registry.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let host_side_skipped = per_pod(
        "bpf_ratelimit_host_side_skipped",
        "1 when the pod's host-side veth sees none of what its interface sends (an eBPF main CNI runs first there); the pod-side guard holds the limit",
    )?;
    let up = single("bpf_ratelimit_up", "Whether every pin root could be read in this scrape (1) or not (0)")?;
    let errors_gauge = single("bpf_ratelimit_read_errors", "Pin roots that could not be read in this scrape, and pods pinned under two of them")?;
    let attachments = single("bpf_ratelimit_attachments", "Shaped pod attachments read in this scrape")?;
    let scrape_skipped = single(
        "bpf_ratelimit_scrape_skipped_pods",
        "Pod attachments skipped in this scrape because their pins were being added or removed (scrapes take no lock); one skipped in every scrape is damaged: bpf-ratelimit list names it",
    )?;
    let unshaped = per_pod("bpf_ratelimit_unshaped", "1 for a pod that failurePolicy \"open\" let start unshaped (bpf-ratelimit list says why)")?;
    let unshaped_count = single("bpf_ratelimit_unshaped_pods", "Pod attachments started unshaped under failurePolicy \"open\"")?;
    for u in crate::plugin::unshaped::all() {
        let name = if u.pod.is_empty() { u.container_id.as_str() } else { u.pod.as_str() };
        unshaped.with_label_values(&[u.namespace.as_str(), name, u.uid.as_str(), u.network.as_str(), u.container_id.as_str(), u.ifname.as_str()]).set(1);
        unshaped_count.inc();
    }

    let UnlockedRead { pods, mut errors, skipped } = read_pods_unlocked(&pin_roots(pin_root));
    scrape_skipped.set(i64::try_from(skipped).unwrap_or(i64::MAX));
    let mut seen = std::collections::BTreeSet::new();
    for pod in &pods {
        // The same attachment in two pin roots (a stale copy): one series only.
        if !seen.insert(pod.id.clone()) {
            errors.push(format!("{} ({}) is pinned under more than one pin root; showing the one under the first", pod.display_name(), pod.id.container_id));
            continue;
        }
        let name = pod.pod_name();
        for dir in Direction::BOTH {
            let b = pod.bucket(dir);
            let labels = [
                pod.meta.namespace.as_str(),
                name.as_str(),
                pod.meta.uid.as_str(),
                pod.id.network.as_str(),
                pod.id.container_id.as_str(),
                pod.id.ifname.as_str(),
                dir.name(),
            ];
            if b.rate != 0 {
                limit.with_label_values(&labels).set(i64::try_from(b.rate).unwrap_or(i64::MAX));
                burst.with_label_values(&labels).set(i64::try_from(b.burst).unwrap_or(i64::MAX));
            }
            let values = [b.passed_bytes, b.dropped_bytes, b.marked_bytes, b.passed_packets, b.dropped_packets, b.marked_packets];
            for (family, v) in counters.iter().zip(values) {
                family.with_label_values(&labels).inc_by(v);
            }
        }
        let (host, pod_side) = (attach::guard_from_pins(&pod.dir), attach::pod_side_guard_from_pins(&pod.dir));
        for (side, guard) in [("host", host), ("pod", pod_side)] {
            if let Some(g) = guard {
                let labels = [pod.meta.namespace.as_str(), name.as_str(), pod.meta.uid.as_str(), pod.id.network.as_str(), pod.id.container_id.as_str(), pod.id.ifname.as_str(), side];
                guard_passed.with_label_values(&labels).inc_by(g.egress.passed_bytes);
                guard_dropped.with_label_values(&labels).inc_by(g.egress.dropped_bytes);
            }
        }
        if let (Some(h), Some(p)) = (host, pod_side) {
            let labels = [pod.meta.namespace.as_str(), name.as_str(), pod.meta.uid.as_str(), pod.id.network.as_str(), pod.id.container_id.as_str(), pod.id.ifname.as_str()];
            host_side_skipped.with_label_values(&labels).set(i64::from(attach::host_side_skipped(&h, &p)));
        }
    }
    attachments.set(seen.len() as i64);
    errors_gauge.set(errors.len() as i64);
    up.set(i64::from(errors.is_empty()));
    Ok(Scrape { text: TextEncoder::new().encode_to_string(&registry.gather())?, errors })
}

/// The most connections `serve_metrics` handles at once; more are closed.
const MAX_CONNECTIONS: usize = 16;
/// A client must finish its TLS handshake and send its request headers
/// within this...
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// ...and be done within this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Failed TLS handshakes: anyone who reaches the port can cause them.
static FAILED_HANDSHAKES: crate::ops::metrics_access::Throttled =
    crate::ops::metrics_access::Throttled::new("a TLS handshake failed (a client without a valid certificate, or not speaking TLS)");

/// Serves `metrics` on http(s)://ADDR/metrics until killed (for a
/// DaemonSet; for node_exporter's textfile collector use `metrics` alone).
/// HTTP/1.1 by hyper, one connection per request, TLS handshake and headers
/// within 5 s, a connection within 30 s, at most 16 at once; TLS, client
/// certificates and a bearer token as `access` says (ops/metrics_access).
/// Prints the address it listens on (port 0 picks a free one) to stderr.
pub fn serve_metrics(pin_root: Option<&Path>, addr: &str, access: crate::ops::metrics_access::Access) -> Result<()> {
    use std::sync::Arc;

    let roots: Arc<Option<PathBuf>> = Arc::new(pin_root.map(Path::to_path_buf));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().context("cannot start the HTTP server's runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        let scheme = if access.tls.is_some() { "https" } else { "http" };
        // The first line on stderr: tests and people read the address from it.
        eprintln!("bpf-ratelimit: serving metrics on {scheme}://{local}/metrics");
        log::info!(
            "serving metrics on {scheme}://{local}/metrics (client certificates {}, bearer token {})",
            if access.client_certificates { "required" } else { "not asked for" },
            if access.token.is_some() { "required" } else { "not asked for" }
        );
        if !local.ip().is_loopback() {
            if !access.client_certificates && access.token.is_none() {
                log::warn!(
                    "metrics on {local} with no --client-ca or --bearer-token-file: anyone who reaches this address reads the names, \
                     namespaces and traffic of this node's shaped pods; listen on 127.0.0.1 behind an authenticating proxy, or require \
                     client certificates or a token (docs/metrics.md)"
                );
            } else if access.token.is_some() && access.tls.is_none() {
                log::warn!("metrics on {local}: the bearer token travels in clear text over plain HTTP; give --tls-cert and --tls-key");
            }
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let token = access.token;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors, say: wait a moment rather than spin.
                    log::warn!("metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                log::warn!("metrics: {MAX_CONNECTIONS} connections are open; closing the one from {peer}");
                continue;
            };
            let (roots, token, tls) = (roots.clone(), token.clone(), access.tls.clone());
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                match tls {
                    None => serve_connection(stream, roots, token, peer, started).await,
                    Some(acceptor) => match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => serve_connection(tls_stream, roots, token, peer, started).await,
                        // A connection closed before any byte: a TCP probe
                        // (kubelet's tcpSocket), not a failed client.
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => log::debug!("metrics: {peer} closed before a TLS handshake"),
                        Ok(Err(e)) => FAILED_HANDSHAKES.note(format!("from {peer}: {e}")),
                        Err(_) => FAILED_HANDSHAKES.note(format!("from {peer}: not done within {HEADER_TIMEOUT:?}")),
                    },
                }
                drop(slot);
            });
        }
    })
}

/// Serves one request on a connection (plain or TLS), the bearer token
/// checked first when one is required.
async fn serve_connection<I>(
    io: I,
    roots: std::sync::Arc<Option<PathBuf>>,
    token: Option<std::sync::Arc<crate::ops::metrics_access::BearerToken>>,
    peer: std::net::SocketAddr,
    started: tokio::time::Instant,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Method, Request, Response, StatusCode};
    use hyper_util::rt::{TokioIo, TokioTimer};

    use crate::ops::metrics_access::Verdict;

    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (roots, token) = (roots.clone(), token.clone());
        async move {
            let reply = |status: StatusCode, ctype: &str, body: String| {
                Response::builder().status(status).header("content-type", ctype).body(Full::new(Bytes::from(body)))
            };
            if let Some(token) = &token {
                match token.verdict(req.headers().get(hyper::header::AUTHORIZATION).map(|v| v.as_bytes())) {
                    Verdict::Allowed => {}
                    Verdict::Unauthenticated => {
                        return Response::builder()
                            .status(StatusCode::UNAUTHORIZED)
                            .header("content-type", "text/plain")
                            .header(hyper::header::WWW_AUTHENTICATE, "Bearer realm=\"bpf-ratelimit metrics\"")
                            .body(Full::new(Bytes::from("send Authorization: Bearer <token>\n")));
                    }
                    Verdict::Forbidden => {
                        log::debug!("metrics: a wrong bearer token from {peer}");
                        return reply(StatusCode::FORBIDDEN, "text/plain", "wrong bearer token\n".into());
                    }
                }
            }
            let path = req.uri().path();
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET /metrics\n".into());
            }
            if path != "/metrics" {
                return reply(StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into());
            }
            // Reading the pins is blocking work (bpf(2)), though it takes no lock.
            let scrape = tokio::task::spawn_blocking(move || metrics(roots.as_ref().as_deref())).await;
            match scrape {
                Ok(Ok(s)) => {
                    for e in &s.errors {
                        log::warn!("metrics: {e}");
                    }
                    reply(StatusCode::OK, prometheus::TEXT_FORMAT, s.text)
                }
                Ok(Err(e)) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e:#}\n")),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
            }
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service);
    // The TLS handshake counts against the connection's time.
    if tokio::time::timeout_at(started + CONNECTION_TIMEOUT, connection).await.is_err() {
        log::warn!("metrics: closed the connection from {peer} after {CONNECTION_TIMEOUT:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ingress: Option<Limit>, egress: Option<Limit>) -> PodState {
        PodState::new(&limits::Limits { ingress, egress }, LimitBasis::Frames)
    }

    #[test]
    fn set_rewrites_limits_on_the_latest_state_and_credits_nothing_back() {
        let l = Limit { rate: 10_000_000, burst: 8_000_000 };
        // The pod spent its bucket into debt after `set` first read it.
        let mut latest = state(Some(l), Some(l));
        latest.egress.tokens = -500_000;
        latest.egress.last_ns = 123_456_789;
        latest.egress.passed_bytes = 42;
        let write = rewrite(&latest, &[(Direction::Egress, Limit { rate: 20_000_000, burst: 16_000_000 })], LimitBasis::Frames);
        assert_eq!((write.egress.rate, write.egress.burst), (2_500_000, 2_000_000));
        assert_eq!(write.egress.tokens, -500_000, "the debt stays");
        assert_eq!(write.egress.last_ns, 123_456_789, "no refill is credited again");
        assert_eq!(write.egress.passed_bytes, 42);
        assert_eq!(write.ingress, latest.ingress, "the other direction is untouched");
        // A smaller burst drops the tokens above it.
        let mut latest = state(Some(l), None);
        latest.ingress.tokens = 1_000_000;
        let write = rewrite(&latest, &[(Direction::Ingress, Limit { rate: 10_000_000, burst: 800_000 })], LimitBasis::Frames);
        assert_eq!(write.ingress.tokens, 100_000);
        // A newly limited direction starts full.
        let write = rewrite(&state(None, None), &[(Direction::Egress, l)], LimitBasis::Frames);
        assert_eq!((write.egress.tokens, write.egress.last_ns), (1_000_000, 0));
    }

    #[test]
    fn set_refuses_what_it_cannot_do_with_a_clear_message() {
        let e = Change { ingress: Some(0), ..Default::default() }.check().unwrap_err().to_string();
        assert!(e.contains("--ingress 0") && e.contains("cannot"), "{e}");
        assert!(Change { egress_burst: Some(0), ..Default::default() }.check().is_err());
        assert!(Change { egress: Some(1), ..Default::default() }.check().unwrap_err().to_string().contains("between"));
        assert!(Change::default().check().unwrap_err().to_string().contains("nothing to set"));
        assert!(Change { egress: Some(10_000_000), ..Default::default() }.check().is_ok());
    }

    #[test]
    fn planned_bursts_follow_the_rate_when_defaulted_and_stay_within_the_ceilings() {
        let ceilings = limits::Ceilings { egress_rate: Some(100_000_000), egress_burst: Some(5_000_000), ..Default::default() };
        let old = Limit { rate: 10_000_000, burst: limits::default_burst(Direction::Egress, 10_000_000) };
        let change = Change { egress: Some(50_000_000), ..Default::default() };
        let (l, capped) = plan(Direction::Egress, old, &change, &ceilings).unwrap().unwrap();
        assert_eq!((l.rate, l.burst, capped), (50_000_000, limits::default_burst(Direction::Egress, 50_000_000), None));
        let change = Change { egress: Some(1_000_000_000), egress_burst: Some(1_000_000_000), ..Default::default() };
        let (l, capped) = plan(Direction::Egress, old, &change, &ceilings).unwrap().unwrap();
        assert_eq!((l.rate, l.burst), (100_000_000, 5_000_000));
        assert!(capped.unwrap().contains("capped"));
        assert!(plan(Direction::Ingress, old, &change, &ceilings).unwrap().is_none());
    }
}

/// `cleanup` (and `uninstall --remove-datapath`): takes the plugin off a
/// live node. From every pin root this node used (or the one given), every
/// pod's attachment goes as DEL would remove it: its cgroup links and pins,
/// its host-side queue and guard filters, and (through the netns ADD
/// recorded) its pod-side queue, guard and raw-frame filter; then the
/// datapath's pins and the pin root itself; then the records of pods that
/// started unshaped. Running pods lose their limits. A pod that cannot be
/// removed does not stop the rest; every failure is reported at the end.
pub fn cleanup(pin_root: Option<&Path>) -> Result<Vec<String>> {
    let (mut done, mut failures) = (Vec::new(), Vec::new());
    for path in pin_roots(pin_root) {
        let root = match open_root(&path) {
            Ok(Some(root)) => root,
            Ok(None) => continue,
            Err(e) => {
                failures.push(format!("{e:#}"));
                continue;
            }
        };
        let attachments = match root.attachments() {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("cannot list the pods under {}: {e:#}", path.display()));
                continue;
            }
        };
        for a in &attachments {
            match root.remove_pod(a, None) {
                Ok(_) => done.push(format!("{}: removed container {} ({}) of network {}", path.display(), a.container_id, a.ifname, a.network)),
                Err(e) => failures.push(format!("{}: container {} ({}): {e:#}", path.display(), a.container_id, a.ifname)),
            }
        }
        match root.remove_datapath_if_unused() {
            Ok(()) if !path.exists() => done.push(format!("removed pin root {}", path.display())),
            Ok(()) => failures.push(format!("pin root {} is not empty after its pods and datapath went", path.display())),
            Err(e) => failures.push(format!("cannot unpin the datapath under {}: {e:#}", path.display())),
        }
    }
    for u in crate::plugin::unshaped::all() {
        let id = AttachmentId { network: u.network.clone(), container_id: u.container_id.clone(), ifname: u.ifname.clone() };
        match crate::plugin::unshaped::remove(&id) {
            Ok(()) => done.push(format!("forgot unshaped container {} ({})", u.container_id, u.ifname)),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    if !failures.is_empty() {
        for line in &done {
            eprintln!("bpf-ratelimit cleanup: {line}");
        }
        bail!("{} could not be removed:\n  {}", failures.len(), failures.join("\n  "));
    }
    Ok(done)
}
