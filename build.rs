//! Compiles the eBPF C sources in ebpf/ with clang; the objects are embedded
//! in the binary with include_bytes_aligned!.
use std::{env, path::PathBuf, process::Command};

const OBJECTS: &[&str] = &["shaper", "harness"];

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // Debian keeps asm/ headers under the multiarch directory, e.g.
    // /usr/include/x86_64-linux-gnu or /usr/include/aarch64-linux-gnu.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    println!("cargo:rerun-if-changed=ebpf");
    println!("cargo:rerun-if-env-changed=CLANG");
    // A build with its own datapath version (datapath::datapath_version), as
    // a different release would have: the upgrade test builds one.
    println!("cargo:rerun-if-env-changed=BRL_DATAPATH_TAG");
    println!("cargo:rustc-env=BRL_DATAPATH_TAG={}", env::var("BRL_DATAPATH_TAG").unwrap_or_default());
    // Parts of the datapath turned into pass-throughs, to measure what each
    // costs (bench/knockout.sh; ebpf/shaper.bpf.c, "Knock-outs"). Such a
    // build does not hold the limits; unset, the object is the default one.
    println!("cargo:rerun-if-env-changed=BRL_BPF_KNOCKOUT");
    let knockouts = knockout_defines(&env::var("BRL_BPF_KNOCKOUT").unwrap_or_default());
    if !knockouts.is_empty() {
        println!("cargo:warning=BRL_BPF_KNOCKOUT: {} (a measurement build: it does not hold the limits)", knockouts.join(" "));
    }
    println!("cargo:rustc-env=BRL_BPF_KNOCKOUT={}", knockouts.join(" "));
    for name in OBJECTS {
        let src = format!("ebpf/{name}.bpf.c");
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            // -mcpu=v3: BPF atomics with fetch (compare-and-swap), kernel >= 5.12.
            .args(["-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror"])
            .args(&knockouts)
            .args([multiarch.as_str(), "-Iebpf", "-c", &src, "-o"])
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run {clang} to build {src}: {e}. Install clang and libbpf-dev (sudo ./install.sh does).")
            });
        assert!(status.success(), "{clang} failed to compile {src}");
    }
    // The datapath's version, hashed here rather than in every ADD (a
    // 115 KB FNV-1a took 0.1 ms a call, twice per ADD).
    let shaper = std::fs::read(out.join("shaper.bpf.o")).expect("the shaper object just built");
    let tag = env::var("BRL_DATAPATH_TAG").unwrap_or_default();
    println!("cargo:rustc-env=BRL_DATAPATH_VERSION={:016x}", fnv1a(shaper.iter().chain(tag.as_bytes())));

    // The delay line the testbed puts between pods and their servers
    // (src/testbed/delay_line.rs), for tests and the benchmark.
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let delayline = out.join("delayline");
    println!("cargo:rerun-if-changed=tests/tools/delayline.c");
    println!("cargo:rerun-if-env-changed=CC");
    let status = Command::new(&cc)
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "tests/tools/delayline.c", "-o"])
        .arg(&delayline)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc} to build tests/tools/delayline.c: {e}. Install gcc (sudo ./install.sh does)."));
    assert!(status.success(), "{cc} failed to compile tests/tools/delayline.c");
    println!("cargo:rustc-env=BRL_DELAYLINE={}", delayline.display());

    // The senders the wire tests make hostile traffic with (tests/wire.rs):
    // AF_XDP, AF_PACKET (with compat setsockopt), raw IP floods, UDP GSO.
    let tools = out.join("tools");
    std::fs::create_dir_all(&tools).expect("OUT_DIR/tools");
    for tool in ["xdp_tx", "raw_tx", "pktflood", "udp_gso"] {
        let src = format!("tests/tools/{tool}.c");
        println!("cargo:rerun-if-changed={src}");
        let status = Command::new(&cc)
            .args(["-O2", "-Wall", "-Wextra", "-Itests/tools", &src, "-o"])
            .arg(tools.join(tool))
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cc} to build {src}: {e}"));
        assert!(status.success(), "{cc} failed to compile {src}");
    }
    println!("cargo:rerun-if-changed=tests/tools/frame.h");
    println!("cargo:rustc-env=BRL_TEST_TOOLS={}", tools.display());
}

/// The clang flags for BRL_BPF_KNOCKOUT's comma-separated parts; an
/// unknown part stops the build.
fn knockout_defines(list: &str) -> Vec<String> {
    const PARTS: [&str; 6] = ["cgroup_egress", "cgroup_ingress", "sock_ops", "window_clamp", "guard", "door"];
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            assert!(PARTS.contains(&p), "BRL_BPF_KNOCKOUT: unknown part {p:?} (known: {})", PARTS.join(", "));
            format!("-DKNOCKOUT_{}", p.to_uppercase())
        })
        .collect()
}

/// FNV-1a, 64 bits. The datapath version of the shaper object and
/// BRL_DATAPATH_TAG: the same bytes give the same version in every release,
/// so an upgraded plugin recognises the pods an older one attached.
fn fnv1a<'a>(bytes: impl Iterator<Item = &'a u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
