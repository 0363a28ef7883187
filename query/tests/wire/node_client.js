// Drives `tributary sql serve` with node-postgres (`pg`), the Node.js client.
//
// Usage: NODE_PATH=<dir with node_modules> node node_client.js <port> <password>.
// Each check throws on a wrong answer; the last line printed is "ok <n>".

const { Client } = require("pg");

const [port, password] = process.argv.slice(2);
let checks = 0;

function check(name, got, want) {
  const [g, w] = [JSON.stringify(got), JSON.stringify(want)];
  if (g !== w) throw new Error(`${name}: got ${g}, want ${w}`);
  checks += 1;
}

const config = { host: "127.0.0.1", port: Number(port), user: "tributary", database: "lake" };

async function main() {
  const client = new Client({ ...config, password });
  await client.connect();

  // Simple protocol: text results, parsed by type oid.
  let res = await client.query("select id, status, total, created_at from silver.orders where id = 1");
  check("row", res.rows[0].status, "paid");
  check("int8 as text", res.rows[0].id, "1");
  check("numeric as text", res.rows[0].total, "10.50");
  check("timestamptz", res.rows[0].created_at.toISOString(), "2024-03-01T10:01:00.000Z");
  check("field names", res.fields.map((f) => f.name), ["id", "status", "total", "created_at"]);

  // Extended protocol: text parameters, a named prepared statement.
  res = await client.query("select id from silver.orders where status = $1 order by id", ["paid"]);
  check("parameters", res.rows.map((r) => r.id), ["1", "3"]);
  const got = [];
  for (const id of [1, 2, 3]) {
    res = await client.query({ name: "by-id", text: "select status from orders where id = $1", values: [id] });
    got.push(res.rows[0].status);
  }
  check("prepared", got, ["paid", "pending", "paid"]);

  // Names as PostgreSQL gives them; rowMode array.
  res = await client.query({ text: "select count(*), 42 from orders", rowMode: "array" });
  check("names", res.fields.map((f) => f.name), ["count", "?column?"]);
  check("values", res.rows[0], ["3", 42]);

  // A refused write and a bad query: the error's code, and the connection goes on.
  try {
    await client.query("insert into orders (id) values (9)");
    throw new Error("insert was accepted");
  } catch (e) {
    check("read only", e.code, "25006");
  }
  try {
    await client.query("select nope from orders");
    throw new Error("bad query did not fail");
  } catch (e) {
    check("error names the column", e.message.includes("nope"), true);
  }
  res = await client.query("select count(*) as n from orders");
  check("after errors", res.rows[0].n, "3");
  await client.end();

  // A wrong password: 28P01.
  const refused = new Client({ ...config, password: "wrong" });
  try {
    await refused.connect();
    throw new Error("wrong password accepted");
  } catch (e) {
    check("wrong password", e.code, "28P01");
  }
  console.log(`ok ${checks}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
