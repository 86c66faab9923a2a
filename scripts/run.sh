#!/usr/bin/env bash
# Runs the gateway on its embedded development defaults (simulated TEE, embedded store, local
# certificates). Installs cmake first when missing: Pingora's zlib-ng needs it to build.
# Usage: ./scripts/run.sh [gatehouse run arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null; then
  echo "== installing: cmake (to build Pingora's zlib-ng)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends cmake >/dev/null
fi
exec cargo run --release -p gatehouse -- run "$@"
