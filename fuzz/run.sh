#!/usr/bin/env bash
# Runs every fuzz target (libFuzzer, coverage-guided) for SECONDS each, from the committed
# seeds plus what earlier runs found (fuzz/corpus/<target>), and prints one line per target:
# executions, executions per second, corpus size, peak RSS, and whether it stayed clean.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]     (default: 60 s, every target)
# FUZZ_RUNS=N stops a target after N executions if that comes first (the campaign's bar:
# FUZZ_RUNS=10000000 fuzz/run.sh 600, ten million executions or ten minutes per target).
# A crash leaves its input in fuzz/artifacts/<target>/; replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>   (from the root)
# The same checks run briefly on every `cargo test fuzz_replay` (tests/tests/fuzz_replay.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^gatehouse-fuzz$')
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1   # cargo-fuzz needs -Zsanitizer; stable rustc with bootstrap allows it
echo "== building ${#targets[@]} fuzz targets (once; the first build takes minutes)"
build_log=$(mktemp)
if ! cargo fuzz build -O >"$build_log" 2>&1; then
  tail -40 "$build_log"; echo "fuzz build failed" >&2; exit 1
fi
printf '%-18s %12s %10s %8s %8s  %s\n' target executions exec/s corpus rss_mb result
status=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log=$(mktemp)
  if cargo fuzz run -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$secs" ${FUZZ_RUNS:+-runs=$FUZZ_RUNS} -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    result=clean
  else
    result="FAILED (see fuzz/artifacts/$t/)"
    status=1
    grep -E 'panicked|ERROR|SUMMARY' "$log" | head -5 >&2
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  printf '%-18s %12s %10s %8s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "${rss:-?}" "$result"
  rm -f "$log"
done
exit $status
