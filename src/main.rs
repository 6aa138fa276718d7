//! The `bpf-ratelimit` binary: a CNI plugin when CNI_COMMAND is set, else a
//! small CLI (`demo`, `stats`, `version`).

use std::io::{Read, Write};
use std::process::ExitCode;

use bpf_ratelimit::cni::{self, Command, CniError, Env};
use bpf_ratelimit::plugin::commands::{self, Request};
use bpf_ratelimit::policy::netconf::NetConf;
use bpf_ratelimit::ops::cli;



fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return run_cni();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("version") | Some("--version") | Some("-V") => {
            println!("bpf-ratelimit {} (datapath {})", env!("CARGO_PKG_VERSION"), bpf_ratelimit::datapath::attach::datapath_version());
            ExitCode::SUCCESS
        }
        Some("demo") => match parse_demo(&args[1..]).and_then(|o| bpf_ratelimit::ops::demo::run(&o)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bpf-ratelimit demo: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some("stats") => match bpf_ratelimit::plugin::commands::stats(args.get(1).map(std::path::Path::new)) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bpf-ratelimit stats: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some("list") => {
            bpf_ratelimit::logging::init(Some("warn"), None);
            report(cli::list(&args[1..]))
        }
        Some("set") => {
            bpf_ratelimit::logging::init(Some("warn"), None);
            report(cli::set(&args[1..]))
        }
        Some("metrics") => match {
            bpf_ratelimit::logging::init(Some("warn"), None);
            cli::metrics(&args[1..])
        } {
            Ok(code) => code,
            Err(e) => {
                eprintln!("bpf-ratelimit: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some("cleanup") => {
            bpf_ratelimit::logging::init(Some("warn"), None);
            report(cli::cleanup(&args[1..]))
        }
        Some(cmd @ ("install" | "uninstall")) => {
            use bpf_ratelimit::ops::install;
            let apply = if cmd == "install" { install::install } else { install::uninstall };
            match install::Options::parse(&args[1..], cmd == "install").and_then(|o| install::run(&o, apply)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bpf-ratelimit {cmd}: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("ready") => match args.get(1).filter(|_| args.len() == 2) {
            None => {
                eprintln!("bpf-ratelimit ready: give the --ready-file of install --wait\n\n{USAGE}");
                ExitCode::from(2)
            }
            Some(file) => match bpf_ratelimit::ops::install::check_ready(std::path::Path::new(file)) {
                Ok(what) => {
                    print!("{what}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    // A readiness probe's output is what kubelet records.
                    println!("{e:#}");
                    ExitCode::FAILURE
                }
            },
        },
        Some("help") | Some("--help") | Some("-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str = "\
bpf-ratelimit: a chained CNI plugin that limits pod bandwidth with eBPF.

The container runtime runs it with CNI_COMMAND set (ADD, DEL, CHECK, GC,
STATUS, VERSION) and the network configuration on stdin.

Commands for people:
  bpf-ratelimit demo [--rate 10M] [--seconds 5]
                                   shape a throwaway netns pod through ADD/DEL and
                                   print configured versus measured TCP rates (root, iperf3)
  bpf-ratelimit stats [PIN_ROOT]   print every shaped pod's limits and counters as JSON
  bpf-ratelimit list [--interval 1s] [--json] [--pin-root DIR]
                                   one row per shaped pod: limits, current rates, bytes
                                   passed and dropped/marked per direction (every pin root
                                   this node used, unless --pin-root names one)
  bpf-ratelimit set <namespace/name | pod UID> [--ingress R] [--egress R]
                    [--ingress-burst B] [--egress-burst B] [--pin-root DIR]
                                   change a running pod's limits live (the operator's
                                   ceilings recorded at ADD still apply)
  bpf-ratelimit metrics [--listen ADDR] [--pin-root DIR]
                        [--tls-cert FILE --tls-key FILE [--client-ca FILE]]
                        [--bearer-token-file FILE]
                                   Prometheus text exposition, once (exit 1 if a pin root
                                   could not be read) or served on http(s)://ADDR/metrics,
                                   with TLS, client certificates and/or a bearer token
                                   (bpf-ratelimit metrics --help)
  bpf-ratelimit version            print the version
  bpf-ratelimit install [--bin-dir /opt/cni/bin] [--conf-dir /etc/cni/net.d]
                        [--conflist NAME] [--replace-bandwidth] [--binary-only]
                        [--config FILE] [--wait [--ready-file FILE]]
                                   copy this binary into the CNI bin dir and append the plugin
                                   to the conflist the runtime loads first (or NAME); FILE is a
                                   JSON object of the plugin's keys (the operator's policy),
                                   checked now and kept in the entry; --wait stays, waits for
                                   a conflist and re-applies whenever it changes
  bpf-ratelimit uninstall [the same options] [--remove-datapath]
                                   take the plugin out of the conflist(s), then the binary;
                                   with --remove-datapath, then run cleanup
  bpf-ratelimit cleanup [--pin-root DIR]
                                   take every shaped pod's limits off, live: cgroup links,
                                   tc qdiscs and filters (host side and pod side), pins,
                                   the datapath and the pin root; running pods go unlimited
  bpf-ratelimit ready FILE         exit 0 if install --wait --ready-file FILE keeps the node
                                   chained as configured (a readiness probe)";

/// Prints a command's output, or its error on stderr with exit code 1.
fn report(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bpf-ratelimit: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_demo(args: &[String]) -> anyhow::Result<bpf_ratelimit::ops::demo::DemoOptions> {
    let mut opts = bpf_ratelimit::ops::demo::DemoOptions { rate: "10M".into(), seconds: 5 };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--rate" => opts.rate = value()?.clone(),
            "--seconds" => {
                opts.seconds = value()?.parse().map_err(|_| anyhow::anyhow!("--seconds takes a whole number"))?
            }
            other => anyhow::bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    Ok(opts)
}

fn run_cni() -> ExitCode {
    let mut stdin = Vec::new();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let result = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::new(cni::code::DECODE, "cannot read stdin", e.to_string()))
        .and_then(|_| Command::parse(&command));
    let command = match result {
        Ok(c) => c,
        Err(e) => return fail(&e, &version_hint(&stdin)),
    };
    if command == Command::Version {
        let requested: Option<String> = serde_json::from_slice::<serde_json::Value>(&stdin)
            .ok()
            .and_then(|v| v.get("cniVersion").and_then(|v| v.as_str()).map(String::from));
        return reply(&cni::version_reply(requested.as_deref()));
    }
    let parsed = if command == Command::Del { NetConf::parse_for_del(&stdin) } else { NetConf::parse(&stdin) };
    let conf = match parsed {
        Ok(c) => c,
        Err(e) => return fail(&e, &version_hint(&stdin)),
    };
    bpf_ratelimit::logging::init(conf.log_level.as_deref(), conf.log_file.as_deref());
    let env = match Env::read(command, |k| std::env::var(k).ok()) {
        Ok(env) => env,
        Err(e) => return fail(&e, &conf.cni_version),
    };
    let req = Request { command, env, conf };
    let started = std::time::Instant::now();
    let outcome = commands::run(&req);
    log::debug!("{command:?} took {:?}", started.elapsed());
    match outcome {
        Ok(out) => reply(&out),
        Err(e) => fail(&e, &req.conf.cni_version),
    }
}

/// The cniVersion for an error reply when the config could not be parsed.
fn version_hint(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|v| v.as_str()).map(String::from))
        .filter(|v| cni::is_supported_version(v))
        .unwrap_or_else(|| cni::DEFAULT_VERSION.into())
}

fn reply(out: &str) -> ExitCode {
    if !out.is_empty() {
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "{out}");
        let _ = stdout.flush();
    }
    ExitCode::SUCCESS
}

fn fail(e: &CniError, cni_version: &str) -> ExitCode {
    log::error!("{e}");
    if !log::log_enabled!(log::Level::Error) {
        eprintln!("bpf-ratelimit: {e}");
    }
    println!("{}", e.to_json(cni_version));
    ExitCode::from(u8::try_from(e.code).unwrap_or(u8::MAX))
}
