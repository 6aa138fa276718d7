//! The manifests under deploy/ as `kubectl kustomize` renders them: what
//! `kubectl apply -k` would send to the API server, parsed to JSON. kubectl
//! is a test dependency (install.sh installs it); without it these tests
//! fail, they do not skip.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use serde::Deserialize;
use serde_json::Value;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The overlay the other tests run: kubeadm's node layout, the base as it is.
pub const KUBEADM: &str = "deploy/overlays/kubeadm";

/// `kubectl kustomize DIR` (DIR relative to the repository), each document
/// as JSON. Rendered once per directory and test binary.
pub fn render(dir: &str) -> Vec<Value> {
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<Value>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(docs) = cache.lock().unwrap().get(dir) {
        return docs.clone();
    }
    let docs = parse(&kustomize(&repo().join(dir)).unwrap_or_else(|e| panic!("{e}")), dir);
    cache.lock().unwrap().insert(dir.to_string(), docs.clone());
    docs
}

/// `kubectl kustomize DIR`'s YAML, or kubectl's error.
pub fn kustomize(dir: &Path) -> Result<String, String> {
    let out = Command::new("kubectl").arg("kustomize").arg(dir).output().map_err(|e| {
        format!("cannot run kubectl ({e}): it renders deploy/; install it with sudo ./install.sh --deps-only")
    })?;
    if !out.status.success() {
        return Err(format!("kubectl kustomize {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8(out.stdout).expect("kubectl prints UTF-8"))
}

pub fn parse(yaml: &str, what: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: kubectl's output does not parse: {e}")))
        .collect()
}

/// The document of `kind` rendered from `dir`.
pub fn document(dir: &str, kind: &str) -> Value {
    let mut found = render(dir).into_iter().filter(|d| d["kind"] == kind);
    let doc = found.next().unwrap_or_else(|| panic!("no {kind} in {dir}"));
    assert!(found.next().is_none(), "more than one {kind} in {dir}");
    doc
}

/// A kustomization written under the target directory that takes `resource`
/// and adds `components` (all relative to the repository), for combinations
/// the repository has no directory of.
pub fn compose(tag: &str, resource: &str, components: &[&str]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kustomize-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // kustomize takes no absolute path for a resource or component.
    let up = relative(&dir, repo());
    let list = |items: &[&str]| items.iter().map(|i| format!("  - {}\n", up.join(i).display())).collect::<String>();
    let text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{}components:\n{}",
        list(&[resource]),
        list(components)
    );
    std::fs::write(dir.join("kustomization.yaml"), text).unwrap();
    dir
}

/// The path from directory `from` to `to`, both absolute.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (from, to) = (from.canonicalize().unwrap(), to.canonicalize().unwrap());
    let (f, t): (Vec<Component>, Vec<Component>) = (from.components().collect(), to.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out: PathBuf = f[common..].iter().map(|_| "..").collect();
    out.extend(&t[common..]);
    out
}
