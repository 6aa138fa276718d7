//! Logs go to stderr and, when the config sets `logFile`, to that file too.
//! Never to stdout: stdout carries only the CNI result.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

struct Tee {
    file: Option<std::fs::File>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        if let Some(f) = &mut self.file {
            let _ = f.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(f) = &mut self.file {
            f.flush()?;
        }
        std::io::stderr().flush()
    }
}

/// Installs the logger. `level` is the config's logLevel (error, warn, info,
/// debug, trace; default warn). An unusable log file is reported on stderr
/// and otherwise ignored: logging must not fail a pod.
pub fn init(level: Option<&str>, file: Option<&Path>) {
    let filter = match level.map(str::to_ascii_lowercase).as_deref() {
        Some("error") => log::LevelFilter::Error,
        Some("info") => log::LevelFilter::Info,
        Some("debug") => log::LevelFilter::Debug,
        Some("trace") => log::LevelFilter::Trace,
        Some("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Warn,
    };
    // O_NOFOLLOW: a symlink planted at the log path must not redirect a
    // root process's writes; 0640: logs name pods and are not for everyone.
    use std::os::unix::fs::OpenOptionsExt;
    let file = file.and_then(|p| match OpenOptions::new().create(true).append(true).mode(0o640).custom_flags(libc::O_NOFOLLOW).open(p) {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("bpf-ratelimit: cannot open logFile {}: {e}", p.display());
            None
        }
    });
    let _ = env_logger::Builder::new()
        .filter_level(filter)
        .format(|buf, record| {
            writeln!(
                buf,
                "{} bpf-ratelimit[{}] {}: {}",
                buf.timestamp_millis(),
                std::process::id(),
                record.level(),
                record.args()
            )
        })
        .target(env_logger::Target::Pipe(Box::new(Tee { file })))
        .try_init();
}
