//! STATUS is polled by runtimes, and proving that the kernel accepts the
//! datapath means a verifier run (tens of ms). The answer only changes with
//! the kernel or the datapath, so a success is remembered per kernel release,
//! boot and datapath version in /run/bpf-ratelimit/status-verified (tmpfs,
//! root only). Failures are not cached: they are retried on every call.

use std::fs;
use std::path::Path;

const CACHE_DIR: &str = "/run/bpf-ratelimit";
const CACHE_FILE: &str = "/run/bpf-ratelimit/status-verified";

/// What the cached verdict depends on.
fn key() -> String {
    // The uname release, as procfs gives it.
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!("kernel {}\nboot {}\ndatapath {}\n", release.trim(), boot_id.trim(), crate::datapath::attach::datapath_version())
}

/// Whether this kernel, this boot, already loaded this datapath for STATUS.
pub fn verified() -> bool {
    fs::read_to_string(CACHE_FILE).is_ok_and(|k| k == key())
}

/// Remembers a successful load. Best effort: a failure only costs the next
/// STATUS another load.
pub fn record_verified() {
    use std::os::unix::fs::DirBuilderExt;
    let tmp = format!("{CACHE_FILE}.{}", std::process::id());
    let done = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(CACHE_DIR)
        .and_then(|()| fs::write(&tmp, key()))
        .and_then(|()| fs::rename(&tmp, CACHE_FILE));
    if let Err(e) = done {
        let _ = fs::remove_file(&tmp);
        log::info!("cannot cache the STATUS verdict in {}: {e}", Path::new(CACHE_FILE).display());
    }
}
