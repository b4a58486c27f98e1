#!/usr/bin/env bash
# Build Constellation and run the whole test suite (unit, property, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
