#!/usr/bin/env bash
# Installs bpf-ratelimit on a Debian machine:
#   1. the apt packages it builds and tests with (clang, libbpf-dev, bpftool, iperf3, …;
#      containerd, runc, containernetworking-plugins, gcc and protoc for the containerd e2e test;
#      kubectl to render deploy/),
#   2. a bpffs mount at /sys/fs/bpf if there is none,
#   3. a release build (statically linked, so it runs on any node's libc), installed by
#      `bpf-ratelimit install`: the binary goes to
#      $CNI_BIN_DIR (default /opt/cni/bin), and the plugin is chained into the
#      conflist the runtime loads first in $CNI_CONF_DIR (default /etc/cni/net.d);
#      with no CNI config there yet, only the binary is placed and the snippet printed.
#
#   sudo ./install.sh             install
#   sudo ./install.sh --demo      install, then shape a throwaway pod and print configured vs measured rate
#   sudo ./install.sh --deps-only only the apt packages and the bpffs mount (used by .ci/run)
set -euo pipefail
cd "$(dirname "$0")"

DEMO=0
DEPS_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --demo) DEMO=1 ;;
    --deps-only) DEPS_ONLY=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo ./install.sh): it installs packages and loads eBPF programs" >&2
  exit 1
fi

PACKAGES=(clang llvm libbpf-dev linux-libc-dev bpftool iproute2 iperf3 iputils-ping jq
  # tests/workloads.rs: tests/tools/podload.py makes request/response and raw-socket traffic.
  python3
  # tests/containerd_e2e.rs and bench/: a private containerd with runc and the reference CNI plugins,
  # gcc + libc6-dev for its static pause binary, protoc for the CRI client's build script.
  containerd runc containernetworking-plugins gcc libc6-dev protobuf-compiler
  # deploy/build-image.sh checks with readelf that the binary is static.
  binutils
  # tests/metrics_auth.rs makes its CA, server and client certificates with the openssl CLI.
  openssl)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The tests render deploy/ with `kubectl kustomize`, which needs kubectl 1.21 or later (kustomize
# components): Debian's own kubernetes-client (1.20) is too old. The "kubectl" package comes from the
# Kubernetes or Google Cloud apt repository (the project's machine image has it). It is installed apart
# from the list above, so that a machine without that repository still gets the rest; the plugin
# itself does not need it, so only --deps-only (the tests' set-up) stops without it.
if ! command -v kubectl >/dev/null; then
  echo "==> installing kubectl"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq kubectl >/dev/null || true
fi
if ! kubectl kustomize deploy/overlays/kubeadm >/dev/null; then
  echo "install.sh: kubectl cannot render deploy/overlays/kubeadm: install kubectl 1.21 or later (apt package kubectl from the Kubernetes apt repository); the tests need it" >&2
  [ "$DEPS_ONLY" = 1 ] && exit 1
fi

if ! mountpoint -q /sys/fs/bpf; then
  echo "==> mounting bpffs at /sys/fs/bpf"
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
fi

[ "$DEPS_ONLY" = 1 ] && exit 0

if ! command -v cargo >/dev/null; then
  echo "install.sh: cargo is not on PATH. Install a stable Rust toolchain (rustup) and run again," >&2
  echo "            keeping your PATH: sudo env PATH=\"\$PATH\" ./install.sh" >&2
  exit 1
fi

echo "==> building (release, statically linked: see .cargo/config.toml)"
cargo build --release --locked --quiet
# .cargo/config.toml names the target, so the binary is under target/<triple>/.
TRIPLE="$(sed -n 's/^target = "\(.*\)"/\1/p' .cargo/config.toml)"
BIN="target/$TRIPLE/release/bpf-ratelimit"

CNI_BIN_DIR="${CNI_BIN_DIR:-/opt/cni/bin}"
CNI_CONF_DIR="${CNI_CONF_DIR:-/etc/cni/net.d}"
if compgen -G "$CNI_CONF_DIR/*.conf" >/dev/null || compgen -G "$CNI_CONF_DIR/*.conflist" >/dev/null \
   || compgen -G "$CNI_CONF_DIR/*.json" >/dev/null; then
  echo "==> bpf-ratelimit install (into $CNI_BIN_DIR and the first config in $CNI_CONF_DIR)"
  "$BIN" install --bin-dir "$CNI_BIN_DIR" --conf-dir "$CNI_CONF_DIR"
else
  "$BIN" install --bin-dir "$CNI_BIN_DIR" --binary-only
  cat <<SNIPPET

No CNI config in $CNI_CONF_DIR yet. Once your network plugin has written its
conflist, run: $CNI_BIN_DIR/bpf-ratelimit install --bin-dir $CNI_BIN_DIR --conf-dir $CNI_CONF_DIR
or append this to its "plugins" list, after the main plugin (see conflist/):

    {
      "type": "bpf-ratelimit",
      "capabilities": {
        "bandwidth": true,
        "cgroupPath": true,
        "io.kubernetes.cri.pod-annotations": true
      }
    }
SNIPPET
fi
echo "==> $CNI_BIN_DIR/bpf-ratelimit: $("$CNI_BIN_DIR/bpf-ratelimit" version)"
echo "Annotate pods, e.g. kubernetes.io/ingress-bandwidth: 10M"

if [ "$DEMO" = 1 ]; then
  echo
  echo "==> demo: a throwaway pod limited to 10M in both directions"
  "$CNI_BIN_DIR/bpf-ratelimit" demo --rate 10M
fi
