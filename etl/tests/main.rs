//! Integration tests: the marts over a real two-shard silver fixture.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::protocol::SaveMode;
use tributary_lake::{Lake, LakeConfig};
use tributary_query::{Format, Session, render};

fn lake(dir: &tempfile::TempDir) -> Lake {
    Lake::new(&LakeConfig {
        root: dir.path().to_str().unwrap().to_string(),
        s3: None,
    })
    .unwrap()
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Microseconds since the epoch of a UTC `YYYY-MM-DDTHH:MM:SSZ` time.
fn ts(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_micros()
}

fn money(cents: &[i128]) -> ArrayRef {
    Arc::new(
        Decimal128Array::from(cents.to_vec())
            .with_precision_and_scale(12, 2)
            .unwrap(),
    )
}

fn times(values: &[&str]) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from(values.iter().map(|t| ts(t)).collect::<Vec<_>>())
            .with_timezone("UTC"),
    )
}

fn strings(values: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

/// A silver table: the source columns plus the metadata columns.
fn silver(fields: Vec<Field>, mut columns: Vec<ArrayRef>, shards: &[i32]) -> RecordBatch {
    let n = shards.len();
    let mut all = fields;
    all.extend([
        Field::new("_shard", DataType::Int32, false),
        Field::new("_lsn", DataType::Int64, false),
        Field::new("_ordinal", DataType::Int64, false),
        Field::new("_event_id", DataType::Utf8, false),
        Field::new("_commit_ts", ts_type(), false),
    ]);
    columns.push(Arc::new(Int32Array::from(shards.to_vec())));
    columns.push(Arc::new(Int64Array::from(
        (0..n as i64).map(|i| 1000 + i).collect::<Vec<_>>(),
    )));
    columns.push(Arc::new(Int64Array::from(vec![0; n])));
    columns.push(Arc::new(StringArray::from(
        (0..n).map(|i| format!("ev-{i}")).collect::<Vec<_>>(),
    )));
    columns.push(times(&vec!["2024-03-04T00:00:00Z"; n]));
    RecordBatch::try_new(Arc::new(Schema::new(all)), columns).unwrap()
}

async fn write(lake: &Lake, table: &str, batch: RecordBatch) {
    let exists = lake
        .list_tables("silver")
        .await
        .unwrap()
        .iter()
        .any(|t| t == table);
    let handle = if exists {
        lake.open("silver", table).await.unwrap().unwrap()
    } else {
        lake.table_handle("silver", table).unwrap()
    };
    handle
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .await
        .unwrap();
}

/// Two shards; order 1002's customer (999) is missing, line 3's product (99)
/// is missing and line 5's order (5000) has not arrived yet.
async fn fixture(lake: &Lake) {
    let products = silver(
        vec![
            Field::new("id", DataType::Int64, false),
            Field::new("sku", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("category", DataType::Utf8, false),
            Field::new("price", DataType::Decimal128(12, 2), false),
            Field::new("active", DataType::Boolean, false),
            Field::new("created_at", ts_type(), false),
            Field::new("updated_at", ts_type(), false),
        ],
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            strings(&["SKU-1", "SKU-2"]),
            strings(&["Widget", "Gadget"]),
            strings(&["tools", "toys"]),
            money(&[1000, 550]),
            Arc::new(BooleanArray::from(vec![true, false])),
            times(&["2024-01-01T00:00:00Z"; 2]),
            times(&["2024-01-01T00:00:00Z"; 2]),
        ],
        &[0, 0],
    );
    write(lake, "products", products).await;

    let customers = silver(
        vec![
            Field::new("id", DataType::Int64, false),
            Field::new("email", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("region", DataType::Utf8, false),
            Field::new("country", DataType::Utf8, false),
            Field::new("city", DataType::Utf8, false),
            Field::new("address", DataType::Utf8, false),
            Field::new("lat", DataType::Float64, false),
            Field::new("lon", DataType::Float64, false),
            Field::new("created_at", ts_type(), false),
            Field::new("updated_at", ts_type(), false),
        ],
        vec![
            Arc::new(Int64Array::from(vec![100, 200])),
            strings(&["a@example.com", "b@example.com"]),
            strings(&["Ann", "Bob"]),
            strings(&["eu", "us"]),
            strings(&["FR", "US"]),
            strings(&["Paris", "Boston"]),
            strings(&["1 rue", "2 st"]),
            Arc::new(arrow::array::Float64Array::from(vec![48.8, 42.3])),
            Arc::new(arrow::array::Float64Array::from(vec![2.3, -71.0])),
            times(&["2024-01-01T00:00:00Z"; 2]),
            times(&["2024-01-01T00:00:00Z"; 2]),
        ],
        &[0, 1],
    );
    write(lake, "customers", customers).await;

    let orders = silver(
        vec![
            Field::new("id", DataType::Int64, false),
            Field::new("customer_id", DataType::Int64, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("currency", DataType::Utf8, false),
            Field::new("total", DataType::Decimal128(12, 2), false),
            Field::new("created_at", ts_type(), false),
            Field::new("updated_at", ts_type(), false),
        ],
        vec![
            Arc::new(Int64Array::from(vec![1000, 1001, 1002])),
            Arc::new(Int64Array::from(vec![100, 200, 999])),
            strings(&["paid", "cancelled", "pending"]),
            strings(&["EUR", "USD", "USD"]),
            money(&[2550, 375, 1000]),
            times(&[
                "2024-03-01T10:00:00Z",
                "2024-03-02T23:30:00Z",
                "2024-03-02T01:00:00Z",
            ]),
            times(&[
                "2024-03-01T10:00:00Z",
                "2024-03-02T23:30:00Z",
                "2024-03-02T01:00:00Z",
            ]),
        ],
        &[0, 1, 1],
    );
    write(lake, "orders", orders).await;

    let items = silver(
        vec![
            Field::new("id", DataType::Int64, false),
            Field::new("order_id", DataType::Int64, false),
            Field::new("product_id", DataType::Int64, false),
            Field::new("quantity", DataType::Int32, false),
            Field::new("unit_price", DataType::Decimal128(12, 2), false),
            Field::new("line_total", DataType::Decimal128(12, 2), false),
            Field::new("created_at", ts_type(), false),
        ],
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])),
            Arc::new(Int64Array::from(vec![1000, 1000, 1001, 1002, 5000])),
            Arc::new(Int64Array::from(vec![1, 2, 99, 1, 2])),
            Arc::new(Int32Array::from(vec![2, 1, 3, 1, 1])),
            money(&[1000, 550, 125, 1000, 550]),
            money(&[2000, 550, 375, 1000, 550]),
            times(&[
                "2024-03-01T10:00:00Z",
                "2024-03-01T10:00:00Z",
                "2024-03-02T23:30:00Z",
                "2024-03-02T01:00:00Z",
                "2024-03-03T08:00:00Z",
            ]),
        ],
        &[0, 0, 1, 1, 0],
    );
    write(lake, "order_items", items).await;
}

async fn csv(session: &Session, query: &str) -> String {
    let (schema, batches) = session.sql_with_schema(query).await.unwrap();
    let mut out = Vec::new();
    render(&schema, &batches, Format::Csv, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn marts_key_lines_to_dimensions_and_reconcile_with_silver() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    fixture(&lake).await;

    let report = tributary_etl::build_marts(&lake).await.unwrap();
    let names: Vec<_> = report.tables.iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        [
            "dim_date",
            "dim_customer",
            "dim_product",
            "fct_order_line",
            "agg_daily_sales"
        ]
    );
    assert_eq!(report.rows("dim_date"), Some(4));
    assert_eq!(report.rows("dim_customer"), Some(3));
    assert_eq!(report.rows("dim_product"), Some(3));
    assert_eq!(report.rows("fct_order_line"), Some(5));
    assert_eq!(report.rows("agg_daily_sales"), Some(3));

    let session = Session::new(lake.clone()).await.unwrap();
    assert_eq!(
        csv(
            &session,
            "select order_item_id, order_id, shard, customer_key, product_key, date_key, status, quantity, unit_price, line_total \
             from gold.fct_order_line order by order_item_id"
        )
        .await,
        "order_item_id,order_id,shard,customer_key,product_key,date_key,status,quantity,unit_price,line_total\n\
         1,1000,0,100,1,20240301,paid,2,10.00,20.00\n\
         2,1000,0,100,2,20240301,paid,1,5.50,5.50\n\
         3,1001,1,200,-1,20240302,cancelled,3,1.25,3.75\n\
         4,1002,1,-1,1,20240302,pending,1,10.00,10.00\n\
         5,5000,0,-1,2,20240303,unknown,1,5.50,5.50\n"
    );

    // The reconciliation, exact in decimal.
    assert_eq!(
        csv(
            &session,
            "select (select sum(line_total) from gold.fct_order_line) as gold, \
                    (select sum(line_total) from silver.order_items) as silver"
        )
        .await,
        "gold,silver\n44.75,44.75\n"
    );

    assert_eq!(
        csv(
            &session,
            "select * from gold.agg_daily_sales order by date_key"
        )
        .await,
        "date_key,orders,lines,units,revenue\n\
         20240301,1,2,3,25.50\n\
         20240302,2,2,4,13.75\n\
         20240303,1,1,1,5.50\n"
    );

    assert_eq!(
        csv(&session, "select * from gold.dim_date order by date_key").await,
        "date_key,date,year,quarter,month,day,day_of_week,is_weekend\n\
         -1,,,,,,,\n\
         20240301,2024-03-01,2024,1,3,1,5,false\n\
         20240302,2024-03-02,2024,1,3,2,6,true\n\
         20240303,2024-03-03,2024,1,3,3,7,true\n"
    );

    assert_eq!(
        csv(
            &session,
            "select * from gold.dim_customer order by customer_key"
        )
        .await,
        "customer_key,customer_id,shard,name,email,region,country,city\n\
         -1,-1,-1,Unknown,Unknown,Unknown,Unknown,Unknown\n\
         100,100,0,Ann,a@example.com,eu,FR,Paris\n\
         200,200,1,Bob,b@example.com,us,US,Boston\n"
    );

    assert_eq!(
        csv(
            &session,
            "select * from gold.dim_product order by product_key"
        )
        .await,
        "product_key,product_id,sku,name,category,price,active\n\
         -1,-1,Unknown,Unknown,Unknown,,\n\
         1,1,SKU-1,Widget,tools,10.00,true\n\
         2,2,SKU-2,Gadget,toys,5.50,false\n"
    );

    // Gold types are the contract the star schema promises (DataFusion reads
    // Delta strings as `Utf8View`; they are stored as plain strings).
    let (schema, _) = session
        .sql_with_schema("select * from gold.fct_order_line limit 0")
        .await
        .unwrap();
    let types: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "Int64",
            "Int64",
            "Int32",
            "Int64",
            "Int64",
            "Int32",
            "Utf8View",
            "Int32",
            "Decimal128(12, 2)",
            "Decimal128(12, 2)"
        ]
    );
}

#[tokio::test]
async fn rebuilding_gives_identical_gold_and_follows_silver() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    fixture(&lake).await;
    let session = Session::new(lake.clone()).await.unwrap();
    let tables = [
        "dim_date",
        "dim_customer",
        "dim_product",
        "fct_order_line",
        "agg_daily_sales",
    ];

    let first = tributary_etl::build_marts(&lake).await.unwrap();
    let mut before = Vec::new();
    for t in tables {
        before.push(csv(&session, &format!("select * from gold.{t} order by 1, 2")).await);
    }
    let second = tributary_etl::build_marts(&lake).await.unwrap();
    for (i, t) in tables.iter().enumerate() {
        let after = csv(&session, &format!("select * from gold.{t} order by 1, 2")).await;
        assert_eq!(after, before[i], "gold.{t} changed on rebuild");
        let v1 = first.tables[i].version.unwrap();
        let v2 = second.tables[i].version.unwrap();
        assert_eq!(v2, v1 + 1, "gold.{t} overwritten in one commit");
    }

    // A new silver line flows through to the fact and the aggregate.
    let extra = silver(
        vec![
            Field::new("id", DataType::Int64, false),
            Field::new("order_id", DataType::Int64, false),
            Field::new("product_id", DataType::Int64, false),
            Field::new("quantity", DataType::Int32, false),
            Field::new("unit_price", DataType::Decimal128(12, 2), false),
            Field::new("line_total", DataType::Decimal128(12, 2), false),
            Field::new("created_at", ts_type(), false),
        ],
        vec![
            Arc::new(Int64Array::from(vec![101])),
            Arc::new(Int64Array::from(vec![1000])),
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(Int32Array::from(vec![2])),
            money(&[1000]),
            money(&[2000]),
            times(&["2024-03-01T10:05:00Z"]),
        ],
        &[0],
    );
    write(&lake, "order_items", extra).await;
    let third = tributary_etl::build_marts(&lake).await.unwrap();
    assert_eq!(third.rows("fct_order_line"), Some(6));
    assert_eq!(
        csv(
            &session,
            "select revenue, lines from gold.agg_daily_sales where date_key = 20240301"
        )
        .await,
        "revenue,lines\n45.50,3\n"
    );
}

#[tokio::test]
async fn missing_silver_table_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let err = tributary_etl::build_marts(&lake).await.unwrap_err();
    assert!(
        matches!(err, tributary_etl::Error::MissingSource("products")),
        "{err:?}"
    );
    assert!(err.to_string().contains("silver.products"), "{err}");
}
