//! Integration tests: real Delta tables in a temporary lake folder.

use std::sync::Arc;

use arrow::array::{
    Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use tributary_lake::Lake;
use tributary_query::{Action, Console, Format, Session, render};

mod scratch_lake;

use scratch_lake::{append, lake};

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

/// A lake in `dir` with `silver.orders` holding `rows` (one commit).
async fn orders_lake(dir: &tempfile::TempDir, rows: &[(i64, &str, i128)]) -> Lake {
    let lake = lake(dir);
    append(&lake, "silver", "orders", orders(rows)).await;
    lake
}

/// The one integer `sql` answers.
async fn int_of(session: &Session, sql: &str) -> i64 {
    single_i64(&session.sql(sql).await.unwrap())
}

/// The error `sql` fails with, as the console shows it.
async fn error_of(session: &Session, sql: &str) -> String {
    session.sql(sql).await.unwrap_err().report()
}

/// What the console wrote since the last call.
fn take(console: &mut Console<Vec<u8>>) -> String {
    String::from_utf8(std::mem::take(console.output_mut())).unwrap()
}

/// Feeds `lines` to the console one by one; returns what it wrote.
async fn output(console: &mut Console<Vec<u8>>, lines: &[&str]) -> String {
    for line in lines {
        console.handle_line(line).await;
    }
    take(console)
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
    let err = error_of(&session, "select count(*) from orders").await;
    assert!(err.contains("orders") && err.contains("not found"), "{err}");

    append(
        &lake,
        "silver",
        "orders",
        orders(&[(1, "paid", 1050), (2, "pending", 200)]),
    )
    .await;
    assert_eq!(int_of(&session, "select count(*) from orders").await, 2);

    append(&lake, "silver", "orders", orders(&[(3, "shipped", 99)])).await;
    assert_eq!(
        int_of(&session, "select count(*) from silver.orders").await,
        3
    );
    let sum = "select cast(sum(total) * 100 as bigint) from datafusion.silver.orders";
    assert_eq!(int_of(&session, sum).await, 1050 + 200 + 99);

    // Other layers are schemas of the same catalog.
    append(&lake, "gold", "orders_copy", orders(&[(7, "paid", 1)])).await;
    let count = "select count(*) from gold.orders_copy";
    assert_eq!(int_of(&session, count).await, 1);
    let listed =
        "select count(*) from information_schema.tables where table_schema in ('silver', 'gold')";
    assert_eq!(int_of(&session, listed).await, 2);
}

#[tokio::test]
async fn results_are_kept_until_a_table_they_read_gets_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let lake = orders_lake(&dir, &[(1, "paid", 1050), (2, "pending", 200)]).await;
    append(&lake, "gold", "targets", orders(&[(9, "paid", 5)])).await;
    let session = Session::new(lake.clone()).await.unwrap();
    let join = "SELECT count(*) FROM silver.orders o JOIN gold.targets t ON o.status = t.status";
    assert_eq!(int_of(&session, join).await, 1);
    let first = session.cache_stats();
    assert_eq!((first.hits, first.entries), (0, 1), "{first:?}");

    // The same statement, written differently: the parser's text is the key.
    let same = "select   count(*) from silver.orders o join gold.targets t on o.status = t.status";
    assert_eq!(int_of(&session, same).await, 1);
    assert_eq!(session.cache_stats().hits, 1, "{:?}", session.cache_stats());

    // A new version of either table invalidates the result.
    append(&lake, "silver", "orders", orders(&[(3, "paid", 99)])).await;
    assert_eq!(int_of(&session, join).await, 2);
    let after = session.cache_stats();
    assert_eq!((after.hits, after.invalidated), (1, 1), "{after:?}");
    assert_eq!(int_of(&session, join).await, 2);
    assert_eq!(session.cache_stats().hits, 2);
    append(&lake, "gold", "targets", orders(&[(10, "paid", 5)])).await;
    assert_eq!(int_of(&session, join).await, 4, "the other table moved");
    assert_eq!(session.cache_stats().invalidated, 2);

    // Never kept: answers that change while no table does.
    for sql in [
        "SELECT count(*) FROM silver.orders WHERE created_at < now()",
        "SELECT count(*) FROM information_schema.tables",
        "SELECT count(*) FROM silver.orders WHERE random() < 2",
    ] {
        let kept = session.cache_stats().entries;
        session.sql(sql).await.unwrap();
        session.sql(sql).await.unwrap();
        let stats = session.cache_stats();
        assert_eq!(stats.entries, kept, "{sql} was kept: {stats:?}");
        assert_eq!(stats.hits, 2, "{sql} was answered from the cache");
    }
    // A table created after a result was kept is seen by the listing.
    let listed = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'bronze'";
    assert_eq!(int_of(&session, listed).await, 0);
    append(&lake, "bronze", "orders", orders(&[(1, "paid", 1)])).await;
    assert_eq!(int_of(&session, listed).await, 1);

    // Off by configuration: nothing kept.
    let config: tributary_query::SqlConfig =
        serde_json::from_str(r#"{"result_cache": false}"#).unwrap();
    let off = Session::with_config(lake, &config).await.unwrap();
    assert_eq!(int_of(&off, join).await, 4);
    assert_eq!(int_of(&off, join).await, 4);
    assert_eq!(off.cache_stats().entries, 0);
    assert_eq!(off.cache_stats().hits, 0);
}

#[tokio::test]
async fn bad_sql_and_writes_come_back_as_errors() {
    let dir = tempfile::tempdir().unwrap();
    let lake = orders_lake(&dir, &[(1, "paid", 1050)]).await;
    let session = Session::new(lake).await.unwrap();

    let err = error_of(&session, "selec * from orders").await;
    assert!(err.contains("selec") && err.contains("Line: 1"), "{err}");

    let err = error_of(&session, "select nope from orders").await;
    assert!(err.contains("nope"), "{err}");

    let err = error_of(&session, "create table silver.x as select 1").await;
    assert!(err.to_lowercase().contains("ddl"), "{err}");

    let err = error_of(&session, "select 1; select 2").await;
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
    let lake = orders_lake(&dir, &[(2, "pending", 200), (1, "paid", 1050)]).await;
    let session = Session::new(lake).await.unwrap();
    let rendered = |sql: &'static str, format: Format| {
        let session = &session;
        async move {
            let (schema, batches) = session.sql_with_schema(sql).await.unwrap();
            let mut out = Vec::new();
            render(&schema, &batches, format, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        }
    };

    let all = "select id, status, total, created_at from orders order by id";
    assert_eq!(
        rendered(all, Format::Csv).await,
        "id,status,total,created_at\n\
         1,paid,10.50,2024-03-01T10:01:00Z\n\
         2,pending,2.00,2024-03-01T10:02:00Z\n"
    );

    let json = rendered(all, Format::Json).await;
    let lines: Vec<&str> = json.lines().collect();
    assert_eq!(lines.len(), 2, "{json}");
    assert!(
        lines[0].starts_with("{\"id\":1,\"status\":\"paid\",\"total\":"),
        "{json}"
    );
    assert!(lines[0].contains("10.50"), "{json}");

    // An empty result keeps its header.
    let none = "select id, status from orders where id < 0";
    assert_eq!(rendered(none, Format::Csv).await, "id,status\n");
    assert!(
        rendered(none, Format::Table)
            .await
            .contains("| id | status |")
    );
}

#[tokio::test]
async fn console_lists_describes_runs_multi_line_and_survives_errors() {
    let dir = tempfile::tempdir().unwrap();
    let lake = orders_lake(&dir, &[(1, "paid", 1050), (2, "pending", 200)]).await;
    append(&lake, "bronze", "orders", orders(&[(1, "paid", 1050)])).await;
    let session = Session::new(lake).await.unwrap();
    let mut console = Console::new(session, Vec::new());

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

mod wire;

fn config_with(f: impl FnOnce(&mut tributary_query::SqlConfig)) -> tributary_query::SqlConfig {
    let mut config = tributary_query::SqlConfig::default();
    f(&mut config);
    config
}

#[tokio::test]
async fn a_query_over_the_memory_limit_fails_cleanly_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let tight = config_with(|c| {
        c.memory_limit = Some(tributary_query::ByteSize(1 << 20));
        c.spill = false;
    });
    let session = Session::with_config(lake.clone(), &tight).await.unwrap();
    // A full sort of 3M rows needs far more than 1 MiB and may not spill.
    let big = "select max(rn) from (select row_number() over (order by value desc) as rn from range(3000000))";
    let err = error_of(&session, big).await;
    assert!(err.contains("Resources exhausted"), "{err}");
    assert_eq!(
        int_of(&session, "select count(*) from range(1000)").await,
        1000
    );

    // The same limit with spilling allowed: the sort goes to disk and the
    // query answers.
    let spill_dir = dir.path().join("spill");
    let spilling = config_with(|c| {
        c.memory_limit = Some(tributary_query::ByteSize(16 << 20));
        c.spill_dir = Some(spill_dir.clone());
    });
    let session = Session::with_config(lake, &spilling).await.unwrap();
    let max = session.sql(big).await.unwrap();
    assert_eq!(single_u64(&max), 3_000_000);
}

fn single_u64(batches: &[RecordBatch]) -> u64 {
    let batch = batches.iter().find(|b| b.num_rows() == 1).unwrap();
    let column = arrow::compute::cast(batch.column(0), &DataType::Int64).unwrap();
    column
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0) as u64
}

#[tokio::test]
async fn time_travel_reads_earlier_versions_and_moments() {
    let dir = tempfile::tempdir().unwrap();
    let lake = orders_lake(&dir, &[(1, "paid", 100)]).await; // version 0
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let between = chrono_now();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    append(
        &lake,
        "silver",
        "orders",
        orders(&[(2, "paid", 200), (3, "new", 300)]),
    )
    .await; // version 1
    let session = Session::new(lake).await.unwrap();

    assert_eq!(int_of(&session, "select count(*) from orders").await, 3);
    let v0 = "select count(*) from table_version('silver.orders', 0)";
    assert_eq!(int_of(&session, v0).await, 1);
    let v1 = "select count(*) from table_version('orders', 1) where status = 'paid'";
    assert_eq!(int_of(&session, v1).await, 2);
    let at = format!("select count(*) from table_at('silver.orders', '{between}')");
    assert_eq!(int_of(&session, &at).await, 1);
    // A join of two versions: what changed between them.
    let added = "select count(*) from table_version('silver.orders', 1) n \
                 left join table_version('silver.orders', 0) o on n.id = o.id where o.id is null";
    assert_eq!(int_of(&session, added).await, 2);

    let err = error_of(&session, "select * from table_version('silver.orders', 7)").await;
    assert!(
        err.contains("no version 7") && err.contains("0 to 1"),
        "{err}"
    );
    let err = error_of(
        &session,
        "select * from table_at('silver.orders', 'last tuesday')",
    )
    .await;
    assert!(err.contains("not a timestamp"), "{err}");
    // Before the table existed: the Delta log has nothing to show.
    let err = error_of(
        &session,
        "select * from table_at('silver.orders', '2000-01-01T00:00:00Z')",
    )
    .await;
    assert!(
        err.contains("silver.orders did not exist yet at 2000-01-01T00:00:00Z"),
        "{err}"
    );
    let err = error_of(&session, "select * from table_version('silver.nope', 0)").await;
    assert!(
        err.contains("silver.nope") && err.contains("not found"),
        "{err}"
    );
}

fn chrono_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    // RFC 3339 in UTC, to the second, without pulling chrono into the tests.
    tributary_model::pgtype::format_utc_micros(now.as_secs() as i64 * 1_000_000)
}

#[tokio::test]
async fn console_explains_charts_writes_files_and_points_at_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [(1, "paid", 1000), (2, "paid", 3000), (3, "new", 500)];
    let lake = orders_lake(&dir, &rows).await;
    let session = Session::new(lake).await.unwrap();
    let mut console = Console::new(session, Vec::new());

    let explain = "explain select status, count(*) from orders group by status;";
    let out = output(&mut console, &[explain]).await;
    assert!(
        out.contains("logical_plan") && out.contains("Aggregate"),
        "{out}"
    );
    let explain = "explain analyze select count(*) from orders;";
    let out = output(&mut console, &[explain]).await;
    assert!(
        out.contains("Plan with Metrics") && out.contains("output_rows"),
        "{out}"
    );

    let revenue =
        "select status, sum(total) as revenue from orders group by status order by status;";
    let out = output(&mut console, &[revenue]).await;
    assert!(out.contains("2 rows in "), "{out}");
    let out = output(&mut console, &["\\chart bar"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("new") && lines[1].starts_with("paid"),
        "{out}"
    );
    // 5.00 against 40.00: 50 * 5 / 40 rounds to 6 of 50 characters.
    assert_eq!(lines[0].matches('█').count(), 6, "{out}");
    assert_eq!(lines[1].matches('█').count(), 50, "{out}");

    // Errors point at the place: the parser's position, with a caret.
    let out = output(&mut console, &["select id,", "  statuz from orders;"]).await;
    assert!(
        out.starts_with("ERROR: ") && out.contains("statuz"),
        "{out}"
    );
    let caret_line = out.lines().find(|l| l.trim() == "^");
    assert!(caret_line.is_some(), "{out}");
    let line = out.lines().find(|l| l.starts_with("LINE 2: ")).expect(&out);
    let caret = caret_line.unwrap();
    assert_eq!(&line[caret.len() - 1..caret.len() + 5], "statuz", "{out}");

    // Formats and files.
    let ids = "select id from orders order by id;";
    let out = output(&mut console, &["\\format csv", ids]).await;
    assert!(
        out.starts_with("Output format is csv.\nid\n1\n2\n3\n"),
        "{out}"
    );
    let file = dir.path().join("out/result.parquet");
    let to_file = format!("\\o {}", file.display());
    let select = "select id, status from orders where id > 1 order by id;";
    let out = output(&mut console, &[&to_file, select]).await;
    assert!(
        out.contains("wrote 2 rows to") && out.contains("(parquet)"),
        "{out}"
    );
    let reader =
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&file).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 2);

    // Completion knows tables and columns.
    console.refresh_names().await.unwrap();
    let names = console.names();
    let names = names.read().unwrap().clone();
    let (start, found) =
        tributary_query::console::complete(&names, "select sta from silver.ord", 10);
    assert_eq!((start, found), (7, vec!["status".to_string()]));
    let (start, found) =
        tributary_query::console::complete(&names, "select sta from silver.ord", 26);
    assert_eq!((start, found), (16, vec!["silver.orders".to_string()]));
}
