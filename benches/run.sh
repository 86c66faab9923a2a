#!/usr/bin/env bash
# Benchmarks gatehouse against nginx, HAProxy, Caddy and h2o on this machine; writes benches/RESULTS.md and
# benches/results.json. Usage: ./benches/run.sh [--quick] [--rounds N] [--only K1,H1]
# Installs what it needs from Debian (and oha from crates.io for the latency workload).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/deps.sh
oha=()
# oha is only for L1, which --quick skips and --only runs only when it names L1.
only=""; prev=""
for a in "$@"; do [ "$prev" = "--only" ] && only="$a"; prev="$a"; done
if [[ " $* " != *" --quick "* && " $* " != *" --oha "* ]] && { [ -z "$only" ] || [[ "$only" == *L1* ]]; }; then
  if ! command -v oha >/dev/null; then
    echo "== cargo install oha (open-loop latency client, once)"
    cargo install --locked oha >/dev/null 2>&1 || echo "oha unavailable: L1 will be skipped"
  fi
  command -v oha >/dev/null && oha=(--oha "$(command -v oha)")
fi
echo "== cargo build --release -p gatehouse-cli -p gatehouse-bench-tools"
cargo build --release -q -p gatehouse-cli -p gatehouse-bench-tools
# The harness itself runs on the load CPU; it pins each proxy to the other one.
exec taskset -c 0 python3 benches/harness.py "${oha[@]}" "$@"
