#!/usr/bin/env bash
# Runs the gateway on its embedded development defaults (simulated TEE, embedded store, local
# certificates). Installs what the build needs first when missing: cmake (Pingora's zlib-ng)
# and protoc with the protobuf well-known types (the etcd client's generated code).
# Usage: ./scripts/run.sh [gatehouse run arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]} (to build)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
exec cargo run --release -p gatehouse-cli -- run "$@"
