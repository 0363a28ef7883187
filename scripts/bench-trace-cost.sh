#!/usr/bin/env bash
# What writing an order's trace into the WAL costs the order transaction.
#
# Runs pgbench side by side, in rounds, on a throwaway PostgreSQL cluster
# (wal_level=logical, the system's initdb): a small order transaction (an
# order row and two lines) as it was before tracing (`plain`), with one
# extra `SELECT 1` (`round trip`), with the trace message as a statement of
# its own (`own statement`), and with the message folded into the first
# statement, as the order API does (`folded`). Prints each one's
# transactions per second and its ratio to `plain`.
#
#   scripts/bench-trace-cost.sh [seconds per run, default 20] [rounds, default 2]
set -euo pipefail
secs=${1:-20}
rounds=${2:-2}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
dir=$(mktemp -d /tmp/trace-cost.XXXXXX)
port=55$((RANDOM % 90 + 10))
cleanup() {
    runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
chown postgres "$dir"
echo "[trace-cost] a throwaway cluster on port $port"
runuser -u postgres -- "$bin/initdb" -D "$dir/data" -A trust >/dev/null
runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -k $dir -c wal_level=logical -c listen_addresses=''" start >/dev/null
psql -q -h "$dir" -p "$port" -U postgres -c \
    "CREATE TABLE o (id bigserial PRIMARY KEY, c bigint, total numeric, created timestamptz DEFAULT now());
     CREATE TABLE i (id bigserial PRIMARY KEY, o bigint, p bigint, q int);"
trace="'{\"traceparent\":\"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\",\"request_id\":\"0b5c9f3e-2f6e-4a8e-9d7c-1a2b3c4d5e6f\",\"requested_us\":1765070000000000}'"
lines="INSERT INTO i (o, p, q) VALUES (currval('o_id_seq'), 1, 2);
INSERT INTO i (o, p, q) VALUES (currval('o_id_seq'), 2, 1);
COMMIT;"
cat >"$dir/plain.sql" <<EOF
BEGIN;
INSERT INTO o (c, total) VALUES (:client_id, 10.5);
$lines
EOF
cat >"$dir/roundtrip.sql" <<EOF
BEGIN;
SELECT 1;
INSERT INTO o (c, total) VALUES (:client_id, 10.5);
$lines
EOF
cat >"$dir/own.sql" <<EOF
BEGIN;
SELECT pg_logical_emit_message(true, 'tributary.trace', $trace::text);
INSERT INTO o (c, total) VALUES (:client_id, 10.5);
$lines
EOF
cat >"$dir/folded.sql" <<EOF
BEGIN;
INSERT INTO o (c, total) SELECT :client_id, 10.5 WHERE pg_logical_emit_message(true, 'tributary.trace', $trace::text) IS NOT NULL;
$lines
EOF
declare -A sum
for r in $(seq "$rounds"); do
    for s in plain roundtrip own folded; do
        tps=$("$bin/pgbench" -n -h "$dir" -p "$port" -U postgres -M prepared -c 4 -j 2 -T "$secs" \
            -f "$dir/$s.sql" postgres 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
        echo "[trace-cost] round $r $s: $tps tps"
        sum[$s]=$(echo "${sum[$s]:-0} + $tps" | bc -l)
    done
done
echo
printf '| variant | tps (mean of %s) | ratio to plain |\n|---|---:|---:|\n' "$rounds"
for s in plain roundtrip own folded; do
    printf '| %s | %.0f | %.2f |\n' "$s" "$(echo "${sum[$s]} / $rounds" | bc -l)" \
        "$(echo "${sum[$s]} / ${sum[plain]}" | bc -l)"
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
