#!/usr/bin/env bash
# The test suite: installs what is missing, then runs every test of the
# workspace (unit tests and end-to-end tests on real PostgreSQL clusters, the
# tansu broker and Delta tables). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The infrastructure code first: half a minute, and no build needed.
./scripts/check-infra.sh
# The same build as ./scripts/demo.sh's (one feature set, see Cargo.toml):
# after the demo, only the test binaries are compiled.
echo "== building and running the tests (a first build takes about 20 minutes on two cores; the end-to-end tests about 12)"
cargo test --workspace "$@"
