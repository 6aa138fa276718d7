//! Argument parsing for the commands people run: `list`, `set`, `metrics`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use crate::ops::admin::{self, Change};

/// Splits `--flag value` pairs and positional arguments.
fn parse<'a>(args: &'a [String], flags: &[&str], switches: &[&str]) -> Result<(Vec<(&'a str, &'a str)>, Vec<&'a str>, Vec<&'a str>)> {
    let (mut values, mut on, mut positional) = (Vec::new(), Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if flags.contains(&a.as_str()) {
            let v = it.next().ok_or_else(|| anyhow!("{a} needs a value"))?;
            values.push((a.as_str(), v.as_str()));
        } else if switches.contains(&a.as_str()) {
            on.push(a.as_str());
        } else if a.starts_with("--") {
            bail!("unknown option {a}; see bpf-ratelimit help");
        } else {
            positional.push(a.as_str());
        }
    }
    Ok((values, on, positional))
}

/// `--pin-root DIR`: that pin root only; without it, every pin root this node used.
fn pin_root(values: &[(&str, &str)]) -> Option<PathBuf> {
    values.iter().find(|(k, _)| *k == "--pin-root").map(|(_, v)| PathBuf::from(v))
}

fn quantity(flag: &str, v: &str) -> Result<u64> {
    crate::policy::quantity::parse(v).map_err(|e| anyhow!("{flag} {v:?}: {e} (a quantity such as 10M, 500k, 1G)"))
}

pub fn list(args: &[String]) -> Result<String> {
    let (values, on, positional) = parse(args, &["--interval", "--pin-root"], &["--json"])?;
    if let Some(p) = positional.first() {
        bail!("list takes no argument {p:?}");
    }
    let interval = match values.iter().find(|(k, _)| *k == "--interval") {
        None => Duration::from_secs(1),
        Some((_, v)) => {
            let secs: f64 = v.trim_end_matches('s').parse().map_err(|_| anyhow!("--interval takes seconds, such as 1s or 0.5"))?;
            if !(0.05..=60.0).contains(&secs) {
                bail!("--interval must be between 0.05 and 60 seconds");
            }
            Duration::from_secs_f64(secs)
        }
    };
    let (rows, errors) = admin::list_rows(pin_root(&values).as_deref(), interval);
    // What could not be read is said, and the rest shown.
    for e in &errors {
        eprintln!("bpf-ratelimit list: {e}");
    }
    for r in rows.iter().filter(|r| r.host_side_skipped) {
        log::warn!("{}/{} ({}): {}", r.namespace, r.pod, r.ifname, admin::HOST_SIDE_SKIPPED_CAUSE);
    }
    let out = if on.contains(&"--json") { serde_json::to_string_pretty(&rows)? + "\n" } else { admin::list_table(&rows) };
    if !errors.is_empty() {
        // What could be read is still shown; the exit status says it is
        // not all.
        print!("{out}");
        bail!("{} pin root(s) or pod(s) could not be read (above)", errors.len());
    }
    Ok(out)
}

pub fn cleanup(args: &[String]) -> Result<String> {
    let (values, _, positional) = parse(args, &["--pin-root"], &[])?;
    if let Some(p) = positional.first() {
        bail!("cleanup takes no argument {p:?}");
    }
    Ok(admin::cleanup(pin_root(&values).as_deref())?.into_iter().map(|l| l + "\n").collect())
}

pub fn set(args: &[String]) -> Result<String> {
    let (values, _, positional) = parse(args, &["--ingress", "--egress", "--ingress-burst", "--egress-burst", "--pin-root"], &[])?;
    let [target] = positional.as_slice() else { bail!("set takes one pod: namespace/name or its UID") };
    let mut change = Change::default();
    for (flag, v) in &values {
        let slot = match *flag {
            "--ingress" => &mut change.ingress,
            "--egress" => &mut change.egress,
            "--ingress-burst" => &mut change.ingress_burst,
            "--egress-burst" => &mut change.egress_burst,
            _ => continue,
        };
        *slot = Some(quantity(flag, v)?);
    }
    Ok(admin::set(pin_root(&values).as_deref(), target, change)?.join("\n") + "\n")
}

/// `bpf-ratelimit metrics --help`.
pub const METRICS_USAGE: &str = "\
bpf-ratelimit metrics [--pin-root DIR]
    print the Prometheus text exposition of every shaped pod once (exit 1 if a
    pin root could not be read)

bpf-ratelimit metrics --listen ADDR [--pin-root DIR]
                      [--tls-cert FILE --tls-key FILE [--client-ca FILE]]
                      [--bearer-token-file FILE]
    serve it on http://ADDR/metrics (https:// with --tls-cert); port 0 picks
    a free port. Scrapes read the pins without the lock ADD and DEL take.
  --tls-cert FILE           the server's certificate chain (PEM); serve HTTPS
  --tls-key FILE            its private key (PEM: PKCS#8, PKCS#1 or SEC1)
  --client-ca FILE          require a client certificate signed by one of
                            these CAs (PEM); needs --tls-cert and --tls-key
  --bearer-token-file FILE  require 'Authorization: Bearer <token>', the
                            file's content with surrounding whitespace
                            trimmed; re-read when the file changes. Missing
                            header: 401, wrong token: 403. Over plain HTTP
                            only on 127.0.0.1 (the token is sent in clear)
Every file is read at start: a missing or invalid one is an error (exit 1).
Without --client-ca or --bearer-token-file on an address other than
loopback, anyone who reaches it reads the node's pods (a warning says so).
See docs/metrics.md.";

/// `metrics`: printed once (exit 1, with the errors on stderr, when a pin
/// root could not be read), or served with `--listen`.
pub fn metrics(args: &[String]) -> Result<ExitCode> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{METRICS_USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let flag = ["--listen", "--pin-root", "--tls-cert", "--tls-key", "--client-ca", "--bearer-token-file"];
    let (values, _, positional) = parse(args, &flag, &[])?;
    if let Some(p) = positional.first() {
        bail!("metrics takes no argument {p:?}");
    }
    let value = |name: &str| values.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let file = |name: &str| -> Result<Option<PathBuf>> {
        match value(name) {
            Some("") => bail!("{name} needs a file"),
            v => Ok(v.map(PathBuf::from)),
        }
    };
    let access = crate::ops::metrics_access::AccessFiles {
        tls_cert: file("--tls-cert")?,
        tls_key: file("--tls-key")?,
        client_ca: file("--client-ca")?,
        bearer_token_file: file("--bearer-token-file")?,
    };
    let root = pin_root(&values);
    if let Some(addr) = value("--listen") {
        // Every file is read before the port is bound: a bad Secret stops
        // the container with the reason.
        let access = access.load()?;
        admin::serve_metrics(root.as_deref(), addr, access)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(f) = flag[2..].iter().find(|f| value(f).is_some()) {
        bail!("{f} is for the server: give --listen ADDR too");
    }
    let scrape = admin::metrics(root.as_deref())?;
    print!("{}", scrape.text);
    for e in &scrape.errors {
        eprintln!("bpf-ratelimit metrics: {e}");
    }
    Ok(if scrape.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
