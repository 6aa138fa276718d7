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

/// Opens a log file to append to. O_NOFOLLOW: a symlink planted at the log
/// path must not redirect a root process's writes; 0640: logs name pods and
/// are not for everyone.
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).append(true).mode(0o640).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// An audit line: a change made by hand (`set`), written to stderr and to
/// `file` whatever the log level, so that the default `warn` keeps it.
/// Returns why the file could not be written, if it could not.
pub fn audit(file: Option<&Path>, line: &str) -> Option<String> {
    let text = format!("{} bpf-ratelimit[{}] AUDIT: {line}\n", utc_now(), std::process::id());
    let _ = std::io::stderr().write_all(text.as_bytes());
    let path = file?;
    match open_log(path).and_then(|mut f| f.write_all(text.as_bytes())) {
        Ok(()) => None,
        Err(e) => Some(format!("cannot append the audit line to {}: {e}", path.display())),
    }
}

/// Now as RFC 3339 UTC with milliseconds, as the logger stamps its lines.
fn utc_now() -> String {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = (since.as_secs() as i64, since.subsec_millis());
    // Days to a civil date (Howard Hinnant's algorithm, proleptic Gregorian).
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let tod = secs.rem_euclid(86_400);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", tod / 3600, tod % 3600 / 60, tod % 60)
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
    let file = file.and_then(|p| match open_log(p) {
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

#[cfg(test)]
mod tests {
    #[test]
    fn audit_stamps_read_as_the_logger_writes_them() {
        let now = super::utc_now();
        assert_eq!(now.len(), "2026-12-06T22:10:00.123Z".len(), "{now}");
        let year: i32 = now[..4].parse().unwrap();
        assert!((2024..2200).contains(&year), "{now}");
        assert!(now.ends_with('Z') && &now[10..11] == "T", "{now}");
    }
}
