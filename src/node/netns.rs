//! Work inside a pod's network namespace: finding its interface, and
//! attaching to it. Both need the namespace only for a moment, so they run
//! on a short-lived thread that enters it; the plugin's own thread never
//! leaves the host namespace.

use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Runs `f` on a thread inside the network namespace at `netns`.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let ns = File::open(netns).with_context(|| format!("cannot open the pod's network namespace {}", netns.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&ns, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("cannot enter the pod's network namespace {}", netns.display()))?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("the thread working in {} panicked", netns.display()))?
    })
}

/// The index of interface `ifname` in the current thread's namespace.
pub fn ifindex(ifname: &str) -> Result<u32> {
    let name = std::ffi::CString::new(ifname).map_err(|_| anyhow!("interface name {ifname:?} holds a NUL byte"))?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(anyhow!("interface {ifname:?} not found: {}", std::io::Error::last_os_error())),
        index => Ok(index),
    }
}
