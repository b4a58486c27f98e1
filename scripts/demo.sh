#!/usr/bin/env bash
# Build Constellation and run the live failover demo on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --bin constellation
exec "${CARGO_TARGET_DIR:-target}/debug/constellation" demo "$@"
