//! deploy/ as kustomize packages it: a base (deploy/base), one overlay per
//! node layout (deploy/overlays), components that change how the metrics
//! are published (deploy/components) and examples combining them
//! (deploy/examples). Each is rendered by the real `kubectl kustomize`,
//! every object is checked against Kubernetes' API types (there is no API
//! server here to validate against), and then field by field: the host
//! paths each distribution's runtime uses, the install container's flags
//! pointing at them, the hardening every overlay keeps, SELinux and the SCC
//! on OpenShift, and the metrics' listener, TLS files and proxy. No overlay
//! runs on its distribution here: docs/deploy.md says what ran where.

mod common;

use std::path::Path;

use common::kustomize::{compose, kustomize, parse, render, repo};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Each overlay with the CNI bin and conf dirs its nodes' runtime uses
/// (sources: docs/deploy.md).
const OVERLAYS: &[(&str, &str, &str)] = &[
    ("kubeadm", "/opt/cni/bin", "/etc/cni/net.d"),
    ("k3s", "/var/lib/rancher/k3s/data/cni", "/var/lib/rancher/k3s/agent/etc/cni/net.d"),
    ("rke2", "/opt/cni/bin", "/etc/cni/net.d"),
    ("openshift", "/var/lib/cni/bin", "/run/multus/cni/net.d"),
    ("gke", "/home/kubernetes/bin", "/etc/cni/net.d"),
];

const COMPONENTS: &[&str] = &["metrics-tls", "kube-rbac-proxy", "selinux-spc"];

fn overlay(name: &str) -> String {
    format!("deploy/overlays/{name}")
}

fn subdirs(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut found = docs.iter().filter(|d| d["kind"] == kind);
    let doc = found.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(found.next().is_none(), "more than one {kind}");
    doc
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(|s| s.as_str().unwrap()).collect()
}

fn pod(docs: &[Value]) -> &Value {
    &kind(docs, "DaemonSet")["spec"]["template"]["spec"]
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["containers"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no container {name}"))
}

/// The volume mounted at `path` (or above it) in container `c`, and the mount.
fn volume_at<'a>(pod: &'a Value, c: &'a Value, path: &Path) -> (&'a Value, &'a Value) {
    let m = c["volumeMounts"].as_array().unwrap().iter().filter(|m| path.starts_with(m["mountPath"].as_str().unwrap()));
    let m = m.max_by_key(|m| m["mountPath"].as_str().unwrap().len()).unwrap_or_else(|| panic!("nothing is mounted at {}", path.display()));
    let v = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == m["name"]);
    (v.unwrap_or_else(|| panic!("no volume {}", m["name"])), m)
}

/// The value after `flag` in `args`.
fn flag<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| *a == flag).map(|i| args[i + 1])
}

/// Through the object's Kubernetes API type and back: a field the API does
/// not have (a typo, a field at the wrong level) is dropped, and a value of
/// the wrong type does not deserialize.
fn through<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: not a valid {}: {e}", doc["kind"]));
    let back = serde_json::to_value(&typed).unwrap();
    if &back != doc {
        panic!(
            "{what}: {} {} has fields the Kubernetes API does not know (they are lost through its type):\nrendered: {}\nAPI type: {}",
            doc["kind"],
            doc["metadata"]["name"],
            serde_json::to_string_pretty(doc).unwrap(),
            serde_json::to_string_pretty(&back).unwrap()
        );
    }
}

fn api_types(docs: &[Value], what: &str) {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, rbac::v1 as rbac};
    for doc in docs {
        match doc["kind"].as_str() {
            Some("ServiceAccount") => through::<core::ServiceAccount>(doc, what),
            Some("ConfigMap") => through::<core::ConfigMap>(doc, what),
            Some("DaemonSet") => through::<apps::DaemonSet>(doc, what),
            Some("ClusterRole") => through::<rbac::ClusterRole>(doc, what),
            Some("ClusterRoleBinding") => through::<rbac::ClusterRoleBinding>(doc, what),
            Some("RoleBinding") => through::<rbac::RoleBinding>(doc, what),
            other => panic!("{what}: unexpected kind {other:?}: add it here with its API type"),
        }
    }
}

/// Every overlay and example renders, alone and with each component, into
/// objects of Kubernetes' API types; the base alone renders too (what the
/// overlays build on).
#[test]
fn every_overlay_example_and_component_renders_into_valid_objects() {
    let expected: Vec<String> = OVERLAYS.iter().map(|(name, ..)| name.to_string()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    assert_eq!(subdirs("deploy/overlays"), expected, "an overlay without paths in OVERLAYS (or the reverse)");
    assert_eq!(subdirs("deploy/components"), { let mut c: Vec<String> = COMPONENTS.iter().map(|c| c.to_string()).collect(); c.sort(); c });
    let mut dirs = vec!["deploy/base".to_string()];
    dirs.extend(subdirs("deploy/overlays").iter().map(|o| overlay(o)));
    dirs.extend(subdirs("deploy/examples").iter().map(|e| format!("deploy/examples/{e}")));
    let mut rendered = 0;
    for dir in &dirs {
        let docs = render(dir);
        api_types(&docs, dir);
        rendered += 1;
        println!("{dir}: {} objects", docs.len());
    }
    for (name, ..) in OVERLAYS {
        for component in COMPONENTS {
            let dir = compose(&format!("{name}-{component}"), &overlay(name), &[&format!("deploy/components/{component}")]);
            let what = format!("{} + {component}", overlay(name));
            let docs = parse(&kustomize(&dir).unwrap_or_else(|e| panic!("{what}: {e}")), &what);
            api_types(&docs, &what);
            std::fs::remove_dir_all(&dir).unwrap();
            rendered += 1;
        }
    }
    println!("{rendered} kustomizations rendered and checked against the Kubernetes 1.33 API types");
}

/// Each overlay mounts its distribution's CNI dirs, and the install
/// container's --bin-dir and --conf-dir land in them; everything else an
/// overlay might drop (the hardening, the loopback metrics) is still there.
#[test]
fn each_overlay_installs_into_its_distributions_cni_dirs() {
    for (name, bin, conf) in OVERLAYS {
        let docs = render(&overlay(name));
        let pod = pod(&docs);
        let c = container(pod, "install");
        let args: Vec<String> = strings(&c["args"]).into_iter().map(String::from).collect();
        let opts = bpf_ratelimit::ops::install::Options::parse(&args[1..], true).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        for (flag_dir, host) in [(&opts.bin_dir, bin), (&opts.conf_dir, conf)] {
            let (v, m) = volume_at(pod, c, flag_dir);
            assert_eq!(v["hostPath"]["path"], *host, "{name}: {} is not the node's {host}", flag_dir.display());
            assert_eq!(v["hostPath"]["type"], "DirectoryOrCreate", "{name}");
            assert_ne!(m["readOnly"], true, "{name}: install writes {}", flag_dir.display());
        }
        let host_paths: Vec<&str> = pod["volumes"].as_array().unwrap().iter().filter_map(|v| v["hostPath"]["path"].as_str()).collect();
        assert_eq!(host_paths, [*bin, *conf, "/sys/fs/bpf", "/run/bpf-ratelimit"], "{name}: host paths beyond the four");
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        assert_eq!(pod["nodeSelector"]["kubernetes.io/arch"], "amd64", "{name}");
        assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux", "{name}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        for c in pod["containers"].as_array().unwrap() {
            assert_eq!(c["securityContext"]["privileged"], false, "{name}: {}", c["name"]);
            assert_eq!(strings(&c["securityContext"]["capabilities"]["drop"]), ["ALL"], "{name}: {}", c["name"]);
        }
        assert_eq!(strings(&container(pod, "metrics")["args"]), ["metrics", "--listen", "127.0.0.1:9637"], "{name}");
        println!("{name}: bin {bin}, conf {conf}");
    }
}

/// SELinux: OpenShift (enforcing on RHCOS) and RKE2 run the pod as spc_t;
/// OpenShift also binds its ServiceAccount to the privileged SCC, without
/// which the pod is not admitted.
#[test]
fn openshift_and_rke2_run_as_spc_t_and_openshift_binds_the_privileged_scc() {
    for (name, ..) in OVERLAYS {
        let docs = render(&overlay(name));
        let selinux = &pod(&docs)["securityContext"]["seLinuxOptions"];
        if ["openshift", "rke2"].contains(name) {
            assert_eq!(selinux["type"], "spc_t", "{name}");
            assert_eq!(selinux["level"], "s0", "{name}");
        } else {
            assert!(selinux.is_null(), "{name}: SELinux options on a layout that did not ask for them");
        }
    }
    let docs = render(&overlay("openshift"));
    let sa = kind(&docs, "ServiceAccount");
    assert_eq!(pod(&docs)["serviceAccountName"], sa["metadata"]["name"]);
    let binding = kind(&docs, "RoleBinding");
    assert_eq!(binding["metadata"]["namespace"], sa["metadata"]["namespace"]);
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], "system:openshift:scc:privileged");
    let subject = &binding["subjects"][0];
    assert_eq!((&subject["kind"], &subject["name"], &subject["namespace"]), (&Value::from("ServiceAccount"), &sa["metadata"]["name"], &sa["metadata"]["namespace"]));
}

/// metrics-tls: HTTPS on the node's port 9637, with the certificate, key
/// and client CA read from the Secret at the paths the flags name; the
/// probe a TCP connect (kubelet has no client certificate).
#[test]
fn metrics_tls_serves_https_from_the_secret_at_the_flags_paths() {
    let docs = render("deploy/examples/kubeadm-metrics-tls");
    let pod = pod(&docs);
    let c = container(pod, "metrics");
    let args = strings(&c["args"]);
    assert_eq!(args[0], "metrics");
    assert_eq!(flag(&args, "--listen"), Some("0.0.0.0:9637"));
    for (f, key) in [("--tls-cert", "tls.crt"), ("--tls-key", "tls.key"), ("--client-ca", "ca.crt")] {
        let file = flag(&args, f).unwrap_or_else(|| panic!("no {f}"));
        assert_eq!(file, format!("/etc/bpf-ratelimit/tls/{key}"));
        let (v, m) = volume_at(pod, c, Path::new(file));
        assert_eq!(v["secret"]["secretName"], "bpf-ratelimit-metrics-tls", "{f} {file} is not read from the Secret");
        assert_eq!(m["readOnly"], true);
        assert!(m["subPath"].is_null(), "a subPath mount never sees the Secret renewed");
        let in_secret = Path::new(file).strip_prefix(m["mountPath"].as_str().unwrap()).unwrap();
        assert_eq!(in_secret, Path::new(key), "{f}: the Secret's key {key} is not at {file}");
    }
    assert!(flag(&args, "--bearer-token-file").is_none());
    assert!(c["livenessProbe"]["httpGet"].is_null(), "kubelet presents no client certificate: an HTTPS probe fails");
    assert_eq!(c["livenessProbe"]["tcpSocket"]["port"], 9637);
    assert!(c["livenessProbe"]["tcpSocket"]["host"].is_null(), "0.0.0.0 answers on the node's address");
    // Only the metrics container sees the key.
    for other in pod["containers"].as_array().unwrap().iter().filter(|o| o["name"] != "metrics") {
        assert!(!other["volumeMounts"].as_array().unwrap().iter().any(|m| m["name"] == "metrics-tls"), "{} mounts the TLS key", other["name"]);
    }
}

/// kube-rbac-proxy: HTTPS on the node's port 9638 in front of the metrics'
/// loopback listener, the API token mounted in the proxy alone, and RBAC
/// for exactly the reviews it makes.
#[test]
fn kube_rbac_proxy_fronts_the_loopback_listener_and_alone_holds_a_token() {
    let docs = render("deploy/examples/kubeadm-kube-rbac-proxy");
    let pod = pod(&docs);
    let metrics = strings(&container(pod, "metrics")["args"]);
    let listen = flag(&metrics, "--listen").unwrap();
    assert_eq!(listen, "127.0.0.1:9637", "the metrics must stay on the loopback behind the proxy");
    let proxy = container(pod, "kube-rbac-proxy");
    assert!(proxy["image"].as_str().unwrap().starts_with("quay.io/brancz/kube-rbac-proxy:v"));
    let args = strings(&proxy["args"]);
    let opt = |name: &str| args.iter().find_map(|a| a.strip_prefix(&format!("--{name}="))).unwrap_or_else(|| panic!("no --{name}"));
    assert_eq!(opt("upstream"), format!("http://{listen}/"));
    let secure = opt("secure-listen-address");
    assert_eq!(secure, "0.0.0.0:9638", "the proxy shares the node's network with the metrics: another port");
    assert_eq!(opt("allow-paths"), "/metrics");
    assert_eq!(proxy["ports"][0]["containerPort"], 9638);
    assert_eq!(proxy["livenessProbe"]["tcpSocket"]["port"], 9638);
    let sc = &proxy["securityContext"];
    assert_eq!((sc["runAsNonRoot"].as_bool(), sc["allowPrivilegeEscalation"].as_bool(), sc["readOnlyRootFilesystem"].as_bool()), (Some(true), Some(false), Some(true)));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    // The token: projected into the proxy only; the pod mounts none by default.
    assert_eq!(pod["automountServiceAccountToken"], false);
    let (v, m) = volume_at(pod, proxy, Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token"));
    assert_eq!(m["readOnly"], true);
    let sources = v["projected"]["sources"].as_array().expect("a projected token volume");
    assert!(sources.iter().any(|s| s["serviceAccountToken"]["path"] == "token"));
    assert!(sources.iter().any(|s| s["configMap"]["name"] == "kube-root-ca.crt"));
    for other in pod["containers"].as_array().unwrap().iter().filter(|o| o["name"] != "kube-rbac-proxy") {
        assert!(!other["volumeMounts"].as_array().unwrap().iter().any(|mm| mm["name"] == m["name"]), "{} holds the API token", other["name"]);
    }
    // RBAC: the proxy's reviews, bound to the pod's ServiceAccount; the
    // reader role for scrapers.
    let sa = kind(&docs, "ServiceAccount");
    let roles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ClusterRole").collect();
    let role = |name: &str| *roles.iter().find(|r| r["metadata"]["name"] == name).unwrap_or_else(|| panic!("no ClusterRole {name}"));
    let binding = kind(&docs, "ClusterRoleBinding");
    let proxy_role = role(binding["roleRef"]["name"].as_str().unwrap());
    let mut granted: Vec<String> = proxy_role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let verbs = strings(&r["verbs"]).join(",");
            strings(&r["resources"]).into_iter().map(move |res| format!("{res}:{verbs}"))
        })
        .collect();
    granted.sort();
    assert_eq!(granted, ["subjectaccessreviews:create", "tokenreviews:create"]);
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["namespace"], sa["metadata"]["namespace"]);
    let reader = role("bpf-ratelimit-metrics-reader");
    assert_eq!(strings(&reader["rules"][0]["nonResourceURLs"]), ["/metrics"]);
    assert_eq!(strings(&reader["rules"][0]["verbs"]), ["get"]);
}
