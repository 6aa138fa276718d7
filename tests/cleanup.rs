//! `bpf-ratelimit cleanup` (and `uninstall --remove-datapath`) on a live
//! node (issue 22): two running pods, shaped both ways with traffic moving,
//! lose every trace of the plugin. Checked where each trace lives: the pods'
//! cgroups (bpftool), the host side of their veths and their own netns
//! (tc), bpffs, and the kernel's link list; a download that the limit held
//! goes unshaped at once; the runtime's later DEL still succeeds.

mod common;

use std::process::Command;

use bpf_ratelimit::testbed::scenario::{Bulk, Way};
use common::Pod;
use serde_json::json;

fn tc(netns: Option<&str>, args: &[&str]) -> String {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "tc"]);
            c
        }
        None => Command::new("tc"),
    };
    let out = c.args(args).output().unwrap();
    assert!(out.status.success(), "tc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into()
}

/// Every trace of the plugin around `pod`: (where, what).
fn traces(pod: &Pod) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let cgroup = pod.cgroup_attachments();
    if !cgroup.is_empty() {
        found.push(("the pod's cgroup".into(), cgroup));
    }
    let host = &pod.bed.pod_host_veth;
    for hook in ["ingress", "egress"] {
        let filters = tc(None, &["filter", "show", "dev", host, hook]);
        if filters.contains("guard_pod_egress") || filters.contains("pref 4910") {
            found.push((format!("{host} {hook} filters"), filters));
        }
        let ours = tc(Some(&pod.bed.pod_ns), &["filter", "show", "dev", "eth0", hook]);
        if ours.contains("pref 4910") {
            found.push((format!("the pod's eth0 {hook} filters"), ours));
        }
    }
    let host_qdiscs = tc(None, &["qdisc", "show", "dev", host]);
    if host_qdiscs.contains("b9a1:") {
        found.push((format!("{host} qdiscs"), host_qdiscs));
    }
    let links = Command::new("ip").args(["netns", "exec", &pod.bed.pod_ns, "ip", "-o", "link", "show"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    if links.contains("brlq") {
        found.push(("the pod's netns (an ifb)".into(), links.into()));
    }
    if pod.pin_root.exists() {
        found.push(("bpffs".into(), common::walk(&pod.pin_root).join("\n")));
    }
    found
}

#[test]
fn cleanup_takes_everything_off_a_live_node() {
    let mut pods: Vec<Pod> = ["clean-a", "clean-b"].iter().map(|t| Pod::new(t)).collect();
    // Both pods in one pin root, as on a node.
    let root = pods[0].pin_root.clone();
    for pod in &mut pods {
        pod.pin_root = root.clone();
        pod.bed.start_server().unwrap();
        pod.add(json!({"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "10M"}));
        assert!(!traces(pod).is_empty(), "ADD left no trace to look for");
    }
    let shaped = pods[0].bed.bulk(&Bulk::tcp(Way::Download, "cubic", 1, 1, 2)).unwrap();
    println!("before cleanup: a download at {:.3} of the 10M limit", shaped.wire_bps / 10e6);
    assert!(shaped.wire_bps <= 1.05 * 10e6, "the limit did not hold before cleanup");

    // A download runs while cleanup takes the limit off.
    let (out, during) = std::thread::scope(|s| {
        let transfer = s.spawn(|| pods[0].bed.bulk(&Bulk::tcp(Way::Download, "cubic", 1, 2, 2)));
        std::thread::sleep(std::time::Duration::from_millis(1000));
        let out = Command::new(common::plugin()).args(["cleanup", "--pin-root"]).arg(&root).output().unwrap();
        (out, transfer.join().unwrap().unwrap())
    });
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("cleanup: exit {:?}\n{stdout}{stderr}", out.status.code());
    assert!(out.status.success(), "cleanup failed: {stdout}{stderr}");
    for pod in &pods {
        assert!(stdout.contains(&format!("removed container {}", pod.bed.name)), "cleanup does not name {}: {stdout}", pod.bed.name);
        let left = traces(pod);
        assert!(left.is_empty(), "cleanup left traces of {}: {left:#?}", pod.bed.name);
    }
    println!("a download while cleanup ran, measured after it: {:.1}x the 10M limit", during.wire_bps / 10e6);
    assert!(during.wire_bps >= 2.0 * 10e6, "the pod is still limited after cleanup: {:.2}x", during.wire_bps / 10e6);
    // The runtime's DEL, later, finds nothing and succeeds; so does a second cleanup.
    for pod in &pods {
        pod.del();
    }
    let again = Command::new(common::plugin()).args(["cleanup", "--pin-root"]).arg(&root).output().unwrap();
    assert!(again.status.success(), "a second cleanup: {}", String::from_utf8_lossy(&again.stderr));
}
