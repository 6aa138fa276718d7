//! Operating the plugin: the operator's limits as ceilings pods cannot
//! cross, the prototype's `rate` annotation ignored when it is not a rate,
//! and the commands for people (`list`, `set`, `metrics`), against pods made
//! through the real ADD path and shaped with real traffic.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bpf_ratelimit::testbed::scenario::{Bulk, Way};
use bpf_ratelimit::testbed::SERVER_IP;
use bpf_ratelimit::policy::limits::{default_burst, Direction};
use common::{assert_ratio, listening_address, Background, Pod};
use serde_json::{json, Value};

fn admin(pod: &Pod, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::plugin()).args(args).arg("--pin-root").arg(&pod.pin_root).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A pod whose plugin config carries `policy`, annotated with `annotations`.
fn pod_with(tag: &str, policy: Value, annotations: Value) -> Pod {
    let mut pod = Pod::new(tag);
    pod.bed.start_server().unwrap();
    let mut conf = pod.config(annotations);
    conf.as_object_mut().unwrap().extend(policy.as_object().unwrap().clone());
    let out = pod.invoke("ADD", &conf);
    assert_eq!(out.code, 0, "ADD: {}{}", out.stdout, out.stderr);
    pod
}

fn measure(pod: &Pod, reverse: bool, rate: f64, what: &str) {
    let way = if reverse { Way::Download } else { Way::Upload };
    let bulk = Bulk::tcp(way, "cubic", 1, 2, 5);
    common::assert_bulk(pod, &bulk, rate, (0.97, 1.02), what);
}

#[test]
fn pod_annotations_cannot_raise_or_remove_the_operators_limit() {
    let pod = pod_with("ceil-up", json!({"egressRate": 10_000_000}), json!({"kubernetes.io/egress-bandwidth": "100G"}));
    measure(&pod, false, 10e6, "egress: conflist 10M, pod asks 100G");
    pod.del();

    let pod = pod_with("ceil-zero", json!({"ingressRate": 10_000_000}), json!({"rate": "0M"}));
    assert!(pod.cgroup_attachments().contains("shape_ingress"), "rate: 0M removed the operator's limit");
    measure(&pod, true, 10e6, "ingress: conflist 10M, pod asks rate: 0M");
    pod.del();

    let pod = pod_with("ceil-max", json!({"maxEgressRate": 10_000_000, "namespaces": {"default": {"maxEgressRate": 20_000_000}}}),
                       json!({"kubernetes.io/egress-bandwidth": "50M"}));
    measure(&pod, false, 20e6, "egress: namespace default's ceiling 20M, pod asks 50M");
    pod.del();
}

#[test]
fn a_rate_annotation_that_is_not_a_rate_is_ignored() {
    let pod = Pod::new("rate-high");
    let out = pod.invoke("ADD", &pod.config(json!({"rate": "high"})));
    assert_eq!(out.code, 0, "rate: high must not fail the pod: {}", out.stdout);
    assert_eq!(pod.cgroup_attachments(), "", "nothing to shape");
    let out = pod.invoke("ADD", &pod.config(json!({"kubernetes.io/ingress-bandwidth": "high"})));
    assert_eq!(out.code, 7, "namespaced annotations are still checked: {}", out.stdout);
    pod.del();
}

/// A TCP transfer of at least `seconds` from when this returns, in the background; returns the client.
/// `ingress`: the pod receives from the server; otherwise a client in the
/// server's netns receives from an iperf3 server in the pod (dropped with
/// the pod's testbed).
fn iperf3_transfer(pod: &mut Pod, ingress: bool, seconds: u32) -> std::process::Child {
    // A second more than asked: the check below takes half of one, and the
    // caller counts its `seconds` from when this returns.
    let secs = (seconds + 1).to_string();
    let mut cmd = if ingress {
        let mut c = pod.bed.pod_command("iperf3").unwrap();
        c.args(["-c", SERVER_IP, "-R"]);
        c
    } else {
        pod.bed.start_pod_server("5301").unwrap();
        let mut c = pod.bed.server_command("iperf3").unwrap();
        c.args(["-c", bpf_ratelimit::testbed::POD_IP, "-p", "5301", "-R"]);
        c
    };
    cmd.args(["-t", &secs]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    // The pod's iperf3 server can still be busy with the readiness probe's
    // connection (wait_for_port) and turn the client away at once ("the
    // server is busy"): CI once measured 0 bit/s for a whole egress run. A
    // client that exits within its first 0.5 s is started again (5 tries);
    // one that keeps failing fails the test, saying why.
    for attempt in 0.. {
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        match child.try_wait().unwrap() {
            None => return child,
            Some(status) => {
                let err = child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default();
                assert!(attempt < 4, "iperf3 client exited at once ({status}), 5 times: {err}");
                println!("iperf3 client exited at once ({status}): {}; starting it again", err.trim());
            }
        }
    }
    unreachable!()
}

#[test]
fn set_changes_a_running_pods_limits_within_two_seconds_and_keeps_the_ceilings() {
    let mut pod = pod_with("set", json!({"maxEgressRate": 80_000_000}), json!({"kubernetes.io/egress-bandwidth": "10M", "kubernetes.io/ingress-bandwidth": "10M"}));
    // This pod's links only: other tests on the machine attach and detach theirs.
    let cgroup_id = bpf_ratelimit::node::cgroup::cgroup_id(&pod.bed.cgroup).unwrap();
    let links = || common::cgroup_links().into_iter().filter(|l| l.cgroup_id == cgroup_id).collect::<Vec<_>>();
    let links_before = links();
    assert_eq!(links_before.len(), 4, "egress, ingress, sock_ops and setsockopt: {links_before:?}");
    for (way, flag, what) in [(Way::Upload, "--egress", "egress"), (Way::Download, "--ingress", "ingress")] {
        let child = iperf3_transfer(&mut pod, way == Way::Download, 8);
        let started = Instant::now();
        // Bytes on the wire out of (egress) or into (ingress) the pod, `at`
        // seconds into the transfer.
        let wire_at = |at: f64| {
            std::thread::sleep(Duration::from_secs_f64(at).saturating_sub(started.elapsed()));
            (pod.bed.wire_bytes(way).unwrap() as f64, started.elapsed().as_secs_f64())
        };
        let rate = |(b0, t0): (f64, f64), (b1, t1): (f64, f64)| (b1 - b0) * 8.0 / (t1 - t0);
        let (one, three) = (wire_at(1.0), wire_at(3.0));
        let (code, out, err) = admin(&pod, &["set", "default/test", flag, "50M"]);
        assert_eq!(code, 0, "set: {out}{err}");
        assert!(out.contains("default/test"), "{out}");
        let set_at = started.elapsed().as_secs_f64();
        let (settled, end) = (wire_at(set_at + 2.0), wire_at(7.7));
        let _ = child.wait_with_output();
        let (before, after) = (rate(one, three), rate(settled, end));
        println!("{what}: {:.2} Mbit/s on the wire before set, {:.2} Mbit/s from 2 s after set 50M", before / 1e6, after / 1e6);
        // A limit counts frames on the wire. Each window may still hold
        // what is left of the bucket (a token bucket allows rate x t + burst).
        let dir = if way == Way::Download { Direction::Ingress } else { Direction::Egress };
        let allowance = |bps: u64, secs: f64| default_burst(dir, bps) as f64 / (bps as f64 * secs);
        assert_ratio(&format!("{what} before set"), before, 10e6, 0.95, 1.02 + allowance(10_000_000, three.1 - one.1));
        assert_ratio(&format!("{what} from 2 s after set 50M"), after, 50e6, 0.95, 1.02 + allowance(50_000_000, end.1 - settled.1));
    }
    assert_eq!(links(), links_before, "set touched the attachments");
    // The ceiling ADD recorded holds for set too.
    let (code, out, _) = admin(&pod, &["set", "default/test", "--egress", "1G"]);
    assert_eq!(code, 0);
    assert!(out.contains("egress 80Mbit/s") && out.contains("capped"), "{out}");
    // Errors name what to fix, and change nothing.
    let (code, _, err) = admin(&pod, &["set", "default/nobody", "--egress", "1M"]);
    assert_eq!(code, 1);
    assert!(err.contains("no shaped pod is named \"default/nobody\""), "{err}");
    let (code, _, err) = admin(&pod, &["set", "default/test", "--egress", "lots"]);
    assert_eq!(code, 1);
    assert!(err.contains("--egress"), "{err}");
    pod.del();
}

#[test]
fn list_and_metrics_show_each_pod_while_it_is_shaped() {
    let mut pod = pod_with("list", json!({}), json!({"kubernetes.io/egress-bandwidth": "10M", "kubernetes.io/ingress-bandwidth": "20M"}));
    let child = iperf3_transfer(&mut pod, false, 5);
    std::thread::sleep(Duration::from_secs(2));
    let (code, out, err) = admin(&pod, &["list", "--json", "--interval", "1"]);
    assert_eq!(code, 0, "{err}");
    let (_, table, _) = admin(&pod, &["list", "--interval", "0.5"]);
    let (code, metrics, err) = admin(&pod, &["metrics"]);
    assert_eq!(code, 0, "{err}");
    let _ = child.wait_with_output();
    println!("{table}\n{metrics}");

    let rows: Value = serde_json::from_str(&out).unwrap();
    let row = &rows[0];
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!((row["namespace"].as_str(), row["pod"].as_str()), (Some("default"), Some("test")));
    assert_eq!(row["egress"]["limitBitsPerSecond"], 10_000_000);
    assert_eq!(row["ingress"]["limitBitsPerSecond"], 20_000_000);
    assert_eq!(row["egress"]["burstBits"], bpf_ratelimit::policy::limits::default_burst(bpf_ratelimit::policy::limits::Direction::Egress, 10_000_000));
    let rate = row["egress"]["rateBitsPerSecond"].as_f64().unwrap();
    assert!((8e6..=11.5e6).contains(&rate), "egress rate while shaped at 10M: {rate}");
    assert!(row["egress"]["passedBytes"].as_u64().unwrap() > 1_000_000);
    assert_eq!(row["ingress"]["droppedBytes"], 0);

    let header = table.lines().next().unwrap();
    assert!(header.starts_with("NAMESPACE/POD") && header.contains("EG RATE"), "{table}");
    let line = table.lines().find(|l| l.starts_with("default/test")).unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains("10Mbit/s") && line.contains("20Mbit/s"), "{line}");
    // The ingress queue's child, and the note on a kernel without fq_codel.
    let flow_fair = common::kernel_has_prio_and_fq_codel();
    assert_eq!(row["ingressQueueChild"], if flow_fair { "flowFair" } else { "bands" }, "{out}");
    assert_eq!(line.contains("ingress queue without fq_codel"), !flow_fair, "{line}");

    // A real Prometheus text parser reads it back, value by value.
    let lines = metrics.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let sample = |name: &str, direction: &str| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("direction") == Some(direction))
            .unwrap_or_else(|| panic!("no {name}{{direction={direction}}} in\n{metrics}"));
        assert_eq!((s.labels.get("namespace"), s.labels.get("pod")), (Some("default"), Some("test")));
        // Typed as declared: gauges for limits, counters for counts.
        match s.value {
            prometheus_parse::Value::Gauge(v) if name.contains("limit") || name.contains("burst") => v,
            prometheus_parse::Value::Counter(v) if name.ends_with("_total") => v,
            ref other => panic!("{name} is {other:?}"),
        }
    };
    // Base units: bytes per second.
    assert_eq!(sample("bpf_ratelimit_limit_bytes_per_second", "egress"), 10e6 / 8.0);
    assert_eq!(sample("bpf_ratelimit_limit_bytes_per_second", "ingress"), 20e6 / 8.0);
    assert!(sample("bpf_ratelimit_passed_bytes_total", "egress") > 1e6);
    // Packets are skbs: at in-cluster RTTs most are 64 KB GSO skbs.
    assert!(sample("bpf_ratelimit_passed_packets_total", "egress") > 10.0);
    assert_eq!(sample("bpf_ratelimit_dropped_bytes_total", "ingress"), 0.0);
    assert!(metrics.contains("# TYPE bpf_ratelimit_passed_bytes_total counter"), "{metrics}");
    pod.del();
    let (_, empty, _) = admin(&pod, &["list", "--json", "--interval", "0.1"]);
    assert_eq!(empty.trim(), "[]");
}

/// The case through ADD and `list --json`: under `maxEgressRate:
/// 100000000` a pod annotated `egress-bandwidth: 100G` gets 100M and the
/// burst of 100M (5 Mbit, 625 KB), not the 5 Gbit of 100G; one annotated 1T,
/// more than any rate can be, is capped the same way instead of failing ADD.
#[test]
fn a_pod_capped_by_a_rate_ceiling_gets_the_ceilings_burst() {
    for asked in ["100G", "1T"] {
        let pod = pod_with("capburst", json!({"maxEgressRate": 100_000_000}), json!({"kubernetes.io/egress-bandwidth": asked}));
        let (code, out, err) = admin(&pod, &["list", "--json", "--interval", "0.1"]);
        assert_eq!(code, 0, "{err}");
        println!("egress-bandwidth {asked} under maxEgressRate 100M: list --json\n{out}");
        let rows: Value = serde_json::from_str(&out).unwrap();
        let egress = &rows[0]["egress"];
        assert_eq!(egress["limitBitsPerSecond"], 100_000_000, "{out}");
        assert_eq!(egress["burstBits"], 5_000_000, "{out}");
        pod.del();
    }
}

/// CHECK after `set`: set records what it changed, and CHECK compares the
/// pod's state against that instead of the config's request. `set` refuses
/// `--ingress 0` with a message that says why.
#[test]
fn check_passes_after_set_and_set_ingress_0_is_refused_clearly() {
    let pod = pod_with("checkset", json!({}), json!({"kubernetes.io/egress-bandwidth": "10M", "kubernetes.io/ingress-bandwidth": "10M"}));
    let conf = pod.config(json!({"kubernetes.io/egress-bandwidth": "10M", "kubernetes.io/ingress-bandwidth": "10M"}));
    let check = |what: &str| {
        let out = pod.invoke("CHECK", &conf);
        assert_eq!(out.code, 0, "CHECK {what}: {}{}", out.stdout, out.stderr);
    };
    check("after ADD");
    let (code, out, err) = admin(&pod, &["set", "default/test", "--egress", "50M", "--ingress-burst", "4M"]);
    assert_eq!(code, 0, "{out}{err}");
    check("after set --egress 50M --ingress-burst 4M");
    let (code, out, err) = admin(&pod, &["set", "default/test", "--ingress", "20M"]);
    assert_eq!(code, 0, "{out}{err}");
    check("after a second set");
    // The state and the queue did change: CHECK against the old request
    // alone would fail, which is what it did before set was recorded.
    let (_, listed, _) = admin(&pod, &["list", "--json", "--interval", "0.1"]);
    let rows: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(rows[0]["egress"]["limitBitsPerSecond"], 50_000_000);
    assert_eq!(rows[0]["ingress"]["limitBitsPerSecond"], 20_000_000);
    assert_eq!(rows[0]["ingress"]["burstBits"], 4_000_000, "an explicit burst stays when the rate changes");
    // A CHECK for limits that are neither the request nor what was set fails.
    let tampered = {
        let dir = pod.pin_root.join(format!("pods/{}/{}/eth0", pod.network(), pod.bed.name));
        bpf_ratelimit::datapath::attach::update_pod_state(&dir, |s| s.egress.rate = 1_000_000).unwrap();
        pod.invoke("CHECK", &conf)
    };
    assert_eq!(tampered.code, 102, "{}", tampered.stdout);
    // --ingress 0: refused, saying why, and nothing changes.
    let (code, _, err) = admin(&pod, &["set", "default/test", "--ingress", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("--ingress 0") && err.contains("set cannot"), "{err}");
    pod.del();
}

/// `set` leaves an audit line in the plugin's log file at the default log
/// level (warn): who changed which pod from what to what. The file is the
/// one the conflist named at ADD, since `set` has no conflist to read.
#[test]
fn set_leaves_an_audit_line_in_the_log_file_at_the_default_level() {
    let log = std::env::temp_dir().join(format!("brl-audit-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let pod = pod_with("audit", json!({"logFile": log}), json!({"kubernetes.io/egress-bandwidth": "10M"}));
    let before = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!before.contains("AUDIT"), "ADD wrote an audit line: {before}");
    let (code, out, err) = admin(&pod, &["set", "default/test", "--egress", "20M"]);
    assert_eq!(code, 0, "{out}{err}");
    let written = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let line = written.lines().find(|l| l.contains("AUDIT: set by")).unwrap_or_else(|| panic!("no audit line in {}:\n{written}", log.display()));
    println!("{line}");
    assert!(line.contains("uid 0") && line.contains("default/test"), "{line}");
    assert!(line.contains("egress 10Mbit/s burst") && line.contains("-> 20Mbit/s burst"), "from and to: {line}");
    assert!(line.contains("ingress unlimited -> unlimited"), "{line}");
    assert!(err.contains("AUDIT: set by"), "the audit line goes to stderr too: {err}");
    // A refused set changes nothing and audits nothing.
    let (code, _, _) = admin(&pod, &["set", "default/test", "--egress", "lots"]);
    assert_ne!(code, 0);
    assert_eq!(std::fs::read_to_string(&log).unwrap().matches("AUDIT").count(), 1);
    pod.del();
    let _ = std::fs::remove_file(&log);
}

/// Every rate kubelet accepts (1k to 1P) starts the pod: outside what the
/// datapath enforces exactly (8k to 100G) it is clamped to the nearest rate
/// it can enforce, and `list` says so; outside 1k to 1P ADD fails, naming
/// the annotation.
#[test]
fn every_rate_kubelet_accepts_starts_the_pod_clamped_where_it_must_be() {
    let pod = pod_with("clamp", json!({}), json!({"kubernetes.io/egress-bandwidth": "1P", "kubernetes.io/ingress-bandwidth": "1k"}));
    let (code, out, err) = admin(&pod, &["list", "--json", "--interval", "0.1"]);
    assert_eq!(code, 0, "{err}");
    let row = serde_json::from_str::<Value>(&out).unwrap()[0].clone();
    println!("1P egress, 1k ingress: {row}");
    assert_eq!(row["egress"]["limitBitsPerSecond"], 100_000_000_000u64);
    assert_eq!(row["ingress"]["limitBitsPerSecond"], 8_000);
    let notes = row["notes"].to_string();
    assert!(notes.contains("egress rate 1000000000000000") && notes.contains("ingress rate 1000 ") && notes.contains("clamped"), "{notes}");
    let (_, table, _) = admin(&pod, &["list"]);
    assert!(table.contains("clamped to"), "list's table does not show the clamp:\n{table}");
    pod.del();
    for bad in ["999", "2P"] {
        let out = pod.invoke("ADD", &pod.config(json!({"kubernetes.io/egress-bandwidth": bad})));
        assert_eq!(out.code, 7, "{bad}: {}", out.stdout);
        assert!(out.stdout.contains("kubernetes.io/egress-bandwidth") && out.stdout.contains("1k to 1P"), "{}", out.stdout);
        assert_eq!(pod.cgroup_attachments(), "", "a refused ADD attached something");
    }
}

/// Under `limitBasis: "tcp-goodput"` the state holds a wire budget 4.6%
/// above the limit; `set` and `list` read the limit back from it. Three
/// burst-only `set`s leave the rate where it was (each raised it by 4.6%
/// before), `list` shows the limit asked for, and CHECK still passes.
#[test]
fn set_keeps_the_rate_under_every_limit_basis() {
    for basis in ["frames", "tcp-goodput"] {
        let annotations = json!({"kubernetes.io/egress-bandwidth": "10M"});
        let pod = pod_with("setbasis", json!({"limitBasis": basis}), annotations.clone());
        let listed = || -> Value {
            let (code, out, err) = admin(&pod, &["list", "--json", "--interval", "0.1"]);
            assert_eq!(code, 0, "{err}");
            serde_json::from_str::<Value>(&out).unwrap()[0]["egress"].clone()
        };
        assert_eq!(listed()["limitBitsPerSecond"], 10_000_000, "{basis}: list after ADD");
        for burst in ["200k", "300k", "400k"] {
            let (code, out, err) = admin(&pod, &["set", "default/test", "--egress-burst", burst]);
            assert_eq!(code, 0, "{out}{err}");
            println!("{basis}: set --egress-burst {burst}: {}", out.trim());
        }
        let egress = listed();
        println!("{basis}: after three burst-only sets: {egress}");
        let rate = egress["limitBitsPerSecond"].as_u64().unwrap();
        assert!(rate.abs_diff(10_000_000) <= 8, "{basis}: the rate moved to {rate} by burst-only sets");
        assert_eq!(egress["burstBits"], 400_000, "{basis}");
        let mut conf = pod.config(annotations);
        conf["limitBasis"] = json!(basis);
        let out = pod.invoke("CHECK", &conf);
        assert_eq!(out.code, 0, "{basis}: CHECK after set: {}{}", out.stdout, out.stderr);
        pod.del();
    }
}

/// `list`, `set` and `metrics` without --pin-root find a pod attached under
/// a pin root of its own (recorded by ADD), as DEL, GC and `stats` do.
#[test]
fn list_set_and_metrics_look_in_every_pin_root_the_node_used() {
    let pod = Pod::new("allroots");
    let uid = format!("7e57a11e-0000-4000-8000-{:012x}", std::process::id());
    let conf = pod.config(json!({"kubernetes.io/egress-bandwidth": "10M"}));
    let out = pod.invoke_full("ADD", &pod.bed.name, &format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME=allroots;K8S_POD_UID={uid}"), &conf);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let run = |args: &[&str]| {
        let out = Command::new(common::plugin()).args(args).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, listed, err) = run(&["list", "--json", "--interval", "0.1"]);
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&listed).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["containerId"] == pod.bed.name.as_str()).unwrap_or_else(|| panic!("not listed: {listed}\n{err}"));
    assert_eq!(row["pinRoot"], pod.pin_root.display().to_string());
    let (code, out, err) = run(&["set", &uid, "--egress", "20M"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("default/allroots") && out.contains("egress 20Mbit/s"), "{out}");
    let (_, metrics, err) = run(&["metrics"]);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("bpf_ratelimit_limit_bytes_per_second") && l.contains(&pod.bed.name))
        .unwrap_or_else(|| panic!("no series for the pod: {metrics}\n{err}"));
    assert!(line.ends_with(" 2500000"), "{line}");
    pod.del();
}

/// `metrics --listen`, scraped over HTTP and read back by a Prometheus
/// parser: base units, no series for an unlimited direction, labels that keep
/// two attachments of pods with the same name apart, bpf_ratelimit_up; a
/// silent client holds no scrape up and is dropped after the header timeout.
#[test]
fn metrics_over_http_parse_with_base_units_distinct_series_and_timeouts() {
    use std::io::{Read, Write};
    let a = Pod::new("httpa");
    let mut b = Pod::new("httpb");
    b.pin_root = a.pin_root.clone();
    // Same namespace and name ("default/test"), different UIDs; b has no ingress limit.
    for (pod, uid, ann) in [
        (&a, "aaaaaaaa-0000-4000-8000-000000000001", json!({"kubernetes.io/egress-bandwidth": "10M", "kubernetes.io/ingress-bandwidth": "20M"})),
        (&b, "bbbbbbbb-0000-4000-8000-000000000002", json!({"kubernetes.io/egress-bandwidth": "30M"})),
    ] {
        let out = pod.invoke_full("ADD", &pod.bed.name, &format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME=test;K8S_POD_UID={uid}"), &pod.config(ann));
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    }
    let mut server = Background(
        Command::new(common::plugin()).args(["metrics", "--listen", "127.0.0.1:0", "--pin-root"]).arg(&a.pin_root).stderr(Stdio::piped()).spawn().unwrap(),
    );
    let addr = listening_address(&mut server.0);
    let get = |path: &str| -> (String, String) {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.to_string(), body.to_string())
    };

    // A client that connects and says nothing.
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    let started = std::time::Instant::now();
    let (head, body) = get("/metrics");
    let took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    assert!(took < Duration::from_secs(2), "a silent client held the scrape up for {took:?}");
    println!("scrape beside a silent client took {took:?}:\n{body}");

    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text");
    let find = |name: &str, uid: &str, direction: &str| {
        scrape.samples.iter().find(|s| s.metric == name && s.labels.get("uid") == Some(uid) && s.labels.get("direction") == Some(direction))
    };
    let gauge = |name: &str, uid: &str, direction: &str| match find(name, uid, direction).map(|s| &s.value) {
        Some(prometheus_parse::Value::Gauge(v)) => *v,
        other => panic!("{name}{{uid={uid},direction={direction}}}: {other:?}\n{body}"),
    };
    let (ua, ub) = ("aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002");
    assert_eq!(gauge("bpf_ratelimit_limit_bytes_per_second", ua, "egress"), 10e6 / 8.0);
    assert_eq!(gauge("bpf_ratelimit_limit_bytes_per_second", ua, "ingress"), 20e6 / 8.0);
    assert_eq!(gauge("bpf_ratelimit_limit_bytes_per_second", ub, "egress"), 30e6 / 8.0);
    assert_eq!(gauge("bpf_ratelimit_burst_bytes", ub, "egress"), (bpf_ratelimit::policy::limits::default_burst(bpf_ratelimit::policy::limits::Direction::Egress, 30_000_000) / 8) as f64);
    assert!(find("bpf_ratelimit_limit_bytes_per_second", ub, "ingress").is_none(), "an unlimited direction has a limit series");
    assert!(find("bpf_ratelimit_burst_bytes", ub, "ingress").is_none(), "an unlimited direction has a burst series");
    for (pod, uid) in [(&a, ua), (&b, ub)] {
        let s = find("bpf_ratelimit_passed_bytes_total", uid, "egress").unwrap_or_else(|| panic!("{body}"));
        assert!(matches!(s.value, prometheus_parse::Value::Counter(_)));
        assert_eq!(s.labels.get("container_id"), Some(pod.bed.name.as_str()));
        let net = pod.network();
        assert_eq!((s.labels.get("network"), s.labels.get("interface"), s.labels.get("namespace"), s.labels.get("pod")), (Some(net.as_str()), Some("eth0"), Some("default"), Some("test")));
    }
    let up = scrape.samples.iter().find(|s| s.metric == "bpf_ratelimit_up").unwrap();
    assert!(matches!(up.value, prometheus_parse::Value::Gauge(v) if v == 1.0), "{body}");
    // Every series is one attachment: no two samples share a label set.
    let mut keys: Vec<String> = scrape.samples.iter().map(|s| format!("{}{:?}", s.metric, s.labels)).collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "duplicate series");
    assert!(get("/other").0.starts_with("HTTP/1.1 404"));

    // The silent client is dropped after the header timeout (5 s).
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).unwrap_or(0);
    let dropped = started.elapsed();
    println!("the silent client was dropped after {dropped:?} ({n} bytes of reply)");
    assert!(dropped < Duration::from_secs(9), "the silent client was not dropped: {dropped:?}");
    drop(server);
    a.del();
    b.del();
}

/// A scrape that cannot read the pin root says so: run without privileges
/// (as nobody, which cannot open the pins), the one-shot form prints
/// bpf_ratelimit_up 0 and exits 1 with the reason on stderr, and the server
/// serves bpf_ratelimit_up 0, where before both printed an empty, healthy
/// exposition.
#[test]
fn a_metrics_scrape_that_cannot_read_the_pin_root_fails_visibly() {
    let pod = pod_with("scrapefail", json!({}), json!({"kubernetes.io/egress-bandwidth": "10M"}));
    // The binary must be reachable by nobody: copy it out of target/.
    let copy = std::env::temp_dir().join(format!("brl-metrics-nobody-{}", std::process::id()));
    std::fs::copy(common::plugin(), &copy).unwrap();
    let nobody = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(&copy).args(args).arg("--pin-root").arg(&pod.pin_root);
        c
    };
    let out = nobody(&["metrics"]).output().expect("setpriv (util-linux)");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("metrics as nobody: exit {:?}\n{stdout}{stderr}", out.status.code());
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("bpf_ratelimit_up 0"), "{stdout}");
    assert!(!stderr.is_empty());

    let mut server = Background(nobody(&["metrics", "--listen", "127.0.0.1:0"]).stderr(Stdio::piped()).spawn().unwrap());
    use std::io::{Read, Write};
    let addr = listening_address(&mut server.0);
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    drop(server);
    std::fs::remove_file(&copy).unwrap();
    assert!(text.contains("bpf_ratelimit_up 0"), "{text}");
    // As root the same pin root reads fine.
    let (code, metrics, err) = admin(&pod, &["metrics"]);
    assert_eq!(code, 0, "{err}");
    assert!(metrics.contains("bpf_ratelimit_up 1"), "{metrics}");
    pod.del();
}


