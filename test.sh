#!/usr/bin/env bash
# The whole test suite, as root: every test on this host's kernel (but
# tests/kernels.rs, which is the VM stage's: Cargo.toml), then the
# LTS-kernel stage (Debian 12's 6.1 in a VM, tests/vm/suite.sh). Both run
# even when the first fails; the exit code is non-zero if either failed.
set -uo pipefail
cd "$(dirname "$0")"
rc=0
# One retry ledger per run (tests/common/retries.rs): every test binary of
# this run counts its repeats against the same budget.
BRL_TEST_RUN="${BRL_TEST_RUN:-$(date +%Y%m%d%H%M%S)-$$}"
export BRL_TEST_RUN
# --nocapture: the traffic tests print configured vs measured rates.
# --no-fail-fast: one failing test binary does not hide the others.
cargo test --profile suite --locked --no-fail-fast -- --test-threads=1 --nocapture || rc=$?
echo "==> the kernel-6.1 stage (tests/vm/suite.sh)"
tests/vm/suite.sh || rc=$((rc ? rc : $?))
exit "$rc"
