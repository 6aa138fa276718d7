//! The pin roots this node has used since boot, so that DEL, CHECK and GC
//! find an attachment even after the config's `pinRoot` changed since ADD.
//!
//! Every ADD records its pin root as an empty file in
//! /run/bpf-ratelimit/pin-roots/ (tmpfs, cleared at boot like bpffs itself).
//! Commands look in the configured pin root first, then the default one,
//! then every recorded one that still exists; names are the path with '%'
//! and '/' escaped, so the mapping is reversible.

use std::fs;
use std::path::{Path, PathBuf};

use crate::policy::netconf::DEFAULT_PIN_ROOT;

pub const INDEX_DIR: &str = "/run/bpf-ratelimit/pin-roots";

fn escape(path: &Path) -> String {
    path.to_string_lossy().replace('%', "%25").replace('/', "%2f")
}

fn unescape(name: &str) -> PathBuf {
    PathBuf::from(name.replace("%2f", "/").replace("%25", "%"))
}

/// Records a pin root. Best effort: without the index, commands still find
/// attachments under the configured and the default pin root.
pub fn record(pin_root: &Path) {
    let entry = Path::new(INDEX_DIR).join(escape(pin_root));
    if entry.exists() {
        return;
    }
    use std::os::unix::fs::DirBuilderExt;
    let made = fs::DirBuilder::new().recursive(true).mode(0o700).create(INDEX_DIR).and_then(|()| fs::write(&entry, b""));
    if let Err(e) = made {
        log::warn!("cannot record pin root {} in {INDEX_DIR}: {e}", pin_root.display());
    }
}

/// Where to look for attachments: `configured` first, then the default pin
/// root, then every recorded pin root that still exists. Entries of removed
/// pin roots are dropped from the index.
pub fn known(configured: &Path) -> Vec<PathBuf> {
    let mut out = vec![configured.to_path_buf()];
    let mut push = |p: PathBuf| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    push(PathBuf::from(DEFAULT_PIN_ROOT));
    if let Ok(entries) = fs::read_dir(INDEX_DIR) {
        for e in entries.flatten() {
            let root = unescape(&e.file_name().to_string_lossy());
            if root.is_dir() {
                push(root);
            } else {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_reversibly() {
        for p in ["/sys/fs/bpf/bpf-ratelimit", "/sys/fs/bpf/a%2fb", "/x/%/y"] {
            let e = escape(Path::new(p));
            assert!(!e.contains('/'), "{e}");
            assert_eq!(unescape(&e), PathBuf::from(p));
        }
    }
}
