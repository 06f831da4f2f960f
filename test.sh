#!/usr/bin/env bash
# Quick start, part 2: the full test suite. Run as root on Debian: the
# kernel tests create (and always remove) their own network namespaces.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/deps.sh
# One profile for everything (tests, lab, benchmarks), so CI compiles once.
cargo test --release --workspace --no-fail-fast "$@"
# The pure tier must need no privilege (ARCHITECTURE.md, "Test tiers").
scripts/test-pure.sh
