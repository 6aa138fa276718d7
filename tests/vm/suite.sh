#!/usr/bin/env bash
# The suite's LTS-kernel stage: in one VM booting Debian 12's 6.1 kernel (tests/vm/run.sh,
# under TCG), runs the demo and the test binaries that say what a node on 6.1 gets: the
# BPF_PROG_TEST_RUN tests, the CNI verbs, the wire tests, the eBPF-main-CNI tests and the
# 10M/100M rates on a LAN and 10 ms away (tests/kernels.rs). Fails if any of them fails.
# Run after the suite's build (it reuses its binaries); as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
tests/vm/setup.sh >/dev/null

# The test binaries cargo built for the suite, by name.
declare -A bin
while read -r name exe; do bin[$name]=$exe; done < <(
  cargo test --profile suite --locked --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .executable != null and .target.kind[0] == "test")
           | "\(.target.name) \(.executable)"')
plugin=$(cargo build --profile suite --locked --message-format=json 2>/dev/null |
  jq -r 'select(.reason == "compiler-artifact" and .executable != null and .target.name == "bpf-ratelimit") | .executable')
for t in datapath_test_run cni_plugin wire main_cni kernels; do
  [[ -x ${bin[$t]:-} ]] || { echo "vm suite: no test binary for $t" >&2; exit 1; }
done

guest=target/vm-suite-guest.sh
{
  echo 'failed=""'
  echo 'run() { echo "==> kernel $(uname -r): $*"; "$@" || failed="$failed
  $*"; }'
  printf 'run %q demo --rate 10M\n' "$plugin"
  printf 'run %q --test-threads=1\n' "${bin[datapath_test_run]}"
  printf 'run %q --test-threads=1\n' "${bin[cni_plugin]}"
  printf 'run %q --test-threads=1 --nocapture\n' "${bin[wire]}"
  # The fragment matrix (32 transfers) stays on the host; the rest runs here.
  printf 'run %q --test-threads=1 --nocapture --skip fragmented\n' "${bin[main_cni]}"
  printf 'run %q --test-threads=1 --nocapture\n' "${bin[kernels]}"
  echo 'if [ -n "$failed" ]; then echo "FAILED on kernel $(uname -r):$failed"; exit 1; fi'
  echo 'echo "kernel $(uname -r): every stage passed"'
} > "$guest"
exec tests/vm/run.sh bash "$guest"
