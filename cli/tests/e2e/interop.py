"""Opens lake tables with the Python `deltalake` package and queries them in
DuckDB over Arrow, printing per-table facts as JSON for `tests/interop.rs`.

Usage: python3 interop.py <lake root> <layer>.<table> ...

For each table: the Delta version, the row count, and per column its kind,
non-NULL count, distinct count, min, max and an order-independent
fingerprint, plus a fingerprint over whole rows. Values are rendered to text
by the same rules as the DataFusion side of the test (see `canon` there):
integers, decimals, booleans and dates as SQL text, timestamps as
microseconds since the epoch, binary as lowercase hex, floats rounded to
millionths (their shortest text differs between engines: `1e-05` vs
`0.00001`), and NULL as `~` (every value as `=` + its text).
"""

import json
import sys

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


def describe(con, root: str, name: str) -> dict:
    layer, table = name.split(".", 1)
    try:
        dt = DeltaTable(f"{root.rstrip('/')}/{layer}/{table}")
        arrow_tbl = dt.to_pyarrow_table()
    except Exception as e:  # noqa: BLE001 - reported per table to the test
        return {"error": f"does not open in deltalake: {type(e).__name__}: {e}"}
    con.register("arrow_tbl", arrow_tbl)
    try:
        out = {"version": dt.version(), "columns": {}}
        kinds = {f.name: kind(f.type) for f in arrow_tbl.schema}
        for column, k in kinds.items():
            out["columns"][column] = {"kind": k}
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
        values = con.execute(f"SELECT {', '.join(selects)} FROM arrow_tbl").fetchall()[0]
        out["rows"] = values[0]
        out["row_fingerprint"] = values[1]
        for i, c in enumerate(rendered):
            count, distinct, lo, hi, fp = values[2 + 5 * i : 7 + 5 * i]
            out["columns"][c].update(
                {"count": count, "distinct": distinct, "min": lo, "max": hi, "fingerprint": fp}
            )
        return out
    finally:
        con.unregister("arrow_tbl")


def main() -> None:
    root, names = sys.argv[1], sys.argv[2:]
    con = duckdb.connect()
    tables = {}
    for name in names:
        try:
            tables[name] = describe(con, root, name)
        except Exception as e:  # noqa: BLE001 - reported per table to the test
            tables[name] = {"error": f"DuckDB over Arrow failed: {type(e).__name__}: {e}"}
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
