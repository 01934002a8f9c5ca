#!/usr/bin/env bash
# `make fuzz`: every target in fuzz/ coverage-guided (cargo-fuzz + libFuzzer) for FUZZ_SECS seconds each, from
# the committed seed corpus; new corpus entries go to fuzz/work/ (not committed). A crash stops the run and
# leaves its input in fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ with the fix, so the
# corpus replay in `make test` (tests/fuzz.rs) keeps checking it.
#
# cargo-fuzz needs nightly compiler flags; this machine has one stable toolchain, so RUSTC_BOOTSTRAP=1 lets
# stable accept them (the supported way to use them outside nightly is not available here).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${1:-${FUZZ_SECS:-60}}"
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz from crates.io" >&2
  cargo install cargo-fuzz --locked
fi
cd "$ROOT/fuzz"
export RUSTC_BOOTSTRAP=1
mkdir -p work
for t in $(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^livegate-fuzz$'); do
  mkdir -p "work/$t"
  echo "[fuzz] $t for ${SECS}s" >&2
  log="work/$t.log"
  if ! cargo fuzz run "$t" "work/$t" "corpus/$t" "regressions/$t" -- -max_total_time="$SECS" -rss_limit_mb=1024 \
      -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "[fuzz] $t failed: its input is in fuzz/artifacts/$t/ (copy it to fuzz/regressions/$t/ with the fix)" >&2
    exit 1
  fi
  grep -E "^Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added" "$log" >&2 || true
done
