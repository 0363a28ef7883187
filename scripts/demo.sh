#!/usr/bin/env bash
# The main job: installs what is missing, then runs the whole platform end
# to end on its embedded defaults (`tributary demo`). Extra arguments go to
# `tributary demo`, e.g. `./scripts/demo.sh --duration 2m --rate 80`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"
# Build first, with cargo's progress on screen: the first build compiles
# DataFusion, delta-rs and Kafka's client and takes about 20 minutes on two
# cores; later ones take seconds. The tests (./scripts/test.sh) reuse it.
echo "== building tributary (the first build takes about 20 minutes; later ones are quick)"
cargo build -p tributary
echo "== running tributary demo"
# Built above: cargo only checks that it is fresh.
exec cargo run -q -p tributary -- demo "$@"
