#!/usr/bin/env bash
# Makes a Docker engine ready for the image and compose tests (tests/tests/docker.rs):
# Debian's docker.io and docker-compose, a running dockerd, and the base image
# debian:bookworm-slim made locally with mmdebstrap (no container registry is reachable).
# Never fails: where docker cannot run, it says why and the docker tests skip with that
# reason (CI sets GATEHOUSE_REQUIRE_DOCKER=1, which turns the skip into a failure).
set -uo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "== docker: installing ${need[*]}"
  $SUDO apt-get update -qq
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || echo "== docker: could not install ${need[*]}"
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

if ! docker info >/dev/null 2>&1; then
  if command -v dockerd >/dev/null; then
    echo "== docker: starting dockerd (log: /tmp/gatehouse-dockerd.log)"
    $SUDO sh -c 'nohup dockerd > /tmp/gatehouse-dockerd.log 2>&1 &'
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  fi
fi
if ! docker info >/dev/null 2>&1; then
  echo "== docker: no engine runs here ($(tail -n 1 /tmp/gatehouse-dockerd.log 2>/dev/null)); the docker tests will skip"
  exit 0
fi

if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
  echo "== docker: making debian:bookworm-slim with mmdebstrap (about 30 s)"
  if ! $SUDO mmdebstrap --quiet --variant=minbase bookworm - 2>/tmp/gatehouse-mmdebstrap.log \
      | docker import - debian:bookworm-slim >/dev/null; then
    echo "== docker: mmdebstrap failed (/tmp/gatehouse-mmdebstrap.log); the docker tests will skip"
  fi
fi
echo "== docker: engine $(docker info --format '{{.ServerVersion}}'), base image ready"
