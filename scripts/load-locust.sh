#!/usr/bin/env bash
# The storefront journey (scripts/locust/storefront.py) with Locust, at a
# constant arrival rate: USERS journeys a second for DURATION, headless,
# against the order API at URL. Installs Locust from PyPI into
# ~/.cache/tributary/locust-venv on first use. Prints Locust's summary and
# leaves its CSVs in OUT (default /tmp/tributary-locust).
#
#   scripts/load-locust.sh [URL] [USERS] [DURATION]
#   scripts/load-locust.sh http://127.0.0.1:8088 50 60s
set -euo pipefail
cd "$(dirname "$0")/.."
URL="${1:-http://127.0.0.1:8088}"
USERS="${2:-20}"
DURATION="${3:-60s}"
OUT="${OUT:-/tmp/tributary-locust}"
VENV="$HOME/.cache/tributary/locust-venv"
if [ ! -x "$VENV/bin/locust" ]; then
  echo "[load-locust] installing Locust into $VENV (once)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet locust
fi
mkdir -p "$OUT"
echo "[load-locust] $USERS journeys/s for $DURATION against $URL; CSVs in $OUT"
exec "$VENV/bin/locust" -f scripts/locust/storefront.py --headless \
  --host "$URL" -u "$USERS" -r "$USERS" -t "$DURATION" \
  --csv "$OUT/storefront" --only-summary
