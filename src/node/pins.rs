//! The pin root: where the plugin keeps what outlives one CNI invocation, on
//! bpffs, and the lock every command takes on it.
//!
//! Layout under the pin root (default /sys/fs/bpf/bpf-ratelimit):
//!
//! ```text
//! .                                 flock()ed by every command, so ADD/DEL/GC never race
//! datapath/<version>/               one loaded copy of ebpf/shaper.bpf.c per plugin build
//!     shape_egress_prog  shape_ingress_prog  pace_tcp  refuse_qdisc_bypass
//!     refuse_raw_frames  pod_state  flow_state
//! datapath/loading-<pid>/           a load in progress (removed if its process died)
//! pods/<network>/<containerID>/<ifname>/
//!                                   one directory per CNI attachment (names escaped,
//!                                   because bpffs refuses '.' in names); the network
//!                                   level keeps GC of one network off another's pods
//!     egress  ingress  sockops      bpf_links on the pod cgroup
//!     setsockopt                    unless allowRawSockets
//!     state                         the pod_state map these links' programs use
//!     meta                          the pod's identity and ceilings (pod_meta)
//! ```
//!
//! What is attached and loaded, and how it is removed, is the datapath's
//! (datapath/attach.rs); this module knows only where things are.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
const MOUNT_LOCK: &str = "/run/bpf-ratelimit.mount.lock";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

/// Whether the nearest existing ancestor of `path` is on a bpf filesystem.
fn on_bpffs(path: &Path) -> bool {
    let mut existing = path;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    is_bpffs(existing)
}

/// For STATUS, without side effects: `pin_root` is on bpffs, or ADD can
/// mount one at /sys/fs/bpf because the kernel has the filesystem.
pub fn bpffs_usable(pin_root: &Path) -> Result<()> {
    if on_bpffs(pin_root) {
        return Ok(());
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let kernel_has_bpffs = filesystems.lines().any(|l| l.split_whitespace().last() == Some("bpf"));
    if pin_root.starts_with(DEFAULT_BPFFS) && pin_root != Path::new(DEFAULT_BPFFS) && kernel_has_bpffs {
        return Ok(());
    }
    bail!(
        "pinRoot {} is not on a bpf filesystem{}",
        pin_root.display(),
        if kernel_has_bpffs { "; mount one there (mount -t bpf bpf DIR) or use a pinRoot under /sys/fs/bpf" } else { " and the kernel has none" }
    )
}


/// Makes sure `pin_root` can live on a bpf filesystem, mounting one at
/// /sys/fs/bpf when the pin root is under it and nothing is mounted there.
pub fn ensure_bpffs(pin_root: &Path) -> Result<()> {
    if on_bpffs(pin_root) {
        return Ok(());
    }
    let default = Path::new(DEFAULT_BPFFS);
    if pin_root.starts_with(default) && pin_root != default {
        // Two first ADDs on a node must not both mount: the second mount
        // would hide the first one's pins. The pin root cannot be the lock
        // yet, so a lock file in /run is.
        let _lock = File::create(MOUNT_LOCK).with_context(|| format!("cannot create the mount lock {MOUNT_LOCK}"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(_lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot lock {MOUNT_LOCK}"));
        }
        if on_bpffs(pin_root) {
            return Ok(());
        }
        fs::create_dir_all(default).with_context(|| format!("cannot create {DEFAULT_BPFFS}"))?;
        use nix::mount::{mount, MsFlags};
        mount(
            Some("bpf"),
            default,
            Some("bpf"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .with_context(|| format!("cannot mount bpffs at {DEFAULT_BPFFS} (mount -t bpf bpf {DEFAULT_BPFFS})"))?;
        log::info!("mounted bpffs at {DEFAULT_BPFFS}");
        return Ok(());
    }
    bail!(
        "pinRoot {} is not on a bpf filesystem; mount one there (mount -t bpf bpf DIR) or use a pinRoot under {DEFAULT_BPFFS}",
        pin_root.display()
    )
}

/// How long a command waits for another one's lock on a pin root
/// (`lockTimeoutSeconds`), as milliseconds; set once per process.
static LOCK_TIMEOUT_MS: AtomicU64 = AtomicU64::new(DEFAULT_LOCK_TIMEOUT.as_millis() as u64);
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
const LOCK_POLL: Duration = Duration::from_millis(5);

pub fn set_lock_timeout(timeout: Duration) {
    LOCK_TIMEOUT_MS.store(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
}

fn lock_timeout() -> Duration {
    Duration::from_millis(LOCK_TIMEOUT_MS.load(Ordering::Relaxed))
}

/// Another command held the pin root's lock for longer than the lock
/// timeout: the runtime should try again later (CNI code 11).
#[derive(Debug)]
pub struct LockTimeout {
    pub path: PathBuf,
    pub waited: Duration,
}

impl std::fmt::Display for LockTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "another bpf-ratelimit command held the lock on pin root {} for over {:?}", self.path.display(), self.waited)
    }
}

impl std::error::Error for LockTimeout {}

/// One CNI attachment: the network (the config's name), container and interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AttachmentId {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

/// The pin root, locked for the lifetime of this value.
pub struct PinRoot {
    path: PathBuf,
    _lock: File,
}

impl PinRoot {
    /// Opens the pin root for ADD: mounts bpffs and creates it if needed.
    pub fn create(path: &Path) -> Result<Self> {
        ensure_bpffs(path)?;
        if is_mount_root(path) {
            bail!("pinRoot {} is the root of a bpf filesystem; use a directory of its own, such as /sys/fs/bpf/bpf-ratelimit", path.display());
        }
        // The last DEL removes the pin root; retry if that raced with us.
        for _ in 0..10 {
            fs::create_dir_all(path).with_context(|| format!("cannot create pin root {}", path.display()))?;
            if let Some(root) = Self::lock(path, true)? {
                crate::node::pin_roots::record(path);
                return Ok(root);
            }
        }
        bail!("pin root {} keeps disappearing", path.display())
    }

    /// Opens an existing pin root; `None` when there is none, so nothing is attached.
    pub fn existing(path: &Path) -> Result<Option<Self>> {
        // A mount root cannot be ours: create() refuses it.
        if !path.is_dir() || !is_bpffs(path) || is_mount_root(path) {
            return Ok(None);
        }
        Self::lock(path, true)
    }

    /// As `existing`, but `None` too when another command holds the lock:
    /// for looking into a second pin root while holding one (never wait for
    /// two locks, so two commands cannot deadlock).
    pub fn existing_unless_busy(path: &Path) -> Result<Option<Self>> {
        if !path.is_dir() || !is_bpffs(path) || is_mount_root(path) {
            return Ok(None);
        }
        Self::lock(path, false)
    }

    /// Locks the directory; `None` if it was removed while we waited, or
    /// (without `wait`) if it is busy.
    fn lock(path: &Path, wait: bool) -> Result<Option<Self>> {
        use std::os::unix::fs::MetadataExt;
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot open pin root {}", path.display())),
        };
        // Waits in short polls up to the lock timeout rather than in a
        // blocking flock: a command stuck holding the lock must not stall
        // every ADD on the node behind it for ever.
        let deadline = Instant::now() + lock_timeout();
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e).context("cannot lock the pin root");
            }
            if !wait {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                return Err(anyhow::Error::new(LockTimeout { path: path.to_path_buf(), waited: lock_timeout() }));
            }
            std::thread::sleep(LOCK_POLL);
        }
        let same = fs::metadata(path).ok().map(|m| m.ino()) == Some(file.metadata()?.ino());
        Ok(same.then(|| Self { path: path.to_path_buf(), _lock: file }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn pods_dir(&self) -> PathBuf {
        self.path.join("pods")
    }

    pub(crate) fn datapath_root(&self) -> PathBuf {
        self.path.join("datapath")
    }

    /// The directory of one attachment. Every part was validated by cni/netconf.
    pub fn pod_dir(&self, id: &AttachmentId) -> PathBuf {
        pod_dir_under(&self.path, id)
    }

    /// Every attachment that has pins.
    pub fn attachments(&self) -> Result<Vec<AttachmentId>> {
        attachments_under(&self.path)
    }

}

/// A pin root looked into without its lock, for `metrics`: a scrape must
/// never hold up an ADD or DEL, nor wait for one. What it reads may be half
/// written or half removed (an ADD or DEL under way), and its reader must
/// take that for what it is rather than for damage.
pub struct UnlockedPinRoot {
    path: PathBuf,
}

impl UnlockedPinRoot {
    /// As `PinRoot::existing`, without the lock.
    pub fn existing(path: &Path) -> Option<Self> {
        (path.is_dir() && is_bpffs(path) && !is_mount_root(path)).then(|| Self { path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pod_dir(&self, id: &AttachmentId) -> PathBuf {
        pod_dir_under(&self.path, id)
    }

    /// The attachments that have pins at this moment.
    pub fn attachments(&self) -> Result<Vec<AttachmentId>> {
        attachments_under(&self.path)
    }
}

fn pod_dir_under(pin_root: &Path, id: &AttachmentId) -> PathBuf {
    pin_root.join("pods").join(escape_name(&id.network)).join(escape_name(&id.container_id)).join(escape_name(&id.ifname))
}

/// The attachments under a pin root. The pods directory that cannot be read
/// is an error; a directory below it that vanished while it was listed (a
/// DEL without the lock's protection, for UnlockedPinRoot) is no attachment.
fn attachments_under(pin_root: &Path) -> Result<Vec<AttachmentId>> {
    let pods = pin_root.join("pods");
    let names = |dir: &Path| -> Vec<(String, PathBuf)> {
        fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| (unescape_name(&e.file_name().to_string_lossy()), e.path())).collect())
            .unwrap_or_default()
    };
    if let Err(e) = fs::read_dir(&pods) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e).with_context(|| format!("cannot list {}", pods.display()));
        }
    }
    let mut out = Vec::new();
    for (network, net_dir) in names(&pods) {
        for (container_id, id_dir) in names(&net_dir) {
            for (ifname, _) in names(&id_dir) {
                out.push(AttachmentId { network: network.clone(), container_id: container_id.clone(), ifname });
            }
        }
    }
    out.sort();
    Ok(out)
}

fn is_mount_root(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(path), path.parent().map(fs::metadata)) {
        (Ok(m), Some(Ok(p))) => m.dev() != p.dev(),
        _ => false,
    }
}

/// bpffs refuses names with '.', which container IDs and interface names may
/// hold: '.' becomes "%2e" and '%' "%25", so the mapping is reversible.
pub fn escape_name(name: &str) -> String {
    name.replace('%', "%25").replace('.', "%2e")
}

pub fn unescape_name(name: &str) -> String {
    name.replace("%2e", ".").replace("%25", "%")
}

/// Removes a directory of pins (files only, one level). Missing is fine.
pub(crate) fn remove_pin_dir(dir: &Path) -> Result<bool> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot unpin {}", path.display())),
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
}

/// Whether the process named by a `loading-<pid>` directory still runs.
pub(crate) fn process_alive(pid: &str) -> bool {
    pid.parse::<u32>().is_ok_and(|p| p != std::process::id() && Path::new("/proc").join(p.to_string()).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_reversibly_without_dots() {
        for name in ["abc", "a.b", "eth0.100", "x%2ey", "%", "..."] {
            let e = escape_name(name);
            assert!(!e.contains('.'), "{e}");
            assert_eq!(unescape_name(&e), name);
        }
    }
}
