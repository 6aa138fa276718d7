#!/usr/bin/env bash
# Provisions one node of the Vagrant cluster (run by Vagrant as root; the
# environment comes from the Vagrantfile). The containerd config, the CNI
# conflist and the CNI bin dir come from deploy/node-setup.sh, the same steps
# the containerd e2e test (tests/containerd_e2e.rs) runs against its private
# containerd.
set -euxo pipefail
: "${ROLE:?}" "${NODE_IP:?}" "${POD_SUBNET:?}" "${CLUSTER_CIDR:?}" "${CONTROL_PLANE_IP:?}" "${TOKEN:?}"
ROUTES="${ROUTES:-}"
REPO=/bpf-ratelimit
K8S_MINOR=v1.30   # supports containerd 1.6 (Debian 12's)
export DEBIAN_FRONTEND=noninteractive

# --- kernel and OS prerequisites for kubeadm and a bridge CNI
[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || { echo "this node does not boot with cgroup v2" >&2; exit 1; }
swapoff -a
sed -i '/\sswap\s/s/^/#/' /etc/fstab
modprobe br_netfilter
echo br_netfilter >/etc/modules-load.d/k8s.conf
printf 'net.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\n' >/etc/sysctl.d/90-k8s.conf
sysctl --system >/dev/null
apt-get update -qq
apt-get install -y -qq curl gpg ca-certificates iptables conntrack socat jq >/dev/null

# --- containerd, runc, containernetworking-plugins (shared step)
bash "$REPO/deploy/node-setup.sh" packages

# --- kubelet, kubeadm, kubectl
install -d -m 0755 /etc/apt/keyrings
curl -fsSL "https://pkgs.k8s.io/core:/stable:/$K8S_MINOR/deb/Release.key" | gpg --dearmor --yes -o /etc/apt/keyrings/kubernetes.gpg
echo "deb [signed-by=/etc/apt/keyrings/kubernetes.gpg] https://pkgs.k8s.io/core:/stable:/$K8S_MINOR/deb/ /" >/etc/apt/sources.list.d/kubernetes.list
apt-get update -qq
apt-get install -y -qq kubelet kubeadm kubectl >/dev/null
apt-mark hold kubelet kubeadm kubectl
echo "KUBELET_EXTRA_ARGS=--node-ip=$NODE_IP" >/etc/default/kubelet

# --- bpf-ratelimit: build and install with the project's own installer
if ! command -v cargo >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  curl -fsSL https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
export PATH="$HOME/.cargo/bin:$PATH"
CNI_BIN_DIR=/opt/cni/bin "$REPO/install.sh"

# --- node set-up shared with the containerd e2e test
bash "$REPO/deploy/node-setup.sh" cni-bin /opt/cni/bin "$REPO/target/x86_64-unknown-linux-gnu/release/bpf-ratelimit"
mkdir -p /etc/containerd /etc/cni/net.d
ROOT=/var/lib/containerd STATE=/run/containerd SOCKET=/run/containerd/containerd.sock \
  CNI_BIN_DIR=/opt/cni/bin CNI_CONF_DIR=/etc/cni/net.d SANDBOX_IMAGE=registry.k8s.io/pause:3.9 \
  SYSTEMD_CGROUP=true \
  bash "$REPO/deploy/node-setup.sh" containerd-config >/etc/containerd/config.toml
NETWORK_NAME=k8s-pod-network BRIDGE=cni0 SUBNET="$POD_SUBNET" IPMASQ=false LOG_FILE=/var/log/bpf-ratelimit.log LOG_LEVEL=info \
  bash "$REPO/deploy/node-setup.sh" conflist >/etc/cni/net.d/10-bpf-ratelimit.conflist
systemctl restart containerd

# --- pod routing: other nodes' pod subnets via their node IPs; masquerade
# only what leaves the cluster (so pods see each other's real addresses).
cat >/usr/local/sbin/brl-pod-routes <<SCRIPT
#!/bin/sh
for r in $ROUTES; do ip route replace "\${r%=*}" via "\${r#*=}"; done
iptables -t nat -C POSTROUTING -s $CLUSTER_CIDR ! -d $CLUSTER_CIDR -j MASQUERADE 2>/dev/null ||
  iptables -t nat -A POSTROUTING -s $CLUSTER_CIDR ! -d $CLUSTER_CIDR -j MASQUERADE
SCRIPT
chmod +x /usr/local/sbin/brl-pod-routes
cat >/etc/systemd/system/brl-pod-routes.service <<'UNIT'
[Unit]
Description=Routes to the other nodes' pod subnets (bpf-ratelimit Vagrant lab)
After=network-online.target
Wants=network-online.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/brl-pod-routes
RemainAfterExit=yes
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now brl-pod-routes.service

# --- the cluster
if [ "$ROLE" = control-plane ]; then
  kubeadm init --apiserver-advertise-address="$NODE_IP" --pod-network-cidr="$CLUSTER_CIDR" \
    --token "$TOKEN" --token-ttl 0 --node-name "$(hostname)"
  for home in /root /home/vagrant; do
    install -d -m 0700 "$home/.kube"
    install -m 0600 /etc/kubernetes/admin.conf "$home/.kube/config"
  done
  chown -R vagrant: /home/vagrant/.kube
else
  # The control plane may still be coming up when a worker is provisioned.
  for _ in $(seq 120); do
    curl -ksf "https://$CONTROL_PLANE_IP:6443/readyz" >/dev/null && break
    sleep 5
  done
  kubeadm join "$CONTROL_PLANE_IP:6443" --token "$TOKEN" \
    --discovery-token-unsafe-skip-ca-verification --node-name "$(hostname)"
fi
