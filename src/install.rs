//! `bpf-ratelimit install` and `uninstall`: put the binary into the CNI bin
//! dir and chain the plugin into the conflist the runtime uses, and take
//! both out again. Every file is written beside its target, fsynced and
//! renamed, so a runtime reading the conf dir at any moment sees either the
//! old or the new file, never half of one. Every check runs before the
//! first write, so a refusal changes nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
/// Suffix of a single-plugin config converted to a conflist: libcni loads
/// only .conf, .conflist and .json, so the original stops counting.
pub const ORIGINAL_SUFFIX: &str = ".bpf-ratelimit-orig";
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
    /// re-applying every 10 s in case another installer rewrote the conflist.
    pub wait: bool,
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
                "--replace-bandwidth" if install => o.replace_bandwidth = true,
                "--binary-only" if install => o.binary_only = true,
                "--wait" => o.wait = true,
                other => bail!("unknown option {other:?} (see bpf-ratelimit help)"),
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

/// The entry `install` appends.
pub fn plugin_entry() -> Value {
    json!({
        "type": PLUGIN_TYPE,
        "capabilities": {"bandwidth": true, "cgroupPath": true, "io.kubernetes.cri.pod-annotations": true}
    })
}

fn target(opts: &Options) -> Result<PathBuf> {
    if let Some(name) = &opts.conflist {
        let path = opts.conf_dir.join(name);
        if !path.is_file() {
            bail!("{} does not exist; name a file in {} with --conflist", path.display(), opts.conf_dir.display());
        }
        return Ok(path);
    }
    conf_files(&opts.conf_dir)?.into_iter().next().ok_or_else(|| {
        anyhow!(
            "no CNI config (.conf, .conflist or .json) in {}: install the main network plugin first, since bpf-ratelimit chains after it",
            opts.conf_dir.display()
        )
    })
}

/// Where a converted single-plugin config is written, and where the
/// original is kept.
fn converted_paths(path: &Path) -> (PathBuf, PathBuf) {
    let mut original = path.as_os_str().to_owned();
    original.push(ORIGINAL_SUFFIX);
    (path.with_extension("conflist"), PathBuf::from(original))
}

/// Installs; returns what it did, one line each, for the log.
pub fn install(opts: &Options) -> Result<Vec<String>> {
    if opts.binary_only {
        return Ok(vec![install_binary(&opts.bin_dir)?]);
    }
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
    let mut done = Vec::new();
    let mut changed = false;
    if let Some(ours) = plugins(list).iter().position(|p| type_of(p) == PLUGIN_TYPE) {
        if ours < main {
            bail!(
                "{file} lists bpf-ratelimit before its main plugin {:?}; move the bpf-ratelimit entry after it",
                type_of(&plugins(list)[main])
            );
        }
        done.push(format!("{file} already chains bpf-ratelimit"));
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
        plugins_mut(list).push(plugin_entry());
        changed = true;
    }
    let (conflist_path, original) = converted_paths(&path);
    if loaded.single {
        if conflist_path.exists() {
            bail!(
                "{file} is a single-plugin config, to be converted to {}, which exists already; remove one of them",
                conflist_path.display()
            );
        }
        if original.exists() {
            bail!("{} exists already; remove it, it is what an earlier install kept of {file}", original.display());
        }
        changed = true;
    }
    // Checks are done: from here on, write. The binary goes first, so the
    // runtime never runs a conflist whose plugin is missing.
    done.push(install_binary(&opts.bin_dir)?);
    if !changed {
        return Ok(done);
    }
    let text = format!("{}\n", serde_json::to_string_pretty(&Value::Object(loaded.list))?);
    if loaded.single {
        // The new .conflist is written before the original is renamed away:
        // until then libcni still loads the original, which sorts first
        // (".conf" before ".conflist") or is still there for CRI-O.
        write_atomically(&conflist_path, text.as_bytes(), mode_of(&path))?;
        std::fs::rename(&path, &original)
            .with_context(|| format!("cannot rename {file} to {}", original.display()))?;
        sync_dir(&opts.conf_dir)?;
        done.push(format!(
            "converted the single-plugin config {file} to {} with bpf-ratelimit chained; the original is kept as {}",
            conflist_path.display(),
            original.display()
        ));
    } else {
        write_atomically(&path, text.as_bytes(), mode_of(&path))?;
        done.push(format!("{file}: appended bpf-ratelimit"));
    }
    Ok(done)
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
    let targets = match &opts.conflist {
        Some(_) => vec![target(opts)?],
        None => conf_files(&opts.conf_dir)?.into_iter().filter(|p| chains_us(p)).collect(),
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
    for loaded in plans {
        let file = loaded.path.display().to_string();
        let original = ["conf", "json"].iter().map(|ext| converted_paths(&loaded.path.with_extension(ext)).1).find(|p| p.exists());
        // The kept original comes back only if the conflist, without us,
        // is still exactly what it was converted to; later edits win.
        let restorable = original.as_ref().and_then(|o| {
            let path = PathBuf::from(o.to_string_lossy().strip_suffix(ORIGINAL_SUFFIX)?);
            let Ok(Value::Object(obj)) = serde_json::from_slice(&std::fs::read(o).ok()?) else { return None };
            (wrap_single(obj) == loaded.list && !path.exists()).then_some((o.clone(), path))
        });
        if let Some((kept, path)) = restorable {
            std::fs::rename(&kept, &path).with_context(|| format!("cannot restore {}", path.display()))?;
            std::fs::remove_file(&loaded.path).with_context(|| format!("cannot remove {file}"))?;
            sync_dir(&opts.conf_dir)?;
            done.push(format!("restored {} and removed {file}", path.display()));
        } else {
            let text = format!("{}\n", serde_json::to_string_pretty(&Value::Object(loaded.list))?);
            write_atomically(&loaded.path, text.as_bytes(), mode_of(&loaded.path))?;
            done.push(format!("{file}: took bpf-ratelimit out"));
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
    Ok(done)
}

/// Runs install or uninstall, printing what it did to stderr; with `wait`,
/// then stays until SIGTERM or SIGINT, applying again every 10 s (a network
/// plugin's own installer may rewrite the conflist it owns).
pub fn run(opts: &Options, apply: fn(&Options) -> Result<Vec<String>>) -> Result<()> {
    for line in apply(opts)? {
        eprintln!("bpf-ratelimit: {line}");
    }
    if !opts.wait {
        return Ok(());
    }
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGTERM);
    signals.add(nix::sys::signal::Signal::SIGINT);
    // Blocked and then waited for: this works as a container's PID 1 too,
    // which has no default action for SIGTERM.
    signals.thread_block().context("cannot block SIGTERM")?;
    eprintln!("bpf-ratelimit: waiting for SIGTERM, re-applying every 10 s");
    loop {
        if let Some(sig) = wait_for_signal(&signals, Duration::from_secs(10)) {
            eprintln!("bpf-ratelimit: {sig}: exiting and leaving the files as they are");
            return Ok(());
        }
        match apply(opts) {
            Ok(lines) => {
                for line in lines.iter().filter(|l| !l.contains("already chains") && !l.contains("up to date")) {
                    eprintln!("bpf-ratelimit: {line}");
                }
            }
            Err(e) => eprintln!("bpf-ratelimit: {e:#}"),
        }
    }
}

fn wait_for_signal(signals: &nix::sys::signal::SigSet, timeout: Duration) -> Option<String> {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: 0 };
    // SAFETY: the set and timespec are valid for the call; no siginfo is wanted.
    let sig = unsafe { libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), &ts) };
    (sig > 0).then(|| nix::sys::signal::Signal::try_from(sig).map(|s| s.to_string()).unwrap_or_else(|_| sig.to_string()))
}
