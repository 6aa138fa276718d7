//! `failurePolicy` and `lockTimeoutSeconds` (issue 22), with the datapath
//! made to fail for real: a pinRoot on no bpf filesystem, and the pin
//! root's lock held by another process. "closed" (the default) keeps the
//! pod from starting, and answers "try again later" (11) within the lock
//! timeout; "open" starts it unshaped, says so in `list` and `metrics`,
//! and never fails STATUS. Every case checks that nothing was attached and
//! that DEL and GC forget what "open" recorded.

mod common;

use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Pod;
use serde_json::{json, Value};

const RECORDS: &str = bpf_ratelimit::plugin::unshaped::DIR;

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
    for policy in ["closed", "open"] {
        let mut conf = with(pod, extra.clone());
        conf["failurePolicy"] = json!(policy);
        let started = Instant::now();
        let out = pod.invoke("ADD", &conf);
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
            let out = pod.invoke("DEL", &conf);
            assert_eq!(out.code, 11, "DEL with the lock held: {}{}", out.stdout, out.stderr);
            *lock = None;
        }
        // DEL forgets it, and a repeated DEL is fine.
        for _ in 0..2 {
            let out = pod.invoke("DEL", &conf);
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
