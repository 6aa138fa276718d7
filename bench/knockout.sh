#!/usr/bin/env bash
# What each part of the datapath costs on a busy node (issue 25). Builds
# bpf-ratelimit once per variant, with one part turned into a pass-through
# (build.rs: BRL_BPF_KNOCKOUT; ebpf/shaper.bpf.c, "Knock-outs"), into its
# own directory, then runs the bench's busy node (ours beside the reference,
# the same pods, in the same run) with each build in turn, ROUNDS times,
# the variants' order rotating each round so that the machine's drift
# spreads over all of them. A run into bench/results/knockout (the
# default) republishes bench/README.md's knock-out table (bench/publish.py).
#   sudo bench/knockout.sh [--busy 40x50M] [--rounds 3] [--out DIR] [VARIANT...]
# VARIANT: none (the default build) or a part: cgroup_egress,
# cgroup_ingress, sock_ops, window_clamp, guard, door; default: all seven.
# A knocked-out build does not hold the limits: these figures say what a
# part costs, not what the plugin does. Writes DIR/VARIANT-ROUND/results.*.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench/knockout.sh: run as root" >&2; exit 1; }
busy=40x50M rounds=3 out=bench/results/knockout variants=()
while (($#)); do
  case $1 in
    --busy) busy=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -*) echo "bench/knockout.sh: unknown option $1" >&2; exit 2 ;;
    *) variants+=("$1"); shift ;;
  esac
done
((${#variants[@]})) || variants=(none cgroup_egress cgroup_ingress sock_ops window_clamp guard door)
./install.sh --deps-only
triple="$(sed -n 's/^target = "\(.*\)"/\1/p' .cargo/config.toml)"
# Each variant's build in a target dir of its own kind, so the default
# target keeps the default build.
builds=target/knockout
for v in "${variants[@]}"; do
  knock=$v; [ "$v" = none ] && knock=
  echo "==> building variant $v"
  BRL_BPF_KNOCKOUT=$knock CARGO_TARGET_DIR=$builds cargo build --release --locked --quiet --bin bpf-ratelimit --example bench
  mkdir -p "$builds/variants/$v/examples"
  cp "$builds/$triple/release/bpf-ratelimit" "$builds/variants/$v/bpf-ratelimit"
  cp "$builds/$triple/release/examples/bench" "$builds/variants/$v/examples/bench"
done
mkdir -p "$out"
n=${#variants[@]}
for ((r = 1; r <= rounds; r++)); do
  for ((i = 0; i < n; i++)); do
    v=${variants[$(((i + r - 1) % n))]}
    echo "==> round $r: variant $v"
    "$builds/variants/$v/examples/bench" --only busynode --rows ours --busy "$busy" --out "$out/$v-$r"
    echo "BRL_BPF_KNOCKOUT=${v/none/} (round $r of $rounds; bench/knockout.sh --busy $busy)" > "$out/$v-$r/knockout.txt"
  done
done
case $out in bench/results/knockout) python3 bench/publish.py ;; esac
