//! The capabilities the plugin needs, checked before any command touches
//! the kernel, so that an unprivileged run fails with an error naming what
//! is missing instead of a bare EPERM from deep inside a bpf(2) call.
//!
//! - CAP_BPF: create maps, load programs, open pinned objects;
//! - CAP_NET_ADMIN: attach cgroup_skb and sock_ops programs;
//! - CAP_SYS_ADMIN: mount bpffs, look up programs by ID (BPF_PROG_GET_FD_BY_ID),
//!   query a cgroup's programs, and BPF_F_LOCK map access to cgroup storage.

/// (capability number, name), per linux/capability.h.
pub const REQUIRED: [(u32, &str); 3] = [(39, "CAP_BPF"), (12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN")];

/// The effective capability set of this process (CapEff in /proc/self/status).
fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string())))
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(0)
}

/// Names of the required capabilities this process lacks.
pub fn missing() -> Vec<&'static str> {
    missing_from(effective())
}

fn missing_from(eff: u64) -> Vec<&'static str> {
    REQUIRED.iter().filter(|(bit, _)| eff & (1u64 << bit) == 0).map(|(_, name)| *name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_missing_ones() {
        assert_eq!(missing_from(0), vec!["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"]);
        assert_eq!(missing_from((1 << 39) | (1 << 21)), vec!["CAP_NET_ADMIN"]);
        assert!(missing_from(u64::MAX).is_empty());
    }
}
