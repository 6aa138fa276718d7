//! The delay line between a testbed's pod side and its server
//! (tests/tools/delayline.c, built by build.rs): a TUN device in each of two
//! network namespaces, every packet held a one-way delay before it crosses.
//! It also counts what a wire would carry, per segment, in each direction.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The delay line program, built from tests/tools/delayline.c.
pub const PROGRAM: &str = env!("BRL_DELAYLINE");

/// What one direction of the line carried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Carried {
    /// Frames on the wire: a GSO packet of N segments counts N.
    pub frames: u64,
    /// Their bytes with IP and L4 headers per segment and 14 bytes of Ethernet each.
    pub wire_bytes: u64,
    /// Packets as handed over (a GSO packet counts once).
    pub packets: u64,
    /// Packets the far side refused (never expected).
    pub dropped: u64,
}

impl Carried {
    pub fn since(&self, before: &Carried) -> Carried {
        Carried {
            frames: self.frames - before.frames,
            wire_bytes: self.wire_bytes - before.wire_bytes,
            packets: self.packets - before.packets,
            dropped: self.dropped - before.dropped,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Counters {
    /// From the first namespace to the second.
    pub a_to_b: Carried,
    pub b_to_a: Carried,
}

/// A running delay line; stopped when dropped.
pub struct DelayLine {
    child: Child,
    /// Its stdout, a line at a time; one reader at a time.
    lines: Mutex<Receiver<String>>,
}

impl DelayLine {
    /// Creates TUN device `dev_a` in `netns_a` and `dev_b` in `netns_b`
    /// and holds every packet `one_way` before it crosses.
    pub fn start(netns_a: &Path, dev_a: &str, netns_b: &Path, dev_b: &str, one_way: Duration) -> Result<Self> {
        let mut child = Command::new(PROGRAM)
            .arg(netns_a)
            .arg(dev_a)
            .arg(netns_b)
            .arg(dev_b)
            .arg(one_way.as_micros().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run the delay line {PROGRAM}"))?;
        let stdout = child.stdout.take().context("the delay line has no stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        match lines.recv_timeout(Duration::from_secs(5)) {
            Ok(l) if l == "ready" => Ok(DelayLine { child, lines: Mutex::new(lines) }),
            other => {
                let _ = child.kill();
                let err = child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default();
                bail!("the delay line did not start ({other:?}): {err}")
            }
        }
    }

    /// What the line has carried so far.
    pub fn counters(&self) -> Result<Counters> {
        let lines = self.lines.lock().map_err(|_| anyhow::anyhow!("a reader of the delay line panicked"))?;
        while lines.try_recv().is_ok() {}
        // SAFETY: signalling our own child, which is alive (we hold it).
        if unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) } != 0 {
            bail!("cannot signal the delay line: {}", std::io::Error::last_os_error());
        }
        let line = lines.recv_timeout(Duration::from_secs(2)).context("the delay line printed no counters")?;
        serde_json::from_str(&line).with_context(|| format!("the delay line printed {line:?}"))
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        // SAFETY: as in counters().
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
