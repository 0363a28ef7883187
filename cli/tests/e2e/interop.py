"""Reads lake tables outside tributary and prints per-table facts as JSON
for the interop test (`interop.rs` beside this file), two ways:

- `deltalake`: the Python `deltalake` package reads the table into Arrow,
  and DuckDB queries that Arrow table;
- `duckdb`: DuckDB reads the current version's Parquet files itself, the
  files and their partition values as the Delta log lists them (through
  `deltalake`'s add actions), so no Delta reader hands DuckDB the rows.

Usage: python3 interop.py <lake root> <layer>.<table> ...

For each table and each way: the Delta version, the row count, and per
column its kind, non-NULL count, distinct count, min, max and an
order-independent fingerprint, plus a fingerprint over whole rows. Values
are rendered to text by the same rules as the DataFusion side of the test
(see `canon` there): integers, decimals, booleans and dates as SQL text,
timestamps as microseconds since the epoch, binary as lowercase hex, floats
rounded to millionths (their shortest text differs between engines: `1e-05`
vs `0.00001`), and NULL as `~` (every value as `=` + its text).
"""

import json
import os
import sys
from urllib.parse import unquote

import duckdb
import pyarrow as pa
from deltalake import DeltaTable


def kind(t: pa.DataType) -> str:
    """The type's family, named the way the Rust side names Arrow types."""
    if pa.types.is_dictionary(t):
        return kind(t.value_type)
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return ("uint" if pa.types.is_unsigned_integer(t) else "int") + str(t.bit_width)
    if pa.types.is_floating(t):
        return "float" + str(t.bit_width)
    if pa.types.is_decimal(t):
        return f"decimal({t.precision},{t.scale})"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "binary"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp_utc" if t.tz in ("UTC", "+00:00", "Etc/UTC") else (
            "timestamp_ntz" if t.tz is None else f"timestamp({t.tz})"
        )
    return f"unsupported({t})"


def canon(column: str, k: str) -> str:
    """DuckDB SQL rendering one value of `column` as canonical text."""
    c = '"' + column.replace('"', '""') + '"'
    if k in ("bool", "date", "string") or k.startswith(("int", "uint", "decimal")):
        text = f"CAST({c} AS VARCHAR)"
    elif k.startswith("float"):
        text = (
            f"CASE WHEN isnan({c}) THEN 'nan' "
            f"WHEN abs({c}) < 1e12 THEN CAST(CAST(round({c} * 1000000) AS BIGINT) AS VARCHAR) "
            f"ELSE CAST({c} > 0 AS VARCHAR) END"
        )
    elif k.startswith("timestamp"):
        text = f"CAST(epoch_us({c}) AS VARCHAR)"
    elif k == "binary":
        text = f"lower(hex({c}))"
    else:
        raise ValueError(f"column {column}: no canonical text for {k}")
    return f"coalesce('=' || {text}, '~')"


def fingerprint(expr: str) -> str:
    """An order-independent digest of `expr` over all rows."""
    return f"md5(string_agg(md5({expr}), ',' ORDER BY md5({expr})))"


def sql_string(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def duck_type(k: str) -> str:
    """The DuckDB type of a column of kind `k`, for a column no file holds."""
    named = {
        "bool": "BOOLEAN",
        "int8": "TINYINT",
        "int16": "SMALLINT",
        "int32": "INTEGER",
        "int64": "BIGINT",
        "uint8": "UTINYINT",
        "uint16": "USMALLINT",
        "uint32": "UINTEGER",
        "uint64": "UBIGINT",
        "float32": "REAL",
        "float64": "DOUBLE",
        "string": "VARCHAR",
        "binary": "BLOB",
        "date": "DATE",
        "timestamp_ntz": "TIMESTAMP",
        "timestamp_utc": "TIMESTAMPTZ",
    }
    if k in named:
        return named[k]
    if k.startswith("decimal"):
        return k.upper()
    raise ValueError(f"no DuckDB type for {k}")


def facts(con, relation: str, kinds: dict) -> dict:
    """The facts of `relation` (SQL), whose columns have `kinds`."""
    out = {"columns": {c: {"kind": k} for c, k in kinds.items()}}
    supported = {c: k for c, k in kinds.items() if not k.startswith("unsupported")}
    rendered = {c: canon(c, k) for c, k in supported.items()}
    row = " || chr(31) || ".join(rendered[c] for c in sorted(rendered)) or "''"
    selects = ["count(*)", fingerprint(row)]
    for c in rendered:
        q = '"' + c.replace('"', '""') + '"'
        selects += [
            f"count({q})",
            f"count(DISTINCT {rendered[c]})",
            f"min({rendered[c]})",
            f"max({rendered[c]})",
            fingerprint(rendered[c]),
        ]
    values = con.execute(f"SELECT {', '.join(selects)} FROM ({relation})").fetchall()[0]
    out["rows"] = values[0]
    out["row_fingerprint"] = values[1]
    for i, c in enumerate(rendered):
        count, distinct, lo, hi, fp = values[2 + 5 * i : 7 + 5 * i]
        out["columns"][c].update(
            {"count": count, "distinct": distinct, "min": lo, "max": hi, "fingerprint": fp}
        )
    return out


def through_arrow(con, dt: DeltaTable) -> dict:
    """deltalake reads the table into Arrow; DuckDB queries the Arrow table."""
    arrow_tbl = dt.to_pyarrow_table()
    con.register("arrow_tbl", arrow_tbl)
    try:
        kinds = {f.name: kind(f.type) for f in arrow_tbl.schema}
        return {"version": dt.version(), **facts(con, "SELECT * FROM arrow_tbl", kinds)}
    finally:
        con.unregister("arrow_tbl")


def through_files(con, dt: DeltaTable, path: str) -> dict:
    """DuckDB reads the Parquet files of the current version: the files and
    partition values of the Delta log's add actions, each column typed as
    the table's schema says (a column no file holds yet reads NULL)."""
    kinds = {f.name: kind(f.type) for f in pa.schema(dt.schema().to_arrow())}
    partitions = dt.metadata().partition_columns
    actions = pa.table(dt.get_add_actions(flatten=True))
    files = [os.path.join(path, unquote(p)) for p in actions.column("path").to_pylist()]
    listed = sorted(os.path.abspath(u.removeprefix("file://")) for u in dt.file_uris())
    if sorted(os.path.abspath(f) for f in files) != listed:
        raise ValueError(f"the log's add actions {files} are not the table's files {listed}")
    if "filename" in kinds:
        raise ValueError("a column named filename hides DuckDB's file name column")
    if not files:
        columns = ", ".join(
            f'CAST(NULL AS {duck_type(k)}) AS "{c}"' for c, k in kinds.items()
        )
        relation = f"SELECT {columns} WHERE false"
        return {"version": dt.version(), "files": 0, **facts(con, relation, kinds)}
    scan = (
        "read_parquet(["
        + ", ".join(sql_string(f) for f in files)
        + "], filename = true, union_by_name = true)"
    )
    in_files = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()}
    con.register(
        "partition_values",
        pa.table(
            {"file": files, **{c: actions.column(f"partition.{c}") for c in partitions}}
        ),
    )
    try:
        columns = []
        for c, k in kinds.items():
            q = '"' + c.replace('"', '""') + '"'
            if c in partitions:
                columns.append(f"CAST(p.{q} AS {duck_type(k)}) AS {q}")
            elif c in in_files:
                columns.append(f"f.{q}")
            else:
                columns.append(f"CAST(NULL AS {duck_type(k)}) AS {q}")
        relation = (
            f"SELECT {', '.join(columns)} FROM {scan} f "
            "JOIN partition_values p ON f.filename = p.file"
        )
        return {"version": dt.version(), "files": len(files), **facts(con, relation, kinds)}
    finally:
        con.unregister("partition_values")


def describe(con, root: str, name: str) -> dict:
    layer, table = name.split(".", 1)
    path = f"{root.rstrip('/')}/{layer}/{table}"
    try:
        dt = DeltaTable(path)
    except Exception as e:  # noqa: BLE001 - reported per table to the test
        err = {"error": f"does not open in deltalake: {type(e).__name__}: {e}"}
        return {"deltalake": err, "duckdb": err}
    out = {}
    for way, read in [
        ("deltalake", lambda: through_arrow(con, dt)),
        ("duckdb", lambda: through_files(con, dt, path)),
    ]:
        try:
            out[way] = read()
        except Exception as e:  # noqa: BLE001 - reported per table to the test
            out[way] = {"error": f"{way} failed: {type(e).__name__}: {e}"}
    return out


def main() -> None:
    root, names = sys.argv[1], sys.argv[2:]
    con = duckdb.connect()
    tables = {}
    for name in names:
        tables[name] = describe(con, root, name)
    json.dump(
        {
            "deltalake": __import__("deltalake").__version__,
            "duckdb": duckdb.__version__,
            "pyarrow": pa.__version__,
            "tables": tables,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
