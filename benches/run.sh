#!/usr/bin/env bash
# Benchmarks gatehouse against nginx and HAProxy on this machine; writes benches/RESULTS.md and
# benches/results.json. Usage: ./benches/run.sh [--quick] [--rounds N] [--only K1,H1]
# Installs what it needs from Debian (and oha from crates.io for the latency workload).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v nginx >/dev/null || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null   # no service starts
  $SUDO chmod +x /usr/sbin/policy-rc.d
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi
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
echo "== cargo build --release -p gatehouse-cli"
cargo build --release -q -p gatehouse-cli
# The harness itself runs on the load CPU; it pins each proxy to the other one.
exec taskset -c 0 python3 benches/harness.py "${oha[@]}" "$@"
