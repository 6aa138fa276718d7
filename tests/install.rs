//! `bpf-ratelimit install` and `uninstall`, run as the built binary on
//! temporary CNI bin and conf dirs holding the conflists of real networks
//! (bridge, flannel, Calico, a single-plugin .conf). Needs no privileges,
//! except the static-binary check (chroot).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

const BRIDGE: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ],
  "zKeptKey": {"any": ["thing", 1]}
}"#;

/// flannel's stock kube-flannel.yml cni-conf.json.
const FLANNEL: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
"#;

/// Calico's stock 10-calico.conflist, which chains the reference bandwidth plugin.
const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "log_level": "info",
      "log_file_path": "/var/log/calico/cni/cni.log",
      "datastore_type": "kubernetes",
      "nodename": "__KUBERNETES_NODE_NAME__",
      "mtu": 0,
      "ipam": {"type": "calico-ipam"},
      "policy": {"type": "k8s"},
      "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}
    },
    {"type": "bandwidth", "capabilities": {"bandwidth": true}},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
}"#;

const BRIDGE_CONF: &str = r#"{
    "cniVersion": "0.4.0",
    "name": "mynet",
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": true,
    "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}
}
"#;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A CNI bin dir and conf dir under one temporary directory, removed on drop.
struct Node {
    root: PathBuf,
}

struct Run {
    code: i32,
    stderr: String,
}

impl Node {
    fn new(files: &[(&str, &str)]) -> Node {
        let root = std::env::temp_dir().join(format!("brl-install-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("net.d")).unwrap();
        for (name, text) in files {
            std::fs::write(root.join("net.d").join(name), text).unwrap();
        }
        Node { root }
    }

    fn conf(&self, name: &str) -> PathBuf {
        self.root.join("net.d").join(name)
    }

    fn json(&self, name: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.conf(name)).unwrap()).unwrap()
    }

    fn binary(&self) -> PathBuf {
        self.root.join("bin/bpf-ratelimit")
    }

    fn run(&self, command: &str, extra: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_bpf-ratelimit"))
            .arg(command)
            .arg("--bin-dir")
            .arg(self.root.join("bin"))
            .arg("--conf-dir")
            .arg(self.root.join("net.d"))
            .args(extra)
            .env_remove("CNI_COMMAND")
            .output()
            .unwrap();
        let run = Run { code: out.status.code().unwrap_or(-1), stderr: String::from_utf8_lossy(&out.stderr).into_owned() };
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        assert!(out.stdout.is_empty(), "{command} printed to stdout: {}", String::from_utf8_lossy(&out.stdout));
        run
    }

    fn ok(&self, command: &str, extra: &[&str]) -> String {
        let r = self.run(command, extra);
        assert_eq!(r.code, 0, "{command} {extra:?} failed: {}", r.stderr);
        r.stderr
    }

    /// Every file in both dirs with its bytes and mode.
    fn snapshot(&self) -> BTreeMap<String, (Vec<u8>, u32)> {
        use std::os::unix::fs::PermissionsExt;
        let mut files = BTreeMap::new();
        for dir in ["bin", "net.d"] {
            for e in std::fs::read_dir(self.root.join(dir)).unwrap().flatten() {
                let mode = e.metadata().unwrap().permissions().mode();
                files.insert(format!("{dir}/{}", e.file_name().to_string_lossy()), (std::fs::read(e.path()).unwrap(), mode));
            }
        }
        files
    }

    /// Runs a refused install and checks that nothing changed.
    fn refused(&self, extra: &[&str], needles: &[&str]) {
        let before = self.snapshot();
        let r = self.run("install", extra);
        assert_ne!(r.code, 0, "install {extra:?} must be refused");
        for needle in needles {
            assert!(r.stderr.contains(needle), "{needle:?} not in: {}", r.stderr);
        }
        assert_eq!(self.snapshot(), before, "a refused install changed files");
        println!("refused as it should: {}", r.stderr.trim());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn example(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conflist").join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ours() -> Value {
    json!({"type": "bpf-ratelimit", "capabilities": {"bandwidth": true, "cgroupPath": true, "io.kubernetes.cri.pod-annotations": true}})
}

/// Install, install again (nothing changes), uninstall (JSON-equal to the
/// original, binary gone).
fn round_trip(node: &Node, name: &str, original: &str, expected: &Value) {
    node.ok("install", &[]);
    assert_eq!(&node.json(name), expected);
    assert_eq!(std::fs::read(node.binary()).unwrap(), std::fs::read(env!("CARGO_BIN_EXE_bpf-ratelimit")).unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(node.binary()).unwrap().permissions().mode() & 0o777, 0o755);
    let after_first = node.snapshot();
    let second = node.ok("install", &[]);
    assert_eq!(node.snapshot(), after_first, "a second install changed files: {second}");
    node.ok("uninstall", &[]);
    let restored = node.json(name);
    assert_eq!(restored, serde_json::from_str::<Value>(original).unwrap(), "uninstall did not restore {name}");
    assert!(!node.binary().exists(), "uninstall left the binary");
    assert!(node.snapshot().keys().all(|k| k == &format!("net.d/{name}")), "{:?}", node.snapshot().keys());
}

#[test]
fn bridge_conflist_round_trip_keeps_every_key() {
    let node = Node::new(&[("10-bridge.conflist", BRIDGE)]);
    let mut expected: Value = serde_json::from_str(BRIDGE).unwrap();
    expected["plugins"].as_array_mut().unwrap().push(ours());
    round_trip(&node, "10-bridge.conflist", BRIDGE, &expected);
}

#[test]
fn flannel_0_3_1_with_portmap_becomes_the_example_conflist() {
    let node = Node::new(&[("10-flannel.conflist", FLANNEL)]);
    node.ok("install", &[]);
    println!("before install:\n{FLANNEL}\nafter install:\n{}", std::fs::read_to_string(node.conf("10-flannel.conflist")).unwrap());
    assert_eq!(node.json("10-flannel.conflist"), example("10-flannel-bpf-ratelimit.conflist"));
    // Key order is kept too (serde_json's preserve_order).
    let text = std::fs::read_to_string(node.conf("10-flannel.conflist")).unwrap();
    assert!(text.find("\"name\"").unwrap() < text.find("\"cniVersion\"").unwrap(), "{text}");
    node.ok("uninstall", &[]);
    round_trip(&node, "10-flannel.conflist", FLANNEL, &example("10-flannel-bpf-ratelimit.conflist"));
}

#[test]
fn calico_with_the_bandwidth_plugin_is_refused_unless_replaced() {
    let node = Node::new(&[("10-calico.conflist", CALICO)]);
    node.refused(&[], &["10-calico.conflist", "bandwidth", "--replace-bandwidth"]);
    assert!(!node.binary().exists());

    node.ok("install", &["--replace-bandwidth"]);
    let mut installed = node.json("10-calico.conflist");
    let replaced = installed.as_object_mut().unwrap().remove("bpf-ratelimit.io/replaced-bandwidth").expect("the replaced entry is kept");
    assert_eq!(replaced, json!({"index": 1, "plugin": {"type": "bandwidth", "capabilities": {"bandwidth": true}}}));
    assert_eq!(installed, example("10-calico-bpf-ratelimit.conflist"));
    let snap = node.snapshot();
    node.ok("install", &["--replace-bandwidth"]);
    node.ok("install", &[]);
    assert_eq!(node.snapshot(), snap, "installing again changed files");

    node.ok("uninstall", &[]);
    assert_eq!(node.json("10-calico.conflist"), serde_json::from_str::<Value>(CALICO).unwrap());
    assert!(!node.binary().exists());
}

/// What install writes for a single-plugin config: the .conf itself is
/// left byte for byte, and our own conflist embeds it.
fn own_conflist_of(conf: &str, name: &str) -> Value {
    let conf: Value = serde_json::from_str(conf).unwrap();
    json!({"cniVersion": conf["cniVersion"], "name": conf["name"], "plugins": [conf, ours()], "bpf-ratelimit.io/wraps": name})
}

/// The names libcni, containerd and CRI-O consider, in their order.
fn runtime_order(node: &Node) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(node.root.join("net.d"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| [".conf", ".conflist", ".json"].iter().any(|ext| n.ends_with(ext)))
        .collect();
    names.sort();
    names
}

#[test]
fn a_single_plugin_conf_is_left_alone_and_chained_by_our_own_conflist_that_sorts_first() {
    let node = Node::new(&[("10-mynet.conf", BRIDGE_CONF), ("20-other.conflist", BRIDGE)]);
    let stderr = node.ok("install", &[]);
    println!("{stderr}");
    assert_eq!(std::fs::read_to_string(node.conf("10-mynet.conf")).unwrap(), BRIDGE_CONF, "install rewrote the main plugin's .conf");
    assert_eq!(node.json("00-bpf-ratelimit.conflist"), own_conflist_of(BRIDGE_CONF, "10-mynet.conf"));
    assert_eq!(runtime_order(&node)[0], "00-bpf-ratelimit.conflist", "the runtime would not load ours");
    assert!(!node.conf("10-mynet.conflist").exists() && !node.conf("10-mynet.conf.bpf-ratelimit-orig").exists());
    assert_eq!(std::fs::read_to_string(node.conf("20-other.conflist")).unwrap(), BRIDGE);
    let snap = node.snapshot();
    node.ok("install", &[]);
    assert_eq!(node.snapshot(), snap, "a second install changed files");

    // The main plugin changes its .conf: --wait follows it, and leaves it as written.
    let ready = node.path("run/ready");
    let waiting = node.spawn("install", &["--wait", "--ready-file", ready.to_str().unwrap()]);
    eventually(5, "ready", || ready.exists());
    let newer = BRIDGE_CONF.replace("10.22.0.0/16", "10.33.0.0/16");
    replace_file(&node.conf("10-mynet.conf"), &newer);
    eventually(3, "ours follows the .conf", || {
        std::fs::read(node.conf("00-bpf-ratelimit.conflist")).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            == Some(own_conflist_of(&newer, "10-mynet.conf"))
    });
    assert_eq!(std::fs::read_to_string(node.conf("10-mynet.conf")).unwrap(), newer);
    // Multus arrives and its 00-multus.conf must be what the runtime loads:
    // ours, which would hide it, goes (and install refuses to chain Multus).
    let multus = r#"{"cniVersion": "0.3.1", "name": "multus-cni-network", "type": "multus-shim", "socketDir": "/run/multus/"}"#;
    replace_file(&node.conf("00-multus.conf"), multus);
    eventually(3, "our conflist removed when Multus sorts first", || !node.conf("00-bpf-ratelimit.conflist").exists());
    eventually(3, "unready while Multus is first", || !ready.exists());
    std::fs::remove_file(node.conf("00-multus.conf")).unwrap();
    eventually(3, "chained again when Multus is gone", || node.conf("00-bpf-ratelimit.conflist").exists() && ready.exists());
    // The .conf goes: ours, now stale, goes with it, and the runtime's
    // next config is chained instead.
    std::fs::rename(node.conf("10-mynet.conf"), node.path("mynet.conf.away")).unwrap();
    eventually(3, "our conflist removed with the .conf", || !node.conf("00-bpf-ratelimit.conflist").exists());
    eventually(3, "the next config chained", || node.json("20-other.conflist")["plugins"][2] == ours());
    std::fs::rename(node.path("mynet.conf.away"), node.conf("10-mynet.conf")).unwrap();
    eventually(3, "chained again", || node.conf("00-bpf-ratelimit.conflist").exists() && ready.exists());
    let log = waiting.log();
    assert_eq!(waiting.stop().0, 0);
    println!("install --wait log:\n{log}");
    assert!(log.contains("removed") && log.contains("00-multus.conf"), "{log}");

    node.ok("uninstall", &[]);
    assert!(!node.conf("00-bpf-ratelimit.conflist").exists());
    assert_eq!(std::fs::read_to_string(node.conf("10-mynet.conf")).unwrap(), newer, "uninstall changed the .conf");
    assert_eq!(node.json("20-other.conflist"), serde_json::from_str::<Value>(BRIDGE).unwrap());
    assert!(!node.binary().exists());
    assert_eq!(node.snapshot().keys().cloned().collect::<Vec<_>>(), ["net.d/10-mynet.conf", "net.d/20-other.conflist"]);
}

/// Installs before issue 22 converted 10-mynet.conf to 10-mynet.conflist and
/// kept the original as 10-mynet.conf.bpf-ratelimit-orig. Such a node keeps
/// working, and uninstall undoes it as that version did.
#[test]
fn an_older_installs_conversion_keeps_working_and_uninstall_undoes_it() {
    let conf: Value = serde_json::from_str(BRIDGE_CONF).unwrap();
    let converted = serde_json::to_string_pretty(&json!({"cniVersion": "0.4.0", "name": "mynet", "plugins": [conf, ours()]})).unwrap();
    let node = Node::new(&[("10-mynet.conflist", &converted), ("10-mynet.conf.bpf-ratelimit-orig", BRIDGE_CONF)]);
    node.ok("install", &["--binary-only"]);
    let snap = node.snapshot();
    let stderr = node.ok("install", &[]);
    assert!(stderr.contains("already chains"), "{stderr}");
    assert_eq!(node.snapshot(), snap, "install changed an older install's files");
    let stderr = node.ok("uninstall", &[]);
    assert!(stderr.contains("restored"), "{stderr}");
    assert_eq!(std::fs::read_to_string(node.conf("10-mynet.conf")).unwrap(), BRIDGE_CONF);
    assert_eq!(node.snapshot().keys().cloned().collect::<Vec<_>>(), ["net.d/10-mynet.conf"]);

    // The main plugin wrote its .conf again beside the old conversion: the
    // .conf is chained by our own file; uninstall removes that and the old
    // conversion's two files, and leaves the newer .conf.
    let newer = BRIDGE_CONF.replace("10.22.0.0/16", "10.33.0.0/16");
    let node = Node::new(&[("10-mynet.conflist", &converted), ("10-mynet.conf.bpf-ratelimit-orig", BRIDGE_CONF), ("10-mynet.conf", &newer)]);
    node.ok("install", &[]);
    assert_eq!(std::fs::read_to_string(node.conf("10-mynet.conf")).unwrap(), newer);
    assert_eq!(node.json("00-bpf-ratelimit.conflist"), own_conflist_of(&newer, "10-mynet.conf"));
    let stderr = node.ok("uninstall", &[]);
    println!("{stderr}");
    assert_eq!(std::fs::read_to_string(node.conf("10-mynet.conf")).unwrap(), newer);
    assert_eq!(node.snapshot().keys().cloned().collect::<Vec<_>>(), ["net.d/10-mynet.conf"]);
    // An old conversion edited since is not ours to remove: we only leave it.
    let mut edited: Value = serde_json::from_str(&converted).unwrap();
    edited["plugins"][0]["isGateway"] = json!(false);
    let node = Node::new(&[("10-mynet.conflist", &edited.to_string()), ("10-mynet.conf.bpf-ratelimit-orig", BRIDGE_CONF)]);
    node.ok("uninstall", &[]);
    assert_eq!(node.json("10-mynet.conflist")["plugins"].as_array().unwrap().len(), 1);
    assert!(node.conf("10-mynet.conf.bpf-ratelimit-orig").exists());
}

#[test]
fn picks_the_file_libcni_loads_first_or_the_one_named() {
    let node = Node::new(&[
        ("00-notes.conf.bak", "not json"),
        ("05-flannel.conflist", FLANNEL),
        ("10-bridge.conflist", BRIDGE),
        ("99-last.json", BRIDGE_CONF),
    ]);
    node.ok("install", &[]);
    assert_eq!(node.json("05-flannel.conflist"), example("10-flannel-bpf-ratelimit.conflist"));
    assert_eq!(std::fs::read_to_string(node.conf("10-bridge.conflist")).unwrap(), BRIDGE);

    node.ok("install", &["--conflist", "10-bridge.conflist"]);
    assert_eq!(node.json("10-bridge.conflist")["plugins"][2], ours());
    // Uninstalling one keeps the binary the other still runs.
    let stderr = node.ok("uninstall", &["--conflist", "10-bridge.conflist"]);
    assert!(node.binary().exists(), "{stderr}");
    assert!(stderr.contains("05-flannel.conflist"), "{stderr}");
    assert_eq!(node.json("10-bridge.conflist"), serde_json::from_str::<Value>(BRIDGE).unwrap());
    // Without --conflist, every file that chains the plugin.
    node.ok("uninstall", &[]);
    assert_eq!(node.json("05-flannel.conflist"), serde_json::from_str::<Value>(FLANNEL).unwrap());
    assert!(!node.binary().exists());
}

#[test]
fn refusals_name_the_file_and_change_nothing() {
    let only_chained = r#"{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "portmap"}]}"#;
    let ours_first = r#"{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bpf-ratelimit"}, {"type": "bridge"}]}"#;
    let list_in_conf = r#"{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]}"#;
    for (file, text, needles) in [
        ("10-broken.conflist", "{\"name\": \"n\", \"plugins\": [", &["10-broken.conflist", "cannot parse"][..]),
        ("10-array.conflist", "[1, 2]", &["10-array.conflist", "not a JSON object"]),
        ("10-noplugins.conflist", r#"{"name": "n"}"#, &["10-noplugins.conflist", "\"plugins\""]),
        ("10-notype.conflist", r#"{"name": "n", "plugins": [{"x": 1}]}"#, &["10-notype.conflist", "\"type\""]),
        ("10-portmap.conflist", only_chained, &["10-portmap.conflist", "no main plugin"]),
        ("10-empty.conflist", r#"{"name": "n", "plugins": []}"#, &["10-empty.conflist", "no main plugin"]),
        ("10-first.conflist", ours_first, &["10-first.conflist", "before its main plugin"]),
        ("10-list.conf", list_in_conf, &["10-list.conf", "rename it to .conflist"]),
    ] {
        let node = Node::new(&[(file, text)]);
        node.refused(&[], needles);
        assert!(!node.binary().exists());
    }
    // Multus's generated config sorts first; only an explicit --conflist goes there.
    let multus = r#"{"cniVersion": "0.3.1", "name": "multus-cni-network", "type": "multus-shim", "socketDir": "/run/multus/"}"#;
    let node = Node::new(&[("00-multus.conf", multus), ("10-flannel.conflist", FLANNEL)]);
    node.refused(&[], &["00-multus.conf", "Multus", "--conflist"]);
    node.ok("install", &["--conflist", "10-flannel.conflist"]);
    assert_eq!(node.json("10-flannel.conflist"), example("10-flannel-bpf-ratelimit.conflist"));
    assert_eq!(std::fs::read_to_string(node.conf("00-multus.conf")).unwrap(), multus);
    // A .conf that sorts before our own conflist's name cannot be chained by it.
    let node = Node::new(&[("0-mynet.conf", BRIDGE_CONF)]);
    node.refused(&[], &["0-mynet.conf", "sorts before", "00-bpf-ratelimit.conflist"]);
    // A .conf the runtime does not load first: our file would hide the first one.
    let node = Node::new(&[("10-a.conflist", BRIDGE), ("20-mynet.conf", BRIDGE_CONF)]);
    node.refused(&["--conflist", "20-mynet.conf"], &["20-mynet.conf", "10-a.conflist", "hide"]);
    // Nothing to chain after, a missing file, bad options.
    let node = Node::new(&[]);
    node.refused(&[], &["no CNI config", "net.d"]);
    node.refused(&["--conflist", "nope.conflist"], &["nope.conflist", "does not exist"]);
    node.refused(&["--conflist", "../etc/passwd"], &["--conflist takes a file name"]);
    node.refused(&["--bogus"], &["unknown option"]);
    let in_conf_dir = node.conf("policy.json");
    node.refused(&["--config", in_conf_dir.to_str().unwrap()], &["outside --conf-dir"]);
    node.refused(&["--wait", "--ready-file", in_conf_dir.to_str().unwrap()], &["outside --conf-dir"]);
    node.refused(&["--ready-file", "/tmp/x"], &["--ready-file needs --wait"]);
}

#[test]
fn binary_only_places_the_binary_and_touches_no_config() {
    let node = Node::new(&[("10-flannel.conflist", FLANNEL)]);
    node.ok("install", &["--binary-only"]);
    assert!(node.binary().exists());
    assert_eq!(std::fs::read_to_string(node.conf("10-flannel.conflist")).unwrap(), FLANNEL);
    // With nothing chaining it, uninstall removes it again.
    node.ok("uninstall", &[]);
    assert!(!node.binary().exists());
}

/// The program headers and dynamic section of an ELF64 little-endian file:
/// (has PT_INTERP, the DT_NEEDED count).
fn elf_links(bytes: &[u8]) -> (bool, usize) {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    assert_eq!((bytes[4], bytes[5]), (2, 1), "not ELF64 little-endian");
    let u16_at = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    let (mut interp, mut needed) = (false, 0);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32_at(ph) {
            3 => interp = true, // PT_INTERP
            2 => {
                // PT_DYNAMIC: Elf64_Dyn {d_tag, d_val} until DT_NULL.
                let (off, size) = (u64_at(ph + 8) as usize, u64_at(ph + 32) as usize);
                for d in (off..off + size).step_by(16) {
                    match u64_at(d) {
                        0 => break,
                        1 => needed += 1, // DT_NEEDED
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (interp, needed)
}

/// What `install` copies onto nodes is the binary cargo builds (and
/// install.sh, deploy/build-image.sh and the README use): statically linked
/// (.cargo/config.toml), so it runs on a node of any glibc version, or of
/// none. Checked in its ELF headers, and by running it alone in an empty
/// root (chroot, so this needs root).
#[test]
fn the_binary_is_statically_linked_and_runs_in_an_empty_root() {
    let binary = env!("CARGO_BIN_EXE_bpf-ratelimit");
    let (interp, needed) = elf_links(&std::fs::read(binary).unwrap());
    assert!(!interp, "{binary} names a program interpreter (the dynamic loader): it is not static");
    assert_eq!(needed, 0, "{binary} needs shared libraries");
    // The check itself tells a dynamic binary from a static one.
    let (interp, needed) = elf_links(&std::fs::read("/bin/sh").unwrap_or_else(|_| std::fs::read("/usr/bin/env").unwrap()));
    assert!(interp && needed > 0, "the ELF check cannot see a dynamic binary");

    let node = Node::new(&[]);
    let empty = node.root.join("empty-root");
    std::fs::create_dir(&empty).unwrap();
    std::fs::copy(binary, empty.join("bpf-ratelimit")).unwrap();
    let out = Command::new("chroot").arg(&empty).arg("/bpf-ratelimit").arg("version").env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").output().expect("chroot (coreutils)");
    assert!(out.status.success(), "the binary does not run without libraries: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("bpf-ratelimit "), "{}", String::from_utf8_lossy(&out.stdout));
}

// ---- --config, --wait, readiness ----

/// A running `install --wait`, stopped with SIGTERM on drop.
struct Waiting {
    child: std::process::Child,
    log: PathBuf,
}

impl Waiting {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit code and how long the exit took.
    fn stop(mut self) -> (i32, std::time::Duration) {
        let started = std::time::Instant::now();
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        (status.code().unwrap_or(-1), started.elapsed())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn spawn(&self, command: &str, extra: &[&str]) -> Waiting {
        let log = self.root.join(format!("{command}-wait.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_bpf-ratelimit"))
            .arg(command)
            .arg("--bin-dir")
            .arg(self.root.join("bin"))
            .arg("--conf-dir")
            .arg(self.root.join("net.d"))
            .args(extra)
            .env_remove("CNI_COMMAND")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Waiting { child, log }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `bpf-ratelimit ready FILE`: its exit code and output.
    fn ready(&self, file: &Path) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_bpf-ratelimit")).arg("ready").arg(file).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Waits up to `secs` for `cond`, polling every 50 ms.
fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "not within {secs} s: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Writes a file as installers and kubelet do: beside it, then renamed over.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-test");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

const POLICY: &str = r#"{"maxEgressRate": 100000000, "maxIngressRate": 100000000,
  "namespaces": {"batch": {"maxEgressRate": 1000000000}}, "logLevel": "info"}"#;

fn policy_entry(policy: &str) -> Value {
    let mut entry = json!({"type": "bpf-ratelimit"});
    for (k, v) in serde_json::from_str::<Value>(policy).unwrap().as_object().unwrap() {
        entry[k] = v.clone();
    }
    entry["capabilities"] = ours()["capabilities"].clone();
    entry
}

#[test]
fn install_config_is_checked_at_install_and_merged_into_the_entry() {
    let node = Node::new(&[("10-flannel.conflist", FLANNEL)]);
    let config = node.path("policy.json");
    let cfg = config.to_str().unwrap();
    for (text, needles) in [
        (r#"{"maxEgresRate": 100000000}"#, &["maxEgresRate", "did you mean \"maxEgressRate\""][..]),
        (r#"{"ingressBurst": 1000000}"#, &["ingressBurst", "rate must also be set"]),
        (r#"{"defaultEgressBurst": 1000000}"#, &["no egress rate"]),
        (r#"{"maxEgressRate": "100M"}"#, &["maxEgressRate", "must be a number"]),
        (r#"{"egressRate": 1000000000000}"#, &["egressRate", "between"]),
        (r#"{"namespaces": {"batch": {"maxEgresRate": 1}}}"#, &["namespaces[\"batch\"]", "did you mean"]),
        (r#"{"name": "x"}"#, &["\"name\" is not the operator's"]),
        (r#"{"pinRoot": "relative"}"#, &["pinRoot"]),
        (r#"[1]"#, &["JSON object"]),
        ("{", &["not valid JSON"]),
    ] {
        std::fs::write(&config, text).unwrap();
        node.refused(&["--config", cfg], &[&["policy.json"][..], needles].concat());
        assert!(!node.binary().exists());
    }
    std::fs::write(&config, POLICY).unwrap();
    node.ok("install", &["--config", cfg]);
    let list = node.json("10-flannel.conflist");
    assert_eq!(list["plugins"][2], policy_entry(POLICY), "{list}");
    assert_eq!(list["plugins"].as_array().unwrap().len(), 3);
    // The same config again changes nothing; a new one replaces the entry in place.
    let snap = node.snapshot();
    node.ok("install", &["--config", cfg]);
    assert_eq!(node.snapshot(), snap);
    let tighter = r#"{"maxEgressRate": 50000000}"#;
    std::fs::write(&config, tighter).unwrap();
    node.ok("install", &["--config", cfg]);
    assert_eq!(node.json("10-flannel.conflist")["plugins"][2], policy_entry(tighter));
    // Without --config an existing entry is left as it is (it may be hand-edited).
    let snap = node.snapshot();
    node.ok("install", &[]);
    assert_eq!(node.snapshot(), snap);
    node.ok("uninstall", &["--config", cfg]);
    assert_eq!(node.json("10-flannel.conflist"), serde_json::from_str::<Value>(FLANNEL).unwrap());
}

/// The DaemonSet's loop: the policy arrives with install --config, flannel's
/// installer rewrites its conflist (the policy comes back within seconds),
/// someone edits the entry (it is set back), the ConfigMap changes (the
/// entry follows), a broken config makes the pod unready while the last good
/// entry stays, and SIGTERM ends it at once.
#[test]
fn install_wait_keeps_the_configured_entry_through_rewrites_and_reports_readiness() {
    let node = Node::new(&[("10-flannel.conflist", FLANNEL)]);
    let config_dir = node.path("config");
    std::fs::create_dir(&config_dir).unwrap();
    let config = config_dir.join("policy.json");
    std::fs::write(&config, POLICY).unwrap();
    let ready = node.path("run/ready");
    let conflist = node.conf("10-flannel.conflist");
    let chained_as = |policy: &str| {
        let list: Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap_or_default()).unwrap_or(Value::Null);
        list["plugins"].as_array().is_some_and(|p| p.len() == 3 && p[2] == policy_entry(policy))
    };
    let waiting = node.spawn("install", &["--config", config.to_str().unwrap(), "--wait", "--ready-file", ready.to_str().unwrap()]);
    eventually(5, "chained with the policy and ready", || chained_as(POLICY) && ready.exists());
    let (code, what) = node.ready(&ready);
    assert_eq!(code, 0, "{what}");
    assert!(what.contains("10-flannel.conflist"), "{what}");

    // flannel's install-cni copies its stock conflist again.
    std::fs::write(&conflist, FLANNEL).unwrap();
    eventually(3, "the policy is back after flannel's rewrite", || chained_as(POLICY));
    // An edit of our entry by hand is set back to the configured one.
    let mut edited = node.json("10-flannel.conflist");
    edited["plugins"][2]["maxEgressRate"] = json!(1);
    replace_file(&conflist, &edited.to_string());
    eventually(3, "the entry is set back to the configured one", || chained_as(POLICY));
    // The ConfigMap changes: the entry follows.
    let tighter = r#"{"maxEgressRate": 20000000}"#;
    replace_file(&config, tighter);
    eventually(3, "the entry follows the new policy", || chained_as(tighter));
    // A broken policy: unready, and the last good entry stays.
    replace_file(&config, r#"{"maxEgresRate": 1}"#);
    eventually(3, "unready on a broken config", || !ready.exists());
    let (code, why) = node.ready(&ready);
    assert_eq!(code, 1, "{why}");
    assert!(why.contains("not ready"), "{why}");
    assert!(chained_as(tighter), "the last good entry must stay");
    eventually(3, "the error is logged", || waiting.log().contains("did you mean \"maxEgressRate\""));
    replace_file(&config, POLICY);
    eventually(3, "ready again", || chained_as(POLICY) && ready.exists());
    let log = waiting.log();
    let (code, took) = waiting.stop();
    println!("install --wait log:\n{log}");
    assert_eq!(code, 0);
    assert!(took < std::time::Duration::from_secs(2), "SIGTERM took {took:?}");
    assert!(chained_as(POLICY), "exiting leaves the installation in place");
}

/// At boot the main plugin may not have written its conflist yet: --wait
/// waits (unready) instead of exiting, and chains it as soon as it appears.
#[test]
fn install_wait_on_an_empty_conf_dir_chains_the_conflist_when_it_appears() {
    let node = Node::new(&[]);
    let ready = node.path("run/ready");
    let mut waiting = node.spawn("install", &["--wait", "--ready-file", ready.to_str().unwrap()]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(waiting.child.try_wait().unwrap().is_none(), "install --wait exited on an empty conf dir: {}", waiting.log());
    assert!(!ready.exists());
    assert_eq!(node.ready(&ready).0, 1);
    assert!(waiting.log().contains("waiting for the main network plugin"), "{}", waiting.log());
    let written = std::time::Instant::now();
    std::fs::write(node.conf("10-flannel.conflist"), FLANNEL).unwrap();
    eventually(3, "chained once flannel wrote its conflist", || {
        node.json("10-flannel.conflist") == example("10-flannel-bpf-ratelimit.conflist") && ready.exists()
    });
    println!("chained {:?} after the conflist appeared", written.elapsed());
    assert_eq!(node.ready(&ready).0, 0);
    assert!(node.binary().exists());
    // The conf dir itself goes and comes back (its watch is lost with it).
    std::fs::remove_dir_all(node.root.join("net.d")).unwrap();
    eventually(5, "unready without a conf dir", || !ready.exists());
    std::fs::create_dir(node.root.join("net.d")).unwrap();
    std::fs::write(node.conf("10-flannel.conflist"), FLANNEL).unwrap();
    eventually(5, "chained again in the new conf dir", || {
        node.json("10-flannel.conflist") == example("10-flannel-bpf-ratelimit.conflist") && ready.exists()
    });
    assert_eq!(waiting.stop().0, 0);
}

/// The README's Calico roll-back switches the DaemonSet's first arg to
/// uninstall and keeps the rest, --replace-bandwidth and --config included.
#[test]
fn uninstall_takes_every_option_install_took() {
    let node = Node::new(&[("10-calico.conflist", CALICO)]);
    let config = node.path("policy.json");
    std::fs::write(&config, POLICY).unwrap();
    let cfg = config.to_str().unwrap();
    node.ok("install", &["--replace-bandwidth", "--config", cfg]);
    assert_eq!(node.json("10-calico.conflist")["plugins"][2], policy_entry(POLICY));
    node.ok("uninstall", &["--replace-bandwidth", "--config", cfg]);
    assert_eq!(node.json("10-calico.conflist"), serde_json::from_str::<Value>(CALICO).unwrap());
    assert!(!node.binary().exists());
    // And as the waiting container, with a ready file.
    node.ok("install", &["--replace-bandwidth", "--config", cfg]);
    let ready = node.path("run/ready");
    let waiting = node.spawn("uninstall", &["--replace-bandwidth", "--config", cfg, "--wait", "--ready-file", ready.to_str().unwrap()]);
    eventually(5, "uninstalled and ready", || ready.exists() && !node.binary().exists());
    assert_eq!(node.json("10-calico.conflist"), serde_json::from_str::<Value>(CALICO).unwrap());
    assert_eq!(waiting.stop().0, 0);
}

#[test]
fn a_symlinked_conflist_stays_a_symlink_and_its_target_is_written() {
    let node = Node::new(&[]);
    let real_dir = node.path("managed");
    std::fs::create_dir(&real_dir).unwrap();
    std::fs::write(real_dir.join("10-flannel.conflist"), FLANNEL).unwrap();
    std::os::unix::fs::symlink("../managed/10-flannel.conflist", node.conf("10-flannel.conflist")).unwrap();
    node.ok("install", &[]);
    let link = node.conf("10-flannel.conflist");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink(), "install replaced the symlink with a file");
    assert_eq!(node.json("10-flannel.conflist"), example("10-flannel-bpf-ratelimit.conflist"));
    let target: Value = serde_json::from_slice(&std::fs::read(real_dir.join("10-flannel.conflist")).unwrap()).unwrap();
    assert_eq!(target, example("10-flannel-bpf-ratelimit.conflist"), "the link's target does not chain the plugin");
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("../managed/10-flannel.conflist"), "the link was changed");
    assert_eq!(std::fs::read_dir(&real_dir).unwrap().count(), 1, "a temporary file was left beside the target");
    assert_eq!(runtime_order(&node), ["10-flannel.conflist"], "install wrote another config");
    node.ok("uninstall", &[]);
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("../managed/10-flannel.conflist"));
    assert_eq!(node.json("10-flannel.conflist"), serde_json::from_str::<Value>(FLANNEL).unwrap());
    assert_eq!(std::fs::read_dir(&real_dir).unwrap().count(), 1);
}

#[test]
fn chains_the_plugin_cannot_serve_are_refused() {
    let no_name = r#"{"cniVersion": "0.4.0", "type": "bridge", "bridge": "cni0"}"#;
    let no_version = r#"{"name": "mynet", "type": "bridge", "bridge": "cni0"}"#;
    let old = r#"{"cniVersion": "0.2.0", "name": "n", "plugins": [{"type": "bridge"}]}"#;
    let future = r#"{"cniVersion": "2.0.0", "name": "n", "plugins": [{"type": "bridge"}]}"#;
    let unversioned = r#"{"name": "n", "plugins": [{"type": "bridge"}]}"#;
    for (file, text, needles) in [
        ("10-mynet.conf", no_name, &["10-mynet.conf", "no \"name\""][..]),
        ("10-mynet.conf", no_version, &["10-mynet.conf", "no \"cniVersion\""]),
        ("10-old.conflist", old, &["10-old.conflist", "\"0.2.0\"", "cannot serve"]),
        ("10-future.conflist", future, &["\"2.0.0\"", "cannot serve"]),
        ("10-none.conflist", unversioned, &["no \"cniVersion\""]),
    ] {
        let node = Node::new(&[(file, text)]);
        node.refused(&[], needles);
        assert!(!node.binary().exists());
    }
}

/// A main plugin that reconciles its own conflist (as an operator-managed
/// CNI does) takes our entry out every second for 30 s. install --wait
/// must not ping-pong with it at full speed: it backs off, says so naming
/// the file, counts it where operators can read it, and the file is never
/// half-written at any moment.
#[test]
fn install_wait_backs_off_when_a_reconciling_main_plugin_keeps_undoing_it() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let node = Node::new(&[("10-flannel.conflist", FLANNEL)]);
    let ready = node.path("run/ready");
    let conflist = node.conf("10-flannel.conflist");
    let waiting = node.spawn("install", &["--wait", "--ready-file", ready.to_str().unwrap()]);
    eventually(5, "chained and ready", || ready.exists() && node.json("10-flannel.conflist") == example("10-flannel-bpf-ratelimit.conflist"));

    // Every read of the file, by a reader as fast as a runtime's, parses.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, conflist) = (stop.clone(), conflist.clone());
        std::thread::spawn(move || {
            let (mut reads, mut chained_again, mut was_chained) = (0u32, 0u32, true);
            while !stop.load(Ordering::SeqCst) {
                let bytes = std::fs::read(&conflist).unwrap();
                let list: Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("a broken conflist was seen: {e}: {}", String::from_utf8_lossy(&bytes)));
                let plugins = list["plugins"].as_array().expect("a conflist without plugins was seen");
                let chained = plugins.iter().any(|p| p["type"] == "bpf-ratelimit");
                chained_again += u32::from(chained && !was_chained);
                was_chained = chained;
                reads += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            (reads, chained_again)
        })
    };
    let started = std::time::Instant::now();
    let mut undone = 0;
    while started.elapsed() < std::time::Duration::from_secs(30) {
        replace_file(&conflist, FLANNEL);
        undone += 1;
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    stop.store(true, Ordering::SeqCst);
    let (reads, chained_again) = reader.join().expect("the reader saw a broken conflist");
    let log = waiting.log();
    let metrics = std::fs::read_to_string(node.path("run/ready.prom")).unwrap_or_default();
    let (_, ready_text) = node.ready(&ready);
    assert_eq!(waiting.stop().0, 0);
    println!("install --wait log:\n{log}\nmetrics:\n{metrics}\nready file:\n{ready_text}");

    // Each apply that wrote logs one such line (the first one's "ready:" line aside).
    let rewrites = log.lines().filter(|l| l.ends_with("10-flannel.conflist: appended bpf-ratelimit") && !l.contains("ready:")).count() - 1;
    println!("the main plugin took the entry out {undone} times in {:?}; install put it back {rewrites} times (the reader saw it come back {chained_again} times in {reads} reads)", started.elapsed());
    assert!(rewrites >= 3, "install --wait stopped putting the entry back: {rewrites}");
    // Without the back-off it puts the entry back once a second: 30 times.
    assert!(rewrites <= 10, "install --wait did not back off: {rewrites} rewrites in 30 s");
    assert!(chained_again <= 10, "the reader saw the entry come back {chained_again} times");
    let warning = format!("warning: {}: bpf-ratelimit had to be put back", conflist.display());
    assert!(log.contains(&warning), "no ping-pong warning naming the file: {log}");
    assert!(log.contains("times in a row"), "{log}");
    let counter = metrics
        .lines()
        .find(|l| l.starts_with("bpf_ratelimit_installer_reapplies_total{"))
        .unwrap_or_else(|| panic!("no counter in the metrics file: {metrics}"));
    assert!(counter.contains(&format!("file=\"{}\"", conflist.display())), "{counter}");
    let count: usize = counter.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(count, rewrites, "the counter and the log disagree");
    assert!(metrics.contains("# TYPE bpf_ratelimit_installer_reapplies_total counter"), "{metrics}");
    assert!(ready_text.contains(&format!("re-applied {count} times")), "{ready_text}");
}
