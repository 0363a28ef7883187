//! SQL behaviour pinned in sqllogictest files (`tests/slt/*.slt`), run
//! through tributary's query session over a small fixed lake: real Delta
//! tables in a temporary folder, written here from JSON rows. Each file
//! starts from the same lake; a failure names the file, the record's line
//! and the difference.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tributary_lake::Lake;
use tributary_query::Session;

mod scratch_lake;
mod slt_db;

fn field(name: &str, t: DataType, nullable: bool) -> Field {
    Field::new(name, t, nullable)
}

fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Appends rows given as JSON lines, in `schema`, to `layer.table` (one
/// commit, creating the table when absent).
async fn append(lake: &Lake, layer: &str, table: &str, schema: &SchemaRef, json: &str) {
    let batch = arrow::json::ReaderBuilder::new(schema.clone())
        .build(Cursor::new(json.as_bytes()))
        .unwrap()
        .next()
        .expect("at least one row")
        .unwrap();
    scratch_lake::append(lake, layer, table, batch).await;
}

/// The fixed lake every file runs against: `silver.orders` in two versions,
/// and a small star in gold (dates, customers as SCD2 with the `-1`
/// member, order lines).
async fn fixture(lake: &Lake) {
    let orders = Arc::new(Schema::new(vec![
        field("id", DataType::Int64, false),
        field("customer_id", DataType::Int64, true),
        field("status", DataType::Utf8, true),
        field("total", DataType::Decimal128(12, 2), true),
        field("created_at", utc(), true),
    ]));
    // Version 0.
    append(
        lake,
        "silver",
        "orders",
        &orders,
        r#"{"id": 1, "customer_id": 10, "status": "paid", "total": "10.50", "created_at": "2024-03-01T10:00:00Z"}
{"id": 2, "customer_id": 11, "status": "pending", "total": "2.00", "created_at": "2024-03-01T11:30:00Z"}"#,
    )
    .await;
    // Version 1.
    append(
        lake,
        "silver",
        "orders",
        &orders,
        r#"{"id": 3, "customer_id": 10, "status": "shipped", "total": "0.99", "created_at": "2024-03-02T09:00:00Z"}
{"id": 4, "customer_id": null, "status": "cancelled", "total": null, "created_at": "2024-03-02T12:00:00Z"}"#,
    )
    .await;

    let dim_date = Arc::new(Schema::new(vec![
        field("date_key", DataType::Int32, false),
        field("date", DataType::Date32, false),
        field("year", DataType::Int32, false),
        field("month", DataType::Int32, false),
        field("day_name", DataType::Utf8, false),
    ]));
    append(
        lake,
        "gold",
        "dim_date",
        &dim_date,
        r#"{"date_key": 20240301, "date": "2024-03-01", "year": 2024, "month": 3, "day_name": "Friday"}
{"date_key": 20240302, "date": "2024-03-02", "year": 2024, "month": 3, "day_name": "Saturday"}"#,
    )
    .await;

    let dim_customer = Arc::new(Schema::new(vec![
        field("customer_key", DataType::Int64, false),
        field("customer_id", DataType::Int64, true),
        field("name", DataType::Utf8, false),
        field("segment", DataType::Utf8, true),
        field("valid_from", utc(), true),
        field("valid_to", utc(), true),
        field("is_current", DataType::Boolean, false),
    ]));
    append(
        lake,
        "gold",
        "dim_customer",
        &dim_customer,
        r#"{"customer_key": -1, "customer_id": null, "name": "Unknown", "segment": null, "valid_from": null, "valid_to": null, "is_current": true}
{"customer_key": 1, "customer_id": 10, "name": "Ada", "segment": "retail", "valid_from": "2024-01-01T00:00:00Z", "valid_to": "2024-03-02T00:00:00Z", "is_current": false}
{"customer_key": 2, "customer_id": 10, "name": "Ada", "segment": "business", "valid_from": "2024-03-02T00:00:00Z", "valid_to": null, "is_current": true}
{"customer_key": 3, "customer_id": 11, "name": "Grace", "segment": "retail", "valid_from": "2024-01-01T00:00:00Z", "valid_to": null, "is_current": true}"#,
    )
    .await;

    let fct = Arc::new(Schema::new(vec![
        field("order_id", DataType::Int64, false),
        field("line_no", DataType::Int32, false),
        field("customer_key", DataType::Int64, false),
        field("date_key", DataType::Int32, false),
        field("quantity", DataType::Int32, false),
        field("amount", DataType::Decimal128(12, 2), false),
    ]));
    append(
        lake,
        "gold",
        "fct_order_line",
        &fct,
        r#"{"order_id": 1, "line_no": 1, "customer_key": 1, "date_key": 20240301, "quantity": 2, "amount": "8.00"}
{"order_id": 1, "line_no": 2, "customer_key": 1, "date_key": 20240301, "quantity": 1, "amount": "2.50"}
{"order_id": 2, "line_no": 1, "customer_key": 3, "date_key": 20240301, "quantity": 1, "amount": "2.00"}
{"order_id": 3, "line_no": 1, "customer_key": 2, "date_key": 20240302, "quantity": 3, "amount": "0.99"}
{"order_id": 5, "line_no": 1, "customer_key": -1, "date_key": 20240302, "quantity": 1, "amount": "4.00"}"#,
    )
    .await;
}

#[tokio::test]
async fn sql_behaviour_pinned_in_slt_files() {
    let files = slt_db::slt_files(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/slt"));
    assert!(files.len() >= 3, "expected the .slt files, found {files:?}");
    let mut failures = Vec::new();
    let mut records = 0;
    for file in &files {
        let dir = tempfile::tempdir().unwrap();
        let lake = scratch_lake::lake(&dir);
        fixture(&lake).await;
        let session = Arc::new(Session::new(lake).await.unwrap());
        match slt_db::run_file(session, file).await {
            Ok(n) => records += n,
            Err(e) => failures.push(e),
        }
    }
    assert!(records >= 20, "only {records} records ran");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
