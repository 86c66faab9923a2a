#!/usr/bin/env bash
# Soak: mixed load through one gatehouse, sampled, then back to baseline (benches/soak.py).
# Usage: ./benches/soak.sh [--minutes 60] [--warmup 1] [--interval 5] [--out DIR] [--record] [--only LOADS]
# Installs what it needs (benches/deps.sh from Debian; matplotlib from PyPI for the plot).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/deps.sh
python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install -q matplotlib || echo "matplotlib unavailable: no plot"
echo "== cargo build --release -p gatehouse-cli"
cargo build --release -q -p gatehouse-cli
exec python3 benches/soak.py --gatehouse target/release/gatehouse "$@"
