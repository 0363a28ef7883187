//! Integration tests: real Delta tables in a temporary lake folder.

use std::sync::Arc;

use arrow::array::{
    Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::protocol::SaveMode;
use tributary_lake::{Lake, LakeConfig};
use tributary_query::{Action, Console, Format, Session, render};

fn lake(dir: &tempfile::TempDir) -> Lake {
    Lake::new(&LakeConfig {
        root: dir.path().to_str().unwrap().to_string(),
        s3: None,
    })
    .unwrap()
}

/// Rows of a small `orders`-like table: `(id, status, total in cents)`.
fn orders(rows: &[(i64, &str, i128)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("status", DataType::Utf8, true),
        Field::new("total", DataType::Decimal128(12, 2), true),
        Field::new(
            "created_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("_shard", DataType::Int32, false),
    ]));
    // 2024-03-01T10:00:00Z plus one minute per id.
    let ts: Vec<i64> = rows
        .iter()
        .map(|r| 1_709_287_200_000_000 + r.0 * 60_000_000)
        .collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(
                Decimal128Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())
                    .with_precision_and_scale(12, 2)
                    .unwrap(),
            ),
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            Arc::new(Int32Array::from(
                rows.iter().map(|r| (r.0 % 2) as i32).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// Appends `batch` to `layer.table`, creating the table when absent.
async fn append(lake: &Lake, layer: &str, table: &str, batch: RecordBatch) {
    let exists = lake
        .list_tables(layer)
        .await
        .unwrap()
        .iter()
        .any(|t| t == table);
    let handle = if exists {
        lake.open(layer, table).await.unwrap().unwrap()
    } else {
        lake.table_handle(layer, table).unwrap()
    };
    handle
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .await
        .unwrap();
}

fn single_i64(batches: &[RecordBatch]) -> i64 {
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
    let batch = batches.iter().find(|b| b.num_rows() == 1).unwrap();
    batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("an Int64 column")
        .value(0)
}

#[tokio::test]
async fn session_sees_tables_and_rows_committed_after_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let session = Session::new(lake.clone()).await.unwrap();

    // Not there yet: a clear error, not a panic.
    let err = session
        .sql("select count(*) from orders")
        .await
        .unwrap_err()
        .report();
    assert!(err.contains("orders") && err.contains("not found"), "{err}");

    append(
        &lake,
        "silver",
        "orders",
        orders(&[(1, "paid", 1050), (2, "pending", 200)]),
    )
    .await;
    let count = session.sql("select count(*) from orders").await.unwrap();
    assert_eq!(single_i64(&count), 2);

    append(&lake, "silver", "orders", orders(&[(3, "shipped", 99)])).await;
    let count = session
        .sql("select count(*) from silver.orders")
        .await
        .unwrap();
    assert_eq!(single_i64(&count), 3);
    let sum = session
        .sql("select cast(sum(total) * 100 as bigint) from datafusion.silver.orders")
        .await
        .unwrap();
    assert_eq!(single_i64(&sum), 1050 + 200 + 99);

    // Other layers are schemas of the same catalog.
    append(&lake, "gold", "orders_copy", orders(&[(7, "paid", 1)])).await;
    let count = session
        .sql("select count(*) from gold.orders_copy")
        .await
        .unwrap();
    assert_eq!(single_i64(&count), 1);
    let listed = session
        .sql("select count(*) from information_schema.tables where table_schema in ('silver', 'gold')")
        .await
        .unwrap();
    assert_eq!(single_i64(&listed), 2);
}

#[tokio::test]
async fn bad_sql_and_writes_come_back_as_errors() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    append(&lake, "silver", "orders", orders(&[(1, "paid", 1050)])).await;
    let session = Session::new(lake).await.unwrap();

    let err = session
        .sql("selec * from orders")
        .await
        .unwrap_err()
        .report();
    assert!(err.contains("selec") && err.contains("Line: 1"), "{err}");

    let err = session
        .sql("select nope from orders")
        .await
        .unwrap_err()
        .report();
    assert!(err.contains("nope"), "{err}");

    let err = session
        .sql("create table silver.x as select 1")
        .await
        .unwrap_err()
        .report();
    assert!(err.to_lowercase().contains("ddl"), "{err}");

    let err = session
        .sql("select 1; select 2")
        .await
        .unwrap_err()
        .report();
    assert!(err.contains("one SQL statement"), "{err}");

    // Still usable after errors.
    let many = session
        .sql_many("select 1; select 'a;b' as s")
        .await
        .unwrap();
    assert_eq!(many.len(), 2);
    assert_eq!(many[1].0.field(0).name(), "s");
}

#[tokio::test]
async fn results_render_as_csv_json_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    append(
        &lake,
        "silver",
        "orders",
        orders(&[(2, "pending", 200), (1, "paid", 1050)]),
    )
    .await;
    let session = Session::new(lake).await.unwrap();
    let (schema, batches) = session
        .sql_with_schema("select id, status, total, created_at from orders order by id")
        .await
        .unwrap();

    let mut csv = Vec::new();
    render(&schema, &batches, Format::Csv, &mut csv).unwrap();
    assert_eq!(
        String::from_utf8(csv).unwrap(),
        "id,status,total,created_at\n\
         1,paid,10.50,2024-03-01T10:01:00Z\n\
         2,pending,2.00,2024-03-01T10:02:00Z\n"
    );

    let mut json = Vec::new();
    render(&schema, &batches, Format::Json, &mut json).unwrap();
    let json = String::from_utf8(json).unwrap();
    let lines: Vec<&str> = json.lines().collect();
    assert_eq!(lines.len(), 2, "{json}");
    assert!(
        lines[0].starts_with("{\"id\":1,\"status\":\"paid\",\"total\":"),
        "{json}"
    );
    assert!(lines[0].contains("10.50"), "{json}");

    // An empty result keeps its header.
    let (schema, batches) = session
        .sql_with_schema("select id, status from orders where id < 0")
        .await
        .unwrap();
    let mut csv = Vec::new();
    render(&schema, &batches, Format::Csv, &mut csv).unwrap();
    assert_eq!(String::from_utf8(csv).unwrap(), "id,status\n");
    let mut table = Vec::new();
    render(&schema, &batches, Format::Table, &mut table).unwrap();
    assert!(
        String::from_utf8(table)
            .unwrap()
            .contains("| id | status |")
    );
}

#[tokio::test]
async fn console_lists_describes_runs_multi_line_and_survives_errors() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    append(
        &lake,
        "silver",
        "orders",
        orders(&[(1, "paid", 1050), (2, "pending", 200)]),
    )
    .await;
    append(&lake, "bronze", "orders", orders(&[(1, "paid", 1050)])).await;
    let session = Session::new(lake).await.unwrap();
    let mut console = Console::new(session, Vec::new());
    let take =
        |c: &mut Console<Vec<u8>>| String::from_utf8(std::mem::take(c.output_mut())).unwrap();

    assert_eq!(console.handle_line("\\d").await, Action::Continue);
    let out = take(&mut console);
    assert!(
        out.contains("bronze.orders") && out.contains("silver.orders"),
        "{out}"
    );

    assert_eq!(console.handle_line("\\d orders").await, Action::Continue);
    let out = take(&mut console);
    assert!(out.contains("Table silver.orders"), "{out}");
    assert!(
        out.contains("total") && out.contains("Decimal128(12, 2)"),
        "{out}"
    );

    assert_eq!(console.prompt(), tributary_query::console::PROMPT);
    assert_eq!(console.handle_line("select id, status").await, Action::More);
    assert_eq!(
        console.prompt(),
        tributary_query::console::CONTINUATION_PROMPT
    );
    assert_eq!(console.handle_line("from orders").await, Action::More);
    assert_eq!(
        console.handle_line("order by id desc;").await,
        Action::Continue
    );
    let out = take(&mut console);
    assert!(out.contains("| 2  | pending |"), "{out}");
    assert!(
        out.find("pending").unwrap() < out.find("paid").unwrap(),
        "{out}"
    );
    assert!(out.contains("2 rows in "), "{out}");
    assert_eq!(console.prompt(), tributary_query::console::PROMPT);

    assert_eq!(
        console.handle_line("select * from no_such_table;").await,
        Action::Continue
    );
    let out = take(&mut console);
    assert!(
        out.starts_with("ERROR: ") && out.contains("no_such_table"),
        "{out}"
    );

    assert_eq!(console.handle_line("\\timing").await, Action::Continue);
    assert!(!console.timing());
    take(&mut console);
    assert_eq!(
        console
            .handle_line("select count(*) as n from orders;")
            .await,
        Action::Continue
    );
    let out = take(&mut console);
    assert!(out.contains("| 2 |") && !out.contains("rows in"), "{out}");

    assert_eq!(console.handle_line("\\nope").await, Action::Continue);
    assert!(take(&mut console).contains("unknown command"));
    assert_eq!(console.handle_line("\\q").await, Action::Exit);
}
