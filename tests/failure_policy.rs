//! `failurePolicy` and `lockTimeoutSeconds` (issue 22), with the datapath
//! made to fail for real: a pinRoot on no bpf filesystem, a datapath the
//! kernel's verifier refuses, and the pin root's lock held by another
//! process. "closed" (the default) keeps the
//! pod from starting, and answers "try again later" (11) within the lock
//! timeout; "open" starts it unshaped, says so in `list` and `metrics`,
//! and never fails STATUS. Every case checks that nothing was attached and
//! that DEL and GC forget what "open" recorded.

mod common;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Pod;
use serde_json::{json, Value};

const RECORDS: &str = bpf_ratelimit::plugin::unshaped::DIR;
/// CNI_ARGS as containerd passes them (Pod::invoke's).
const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=test";

fn with(pod: &Pod, extra: Value) -> Value {
    let mut conf = pod.config(json!({"kubernetes.io/egress-bandwidth": "10M", "kubernetes.io/ingress-bandwidth": "10M"}));
    conf.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    conf
}

/// This pod's row in `list --json` (every pin root, and the unshaped records).
fn listed(pod: &Pod) -> Option<Value> {
    let out = Command::new(common::plugin()).args(["list", "--json", "--interval", "0.05"]).output().unwrap();
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("list: {}", String::from_utf8_lossy(&out.stderr)));
    rows.as_array().unwrap().iter().find(|r| r["containerId"] == pod.bed.name.as_str()).cloned()
}

fn metrics() -> String {
    let out = Command::new(common::plugin()).arg("metrics").output().unwrap();
    String::from_utf8_lossy(&out.stdout).into()
}

fn record_of(pod: &Pod) -> std::path::PathBuf {
    std::path::Path::new(RECORDS).join(pod.network()).join(&pod.bed.name).join("eth0.json")
}

/// ADD under `policy` where the datapath cannot be set up; what `reason`
/// must say; `closed_code` is ADD's exit code under "closed". `lock`: the
/// pin root's lock this test holds, if that is the failure: DEL waits for
/// it too (and answers 11), so it is let go before the DELs.
fn check_policies(pod: &Pod, extra: Value, reason: &str, closed_code: i32, lock: &mut Option<std::fs::File>) {
    check_policies_of(&common::plugin(), pod, extra, reason, closed_code, lock)
}

/// As check_policies, with `binary` as the plugin the runtime runs.
fn check_policies_of(binary: &Path, pod: &Pod, extra: Value, reason: &str, closed_code: i32, lock: &mut Option<std::fs::File>) {
    for policy in ["closed", "open"] {
        let mut conf = with(pod, extra.clone());
        conf["failurePolicy"] = json!(policy);
        let started = Instant::now();
        let out = pod.invoke_binary(binary, "ADD", &pod.bed.name, POD_ARGS, &conf);
        let took = started.elapsed();
        println!("failurePolicy {policy}, {reason}: ADD exit {} in {took:.1?}: {}", out.code, out.stdout.trim());
        assert_eq!(pod.cgroup_attachments(), "", "{policy}: something was attached");
        if policy == "closed" {
            assert_eq!(out.code, closed_code, "closed: {}{}", out.stdout, out.stderr);
            assert!(out.stdout.contains(reason), "closed: the error does not say {reason:?}: {}", out.stdout);
            assert!(!record_of(pod).exists(), "closed: a record of an unshaped pod was written");
            assert!(listed(pod).is_none(), "closed: list shows the pod");
            continue;
        }
        assert_eq!(out.code, 0, "open: ADD failed: {}{}", out.stdout, out.stderr);
        let result: Value = serde_json::from_str(&out.stdout).unwrap();
        assert!(result["interfaces"].is_array(), "open: ADD did not pass prevResult on: {}", out.stdout);
        assert!(out.stderr.contains("UNSHAPED"), "open: no error logged: {}", out.stderr);
        let row = listed(pod).expect("open: list does not show the unshaped pod");
        println!("  list: {row}");
        assert!(row["unshaped"].as_str().is_some_and(|r| r.contains(reason)), "open: list's reason: {row}");
        let text = metrics();
        let series = format!("container_id=\"{}\"", pod.bed.name);
        assert!(text.lines().any(|l| l.starts_with("bpf_ratelimit_unshaped{") && l.contains(&series) && l.ends_with(" 1")), "open: no metric:\n{text}");
        if lock.is_some() {
            let out = pod.invoke_binary(binary, "DEL", &pod.bed.name, POD_ARGS, &conf);
            assert_eq!(out.code, 11, "DEL with the lock held: {}{}", out.stdout, out.stderr);
            *lock = None;
        }
        // DEL forgets it, and a repeated DEL is fine.
        for _ in 0..2 {
            let out = pod.invoke_binary(binary, "DEL", &pod.bed.name, POD_ARGS, &conf);
            assert_eq!(out.code, 0, "DEL: {}{}", out.stdout, out.stderr);
        }
        assert!(!record_of(pod).exists() && listed(pod).is_none(), "DEL left the unshaped record");
    }
}

#[test]
fn a_pin_root_on_no_bpf_filesystem() {
    let pod = Pod::new("fpfs");
    let dir = format!("/tmp/brl-fp-nobpffs-{}", std::process::id());
    check_policies(&pod, json!({"pinRoot": dir}), "not on a bpf filesystem", 101, &mut None);
    // STATUS: "closed" marks the node's network not ready (50); "open" never.
    for (policy, code) in [("closed", 50), ("open", 0)] {
        let conf = json!({"cniVersion": "1.1.0", "name": pod.network(), "type": "bpf-ratelimit", "pinRoot": dir, "failurePolicy": policy});
        let out = pod.invoke("STATUS", &conf);
        println!("failurePolicy {policy}: STATUS with no bpffs: exit {} {}", out.code, out.stdout.trim());
        assert_eq!(out.code, code, "STATUS under {policy}: {}{}", out.stdout, out.stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A copy of this build of the plugin whose datapath the kernel's verifier
/// refuses: the first instruction of the shaper object's `cgroup_skb/egress`
/// program, inside the binary, becomes `exit`, which leaves the rest of
/// the program unreachable (the verifier's "unreachable insn 1"), as a
/// datapath built for another kernel is refused by this one. Its datapath version is changed too, as another build's would be,
/// so that neither the pinned datapath nor STATUS's cached verdict of this
/// build stands in for loading it.
struct RefusedBuild {
    dir: PathBuf,
    path: PathBuf,
}

impl RefusedBuild {
    fn new() -> RefusedBuild {
        let mut bin = std::fs::read(common::plugin()).unwrap();
        let (start, section) = shaper_program(&bin, "cgroup_skb/egress");
        bin[start + section..start + section + 8].copy_from_slice(&[0x95, 0, 0, 0, 0, 0, 0, 0]);
        let version = bpf_ratelimit::datapath::attach::datapath_version();
        let other = format!("{:016x}", u64::from_str_radix(version, 16).unwrap() ^ 0x5a5a);
        let mut replaced = 0;
        for at in 0..bin.len() - version.len() {
            if &bin[at..at + version.len()] == version.as_bytes() {
                bin[at..at + version.len()].copy_from_slice(other.as_bytes());
                replaced += 1;
            }
        }
        assert!(replaced >= 1, "the datapath version {version} is not in the binary");
        let dir = std::env::temp_dir().join(format!("brl-refused-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bpf-ratelimit");
        std::fs::write(&path, &bin).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        RefusedBuild { dir, path }
    }
}

impl Drop for RefusedBuild {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap()) as usize
}
fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}
fn u64_at(b: &[u8], at: usize) -> usize {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize
}

/// Where the shaper's BPF object starts in the binary, and the offset in it
/// of `program`'s section, whose first instruction no relocation touches.
fn shaper_program(bin: &[u8], program: &str) -> (usize, usize) {
    const EM_BPF: usize = 247;
    let mut found = Vec::new();
    for start in (1..bin.len() - 64).filter(|&i| bin[i..i + 7] == *b"\x7fELF\x02\x01\x01") {
        let elf = &bin[start..];
        if u16_at(elf, 0x12) != EM_BPF {
            continue;
        }
        let (shoff, shnum, shstrndx) = (u64_at(elf, 0x28), u16_at(elf, 0x3c), u16_at(elf, 0x3e));
        let header = |i: usize| shoff + i * 64;
        let names = u64_at(elf, header(shstrndx) + 0x18);
        let name_of = |i: usize| {
            let at = names + u32_at(elf, header(i));
            let end = elf[at..].iter().position(|c| *c == 0).unwrap();
            String::from_utf8_lossy(&elf[at..at + end]).into_owned()
        };
        let sections: Vec<String> = (0..shnum).map(name_of).collect();
        // The shaper, not the test harness: it alone has the setsockopt program.
        if !sections.iter().any(|s| s == "cgroup/setsockopt") {
            continue;
        }
        let index = sections.iter().position(|s| s == program).unwrap_or_else(|| panic!("no section {program}: {sections:?}"));
        if let Some(rel) = sections.iter().position(|s| *s == format!(".rel{program}")) {
            let (offset, size) = (u64_at(elf, header(rel) + 0x18), u64_at(elf, header(rel) + 0x20));
            assert!((0..size / 16).all(|r| u64_at(elf, offset + r * 16) != 0), "a relocation touches {program}'s first instruction");
        }
        found.push((start, u64_at(elf, header(index) + 0x18)));
    }
    assert_eq!(found.len(), 1, "the shaper's BPF object is not in the binary exactly once: {found:?}");
    found[0]
}

#[test]
fn a_datapath_the_verifier_refuses() {
    let refused = RefusedBuild::new();
    let pod = Pod::new("fpverifier");
    check_policies_of(&refused.path, &pod, json!({}), "Verifier output: unreachable insn 1", 101, &mut None);
    assert!(!pod.pin_root.join("datapath").exists() || std::fs::read_dir(pod.pin_root.join("datapath")).unwrap().next().is_none(), "a refused datapath left pins");
    // STATUS loads the datapath: "closed" fails the node (50), "open" never.
    for (policy, code) in [("closed", 50), ("open", 0)] {
        let conf = json!({"cniVersion": "1.1.0", "name": pod.network(), "type": "bpf-ratelimit", "pinRoot": pod.pin_root, "failurePolicy": policy});
        let out = pod.invoke_binary(&refused.path, "STATUS", &pod.bed.name, "", &conf);
        println!("failurePolicy {policy}: STATUS with a refused datapath: exit {} {}", out.code, out.stdout.trim());
        assert_eq!(out.code, code, "STATUS under {policy}: {}{}", out.stdout, out.stderr);
    }
    // The control: this build, unpatched, shapes the same pod on the same
    // pin root, so it was the program the kernel refused, nothing else.
    let out = pod.invoke("ADD", &with(&pod, json!({"failurePolicy": "closed"})));
    assert_eq!(out.code, 0, "the unpatched build's ADD: {}{}", out.stdout, out.stderr);
    assert!(pod.cgroup_attachments().contains("shape_egress"));
    pod.del();
}

#[test]
fn the_pin_roots_lock_held_by_another_process() {
    let pod = Pod::new("fplock");
    let hold = || {
        std::fs::create_dir_all(&pod.pin_root).unwrap();
        let held = std::fs::File::open(&pod.pin_root).unwrap();
        // SAFETY: flock on a descriptor we own.
        assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
        held
    };
    check_policies(&pod, json!({"lockTimeoutSeconds": 1}), "held the lock on pin root", 11, &mut Some(hold()));
    let held = hold();
    // Within the timeout, and not long after it.
    let mut conf = with(&pod, json!({"lockTimeoutSeconds": 1}));
    conf["failurePolicy"] = json!("closed");
    let started = Instant::now();
    let out = pod.invoke("ADD", &conf);
    let took = started.elapsed();
    assert_eq!(out.code, 11);
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(4), "ADD gave up after {took:?} with a 1 s lock timeout");
    drop(held);
    // The lock free again, the same ADD shapes the pod.
    let out = pod.invoke("ADD", &conf);
    assert_eq!(out.code, 0, "ADD once the lock is free: {}{}", out.stdout, out.stderr);
    assert!(pod.cgroup_attachments().contains("shape_egress"));
    pod.del();
}

/// An unshaped pod that the runtime no longer lists is forgotten by GC;
/// one it lists stays.
#[test]
fn gc_forgets_unshaped_pods_the_runtime_no_longer_has() {
    let pod = Pod::new("fpgc");
    let dir = format!("/tmp/brl-fp-gc-{}", std::process::id());
    let conf = with(&pod, json!({"pinRoot": dir, "failurePolicy": "open"}));
    assert_eq!(pod.invoke("ADD", &conf).code, 0);
    assert!(record_of(&pod).exists());
    let gc = |valid: Value| {
        let conf = json!({"cniVersion": "1.1.0", "name": pod.network(), "type": "bpf-ratelimit", "pinRoot": dir, "cni.dev/valid-attachments": valid});
        let out = pod.invoke("GC", &conf);
        assert_eq!(out.code, 0, "GC: {}{}", out.stdout, out.stderr);
    };
    gc(json!([{"containerID": pod.bed.name, "ifname": "eth0"}]));
    assert!(record_of(&pod).exists(), "GC forgot a pod the runtime still has");
    gc(json!([]));
    assert!(!record_of(&pod).exists(), "GC kept a stale unshaped record");
    let _ = std::fs::remove_dir_all(&dir);
}
