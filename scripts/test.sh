#!/usr/bin/env bash
# Installs what the tests need (Debian packages, when missing) and runs every test.
# Usage: ./scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v ssh >/dev/null || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v knotd >/dev/null || need+=(knot)
command -v kdig >/dev/null || need+=(knot-dnsutils)
command -v pebble >/dev/null || need+=(pebble)
command -v wireguard-go >/dev/null || need+=(wireguard-go)
command -v wg >/dev/null || need+=(wireguard-tools)
command -v ip >/dev/null || need+=(iproute2)
command -v python3 >/dev/null || need+=(python3)
command -v cmake >/dev/null || need+=(cmake)   # Pingora's zlib-ng builds with it
command -v protoc >/dev/null || need+=(protobuf-compiler)   # the etcd client's generated code
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)   # ... its imports
command -v etcd >/dev/null || need+=(etcd-server)   # the cluster store's tests
command -v etcdctl >/dev/null || need+=(etcd-client)
[ -x /usr/bin/chromium ] || need+=(chromium)     # the browser test of h2 coalescing
command -v certutil >/dev/null || need+=(libnss3-tools)   # its trust store
command -v unbound >/dev/null || need+=(unbound)   # DNS over TLS for custom domains
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || need+=(libfaketime)   # clock jumps
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)   # a disk that fills or turns read-only
command -v npm >/dev/null || need+=(npm)   # the browser verifier's package (web/)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # Packages must not start their own services (sshd, knot) on install: tests start their own.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

# Docker for the image and compose tests (skipped, saying why, where it cannot run).
./scripts/docker-env.sh

echo "== web/: the browser verifier's own tests (node --test), and dist/ as built from src/"
web_log=$(mktemp)
if (cd web && npm ci --no-audit --no-fund --loglevel=error && node build.mjs --check && node --test test/) > "$web_log" 2>&1; then
  grep -E '^# (tests|pass|fail) ' "$web_log"
  rm -f "$web_log"
else
  cat "$web_log"; echo "web/ tests failed (cd web && npm test)"; exit 1
fi

echo "== cargo build (the end-to-end tests spawn the real binary)"
# The selection `cargo test` builds, so the harness's own build of the binary is a no-op.
# (Not --all-targets: its features unify differently, and a second copy of the tree would
# double the disk a cold build needs.)
cargo build --workspace --bins --tests
echo "== cargo test --workspace"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one result line per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
