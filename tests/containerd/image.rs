//! Container images built on this machine, since nothing can be pulled: a
//! root filesystem directory becomes a one-layer OCI image archive (layer
//! tar, config, manifest, index, oci-layout; sha256 digests) that
//! `ctr images import` accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use bpf_ratelimit::testbed::run;
use serde_json::json;

/// Builds the pause image's root: one static binary, `/pause`.
pub fn pause_rootfs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/containerd/pause.c");
    run(Command::new("gcc").args(["-static", "-O2", "-o"]).arg(dir.join("pause")).arg(&source))
        .context("cannot build the static pause binary (is gcc with a static libc installed?)")?;
    Ok(())
}

/// Builds the tools image's root: iperf3 and sleep from this host, with the
/// shared libraries `ldd` says they load, and a world-writable /tmp
/// (iperf3 keeps its buffer in a temporary file).
pub fn tools_rootfs(dir: &Path) -> Result<()> {
    for sub in ["tmp", "bin", "usr/bin", "proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    for (host, inside) in [("/usr/bin/iperf3", "usr/bin/iperf3"), ("/usr/bin/sleep", "bin/sleep")] {
        copy_with_libraries(Path::new(host), &dir.join(inside), dir)?;
    }
    Ok(())
}

fn copy_with_libraries(binary: &Path, dest: &Path, root: &Path) -> Result<()> {
    std::fs::copy(binary, dest).with_context(|| format!("cannot copy {}", binary.display()))?;
    let out = run(Command::new("ldd").arg(binary))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(lib) = path.filter(|p| p.starts_with('/')) else { continue };
        let target = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap())?;
        // std::fs::copy follows symlinks: the image gets the file itself.
        std::fs::copy(lib, &target).with_context(|| format!("cannot copy {lib}"))?;
    }
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().context("sha256sum printed nothing")?;
    if hex.len() != 64 {
        bail!("unexpected sha256sum output {text:?}");
    }
    Ok(hex.to_string())
}

/// sha256 of bytes, as lowercase hex.
pub fn sha256_of(data: &[u8]) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run sha256sum")?;
    child.stdin.take().unwrap().write_all(data)?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or_default();
    if !out.status.success() || hex.len() != 64 {
        bail!("unexpected sha256sum output {text:?}");
    }
    Ok(hex.to_string())
}

/// Moves `file` into the layout's blob store; returns (digest, size).
fn add_blob(layout: &Path, file: &Path) -> Result<(String, u64)> {
    let hex = sha256(file)?;
    let size = std::fs::metadata(file)?.len();
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::rename(file, blobs.join(&hex))?;
    Ok((format!("sha256:{hex}"), size))
}

fn add_json_blob(layout: &Path, work: &Path, value: &serde_json::Value) -> Result<(String, u64)> {
    let file = work.join("blob.json");
    std::fs::write(&file, serde_json::to_vec(value)?)?;
    add_blob(layout, &file)
}

/// Writes an OCI image archive of `rootfs` named `name` (e.g.
/// "brl.local/pause:123") to `archive`, with `entrypoint` as its command.
pub fn build_archive(rootfs: &Path, name: &str, entrypoint: &[&str], work: &Path) -> Result<PathBuf> {
    let layout = work.join("layout");
    std::fs::create_dir_all(&layout)?;
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args(["--sort=name", "--numeric-owner", "--owner=0", "--group=0", "--mtime=@0", "-C"])
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let (layer_digest, layer_size) = add_blob(&layout, &layer)?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/usr/bin:/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = add_json_blob(&layout, work, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = add_json_blob(&layout, work, &manifest)?;
    let tag = name.rsplit_once(':').map(|(_, t)| t).context("image name needs a tag")?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let archive = work.join("image.tar");
    run(Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&archive).arg("."))?;
    Ok(archive)
}
