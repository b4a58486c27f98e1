#!/usr/bin/env bash
# Installs what building and testing Constellation needs on a fresh Debian machine:
# cmake (Pingora's zlib-ng build), a C compiler, iptables (partition tests), pebble (the
# ACME CA of the tests), and checks
# for the Rust toolchain; starts the Docker engine when it is installed but stopped.
# Idempotent: does nothing when everything is present.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
# The partition tests cut loopback traffic with iptables (they need root, as CI has).
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# The Docker suites import a test image from Debian's static busybox (no registry here).
[ -x /bin/busybox ] || need+=(busybox-static)
# The ACME tests run Let's Encrypt's Pebble and pebble-challtestsrv as the CA.
command -v pebble >/dev/null 2>&1 || need+=(pebble)
# The Redis Sentinel tests run real servers and sentinels (redis-cli comes with redis-server).
command -v redis-server >/dev/null 2>&1 || need+=(redis-server); command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
# The WARP egress tests use microsocks and tinyproxy as the gateway's SOCKS5 and HTTP proxies.
command -v microsocks >/dev/null 2>&1 || need+=(microsocks)
command -v tinyproxy >/dev/null 2>&1 || need+=(tinyproxy-bin)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: cargo not found; install Rust (https://rustup.rs) and re-run" >&2
    exit 1
  fi
fi
# The Docker suites need a running engine; start it when it is installed but stopped.
if command -v docker >/dev/null 2>&1 && ! docker version --format '{{.Server.APIVersion}}' >/dev/null 2>&1; then
  if command -v dockerd >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    echo "setup: starting the Docker engine" >&2
    (service docker start >/dev/null 2>&1 || (nohup dockerd >/var/log/dockerd.log 2>&1 &)) || true
    for _ in $(seq 1 30); do
      docker version --format '{{.Server.APIVersion}}' >/dev/null 2>&1 && break
      sleep 1
    done
  fi
fi
