//! iproute2's `tc`, run as an operator would, in the node's netns or a pod's.
//! The ingress queue (a TBF on the host-side veth) and the raw-frame guard
//! (a cls_bpf filter on the pod's interface) are set up with it.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

fn command() -> Command {
    let path = ["/usr/sbin/tc", "/sbin/tc", "/usr/bin/tc", "/bin/tc"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("tc");
    Command::new(path)
}

fn finish(mut cmd: Command, what: &str, stdin: Option<&str>) -> Result<String> {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().context("cannot run tc (iproute2 is needed on the node)")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).context("cannot write to tc")?;
    }
    let out = child.wait_with_output().context("tc did not finish")?;
    if !out.status.success() {
        bail!("tc {what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `tc ARGS` in the node's netns, with `stdin`; its stdout.
pub fn run(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = command();
    cmd.args(args);
    finish(cmd, &args.join(" "), stdin)
}

/// Runs `tc ARGS` inside the network namespace at `netns`, with `stdin`.
pub fn run_in(netns: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let ns: OwnedFd = std::fs::File::open(netns).with_context(|| format!("cannot open the pod's network namespace {}", netns.display()))?.into();
    let mut cmd = command();
    cmd.args(args);
    // SAFETY: setns is async-signal-safe and the fd stays open until exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    finish(cmd, &args.join(" "), stdin)
}
