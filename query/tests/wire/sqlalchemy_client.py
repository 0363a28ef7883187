"""Drives `tributary sql serve` with SQLAlchemy (over psycopg 3) and pandas:
the engine's connect-time queries, the inspector's catalog queries and
`pandas.read_sql`.

Usage: sqlalchemy_client.py <port> <password>. Each check raises on a wrong
answer; the last line printed is "ok <n>" with the number of checks that ran.
"""

import decimal
import sys

import pandas
import sqlalchemy

from checks import check, done

port, password = sys.argv[1], sys.argv[2]

engine = sqlalchemy.create_engine(
    f"postgresql+psycopg://tributary:{password}@127.0.0.1:{port}/lake?sslmode=disable"
)

with engine.connect() as conn:
    # The dialect's connect-time queries ran; a plain query with a bound parameter.
    rows = conn.execute(
        sqlalchemy.text("select id, status from silver.orders where total > :least order by id"),
        {"least": decimal.Decimal("1.00")},
    ).all()
    check("bound parameter", [tuple(r) for r in rows], [(1, "paid"), (2, "pending"), (3, "paid")])

    # The inspector reads pg_catalog: schemas, tables, columns.
    inspector = sqlalchemy.inspect(conn)
    schemas = inspector.get_schema_names()
    check("schemas", {"bronze", "silver", "gold"} <= set(schemas), True)
    check("tables", inspector.get_table_names(schema="silver"), ["orders"])
    check("has table", inspector.has_table("orders", schema="silver"), True)
    columns = inspector.get_columns("orders", schema="silver")
    by_name = {c["name"]: c for c in columns}
    check("columns", list(by_name)[:4], ["id", "status", "total", "created_at"])
    check("column type", type(by_name["id"]["type"]), sqlalchemy.BIGINT)
    check("numeric type", isinstance(by_name["total"]["type"], sqlalchemy.Numeric), True)
    check("primary key", inspector.get_pk_constraint("orders", schema="silver")["constrained_columns"], [])

    # A reflected table, queried through the expression language.
    orders = sqlalchemy.Table("orders", sqlalchemy.MetaData(), schema="silver", autoload_with=conn)
    statement = sqlalchemy.select(sqlalchemy.func.count()).select_from(orders).where(orders.c.status == "paid")
    check("reflected query", conn.execute(statement).scalar(), 2)

# pandas over the engine: a DataFrame with the server's column names and types.
# coerce_float=False keeps numerics as Decimal (pandas turns them into
# floats by default).
frame = pandas.read_sql(
    "select status, count(*), sum(total) from silver.orders group by status order by status",
    engine,
    coerce_float=False,
)
check("frame columns", list(frame.columns), ["status", "count", "sum"])
check("frame rows", frame["count"].tolist(), [2, 1])
check("frame sum", [type(v) for v in frame["sum"]], [decimal.Decimal, decimal.Decimal])
check("frame sum value", frame["sum"].tolist()[0], decimal.Decimal("12.00"))

# A parameterised read_sql: timestamps become datetimes, numerics decimals.
frame = pandas.read_sql(
    sqlalchemy.text("select id, total, created_at from silver.orders where status = :status order by id"),
    engine,
    params={"status": "paid"},
    coerce_float=False,
)
check("typed frame ids", frame["id"].tolist(), [1, 3])
check(
    "datetime dtype",
    (pandas.api.types.is_datetime64_any_dtype(frame["created_at"]), str(frame["created_at"].dt.tz)),
    (True, "UTC"),
)
check(
    "datetime value",
    frame["created_at"].iloc[0],
    pandas.Timestamp("2024-03-01 10:01:00", tz="UTC"),
)
check("decimal values", [type(v) for v in frame["total"]], [decimal.Decimal, decimal.Decimal])

done()
