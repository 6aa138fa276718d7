//! Work inside a pod's network namespace: finding its interface, and
//! attaching to it. Both need the namespace only for a moment: the plugin's
//! one thread enters it and returns before anything else runs. (A thread of
//! its own per visit, as before, cost ADD a clone and two cross-CPU
//! wake-ups, 0.1-0.3 ms on a 2-vCPU VM.)

use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Runs `f` inside the network namespace at `netns`, then returns to this
/// thread's own. Sockets `f` opens stay in the pod's namespace; `f` must not
/// spawn threads that outlive it.
pub fn in_netns<T>(netns: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let pod = File::open(netns).with_context(|| format!("cannot open the pod's network namespace {}", netns.display()))?;
    let home = File::open("/proc/thread-self/ns/net").context("cannot open this thread's network namespace")?;
    setns(&pod, CloneFlags::CLONE_NEWNET).with_context(|| format!("cannot enter the pod's network namespace {}", netns.display()))?;
    let result = f();
    if let Err(e) = setns(&home, CloneFlags::CLONE_NEWNET) {
        // Never seen (we hold the descriptor and CAP_SYS_ADMIN), and the
        // rest of this command, rollback included, would act on the pod's
        // interfaces by host index: stop here rather than go on.
        let error = crate::cni::CniError::new(
            crate::cni::code::DATAPATH,
            "cannot return to the host's network namespace",
            format!("after entering {}: {e}", netns.display()),
        );
        log::error!("{error}");
        if !log::log_enabled!(log::Level::Error) {
            eprintln!("bpf-ratelimit: {error}");
        }
        std::process::exit(i32::try_from(error.code).unwrap_or(i32::MAX));
    }
    result
}

/// The index of interface `ifname` in the current thread's namespace.
/// The MTU of `ifname` in the calling thread's netns.
pub fn mtu(ifname: &str) -> Result<u32> {
    if ifname.len() >= libc::IF_NAMESIZE {
        return Err(anyhow!("interface name {ifname:?} is too long"));
    }
    // SAFETY: a plain socket() call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(anyhow!("cannot open a socket to read {ifname}'s MTU: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh socket this function owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads ifr_name and writes ifru_mtu of `req`.
    if unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::SIOCGIFMTU, &mut req) } != 0 {
        return Err(anyhow!("cannot read the MTU of {ifname}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel filled ifru_mtu.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

pub fn ifindex(ifname: &str) -> Result<u32> {
    let name = std::ffi::CString::new(ifname).map_err(|_| anyhow!("interface name {ifname:?} holds a NUL byte"))?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(anyhow!("interface {ifname:?} not found: {}", std::io::Error::last_os_error())),
        index => Ok(index),
    }
}
