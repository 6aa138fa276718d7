//! `bpf-ratelimit demo`: shapes a throwaway pod through the real CNI code
//! path (this binary, run as a runtime would run it) and prints configured
//! versus measured rates in both directions: on the wire (what the limit
//! counts) and as TCP goodput.

use anyhow::{bail, Context, Result};

use crate::policy::quantity;
use crate::testbed::scenario::{Bulk, Way};
use crate::testbed::{Invocation, Testbed};

pub struct DemoOptions {
    pub rate: String,
    pub seconds: u32,
}

pub fn run(opts: &DemoOptions) -> Result<()> {
    let rate = quantity::parse(&opts.rate).map_err(|e| anyhow::anyhow!("--rate: {e}"))?;
    if which("iperf3").is_none() {
        bail!("the demo needs iperf3 (apt-get install iperf3; sudo ./install.sh installs it)");
    }
    let plugin = std::env::current_exe().context("cannot find this binary")?;
    eprintln!("creating a throwaway pod (netns + veth + cgroup)…");
    let mut bed = Testbed::create("brl-demo")?;
    bed.start_server()?;
    let mount = crate::testbed::cgroup2_mount()?;
    let cgroup_path = format!("/{}", bed.cgroup.strip_prefix(&mount)?.display());
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "demo",
        "type": "bpf-ratelimit",
        "runtimeConfig": {
            "cgroupPath": cgroup_path,
            "io.kubernetes.cri.pod-annotations": {
                "kubernetes.io/ingress-bandwidth": opts.rate,
                "kubernetes.io/egress-bandwidth": opts.rate,
            }
        },
        "prevResult": bed.prev_result("1.0.0"),
    });
    let netns = bed.pod_netns_path();
    let invoke = |command: &str| {
        Invocation {
            plugin: &plugin,
            command,
            container_id: &bed.name,
            ifname: "eth0",
            netns: &netns,
            cni_args: "",
            config: &config,
        }
        .run()
    };
    let add = invoke("ADD")?;
    if add.code != 0 {
        bail!("ADD failed: {}{}", add.stdout, add.stderr);
    }
    eprintln!("ADD took {:.1} ms; measuring {} s per direction…", add.elapsed.as_secs_f64() * 1e3, opts.seconds);
    let measured = (|| -> Result<_> {
        let mut out = Vec::new();
        for (name, way) in [("egress (pod → server)", Way::Upload), ("ingress (server → pod)", Way::Download)] {
            let bulk = Bulk::tcp(way, "cubic", 1, 1, opts.seconds);
            out.push((name, bed.bulk(&bulk)?));
        }
        Ok(out)
    })();
    let del = invoke("DEL")?;
    if del.code != 0 {
        bail!("DEL failed: {}{}", del.stdout, del.stderr);
    }
    let measured = measured?;
    verify_gone(&bed)?;
    println!("{:<24} {:>12} {:>14} {:>14} {:>7} {:>8}", "direction", "configured", "on the wire", "TCP goodput", "ratio", "retrans");
    let bits = |b: f64| format!("{}bit/s", quantity::format_rate(b as u64));
    for (name, r) in measured {
        println!(
            "{:<24} {:>12} {:>14} {:>14} {:>7.3} {:>8}",
            name,
            bits(rate as f64),
            bits(r.wire_bps),
            bits(r.transfer.goodput_bps),
            r.wire_bps / rate as f64,
            r.transfer.retransmits
        );
    }
    println!("A limit counts every frame on the wire, headers included, as tc does; bulk TCP's goodput is then ~0.956 of it.");
    println!("DEL took {:.1} ms; the pod's links and pins are gone.", del.elapsed.as_secs_f64() * 1e3);
    Ok(())
}

/// Checks what the closing line claims: no pins and no program left.
fn verify_gone(bed: &Testbed) -> Result<()> {
    use std::os::fd::AsFd;
    let cgroup = std::fs::File::open(&bed.cgroup)?;
    use crate::node::bpf_sys::{ATTACH_CGROUP_INET_EGRESS, ATTACH_CGROUP_INET_INGRESS, ATTACH_CGROUP_SOCK_OPS};
    for attach_type in [ATTACH_CGROUP_INET_EGRESS, ATTACH_CGROUP_INET_INGRESS, ATTACH_CGROUP_SOCK_OPS] {
        let left = crate::node::bpf_sys::attached_prog_ids(cgroup.as_fd(), attach_type)?;
        if !left.is_empty() {
            let names: Vec<String> = left.iter().map(|id| crate::node::bpf_sys::prog_name(*id).unwrap_or_else(|_| format!("id {id}"))).collect();
            bail!("after DEL the pod cgroup still has programs attached (attach type {attach_type}): {names:?}");
        }
    }
    let pins = std::path::Path::new(crate::policy::netconf::DEFAULT_PIN_ROOT).join("pods/demo").join(&bed.name);
    if pins.exists() {
        bail!("after DEL {} still exists", pins.display());
    }
    Ok(())
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(program)).find(|p| p.is_file())
}
