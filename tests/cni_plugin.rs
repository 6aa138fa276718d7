//! The built binary, run exactly as a runtime runs it (env + stdin JSON),
//! against real cgroups, network namespaces, BPF links and iperf3 traffic.
//! Run as root: `cargo test --profile suite -- --test-threads=1`.

mod common;

use bpf_ratelimit::testbed::scenario::{Bulk, Way};
use common::{assert_bulk, cgroup_links, Pod};
use serde_json::json;

fn limits(rate: &str) -> serde_json::Value {
    json!({"kubernetes.io/ingress-bandwidth": rate, "kubernetes.io/egress-bandwidth": rate})
}

fn shapes_both_directions(rate: &str, bits: f64, seconds: u32) {
    let links_before = cgroup_links();
    let mut pod = Pod::new("rate");
    pod.bed.start_server().unwrap();
    pod.add(limits(rate));
    assert!(pod.cgroup_attachments().contains("shape_egress"), "{}", pod.cgroup_attachments());
    for way in [Way::Upload, Way::Download] {
        let bulk = Bulk::tcp(way, "cubic", 1, 2, seconds);
        let r = assert_bulk(&pod, &bulk, bits, (0.97, 1.02), &format!("{} TCP at {rate}", way.name()));
        assert!(r.transfer.resent_share(1448.0) <= 0.05);
    }
    pod.del();
    assert_eq!(pod.cgroup_attachments(), "", "attachments remain after DEL");
    assert_eq!(pod.pins(), Vec::<String>::new(), "pins remain after DEL");
    assert_eq!(cgroup_links(), links_before, "bpftool link list changed");
}

/// The shaping-quality band, on the wire (what a limit counts), after the
/// burst: 0.97-1.02 of the limit.
#[test]
fn shapes_tcp_both_directions_at_10m() {
    shapes_both_directions("10M", 10e6, 8);
}

#[test]
fn shapes_tcp_both_directions_at_100m() {
    shapes_both_directions("100M", 100e6, 5);
}

#[test]
fn pod_without_limits_gets_nothing_attached_and_prev_result_back() {
    let pod = Pod::new("nolimit");
    let out = pod.add(json!({}));
    let reply = out.json().unwrap();
    let mut expected = pod.bed.prev_result("1.0.0");
    expected["cniVersion"] = json!("1.0.0");
    assert_eq!(reply, expected, "prevResult must pass through unchanged");
    assert_eq!(pod.cgroup_attachments(), "");
    assert!(pod.pins().is_empty(), "{:?}", pod.pins());
}

#[test]
fn add_replies_with_the_configs_version_and_keeps_every_key() {
    let pod = Pod::new("version");
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let mut conf = pod.config(limits("50M"));
        conf["cniVersion"] = json!(version);
        conf["prevResult"]["extraKey"] = json!({"kept": [1, 2]});
        let out = pod.invoke("ADD", &conf);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        let reply = out.json().unwrap();
        assert_eq!(reply["cniVersion"], version);
        assert_eq!(reply["extraKey"]["kept"], json!([1, 2]));
        assert_eq!(reply["ips"][0]["address"], "10.251.0.2/24");
        assert!(out.stderr.is_empty() || !out.stderr.contains("panicked"), "{}", out.stderr);
    }
    pod.del();
    assert!(pod.pins().is_empty());
}

#[test]
fn del_is_idempotent_and_restores_the_link_list() {
    let before = cgroup_links();
    let pod = Pod::new("del");
    // DEL before any ADD, and with no pin root at all, succeeds.
    pod.del();
    pod.add(limits("20M"));
    // egress, ingress and sock_ops on the cgroup, and setsockopt: the
    // pod-side guard cannot see PACKET_QDISC_BYPASS or AF_XDP, so they are
    // refused (an eBPF main CNI may skip the host-side guard).
    assert_eq!(cgroup_links().len(), before.len() + 4, "ADD attaches egress, ingress, sock_ops and setsockopt links");
    let pins = pod.pins();
    for expected in ["egress", "ingress", "sockops", "setsockopt", "state", "iface", "guards", "queues", "meta"] {
        assert!(pins.iter().any(|p| p.ends_with(expected)), "missing pin {expected} in {pins:?}");
    }
    // ADD again for the same attachment replaces it rather than stacking.
    pod.add(limits("30M"));
    assert_eq!(cgroup_links().len(), before.len() + 4);
    for _ in 0..3 {
        pod.del();
    }
    assert_eq!(cgroup_links(), before);
    assert!(pod.pins().is_empty(), "{:?}", pod.pins());
    assert_eq!(pod.cgroup_attachments(), "");
}

#[test]
fn del_after_the_cgroup_is_gone_succeeds_and_cleans_up() {
    let before = cgroup_links();
    let pod = Pod::new("gone");
    pod.add(limits("20M"));
    // The kubelet may remove the pod cgroup before the runtime calls DEL.
    std::fs::remove_dir(&pod.bed.cgroup).unwrap();
    pod.del();
    assert!(pod.pins().is_empty(), "{:?}", pod.pins());
    assert_eq!(cgroup_links(), before);
    std::fs::create_dir(&pod.bed.cgroup).unwrap(); // for the testbed's own cleanup
}

#[test]
fn check_passes_for_the_requested_limits_and_fails_otherwise() {
    let pod = Pod::new("check");
    pod.add(limits("20M"));
    let ok = pod.invoke("CHECK", &pod.config(limits("20M")));
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);

    let changed = pod.invoke("CHECK", &pod.config(limits("30M")));
    assert_eq!(changed.code, 102, "{}", changed.stdout);
    assert!(changed.json().unwrap()["msg"].as_str().unwrap().contains("limits differ"));

    std::fs::remove_file(pod.pin_root.join(format!("pods/{}/{}/eth0/ingress", pod.network(), pod.bed.name))).unwrap();
    let missing = pod.invoke("CHECK", &pod.config(limits("20M")));
    assert_eq!(missing.code, 102, "{}", missing.stdout);
    assert!(missing.stdout.contains("ingress link is missing"), "{}", missing.stdout);

    pod.del();
    let none = pod.invoke("CHECK", &pod.config(limits("20M")));
    assert_eq!(none.code, 102);
    assert!(none.stdout.contains("no shaper is attached"), "{}", none.stdout);
    let unlimited = pod.invoke("CHECK", &pod.config(json!({})));
    assert_eq!(unlimited.code, 0, "{}", unlimited.stdout);
}

#[test]
fn gc_removes_only_attachments_not_listed_as_valid() {
    let before = cgroup_links();
    let a = Pod::new("gca");
    let mut b = Pod::new("gcb");
    b.pin_root = a.pin_root.clone(); // both pods in one pin root and network, as on a node
    a.add(limits("20M"));
    let mut conf_b = b.config(limits("20M"));
    conf_b["name"] = json!(a.network());
    assert_eq!(b.invoke("ADD", &conf_b).code, 0);
    let mut gc = a.config(json!({}));
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": a.bed.name, "ifname": "eth0"}]);
    let out = a.invoke("GC", &gc);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(a.cgroup_attachments().contains("shape_egress"));
    assert_eq!(b.cgroup_attachments(), "", "GC must detach the stale attachment");
    gc["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(a.invoke("GC", &gc).code, 0);
    assert!(a.pins().is_empty(), "{:?}", a.pins());
    assert_eq!(cgroup_links(), before);
    // GC needs spec 1.1.0.
    let mut old = gc.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(a.invoke("GC", &old).code, 1);
}

#[test]
fn status_reports_availability_with_code_50() {
    let pod = Pod::new("status");
    let mut conf = pod.config(json!({}));
    conf["cniVersion"] = json!("1.1.0");
    let ok = pod.invoke("STATUS", &conf);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    conf["cgroupRoot"] = json!("/tmp");
    let bad = pod.invoke("STATUS", &conf);
    assert_eq!(bad.code, 50, "{}", bad.stdout);
    assert!(bad.stdout.contains("cgroup"), "{}", bad.stdout);
    conf.as_object_mut().unwrap().remove("cgroupRoot");
    conf["pinRoot"] = json!("/tmp/not-bpffs/x");
    let bad = pod.invoke("STATUS", &conf);
    assert_eq!(bad.code, 50, "{}", bad.stdout);
    assert!(bad.stdout.contains("bpf filesystem"), "{}", bad.stdout);
}

#[test]
fn version_lists_all_supported_versions() {
    let pod = Pod::new("ver");
    let out = pod.invoke("VERSION", &json!({"cniVersion": "1.0.0"}));
    assert_eq!(out.code, 0);
    let v = out.json().unwrap();
    assert_eq!(v["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
}

/// The runtime's view of a conflist in conflist/: bpf-ratelimit's entry with
/// the list's name and cniVersion, as libcni builds each plugin's config.
fn chained_config(pod: &Pod, conflist: &str, annotations: serde_json::Value) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conflist").join(conflist);
    let list: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let entry = list["plugins"].as_array().unwrap().iter().find(|p| p["type"] == "bpf-ratelimit").unwrap().clone();
    let mut conf = pod.config(annotations);
    for (k, v) in entry.as_object().unwrap() {
        conf[k] = v.clone();
    }
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf
}

/// flannel's and Calico's stock conflists say 0.3.1: ADD and DEL work and pass
/// a 0.3.1 prevResult (ips carry "version") through unchanged; CHECK, GC and
/// STATUS, which 0.3.1 lacks, get code 1 as libcni's skel gives it.
#[test]
fn flannel_and_calico_chains_at_0_3_x() {
    let before = cgroup_links();
    let pod = Pod::new("v031");
    for (conflist, version) in [
        ("10-flannel-bpf-ratelimit.conflist", "0.3.1"),
        ("10-calico-bpf-ratelimit.conflist", "0.3.1"),
        ("10-flannel-bpf-ratelimit.conflist", "0.3.0"),
    ] {
        let mut conf = chained_config(&pod, conflist, limits("20M"));
        conf["cniVersion"] = json!(version);
        let mut prev = pod.bed.prev_result(version);
        prev["ips"][0]["version"] = json!("4");
        conf["prevResult"] = prev.clone();
        let out = pod.invoke("ADD", &conf);
        assert_eq!(out.code, 0, "{conflist} {version}: {}{}", out.stdout, out.stderr);
        assert_eq!(out.json().unwrap(), prev, "{conflist} {version}: prevResult must pass through unchanged");
        assert!(pod.cgroup_attachments().contains("shape_egress"), "{conflist}: {}", pod.cgroup_attachments());
        for command in ["CHECK", "GC", "STATUS"] {
            let out = pod.invoke(command, &conf);
            assert_eq!(out.code, 1, "{command} at {version}: {}", out.stdout);
            let v = out.json().unwrap();
            assert_eq!(v["msg"], "incompatible CNI version", "{command}: {v}");
            assert_eq!(v["cniVersion"], version);
        }
        let out = pod.invoke("DEL", &conf);
        assert_eq!(out.code, 0, "DEL at {version}: {}{}", out.stdout, out.stderr);
        assert_eq!(pod.cgroup_attachments(), "");
        assert!(pod.pins().is_empty(), "{:?}", pod.pins());
    }
    assert_eq!(cgroup_links(), before);
}

/// Bad input: a CNI error JSON on stdout, the code as exit status, no panic,
/// and nothing left behind.
#[test]
fn bad_input_gives_cni_errors_and_leaves_nothing() {
    let before = cgroup_links();
    let pod = Pod::new("bad");
    let expect = |out: bpf_ratelimit::testbed::PluginOutput, code: i32, needle: &str| {
        assert_eq!(out.code, code, "stdout {} stderr {}", out.stdout, out.stderr);
        let v = out.json().unwrap();
        assert_eq!(v["code"], code);
        let text = format!("{} {}", v["msg"].as_str().unwrap_or_default(), v["details"].as_str().unwrap_or_default());
        assert!(text.contains(needle), "{needle:?} not in {text}");
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    };
    let plugin = common::plugin();
    let netns = pod.bed.pod_netns_path();
    let raw = |stdin: &str, id: &str| {
        let mut child = std::process::Command::new(&plugin)
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", id)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", &netns)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        bpf_ratelimit::testbed::PluginOutput {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
            elapsed: Default::default(),
        }
    };
    expect(raw("{not json", "abc"), 6, "decode");
    expect(raw(&pod.config(limits("10M")).to_string(), "../../etc"), 4, "CNI_CONTAINERID");
    expect(pod.invoke("ADD", &pod.config(json!({"kubernetes.io/egress-bandwidth": "fast"}))), 7, "egress-bandwidth");
    expect(pod.invoke("ADD", &pod.config(json!({"bpf-ratelimit.io/ingress-burst": "x", "kubernetes.io/ingress-bandwidth": "1M"}))), 7, "ingress-burst");
    let mut conf = pod.config(limits("10M"));
    conf["runtimeConfig"]["cgroupPath"] = json!("/no/such/pod");
    expect(pod.invoke("ADD", &conf), 100, "/no/such/pod");
    conf["runtimeConfig"]["cgroupPath"] = json!("/../../etc");
    expect(pod.invoke("ADD", &conf), 7, "cgroupPath");
    conf["runtimeConfig"].as_object_mut().unwrap().remove("cgroupPath");
    expect(pod.invoke("ADD", &conf), 100, "K8S_POD_UID");
    let mut conf = pod.config(limits("10M"));
    conf.as_object_mut().unwrap().remove("prevResult");
    expect(pod.invoke("ADD", &conf), 7, "chained");
    let mut conf = pod.config(limits("10M"));
    conf["pinRoot"] = json!("/tmp/brl-not-bpffs");
    expect(pod.invoke("ADD", &conf), 101, "bpf filesystem");
    assert!(!std::path::Path::new("/tmp/brl-not-bpffs").exists());
    assert!(pod.pins().is_empty(), "{:?}", pod.pins());
    assert_eq!(pod.cgroup_attachments(), "");
    assert_eq!(cgroup_links(), before);
}

#[test]
fn finds_the_pod_cgroup_by_uid_for_both_drivers() {
    let pod = Pod::new("uid");
    let uid = "0b5e7c4a-1f2d-4c3b-9a8e-7d6c5b4a3f21";
    let u = uid.replace('-', "_");
    for rel in [
        format!("kubepods/besteffort/pod{uid}"),
        format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
        format!("kubepods.slice/kubepods-pod{u}.slice"),
    ] {
        let dir = pod.bed.cgroup.join(&rel);
        std::fs::create_dir_all(&dir).unwrap();
        let mut conf = pod.config(limits("10M"));
        conf["cgroupRoot"] = json!(pod.bed.cgroup);
        conf["runtimeConfig"].as_object_mut().unwrap().remove("cgroupPath");
        let out = pod.invoke_full("ADD", &pod.bed.name, &format!("K8S_POD_UID={uid}"), &conf);
        assert_eq!(out.code, 0, "{rel}: {}{}", out.stdout, out.stderr);
        assert!(common::bpftool_cgroup_show(&dir).contains("shape_egress"), "{rel}");
        pod.del();
        assert_eq!(common::bpftool_cgroup_show(&dir), "");
        // Remove the nested directories, deepest first.
        let mut p = dir.as_path();
        while p != pod.bed.cgroup {
            std::fs::remove_dir(p).unwrap();
            p = p.parent().unwrap();
        }
    }
}

/// Another network on the same pod (a Multus secondary chaining us too, on
/// its own interface) shares the pod's links and gets its own state; GC of
/// one network never touches the other's attachment.
#[test]
fn a_second_network_shares_the_links_and_gc_stays_in_its_network() {
    let before = cgroup_links();
    let pod = Pod::new("twice");
    let second = common::SecondInterface::new(&pod);
    pod.add(limits("20M"));
    let mut other = pod.config(limits("10M"));
    other["name"] = json!(format!("{}-other", pod.network()));
    other["prevResult"] = second.prev_result(&pod);
    let out = pod.invoke_if("ADD", &pod.bed.name, "net1", &other);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(cgroup_links().len(), before.len() + 4, "the second network shares the pod's links");
    let check = pod.invoke_if("CHECK", &pod.bed.name, "net1", &other);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert_eq!(pod.invoke("CHECK", &pod.config(limits("20M"))).code, 0);
    // GC for the other network, listing nothing valid, removes only its own.
    let mut gc = other.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(pod.invoke_if("GC", &pod.bed.name, "net1", &gc).code, 0);
    assert!(pod.cgroup_attachments().contains("shape_egress"));
    assert_eq!(cgroup_links().len(), before.len() + 4);
    assert_eq!(pod.invoke("CHECK", &pod.config(limits("20M"))).code, 0, "the first network is untouched");
    assert_eq!(pod.invoke_if("CHECK", &pod.bed.name, "net1", &other).code, 102);
    pod.del();
    assert_eq!(cgroup_links(), before);
    assert!(pod.pins().is_empty(), "{:?}", pod.pins());
}

#[test]
fn del_succeeds_with_config_it_does_not_need() {
    let pod = Pod::new("dellenient");
    pod.add(limits("20M"));
    let mut conf = pod.config(json!({}));
    conf["ingressRate"] = json!("not a number");
    let out = pod.invoke("DEL", &conf);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(pod.pins().is_empty(), "{:?}", pod.pins());
    assert_eq!(pod.cgroup_attachments(), "");
}

/// A new sandbox of the same pod (same cgroup, same network) whose earlier
/// sandbox never got its DEL replaces the stale attachment instead of
/// failing ADD forever.
#[test]
fn a_new_sandbox_replaces_the_stale_attachment_of_an_earlier_one() {
    let before = cgroup_links();
    let pod = Pod::new("resandbox");
    pod.add(limits("20M"));
    let stale = pod.pins();
    let second = format!("{}-2", pod.bed.name);
    let out = pod.invoke_as("ADD", &second, &pod.config(limits("30M")));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(cgroup_links().len(), before.len() + 4, "the stale links are detached, not stacked (egress, ingress, sock_ops, setsockopt)");
    let pins = pod.pins();
    assert!(pins.iter().all(|p| !p.contains(&format!("{}/", pod.bed.name)) || p.contains(&second)), "{pins:?}");
    assert_ne!(pins, stale);
    let check = pod.invoke_as("CHECK", &second, &pod.config(limits("30M")));
    assert_eq!(check.code, 0, "{}", check.stdout);
    // The first sandbox's DEL, arriving late, leaves the new one alone.
    pod.del();
    assert!(pod.cgroup_attachments().contains("shape_egress"));
    let out = pod.invoke_as("DEL", &second, &pod.config(json!({})));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(cgroup_links(), before);
    assert!(pod.pins().is_empty(), "{:?}", pod.pins());
}

/// A second ADD for the same container without limits removes the first
/// ADD's attachment rather than leaving it behind.
#[test]
fn a_repeated_add_without_limits_removes_the_earlier_attachment() {
    let before = cgroup_links();
    let pod = Pod::new("readd");
    pod.add(limits("20M"));
    pod.add(json!({}));
    assert_eq!(pod.cgroup_attachments(), "");
    assert!(pod.pins().is_empty(), "{:?}", pod.pins());
    assert_eq!(cgroup_links(), before);
}

/// DEL, CHECK and GC find an attachment after the config's pinRoot changed.
#[test]
fn del_check_and_gc_find_the_attachment_after_pin_root_changed() {
    let before = cgroup_links();
    let mut pod = Pod::new("moved");
    pod.add(limits("20M"));
    let old_root = pod.pin_root.clone();
    pod.pin_root = std::path::PathBuf::from(format!("{}-new", old_root.display()));
    let check = pod.invoke("CHECK", &pod.config(limits("20M")));
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    // A new sandbox under the new pin root replaces the stale one under the old.
    let second = format!("{}-2", pod.bed.name);
    let out = pod.invoke_as("ADD", &second, &pod.config(limits("20M")));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(!old_root.exists(), "the old pin root empties and goes: {:?}", common::walk(&old_root));
    assert_eq!(cgroup_links().len(), before.len() + 4);
    // Back to the old pin root in the config: GC and DEL still find it.
    pod.pin_root = old_root.clone();
    let mut gc = pod.config(json!({}));
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": second, "ifname": "eth0"}]);
    assert_eq!(pod.invoke("GC", &gc).code, 0);
    assert!(pod.cgroup_attachments().contains("shape_egress"), "GC keeps the valid attachment");
    let out = pod.invoke_as("DEL", &second, &pod.config(json!({})));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(cgroup_links(), before);
    pod.pin_root = std::path::PathBuf::from(format!("{}-new", old_root.display()));
    assert!(pod.pins().is_empty(), "{:?}", pod.pins());
}

/// Run without privileges, every command but VERSION fails with a CNI error
/// that names the missing capabilities.
#[test]
fn every_command_fails_naming_the_missing_capability_when_unprivileged() {
    let pod = Pod::new("nopriv");
    let plugin = common::plugin();
    // The plugin binary must be reachable by nobody: copy it out of target/.
    let copy = std::env::temp_dir().join(format!("brl-nopriv-{}", std::process::id()));
    std::fs::copy(&plugin, &copy).unwrap();
    let mut conf = pod.config(limits("10M"));
    conf["cniVersion"] = json!("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([]);
    for (command, code) in [("ADD", 101), ("DEL", 101), ("CHECK", 101), ("GC", 101), ("STATUS", 50)] {
        let mut child = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&copy)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.bed.name)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", pod.bed.pod_netns_path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("setpriv (util-linux)");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(code), "{command}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["code"], code);
        let msg = v["msg"].as_str().unwrap();
        for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"] {
            assert!(msg.contains(cap), "{command}: {msg}");
        }
    }
    std::fs::remove_file(&copy).unwrap();
    assert!(pod.pins().is_empty());
    assert_eq!(pod.cgroup_attachments(), "");
}

/// STATUS verifies the datapath once per kernel, boot and datapath version
/// and then only checks the cache: runtimes poll it.
#[test]
fn status_loads_the_datapath_once_and_is_cheap_after() {
    let pod = Pod::new("statuscache");
    let mut conf = pod.config(json!({}));
    conf["cniVersion"] = json!("1.1.0");
    let _ = std::fs::remove_file("/run/bpf-ratelimit/status-verified");
    let first = pod.invoke("STATUS", &conf);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    let cached = std::fs::read_to_string("/run/bpf-ratelimit/status-verified").expect("the verdict is cached");
    assert!(cached.contains(&bpf_ratelimit::datapath::attach::datapath_version()), "{cached}");
    // Program IDs only grow: a probe loaded before and after 50 more calls
    // shows whether any of them loaded the datapath (six programs a load).
    let before = probe_prog_id();
    let mut times: Vec<f64> = (0..50)
        .map(|_| {
            let out = pod.invoke("STATUS", &conf);
            assert_eq!(out.code, 0, "{}", out.stdout);
            out.elapsed.as_secs_f64() * 1e3
        })
        .collect();
    let loaded = probe_prog_id() - before - 1;
    times.sort_by(f64::total_cmp);
    println!(
        "STATUS: first {:.1} ms; then p50 {:.2} ms, p99 {:.2} ms; programs loaded by 50 cached calls: {loaded}",
        first.elapsed.as_secs_f64() * 1e3,
        times[25],
        times[49]
    );
    assert!(loaded < 6, "{loaded} programs were loaded by 50 cached STATUS calls: they still load the datapath");
}

/// The ID the kernel gives a program loaded now (the harness's smallest).
fn probe_prog_id() -> u32 {
    use std::os::fd::AsFd;
    let mut ebpf = aya::EbpfLoader::new().load(bpf_ratelimit::datapath::attach::HARNESS_OBJ).unwrap();
    let prog: &mut aya::programs::SchedClassifier = ebpf.program_mut("count_wire").unwrap().try_into().unwrap();
    prog.load().unwrap();
    let fd = prog.fd().unwrap();
    bpf_ratelimit::node::bpf_sys::prog_info(fd.as_fd()).unwrap().id
}

/// logFile is opened with O_NOFOLLOW (a planted symlink does not redirect a
/// root process's writes) and created with mode 0640.
#[test]
fn log_file_is_created_0640_and_never_followed_through_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let pod = Pod::new("logfile");
    let dir = std::env::temp_dir().join(format!("brl-logfile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let (log, target, link) = (dir.join("plugin.log"), dir.join("target"), dir.join("link.log"));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for path in [&log, &link] {
        let mut conf = pod.config(json!({}));
        conf["logFile"] = json!(path);
        conf["logLevel"] = json!("info");
        let out = pod.invoke("ADD", &conf);
        assert_eq!(out.code, 0, "logging never fails a pod: {}{}", out.stdout, out.stderr);
        if path == &link {
            assert!(out.stderr.contains("cannot open logFile"), "{}", out.stderr);
        }
    }
    assert!(!target.exists(), "the symlink was followed");
    assert!(std::fs::read_to_string(&log).unwrap().contains("no bandwidth limit requested"));
    assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o640);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A node without iproute2: the plugin runs with a PATH that holds neither
/// /usr/sbin nor /sbin, in a mount namespace of its own where every `tc` the
/// old code looked for is covered with /dev/null (the machine's own `tc`
/// stays, for this test's checks). ADD still queues ingress on the host-side
/// veth and adds the raw-frame guard, CHECK passes, and DEL removes both.
#[test]
fn add_check_and_del_work_on_a_node_without_tc() {
    use std::ffi::CString;
    use std::os::unix::process::CommandExt;
    let before = cgroup_links();
    let pod = Pod::new("notc");
    let hidden: Vec<CString> = ["/usr/sbin/tc", "/sbin/tc", "/usr/bin/tc", "/bin/tc"]
        .into_iter()
        .filter(|p| std::path::Path::new(p).exists())
        .map(|p| CString::new(p).unwrap())
        .collect();
    let run = |command: &str, conf: &serde_json::Value| {
        let (root, null) = (CString::new("/").unwrap(), CString::new("/dev/null").unwrap());
        let hidden = hidden.clone();
        let mut cmd = std::process::Command::new(common::plugin());
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.bed.name)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", pod.bed.pod_netns_path())
            .env("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=test")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // SAFETY: only async-signal-safe syscalls on strings made before fork.
        unsafe {
            cmd.pre_exec(move || {
                let fail = || Err(std::io::Error::last_os_error());
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return fail();
                }
                if libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
                    return fail();
                }
                for p in &hidden {
                    if libc::mount(null.as_ptr(), p.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) != 0 {
                        return fail();
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let conf = pod.config(limits("20M"));
    let tc_out = |args: &[&str]| String::from_utf8_lossy(&std::process::Command::new("tc").args(args).output().unwrap().stdout).into_owned();
    let (code, stdout, stderr) = run("ADD", &conf);
    assert_eq!(code, 0, "ADD without tc: {stdout}{stderr}");
    let pod_tc = |args: &[&str]| {
        let out = std::process::Command::new("ip").args(["netns", "exec", &pod.bed.pod_ns, "tc"]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let qdisc = pod_tc(&["qdisc", "show"]);
    assert!(qdisc.contains("tbf b9a1:") && qdisc.contains("dev brlq"), "no ingress queue in the pod's netns: {qdisc} {stderr}");
    let filter = tc_out(&["filter", "show", "dev", &pod.bed.pod_host_veth, "ingress"]);
    assert!(filter.contains("guard_pod_egres") && filter.contains("pref 49101"), "no egress guard: {filter}");
    let (code, stdout, stderr) = run("CHECK", &conf);
    assert_eq!(code, 0, "CHECK without tc: {stdout}{stderr}");
    let (code, stdout, stderr) = run("DEL", &conf);
    assert_eq!(code, 0, "DEL without tc: {stdout}{stderr}");
    assert!(!pod_tc(&["qdisc", "show"]).contains("b9a1:"), "DEL left the queue");
    assert!(!tc_out(&["filter", "show", "dev", &pod.bed.pod_host_veth, "ingress"]).contains("49101"), "DEL left the guard");
    assert!(pod.pins().is_empty(), "{:?}", pod.pins());
    assert_eq!(cgroup_links(), before);
}

/// GC goes on past an attachment it cannot remove (here a directory that
/// is no pin sits in its pin directory, so unpinning it fails): it removes
/// the other stale attachment, then fails naming the one it could not.
#[test]
fn gc_goes_on_past_an_attachment_it_cannot_remove_and_reports_it() {
    let before = cgroup_links();
    // Attachments are visited in name order: the stuck one comes first.
    let stuck = Pod::new("gc1stuck");
    let mut stale = Pod::new("gc2stale");
    let mut keep = Pod::new("gc3keep");
    for pod in [&mut stale, &mut keep] {
        pod.pin_root = stuck.pin_root.clone();
        pod.net = stuck.net.clone();
    }
    for pod in [&stuck, &stale, &keep] {
        pod.add(limits("20M"));
    }
    let obstacle = stuck.pin_root.join(format!("pods/{}/{}/eth0/not-a-pin", stuck.network(), stuck.bed.name));
    std::fs::create_dir(&obstacle).unwrap();
    let mut gc = keep.config(json!({}));
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": keep.bed.name, "ifname": "eth0"}]);
    let out = keep.invoke("GC", &gc);
    println!("GC with one unremovable attachment: exit {}\n{}", out.code, out.stdout);
    assert_eq!(out.code, 101, "{}{}", out.stdout, out.stderr);
    let v = out.json().unwrap();
    assert!(v["msg"].as_str().unwrap().contains("1 removal(s) failed"), "{v}");
    assert!(v["details"].as_str().unwrap().contains(&stuck.bed.name), "{v}");
    assert_eq!(stale.cgroup_attachments(), "", "GC stopped at the first failure: the other stale attachment is still attached");
    assert!(keep.cgroup_attachments().contains("shape_egress"), "GC removed a valid attachment");
    // Once the obstacle is gone, GC finishes the job.
    std::fs::remove_dir(&obstacle).unwrap();
    let out = keep.invoke("GC", &gc);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(stuck.cgroup_attachments(), "");
    keep.del();
    assert_eq!(cgroup_links(), before);
    assert!(keep.pins().is_empty(), "{:?}", keep.pins());
}
