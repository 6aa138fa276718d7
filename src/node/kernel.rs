//! The running kernel's version, for choosing between mechanisms that only
//! some kernels have (tcx from 6.6) and for saying which kernel a figure
//! came from.

/// The kernel release (`uname -r`), from procfs.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// (major, minor) of a release string such as "6.1.0-28-amd64".
pub fn parse(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether the running kernel is `major.minor` or later.
pub fn at_least(major: u32, minor: u32) -> bool {
    parse(&release()).is_some_and(|v| v >= (major, minor))
}

#[cfg(test)]
mod tests {
    #[test]
    fn releases_parse_to_major_and_minor() {
        assert_eq!(super::parse("6.1.0-28-amd64"), Some((6, 1)));
        assert_eq!(super::parse("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(super::parse("5.15.0"), Some((5, 15)));
        assert_eq!(super::parse("garbage"), None);
        assert!(super::parse("6.18.1").unwrap() >= (6, 6));
        assert!(super::parse("6.1.1").unwrap() < (6, 6));
    }
}
