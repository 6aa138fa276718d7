//! `bpf-ratelimit demo`: shapes a throwaway pod through the real CNI code
//! path (this binary, run as a runtime would run it) and prints configured
//! versus measured TCP rates in both directions.

use anyhow::{bail, Context, Result};

use crate::quantity;
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
        Ok([("egress (pod → server)", bed.tcp_rate(false, opts.seconds + 1, 1)?), ("ingress (server → pod)", bed.tcp_rate(true, opts.seconds + 1, 1)?)])
    })();
    let del = invoke("DEL")?;
    if del.code != 0 {
        bail!("DEL failed: {}{}", del.stdout, del.stderr);
    }
    let measured = measured?;
    verify_gone(&bed)?;
    println!("{:<24} {:>12} {:>12} {:>7} {:>8}", "direction", "configured", "measured", "ratio", "retrans");
    for (name, r) in measured {
        println!(
            "{:<24} {:>12} {:>12} {:>7.3} {:>8}",
            name,
            format!("{}bit/s", quantity::format_rate(rate)),
            format!("{}bit/s", quantity::format_rate(r.bits_per_second as u64)),
            r.bits_per_second / rate as f64,
            r.retransmits
        );
    }
    println!("DEL took {:.1} ms; the pod's links and pins are gone.", del.elapsed.as_secs_f64() * 1e3);
    Ok(())
}

/// Checks what the closing line claims: no pins and no program left.
fn verify_gone(bed: &Testbed) -> Result<()> {
    use std::os::fd::AsFd;
    let cgroup = std::fs::File::open(&bed.cgroup)?;
    use crate::bpf_sys::{ATTACH_CGROUP_INET_EGRESS, ATTACH_CGROUP_INET_INGRESS, ATTACH_CGROUP_SOCK_OPS};
    for attach_type in [ATTACH_CGROUP_INET_EGRESS, ATTACH_CGROUP_INET_INGRESS, ATTACH_CGROUP_SOCK_OPS] {
        let left = crate::bpf_sys::attached_prog_ids(cgroup.as_fd(), attach_type)?;
        if !left.is_empty() {
            let names: Vec<String> = left.iter().map(|id| crate::bpf_sys::prog_name(*id).unwrap_or_else(|_| format!("id {id}"))).collect();
            bail!("after DEL the pod cgroup still has programs attached (attach type {attach_type}): {names:?}");
        }
    }
    let pins = std::path::Path::new(crate::netconf::DEFAULT_PIN_ROOT).join("pods/demo").join(&bed.name);
    if pins.exists() {
        bail!("after DEL {} still exists", pins.display());
    }
    Ok(())
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(program)).find(|p| p.is_file())
}
