#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 60) from the committed seeds; prints exec counts.
# Usage: gateway/fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
for t in client_hello proxy_protocol route_name; do
  mkdir -p "fuzz/corpus/$t"
  RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$secs" -max_len=20000 -print_final_stats=1 2>&1 | \
    grep -E 'stat::number_of_executed_units|stat::peak_rss|Done|ERROR|panicked' | sed "s/^/$t: /"
done
