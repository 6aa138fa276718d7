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

/// `metrics`: printed once (exit 1, with the errors on stderr, when a pin
/// root or a pod could not be read), or served with `--listen`.
pub fn metrics(args: &[String]) -> Result<ExitCode> {
    let (values, _, positional) = parse(args, &["--listen", "--pin-root"], &[])?;
    if let Some(p) = positional.first() {
        bail!("metrics takes no argument {p:?}");
    }
    let root = pin_root(&values);
    if let Some((_, addr)) = values.iter().find(|(k, _)| *k == "--listen") {
        admin::serve_metrics(root.as_deref(), addr)?;
        return Ok(ExitCode::SUCCESS);
    }
    let scrape = admin::metrics(root.as_deref())?;
    print!("{}", scrape.text);
    for e in &scrape.errors {
        eprintln!("bpf-ratelimit metrics: {e}");
    }
    Ok(if scrape.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
