//! Integration tests: the marts over real Delta tables.
//!
//! [`Source`] plays the part of CDC + ingest: each change becomes a bronze
//! row (the change-log schema ingest writes, partitioned by date) and a
//! silver row-level patch (`replaceWhere` on the changed ids, so like
//! ingest's MERGE it rewrites only the files holding those rows).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::prelude::{SessionContext, col, lit};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use serde_json::{Map, Value, json};
use tributary_etl::{BuildOptions, Error, MartsReport, Mode};
use tributary_lake::Lake;
use tributary_query::Session;

#[path = "../../query/tests/scratch_lake/mod.rs"]
mod scratch_lake;
#[path = "../../query/tests/slt_db/mod.rs"]
mod slt_db;

mod profile;

use scratch_lake::lake;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn money() -> DataType {
    DataType::Decimal128(12, 2)
}

/// Source columns of each replicated table (as in `oltp/src/migrate.rs`).
fn columns(table: &str) -> Vec<(&'static str, DataType)> {
    use DataType::{Boolean, Float64, Int32, Int64, Utf8};
    match table {
        "products" => vec![
            ("id", Int64),
            ("sku", Utf8),
            ("name", Utf8),
            ("category", Utf8),
            ("price", money()),
            ("active", Boolean),
            ("created_at", ts_type()),
            ("updated_at", ts_type()),
        ],
        "customers" => vec![
            ("id", Int64),
            ("email", Utf8),
            ("name", Utf8),
            ("region", Utf8),
            ("country", Utf8),
            ("city", Utf8),
            ("address", Utf8),
            ("lat", Float64),
            ("lon", Float64),
            ("created_at", ts_type()),
            ("updated_at", ts_type()),
        ],
        "orders" => vec![
            ("id", Int64),
            ("customer_id", Int64),
            ("status", Utf8),
            ("currency", Utf8),
            ("total", money()),
            ("created_at", ts_type()),
            ("updated_at", ts_type()),
        ],
        "order_items" => vec![
            ("id", Int64),
            ("order_id", Int64),
            ("product_id", Int64),
            ("quantity", Int32),
            ("unit_price", money()),
            ("line_total", money()),
            ("created_at", ts_type()),
        ],
        "payments" => vec![
            ("id", Int64),
            ("order_id", Int64),
            ("amount", money()),
            ("method", Utf8),
            ("status", Utf8),
            ("created_at", ts_type()),
            ("updated_at", ts_type()),
        ],
        "shipments" => vec![
            ("id", Int64),
            ("order_id", Int64),
            ("carrier", Utf8),
            ("status", Utf8),
            ("shipped_at", ts_type()),
            ("delivered_at", ts_type()),
            ("updated_at", ts_type()),
        ],
        other => panic!("no table {other}"),
    }
}

fn silver_schema(table: &str) -> SchemaRef {
    let mut fields: Vec<Field> = columns(table)
        .into_iter()
        .map(|(n, t)| Field::new(n, t, n != "id"))
        .collect();
    fields.extend([
        Field::new("_shard", DataType::Int32, false),
        Field::new("_lsn", DataType::Int64, false),
        Field::new("_ordinal", DataType::Int64, false),
        Field::new("_event_id", DataType::Utf8, false),
        Field::new("_commit_ts", ts_type(), false),
    ]);
    Arc::new(Schema::new(fields))
}

fn rows_to_batch(schema: SchemaRef, rows: &[Value]) -> RecordBatch {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .build_decoder()
        .unwrap();
    decoder.serialize(rows).unwrap();
    decoder
        .flush()
        .unwrap()
        .unwrap_or_else(|| RecordBatch::new_empty(schema))
}

/// The OLTP side and its change log, written into bronze and silver.
struct Source {
    lake: Lake,
    lsn: i64,
    offset: i64,
    /// Current rows per table: id -> (row, shard, silver metadata).
    state: BTreeMap<&'static str, BTreeMap<i64, Value>>,
    bronze: BTreeMap<&'static str, Vec<Value>>,
    touched: BTreeMap<&'static str, BTreeSet<i64>>,
}

fn db_of(table: &str) -> &'static str {
    if matches!(table, "products") {
        "catalog"
    } else {
        "orders"
    }
}

impl Source {
    fn new(lake: &Lake) -> Self {
        Source {
            lake: lake.clone(),
            lsn: 1000,
            offset: 0,
            state: BTreeMap::new(),
            bronze: BTreeMap::new(),
            touched: BTreeMap::new(),
        }
    }

    /// A new row, committed at its `updated_at` (`created_at` for lines).
    fn insert(&mut self, shard: i32, row: Row) {
        let at = row.at();
        self.change(shard, "c", row, &at);
    }

    /// The full new row, committed at its `updated_at`.
    fn update(&mut self, shard: i32, row: Row) {
        let at = row.at();
        self.change(shard, "u", row, &at);
    }

    /// Deletes row `id` of `table`, committed at `at`.
    fn delete(&mut self, table: &'static str, shard: i32, id: i64, at: &str) {
        let row = Row {
            table,
            value: json!({ "id": id }),
        };
        self.change(shard, "d", row, at);
    }

    /// One change committed at `at` (`c`, `u` with the full new row, `d`).
    fn change(&mut self, shard: i32, op: &str, row: Row, at: &str) {
        let Row { table, value: row } = row;
        self.lsn += 16;
        let id = row["id"].as_i64().unwrap();
        let event_id = format!("{}.{shard}/{}/1", db_of(table), self.lsn);
        let key = json!({"id": id, "shard": shard}).to_string();
        let (before, after) = if op == "d" {
            (Some(json!({"id": id}).to_string()), None)
        } else {
            (None, Some(row.to_string()))
        };
        self.offset += 1;
        self.bronze.entry(table).or_default().push(json!({
            "event_id": event_id, "op": op, "shard": shard, "lsn": self.lsn, "ordinal": 1,
            "commit_ts": at, "tx_id": null, "key": key, "before": before, "after": after,
            "unchanged_toast": null, "kafka_topic": format!("tributary.{}.{table}", db_of(table)),
            "kafka_partition": 0, "kafka_offset": self.offset, "ingested_at": at,
            "date": &at[..10],
        }));
        let state = self.state.entry(table).or_default();
        if op == "d" {
            state.remove(&id);
        } else {
            let mut silver: Map<String, Value> = row.as_object().unwrap().clone();
            silver.insert("_shard".into(), json!(shard));
            silver.insert("_lsn".into(), json!(self.lsn));
            silver.insert("_ordinal".into(), json!(1));
            silver.insert("_event_id".into(), json!(event_id));
            silver.insert("_commit_ts".into(), json!(at));
            state.insert(id, Value::Object(silver));
        }
        self.touched.entry(table).or_default().insert(id);
    }

    /// Writes the changes since the last flush: bronze appends, silver patches.
    async fn flush(&mut self) {
        for (table, rows) in std::mem::take(&mut self.bronze) {
            let batch = rows_to_batch(tributary_lake::schema::bronze_schema(), &rows);
            scratch_lake::table(&self.lake, "bronze", table)
                .await
                .write(vec![batch])
                .with_save_mode(SaveMode::Append)
                .with_partition_columns(["date".to_string()])
                .await
                .unwrap();
        }
        for (table, ids) in std::mem::take(&mut self.touched) {
            let state = &self.state[table];
            let rows: Vec<Value> = ids.iter().filter_map(|id| state.get(id).cloned()).collect();
            let batch = rows_to_batch(silver_schema(table), &rows);
            match self.lake.open("silver", table).await.unwrap() {
                Some(t) => {
                    let list = ids.iter().map(|id| lit(*id)).collect();
                    t.write(vec![batch])
                        .with_save_mode(SaveMode::Overwrite)
                        .with_replace_where(col("id").in_list(list, false))
                        .await
                        .unwrap();
                }
                None => scratch_lake::append(&self.lake, "silver", table, batch).await,
            }
        }
    }
}

/// A row of a source table, as the service stores it.
struct Row {
    table: &'static str,
    value: Value,
}

impl Row {
    /// When the row was last written: `updated_at`, or `created_at` for
    /// rows never updated (order lines).
    fn at(&self) -> String {
        let at = self
            .value
            .get("updated_at")
            .or(self.value.get("created_at"));
        at.and_then(Value::as_str).unwrap().to_string()
    }
}

fn customer(id: i64, name: &str, city: &str, at: &str) -> Row {
    let value = json!({"id": id, "email": format!("c{id}@example.com"), "name": name,
           "region": "eu", "country": "FR", "city": city, "address": "1 rue", "lat": 48.8,
           "lon": 2.3, "created_at": at, "updated_at": at});
    Row {
        table: "customers",
        value,
    }
}

fn product(id: i64, price: &str, category: &str, at: &str) -> Row {
    let value = json!({"id": id, "sku": format!("SKU-{id}"), "name": format!("Product {id}"),
           "category": category, "price": price, "active": true,
           "created_at": "2024-01-01T00:00:00Z", "updated_at": at});
    Row {
        table: "products",
        value,
    }
}

fn order(id: i64, customer_id: i64, status: &str, total: &str, created: &str, at: &str) -> Row {
    let value = json!({"id": id, "customer_id": customer_id, "status": status,
           "currency": "EUR", "total": total, "created_at": created, "updated_at": at});
    Row {
        table: "orders",
        value,
    }
}

fn item(id: i64, order_id: i64, product_id: i64, qty: i32, price: &str, at: &str) -> Row {
    let cents = (price.replace('.', "").parse::<i64>().unwrap()) * qty as i64;
    let value = json!({"id": id, "order_id": order_id, "product_id": product_id,
           "quantity": qty, "unit_price": price,
           "line_total": format!("{}.{:02}", cents / 100, cents % 100), "created_at": at});
    Row {
        table: "order_items",
        value,
    }
}

fn payment(id: i64, order_id: i64, amount: &str, status: &str, created: &str, at: &str) -> Row {
    let value = json!({"id": id, "order_id": order_id, "amount": amount, "method": "card",
           "status": status, "created_at": created, "updated_at": at});
    Row {
        table: "payments",
        value,
    }
}

fn shipment(
    id: i64,
    order_id: i64,
    status: &str,
    shipped: &str,
    delivered: Option<&str>,
    at: &str,
) -> Row {
    let value = json!({"id": id, "order_id": order_id, "carrier": "ups", "status": status,
           "shipped_at": shipped, "delivered_at": delivered, "updated_at": at});
    Row {
        table: "shipments",
        value,
    }
}

/// Two shards and the catalog: customers 100 (shard 0) and 200 (shard 1),
/// products 1 and 2; order 1000 paid, shipped and delivered; order 1001
/// cancelled; order 1002 placed by customer 999, who has not arrived.
fn base(src: &mut Source) {
    src.insert(0, product(1, "10.00", "tools", "2024-03-01T00:00:00Z"));
    src.insert(0, product(2, "5.50", "toys", "2024-03-01T00:00:00Z"));
    src.insert(0, customer(100, "Ann", "Paris", "2024-03-01T01:00:00Z"));
    src.insert(1, customer(200, "Bob", "Boston", "2024-03-01T01:00:00Z"));
    let t = "2024-03-01T10:00:00Z";
    src.insert(0, order(1000, 100, "pending", "25.50", t, t));
    src.insert(0, item(1, 1000, 1, 2, "10.00", t));
    src.insert(0, item(2, 1000, 2, 1, "5.50", t));
    let paid = "2024-03-01T12:00:00Z";
    src.insert(0, payment(5000, 1000, "25.50", "captured", paid, paid));
    src.update(0, order(1000, 100, "paid", "25.50", t, paid));
    let shipped = "2024-03-02T09:00:00Z";
    src.insert(0, shipment(7000, 1000, "shipped", shipped, None, shipped));
    src.update(0, order(1000, 100, "shipped", "25.50", t, shipped));
    let delivered = "2024-03-03T15:00:00Z";
    src.update(
        0,
        shipment(7000, 1000, "delivered", shipped, Some(delivered), delivered),
    );
    src.update(0, order(1000, 100, "delivered", "25.50", t, delivered));

    let t = "2024-03-02T23:30:00Z";
    src.insert(1, order(1001, 200, "pending", "16.50", t, t));
    src.insert(1, item(3, 1001, 2, 3, "5.50", t));
    src.update(
        1,
        order(1001, 200, "cancelled", "16.50", t, "2024-03-03T00:10:00Z"),
    );

    let t = "2024-03-02T01:00:00Z";
    src.insert(1, order(1002, 999, "pending", "10.00", t, t));
    src.insert(1, item(4, 1002, 1, 1, "10.00", t));
}

/// `SELECT ...` over the gold tables as CSV.
async fn csv(lake: &Lake, query: &str) -> String {
    let ctx = SessionContext::new();
    for layer in ["gold", "silver"] {
        let schema = Arc::new(datafusion::catalog::MemorySchemaProvider::new());
        ctx.catalog("datafusion")
            .unwrap()
            .register_schema(layer, schema.clone())
            .unwrap();
        for t in lake.list_tables(layer).await.unwrap() {
            let table = lake.open(layer, &t).await.unwrap().unwrap();
            let provider = table.table_provider().await.unwrap();
            datafusion::catalog::SchemaProvider::register_table(schema.as_ref(), t, provider)
                .unwrap();
        }
    }
    let batches = ctx.sql(query).await.unwrap().collect().await.unwrap();
    let mut out = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut out);
        for b in &batches {
            w.write(b).unwrap();
        }
    }
    String::from_utf8(out).unwrap()
}

/// Every gold table, in commit order.
fn gold_tables() -> Vec<&'static str> {
    tributary_etl::models().iter().map(|m| m.name).collect()
}

/// Every gold table, sorted on all columns: `name\n` and the rows as CSV.
async fn snapshot(lake: &Lake) -> Vec<String> {
    let mut out = Vec::new();
    for t in gold_tables() {
        let n = csv(lake, &format!("SELECT * FROM gold.{t} LIMIT 0"))
            .await
            .lines()
            .next()
            .unwrap_or_default()
            .split(',')
            .count();
        let order: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
        out.push(format!(
            "{t}\n{}",
            csv(
                lake,
                &format!("SELECT * FROM gold.{t} ORDER BY {}", order.join(", "))
            )
            .await
        ));
    }
    out
}

async fn build(lake: &Lake) -> MartsReport {
    match tributary_etl::build_marts(lake).await {
        Ok(r) => r,
        Err(e) => panic!("build failed: {e}: {:?}", std::error::Error::source(&e)),
    }
}

#[tokio::test]
async fn a_full_build_keys_every_fact_and_reconciles_with_silver() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let mut src = Source::new(&lake);
    base(&mut src);
    src.flush().await;

    let report = build(&lake).await;
    assert!(matches!(report.mode, Mode::Full { .. }), "{report}");
    let names: Vec<_> = report.tables.iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        [
            "dim_customer",
            "dim_product",
            "fct_order_status_event",
            "fct_payment",
            "fct_order_line",
            "fct_order_fulfillment",
            "agg_daily_sales",
            "dim_date"
        ]
    );
    assert!(report.tests_passed >= 30, "{report}");
    assert_eq!(report.rows("dim_customer"), Some(3));
    assert_eq!(report.rows("dim_product"), Some(3));
    assert_eq!(report.rows("fct_order_line"), Some(4));
    // 2024 is a leap year: 366 days plus the Unknown date.
    assert_eq!(report.rows("dim_date"), Some(367));

    assert_eq!(
        csv(
            &lake,
            "SELECT f.order_item_id, f.order_id, f.shard, c.name AS customer, p.sku, f.date_key, \
                    f.status, f.quantity, f.line_total \
             FROM gold.fct_order_line f \
             JOIN gold.dim_customer c ON c.customer_key = f.customer_key \
             JOIN gold.dim_product p ON p.product_key = f.product_key \
             ORDER BY f.order_item_id"
        )
        .await,
        "order_item_id,order_id,shard,customer,sku,date_key,status,quantity,line_total\n\
         1,1000,0,Ann,SKU-1,20240301,delivered,2,20.00\n\
         2,1000,0,Ann,SKU-2,20240301,delivered,1,5.50\n\
         3,1001,1,Bob,SKU-2,20240302,cancelled,3,16.50\n\
         4,1002,1,Unknown,SKU-1,20240302,pending,1,10.00\n"
    );
    assert_eq!(
        csv(
            &lake,
            "SELECT * FROM gold.agg_daily_sales ORDER BY date_key"
        )
        .await,
        "date_key,orders,lines,units,revenue\n\
         20240301,1,2,3,25.50\n\
         20240302,2,2,4,26.50\n"
    );
    assert_eq!(
        csv(
            &lake,
            "SELECT order_id, status, previous_status, date_key FROM gold.fct_order_status_event \
             ORDER BY order_id, event_ts"
        )
        .await,
        "order_id,status,previous_status,date_key\n\
         1000,pending,,20240301\n\
         1000,paid,pending,20240301\n\
         1000,shipped,paid,20240302\n\
         1000,delivered,shipped,20240303\n\
         1001,pending,,20240302\n\
         1001,cancelled,pending,20240303\n\
         1002,pending,,20240302\n"
    );
    assert_eq!(
        csv(
            &lake,
            "SELECT order_item_id, placed_date_key, paid_date_key, shipped_date_key, \
                    delivered_date_key, cancelled_date_key, refunded_date_key, \
                    hours_placed_to_paid, hours_shipped_to_delivered, hours_placed_to_delivered \
             FROM gold.fct_order_fulfillment ORDER BY order_item_id"
        )
        .await,
        "order_item_id,placed_date_key,paid_date_key,shipped_date_key,delivered_date_key,cancelled_date_key,refunded_date_key,hours_placed_to_paid,hours_shipped_to_delivered,hours_placed_to_delivered\n\
         1,20240301,20240301,20240302,20240303,-1,-1,2.0,30.0,53.0\n\
         2,20240301,20240301,20240302,20240303,-1,-1,2.0,30.0,53.0\n\
         3,20240302,-1,-1,-1,20240303,-1,,,\n\
         4,20240302,-1,-1,-1,-1,-1,,,\n"
    );
    assert_eq!(
        csv(
            &lake,
            "SELECT payment_id, order_id, payment_status, amount, c.name FROM gold.fct_payment f \
             JOIN gold.dim_customer c ON c.customer_key = f.customer_key"
        )
        .await,
        "payment_id,order_id,payment_status,amount,name\n5000,1000,captured,25.50,Ann\n"
    );
    // Gold is a plain Delta table any reader can open: strings are stored
    // as strings, keys as integers.
    let t = lake.open("gold", "fct_order_line").await.unwrap().unwrap();
    let schema = t.snapshot().unwrap().schema();
    let types: Vec<String> = schema
        .fields()
        .map(|f| format!("{}:{}", f.name(), f.data_type()))
        .collect();
    assert!(
        types.contains(&"customer_key:long".to_string()),
        "{types:?}"
    );
    assert!(types.contains(&"status:string".to_string()), "{types:?}");
}

#[tokio::test]
async fn every_price_change_is_a_version_and_lines_get_the_price_of_their_time() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let mut src = Source::new(&lake);
    base(&mut src);
    // Three price changes within one day, a category change, a rename.
    for (price, at) in [
        ("11.00", "2024-03-04T08:00:00Z"),
        ("12.00", "2024-03-04T12:00:00Z"),
        ("13.00", "2024-03-04T16:00:00Z"),
    ] {
        src.update(0, product(1, price, "tools", at));
    }
    let at = "2024-03-05T00:00:00Z";
    src.update(0, product(1, "13.00", "garden", at));
    let mut renamed = product(1, "13.00", "garden", "2024-03-06T00:00:00Z");
    renamed.value["name"] = json!("Better widget");
    src.update(0, renamed);
    // A line ordered at 13:00 on the day of the changes.
    let t = "2024-03-04T13:00:00Z";
    src.insert(0, order(1003, 100, "pending", "12.00", t, t));
    src.insert(0, item(5, 1003, 1, 1, "12.00", t));
    src.flush().await;
    build(&lake).await;

    assert_eq!(
        csv(
            &lake,
            "SELECT version, name, category, price, valid_from, valid_to, is_current \
             FROM gold.dim_product WHERE product_id = 1 ORDER BY version"
        )
        .await,
        "version,name,category,price,valid_from,valid_to,is_current\n\
         1,Better widget,tools,10.00,2024-01-01T00:00:00Z,2024-03-04T08:00:00Z,false\n\
         2,Better widget,tools,11.00,2024-03-04T08:00:00Z,2024-03-04T12:00:00Z,false\n\
         3,Better widget,tools,12.00,2024-03-04T12:00:00Z,2024-03-04T16:00:00Z,false\n\
         4,Better widget,tools,13.00,2024-03-04T16:00:00Z,2024-03-05T00:00:00Z,false\n\
         5,Better widget,garden,13.00,2024-03-05T00:00:00Z,9999-12-31T00:00:00Z,true\n"
    );
    // The line placed at 13:00 points at the 12.00 version; older lines at
    // the first.
    assert_eq!(
        csv(
            &lake,
            "SELECT f.order_item_id, p.version, p.price FROM gold.fct_order_line f \
             JOIN gold.dim_product p ON p.product_key = f.product_key \
             WHERE f.product_id = 1 ORDER BY f.order_item_id"
        )
        .await,
        "order_item_id,version,price\n1,1,10.00\n4,1,10.00\n5,3,12.00\n"
    );
}

#[tokio::test]
async fn incremental_runs_give_the_same_marts_as_a_full_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let mut src = Source::new(&lake);
    base(&mut src);
    src.flush().await;
    build(&lake).await;

    // Round 1: a new order, a status change, a price change, an address change.
    let t = "2024-03-05T09:00:00Z";
    src.insert(1, order(1004, 200, "pending", "5.50", t, t));
    src.insert(1, item(6, 1004, 2, 1, "5.50", t));
    src.update(0, product(2, "6.00", "toys", "2024-03-05T08:00:00Z"));
    src.update(0, customer(100, "Ann", "Lyon", "2024-03-05T07:00:00Z"));
    src.update(
        1,
        order(1002, 999, "paid", "10.00", "2024-03-02T01:00:00Z", t),
    );
    src.insert(1, payment(5001, 1002, "10.00", "captured", t, t));
    src.flush().await;
    let second = build(&lake).await;
    assert_eq!(second.mode, Mode::Incremental { since: 1 }, "{second}");
    // The new payment, and payment 5000 re-keyed to Ann's new version.
    assert_eq!(second.written("fct_payment"), Some(2), "{second}");

    // Round 2: a refund, a deleted pending order (its lines go too), nothing
    // for the catalog.
    let t = "2024-03-06T10:00:00Z";
    src.update(
        0,
        payment(5000, 1000, "25.50", "refunded", "2024-03-01T12:00:00Z", t),
    );
    src.update(
        0,
        order(1000, 100, "refunded", "25.50", "2024-03-01T10:00:00Z", t),
    );
    src.delete("order_items", 1, 6, "2024-03-06T11:00:00Z");
    src.delete("orders", 1, 1004, "2024-03-06T11:00:00Z");
    src.flush().await;
    let third = build(&lake).await;
    assert_eq!(third.mode, Mode::Incremental { since: 2 }, "{third}");
    assert_eq!(third.written("dim_product"), Some(0), "{third}");
    assert_eq!(third.written("dim_customer"), Some(0), "{third}");
    // Orders 1000 (refunded), 1004 (deleted) and 1002 (re-keyed while it
    // waits for its customer); 1001 is left alone.
    assert!(
        third.written("fct_order_status_event") < third.rows("fct_order_status_event"),
        "{third}"
    );
    assert_eq!(third.rows("fct_order_line"), Some(4), "{third}");
    let incremental = snapshot(&lake).await;

    // A run with no changes writes nothing but its watermark (and the
    // small calendar, which is always rewritten).
    let idle = build(&lake).await;
    assert!(
        idle.tables
            .iter()
            .filter(|t| t.name != "dim_date")
            .all(|t| t.written == 0),
        "{idle}"
    );
    assert_eq!(snapshot(&lake).await, incremental);

    let full = tributary_etl::build_marts_with(
        &lake,
        &BuildOptions {
            full_refresh: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(matches!(full.mode, Mode::Full { .. }));
    let refreshed = snapshot(&lake).await;
    for (a, b) in incremental.iter().zip(&refreshed) {
        assert_eq!(a, b, "incremental and full refresh differ");
    }
    // The refund is a payment event with a negative amount, and a milestone.
    assert_eq!(
        csv(
            &lake,
            "SELECT payment_id, payment_status, amount FROM gold.fct_payment ORDER BY event_ts"
        )
        .await,
        "payment_id,payment_status,amount\n5000,captured,25.50\n5001,captured,10.00\n5000,refunded,-25.50\n"
    );
    assert_eq!(
        csv(
            &lake,
            "SELECT DISTINCT refunded_date_key FROM gold.fct_order_fulfillment WHERE order_id = 1000"
        )
        .await,
        "refunded_date_key\n20240306\n"
    );
    assert_eq!(
        csv(
            &lake,
            "SELECT count(*) AS n FROM gold.fct_order_line WHERE order_id = 1004"
        )
        .await,
        "n\n0\n"
    );
}

#[tokio::test]
async fn a_fact_that_arrives_before_its_customer_is_rekeyed_later() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let mut src = Source::new(&lake);
    base(&mut src);
    src.flush().await;
    build(&lake).await;
    let keys = "SELECT order_item_id, customer_key FROM gold.fct_order_line WHERE order_id = 1002";
    assert_eq!(csv(&lake, keys).await, "order_item_id,customer_key\n4,-1\n");
    assert_eq!(
        csv(
            &lake,
            "SELECT customer_key FROM gold.fct_order_status_event WHERE order_id = 1002"
        )
        .await,
        "customer_key\n-1\n"
    );

    // Customer 999 arrives (its insert was committed before the order).
    let at = "2024-03-01T05:00:00Z";
    src.insert(1, customer(999, "Cy", "Oslo", at));
    src.flush().await;
    let report = build(&lake).await;
    assert_eq!(report.mode, Mode::Incremental { since: 1 });
    let expected = csv(
        &lake,
        "SELECT 4 AS order_item_id, customer_key FROM gold.dim_customer WHERE customer_id = 999",
    )
    .await;
    assert_eq!(csv(&lake, keys).await, expected);
    assert!(!expected.contains(",-1"), "{expected}");
    for fact in ["fct_order_status_event", "fct_order_fulfillment"] {
        assert_eq!(
            csv(
                &lake,
                &format!("SELECT count(*) AS n FROM gold.{fact} WHERE customer_key = -1")
            )
            .await,
            "n\n0\n",
            "{fact} still points at the Unknown customer"
        );
    }
}

/// What happens after [`base`]: customer 999 arrives (its insert committed
/// before its order's), customer 100 moves, product 1's price changes three
/// times in a day, customer 100 orders product 1 between two of those
/// changes, order 1002 is paid, and order 1000 is refunded.
fn later(src: &mut Source) {
    let at = "2024-03-01T05:00:00Z";
    src.insert(1, customer(999, "Cy", "Oslo", at));
    let at = "2024-03-04T00:00:00Z";
    src.update(0, customer(100, "Ann", "Lyon", at));
    for (price, at) in [
        ("11.00", "2024-03-04T08:00:00Z"),
        ("12.00", "2024-03-04T12:00:00Z"),
        ("13.00", "2024-03-04T16:00:00Z"),
    ] {
        src.update(0, product(1, price, "tools", at));
    }
    let t = "2024-03-04T13:00:00Z";
    src.insert(0, order(1003, 100, "pending", "24.00", t, t));
    src.insert(0, item(5, 1003, 1, 2, "12.00", t));
    let placed = "2024-03-02T01:00:00Z";
    let paid = "2024-03-04T09:30:00Z";
    src.insert(1, payment(5001, 1002, "10.00", "captured", paid, paid));
    src.update(1, order(1002, 999, "paid", "10.00", placed, paid));
    let refunded = "2024-03-05T10:00:00Z";
    src.update(
        0,
        payment(
            5000,
            1000,
            "25.50",
            "refunded",
            "2024-03-01T12:00:00Z",
            refunded,
        ),
    );
    src.update(
        0,
        order(
            1000,
            100,
            "refunded",
            "25.50",
            "2024-03-01T10:00:00Z",
            refunded,
        ),
    );
}

/// Runs one `.slt` file of `tests/slt` over the lake as it is now.
async fn run_slt(lake: &Lake, file: &str) -> usize {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/slt")
        .join(file);
    let session = Arc::new(Session::new(lake.clone()).await.unwrap());
    slt_db::run_file(session, &path)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The marts' build pinned in sqllogictest files over gold:
/// `1_full_build.slt` after a full build of [`base`], `2_incremental.slt`
/// after [`later`] and an incremental build.
#[tokio::test]
async fn mart_builds_pinned_in_slt_files() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let mut src = Source::new(&lake);
    base(&mut src);
    src.flush().await;
    assert!(matches!(build(&lake).await.mode, Mode::Full { .. }));
    let mut records = run_slt(&lake, "1_full_build.slt").await;
    later(&mut src);
    src.flush().await;
    assert!(
        matches!(build(&lake).await.mode, Mode::Incremental { .. }),
        "the second build is incremental"
    );
    records += run_slt(&lake, "2_incremental.slt").await;
    assert!(records >= 20, "only {records} records ran");
}

#[tokio::test]
async fn a_failed_run_leaves_the_marts_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let mut src = Source::new(&lake);
    base(&mut src);
    src.flush().await;
    build(&lake).await;
    let before = snapshot(&lake).await;
    let versions = |lake: Lake| async move {
        let mut out = Vec::new();
        for t in gold_tables() {
            out.push(lake.open("gold", t).await.unwrap().unwrap().version());
        }
        out
    };
    let v0 = versions(lake.clone()).await;

    let t = "2024-03-07T09:00:00Z";
    src.insert(0, order(1005, 100, "pending", "10.00", t, t));
    src.insert(0, item(7, 1005, 1, 1, "10.00", t));
    src.flush().await;

    // Stopped after the data tests, before the first commit.
    let err = tributary_etl::build_marts_with(
        &lake,
        &BuildOptions {
            fail_after_commits: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Injected(0)), "{err}");
    assert_eq!(versions(lake.clone()).await, v0);
    assert_eq!(snapshot(&lake).await, before);

    // Interrupted between commits: the next run notices and rebuilds.
    let err = tributary_etl::build_marts_with(
        &lake,
        &BuildOptions {
            fail_after_commits: Some(3),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Injected(3)), "{err}");
    let healed = build(&lake).await;
    match &healed.mode {
        Mode::Full { reason } => assert!(reason.contains("interrupted"), "{reason}"),
        other => panic!("expected a full refresh, got {other:?}"),
    }
    let after_heal = snapshot(&lake).await;
    tributary_etl::build_marts_with(
        &lake,
        &BuildOptions {
            full_refresh: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(snapshot(&lake).await, after_heal);
    let lines = after_heal
        .iter()
        .find(|t| t.starts_with("fct_order_line\n"))
        .unwrap();
    assert!(lines.contains("\n7,1005,"), "{lines}");

    // A data test failure stops the run too, with a readable report.
    src.change(
        0,
        "u",
        order(1005, 100, "lost", "10.00", t, t),
        "2024-03-07T09:30:00Z",
    );
    src.flush().await;
    let v1 = versions(lake.clone()).await;
    let err = tributary_etl::build_marts(&lake).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::DataTests(_)), "{text}");
    assert!(text.contains("gold is unchanged"), "{text}");
    assert!(
        text.contains("accepted_values")
            && text.contains("fct_order_line.status")
            && text.contains("lost"),
        "{text}"
    );
    assert_eq!(versions(lake.clone()).await, v1);
    assert_eq!(snapshot(&lake).await, after_heal);
}

/// Replaces `gold.<table>` with the result of `query` over it (as `t`).
async fn corrupt(lake: &Lake, table: &str, query: &str) {
    let ctx = SessionContext::new();
    let delta = lake.open("gold", table).await.unwrap().unwrap();
    ctx.register_table("t", delta.table_provider().await.unwrap())
        .unwrap();
    let frame = ctx.sql(query).await.unwrap();
    let schema = frame.schema().as_arrow().clone();
    let batches = frame.collect().await.unwrap();
    let plain = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                let t = match f.data_type() {
                    DataType::Utf8View => DataType::Utf8,
                    other => other.clone(),
                };
                Field::new(f.name(), t, true)
            })
            .collect::<Vec<_>>(),
    ));
    let batches: Vec<RecordBatch> = batches
        .iter()
        .map(|b| {
            let cols = b
                .columns()
                .iter()
                .zip(plain.fields())
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()).unwrap())
                .collect();
            RecordBatch::try_new(plain.clone(), cols).unwrap()
        })
        .collect();
    delta
        .write(batches)
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(SchemaMode::Overwrite)
        .await
        .unwrap();
}

#[tokio::test]
async fn each_data_test_catches_the_data_built_to_break_it() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let mut src = Source::new(&lake);
    base(&mut src);
    let at = "2024-03-04T08:00:00Z";
    src.update(0, product(1, "11.00", "tools", at));
    src.flush().await;
    build(&lake).await;
    let clean = tributary_etl::test_marts(&lake).await.unwrap();
    assert!(clean.ok(), "{clean}");
    assert!(clean.passed >= 30);

    // (table, query over it, expected failed test kind, target contains)
    let breakages = [
        (
            "dim_customer",
            "SELECT * FROM t UNION ALL SELECT * FROM t WHERE customer_id = 100",
            "unique_not_null",
            "dim_customer.customer_key",
        ),
        (
            "fct_order_line",
            "SELECT * FROM t UNION ALL SELECT * FROM t WHERE order_item_id = 1",
            "unique_not_null",
            "fct_order_line.order_item_id",
        ),
        (
            "fct_payment",
            "SELECT CAST(NULL AS VARCHAR) AS event_id, payment_id, order_id, shard, customer_id, \
             customer_key, date_key, event_ts, payment_status, method, amount FROM t",
            "unique_not_null",
            "fct_payment.event_id",
        ),
        (
            "fct_order_line",
            "SELECT order_item_id, order_id, shard, customer_id, product_id, customer_key, \
             CASE WHEN order_item_id = 2 THEN 424242 ELSE product_key END AS product_key, \
             date_key, placed_at, status, quantity, unit_price, line_total FROM t",
            "relationship",
            "fct_order_line.product_key",
        ),
        (
            "fct_order_status_event",
            "SELECT event_id, order_id, shard, customer_id, customer_key, \
             CASE WHEN order_id = 1001 THEN 20991231 ELSE date_key END AS date_key, \
             event_ts, status, previous_status FROM t",
            "relationship",
            "fct_order_status_event.date_key",
        ),
        (
            "fct_payment",
            "SELECT event_id, payment_id, order_id, shard, customer_id, customer_key, date_key, \
             event_ts, 'chargeback' AS payment_status, method, amount FROM t",
            "accepted_values",
            "fct_payment.payment_status",
        ),
        (
            "dim_product",
            "SELECT product_key, product_id, shard, version, sku, name, category, price, active, \
             valid_from, CASE WHEN version = 1 THEN valid_to + INTERVAL '1' HOUR \
             ELSE valid_to END AS valid_to, is_current, source_event_id FROM t",
            "scd2_no_overlap",
            "dim_product",
        ),
        (
            "agg_daily_sales",
            "SELECT date_key, orders, lines, units, \
             CASE WHEN date_key = 20240301 THEN revenue + 1 ELSE revenue END AS revenue FROM t",
            "reconciliation",
            "per day",
        ),
        (
            "fct_order_line",
            "SELECT * FROM t WHERE order_item_id <> 3",
            "reconciliation",
            "per day",
        ),
    ];
    for (table, query, kind, target) in breakages {
        corrupt(&lake, table, query).await;
        let report = tributary_etl::test_marts(&lake).await.unwrap();
        assert!(
            report.failed(kind, target),
            "{kind} on {target} not caught:\n{report}"
        );
        let text = report.to_string();
        assert!(text.contains("FAIL"), "{text}");
        // Back to a clean state for the next breakage.
        tributary_etl::build_marts_with(
            &lake,
            &BuildOptions {
                full_refresh: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_missing_source_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let err = tributary_etl::build_marts(&lake).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingSource {
                layer: "bronze",
                table: "products"
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("bronze.products"), "{err}");
}

/// Incremental against full-refresh time on a generated shop; prints the
/// numbers in BENCHMARKS.md. Run with
/// `cargo test -p tributary-etl --test main -- --ignored --nocapture marts_timing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark, not a test"]
async fn marts_timing() {
    let orders: i64 = std::env::var("MARTS_BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let mut src = Source::new(&lake);
    let day = |i: i64| {
        format!(
            "2024-{:02}-{:02}T{:02}:00:00Z",
            1 + (i / 28) % 12,
            1 + i % 28,
            i % 24
        )
    };
    for p in 1..=200 {
        src.insert(0, product(p, "10.00", "tools", "2024-01-01T00:00:00Z"));
    }
    for c in 1..=2_000 {
        let at = "2024-01-01T00:00:00Z";
        src.insert((c % 2) as i32, customer(c, "C", "Paris", at));
    }
    let mut next_item = 1;
    for o in 1..=orders {
        let at = day(o);
        let (shard, cust) = ((o % 2) as i32, 1 + o % 2_000);
        src.insert(shard, order(o, cust, "pending", "20.00", &at, &at));
        for _ in 0..2 {
            src.insert(
                shard,
                item(next_item, o, 1 + next_item % 200, 1, "10.00", &at),
            );
            next_item += 1;
        }
        if o % 2 == 0 {
            src.insert(shard, payment(o, o, "20.00", "captured", &at, &at));
            src.update(shard, order(o, cust, "paid", "20.00", &at, &at));
        }
    }
    src.flush().await;
    let t = std::time::Instant::now();
    let first = build(&lake).await;
    let first_ms = t.elapsed().as_millis();

    // A small change: 20 new orders, 20 payments, 2 price changes.
    let at = "2024-12-30T10:00:00Z";
    for o in orders + 1..=orders + 20 {
        src.insert(0, order(o, 1, "pending", "10.00", at, at));
        src.insert(0, item(next_item, o, 1, 1, "10.00", at));
        next_item += 1;
        let p = o - orders;
        src.insert(
            1,
            payment(p * 2 + 1, p * 2 + 1, "20.00", "captured", at, at),
        );
    }
    src.update(0, product(1, "11.00", "tools", at));
    src.update(0, product(2, "12.00", "tools", at));
    src.flush().await;
    let t = std::time::Instant::now();
    let incremental = build(&lake).await;
    let incremental_ms = t.elapsed().as_millis();
    let t = std::time::Instant::now();
    let full = tributary_etl::build_marts_with(
        &lake,
        &BuildOptions {
            full_refresh: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let full_ms = t.elapsed().as_millis();
    println!("{first}\n\n{incremental}\n\n{full}");
    println!(
        "orders={orders} lines={} first build {first_ms} ms; incremental {incremental_ms} ms; full refresh {full_ms} ms",
        full.rows("fct_order_line").unwrap_or(0)
    );
}

#[tokio::test]
async fn following_the_lake_builds_once_per_change_and_idles_between() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let mut src = Source::new(&lake);
    base(&mut src);
    src.flush().await;
    let runs = Arc::new(std::sync::Mutex::new(Vec::<MartsReport>::new()));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let follower = {
        let (lake, runs, shutdown) = (lake.clone(), runs.clone(), shutdown.clone());
        tokio::spawn(async move {
            tributary_etl::follow_marts(
                &lake,
                &BuildOptions::default(),
                std::time::Duration::from_millis(50),
                shutdown,
                |r| runs.lock().unwrap().push(r.clone()),
            )
            .await
        })
    };
    let built = |n: usize| {
        let runs = runs.clone();
        async move {
            for _ in 0..400 {
                if runs.lock().unwrap().len() >= n {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
            panic!("no build number {n}");
        }
    };
    built(1).await;
    // Idle rounds build nothing.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(runs.lock().unwrap().len(), 1, "no build without a change");

    let t = "2024-03-05T09:00:00Z";
    src.insert(1, order(1004, 200, "pending", "5.50", t, t));
    src.insert(1, item(6, 1004, 2, 1, "5.50", t));
    src.flush().await;
    built(2).await;
    shutdown.cancel();
    follower.await.unwrap().unwrap();
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(
        matches!(runs[1].mode, Mode::Incremental { since: 1 }),
        "{}",
        runs[1]
    );
    assert_eq!(
        runs[1].rows("fct_order_line"),
        runs[0].rows("fct_order_line").map(|n| n + 1)
    );
}
