#!/usr/bin/env bash
# The test suite: installs what is missing, then runs every test of the
# workspace (unit tests and end-to-end tests on real PostgreSQL clusters, the
# tansu broker and Delta tables). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo test --workspace "$@"
