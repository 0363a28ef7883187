"""Drives `tributary sql serve` with asyncpg, which speaks only the extended
protocol with binary results and binary parameters.

Usage: asyncpg_client.py <port> <password>. Each check raises on a wrong
answer; the last line printed is "ok <n>" with the number of checks that ran.
"""

import asyncio
import datetime
import decimal
import sys

import asyncpg
from asyncpg import introspection

from checks import check, done

port, password = int(sys.argv[1]), sys.argv[2]

async def main():
    connect = dict(
        host="127.0.0.1", port=port, user="tributary", database="lake", ssl=False
    )
    conn = await asyncpg.connect(password=password, **connect)

    # Binary results, decoded into Python types.
    row = await conn.fetchrow(
        "select id, status, total, created_at from silver.orders where id = 1"
    )
    check("int8", row["id"], 1)
    check("numeric", row["total"], decimal.Decimal("10.50"))
    check(
        "timestamptz",
        row["created_at"],
        datetime.datetime(2024, 3, 1, 10, 1, tzinfo=datetime.timezone.utc),
    )

    # Binary parameters: text, numeric, int8.
    rows = await conn.fetch(
        "select id from silver.orders where status = $1 and total > $2 order by id",
        "paid",
        decimal.Decimal("1.00"),
    )
    check("parameters", [r["id"] for r in rows], [1, 3])

    # One prepared statement, run with three values.
    statement = await conn.prepare("select status from orders where id = $1")
    got = [await statement.fetchval(i) for i in (1, 2, 3)]
    check("prepared", got, ["paid", "pending", "paid"])
    check("parameter types", [t.name for t in statement.get_parameters()], ["int8"])

    # The column names PostgreSQL gives.
    row = await conn.fetchrow("select count(*), 42, sum(total) from orders")
    check("names", list(row.keys()), ["count", "?column?", "sum"])
    check("values", (row["count"], row["?column?"]), (3, 42))

    # A cursor in a transaction, fetched a row at a time.
    async with conn.transaction():
        ids = [r["id"] async for r in conn.cursor("select id from orders order by id", prefetch=1)]
    check("cursor", ids, [1, 2, 3])

    # Writes are refused as PostgreSQL refuses them on a standby; the
    # connection goes on.
    try:
        await conn.execute("insert into orders (id) values (9)")
        raise AssertionError("insert was accepted")
    except asyncpg.exceptions.ReadOnlySQLTransactionError as e:
        check("read only", "read-only" in str(e), True)
    check("after refusal", await conn.fetchval("select count(*) from orders"), 3)

    # A bad query names what is wrong.
    try:
        await conn.fetch("select nope from orders")
        raise AssertionError("bad query did not fail")
    except asyncpg.exceptions.PostgresError as e:
        check("error names the column", "nope" in str(e), True)

    # A parameter typed only by its cast: asyncpg encodes by the type the
    # server describes, so 41 goes as a binary int4.
    check("cast parameter", await conn.fetchval("select $1::int + 1", 41), 42)

    # asyncpg's own catalog queries: a type looked up by name (what
    # set_type_codec runs), found, and an unknown one refused by asyncpg.
    row = await conn.fetchrow(introspection.TYPE_BY_NAME, "int8", "pg_catalog")
    check("type by name", (row["oid"], row["kind"]), (20, b"b"))
    try:
        await conn.set_type_codec("int8", schema="public", encoder=str, decoder=int)
        raise AssertionError("a codec for an unknown type was accepted")
    except ValueError as e:
        check("unknown type", "public.int8" in str(e), True)

    # Server settings asyncpg reads at connect.
    check("server version", conn.get_server_version().major, 16)
    await conn.close()

    # A wrong password: the error PostgreSQL gives, naming the user.
    try:
        await asyncpg.connect(password="wrong", **connect)
        raise AssertionError("wrong password accepted")
    except asyncpg.exceptions.InvalidPasswordError as e:
        check("wrong password", 'for user "tributary"' in str(e), True)


asyncio.run(main())
done()
