#!/usr/bin/env bash
# Runs bpf-ratelimit and the reference bandwidth plugin side by side and
# writes bench/results/{results.json,results.md,ratio_vs_rtt.svg}, then the
# figures README.md and bench/README.md publish from them (bench/publish.py).
#   sudo ./bench/run.sh [--rates 10M,100M,1G] [--seconds 6] [--pods 100] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench/run.sh: run as root" >&2; exit 1; }
./install.sh --deps-only
cargo build --release --locked --quiet --bin bpf-ratelimit --example bench
triple="$(sed -n 's/^target = "\(.*\)"/\1/p' .cargo/config.toml)"
"target/$triple/release/examples/bench" "$@"
# A run into bench/results/ (the default) republishes the READMEs' figures
# from its files; review and commit them with the results.
case " $* " in
  *" --out "*) case " $* " in *" --out bench/results"*) python3 bench/publish.py ;; esac ;;
  *) python3 bench/publish.py ;;
esac
