#!/usr/bin/env bash
# Prepare this (Debian 12) machine to boot Debian's 6.1 kernel in a VM over its own
# filesystem (see tests/vm/run.sh). Idempotent; run as root. Prints the vmlinuz path and
# writes it to $CACHE/vmlinuz.path, which run.sh reads.
set -euo pipefail

CACHE=${BPF_RATELIMIT_VM_CACHE:-/var/cache/bpf-ratelimit-vm}
mkdir -p "$CACHE"

# qemu runs the guest; busybox-static builds virtme-ng's initramfs (Debian's kernel has
# virtio/9p as modules, so they must be loaded before the root fs is mounted); kmod gives
# depmod/modprobe, which this host image lacks; udev's udevd makes the guest's
# /dev/virtio-ports/virtme.* links, without which vng shows no command output and loses the
# exit code. iperf3 is for throughput checks inside.
# Wait for a concurrent apt/dpkg (e.g. install.sh) rather than failing on its lock.
APT=(apt-get -o DPkg::Lock::Timeout=900)
need=()
for p in qemu-system-x86 busybox-static kmod udev iperf3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
done
if ((${#need[@]})); then
  "${APT[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq "${need[@]}" >/dev/null
fi

# virtme-ng (vng) is not packaged in Debian 12; it comes from PyPI.
# A plain Debian has no pip, and its system Python refuses installs into it
# (PEP 668) unless told to.
if ! command -v vng >/dev/null; then
  python3 -m pip --version >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq python3-pip >/dev/null
  python3 -m pip install -q --root-user-action=ignore virtme-ng 2>/dev/null \
    || python3 -m pip install -q --root-user-action=ignore --break-system-packages virtme-ng
  command -v vng >/dev/null || { echo "virtme-ng installed, but vng is not on PATH" >&2; exit 1; }
fi

# Newest Debian 12 generic 6.1 kernel. apt-cache may be empty before the first update.
pick() { apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' \
           | awk '{print $1}' | sort -V | tail -1; }
pkg=$(pick)
[[ -n $pkg ]] || { "${APT[@]}" update -qq; pkg=$(pick); }
[[ -n $pkg ]] || { echo "no linux-image-6.1.0-*-amd64-unsigned in apt" >&2; exit 1; }
ver=${pkg#linux-image-}; ver=${ver%-unsigned}          # e.g. 6.1.0-57-amd64

root="$CACHE/$ver"
if [[ ! -e $root/boot/vmlinuz-$ver || ! -e /lib/modules/$ver/modules.dep ]]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get -o APT::Sandbox::User=root download -qq "$pkg")
  rm -rf "$root"; dpkg-deb -x "$tmp"/"$pkg"_*.deb "$root"
  # The guest's root is this machine's /, so its modules go to /lib/modules/$ver. They are
  # moved, not copied: vng takes a lib/modules beside the kernel image over the host's, and
  # then links to it from inside the guest, where /var/cache is hidden under a tmpfs.
  rm -rf "/lib/modules/$ver"; mkdir -p /lib/modules
  mv "$root/lib/modules/$ver" "/lib/modules/$ver"
  rm -rf "$root/lib"
  depmod -a "$ver"
fi

echo "$root/boot/vmlinuz-$ver" > "$CACHE/vmlinuz.path"
echo "$root/boot/vmlinuz-$ver"
