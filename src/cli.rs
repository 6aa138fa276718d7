//! Argument parsing for the commands people run: `list`, `set`, `metrics`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bpf_ratelimit::admin::{self, Change};
use bpf_ratelimit::netconf::DEFAULT_PIN_ROOT;

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

fn pin_root(values: &[(&str, &str)]) -> PathBuf {
    PathBuf::from(values.iter().find(|(k, _)| *k == "--pin-root").map(|(_, v)| *v).unwrap_or(DEFAULT_PIN_ROOT))
}

fn quantity(flag: &str, v: &str) -> Result<u64> {
    bpf_ratelimit::quantity::parse(v).map_err(|e| anyhow!("{flag} {v:?}: {e} (a quantity such as 10M, 500k, 1G)"))
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
    let rows = admin::list_rows(&pin_root(&values), interval)?;
    if on.contains(&"--json") {
        Ok(serde_json::to_string_pretty(&rows)? + "\n")
    } else {
        Ok(admin::list_table(&rows))
    }
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
    if change.ingress.is_none() && change.egress.is_none() && change.ingress_burst.is_none() && change.egress_burst.is_none() {
        bail!("nothing to set: give --ingress, --egress, --ingress-burst or --egress-burst");
    }
    Ok(admin::set(&pin_root(&values), target, change)?.join("\n") + "\n")
}

pub fn metrics(args: &[String]) -> Result<String> {
    let (values, _, positional) = parse(args, &["--listen", "--pin-root"], &[])?;
    if let Some(p) = positional.first() {
        bail!("metrics takes no argument {p:?}");
    }
    let root = pin_root(&values);
    match values.iter().find(|(k, _)| *k == "--listen") {
        Some((_, addr)) => {
            admin::serve_metrics(&root, addr)?;
            Ok(String::new())
        }
        None => admin::metrics(&root),
    }
}
