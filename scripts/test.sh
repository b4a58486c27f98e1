#!/usr/bin/env bash
# Build Constellation and run the whole test suite (unit, property, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# Benchmarks are programs (harness = false): clippy compiles them, `cargo bench` runs them.
cargo test --workspace --lib --bins --tests "$@"
cargo test --workspace --doc
