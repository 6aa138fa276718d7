#!/usr/bin/env bash
# Node set-up steps for containerd + bpf-ratelimit, shared by the containerd
# end-to-end test (tests/containerd_e2e.rs, which runs them against a private
# containerd under a temporary directory) and the Vagrant cluster
# (vagrant/provision.sh, which runs them against the node's real paths). Both
# render their containerd config and CNI conflist here, so they cannot drift
# apart.
#
#   node-setup.sh packages
#       apt-get install containerd, runc and containernetworking-plugins (Debian's).
#   node-setup.sh cni-bin DEST_DIR BPF_RATELIMIT_BINARY
#       put bpf-ratelimit and the plugins it is chained after (bridge,
#       host-local and loopback from Debian's /usr/lib/cni) into DEST_DIR;
#       reference plugins already in DEST_DIR are kept.
#   node-setup.sh containerd-config     prints a containerd config.toml
#       ROOT STATE SOCKET                containerd's root, state and gRPC socket
#       CNI_BIN_DIR CNI_CONF_DIR         where the CRI plugin finds CNI binaries and conflists
#       SANDBOX_IMAGE                    the pause image
#       SYSTEMD_CGROUP=true|false        the kubelet's cgroup driver (systemd or cgroupfs)
#       RESTRICT_OOM_SCORE_ADJ=false     true where the node lacks CAP_SYS_RESOURCE
#       RUNC_ROOT=$STATE/runc            runc's state directory
#       OPT_DIR=/opt/containerd          containerd's "opt" plugin directory
#       NETNS_UNDER_STATE=false          true: pod netns mounts under STATE, not /var/run/netns
#   node-setup.sh conflist              prints the chained CNI conflist
#       NETWORK_NAME BRIDGE SUBNET       the bridge network: name, bridge device, pod subnet (CIDR)
#       IPMASQ=false                     the bridge plugin's ipMasq
#       IPAM_DATA_DIR                    host-local's dataDir (default: host-local's own)
#       PIN_ROOT CGROUP_ROOT LOG_FILE    bpf-ratelimit's pinRoot, cgroupRoot, logFile (defaults: the plugin's)
#       LOG_LEVEL                        bpf-ratelimit's logLevel
set -euo pipefail

need() {
  for v in "$@"; do
    if [ -z "${!v:-}" ]; then
      echo "node-setup.sh: $v must be set" >&2
      exit 2
    fi
  done
}

case "${1:-}" in
packages)
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq containerd runc containernetworking-plugins >/dev/null
  ;;

cni-bin)
  dest="${2:?usage: node-setup.sh cni-bin DEST_DIR BPF_RATELIMIT_BINARY}"
  binary="${3:?usage: node-setup.sh cni-bin DEST_DIR BPF_RATELIMIT_BINARY}"
  mkdir -p "$dest"
  for p in bridge host-local loopback; do
    if [ ! -e "$dest/$p" ]; then
      [ -x "/usr/lib/cni/$p" ] || { echo "node-setup.sh: /usr/lib/cni/$p is missing: install containernetworking-plugins" >&2; exit 1; }
      install -m 0755 "/usr/lib/cni/$p" "$dest/$p"
    fi
  done
  install -m 0755 "$binary" "$dest/bpf-ratelimit"
  ;;

containerd-config)
  need ROOT STATE SOCKET CNI_BIN_DIR CNI_CONF_DIR SANDBOX_IMAGE SYSTEMD_CGROUP
  cat <<EOF
# Rendered by deploy/node-setup.sh containerd-config.
version = 2
root = "$ROOT"
state = "$STATE"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$SOCKET"

[ttrpc]
  address = "$SOCKET.ttrpc"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "${OPT_DIR:-/opt/containerd}"

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$SANDBOX_IMAGE"
    restrict_oom_score_adj = ${RESTRICT_OOM_SCORE_ADJ:-false}
    netns_mounts_under_state_dir = ${NETNS_UNDER_STATE:-false}

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$CNI_BIN_DIR"
      conf_dir = "$CNI_CONF_DIR"
      max_conf_num = 1

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = $SYSTEMD_CGROUP
          Root = "${RUNC_ROOT:-$STATE/runc}"
EOF
  ;;

conflist)
  need NETWORK_NAME BRIDGE SUBNET
  command -v jq >/dev/null || { echo "node-setup.sh: jq is missing" >&2; exit 1; }
  jq -n \
    --arg name "$NETWORK_NAME" --arg bridge "$BRIDGE" --arg subnet "$SUBNET" \
    --argjson ipmasq "${IPMASQ:-false}" --arg datadir "${IPAM_DATA_DIR:-}" \
    --arg pinroot "${PIN_ROOT:-}" --arg cgroot "${CGROUP_ROOT:-}" \
    --arg logfile "${LOG_FILE:-}" --arg loglevel "${LOG_LEVEL:-}" '
    def nonempty($k; $v): if $v == "" then {} else {($k): $v} end;
    {
      cniVersion: "1.0.0",
      name: $name,
      plugins: [
        {
          type: "bridge",
          bridge: $bridge,
          isGateway: true,
          ipMasq: $ipmasq,
          ipam: ({
            type: "host-local",
            ranges: [[{subnet: $subnet}]],
            routes: [{dst: "0.0.0.0/0"}]
          } + nonempty("dataDir"; $datadir))
        },
        ({
          type: "bpf-ratelimit",
          capabilities: {
            bandwidth: true,
            cgroupPath: true,
            "io.kubernetes.cri.pod-annotations": true
          }
        } + nonempty("pinRoot"; $pinroot) + nonempty("cgroupRoot"; $cgroot)
          + nonempty("logFile"; $logfile) + nonempty("logLevel"; $loglevel))
      ]
    }'
  ;;

-h|--help|"")
  sed -n '2,32p' "$0"
  ;;

*)
  echo "node-setup.sh: unknown step $1 (try --help)" >&2
  exit 2
  ;;
esac
