//! Upgrades: pods attached by release N keep their limits when the binary is
//! replaced by release N+1, whose DEL, CHECK, GC and `stats` work on them,
//! and each datapath version is unpinned when its last pod goes.
//!
//! Release N is the previous release's commit (PREVIOUS_RELEASE: layout 2,
//! one pod_state per pod cgroup), built from `git archive` of this
//! repository's history, so that the datapath change it made (layout 3,
//! state per interface, the host-side guard) is tested across the upgrade.
//! Without that history the test fails, unless BRL_UPGRADE_FROM_THIS_TREE=1
//! asks for the weaker check (this tree built with its own datapath version
//! through BRL_DATAPATH_TAG) on purpose; CI does not set it. Release N+1 is
//! the binary under test. The first run builds N (about a minute), later
//! runs reuse it. Run as root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{cgroup_links, Pod};
use serde_json::{json, Value};

/// The last landed commit before datapath layout 3: layout 2, one
/// pod_state per pod cgroup, no host-side guard.
const PREVIOUS_RELEASE: &str = "119a8c07882bb37b5aa6744b5a6acd8c8de600cc";

/// Release N, built once into target/ and then reused: the previous
/// release's commit, or (only when BRL_UPGRADE_FROM_THIS_TREE=1) this tree
/// with a datapath version of its own.
fn build_release_n() -> (PathBuf, &'static str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if std::env::var("BRL_UPGRADE_FROM_THIS_TREE").as_deref() == Ok("1") {
        return (build(root, "upgrade-release-n", "release-n"), "this tree with BRL_DATAPATH_TAG=release-n (BRL_UPGRADE_FROM_THIS_TREE=1)");
    }
    let commit = PREVIOUS_RELEASE;
    let commit_src = root.join(format!("target/upgrade-src-{}", &commit[..12]));
    if !commit_src.join("Cargo.toml").exists() {
        std::fs::create_dir_all(&commit_src).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("git -C '{}' archive {commit} | tar -x -C '{}'", root.display(), commit_src.display()))
            .output()
            .expect("sh runs");
        if !out.status.success() || !commit_src.join("Cargo.toml").exists() {
            let _ = std::fs::remove_dir_all(&commit_src);
            panic!(
                "cannot take release N ({commit}) from this repository's history: {}. Test from a clone with history, \
                 or set BRL_UPGRADE_FROM_THIS_TREE=1 for the weaker check against this tree",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    (build(&commit_src, "upgrade-release-commit", ""), "the previous release's commit")
}

fn build(src: &Path, target_name: &str, tag: &str) -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(target_name);
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--locked", "--bin", "bpf-ratelimit"])
        .current_dir(src)
        .env("CARGO_TARGET_DIR", &target)
        .env("BRL_DATAPATH_TAG", tag)
        // A fixture, not a release: skip LTO to build it in half the time.
        .env("CARGO_PROFILE_RELEASE_LTO", "false")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building release N from {} failed", src.display());
    // Builds that name a target in .cargo/config.toml (the static build)
    // put the binary under target/<triple>/.
    let static_build = target.join("x86_64-unknown-linux-gnu/release/bpf-ratelimit");
    if static_build.exists() { static_build } else { target.join("release/bpf-ratelimit") }
}

fn datapath_version_of(binary: &Path) -> String {
    let out = Command::new(binary).arg("version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("(datapath ").nth(1).and_then(|s| s.strip_suffix(")\n")).unwrap_or_else(|| panic!("{text}")).to_string()
}

fn limits(rate: &str) -> Value {
    json!({"kubernetes.io/ingress-bandwidth": rate, "kubernetes.io/egress-bandwidth": rate})
}

fn run(pod: &Pod, binary: &Path, command: &str, config: &Value) -> bpf_ratelimit::testbed::PluginOutput {
    let out = pod.invoke_binary(binary, command, &pod.bed.name, "K8S_POD_NAMESPACE=default", config);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    out
}

fn datapath_dirs(pin_root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(pin_root.join("datapath"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn pods_of_release_n_keep_their_limits_and_release_n_plus_1_manages_them() {
    common::require_privileges();
    let ((old, which), new) = (build_release_n(), common::plugin());
    println!("release N: {which}");
    let (v_old, v_new) = (datapath_version_of(&old), datapath_version_of(&new));
    assert_ne!(v_old, v_new, "the two builds must have different datapaths");
    let before = cgroup_links();

    let a = Pod::new("upa");
    let mut b = Pod::new("upb");
    let mut c = Pod::new("upc");
    b.pin_root = a.pin_root.clone();
    c.pin_root = a.pin_root.clone();

    // One network for all three pods, as on a node.
    let conf = |pod: &Pod, annotations: Value| {
        let mut c = pod.config(annotations);
        c["name"] = json!(a.network());
        c
    };
    // Release N attaches pods A and B.
    for (pod, rate) in [(&a, "20M"), (&b, "30M")] {
        let out = run(pod, &old, "ADD", &conf(pod, limits(rate)));
        assert_eq!(out.code, 0, "release N ADD: {}{}", out.stdout, out.stderr);
    }
    assert_eq!(datapath_dirs(&a.pin_root), vec![v_old.clone()]);

    // The binary is replaced. N+1's CHECK reads N's state: it passes for the
    // limits N wrote and fails for others.
    let ok = run(&a, &new, "CHECK", &conf(&a, limits("20M")));
    assert_eq!(ok.code, 0, "N+1 CHECK of a release N pod: {}{}", ok.stdout, ok.stderr);
    let differs = run(&b, &new, "CHECK", &conf(&b, limits("40M")));
    assert_eq!(differs.code, 102, "{}", differs.stdout);
    assert!(differs.stdout.contains("limits differ"), "{}", differs.stdout);

    // N+1's stats reads both pods' limits from N's map.
    let stats = Command::new(&new).arg("stats").arg(&a.pin_root).output().unwrap();
    let stats: Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
    let rate_of = |pod: &Pod| {
        let p = stats["pods"].as_array().unwrap().iter().find(|p| p["containerID"] == pod.bed.name.as_str()).cloned();
        p.and_then(|p| p["state"]["egress"]["rate"].as_u64()).unwrap_or_else(|| panic!("{stats:#}"))
    };
    assert_eq!((rate_of(&a), rate_of(&b)), (20_000_000 / 8, 30_000_000 / 8));

    // N+1 attaches pod C with its own datapath, beside N's.
    let out = run(&c, &new, "ADD", &conf(&c, limits("50M")));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let mut both = vec![v_old.clone(), v_new.clone()];
    both.sort();
    assert_eq!(datapath_dirs(&a.pin_root), both);

    // Pod B, on N's datapath, is still shaped to N's limit (release N
    // counted TCP payload: its goodput meets the limit).
    b.bed.start_server().unwrap();
    let r = b.bed.tcp_rate(false, 5, 1).expect("iperf3");
    common::assert_ratio("TCP goodput of a release N pod after the upgrade", r.goodput_bps, 30e6, 0.95, 1.02);

    // A load that died part-way left loading-<pid>: the next DEL removes it.
    let dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let _ = { dead }.wait();
    std::fs::create_dir(a.pin_root.join(format!("datapath/loading-{dead_pid}"))).unwrap();

    // N+1 DELs pod A: N's datapath stays, pod B still runs it.
    assert_eq!(run(&a, &new, "DEL", &conf(&a, json!({}))).code, 0);
    assert_eq!(datapath_dirs(&a.pin_root), both, "N's datapath stays while pod B uses it; the leftover load goes");

    // N+1's GC removes pod B, N's last pod: N's datapath goes with it.
    let mut gc = conf(&c, json!({}));
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": c.bed.name, "ifname": "eth0"}]);
    let out = run(&c, &new, "GC", &gc);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(datapath_dirs(&a.pin_root), vec![v_new.clone()], "N's datapath goes with its last pod");
    assert_eq!(b.cgroup_attachments(), "");
    assert!(c.cgroup_attachments().contains("shape_egress"));

    assert_eq!(run(&c, &new, "DEL", &conf(&c, json!({}))).code, 0);
    assert!(!a.pin_root.exists(), "{:?}", common::walk(&a.pin_root));
    assert_eq!(cgroup_links(), before);
}
