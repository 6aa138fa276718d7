//! `bpf-ratelimit install` and `uninstall`: put the binary into the CNI bin
//! dir and chain the plugin into the config the runtime uses, and take
//! both out again. Another tool's file is never renamed: a conflist gets
//! our entry in its plugin list and nothing else; a single-plugin `.conf`
//! is left as it is and chained by a conflist of our own that sorts first
//! (OWN_CONFLIST), as Multus and Cilium's chaining write their own file.
//! Every file is written beside its target (a symlinked conflist's target:
//! the link stays), fsynced and renamed, so a runtime reading the conf dir
//! at any moment sees either the old or the new file, never half of one.
//! Every check runs before the first write, so a refusal changes nothing
//! (one exception: a stale OWN_CONFLIST, see `remove_stale_own`).
//!
//! `--config FILE` carries the operator's policy: a JSON object of this
//! plugin's keys, validated when install runs and merged into the entry, which
//! is then kept exactly so. `--wait` stays running (the DaemonSet's
//! container): it waits for the main plugin's conflist, re-applies whenever
//! the conf dir or the config changes and every 10 s, and keeps a ready
//! file for the readiness probe while the node is chained as configured.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};

pub const PLUGIN_TYPE: &str = "bpf-ratelimit";
/// The plugin types that only modify what a main plugin set up; none of them
/// can be the first plugin of a chain, and bpf-ratelimit must follow a plugin
/// that is not one of them.
const CHAINED_ONLY: &[&str] = &["portmap", "bandwidth", "tuning", "firewall", "sbr", "vrf", PLUGIN_TYPE];
/// Top-level conflist key holding the reference `bandwidth` entry that
/// `--replace-bandwidth` took out, so that `uninstall` can put it back.
/// libcni and CRI-O ignore unknown top-level keys and pass none to plugins.
pub const REPLACED_KEY: &str = "bpf-ratelimit.io/replaced-bandwidth";
/// Suffix under which installs before 0.x (issue 22) kept a single-plugin
/// config they had converted to a conflist of the same name; uninstall
/// still undoes such a conversion.
pub const ORIGINAL_SUFFIX: &str = ".bpf-ratelimit-orig";
/// The conflist install writes when the runtime's config is a single-plugin
/// `.conf` (or `.json`): the config as its first plugin, bpf-ratelimit
/// after it. "00-b" sorts before the usual "05-", "10-" and Multus's
/// "00-multus.conf", so libcni, containerd (first file by name) and CRI-O
/// load it instead of the `.conf`, which stays as its owner wrote it.
pub const OWN_CONFLIST: &str = "00-bpf-ratelimit.conflist";
/// Top-level key of OWN_CONFLIST naming the config it embeds: it marks the
/// file as ours, and tells when it is stale. libcni ignores unknown keys.
pub const WRAPS_KEY: &str = "bpf-ratelimit.io/wraps";
/// The extensions libcni's ConfFiles loads, in a directory sorted by name.
const CONF_EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

#[derive(Debug, Clone)]
pub struct Options {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// A file name in conf_dir; default: the one the runtime loads first.
    pub conflist: Option<String>,
    /// Take out a reference `bandwidth` plugin instead of refusing.
    pub replace_bandwidth: bool,
    /// Only place the binary (install.sh on a node with no network plugin yet).
    pub binary_only: bool,
    /// Stay running (as the DaemonSet's container) until SIGTERM or SIGINT,
    /// re-applying whenever the conf dir or the config changes and every
    /// 10 s, in case another installer rewrote the conflist.
    pub wait: bool,
    /// `--config FILE`: the operator's keys for the entry (install only).
    pub config: Option<PathBuf>,
    /// `--ready-file FILE`: kept while the last apply succeeded (with `--wait`).
    pub ready_file: Option<PathBuf>,
    /// `--remove-datapath` (uninstall only): then take every pod's limits
    /// off too (admin::cleanup).
    pub remove_datapath: bool,
}

impl Options {
    pub fn parse(args: &[String], install: bool) -> Result<Options> {
        let mut o = Options {
            bin_dir: "/opt/cni/bin".into(),
            conf_dir: "/etc/cni/net.d".into(),
            conflist: None,
            replace_bandwidth: false,
            binary_only: false,
            wait: false,
            config: None,
            ready_file: None,
            remove_datapath: false,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
            match flag.as_str() {
                "--bin-dir" => o.bin_dir = value()?.into(),
                "--conf-dir" => o.conf_dir = value()?.into(),
                "--conflist" => {
                    let name = value()?.clone();
                    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                        bail!("--conflist takes a file name inside --conf-dir, got {name:?}");
                    }
                    o.conflist = Some(name);
                }
                // uninstall takes every install option, so a DaemonSet's args
                // can switch verbs (docs/operating.md: roll back); these change nothing for it.
                "--replace-bandwidth" => o.replace_bandwidth = true,
                "--binary-only" => o.binary_only = true,
                "--config" => o.config = Some(value()?.into()),
                "--ready-file" => o.ready_file = Some(value()?.into()),
                "--wait" => o.wait = true,
                "--remove-datapath" if !install => o.remove_datapath = true,
                other => bail!("unknown option {other:?} (see bpf-ratelimit help)"),
            }
        }
        if !install {
            o.replace_bandwidth = false;
            o.binary_only = false;
            o.config = None;
        }
        if o.ready_file.is_some() && !o.wait {
            bail!("--ready-file needs --wait: it tells a readiness probe that the waiting installer keeps the node chained");
        }
        // The conf dir is the runtime's: a policy there would be loaded as a
        // network config, and a ready file there would wake --wait forever.
        for (flag, file) in [("--config", &o.config), ("--ready-file", &o.ready_file)] {
            if file.as_ref().and_then(|f| f.parent()).is_some_and(|d| d == o.conf_dir) {
                bail!("{flag} must name a file outside --conf-dir {}", o.conf_dir.display());
            }
        }
        Ok(o)
    }
}

/// A config file as libcni would read it, turned into a conflist object.
struct Loaded {
    path: PathBuf,
    /// The conflist: the file itself, or a single-plugin config wrapped as
    /// libcni's ConfListFromConf wraps it.
    list: Map<String, Value>,
    /// Set when `path` holds a single-plugin config (.conf or .json).
    single: bool,
}

/// The files libcni would load from `dir`, in its order.
pub fn conf_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read the CNI config dir {}", dir.display()))? {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
        if CONF_EXTENSIONS.contains(&ext) && !path.is_dir() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The config files of `dir` other than our own OWN_CONFLIST, in libcni's
/// order: the first is what the runtime would load without us.
fn main_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let own = dir.join(OWN_CONFLIST);
    let ours = own_wraps(dir).is_some();
    Ok(conf_files(dir)?.into_iter().filter(|p| !(ours && *p == own)).collect())
}

/// The file name OWN_CONFLIST in `dir` embeds, when that file is ours.
fn own_wraps(dir: &Path) -> Option<String> {
    let value: Value = serde_json::from_slice(&std::fs::read(dir.join(OWN_CONFLIST)).ok()?).ok()?;
    value.get(WRAPS_KEY).and_then(Value::as_str).map(String::from)
}

/// Our OWN_CONFLIST sorts first, so it must go as soon as the config it
/// embeds is no longer the one the runtime would load first without it
/// (the `.conf` was removed, Multus or a conflist now sorts before it):
/// left there, it would hide that file. This write precedes the checks on
/// purpose: a refusal must not keep a stale chain in force.
fn remove_stale_own(conf_dir: &Path) -> Result<()> {
    let Some(wrapped) = own_wraps(conf_dir) else { return Ok(()) };
    let first = main_files(conf_dir)?.into_iter().next();
    if first.as_ref().and_then(|p| p.file_name()).is_some_and(|n| n.to_str() == Some(wrapped.as_str())) {
        return Ok(());
    }
    let own = conf_dir.join(OWN_CONFLIST);
    std::fs::remove_file(&own).with_context(|| format!("cannot remove the stale {}", own.display()))?;
    sync_dir(conf_dir)?;
    eprintln!(
        "bpf-ratelimit: removed {}: it chained {wrapped}, but the runtime's first config is now {}",
        own.display(),
        first.map(|p| p.display().to_string()).unwrap_or_else(|| "none".into())
    );
    Ok(())
}

fn load(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("cannot parse {} as JSON; fix or remove it, or name another file with --conflist", path.display()))?;
    let Value::Object(obj) = value else {
        bail!("{} is not a JSON object, so no runtime can use it; fix it or name another file with --conflist", path.display());
    };
    let single = path.extension().is_some_and(|e| e != "conflist");
    if !single {
        let Some(Value::Array(plugins)) = obj.get("plugins") else {
            bail!("{} has no \"plugins\" list; a .conflist needs one", path.display());
        };
        if let Some(i) = plugins.iter().position(|p| p.get("type").and_then(Value::as_str).is_none()) {
            bail!("plugin {i} in {} has no \"type\"; fix the file first", path.display());
        }
        return Ok(Loaded { path: path.into(), list: obj, single });
    }
    if obj.contains_key("plugins") {
        bail!(
            "{} holds a plugin list, but libcni reads a .conf or .json file as a single plugin; rename it to .conflist first",
            path.display()
        );
    }
    if obj.get("type").and_then(Value::as_str).is_none() {
        bail!("{} has no \"type\"; fix the file first", path.display());
    }
    Ok(Loaded { path: path.into(), list: wrap_single(obj), single })
}

/// A single-plugin config as a conflist, the way libcni's ConfListFromConf
/// wraps it: the config itself is the only plugin.
fn wrap_single(obj: Map<String, Value>) -> Map<String, Value> {
    let mut list = Map::new();
    list.insert("cniVersion".into(), obj.get("cniVersion").cloned().unwrap_or(Value::Null));
    list.insert("name".into(), obj.get("name").cloned().unwrap_or(Value::Null));
    list.insert("plugins".into(), Value::Array(vec![Value::Object(obj)]));
    list
}

fn plugins(list: &Map<String, Value>) -> &Vec<Value> {
    match list.get("plugins") {
        Some(Value::Array(p)) => p,
        _ => unreachable!("load() checked the plugins list"),
    }
}

fn plugins_mut(list: &mut Map<String, Value>) -> &mut Vec<Value> {
    match list.get_mut("plugins") {
        Some(Value::Array(p)) => p,
        _ => unreachable!("load() checked the plugins list"),
    }
}

fn type_of(plugin: &Value) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or_default()
}

/// The entry `install` appends without `--config`.
pub fn plugin_entry() -> Value {
    json!({
        "type": PLUGIN_TYPE,
        "capabilities": {"bandwidth": true, "cgroupPath": true, "io.kubernetes.cri.pod-annotations": true}
    })
}

/// The operator's limits, at the top level or per namespace (netconf).
const POLICY_KEYS: &[&str] = &[
    "ingressRate", "ingressBurst", "egressRate", "egressBurst",
    "defaultIngressRate", "defaultIngressBurst", "defaultEgressRate", "defaultEgressBurst",
    "maxIngressRate", "maxIngressBurst", "maxEgressRate", "maxEgressBurst",
];
/// The other keys of the plugin's entry an operator may set.
const OTHER_KEYS: &[&str] =
    &["namespaces", "cgroupRoot", "pinRoot", "allowRawSockets", "ingressQueue", "ingressTradeoff", "limitBasis", "failurePolicy", "lockTimeoutSeconds", "logFile", "logLevel", "capabilities"];
const CAPABILITIES: &[&str] = &["bandwidth", "cgroupPath", "io.kubernetes.cri.pod-annotations"];

/// The entry for a `--config` object: its keys, in its order, after `type`,
/// with the capabilities it sets over the default ones.
pub fn entry_with(config: &Map<String, Value>) -> Value {
    let mut entry = Map::new();
    entry.insert("type".into(), PLUGIN_TYPE.into());
    for (k, v) in config.iter().filter(|(k, _)| *k != "capabilities") {
        entry.insert(k.clone(), v.clone());
    }
    let mut caps = plugin_entry()["capabilities"].as_object().cloned().unwrap_or_default();
    if let Some(Value::Object(over)) = config.get("capabilities") {
        caps.extend(over.clone());
    }
    entry.insert("capabilities".into(), Value::Object(caps));
    Value::Object(entry)
}

/// The closest known key to a misspelt one, for the error message.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let (a, b): (Vec<char>, Vec<char>) = (a.to_lowercase().chars().collect(), b.to_lowercase().chars().collect());
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for i in 1..=a.len() {
            let mut prev = row[0];
            row[0] = i;
            for j in 1..=b.len() {
                let cur = row[j];
                row[j] = (prev + usize::from(a[i - 1] != b[j - 1])).min(row[j] + 1).min(row[j - 1] + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    known.iter().map(|k| (distance(key, k), *k)).filter(|(d, _)| *d <= 3).min().map(|(_, k)| k)
}

fn unknown_key(key: &str, known: &[&str], place: &str) -> anyhow::Error {
    match closest(key, known) {
        Some(k) => anyhow!("unknown key {key:?} {place}; did you mean {k:?}?"),
        None => anyhow!("unknown key {key:?} {place}; the keys are {}", known.join(", ")),
    }
}

/// Reads and validates a `--config` file: what every ADD would refuse is
/// refused here, once, naming the file.
pub fn load_config(path: &Path) -> Result<Map<String, Value>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read --config {}", path.display()))?;
    let value: Value = serde_json::from_slice(&bytes).with_context(|| format!("--config {} is not valid JSON", path.display()))?;
    let Value::Object(config) = value else {
        bail!("--config {} must hold a JSON object of bpf-ratelimit's keys, such as {{\"maxEgressRate\": 100000000}}", path.display());
    };
    validate_config(&config).with_context(|| format!("--config {}", path.display()))?;
    Ok(config)
}

/// The checks of `load_config`, on the object.
pub fn validate_config(config: &Map<String, Value>) -> Result<()> {
    let known: Vec<&str> = POLICY_KEYS.iter().chain(OTHER_KEYS).copied().collect();
    for key in config.keys() {
        if matches!(key.as_str(), "type" | "name" | "cniVersion" | "runtimeConfig" | "prevResult" | "args") {
            bail!("{key:?} is not the operator's to set: install writes \"type\", the conflist gives \"name\" and \"cniVersion\", the runtime the rest");
        }
        if !known.contains(&key.as_str()) {
            return Err(unknown_key(key, &known, "at the top level"));
        }
    }
    if let Some(ns) = config.get("namespaces") {
        let Value::Object(ns) = ns else { bail!("\"namespaces\" must be an object of namespace name to limits") };
        for (name, keys) in ns {
            let Value::Object(keys) = keys else { bail!("namespaces[{name:?}] must be an object of limits") };
            if let Some(key) = keys.keys().find(|k| !POLICY_KEYS.contains(&k.as_str())) {
                return Err(unknown_key(key, POLICY_KEYS, &format!("in namespaces[{name:?}]")));
            }
        }
    }
    if let Some(caps) = config.get("capabilities") {
        let Value::Object(caps) = caps else { bail!("\"capabilities\" must be an object of capability name to true or false") };
        for (name, on) in caps {
            if !CAPABILITIES.contains(&name.as_str()) {
                return Err(unknown_key(name, CAPABILITIES, "in capabilities"));
            }
            if !on.is_boolean() {
                bail!("capabilities[{name:?}] must be true or false");
            }
        }
    }
    // The plugin's own parser, as ADD runs it.
    let mut conf = Map::new();
    conf.insert("cniVersion".into(), crate::cni::DEFAULT_VERSION.into());
    conf.insert("name".into(), "install-check".into());
    conf.insert("type".into(), PLUGIN_TYPE.into());
    conf.extend(config.clone());
    let parsed = crate::policy::netconf::NetConf::parse(Value::Object(conf).to_string().as_bytes()).map_err(|e| anyhow!("{e}"))?;
    // Every value in range, in every namespace's policy.
    use crate::policy::limits::{Direction, MAX_BURST, MAX_RATE, MIN_RATE};
    let namespaces: Vec<Option<&str>> = std::iter::once(None).chain(parsed.namespaces.keys().map(|k| Some(k.as_str()))).collect();
    for ns in &namespaces {
        let policy = parsed.policy_for(*ns);
        let place = ns.map(|n| format!(" (namespace {n:?})")).unwrap_or_default();
        for dir in Direction::BOTH {
            let p = policy.direction(dir);
            let cap = if dir == Direction::Ingress { "Ingress" } else { "Egress" };
            for (key, v) in [(format!("{}Rate", dir.name()), p.rate), (format!("default{cap}Rate"), p.default_rate), (format!("max{cap}Rate"), p.max_rate)] {
                if let Some(v) = v.filter(|v| *v != 0 && !(MIN_RATE..=MAX_RATE).contains(v)) {
                    bail!("{key}{place} is {v} bits/s; a rate must be between {MIN_RATE} and {MAX_RATE} bits/s (8k to 100G), or 0 for none");
                }
            }
            for (key, v) in [(format!("{}Burst", dir.name()), p.burst), (format!("default{cap}Burst"), p.default_burst), (format!("max{cap}Burst"), p.max_burst)] {
                if let Some(v) = v.filter(|v| *v > MAX_BURST) {
                    bail!("{key}{place} is {v} bits; a burst can be at most {MAX_BURST} bits (1 GiB)");
                }
            }
        }
        // What a pod that asks for nothing gets: a burst without a rate fails here.
        crate::policy::resolve::resolve(&parsed.pod_request(*ns)).map_err(|e| anyhow!("{}", e.msg))?;
    }
    Ok(())
}

fn target(opts: &Options) -> Result<PathBuf> {
    if let Some(name) = &opts.conflist {
        if name == OWN_CONFLIST && own_wraps(&opts.conf_dir).is_some() {
            bail!("{name} is the file bpf-ratelimit writes for a single-plugin config; name the main network's own file with --conflist");
        }
        let path = opts.conf_dir.join(name);
        if !path.is_file() {
            bail!("{} does not exist; name a file in {} with --conflist", path.display(), opts.conf_dir.display());
        }
        return Ok(path);
    }
    let files = match main_files(&opts.conf_dir) {
        Ok(f) => f,
        Err(e) if !opts.conf_dir.exists() => return Err(e.context(NoConfigYet)),
        Err(e) => return Err(e),
    };
    files.into_iter().next().ok_or_else(|| {
        anyhow!(
            "no CNI config (.conf, .conflist or .json) in {}: install the main network plugin first, since bpf-ratelimit chains after it",
            opts.conf_dir.display()
        )
        .context(NoConfigYet)
    })
}

/// The conf dir holds no config yet: the main network plugin has not
/// written its conflist (`--wait` waits for it).
#[derive(Debug)]
pub struct NoConfigYet;

impl std::fmt::Display for NoConfigYet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("waiting for the main network plugin's CNI config")
    }
}

fn is_no_config_yet(e: &anyhow::Error) -> bool {
    e.downcast_ref::<NoConfigYet>().is_some()
}

/// Where an older install wrote a converted single-plugin config, and where
/// it kept the original.
fn converted_paths(path: &Path) -> (PathBuf, PathBuf) {
    let mut original = path.as_os_str().to_owned();
    original.push(ORIGINAL_SUFFIX);
    (path.with_extension("conflist"), PathBuf::from(original))
}

/// Installs; returns what it did, one line each, for the log.
pub fn install(opts: &Options) -> Result<Vec<String>> {
    // The operator's policy is checked before anything else, and before
    // anything is written.
    let config = opts.config.as_deref().map(load_config).transpose()?;
    if opts.binary_only {
        return Ok(vec![install_binary(&opts.bin_dir)?]);
    }
    remove_stale_own(&opts.conf_dir)?;
    let path = target(opts)?;
    let mut loaded = load(&path)?;
    let file = path.display().to_string();
    let list = &mut loaded.list;
    let main = plugins(list).iter().position(|p| !CHAINED_ONLY.contains(&type_of(p))).ok_or_else(|| {
        anyhow!(
            "{file} has no main plugin ({}), so bpf-ratelimit would run before any interface exists; add the network plugin first or name another file with --conflist",
            match plugins(list).iter().map(type_of).collect::<Vec<_>>().join(", ") {
                t if t.is_empty() => "its plugin list is empty".to_string(),
                t => format!("only {t}"),
            }
        )
    })?;
    // Multus writes (and, thick, rewrites) its own config, which sorts first;
    // the plugin belongs in the default network's conflist that Multus delegates to.
    if opts.conflist.is_none() && matches!(type_of(&plugins(list)[main]), "multus" | "multus-shim") {
        bail!(
            "{file} is Multus's own config, which Multus rewrites; name the default network's conflist (the one Multus delegates to) with --conflist"
        );
    }
    check_version(&loaded, &file)?;
    let desired = config.as_ref().map(entry_with);
    if loaded.single {
        return install_single(opts, loaded, desired);
    }
    let list = &mut loaded.list;
    let mut done = Vec::new();
    let mut changed = false;
    if let Some(ours) = plugins(list).iter().position(|p| type_of(p) == PLUGIN_TYPE) {
        if ours < main {
            bail!(
                "{file} lists bpf-ratelimit before its main plugin {:?}; move the bpf-ratelimit entry after it",
                type_of(&plugins(list)[main])
            );
        }
        match &desired {
            // With --config the entry is the file's keys, exactly: an entry
            // that differs (an installer rewrote it, the policy changed) is
            // replaced where it stands.
            Some(entry) if &plugins(list)[ours] != entry => {
                plugins_mut(list)[ours] = entry.clone();
                changed = true;
                done.push(format!("{file}: set the bpf-ratelimit entry to the keys of --config {}", opts.config.as_ref().unwrap().display()));
            }
            Some(_) => done.push(format!("{file} already chains bpf-ratelimit as --config says")),
            // Without --config an existing entry is left alone: it may carry
            // keys an operator added by hand.
            None => done.push(format!("{file} already chains bpf-ratelimit")),
        }
        if plugins(list).iter().any(|p| type_of(p) == "bandwidth") {
            done.push(format!("warning: {file} also chains the reference bandwidth plugin; both shape every annotated pod, remove one"));
        }
    } else {
        if let Some(bw) = plugins(list).iter().position(|p| type_of(p) == "bandwidth") {
            if !opts.replace_bandwidth {
                bail!(
                    "{file} already chains the reference bandwidth plugin, which reads the same annotations, so both would shape every pod; \
                     remove its entry from the file, or run install with --replace-bandwidth to take it out (uninstall puts it back)"
                );
            }
            let entry = plugins_mut(list).remove(bw);
            list.insert(REPLACED_KEY.into(), json!({"index": bw, "plugin": entry}));
            done.push(format!("{file}: took out the reference bandwidth plugin (entry {bw})"));
        }
        plugins_mut(list).push(desired.clone().unwrap_or_else(plugin_entry));
        changed = true;
    }
    // Checks are done: from here on, write. The binary goes first, so the
    // runtime never runs a conflist whose plugin is missing.
    done.push(install_binary(&opts.bin_dir)?);
    if !changed {
        return Ok(done);
    }
    write_config(&path, &loaded.list, mode_of(&path))?;
    if !done.iter().any(|l| l.contains("set the bpf-ratelimit entry")) {
        done.push(format!("{file}: appended bpf-ratelimit"));
    }
    Ok(done)
}

/// A single-plugin config is its owner's: it is left as it is, and chained
/// by OWN_CONFLIST, which embeds it (as libcni's ConfListFromConf wraps it,
/// its name and cniVersion kept) and sorts first. Run again, it follows the
/// `.conf`'s changes.
fn install_single(opts: &Options, loaded: Loaded, desired: Option<Value>) -> Result<Vec<String>> {
    let path = &loaded.path;
    let file = path.display().to_string();
    let own = opts.conf_dir.join(OWN_CONFLIST);
    let files = main_files(&opts.conf_dir)?;
    let first = files.first().context("the conf dir lost its files")?;
    // Our file sorts first, so it must stand in for the file the runtime
    // would load first without it, and for no other.
    if first != path {
        bail!(
            "{file} is a single-plugin config, which bpf-ratelimit chains by writing its own {OWN_CONFLIST} to sort first; \
             but the runtime loads {} first, which that would hide. Chain that file instead, or make {file} a .conflist",
            first.display()
        );
    }
    let name = path.file_name().context("the config has no file name")?.to_str().context("the config's file name is not UTF-8")?;
    if name.as_bytes() <= OWN_CONFLIST.as_bytes() {
        bail!(
            "{file} is a single-plugin config, which bpf-ratelimit chains by writing its own {OWN_CONFLIST}, but {name} sorts before that \
             name, so the runtime would keep loading {name}; rename it to sort after {OWN_CONFLIST}, or make it a .conflist"
        );
    }
    let existing: Option<Map<String, Value>> =
        std::fs::read(&own).ok().and_then(|b| serde_json::from_slice(&b).ok()).and_then(|v: Value| v.as_object().cloned());
    // Without --config an entry already there is kept: it may carry keys
    // an operator added by hand.
    let kept = existing.as_ref().and_then(|l| l.get("plugins")?.as_array()?.iter().find(|p| type_of(p) == PLUGIN_TYPE).cloned());
    let mut list = loaded.list;
    plugins_mut(&mut list).push(desired.or(kept).unwrap_or_else(plugin_entry));
    list.insert(WRAPS_KEY.into(), name.into());
    let mut done = vec![install_binary(&opts.bin_dir)?];
    if existing.as_ref() == Some(&list) {
        done.push(format!("{} already chains bpf-ratelimit after the single-plugin config {file}", own.display()));
        return Ok(done);
    }
    write_config(&own, &list, mode_of(path))?;
    done.push(format!(
        "{}: chains bpf-ratelimit after the single-plugin config {file} (embedded as its first plugin; {file} is left as it is)",
        own.display()
    ));
    Ok(done)
}

/// The CNI config files written since `take_config_writes` was last called:
/// how `--wait` tells an apply that had to put the entry back from one
/// that found it in place.
static CONFIG_WRITES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn take_config_writes() -> Vec<PathBuf> {
    std::mem::take(&mut *CONFIG_WRITES.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Writes a config (pretty JSON, the key order kept) atomically and notes it.
fn write_config(dest: &Path, list: &Map<String, Value>, mode: u32) -> Result<()> {
    let text = format!("{}\n", serde_json::to_string_pretty(&Value::Object(list.clone()))?);
    write_atomically(dest, text.as_bytes(), mode)?;
    CONFIG_WRITES.lock().unwrap_or_else(|e| e.into_inner()).push(dest.to_path_buf());
    Ok(())
}

/// The chain must be one this plugin can serve: a cniVersion it speaks and,
/// for a single-plugin config, the name and version OWN_CONFLIST needs
/// (libcni refuses a conflist without them).
fn check_version(loaded: &Loaded, file: &str) -> Result<()> {
    let list = &loaded.list;
    let what = if loaded.single { "single-plugin config" } else { "conflist" };
    if loaded.single && !list.get("name").is_some_and(|n| n.as_str().is_some_and(|n| !n.is_empty())) {
        bail!("{file} has no \"name\", which the conflist that chains it needs (libcni refuses one without); add the network's name to it");
    }
    match list.get("cniVersion").and_then(Value::as_str) {
        Some(v) if crate::cni::is_supported_version(v) => Ok(()),
        Some(v) => bail!(
            "{file} says cniVersion {v:?}, which bpf-ratelimit cannot serve (it speaks {}); every ADD would fail, so it is not chained. Use a conflist of one of those versions",
            crate::cni::SUPPORTED_VERSIONS.join(", ")
        ),
        None => bail!(
            "the {what} {file} has no \"cniVersion\" (a string), so the runtime would pass bpf-ratelimit none; add one ({})",
            crate::cni::SUPPORTED_VERSIONS.join(", ")
        ),
    }
}

/// Copies the running binary into `bin_dir` unless an identical copy is there.
fn install_binary(bin_dir: &Path) -> Result<String> {
    let source = std::env::current_exe().context("cannot find this binary")?;
    let dest = bin_dir.join(PLUGIN_TYPE);
    let bytes = std::fs::read(&source).with_context(|| format!("cannot read {}", source.display()))?;
    if std::fs::read(&dest).is_ok_and(|d| d == bytes) {
        return Ok(format!("{} is up to date", dest.display()));
    }
    std::fs::create_dir_all(bin_dir).with_context(|| format!("cannot create {}", bin_dir.display()))?;
    write_atomically(&dest, &bytes, 0o755)?;
    Ok(format!("installed {}", dest.display()))
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644)
}

/// Writes `bytes` to a hidden temporary file beside `dest` (an extension
/// libcni does not load), fsyncs it, renames it over `dest` and fsyncs the
/// directory.
fn write_atomically(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // A symlinked file stays a symlink: its target is what is rewritten.
    let resolved;
    let dest = if dest.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        resolved = std::fs::canonicalize(dest).with_context(|| format!("cannot follow the symlink {}", dest.display()))?;
        resolved.as_path()
    } else {
        dest
    };
    let dir = dest.parent().context("the target has no directory")?;
    let name = dest.file_name().context("the target has no file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("cannot write {}", dest.display())));
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))
}

fn chains_us(path: &Path) -> bool {
    load(path).is_ok_and(|l| plugins(&l.list).iter().any(|p| type_of(p) == PLUGIN_TYPE))
}

/// Uninstalls; returns what it did, one line each.
pub fn uninstall(opts: &Options) -> Result<Vec<String>> {
    let own = opts.conf_dir.join(OWN_CONFLIST);
    let wrapped = own_wraps(&opts.conf_dir);
    // Our own file goes whole: without --conflist, or when it names that
    // file or the config it embeds.
    let (targets, remove_own) = match &opts.conflist {
        Some(name) if wrapped.is_some() && (name == OWN_CONFLIST || wrapped.as_deref() == Some(name.as_str())) => (Vec::new(), true),
        Some(_) => (vec![target(opts)?], false),
        None => (
            conf_files(&opts.conf_dir)?.into_iter().filter(|p| chains_us(p) && !(wrapped.is_some() && *p == own)).collect(),
            wrapped.is_some(),
        ),
    };
    // Load and check everything before the first write.
    let mut plans = Vec::new();
    for path in targets {
        let mut loaded = load(&path)?;
        if loaded.single {
            if plugins(&loaded.list).iter().any(|p| type_of(p) == PLUGIN_TYPE) {
                bail!("{} runs bpf-ratelimit as its only plugin; remove that file yourself", path.display());
            }
            continue;
        }
        let list = &mut loaded.list;
        plugins_mut(list).retain(|p| type_of(p) != PLUGIN_TYPE);
        if let Some(replaced) = list.remove(REPLACED_KEY) {
            let (Some(index), Some(plugin)) = (replaced.get("index").and_then(Value::as_u64), replaced.get("plugin")) else {
                bail!("{REPLACED_KEY} in {} is not {{index, plugin}}; restore the bandwidth entry by hand and remove the key", path.display());
            };
            let plugins = plugins_mut(list);
            plugins.insert((index as usize).min(plugins.len()), plugin.clone());
        }
        plans.push(loaded);
    }
    let mut done = Vec::new();
    if remove_own {
        // First: the runtime falls back to the untouched config at once.
        std::fs::remove_file(&own).with_context(|| format!("cannot remove {}", own.display()))?;
        sync_dir(&opts.conf_dir)?;
        done.push(format!("removed {}; {} is as its owner left it", own.display(), wrapped.unwrap_or_default()));
    }
    for loaded in plans {
        let file = loaded.path.display().to_string();
        // An older install converted X.conf to X.conflist and kept X.conf
        // as X.conf.bpf-ratelimit-orig. That is undone only while X.conflist,
        // without us, is still exactly what it was converted to: later edits win.
        let original = ["conf", "json"].iter().map(|ext| converted_paths(&loaded.path.with_extension(ext)).1).find(|p| p.exists());
        let conversion = original.as_ref().and_then(|o| {
            let path = PathBuf::from(o.to_string_lossy().strip_suffix(ORIGINAL_SUFFIX)?);
            let Ok(Value::Object(obj)) = serde_json::from_slice(&std::fs::read(o).ok()?) else { return None };
            (wrap_single(obj) == loaded.list).then_some((o.clone(), path))
        });
        match conversion {
            Some((kept, path)) if !path.exists() => {
                std::fs::rename(&kept, &path).with_context(|| format!("cannot restore {}", path.display()))?;
                std::fs::remove_file(&loaded.path).with_context(|| format!("cannot remove {file}"))?;
                sync_dir(&opts.conf_dir)?;
                done.push(format!("restored {} and removed {file}, which an older install had converted it to", path.display()));
            }
            // The main plugin wrote X.conf again since: it is the newer
            // truth, and the old conversion and its kept copy are ours to remove.
            Some((kept, path)) => {
                std::fs::remove_file(&loaded.path).with_context(|| format!("cannot remove {file}"))?;
                std::fs::remove_file(&kept).with_context(|| format!("cannot remove {}", kept.display()))?;
                sync_dir(&opts.conf_dir)?;
                done.push(format!(
                    "removed {file} and {}, which an older install made of {}; {} was written again since and is left as it is",
                    kept.display(),
                    path.display(),
                    path.display()
                ));
            }
            None => {
                write_config(&loaded.path, &loaded.list, mode_of(&loaded.path))?;
                done.push(format!("{file}: took bpf-ratelimit out"));
            }
        }
    }
    // The binary goes last, and only when no config the runtime loads still runs it.
    let dest = opts.bin_dir.join(PLUGIN_TYPE);
    let still: Vec<String> = conf_files(&opts.conf_dir)?
        .into_iter()
        .filter(|p| chains_us(p))
        .map(|p| p.display().to_string())
        .collect();
    if !still.is_empty() {
        done.push(format!("kept {}: {} still chain bpf-ratelimit", dest.display(), still.join(", ")));
    } else if dest.exists() {
        std::fs::remove_file(&dest).with_context(|| format!("cannot remove {}", dest.display()))?;
        sync_dir(&opts.bin_dir)?;
        done.push(format!("removed {}", dest.display()));
    }
    if opts.remove_datapath {
        done.extend(crate::ops::admin::cleanup(None)?);
    }
    Ok(done)
}

/// Runs install or uninstall, printing what it did to stderr. Without
/// `wait`, once. With `wait`, it stays until SIGTERM or SIGINT: it applies
/// whenever the conf dir (or the config's directory: a ConfigMap update) changes
/// and every 10 s, waits for a conflist when there is none yet, and keeps
/// `ready_file` while the last apply succeeded; errors are logged when they
/// change, and make the ready file go.
pub fn run(opts: &Options, apply: fn(&Options) -> Result<Vec<String>>) -> Result<()> {
    if !opts.wait {
        for line in apply(opts)? {
            eprintln!("bpf-ratelimit: {line}");
        }
        return Ok(());
    }
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use std::os::fd::AsFd;

    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    // Blocked and then read from a signalfd: this works as a container's
    // PID 1 too, which has no default action for SIGTERM.
    signals.thread_block().context("cannot block SIGTERM")?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).context("cannot make a signalfd")?;
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).context("cannot use inotify")?;
    let events = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_ATTRIB;
    let config_dir = opts.config.as_ref().and_then(|c| c.parent()).map(Path::to_path_buf);
    // Both directories are watched again when a watch is lost (the
    // directory was removed: IN_IGNORED) or could not be set up yet.
    let mut watching_conf_dir = false;
    let watch = |inotify: &Inotify, watching: &mut bool| {
        if !*watching {
            *watching = inotify.add_watch(&opts.conf_dir, events).is_ok();
            if let Some(dir) = &config_dir {
                let _ = inotify.add_watch(dir.as_path(), events);
            }
        }
    };
    let mut last_error: Option<String> = None;
    let mut ready = false;
    let mut first = true;
    let mut reapplies = Reapplies::default();
    // The --config file as the last successful apply read it: a write with
    // the same config is a re-apply (someone took the entry out or changed it).
    let read_config = || opts.config.as_ref().and_then(|c| std::fs::read(c).ok());
    let mut applied_config = None;
    let mut hold_until: Option<Instant> = None;
    let mut last_lines: Vec<String> = Vec::new();
    let mut ready_written = Instant::now();
    loop {
        watch(&inotify, &mut watching_conf_dir);
        if hold_until.is_some_and(|t| Instant::now() < t) {
            // Backing off: the ready file stays fresh (the last apply did
            // succeed), and says so.
            if ready && ready_written.elapsed() >= Duration::from_secs(10) {
                if let Some(file) = &opts.ready_file {
                    let _ = write_ready(file, &last_lines, &reapplies);
                }
                ready_written = Instant::now();
            }
        } else {
            hold_until = None;
            let config_now = read_config();
            take_config_writes();
            let result = apply(opts);
            let written = take_config_writes();
            if let (Ok(_), Some(file)) = (&result, written.first()) {
                if ready && config_now == applied_config {
                    let backoff = reapplies.record(file, Instant::now());
                    if !backoff.is_zero() {
                        eprintln!(
                            "bpf-ratelimit: warning: {}: bpf-ratelimit had to be put back {} times in a row ({} in all): another writer keeps taking it out; \
                             waiting {} s before the next apply instead of fighting it at once",
                            file.display(),
                            reapplies.streak,
                            reapplies.total,
                            backoff.as_secs()
                        );
                        hold_until = Some(Instant::now() + backoff);
                    }
                }
            }
            match result {
                Ok(lines) => {
                    // The first success says what it did; later ones only what changed.
                    for line in lines.iter().filter(|l| !ready || !(l.contains("already chains") || l.contains("up to date"))) {
                        eprintln!("bpf-ratelimit: {line}");
                    }
                    if let Some(file) = &opts.ready_file {
                        if let Err(e) = write_ready(file, &lines, &reapplies) {
                            eprintln!("bpf-ratelimit: cannot write the ready file {}: {e:#}", file.display());
                        }
                        ready_written = Instant::now();
                    }
                    if last_error.take().is_some() || !ready {
                        eprintln!("bpf-ratelimit: ready: {}", lines.iter().find(|l| l.contains("chains") || l.contains("appended") || l.contains("set the")).cloned().unwrap_or_else(|| lines.join("; ")));
                    }
                    ready = true;
                    applied_config = config_now;
                    last_lines = lines;
                }
                Err(e) => {
                    if let Some(file) = &opts.ready_file {
                        let _ = std::fs::remove_file(file);
                    }
                    let text = if is_no_config_yet(&e) {
                        format!("no CNI config in {} yet: waiting for the main network plugin to write one", opts.conf_dir.display())
                    } else {
                        format!("{e:#}")
                    };
                    if last_error.as_deref() != Some(&text) {
                        eprintln!("bpf-ratelimit: {}{text}", if ready { "not ready: " } else { "" });
                        last_error = Some(text);
                    }
                    ready = false;
                }
            }
            if let Some(file) = &opts.ready_file {
                if let Err(e) = write_metrics(&metrics_file(file), &reapplies) {
                    eprintln!("bpf-ratelimit: cannot write {}: {e:#}", metrics_file(file).display());
                }
            }
        }
        if std::mem::take(&mut first) {
            eprintln!("bpf-ratelimit: waiting for SIGTERM, re-applying when {} changes and every 10 s", opts.conf_dir.display());
        }
        // Sleep until a signal, a change in the watched directories, or 10 s
        // (1 s while not ready and the conf dir cannot be watched yet), or
        // the end of a backoff.
        let mut timeout = if ready || watching_conf_dir { Duration::from_secs(10) } else { Duration::from_secs(1) };
        if let Some(t) = hold_until {
            timeout = timeout.min(t.saturating_duration_since(Instant::now()));
        }
        let mut fds = [PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN), PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        if let Ok(Some(sig)) = signal_fd.read_signal() {
            let name = Signal::try_from(sig.ssi_signo as i32).map(|s| s.to_string()).unwrap_or_else(|_| sig.ssi_signo.to_string());
            eprintln!("bpf-ratelimit: {name}: exiting and leaving the files as they are");
            return Ok(());
        }
        let mut seen = inotify.read_events().unwrap_or_default();
        if !seen.is_empty() {
            // Let the writer finish (an installer may write several files),
            // then take every event that came meanwhile.
            std::thread::sleep(Duration::from_millis(100));
            while let Ok(more) = inotify.read_events() {
                if more.is_empty() {
                    break;
                }
                seen.extend(more);
            }
            if seen.iter().any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED)) {
                watching_conf_dir = false;
            }
        }
    }
}

/// After REAPPLY_STREAK re-applies in a row, each within REAPPLY_WINDOW of
/// the one before, `--wait` waits 1 s, 2 s, 4 s ... up to MAX_BACKOFF
/// before the next apply: a main plugin that reconciles its own file
/// (removing our entry) and this installer would otherwise rewrite it in
/// turn as fast as inotify wakes them.
const REAPPLY_STREAK: u32 = 3;
/// Longer than MAX_BACKOFF, so the streak survives the longest wait.
const REAPPLY_WINDOW: Duration = Duration::from_secs(120);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The re-applies of one `install --wait`: applies that had to write a
/// config again, the operator's config unchanged.
#[derive(Default)]
struct Reapplies {
    total: u64,
    streak: u32,
    last: Option<Instant>,
    file: Option<PathBuf>,
    backoff: Duration,
}

impl Reapplies {
    /// Counts a re-apply of `file` at `now`; returns how long to wait before
    /// the next apply.
    fn record(&mut self, file: &Path, now: Instant) -> Duration {
        self.total += 1;
        self.streak = match self.last {
            Some(last) if now.duration_since(last) < REAPPLY_WINDOW => self.streak + 1,
            _ => 1,
        };
        self.last = Some(now);
        self.file = Some(file.to_path_buf());
        self.backoff = match self.streak.checked_sub(REAPPLY_STREAK) {
            Some(n) => (Duration::from_secs(1) * 2u32.pow(n.min(6))).min(MAX_BACKOFF),
            None => Duration::ZERO,
        };
        self.backoff
    }
}

/// The installer's counters, in Prometheus's text format, beside the ready
/// file (`FILE.prom`): the installer serves no metrics itself, and a
/// node-exporter textfile collector or `bpf-ratelimit metrics` can read it.
fn metrics_file(ready_file: &Path) -> PathBuf {
    let mut name = ready_file.as_os_str().to_owned();
    name.push(".prom");
    PathBuf::from(name)
}

fn write_metrics(file: &Path, r: &Reapplies) -> Result<()> {
    let label = r.file.as_ref().map(|f| f.display().to_string()).unwrap_or_default();
    let label = label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let text = format!(
        "# HELP bpf_ratelimit_installer_reapplies_total Times install --wait put bpf-ratelimit back into a CNI config another writer had changed.\n\
         # TYPE bpf_ratelimit_installer_reapplies_total counter\n\
         bpf_ratelimit_installer_reapplies_total{{file=\"{label}\"}} {}\n\
         # HELP bpf_ratelimit_installer_backoff_seconds How long install --wait waits before its next apply because another writer keeps undoing it (0: none).\n\
         # TYPE bpf_ratelimit_installer_backoff_seconds gauge\n\
         bpf_ratelimit_installer_backoff_seconds {}\n",
        r.total,
        r.backoff.as_secs()
    );
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_atomically(file, text.as_bytes(), 0o644)
}

/// The ready file: what the last successful apply did, rewritten (so fresh)
/// on every apply.
fn write_ready(file: &Path, lines: &[String], reapplies: &Reapplies) -> Result<()> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut text = format!("applied at {stamp} (unix time)\n{}\n", lines.join("\n"));
    if reapplies.total > 0 {
        text.push_str(&format!(
            "re-applied {} times after another writer changed the config; backing off {} s\n",
            reapplies.total,
            reapplies.backoff.as_secs()
        ));
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_atomically(file, text.as_bytes(), 0o644)
}

/// How stale a ready file may be: `--wait` rewrites it at least every 10 s.
pub const READY_MAX_AGE: Duration = Duration::from_secs(60);

/// `bpf-ratelimit ready FILE`, the DaemonSet's readiness probe: whether the
/// waiting installer's last apply succeeded, less than READY_MAX_AGE ago.
/// Returns what it did, or why the node is not ready.
pub fn check_ready(file: &Path) -> Result<String> {
    let meta = std::fs::metadata(file).map_err(|e| {
        anyhow!("not ready: {} is missing ({e}): install --wait has not chained bpf-ratelimit as configured (see its log)", file.display())
    })?;
    let age = meta.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or_default();
    if age > READY_MAX_AGE {
        bail!("not ready: {} is {} s old: install --wait stopped re-applying", file.display(), age.as_secs());
    }
    Ok(std::fs::read_to_string(file).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    /// Every key `install --config` accepts is in the configuration
    /// reference's table (docs/configuration.md), and every key there is
    /// accepted: the two lists cannot drift apart (limitBasis was refused by
    /// install once). The keys the config parser itself reads by name are
    /// in the table too, so a key added to the parser alone fails here.
    #[test]
    fn the_documented_configuration_keys_are_the_keys_the_code_accepts() {
        let reference = include_str!("../../docs/configuration.md");
        let section = reference.split("## Configuration keys").nth(1).expect("docs/configuration.md has a Configuration keys section");
        let table = section.split("\n## ").next().unwrap();
        let mut documented = std::collections::BTreeSet::new();
        for row in table.lines().filter(|l| l.starts_with("| `")) {
            let first = row.split('|').nth(1).unwrap();
            documented.extend(first.split('`').skip(1).step_by(2).map(String::from));
        }
        let accepted: std::collections::BTreeSet<String> =
            super::POLICY_KEYS.iter().chain(super::OTHER_KEYS).filter(|k| **k != "capabilities").map(|k| k.to_string()).collect();
        assert_eq!(documented, accepted, "docs/configuration.md's configuration keys and the keys install accepts differ");
        // What the runtime, not the operator, writes into the config.
        let protocol = ["cniVersion", "name", "type", "prevResult", "runtimeConfig", "cni.dev/valid-attachments", "capabilities"];
        let parser = include_str!("../policy/netconf.rs");
        let mut read_by_parser = std::collections::BTreeSet::new();
        for opener in ["string_field(&obj, \"", "bool_field(&obj, \"", "obj.get(\""] {
            for rest in parser.split(opener).skip(1) {
                let key = rest.split('"').next().unwrap();
                if !protocol.contains(&key) {
                    read_by_parser.insert(key.to_string());
                }
            }
        }
        assert!(read_by_parser.len() >= 9, "the parser's keys were not found in netconf.rs: {read_by_parser:?}");
        let undocumented: Vec<_> = read_by_parser.difference(&documented).collect();
        assert!(undocumented.is_empty(), "netconf.rs reads keys docs/configuration.md does not document: {undocumented:?}");
    }
}
