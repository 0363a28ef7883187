# Runs the SSB queries on DuckDB over the Parquet files of the Delta tables.
# Reads a JSON request on stdin, writes a JSON answer on stdout.
import json
import sys
import time

try:
    import duckdb
except ImportError as e:
    sys.stderr.write(f"cannot import duckdb ({e}): run scripts/bootstrap.sh or pip install duckdb\n")
    sys.exit(3)


def cell(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def quote(text):
    return "'" + text.replace("'", "''") + "'"


request = json.load(sys.stdin)
con = duckdb.connect()
for table, files in request["tables"].items():
    listing = ", ".join(quote(f) for f in files)
    con.execute(f"create view {table} as select * from read_parquet([{listing}])")

results = []
for name, sql in request["queries"]:
    rows = [[cell(v) for v in row] for row in con.execute(sql).fetchall()]
    times = []
    for _ in range(request["runs"]):
        started = time.perf_counter()
        con.execute(sql).fetchall()
        times.append(time.perf_counter() - started)
    results.append({"name": name, "seconds": times, "rows": rows})

json.dump({"version": duckdb.__version__, "results": results}, sys.stdout)
