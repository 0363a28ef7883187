#!/usr/bin/env bash
# The main job: installs what is missing, then runs the whole platform end
# to end on its embedded defaults (`tributary demo`). Extra arguments go to
# `tributary demo`, e.g. `./scripts/demo.sh --duration 2m --rate 80`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"
exec cargo run -q -p tributary -- demo "$@"
