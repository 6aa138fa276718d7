//! src/tc.rs (traffic control over rtnetlink) against the real kernel, read
//! back both through netlink and through iproute2's `tc`, which is still on
//! this machine for this comparison only: the plugin itself never runs it.
//! Run as root.

mod common;

use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use bpf_ratelimit::node::netns::{ifindex, in_netns};
use bpf_ratelimit::datapath::tc::{self, Hook, Tbf, Verb};
use bpf_ratelimit::testbed::ip;
use serde_json::Value;

/// A veth pair in the node's netns whose peer sits in a netns of its own;
/// removed on drop.
struct Veth {
    host: String,
    netns: String,
}

impl Veth {
    fn new(tag: &str) -> Veth {
        common::require_privileges();
        let host = format!("brlnl{tag}{:x}", std::process::id() % 0xffff);
        let netns = format!("brl-nl-{tag}-{}", std::process::id());
        let v = Veth { host, netns };
        ip(&["netns", "add", &v.netns]).unwrap();
        ip(&["link", "add", &v.host, "type", "veth", "peer", "name", "eth0", "netns", &v.netns]).unwrap();
        ip(&["link", "set", &v.host, "up"]).unwrap();
        ip(&["-n", &v.netns, "link", "set", "eth0", "up"]).unwrap();
        v
    }

    fn netns_path(&self) -> std::path::PathBuf {
        bpf_ratelimit::testbed::netns_path(&self.netns)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // An ingress queue a failed test left in front of the veth: its ifb
        // is in this netns and outlives the veth.
        if let Ok(index) = ifindex(&self.host) {
            let _ = bpf_ratelimit::datapath::ingress_queue::remove(index);
        }
        let _ = ip(&["link", "del", &self.host]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

/// `tc -j ARGS`, optionally inside a netns.
fn tc_json(netns: Option<&str>, args: &[&str]) -> Value {
    let mut cmd = Command::new("tc");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let out = cmd.arg("-j").args(args).output().expect("tc (iproute2) is needed for this comparison");
    assert!(out.status.success(), "tc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    // Output that is not a JSON array fails the test: read as "nothing
    // there", it would pass every absence check vacuously.
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("tc -j {args:?} printed what is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert!(v.is_array(), "tc -j {args:?} printed {v}, not an array");
    v
}

/// The interface's root qdisc as tc shows it; every interface has one (a
/// veth without a qdisc of ours shows "noqueue").
fn tc_root_qdisc(dev: &str) -> Value {
    let v = tc_json(None, &["-s", "-raw", "qdisc", "show", "dev", dev, "root"]);
    let q = v.as_array().unwrap().first().cloned().unwrap_or_else(|| panic!("tc shows no root qdisc on {dev}: {v}"));
    assert!(q["kind"].is_string(), "tc's root qdisc on {dev} has no kind: {q}");
    q
}

#[test]
fn tbf_parameters_read_back_through_netlink_equal_what_tc_reports() {
    let veth = Veth::new("tbf");
    let index = ifindex(&veth.host).unwrap();
    let handle = tc::handle(0xb9a1);
    // The queue sizes bpf-ratelimit uses, from 8 kbit/s to 100 Gbit/s
    // (above 32 Gbit/s the rate needs TCA_TBF_RATE64), and odd values.
    let specs: Vec<Tbf> = [8_000u64, 10_000_000, 100_000_000, 1_000_000_000, 40_000_000_000, 100_000_000_000]
        .iter()
        .map(|r| {
            let limit = bpf_ratelimit::policy::limits::Limit { rate: *r, burst: bpf_ratelimit::policy::limits::default_burst(bpf_ratelimit::policy::limits::Direction::Ingress, *r) };
            let q = bpf_ratelimit::datapath::ingress_queue::QueueSpec::for_limit(limit, bpf_ratelimit::policy::operator::LimitBasis::Frames);
            Tbf { rate_bits: q.rate_bits, burst_bytes: q.burst_bytes, limit_bytes: q.limit_bytes }
        })
        .chain([Tbf { rate_bits: 12_345_678, burst_bytes: 7_777, limit_bytes: 333_333 }])
        .collect();
    tc::tbf(Verb::Add, index, tc::ROOT, handle, &specs[0]).unwrap();
    // add again: refused, as `tc qdisc add` is.
    let again = tc::tbf(Verb::Add, index, tc::ROOT, handle, &specs[0]).unwrap_err();
    assert!(tc::is_errno(&again, &[libc::EEXIST]), "{again:#}");
    for spec in &specs {
        tc::tbf(Verb::Change, index, tc::ROOT, handle, spec).unwrap();
        let ours = tc::qdiscs(index).unwrap();
        let q = ours.iter().find(|q| q.parent == tc::ROOT).unwrap_or_else(|| panic!("{ours:?}"));
        assert_eq!((q.kind.as_str(), q.handle), ("tbf", handle));
        let got = q.tbf.unwrap();
        let theirs = tc_root_qdisc(&veth.host);
        println!("set {spec:?}\n  netlink {got:?}\n  tc      {}", theirs["options"]);
        assert_eq!(theirs["kind"], "tbf");
        assert_eq!(theirs["handle"], "b9a1:");
        assert_eq!(got.rate_bits / 8, theirs["options"]["rate"].as_u64().unwrap(), "rate (bytes/s)");
        assert_eq!(got.burst_bytes, theirs["options"]["burst"].as_u64().unwrap(), "burst (bytes)");
        assert_eq!(got.limit_bytes, theirs["options"]["limit"].as_u64().unwrap(), "limit (bytes)");
        // And what was asked for: the rate to the byte, the limit exactly,
        // the bucket within the kernel's rounding of it to a time.
        assert_eq!(got.rate_bits, spec.rate_bits / 8 * 8);
        assert_eq!(got.limit_bytes, spec.limit_bytes);
        assert!(got.burst_bytes.abs_diff(spec.burst_bytes) <= spec.burst_bytes / 100 + 2, "burst {got:?} for {spec:?}");
    }
    // replace: the same handle, new parameters.
    tc::tbf(Verb::Replace, index, tc::ROOT, handle, &specs[1]).unwrap();
    assert_eq!(tc::qdiscs(index).unwrap().iter().find(|q| q.parent == tc::ROOT).unwrap().tbf.unwrap().limit_bytes, specs[1].limit_bytes);
    // delete: only with our handle; a second delete finds nothing.
    assert!(!tc::qdisc_delete(index, tc::ROOT, tc::handle(0x1234)).unwrap(), "another handle must not delete it");
    assert!(tc::qdisc_delete(index, tc::ROOT, handle).unwrap());
    assert!(!tc::qdisc_delete(index, tc::ROOT, handle).unwrap());
    assert_eq!(tc_root_qdisc(&veth.host)["kind"], "noqueue", "the TBF was deleted, so the veth is back to its default");
}

/// The ingress queue in front of an interface (in the calling thread's
/// netns; a pod's in production): an ifb with the TBF and its child (prio
/// with fq_codel where the kernel has them, as `tc` says it has; else
/// pfifo_fast), txqueuelen from the TBF's limit, fed by a filter on the
/// interface's ingress whose classid is the ifb's index. CHECK fails when
/// the child is not the one ADD made. Runs on this host (pfifo_fast) and in
/// the 6.1 VM (prio and fq_codel).
#[test]
fn ingress_queue_install_change_verify_remove_over_netlink() {
    use bpf_ratelimit::datapath::ingress_queue::{self, QueueChild, QueueSpec};
    let (child, other) = if common::kernel_has_prio_and_fq_codel() { (QueueChild::FlowFair, QueueChild::Bands) } else { (QueueChild::Bands, QueueChild::FlowFair) };
    println!("kernel {}: the queue's child should be {child:?}", bpf_ratelimit::node::kernel::release());
    let classifier = PinnedClassifier::new("queue_pod_ingress");
    let prog = classifier.path();
    let redirect = PinnedClassifier::new("redirect_to_queue");
    let redirect = redirect.path();
    let spec = |rate: u64| {
        QueueSpec::for_limit(bpf_ratelimit::policy::limits::Limit { rate, burst: 2_500_000 }, bpf_ratelimit::policy::operator::LimitBasis::Frames)
    };
    let veth = Veth::new("iq");
    let index = ifindex(&veth.host).unwrap();
    // Another shaper's root qdisc on the interface is left alone throughout.
    let out = Command::new("tc").args(["qdisc", "add", "dev", &veth.host, "root", "handle", "77:", "tbf", "rate", "1mbit", "burst", "10k", "limit", "100k"]).status().unwrap();
    assert!(out.success());
    let (ifb, made) = ingress_queue::install(index, spec(10_000_000), &prog, &redirect, 7).unwrap();
    assert_eq!(made, child);
    assert_eq!(ingress_queue::ifb_index(index), Some(ifb));
    let name = ingress_queue::ifb_name(index);
    ingress_queue::verify_spec(index, spec(10_000_000), child).unwrap();
    let wrong = ingress_queue::verify_spec(index, spec(10_000_000), other).unwrap_err().to_string();
    assert!(wrong.contains("instead of"), "{wrong}");
    let kinds: Vec<(String, u32)> = tc::qdiscs(ifb).unwrap().into_iter().map(|q| (q.kind, q.parent)).collect();
    assert!(kinds.contains(&("tbf".to_string(), tc::ROOT)), "{kinds:?}");
    // As iproute2 reads them back.
    let shown = Command::new("tc").args(["qdisc", "show", "dev", &name]).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    match child {
        QueueChild::FlowFair => {
            assert!(kinds.contains(&("prio".to_string(), tc::handle(0xb9a1) | 1)), "{kinds:?}");
            // (Its first band, the kernel's default pfifo, has no handle and is not dumped.)
            assert!(kinds.contains(&("fq_codel".to_string(), tc::handle(0xb9a2) | 2)), "{kinds:?}");
            assert!(shown.contains("qdisc prio b9a2: parent b9a1:1 bands 2 priomap 1 1 1 1 1 1 0 0 1 1 1 1 1 1 1 1"), "{shown}");
            assert!(shown.contains("qdisc fq_codel b9a4: parent b9a2:2") && shown.contains("target 5s interval 10s"), "{shown}");
        }
        QueueChild::Bands => {
            assert!(kinds.contains(&("pfifo_fast".to_string(), tc::handle(0xb9a1) | 1)), "{kinds:?}");
            assert!(!kinds.iter().any(|(k, _)| k == "prio" || k == "fq_codel"), "{kinds:?}");
        }
    }
    println!("{shown}");
    let txqueuelen = || std::fs::read_to_string(format!("/sys/class/net/{name}/tx_queue_len")).unwrap().trim().parse::<u32>().unwrap();
    assert_eq!(txqueuelen(), spec(10_000_000).txqueuelen());
    assert!(tc::has_filter(index, tc::Hook::Ingress, ingress_queue::QUEUE_FILTER_PREF, "queue_pod_ingre").unwrap());
    // The door's classid is its key; the next filter's mirred action feeds the ifb.
    let filters = tc_filters(&veth.host, "ingress");
    assert!(filters.contains("flowid :7"), "the door's classid: {filters}");
    assert!(filters.contains(&format!("mirred (Egress Redirect to device {name})")), "the redirect into {name}: {filters}");
    assert!(tc::has_filter(index, tc::Hook::Ingress, ingress_queue::QUEUE_FILTER_PREF, "queue_pod_ingre").unwrap());
    // A repeated ADD replaces the queue rather than failing or stacking another.
    assert_eq!(ingress_queue::install(index, spec(10_000_000), &prog, &redirect, 7).unwrap().1, child);
    ingress_queue::verify_spec(index, spec(10_000_000), child).unwrap();
    assert!(ingress_queue::verify_spec(index, spec(20_000_000), child).is_err());
    // `set` changes the TBF and keeps the child.
    ingress_queue::change(index, spec(1_000_000_000)).unwrap();
    ingress_queue::verify_spec(index, spec(1_000_000_000), child).unwrap();
    assert_eq!(tc_root_qdisc(&name)["options"]["rate"].as_u64().unwrap() * 8, spec(1_000_000_000).rate_bits / 8 * 8);
    assert_eq!(txqueuelen(), spec(1_000_000_000).txqueuelen());
    // CHECK sees a child that is not ours; `set` gives a lost child's bands back.
    let out = Command::new("tc").args(["qdisc", "replace", "dev", &name, "parent", "b9a1:1", "handle", "b9a3:", "pfifo"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lost = ingress_queue::verify_spec(index, spec(1_000_000_000), child).unwrap_err().to_string();
    assert!(lost.contains("lost its bands"), "{lost}");
    ingress_queue::change(index, spec(1_000_000_000)).unwrap();
    // (The repeated ADD made a new ifb.)
    let ifb = ingress_queue::ifb_index(index).unwrap();
    assert_eq!(ingress_queue::child_of(ifb).unwrap(), Some(QueueChild::Bands), "{:?}", tc::qdiscs(ifb).unwrap());
    ingress_queue::remove(index).unwrap();
    ingress_queue::remove(index).unwrap();
    assert!(ingress_queue::ifb_index(index).is_none(), "the ifb is gone");
    assert!(!tc::has_filter(index, tc::Hook::Ingress, ingress_queue::QUEUE_FILTER_PREF, "queue_pod_ingre").unwrap());
    assert!(!tc_filters(&veth.host, "ingress").contains("mirred"), "the redirect is gone");
    assert!(ingress_queue::verify_spec(index, spec(20_000_000), child).unwrap_err().to_string().contains("missing"));
    assert_eq!(tc_root_qdisc(&veth.host)["handle"], "77:");
}

/// What `tc filter show` prints for the interface's hook.
fn tc_filters(ifname: &str, hook: &str) -> String {
    let out = Command::new("tc").args(["filter", "show", "dev", ifname, hook]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The datapath's cls_bpf program (refuse_raw_frames), loaded for the test.
fn with_classifier<T>(f: impl FnOnce(std::os::fd::BorrowedFd<'_>, u32) -> T) -> T {
    let mut ebpf = bpf_ratelimit::datapath::attach::load().unwrap();
    let prog: &mut aya::programs::SchedClassifier = ebpf.program_mut("refuse_raw_frames").unwrap().try_into().unwrap();
    let fd = prog.fd().unwrap();
    let id = bpf_ratelimit::node::bpf_sys::prog_info(fd.as_fd()).unwrap().id;
    f(fd.as_fd(), id)
}

fn check_filters(netns: Option<&str>, dev: &str, index: u32, prog: std::os::fd::BorrowedFd<'_>, prog_id: u32) {
    tc::clsact(Verb::Replace, index).unwrap();
    tc::clsact(Verb::Replace, index).unwrap(); // an existing clsact is kept
    for (hook, pref) in [(Hook::Ingress, 49101u16), (Hook::Egress, 49100)] {
        tc::bpf_filter(Verb::Add, index, hook, pref, 1, prog, "refuse_raw_frames", 0).unwrap();
        let again = tc::bpf_filter(Verb::Add, index, hook, pref, 1, prog, "refuse_raw_frames", 0).unwrap_err();
        assert!(tc::is_errno(&again, &[libc::EEXIST]), "{again:#}");
        tc::bpf_filter(Verb::Replace, index, hook, pref, 1, prog, "refuse_raw_frames", 0).unwrap();
        let ours = tc::bpf_filters(index, hook).unwrap();
        assert_eq!(ours.len(), 1, "{ours:?}");
        let f = &ours[0];
        assert_eq!((f.pref, f.handle, f.prog_id, f.name.as_str(), f.direct_action), (pref, 1, prog_id, "refuse_raw_frames", true));
        assert_eq!(bpf_ratelimit::node::bpf_sys::prog_name(f.prog_id).unwrap(), "refuse_raw_fram");
        // What tc shows for the same hook.
        let theirs = tc_json(netns, &["filter", "show", "dev", dev, hook.name()]);
        let t = theirs.as_array().unwrap().iter().find(|f| f["options"]["handle"].is_string() || f["options"]["prog"].is_object()).unwrap_or_else(|| panic!("{theirs}"));
        println!("{} filter: netlink {f:?}\n  tc {t}", hook.name());
        assert_eq!(t["pref"].as_u64(), Some(u64::from(pref)));
        assert_eq!(t["kind"], "bpf");
        assert_eq!(t["options"]["prog"]["id"].as_u64(), Some(u64::from(prog_id)));
        assert_eq!(t["options"]["prog"]["name"], "refuse_raw_fram");
        assert_eq!(t["options"]["bpf_name"], "refuse_raw_frames");
        assert_eq!(t["options"]["direct-action"], true);
    }
    assert!(tc::filter_delete(index, Hook::Ingress, 49101, 0).unwrap());
    assert!(!tc::filter_delete(index, Hook::Ingress, 49101, 0).unwrap());
    assert!(tc::bpf_filters(index, Hook::Ingress).unwrap().is_empty());
    assert_eq!(tc::bpf_filters(index, Hook::Egress).unwrap().len(), 1);
    assert!(tc::clsact_delete(index).unwrap());
    assert!(tc::bpf_filters(index, Hook::Egress).unwrap().is_empty(), "the filters go with the clsact");
    assert!(!tc::clsact_delete(index).unwrap());
}

#[test]
fn bpf_filters_on_both_clsact_hooks_in_the_nodes_netns_and_a_pods() {
    let veth = Veth::new("cls");
    with_classifier(|prog, id| {
        // The node's netns: the host side of the veth.
        check_filters(None, &veth.host, ifindex(&veth.host).unwrap(), prog, id);
        // The pod's netns, from a thread that enters it.
        let ns = veth.netns_path();
        in_netns(Path::new(&ns), || {
            check_filters(Some(&veth.netns), "eth0", ifindex("eth0")?, prog, id);
            Ok(())
        })
        .unwrap();
    });
}

#[test]
fn raw_guard_attach_verify_detach_over_netlink() {
    let veth = Veth::new("rg");
    let ns = veth.netns_path();
    let pin_root = Path::new("/sys/fs/bpf").join(format!("brl-test-rg-{}", std::process::id()));
    let pin = pin_root.join("refuse_raw_frames");
    std::fs::create_dir_all(&pin_root).unwrap();
    with_classifier(|prog, _| bpf_ratelimit::node::bpf_sys::obj_pin(prog, &pin).unwrap());
    let result = std::panic::catch_unwind(|| {
        assert!(bpf_ratelimit::datapath::raw_guard::verify(&ns, "eth0").is_err());
        bpf_ratelimit::datapath::raw_guard::attach(&ns, "eth0", &pin).unwrap();
        bpf_ratelimit::datapath::raw_guard::attach(&ns, "eth0", &pin).unwrap(); // idempotent
        bpf_ratelimit::datapath::raw_guard::verify(&ns, "eth0").unwrap();
        let shown = tc_json(Some(&veth.netns), &["filter", "show", "dev", "eth0", "egress"]);
        assert!(shown.to_string().contains("refuse_raw_fram"), "{shown}");
        bpf_ratelimit::datapath::raw_guard::detach(&ns, "eth0");
        assert!(bpf_ratelimit::datapath::raw_guard::verify(&ns, "eth0").unwrap_err().to_string().contains("missing"));
        let e = bpf_ratelimit::datapath::raw_guard::attach(&ns, "nosuch0", &pin).unwrap_err();
        assert!(format!("{e:#}").contains("nosuch0"), "{e:#}");
    });
    let _ = std::fs::remove_dir_all(&pin_root);
    result.unwrap();
}

/// The generic helpers, as an enforcement point on a pod's host-side veth
/// would use them: a pinned program on the clsact ingress hook in the node's
/// netns, beside another plugin's filter and qdisc, which stay.
#[test]
fn a_pinned_program_on_the_ingress_hook_of_a_host_interface() {
    let veth = Veth::new("ing");
    let index = ifindex(&veth.host).unwrap();
    let pin_root = Path::new("/sys/fs/bpf").join(format!("brl-test-ing-{}", std::process::id()));
    let pin = pin_root.join("prog");
    std::fs::create_dir_all(&pin_root).unwrap();
    with_classifier(|prog, _| bpf_ratelimit::node::bpf_sys::obj_pin(prog, &pin).unwrap());
    let result = std::panic::catch_unwind(|| {
        // Another plugin's clsact and filter come first.
        let out = Command::new("tc").args(["qdisc", "add", "dev", &veth.host, "clsact"]).status().unwrap();
        assert!(out.success());
        with_classifier(|prog, _| tc::bpf_filter(Verb::Add, index, Hook::Ingress, 100, 1, prog, "theirs", 0).unwrap());
        assert!(!tc::has_filter(index, Hook::Ingress, 49101, "refuse_raw_fram").unwrap());
        tc::attach_pinned_filter(index, Hook::Ingress, 49101, 1, &pin, "ours").unwrap();
        tc::attach_pinned_filter(index, Hook::Ingress, 49101, 1, &pin, "ours").unwrap();
        assert!(tc::has_filter(index, Hook::Ingress, 49101, "refuse_raw_fram").unwrap());
        assert!(!tc::has_filter(index, Hook::Egress, 49101, "refuse_raw_fram").unwrap());
        let prefs: Vec<u16> = tc::bpf_filters(index, Hook::Ingress).unwrap().iter().map(|f| f.pref).collect();
        assert_eq!(prefs, [100, 49101], "the other filter must stay");
        let shown = tc_json(None, &["filter", "show", "dev", &veth.host, "ingress"]).to_string();
        assert!(shown.contains("\"bpf_name\":\"ours\"") && shown.contains("\"bpf_name\":\"theirs\""), "{shown}");
        assert!(tc::filter_delete(index, Hook::Ingress, 49101, 0).unwrap());
        assert_eq!(tc::bpf_filters(index, Hook::Ingress).unwrap().len(), 1);
    });
    let _ = std::fs::remove_dir_all(&pin_root);
    result.unwrap();
}

/// A program of the production datapath, loaded and pinned on its own.
struct PinnedClassifier {
    dir: std::path::PathBuf,
}

impl PinnedClassifier {
    fn new(name: &str) -> Self {
        let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/brl-nltc-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ebpf = aya::EbpfLoader::new().load(bpf_ratelimit::datapath::attach::SHAPER_OBJ).unwrap();
        let prog: &mut aya::programs::SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
        prog.load().unwrap();
        prog.pin(dir.join("prog")).unwrap();
        PinnedClassifier { dir }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.join("prog")
    }
}

impl Drop for PinnedClassifier {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
