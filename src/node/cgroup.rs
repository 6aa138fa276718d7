//! Finding the pod's cgroup v2 directory: from runtimeConfig.cgroupPath when
//! the runtime sends it, else by searching for K8S_POD_UID under the kubelet's
//! layouts for both cgroup drivers and all QoS classes.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::cni::{code, truncate, CniError};

/// The cgroup2 mount point from a mountinfo text (the first cgroup2 mount).
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(unescape_mountinfo(left.split_whitespace().nth(4)?)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where systemd mounts the cgroup v2 hierarchy: unified hosts, then hybrid ones.
const USUAL_MOUNTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// The cgroup v2 root: `cgroupRoot` from the config, else the usual mount
/// points when they hold the hierarchy's root, else the mount found in
/// /proc/self/mountinfo. (Every cgroup2 mount shows the same hierarchy; the
/// two checks cost ADD two syscalls, where formatting mountinfo took it
/// 0.1 ms.)
pub fn cgroup2_root(configured: Option<&Path>) -> Result<PathBuf, CniError> {
    if let Some(root) = configured {
        if !is_cgroup2(root) {
            return Err(CniError::new(
                code::CGROUP,
                format!("cgroupRoot {} is not a cgroup v2 directory", root.display()),
                "set cgroupRoot to the cgroup2 mount point, or remove it to use the one in /proc/self/mountinfo",
            ));
        }
        return Ok(root.to_path_buf());
    }
    if let Some(usual) = USUAL_MOUNTS.iter().map(Path::new).find(|p| is_cgroup2_root(p)) {
        return Ok(usual.to_path_buf());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CniError::new(code::CGROUP, "cannot read /proc/self/mountinfo", e.to_string()))?;
    cgroup2_mount_in(&mountinfo).ok_or_else(|| {
        CniError::new(
            code::CGROUP,
            "no cgroup v2 filesystem is mounted",
            "bpf-ratelimit attaches to the pod's cgroup v2 directory; mount cgroup2 (unified or hybrid hierarchy) or set cgroupRoot",
        )
    })
}

/// A cgroup2 directory that is the hierarchy's root (not a bind mount of a
/// cgroup below it): only non-root cgroups have `cgroup.type`.
fn is_cgroup2_root(path: &Path) -> bool {
    is_cgroup2(path) && !path.join("cgroup.type").exists()
}

pub fn is_cgroup2(path: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 as i64 == CGROUP2_SUPER_MAGIC)
}

/// The cgroup id the kernel uses for a cgroup v2 directory: its inode number.
pub fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// Relative candidates for `runtimeConfig.cgroupPath`, in both driver forms:
/// cgroupfs `/kubepods/burstable/pod<uid>`, systemd
/// `kubepods-burstable-pod<uid>.slice` (expanded to its nested slices).
pub fn cgroup_path_candidate(cgroup_path: &str) -> Result<PathBuf, CniError> {
    let bad = |why: &str| {
        CniError::config(format!(
            "invalid runtimeConfig.cgroupPath {:?}: {why}",
            truncate(cgroup_path, 120)
        ))
    };
    if cgroup_path.len() > 4096 || cgroup_path.contains('\0') {
        return Err(bad("too long or holds a NUL byte"));
    }
    let trimmed = cgroup_path.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(bad("it names the cgroup root, not a pod cgroup"));
    }
    let rel = Path::new(trimmed);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(bad("it may not contain '.' or '..'"));
    }
    // A single systemd slice name: expand "a-b-c.slice" to "a.slice/a-b.slice/a-b-c.slice".
    if !trimmed.contains('/') && trimmed.ends_with(".slice") {
        return Ok(expand_systemd_slice(trimmed));
    }
    Ok(rel.to_path_buf())
}

pub fn expand_systemd_slice(slice: &str) -> PathBuf {
    let stem = slice.strip_suffix(".slice").unwrap_or(slice);
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    path
}

/// Where the kubelet puts a pod's cgroup, for both drivers and all three QoS
/// classes (Guaranteed pods sit directly under kubepods).
pub fn pod_uid_candidates(uid: &str) -> Result<Vec<PathBuf>, CniError> {
    let ok = !uid.is_empty() && uid.len() <= 64 && uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !ok {
        return Err(CniError::env(format!(
            "invalid K8S_POD_UID {:?} in CNI_ARGS: expected a UID of letters, digits and '-'",
            truncate(uid, 80)
        )));
    }
    let u = uid.replace('-', "_");
    Ok(vec![
        PathBuf::from(format!("kubepods/burstable/pod{uid}")),
        PathBuf::from(format!("kubepods/besteffort/pod{uid}")),
        PathBuf::from(format!("kubepods/pod{uid}")),
        PathBuf::from(format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice")),
        PathBuf::from(format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice")),
        PathBuf::from(format!("kubepods.slice/kubepods-pod{u}.slice")),
    ])
}

/// Resolves the pod's cgroup directory under `root`.
pub fn find_pod_cgroup(root: &Path, cgroup_path: Option<&str>, pod_uid: Option<&str>) -> Result<PathBuf, CniError> {
    let candidates: Vec<PathBuf> = match (cgroup_path, pod_uid) {
        (Some(p), _) => vec![cgroup_path_candidate(p)?],
        (None, Some(uid)) => pod_uid_candidates(uid)?,
        (None, None) => {
            return Err(CniError::new(
                code::CGROUP,
                "cannot tell which cgroup is the pod's",
                "the runtime sent neither runtimeConfig.cgroupPath (add \"cgroupPath\": true to the plugin's capabilities) nor K8S_POD_UID in CNI_ARGS",
            ))
        }
    };
    let canonical_root = root
        .canonicalize()
        .map_err(|e| CniError::new(code::CGROUP, format!("cannot open cgroup root {}", root.display()), e.to_string()))?;
    for rel in &candidates {
        let dir = root.join(rel);
        let Ok(canonical) = dir.canonicalize() else { continue };
        // A symlink must not lead us out of the cgroup tree.
        if canonical.starts_with(&canonical_root) && canonical != canonical_root && canonical.is_dir() {
            return Ok(canonical);
        }
    }
    let searched: Vec<String> = candidates.iter().map(|c| root.join(c).display().to_string()).collect();
    let how = if cgroup_path.is_some() { "runtimeConfig.cgroupPath" } else { "K8S_POD_UID" };
    Err(CniError::new(
        code::CGROUP,
        format!("the pod's cgroup was not found (from {how})"),
        format!("searched: {}", searched.join(", ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let mi = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                  35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount_in(mi), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let mi = "28 22 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount_in(mi), Some(PathBuf::from("/sys/fs/cgroup")));
        let mi = "28 22 0:26 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount_in(mi), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(cgroup2_mount_in("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn cgroup_path_forms() {
        assert_eq!(cgroup_path_candidate("/kubepods/burstable/podabc").unwrap(), PathBuf::from("kubepods/burstable/podabc"));
        assert_eq!(
            cgroup_path_candidate("kubepods-burstable-pod1_2.slice").unwrap(),
            PathBuf::from("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice")
        );
        assert_eq!(
            cgroup_path_candidate("kubepods-pod1_2.slice").unwrap(),
            PathBuf::from("kubepods.slice/kubepods-pod1_2.slice")
        );
        assert_eq!(
            cgroup_path_candidate("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice").unwrap(),
            PathBuf::from("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice")
        );
        for bad in ["/", "", "/kubepods/../../etc", "./x", "a\0b"] {
            assert_eq!(cgroup_path_candidate(bad).unwrap_err().code, code::INVALID_CONFIG, "{bad:?}");
        }
    }

    #[test]
    fn uid_candidates_cover_both_drivers_and_qos_classes() {
        let c = pod_uid_candidates("12-34").unwrap();
        assert_eq!(c.len(), 6);
        assert!(c.contains(&PathBuf::from("kubepods/pod12-34")));
        assert!(c.contains(&PathBuf::from("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12_34.slice")));
        assert!(c.contains(&PathBuf::from("kubepods.slice/kubepods-pod12_34.slice")));
        for bad in ["", "../x", "a/b", "a b"] {
            assert_eq!(pod_uid_candidates(bad).unwrap_err().code, code::INVALID_ENV);
        }
    }

    #[test]
    fn find_in_a_plain_directory_tree_and_name_what_was_searched() {
        let tmp = std::env::temp_dir().join(format!("bpf-ratelimit-cg-{}", std::process::id()));
        let pod = tmp.join("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podaa_bb.slice");
        std::fs::create_dir_all(&pod).unwrap();
        let found = find_pod_cgroup(&tmp, None, Some("aa-bb")).unwrap();
        assert_eq!(found, pod.canonicalize().unwrap());
        let e = find_pod_cgroup(&tmp, None, Some("cc-dd")).unwrap_err();
        assert_eq!(e.code, code::CGROUP);
        assert!(e.details.contains("kubepods/burstable/podcc-dd"), "{e}");
        assert!(e.details.contains("kubepods-pod cc_dd".replace(' ', "").as_str()), "{e}");
        let e = find_pod_cgroup(&tmp, None, None).unwrap_err();
        assert!(e.details.contains("cgroupPath"), "{e}");
        // A symlink out of the tree is not followed.
        std::os::unix::fs::symlink("/etc", tmp.join("escape")).unwrap();
        assert!(find_pod_cgroup(&tmp, Some("/escape"), None).is_err());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
