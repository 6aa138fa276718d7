//! Throwaway "pods" for the demo, the integration tests and the benchmark:
//! a network namespace and a cgroup for the pod, a server namespace reached
//! through a delay line, iperf3 on both ends, and a way to call the plugin
//! exactly as a runtime does. Everything is removed on drop.
//!
//! ```text
//!  pod netns            node netns              gw netns           server netns
//!  eth0 ── veth ── pod_host_veth ─ bridge ─ gw veth ── eth0 · dl0 ═══ dl1
//!  POD_IP                (ingress queue,           GW_IP   delay line   SERVER_IP
//!                         egress guard)
//! ```
//!
//! The pod reaches SERVER_IP through the gateway netns, whose delay line
//! (delay_line) holds each packet a one-way delay and counts what a wire
//! would carry; a LAN testbed has a delay of 0. The pod's host-side veth is
//! what a bridge or ptp main plugin leaves on the node.

pub mod delay_line;
pub mod fleet;
pub mod iperf;
pub mod main_cni;
pub mod measure;
pub mod scenario;
pub mod shapers;
pub mod tunnel;
pub mod wire;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub use delay_line::{Carried, DelayLine};

pub const SERVER_IP: &str = "10.251.0.1";
pub const POD_IP: &str = "10.251.0.2";
pub const GW_IP: &str = "10.251.0.254";
pub const SERVER_IP6: &str = "fd00:251::1";
pub const POD_IP6: &str = "fd00:251::2";
pub const GW_IP6: &str = "fd00:251::fe";
const IPERF_PORT: &str = "5201";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command and fails with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

pub fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// The cgroup v2 mount of this host.
pub fn cgroup2_mount() -> Result<PathBuf> {
    crate::node::cgroup::cgroup2_root(None).map_err(|e| anyhow::anyhow!("{e}"))
}

pub struct Testbed {
    pub name: String,
    pub server_ns: String,
    pub pod_ns: String,
    pub gw_ns: String,
    /// In the node netns: the bridge joining pod and gateway, and the host
    /// ends of their veths. The pod's is where ADD queues the pod's ingress
    /// and guards its egress.
    pub bridge: String,
    pub pod_host_veth: String,
    pub gw_host_veth: String,
    /// The pod's cgroup: the plugin attaches here, iperf3 clients run here.
    pub cgroup: PathBuf,
    /// The delay each way between the gateway and the server.
    pub one_way: Duration,
    servers: Vec<Child>,
    delay: Option<DelayLine>,
    pod_counter: Option<wire::WireCounter>,
    main_cni: Option<main_cni::MainCni>,
}

impl Testbed {
    /// A pod and a server on the same LAN (no added delay).
    pub fn create(prefix: &str) -> Result<Self> {
        Self::with_delay(prefix, Duration::ZERO)
    }

    /// A pod and a server `one_way` apart each way: a round trip of twice
    /// that, plus the path's own (~0.1 ms). Creates `<prefix>-srv`,
    /// `<prefix>-gw` and `<prefix>-pod` namespaces, and a cgroup for the pod
    /// under `<cgroup2>/bpf-ratelimit-test/`.
    pub fn with_delay(prefix: &str, one_way: Duration) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        // Host interface names hold at most 15 bytes.
        let tag = format!("{:x}x{n:x}", std::process::id());
        let cgroup = cgroup2_mount()?.join("bpf-ratelimit-test").join(&name);
        let mut bed = Testbed {
            server_ns: format!("{name}-srv"),
            pod_ns: format!("{name}-pod"),
            gw_ns: format!("{name}-gw"),
            bridge: format!("brlb{tag}"),
            pod_host_veth: format!("brlp{tag}"),
            gw_host_veth: format!("brlg{tag}"),
            name,
            cgroup,
            one_way,
            servers: Vec::new(),
            delay: None,
            pod_counter: None,
            main_cni: None,
        };
        bed.setup().with_context(|| format!("cannot set up testbed {}", bed.name))?;
        Ok(bed)
    }

    fn setup(&mut self) -> Result<()> {
        for ns in [&self.server_ns, &self.pod_ns, &self.gw_ns] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        for (ns, host, addr, addr6) in
            [(&self.pod_ns, &self.pod_host_veth, POD_IP, POD_IP6), (&self.gw_ns, &self.gw_host_veth, GW_IP, GW_IP6)]
        {
            ip(&["link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", host])?;
            ip(&["link", "set", host, "master", &self.bridge, "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr6}/64"), "dev", "eth0", "nodad"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        ip(&["-n", &self.pod_ns, "route", "add", &format!("{SERVER_IP}/32"), "via", GW_IP])?;
        ip(&["-n", &self.pod_ns, "-6", "route", "add", &format!("{SERVER_IP6}/128"), "via", GW_IP6])?;
        crate::node::netns::in_netns(&netns_path(&self.gw_ns), || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
            Ok(())
        })
        .context("cannot turn forwarding on in the gateway netns")?;
        self.delay = Some(DelayLine::start(&netns_path(&self.gw_ns), "dl0", &netns_path(&self.server_ns), "dl1", self.one_way)?);
        ip(&["-n", &self.gw_ns, "link", "set", "dl0", "up", "txqueuelen", "10000"])?;
        ip(&["-n", &self.gw_ns, "route", "add", &format!("{SERVER_IP}/32"), "dev", "dl0"])?;
        ip(&["-n", &self.gw_ns, "-6", "route", "add", &format!("{SERVER_IP6}/128"), "dev", "dl0"])?;
        ip(&["-n", &self.server_ns, "link", "set", "dl1", "up", "txqueuelen", "10000"])?;
        ip(&["-n", &self.server_ns, "addr", "add", &format!("{SERVER_IP}/32"), "dev", "dl1"])?;
        ip(&["-n", &self.server_ns, "addr", "add", &format!("{SERVER_IP6}/128"), "dev", "dl1", "nodad"])?;
        ip(&["-n", &self.server_ns, "route", "add", "10.251.0.0/24", "dev", "dl1"])?;
        ip(&["-n", &self.server_ns, "-6", "route", "add", "fd00:251::/64", "dev", "dl1"])?;
        std::fs::create_dir_all(&self.cgroup).with_context(|| format!("cannot create cgroup {}", self.cgroup.display()))?;
        self.pod_counter = Some(wire::WireCounter::attach(&netns_path(&self.pod_ns), "eth0", &self.name)?);
        Ok(())
    }

    /// Emulates an eBPF main CNI on this node (main_cni): from now on the
    /// pod's and the gateway's IP frames go straight to each other's netns,
    /// past the bridge, the host veths' qdiscs and any later filter there.
    /// The gateway is then also a same-node peer pod.
    pub fn emulate_ebpf_main_cni(&mut self, attach: main_cni::Attach) -> Result<()> {
        use main_cni::Route;
        let (pod, gw) = (self.pod_host_veth.as_str(), self.gw_host_veth.as_str());
        let routes: Vec<Route<'_>> = [(POD_IP, pod), (POD_IP6, pod), (SERVER_IP, gw), (SERVER_IP6, gw), (GW_IP, gw), (GW_IP6, gw)]
            .into_iter()
            .map(|(a, ifname)| Route { addr: a.parse().expect("a testbed address"), ifname })
            .collect();
        let cni = main_cni::MainCni::attach(attach, &[pod, gw], &routes, &self.name)?;
        self.main_cni = Some(cni);
        Ok(())
    }

    /// Removes the emulated main CNI's programs.
    pub fn stop_ebpf_main_cni(&mut self) {
        self.main_cni = None;
    }

    /// What the wire delivered to the pod's interface so far.
    pub fn pod_wire(&self) -> Result<wire::WireCount> {
        self.pod_counter.as_ref().context("the testbed has no wire counter")?.read()
    }

    /// What the delay line carried so far: `a_to_b` is what left the pod's
    /// side for the server, per segment, as a wire would carry it.
    pub fn wire(&self) -> Result<delay_line::Counters> {
        self.delay.as_ref().context("the testbed has no delay line")?.counters()
    }

    pub fn pod_netns_path(&self) -> PathBuf {
        netns_path(&self.pod_ns)
    }

    /// Starts an iperf3 server in the server namespace (outside the pod cgroup).
    pub fn start_server(&mut self) -> Result<()> {
        self.start_server_on(IPERF_PORT)
    }

    /// Starts an iperf3 server inside the pod (its cgroup and netns) on
    /// `port`, killed with the testbed: for measuring what the pod sends
    /// where it arrives (`iperf3 -R` from the server's side).
    pub fn start_pod_server(&mut self, port: &str) -> Result<()> {
        let child = self
            .pod_command("iperf3")?
            .args(["-s", "-p", port, "-B", POD_IP])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start iperf3 -s in the pod")?;
        self.servers.push(child);
        wait_for_port(&netns_path(&self.server_ns), POD_IP, port)
    }

    /// Keeps a background process (a server) until the testbed goes.
    pub fn keep(&mut self, child: Child) {
        self.servers.push(child);
    }

    /// A command that will run in the server's network namespace, outside the pod cgroup.
    pub fn server_command(&self, program: &str) -> Result<Command> {
        in_netns(Command::new(program), &netns_path(&self.server_ns), None)
    }

    /// A command that will run in the gateway's network namespace: the
    /// path to the server through the delay line, without the pod's veth,
    /// bridge and shaper.
    pub fn gateway_command(&self, program: &str) -> Result<Command> {
        in_netns(Command::new(program), &netns_path(&self.gw_ns), None)
    }

    /// Bytes the wire carried from the pod's side to the server (frames
    /// with all their headers, per segment).
    pub fn server_rx_bytes(&self) -> Result<u64> {
        Ok(self.wire()?.a_to_b.wire_bytes)
    }

    /// A command that will run inside the pod's cgroup and network namespace.
    pub fn pod_command(&self, program: &str) -> Result<Command> {
        in_netns(Command::new(program), &self.pod_netns_path(), Some(&self.cgroup))
    }

    /// Runs an iperf3 client in the pod against the server and returns its JSON.
    pub fn iperf3(&self, extra: &[&str], seconds: u32) -> Result<Value> {
        let secs = seconds.to_string();
        let mut cmd = self.pod_command("iperf3")?;
        cmd.args(["-c", SERVER_IP, "-p", IPERF_PORT, "-J", "-t", &secs, "--connect-timeout", "3000"]).args(extra);
        let out = run_with_timeout(cmd, Duration::from_secs(u64::from(seconds) + 20))?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("iperf3 printed no JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
        if let Some(err) = v.get("error") {
            bail!("iperf3 failed: {err}");
        }
        Ok(v)
    }

    /// TCP goodput in bits/s, with the first second omitted (slow start and
    /// the initial burst). `reverse` measures ingress (server → pod).
    pub fn tcp_rate(&self, reverse: bool, seconds: u32, streams: u32) -> Result<iperf::Transfer> {
        let p = streams.to_string();
        let mut args = vec!["-O", "1", "-P", &p];
        if reverse {
            args.push("-R");
        }
        iperf::Transfer::from_json(&self.iperf3(&args, seconds)?)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        drop(self.main_cni.take());
        drop(self.delay.take());
        drop(self.pod_counter.take());
        // Deleting a host end removes its veth pair now; a netns's own
        // devices go later, from a kernel work item.
        let _ = ip(&["link", "del", &self.pod_host_veth]);
        let _ = ip(&["link", "del", &self.gw_host_veth]);
        for ns in [&self.pod_ns, &self.gw_ns, &self.server_ns] {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
        remove_cgroup(&self.cgroup);
        if let Some(parent) = self.cgroup.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Removes a cgroup once the processes in it have exited.
pub fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

/// Makes `cmd` join `netns` (and first the cgroup, if given) before exec.
/// The cgroup is joined by writing "0" to cgroup.procs, which moves the
/// writer: the process is in the pod cgroup before it opens any socket.
/// (`ip netns exec` would remount /sys and hide the cgroup mount.)
pub fn in_netns(mut cmd: Command, netns: &Path, cgroup: Option<&Path>) -> Result<Command> {
    let ns: OwnedFd = File::open(netns).with_context(|| format!("cannot open netns {}", netns.display()))?.into();
    let procs: Option<OwnedFd> = cgroup
        .map(|c| {
            OpenOptions::new()
                .write(true)
                .open(c.join("cgroup.procs"))
                .with_context(|| format!("cannot open {}/cgroup.procs", c.display()))
                .map(OwnedFd::from)
        })
        .transpose()?;
    // SAFETY: the closure only makes async-signal-safe syscalls on fds that
    // stay open until exec (they are moved into the closure).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(p) = &procs {
                if libc::write(p.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Waits until a server (iperf3, podload) listens on `ip`:`port` in `netns`.
/// Up to 20 s: under TCG (the 6.1 VM) python3 alone takes seconds to start.
pub(crate) fn wait_for_port(netns: &Path, ip: &str, port: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = in_netns(Command::new("bash"), netns, None)?
            .args(["-c", &format!("exec 3<>/dev/tcp/{ip}/{port}")])
            .stderr(Stdio::null())
            .status()?;
        if probe.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no server listens on {ip}:{port} 20 s after it was started");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command, killing it if it outlives `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!("{cmd:?} timed out after {timeout:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One plugin invocation, as a runtime makes it.
pub struct Invocation<'a> {
    pub plugin: &'a Path,
    pub command: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub netns: &'a Path,
    pub cni_args: &'a str,
    pub config: &'a Value,
}

#[derive(Debug)]
pub struct PluginOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl PluginOutput {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("plugin stdout is not JSON: {:?}", self.stdout))
    }
}

impl Invocation<'_> {
    pub fn run(&self) -> Result<PluginOutput> {
        let mut child = Command::new(self.plugin)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_NETNS", self.netns)
            .env("CNI_ARGS", self.cni_args)
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run plugin {}", self.plugin.display()))?;
        let started = Instant::now();
        child.stdin.take().expect("stdin").write_all(self.config.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        Ok(PluginOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        })
    }
}

/// A prevResult like the bridge plugin's, for a pod at POD_IP.
impl Testbed {
    /// The prevResult a bridge main plugin would give for this pod: the
    /// bridge, the host end of the pod's veth, and eth0 in the sandbox.
    pub fn prev_result(&self, cni_version: &str) -> Value {
        serde_json::json!({
            "cniVersion": cni_version,
            "interfaces": [
                {"name": self.bridge, "mac": "aa:bb:cc:dd:ee:01"},
                {"name": self.pod_host_veth, "mac": "aa:bb:cc:dd:ee:02"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": self.pod_netns_path()}
            ],
            "ips": [{"address": format!("{POD_IP}/24"), "gateway": SERVER_IP, "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        })
    }
}

/// A background process (a server, a load), killed when dropped, so that a
/// failed test or measurement leaves none behind.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
