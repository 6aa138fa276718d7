//! deploy/daemonset.yaml, parsed and checked field by field. The container
//! it describes runs for real in the containerd test (tests/containerd_e2e.rs).

use serde_json::Value;

fn daemonset() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/daemonset.yaml")).unwrap();
    serde_norway::from_str(&text).expect("deploy/daemonset.yaml parses")
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(|s| s.as_str().unwrap()).collect()
}

#[test]
fn daemonset_runs_install_on_every_node_with_no_privilege() {
    let ds = daemonset();
    assert_eq!(ds["apiVersion"], "apps/v1");
    assert_eq!(ds["kind"], "DaemonSet");
    assert_eq!(ds["metadata"]["namespace"], "kube-system");
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in ds["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the selector does not match the pod template's label {k}");
    }
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "an installer must not depend on the pod network");
    assert!(pod["tolerations"].as_array().unwrap().iter().any(|t| t["operator"] == "Exists"), "it must run on every node");
    assert_eq!(pod["automountServiceAccountToken"], false, "it needs no API access");
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["image"], format!("bpf-ratelimit.local/bpf-ratelimit:{}", env!("CARGO_PKG_VERSION")), "deploy/build-image.sh's default name");
    assert_eq!(strings(&c["command"]), ["/usr/local/bin/bpf-ratelimit"], "where deploy/build-image.sh puts the binary");

    // The args are valid install options: the host paths, and --wait.
    let args: Vec<String> = strings(&c["args"]).into_iter().map(String::from).collect();
    assert_eq!(args[0], "install");
    let opts = bpf_ratelimit::install::Options::parse(&args[1..], true).unwrap();
    assert!(opts.wait, "the container must stay up after installing");
    assert!(opts.conflist.is_none() && !opts.replace_bandwidth);

    // Those paths are the mounts of the two hostPath volumes.
    let host_path_of = |mount_path: &std::path::Path| -> String {
        let m = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == mount_path.to_str().unwrap());
        let m = m.unwrap_or_else(|| panic!("nothing is mounted at {}", mount_path.display()));
        assert_ne!(m["readOnly"], true);
        let v = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == m["name"]).unwrap();
        assert_eq!(v["hostPath"]["type"], "DirectoryOrCreate");
        v["hostPath"]["path"].as_str().unwrap().to_string()
    };
    assert_eq!(host_path_of(&opts.bin_dir), "/opt/cni/bin");
    assert_eq!(host_path_of(&opts.conf_dir), "/etc/cni/net.d");
    assert_eq!(pod["volumes"].as_array().unwrap().len(), 2, "no host path beyond the CNI dirs");

    // No privilege beyond root's ownership of the two directories.
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"]["add"].is_null(), "no capability is added");
    assert!(c["resources"]["limits"]["memory"].is_string());
}

/// deploy/build-image.sh puts the binary cargo builds (statically linked,
/// tests/install.rs) into the image, and nothing else: no shared library
/// from the build machine reaches a node. It refuses a dynamic binary.
#[test]
fn the_image_holds_only_the_static_binary() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = std::env::temp_dir().join(format!("brl-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("oci")).unwrap();
    let build = |binary: &str| {
        std::process::Command::new("bash")
            .arg(repo.join("deploy/build-image.sh"))
            .arg(work.join("image.tar"))
            .arg("bpf-ratelimit.local/test:1")
            .arg(binary)
            .output()
            .unwrap()
    };
    let refused = build("/bin/sh");
    assert!(!refused.status.success(), "a dynamically linked binary went into the image");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("dynamically linked"), "{}", String::from_utf8_lossy(&refused.stderr));

    let out = build(env!("CARGO_BIN_EXE_bpf-ratelimit"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tar = |args: &[&str]| {
        let o = std::process::Command::new("tar").args(args).output().unwrap();
        assert!(o.status.success(), "tar {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    tar(&["-xf", work.join("image.tar").to_str().unwrap(), "-C", work.join("oci").to_str().unwrap()]);
    let blob = |digest: &str| work.join("oci/blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let index: Value = serde_json::from_slice(&std::fs::read(work.join("oci/index.json")).unwrap()).unwrap();
    let manifest: Value = serde_json::from_slice(&std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap()).unwrap();
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let files: Vec<String> = tar(&["-tf", layer.to_str().unwrap()]).lines().filter(|l| !l.ends_with('/')).map(String::from).collect();
    assert_eq!(files, ["./usr/local/bin/bpf-ratelimit"], "the image holds more than the binary");
    tar(&["-xf", layer.to_str().unwrap(), "-C", work.to_str().unwrap(), "./usr/local/bin/bpf-ratelimit"]);
    assert_eq!(
        std::fs::read(work.join("usr/local/bin/bpf-ratelimit")).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_bpf-ratelimit")).unwrap(),
        "the image's binary is not the one cargo built"
    );
    std::fs::remove_dir_all(&work).unwrap();
}
