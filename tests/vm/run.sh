#!/usr/bin/env bash
# Run CMD... in the project dir inside a VM booting Debian 12's 6.1 kernel over this machine's
# own filesystem (prepare with tests/vm/setup.sh). Exits with CMD's exit code; 125 if the VM
# never reported one (boot failure, timeout).
#   tests/vm/run.sh target/x86_64-unknown-linux-gnu/suite/deps/datapath_test_run-HASH \
#       --test-threads=1
# Env: VMLINUZ (default: from setup.sh), VM_MEMORY (2G), VM_CPUS (2), VM_TIMEOUT (s, 3600),
#      VM_MODULES (extra modules to load, e.g. sch_cake).
set -euo pipefail
(($#)) || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }

PROJECT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${BPF_RATELIMIT_VM_CACHE:-/var/cache/bpf-ratelimit-vm}
VMLINUZ=${VMLINUZ:-$(cat "$CACHE/vmlinuz.path" 2>/dev/null || true)}
[[ -r $VMLINUZ ]] || { echo "no kernel: run tests/vm/setup.sh first" >&2; exit 125; }

# The guest sees the host's / over 9p. /etc /opt /usr /var /tmp are writable overlays whose
# writes are discarded at exit (so tests may install CNI files there); /run is a fresh tmpfs;
# the rest (e.g. the source tree, /root) is read-only. Only target/ writes through (--rwdir),
# so the exchange dir (guest script, exit code) lives there.
mkdir -p "$PROJECT/target"
X=$(mktemp -d "$PROJECT/target/vm-run.XXXXXX")
trap 'rm -rf "$X"' EXIT

{
  echo 'set -u'
  # Debian's kernel builds these as modules. Load them up front instead of relying on
  # on-demand loading at first use, and report them: a missing one is not fatal here,
  # the tests decide what they need.
  # One modprobe for all (each costs ~0.5 s under TCG); one by one only to name failures.
  printf 'mods="%s"\n' "tun veth bridge sch_tbf sch_ingress cls_bpf act_mirred ifb sch_fq_codel \
sch_fq sch_netem sch_prio sch_htb ipip ip_gre vxlan ${VM_MODULES:-}"
  echo 'ok=; bad=
if modprobe -a $mods 2>/dev/null; then ok=$mods; else
  for m in $mods; do if modprobe "$m" 2>/dev/null; then ok="$ok $m"; else bad="$bad $m"; fi; done
fi
echo "vm: kernel $(uname -r); modules loaded:" $ok "; failed:${bad:- none}" >&2'
  # tun needs its device node; the guest /dev is a devtmpfs that may lack it.
  echo '[ -e /dev/net/tun ] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }'
  # bpffs for pins; cgroup2 for cgroup_skb programs (the project finds it via mountinfo).
  echo 'mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf'
  echo 'grep -q " - cgroup2 " /proc/self/mountinfo || { mkdir -p /sys/fs/cgroup; mount -t cgroup2 none /sys/fs/cgroup; }'
  echo 'echo "vm: cgroup2 at $(awk '\''$0 ~ / - cgroup2 / {print $5}'\'' /proc/self/mountinfo | tr "\n" " ")" >&2'
  printf 'export PATH=%q HOME=%q\n' "$PATH" "$HOME"
  printf 'cd %q\n' "$PROJECT"
  # CMD runs in a subshell so its exit (or set -e) cannot skip writing the code back.
  printf '( %s)\n' "$(printf '%q ' "$@")"
  printf 'echo $? > %q/rc; sync\n' "$X"
} > "$X/guest.sh"

# udev must run in the guest (for vng's I/O ports), but its coldplug also loads drivers for
# qemu's stock devices; under TCG kvm's load and the crypto modules' self-tests alone cost
# ~15 s per boot. Block those aliases (an explicit modprobe still works).
NOLOAD=kvm,kvm_amd,kvm_intel,ahci,sr_mod,iTCO_wdt,i6300esb,snd_hda_intel,pcspkr,evdev,psmouse
NOLOAD+=,serio_raw,i2c_i801,lpc_ich,powernow_k8,acpi_cpufreq,crct10dif_pclmul,crc32_pclmul
NOLOAD+=,crc32c_intel,ghash_clmulni_intel,sha512_ssse3,sha256_ssse3,sha1_ssse3,aesni_intel

# TCG: /dev/kvm opens here, but KVM guests hang right after decompression. microvm lacks
# the PCI devices the distro kernel's initramfs expects.
{ { timeout -k 10 "${VM_TIMEOUT:-3600}" \
    vng --disable-kvm --disable-microvm --run "$VMLINUZ" \
        --memory "${VM_MEMORY:-2G}" --cpus "${VM_CPUS:-2}" \
        --rwdir "$PROJECT/target" --cwd "$PROJECT" --append "modprobe.blacklist=$NOLOAD" \
        --exec "sh $X/guest.sh" </dev/null | cat; } 2>&1 1>&3 | cat >&2; } 3>&1 || true
# (The pipes on stdout and stderr matter: qemu reopens /proc/self/fd/1 and 2, which on a
# regular file restarts at offset 0 and overwrites earlier output.)

[[ -s $X/rc ]] || { echo "vm: no exit code came back (boot failed or timed out)" >&2; exit 125; }
exit "$(cat "$X/rc")"
