"""Drives `tributary sql serve` with psycopg 3, a real client library.

Usage: client.py <port> <password>. Each check raises on a wrong answer;
the last line printed is "ok <n>" with the number of checks that ran.
"""

import datetime
import decimal
import sys
import threading
import time

import psycopg

from checks import check, done

port, password = sys.argv[1], sys.argv[2]
dsn = f"host=127.0.0.1 port={port} user=tributary password={password} dbname=lake sslmode=disable"

with psycopg.connect(dsn) as conn:
    # Simple query, with the types psycopg builds from the row description.
    row = conn.execute(
        "select id, status, total, created_at, _shard from silver.orders where id = 1"
    ).fetchone()
    check("types", [type(v) for v in row], [int, str, decimal.Decimal, datetime.datetime, int])
    check("decimal", row[2], decimal.Decimal("10.50"))
    check(
        "timestamptz",
        row[3],
        datetime.datetime(2024, 3, 1, 10, 1, tzinfo=datetime.timezone.utc),
    )

    # Extended protocol with parameters ($1, $2 from %s).
    rows = conn.execute(
        "select id from silver.orders where status = %s and total > %s order by id",
        ("paid", decimal.Decimal("1.00")),
    ).fetchall()
    check("parameters", rows, [(1,), (3,)])
    rows = conn.execute("select id from orders where id = %s", (2,)).fetchall()
    check("int parameter", rows, [(2,)])
    check("null parameter", conn.execute("select %s::bigint is null", (None,)).fetchone(), (True,))

    # A named prepared statement, executed three times with new values.
    for wanted in (1, 2, 3):
        got = conn.execute(
            "select status from orders where id = %s", (wanted,), prepare=True
        ).fetchone()
        check(f"prepared {wanted}", got, ({1: "paid", 2: "pending", 3: "paid"}[wanted],))

    # Binary results.
    with conn.cursor(binary=True) as cur:
        cur.execute("select id, total, status, created_at, true from orders where id = 1")
        row = cur.fetchone()
        check("binary", row[:3], (1, decimal.Decimal("10.50"), "paid"))
        check("binary ts", row[3].isoformat(), "2024-03-01T10:01:00+00:00")
        check("binary bool", row[4], True)

    # A bad query: an error with a message; the connection goes on.
    try:
        conn.execute("select nope from orders")
        raise AssertionError("bad query did not fail")
    except psycopg.errors.Error as e:
        check("error names the column", "nope" in str(e), True)
    conn.rollback()
    check("after error", conn.execute("select count(*) from orders").fetchone(), (3,))

    # Column names as PostgreSQL gives them.
    cur = conn.execute("select count(*), max(total), 42, 'x'::text, status as s from orders group by status")
    check("names", [d.name for d in cur.description], ["count", "max", "?column?", "text", "s"])

    # Settings and catalog functions tools call.
    check("show", conn.execute("show statement_timeout").fetchone(), ("20000ms",))
    check("current_schema", conn.execute("select current_schema()").fetchone(), ("silver",))
    check("version", conn.execute("select version()").fetchone()[0].startswith("PostgreSQL 16"), True)

    # pg_catalog answered from the lake: the tables of a schema with their
    # columns' types, by joins over pg_class, pg_namespace and pg_attribute.
    rows = conn.execute(
        """select c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
           from pg_catalog.pg_class c
           join pg_catalog.pg_namespace n on n.oid = c.relnamespace
           join pg_catalog.pg_attribute a on a.attrelid = c.oid
           where n.nspname = %s and a.attnum between 1 and 3
           order by c.relname, a.attnum""",
        ("silver",),
    ).fetchall()
    check(
        "catalog join",
        rows,
        [("orders", "id", "bigint"), ("orders", "status", "text"), ("orders", "total", "numeric(12,2)")],
    )
    oid = conn.execute("select 'silver.orders'::regclass::oid").fetchone()[0]
    check("regclass", conn.execute("select relname from pg_class where oid = %s", (oid,)).fetchone(), ("orders",))
    try:
        conn.execute("select 1 from nope_table")
        raise AssertionError("a missing table did not fail")
    except psycopg.errors.UndefinedTable:
        check("42P01", True, True)
    conn.rollback()

    # SQLSTATEs a driver can act on, each on a live session.
    for sql, code in [
        ("selec 1", "42601"),
        ("select nope from orders", "42703"),
        ("select nope()", "42883"),
        ("select 1 / 0", "22012"),
        ("set role postgres", "42501"),
    ]:
        try:
            conn.execute(sql)
            raise AssertionError(f"{sql} did not fail")
        except psycopg.Error as e:
            check(sql, e.sqlstate, code)
        conn.rollback()

    # Writes are refused as on a read-only standby (25006); the session goes on.
    try:
        conn.execute("create table gold.x (a int)")
        raise AssertionError("create table was accepted")
    except psycopg.errors.ReadOnlySqlTransaction as e:
        check("read only", "read-only" in str(e), True)
    conn.rollback()

    # Time travel through the wire.
    check(
        "time travel",
        conn.execute("select count(*) from table_version('silver.orders', 0)").fetchone(),
        (2,),
    )

conn = psycopg.connect(dsn, autocommit=True)
# Cancellation: a long query, cancelled from another thread.
timer = threading.Timer(1.0, conn.cancel)
timer.start()
started = time.monotonic()
try:
    conn.execute("select sum(value) from range(1000000000000)")
    raise AssertionError("long query was not cancelled")
except psycopg.errors.QueryCanceled as e:
    check("cancel message", "user request" in str(e), True)
check("cancelled quickly", time.monotonic() - started < 10, True)
check("after cancel", conn.execute("select 41 + 1").fetchone(), (42,))
conn.close()

# A wrong password is refused.
try:
    psycopg.connect(dsn.replace(f"password={password}", "password=wrong"))
    raise AssertionError("wrong password accepted")
except psycopg.OperationalError as e:
    check("wrong password", 'password authentication failed for user "tributary"' in str(e), True)

done()
