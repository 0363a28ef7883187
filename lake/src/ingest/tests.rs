//! Ingest of one table's batches against a lake in a temporary folder:
//! replays, crashes between the commits, truncates, schema evolution, TOAST,
//! and the changes that stop a table.

use std::collections::{HashMap, HashSet};

use arrow::datatypes::DataType;
use rdkafka::message::{OwnedHeaders, OwnedMessage, Timestamp};
use serde_json::json;
use tributary_model::event::{ChangeEvent, Column, Op};
use tributary_model::lsn::Lsn;
use tributary_model::pgtype::PgType;

use super::batch::{apply_batch, stage_batch};
use super::config::{DEAD_LETTERS, SCHEMA_CHANGES};
use super::resume::{TableState, load_state};
use super::runner::stop_or_fail;
use super::silver::{merge_silver, retype_silver_column};
use crate::fixtures::{event, lake_at, new_lake};
use crate::store::{col_i64, query_table};
use crate::{Error, Lake, Result};

const TOPIC: &str = "tributary.orders.customers";

fn ev(op: Op, id: i64, name: &str, lsn: u64, ordinal: u64) -> ChangeEvent {
    let row = match op {
        Op::Delete => json!({"id": id}),
        _ => json!({"id": id, "name": name, "created_at": "2026-11-26T07:00:00.000000Z"}),
    };
    let columns = vec![
        col("id", PgType::Int8),
        col("name", PgType::Text),
        col("created_at", PgType::Timestamptz),
    ];
    event("customers", op, lsn, ordinal, columns, row)
}

fn msg(e: &ChangeEvent, partition: i32, offset: i64) -> OwnedMessage {
    OwnedMessage::new(
        Some(e.to_json()),
        Some(b"k".to_vec()),
        TOPIC.into(),
        Timestamp::NotAvailable,
        partition,
        offset,
        Some(OwnedHeaders::new()),
    )
}

async fn silver_rows(lake: &Lake) -> Vec<(i64, String)> {
    let t = lake.open("silver", "customers").await.unwrap().unwrap();
    let batches = query_table(&t, "customers", "SELECT id, name FROM t ORDER BY id")
        .await
        .unwrap();
    let mut out = vec![];
    for b in batches {
        let ids = col_i64(&b, 0);
        let names = arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
        let names = names
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        for (i, id) in ids.into_iter().enumerate() {
            out.push((id, names.value(i).to_string()));
        }
    }
    out
}

async fn bronze_count(lake: &Lake) -> i64 {
    let t = lake.open("bronze", "customers").await.unwrap().unwrap();
    col_i64(
        &query_table(&t, "customers", "SELECT count(*) FROM t")
            .await
            .unwrap()[0],
        0,
    )[0]
}

#[tokio::test]
async fn a_crash_between_silver_and_bronze_is_replayed_into_bronze_only() {
    let (_dir, lake) = new_lake();
    let events = [
        ev(Op::Create, 1, "ann", 100, 1),
        ev(Op::Create, 2, "bob", 100, 2),
        ev(Op::Update, 1, "amy", 200, 1),
    ];
    let batch = || -> Vec<OwnedMessage> {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| msg(e, 0, i as i64))
            .collect()
    };
    let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
    apply_batch(&lake, "g", &mut state, batch()[..1].to_vec())
        .await
        .unwrap();
    // Silver commits the rest; the process dies before bronze does.
    let staged = stage_batch(&lake, "g", &mut state, batch()[1..].to_vec())
        .await
        .unwrap();
    drop(staged);
    assert_eq!(bronze_count(&lake).await, 1);
    // The restart reads the offsets back: bronze is behind silver.
    let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
    assert_eq!(state.bronze_next.get(&0), Some(&1));
    assert_eq!(state.silver_next.get(&0), Some(&3));
    apply_batch(&lake, "g", &mut state, batch()[1..].to_vec())
        .await
        .unwrap();
    assert_eq!(bronze_count(&lake).await, 3, "each event once in bronze");
    assert_eq!(
        silver_rows(&lake).await,
        vec![(1, "amy".to_string()), (2, "bob".to_string())]
    );
}

/// The operation of silver.customers' newest commit.
async fn last_silver_operation(lake: &Lake) -> String {
    use futures::StreamExt;
    let t = lake.open("silver", "customers").await.unwrap().unwrap();
    let info = t.history(Some(1)).next().await.unwrap().unwrap();
    info.operation.unwrap()
}

#[tokio::test]
async fn inserts_above_silver_keys_are_appended_and_the_rest_merged() {
    let (_dir, lake) = new_lake();
    // The ingester's handle keeps its tables between commits.
    let lake = lake.with_table_cache();
    let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
    let mut offset = 0;
    let mut apply = async |state: &mut TableState, events: &[ChangeEvent]| {
        let batch = events
            .iter()
            .map(|e| {
                offset += 1;
                msg(e, 0, offset - 1)
            })
            .collect();
        apply_batch(&lake, "g", state, batch).await.unwrap();
    };
    let rows = |v: &[(i64, &str)]| -> Vec<(i64, String)> {
        v.iter().map(|(i, n)| (*i, n.to_string())).collect()
    };
    apply(
        &mut state,
        &[
            ev(Op::Create, 1, "ann", 100, 1),
            ev(Op::Create, 2, "bob", 100, 2),
        ],
    )
    .await;
    apply(&mut state, &[ev(Op::Create, 3, "cat", 200, 1)]).await;
    assert_eq!(last_silver_operation(&lake).await, "WRITE");
    apply(&mut state, &[ev(Op::Delete, 2, "", 300, 1)]).await;
    assert_eq!(last_silver_operation(&lake).await, "MERGE");
    // A key silver held before: merged, never a second row.
    apply(&mut state, &[ev(Op::Create, 2, "bea", 400, 1)]).await;
    assert_eq!(last_silver_operation(&lake).await, "MERGE");
    assert_eq!(
        silver_rows(&lake).await,
        rows(&[(1, "ann"), (2, "bea"), (3, "cat")])
    );
    // Another writer puts key 7 in silver with a newer position; the
    // kept table and the known highest key are both out of date now.
    let other = lake_at(lake.root().as_str());
    merge_silver(
        &other,
        "customers",
        vec![ev(Op::Create, 7, "zed", 900, 1)],
        vec![],
        vec![],
        &mut None,
    )
    .await
    .unwrap();
    apply(&mut state, &[ev(Op::Create, 7, "gus", 500, 1)]).await;
    assert_eq!(
        silver_rows(&lake).await,
        rows(&[(1, "ann"), (2, "bea"), (3, "cat"), (7, "zed")]),
        "the older insert of key 7 did not add a row or overwrite the newer one"
    );
    apply(&mut state, &[ev(Op::Create, 8, "hal", 600, 1)]).await;
    assert_eq!(last_silver_operation(&lake).await, "WRITE");
    assert_eq!(silver_rows(&lake).await.len(), 5);
}

#[tokio::test]
async fn truncate_removes_only_rows_written_before_it() {
    let (_dir, lake) = new_lake();
    let mut state = load_state(&lake, "g", "customers", TOPIC, 2).await.unwrap();
    let a = [
        ev(Op::Create, 1, "ann", 100, 1),
        ev(Op::Create, 2, "bob", 200, 1),
    ];
    apply_batch(
        &lake,
        "g",
        &mut state,
        a.iter()
            .enumerate()
            .map(|(i, e)| msg(e, 0, i as i64))
            .collect(),
    )
    .await
    .unwrap();
    // Committed after the truncate, but delivered first by another partition.
    apply_batch(
        &lake,
        "g",
        &mut state,
        vec![msg(&ev(Op::Create, 4, "dan", 400, 1), 1, 0)],
    )
    .await
    .unwrap();
    let mut truncate = ev(Op::Truncate, 0, "", 300, 1);
    truncate.after = None;
    apply_batch(&lake, "g", &mut state, vec![msg(&truncate, 0, 2)])
        .await
        .unwrap();
    assert_eq!(silver_rows(&lake).await, vec![(4, "dan".to_string())]);
    let state = load_state(&lake, "g", "customers", TOPIC, 2).await.unwrap();
    assert_eq!(
        state.silver_next.get(&0),
        Some(&3),
        "the truncate's offset is recorded"
    );
}

#[tokio::test]
async fn replays_and_stale_events_never_move_silver_backwards() {
    let (_dir, lake) = new_lake();
    let events = [
        ev(Op::Create, 1, "ann", 100, 1),
        ev(Op::Update, 1, "anna", 200, 1),
        ev(Op::Create, 2, "bob", 200, 2),
        ev(Op::Delete, 2, "bob", 300, 1),
    ];
    let mut state = load_state(&lake, "g", "customers", TOPIC, 2).await.unwrap();
    let batch: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, e)| msg(e, 0, i as i64))
        .collect();
    apply_batch(&lake, "g", &mut state, batch).await.unwrap();
    assert_eq!(silver_rows(&lake).await, vec![(1, "anna".to_string())]);
    assert_eq!(bronze_count(&lake).await, 4);

    // The reader replays the same events after a crash: nothing changes.
    let replay: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, e)| msg(e, 0, 4 + i as i64))
        .collect();
    apply_batch(&lake, "g", &mut state, replay).await.unwrap();
    assert_eq!(bronze_count(&lake).await, 4);
    assert_eq!(silver_rows(&lake).await, vec![(1, "anna".to_string())]);

    // An older version delivered late (another partition, so bronze takes
    // it) must not overwrite the newer row.
    apply_batch(
        &lake,
        "g",
        &mut state,
        vec![msg(&ev(Op::Update, 1, "stale", 150, 1), 1, 0)],
    )
    .await
    .unwrap();
    assert_eq!(silver_rows(&lake).await, vec![(1, "anna".to_string())]);

    // A poison message goes to the dead-letter table and the rest applies.
    let poison = OwnedMessage::new(
        Some(b"{not json".to_vec()),
        None,
        TOPIC.into(),
        Timestamp::NotAvailable,
        0,
        8,
        None,
    );
    apply_batch(
        &lake,
        "g",
        &mut state,
        vec![poison, msg(&ev(Op::Update, 1, "annie", 400, 1), 0, 9)],
    )
    .await
    .unwrap();
    assert_eq!(silver_rows(&lake).await, vec![(1, "annie".to_string())]);
    let dlq = lake.open("bronze", DEAD_LETTERS).await.unwrap().unwrap();
    let n = col_i64(
        &query_table(&dlq, "dlq", "SELECT count(*) FROM t WHERE kafka_offset = 8")
            .await
            .unwrap()[0],
        0,
    )[0];
    assert_eq!(n, 1);
    let raw = query_table(&dlq, "dlq", "SELECT payload FROM t")
        .await
        .unwrap();
    let raw = arrow::compute::cast(raw[0].column(0), &DataType::Binary).unwrap();
    let raw = raw
        .as_any()
        .downcast_ref::<arrow::array::BinaryArray>()
        .unwrap()
        .value(0)
        .to_vec();
    assert_eq!(
        raw,
        b"{not json".to_vec(),
        "the dead letter keeps the raw bytes"
    );

    // A restart resumes from the offsets in the lake and rebuilds the high-water mark.
    let state = load_state(&lake, "g", "customers", TOPIC, 2).await.unwrap();
    assert_eq!(state.bronze_next.get(&0), Some(&10));
    assert_eq!(state.silver_next.get(&0), Some(&10));
    assert_eq!(state.bronze_next.get(&1), Some(&1));
    assert_eq!(state.high_water.get(&(0, 0)), Some(&(400, 1)));
    assert!(state.silver_catch_up.is_empty());
    assert_eq!(
        state.dead_next.get(&0),
        Some(&9),
        "the dead-letter table records its offsets"
    );
}

fn col(name: &str, pg_type: PgType) -> Column {
    Column::new(name, pg_type, name == "id")
}

fn msgs(topic: &str, events: &[ChangeEvent], partition: i32, first: i64) -> Vec<OwnedMessage> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut m = msg(e, partition, first + i as i64);
            if topic != TOPIC {
                m = OwnedMessage::new(
                    Some(e.to_json()),
                    Some(b"k".to_vec()),
                    topic.into(),
                    Timestamp::NotAvailable,
                    partition,
                    first + i as i64,
                    None,
                );
            }
            m
        })
        .collect()
}

/// Rows of a query, every value as text (`None` for NULL).
async fn rows(lake: &Lake, layer: &str, table: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let t = lake.open(layer, table).await.unwrap().unwrap();
    let mut out = vec![];
    for b in query_table(&t, table, sql).await.unwrap() {
        let cols: Vec<_> = b
            .columns()
            .iter()
            .map(|c| arrow::compute::cast(c, &DataType::Utf8).unwrap())
            .collect();
        for i in 0..b.num_rows() {
            out.push(
                cols.iter()
                    .map(|c| {
                        let c = c
                            .as_any()
                            .downcast_ref::<arrow::array::StringArray>()
                            .unwrap();
                        arrow::array::Array::is_valid(c, i).then(|| c.value(i).to_string())
                    })
                    .collect(),
            );
        }
    }
    out
}

fn some(v: &[&str]) -> Vec<Option<String>> {
    v.iter()
        .map(|s| (*s != "NULL").then(|| s.to_string()))
        .collect()
}

async fn silver_type(lake: &Lake, table: &str, column: &str) -> DataType {
    let t = lake.open("silver", table).await.unwrap().unwrap();
    let schema = t.snapshot().unwrap().snapshot().arrow_schema();
    schema.field_with_name(column).unwrap().data_type().clone()
}

#[tokio::test]
async fn added_column_appears_mid_stream_and_old_rows_read_null() {
    let (_dir, lake) = new_lake();
    let v1 = vec![col("id", PgType::Int8), col("name", PgType::Text)];
    let v2 = vec![
        col("id", PgType::Int8),
        col("name", PgType::Text),
        col("email", PgType::Text),
    ];
    let c = |op, lsn, cols: &Vec<Column>, row| event("customers", op, lsn, 1, cols.clone(), row);
    let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
    let first = [
        c(Op::Create, 100, &v1, json!({"id": 1, "name": "ann"})),
        c(Op::Create, 110, &v1, json!({"id": 2, "name": "bob"})),
    ];
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &first, 0, 0))
        .await
        .unwrap();
    // One batch mixes the old shape and the new one.
    let second = [
        c(Op::Update, 200, &v1, json!({"id": 1, "name": "anna"})),
        c(
            Op::Create,
            300,
            &v2,
            json!({"id": 3, "name": "cy", "email": "c@x"}),
        ),
        c(
            Op::Update,
            310,
            &v2,
            json!({"id": 2, "name": "bob", "email": "b@x"}),
        ),
    ];
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &second, 0, 2))
        .await
        .unwrap();
    let sql = "SELECT id, name, email FROM t ORDER BY id";
    let expected = vec![
        some(&["1", "anna", "NULL"]),
        some(&["2", "bob", "b@x"]),
        some(&["3", "cy", "c@x"]),
    ];
    assert_eq!(rows(&lake, "silver", "customers", sql).await, expected);

    // The change is logged once at the source (with its LSN) and once in silver.
    let log_sql = "SELECT change, column_name, shard, lsn FROM t ORDER BY change, lsn";
    let log = vec![
        some(&["add_column", "email", "0", "300"]),
        some(&["first_seen", "NULL", "0", "100"]),
        some(&["silver_add_column", "email", "NULL", "300"]),
    ];
    assert_eq!(rows(&lake, "bronze", SCHEMA_CHANGES, log_sql).await, log);

    // A replay of both batches after a crash changes nothing, logs nothing.
    let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
    let replay: Vec<_> = first.iter().chain(second.iter()).cloned().collect();
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &replay, 0, 5))
        .await
        .unwrap();
    assert_eq!(rows(&lake, "silver", "customers", sql).await, expected);
    assert_eq!(rows(&lake, "bronze", SCHEMA_CHANGES, log_sql).await, log);
    // An old-shape event delivered late changes nothing either.
    apply_batch(
        &lake,
        "g",
        &mut state,
        msgs(
            TOPIC,
            &[c(Op::Update, 150, &v1, json!({"id": 2, "name": "old"}))],
            0,
            10,
        ),
    )
    .await
    .unwrap();
    assert_eq!(rows(&lake, "silver", "customers", sql).await, expected);
}

#[tokio::test]
async fn dropped_and_renamed_columns_stay_and_read_null_on_rows_written_after() {
    let (_dir, lake) = new_lake();
    let v1 = vec![
        col("id", PgType::Int8),
        col("name", PgType::Text),
        col("phone", PgType::Text),
    ];
    // DROP COLUMN phone, then RENAME name TO full_name.
    let v2 = vec![col("id", PgType::Int8), col("name", PgType::Text)];
    let v3 = vec![col("id", PgType::Int8), col("full_name", PgType::Text)];
    let c = |op, lsn, cols: &Vec<Column>, row| event("customers", op, lsn, 1, cols.clone(), row);
    let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
    let events = [
        c(
            Op::Create,
            100,
            &v1,
            json!({"id": 1, "name": "ann", "phone": "111"}),
        ),
        c(
            Op::Create,
            110,
            &v1,
            json!({"id": 2, "name": "bob", "phone": "222"}),
        ),
        c(
            Op::Create,
            120,
            &v1,
            json!({"id": 4, "name": "dan", "phone": "444"}),
        ),
    ];
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 0))
        .await
        .unwrap();
    let events = [
        c(Op::Update, 200, &v2, json!({"id": 2, "name": "bobby"})),
        c(Op::Create, 210, &v2, json!({"id": 3, "name": "cy"})),
    ];
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 3))
        .await
        .unwrap();
    let events = [c(
        Op::Update,
        300,
        &v3,
        json!({"id": 4, "full_name": "dan d"}),
    )];
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 5))
        .await
        .unwrap();
    assert_eq!(
        rows(
            &lake,
            "silver",
            "customers",
            "SELECT id, name, phone, full_name FROM t ORDER BY id"
        )
        .await,
        vec![
            // Untouched since the drop: keeps its old value.
            some(&["1", "ann", "111", "NULL"]),
            // Written after the drop: the dropped column is NULL.
            some(&["2", "bobby", "NULL", "NULL"]),
            some(&["3", "cy", "NULL", "NULL"]),
            // Written after the rename: the value is under the new name.
            some(&["4", "NULL", "NULL", "dan d"]),
        ]
    );
    assert_eq!(
        rows(
            &lake,
            "bronze",
            SCHEMA_CHANGES,
            "SELECT change, column_name, lsn FROM t WHERE shard IS NOT NULL AND change <> 'first_seen' ORDER BY lsn, change"
        )
        .await,
        vec![
            some(&["drop_column", "phone", "200"]),
            some(&["add_column", "full_name", "300"]),
            some(&["drop_column", "name", "300"]),
        ]
    );
}

#[tokio::test]
async fn widening_evolves_silver_types_and_keeps_stored_values() {
    let (_dir, lake) = new_lake();
    let shape = |qty: PgType, score: PgType, price: PgType| {
        vec![
            col("id", PgType::Int8),
            col("qty", qty),
            col("score", score),
            col("price", price),
            col("code", PgType::Text),
        ]
    };
    let v1 = shape(PgType::Int2, PgType::Float4, PgType::Numeric(Some((6, 2))));
    let v2 = shape(PgType::Int4, PgType::Float8, PgType::Numeric(Some((12, 2))));
    let v3 = shape(PgType::Int8, PgType::Float8, PgType::Numeric(None));
    let c = |op, lsn, cols: &Vec<Column>, row| event("customers", op, lsn, 1, cols.clone(), row);
    let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
    let events = [c(
        Op::Create,
        100,
        &v1,
        json!({"id": 1, "qty": 7, "score": 1.5, "price": "9.90", "code": "a"}),
    )];
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 0))
        .await
        .unwrap();
    assert_eq!(
        silver_type(&lake, "customers", "qty").await,
        DataType::Int16
    );
    assert_eq!(
        silver_type(&lake, "customers", "score").await,
        DataType::Float32
    );
    assert_eq!(
        silver_type(&lake, "customers", "price").await,
        DataType::Decimal128(6, 2)
    );

    // int2 → int4, float4 → float8, numeric(6,2) → numeric(12,2); the
    // batch also holds an old-shape event from another shard after them.
    let mut late = c(
        Op::Create,
        210,
        &v1,
        json!({"id": 5, "qty": 5, "score": 0.5, "price": "1.00", "code": "e"}),
    );
    late.source.shard = 1;
    let events = [
        c(
            Op::Create,
            200,
            &v2,
            json!({"id": 2, "qty": 70000, "score": 1e300, "price": "1234567890.12", "code": "b"}),
        ),
        late,
    ];
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 1))
        .await
        .unwrap();
    assert_eq!(
        silver_type(&lake, "customers", "qty").await,
        DataType::Int32
    );
    assert_eq!(
        silver_type(&lake, "customers", "score").await,
        DataType::Float64
    );
    assert_eq!(
        silver_type(&lake, "customers", "price").await,
        DataType::Decimal128(12, 2)
    );

    // int4 → int8, numeric(12,2) → numeric: exact text.
    let events = [
        c(
            Op::Create,
            300,
            &v3,
            json!({"id": 3, "qty": 5_000_000_000_i64, "score": 2.0, "price": "3.14159", "code": "c"}),
        ),
        // An update of the old shape after the widening, same batch.
        c(
            Op::Update,
            310,
            &v2,
            json!({"id": 2, "qty": 70001, "score": 1e300, "price": "1234567890.12", "code": "bb"}),
        ),
    ];
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 3))
        .await
        .unwrap();
    assert_eq!(
        silver_type(&lake, "customers", "qty").await,
        DataType::Int64
    );
    assert_eq!(
        silver_type(&lake, "customers", "price").await,
        DataType::Utf8
    );
    assert_eq!(
        rows(
            &lake,
            "silver",
            "customers",
            "SELECT id, qty, price, code, _lsn FROM t ORDER BY id"
        )
        .await,
        vec![
            some(&["1", "7", "9.90", "a", "100"]),
            some(&["2", "70001", "1234567890.12", "bb", "310"]),
            some(&["3", "5000000000", "3.14159", "c", "300"]),
            some(&["5", "5", "1.00", "e", "210"]),
        ]
    );
    assert_eq!(
        rows(
            &lake,
            "bronze",
            SCHEMA_CHANGES,
            "SELECT column_name, old_type, new_type, lsn FROM t WHERE change = 'silver_widen_column' ORDER BY lsn, column_name"
        )
        .await,
        vec![
            some(&["price", "Decimal128(6, 2)", "Decimal128(12, 2)", "200"]),
            some(&["qty", "Int16", "Int32", "200"]),
            some(&["score", "Float32", "Float64", "200"]),
            some(&["price", "Decimal128(12, 2)", "Utf8", "300"]),
            some(&["qty", "Int32", "Int64", "300"]),
        ]
    );
    // The widening commit says why, with the LSN.
    let t = lake.open("silver", "customers").await.unwrap().unwrap();
    let history: Vec<_> = futures::StreamExt::collect::<Vec<_>>(t.history(None))
        .await
        .into_iter()
        .map(|c| c.unwrap())
        .collect();
    assert!(
        history.iter().any(|c| c
            .info
            .get("tributary.schema_changes")
            .is_some_and(|v| v.to_string().contains("silver_widen_column"))),
        "{history:?}"
    );
}

#[tokio::test]
async fn unchanged_toast_takes_the_value_an_earlier_change_of_the_batch_set() {
    let (_dir, lake) = new_lake();
    let cols = vec![
        col("id", PgType::Int8),
        col("name", PgType::Text),
        col("bio", PgType::Text),
    ];
    let big = |c: char| c.to_string().repeat(10_000);
    let c = |op, lsn, row| event("customers", op, lsn, 1, cols.clone(), row);
    let unchanged = |lsn, name: &str| {
        let mut e = c(Op::Update, lsn, json!({"id": 1, "name": name}));
        e.unchanged_toast = vec!["bio".into()];
        e
    };
    let bio = |lake: Lake| async move {
        let r = rows(&lake, "silver", "customers", "SELECT name, bio FROM t").await;
        assert_eq!(r.len(), 1);
        (r[0][0].clone().unwrap(), r[0][1].clone())
    };
    let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
    // Insert, an update that sets the big value, one that leaves it: one batch.
    let events = [
        c(
            Op::Create,
            100,
            json!({"id": 1, "name": "ann", "bio": big('a')}),
        ),
        c(
            Op::Update,
            200,
            json!({"id": 1, "name": "ann", "bio": big('b')}),
        ),
        unchanged(300, "anna"),
    ];
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 0))
        .await
        .unwrap();
    assert_eq!(bio(lake.clone()).await, ("anna".into(), Some(big('b'))));
    // Across batches: silver's stored value is kept.
    apply_batch(
        &lake,
        "g",
        &mut state,
        msgs(TOPIC, &[unchanged(400, "annie")], 0, 3),
    )
    .await
    .unwrap();
    assert_eq!(bio(lake.clone()).await, ("annie".into(), Some(big('b'))));
    // A batch of only unchanged updates never writes NULL over the value.
    let events = [unchanged(500, "x"), unchanged(600, "y")];
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 4))
        .await
        .unwrap();
    assert_eq!(bio(lake.clone()).await, ("y".into(), Some(big('b'))));
    // Set in one batch, left unchanged in the next.
    let events = [c(
        Op::Update,
        700,
        json!({"id": 1, "name": "z", "bio": big('c')}),
    )];
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 6))
        .await
        .unwrap();
    apply_batch(
        &lake,
        "g",
        &mut state,
        msgs(TOPIC, &[unchanged(800, "zz")], 0, 7),
    )
    .await
    .unwrap();
    assert_eq!(bio(lake.clone()).await, ("zz".into(), Some(big('c'))));
    // A replay of the first batch moves nothing backwards.
    let events = [
        c(
            Op::Create,
            100,
            json!({"id": 1, "name": "ann", "bio": big('a')}),
        ),
        c(
            Op::Update,
            200,
            json!({"id": 1, "name": "ann", "bio": big('b')}),
        ),
        unchanged(300, "anna"),
    ];
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 8))
        .await
        .unwrap();
    assert_eq!(bio(lake.clone()).await, ("zz".into(), Some(big('c'))));
    // REPLICA IDENTITY FULL: the old image holds the unchanged value, and
    // a NULL there is not taken for one.
    let mut full = unchanged(900, "full");
    full.before = Some(
        json!({"id": 1, "name": "zz", "bio": big('c')})
            .as_object()
            .unwrap()
            .clone(),
    );
    let mut null_before = unchanged(1000, "nb");
    null_before.before = Some(json!({"id": 1, "bio": null}).as_object().unwrap().clone());
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &[full], 0, 11))
        .await
        .unwrap();
    assert_eq!(bio(lake.clone()).await, ("full".into(), Some(big('c'))));
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &[null_before], 0, 12))
        .await
        .unwrap();
    assert_eq!(bio(lake.clone()).await, ("nb".into(), Some(big('c'))));
    let mut f = unchanged(1100, "f");
    f.before = Some(
        json!({"id": 1, "bio": big('d')})
            .as_object()
            .unwrap()
            .clone(),
    );
    let mut after_full = c(Op::Update, 1200, json!({"id": 1, "name": "g"}));
    after_full.unchanged_toast = vec!["bio".into()];
    apply_batch(&lake, "g", &mut state, msgs(TOPIC, &[f, after_full], 0, 13))
        .await
        .unwrap();
    assert_eq!(bio(lake.clone()).await, ("g".into(), Some(big('d'))));
}

#[tokio::test]
async fn an_incompatible_change_stops_only_its_table() {
    const PRODUCTS: &str = "tributary.catalog.products";
    let (_dir, lake) = new_lake();
    let v1 = vec![col("id", PgType::Int8), col("name", PgType::Text)];
    // ALTER COLUMN name TYPE int: text → int cannot be stored without loss.
    let v2 = vec![col("id", PgType::Int8), col("name", PgType::Int4)];
    let prod = vec![
        col("id", PgType::Int8),
        col("price", PgType::Numeric(Some((6, 2)))),
    ];
    let c = |op, lsn, cols: &Vec<Column>, row| event("customers", op, lsn, 1, cols.clone(), row);
    let p = |lsn, id: i64, price: &str| {
        event(
            "products",
            Op::Create,
            lsn,
            1,
            prod.clone(),
            json!({"id": id, "price": price}),
        )
    };
    let mut states = HashMap::new();
    states.insert(
        TOPIC.to_string(),
        load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap(),
    );
    states.insert(
        PRODUCTS.to_string(),
        load_state(&lake, "g", "products", PRODUCTS, 1)
            .await
            .unwrap(),
    );
    let mut stopped = HashSet::new();
    let ok = [c(Op::Create, 100, &v1, json!({"id": 1, "name": "ann"}))];
    assert!(
        !apply_or_stop(
            &lake,
            "g",
            &mut states,
            &mut stopped,
            TOPIC,
            msgs(TOPIC, &ok, 0, 0)
        )
        .await
        .unwrap()
    );

    let bad = [
        c(Op::Create, 200, &v1, json!({"id": 2, "name": "bob"})),
        c(Op::Create, 300, &v2, json!({"id": 3, "name": 3})),
        c(Op::Create, 310, &v2, json!({"id": 4, "name": 4})),
    ];
    let stops = apply_or_stop(
        &lake,
        "g",
        &mut states,
        &mut stopped,
        TOPIC,
        msgs(TOPIC, &bad, 0, 1),
    );
    assert!(stops.await.unwrap(), "the table stops");
    assert!(stopped.contains("customers"));
    assert!(
        tributary_metrics::render().contains("tributary_lake_table_stopped{table=\"customers\"} 1")
    );
    // Everything before the event is applied; it and what follows are not.
    let state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
    assert_eq!(state.bronze_next.get(&0), Some(&2));
    assert_eq!(state.silver_next.get(&0), Some(&2));
    assert_eq!(bronze_count(&lake).await, 2);
    let sql = "SELECT id, name FROM t ORDER BY id";
    assert_eq!(
        rows(&lake, "silver", "customers", sql).await,
        vec![some(&["1", "ann"]), some(&["2", "bob"])]
    );
    // Later messages of the stopped table are not applied.
    let later = [c(Op::Create, 400, &v2, json!({"id": 5, "name": 5}))];
    let stops = apply_or_stop(
        &lake,
        "g",
        &mut states,
        &mut stopped,
        TOPIC,
        msgs(TOPIC, &later, 0, 4),
    );
    assert!(!stops.await.unwrap());
    assert_eq!(bronze_count(&lake).await, 2);
    // A restart without a fix stops at the same event, with an error
    // that names the table, the column and the LSN, and writes nothing.
    let mut replay = msgs(TOPIC, &bad[1..], 0, 2);
    replay.extend(msgs(TOPIC, &later, 0, 4));
    let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
    let err = apply_batch(&lake, "g", &mut state, replay.clone())
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(
        text.contains("customers")
            && text.contains("\"name\"")
            && text.contains(&Lsn(300).to_string()),
        "{text}"
    );
    assert_eq!(bronze_count(&lake).await, 2);
    // The source's type change is logged once, with its LSN.
    assert_eq!(
        rows(
            &lake,
            "bronze",
            SCHEMA_CHANGES,
            "SELECT column_name, old_type, new_type, lsn FROM t WHERE change = 'change_type'"
        )
        .await,
        vec![some(&["name", "text", "int4", "300"])]
    );

    // Another table keeps flowing, and a NaN numeric stops it in turn.
    let batch = msgs(PRODUCTS, &[p(100, 1, "9.90"), p(110, 2, "19.90")], 0, 0);
    assert!(
        !apply_or_stop(&lake, "g", &mut states, &mut stopped, PRODUCTS, batch)
            .await
            .unwrap()
    );
    assert_eq!(
        rows(
            &lake,
            "silver",
            "products",
            "SELECT id, price FROM t ORDER BY id"
        )
        .await,
        vec![some(&["1", "9.90"]), some(&["2", "19.90"])]
    );
    for (bad, reason) in [("NaN", "NaN"), ("12345.00", "integer digits")] {
        let mut state = load_state(&lake, "g", "products", PRODUCTS, 1)
            .await
            .unwrap();
        let err = apply_batch(
            &lake,
            "g",
            &mut state,
            msgs(PRODUCTS, &[p(200, 3, bad)], 0, 2),
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, Error::Incompatible(_)) && text.contains(reason),
            "{text}"
        );
        assert!(
            !text.contains(bad) || bad == "NaN",
            "no row values in errors: {text}"
        );
    }

    // The fix: rewrite silver with the column cast to the new type (the
    // stored names do not parse: NULL). After a restart the table resumes
    // at the event it stopped on, and nothing was lost.
    retype_silver_column(&lake, "customers", "name", Some(DataType::Int32))
        .await
        .unwrap();
    assert!(
        retype_silver_column(&lake, "customers", "_lsn", None)
            .await
            .is_err()
    );
    let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
    apply_batch(&lake, "g", &mut state, replay).await.unwrap();
    assert_eq!(
        rows(&lake, "silver", "customers", sql).await,
        vec![
            some(&["1", "NULL"]),
            some(&["2", "NULL"]),
            some(&["3", "3"]),
            some(&["4", "4"]),
            some(&["5", "5"]),
        ]
    );
    assert_eq!(
        silver_type(&lake, "customers", "name").await,
        DataType::Int32
    );
    assert_eq!(bronze_count(&lake).await, 5);
}

/// Applies one table's batch. A failure a retry cannot cure stops that table
/// only (returns true); a transient one is returned (see [`stop_or_fail`]).
async fn apply_or_stop(
    lake: &Lake,
    group: &str,
    states: &mut HashMap<String, TableState>,
    stopped: &mut HashSet<String>,
    topic: &str,
    messages: Vec<OwnedMessage>,
) -> Result<bool> {
    let Some(state) = states.get_mut(topic) else {
        return Ok(false);
    };
    let Err(e) = apply_batch(lake, group, state, messages).await else {
        return Ok(false);
    };
    stop_or_fail(states, stopped, topic, e)?;
    Ok(true)
}

/// A message with a writer's trace in its headers.
fn traced_msg(e: &ChangeEvent, offset: i64, traceparent: &str) -> OwnedMessage {
    use rdkafka::message::Header;
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: tributary_metrics::trace::HEADER_TRACEPARENT,
            value: Some(traceparent),
        })
        .insert(Header {
            key: tributary_metrics::trace::HEADER_REQUEST_ID,
            value: Some("req-1"),
        })
        .insert(Header {
            key: tributary_metrics::trace::HEADER_REQUESTED_US,
            value: Some("1764140000000000"),
        });
    OwnedMessage::new(
        Some(e.to_json()),
        Some(b"k".to_vec()),
        TOPIC.into(),
        Timestamp::NotAvailable,
        0,
        offset,
        Some(headers),
    )
}

#[tokio::test]
async fn bronze_keeps_the_writers_trace_and_older_tables_take_the_trace_columns() {
    use arrow::datatypes::Schema;
    let (_dir, lake) = new_lake();
    // A bronze table written before the trace columns existed.
    let full = crate::schema::bronze_schema();
    let old = std::sync::Arc::new(Schema::new(
        full.fields()
            .iter()
            .filter(|f| !["traceparent", "request_id", "requested_at"].contains(&f.name().as_str()))
            .cloned()
            .collect::<Vec<_>>(),
    ));
    let first = ev(Op::Create, 1, "ann", 100, 1);
    let row = super::bronze::bronze_row(&first, &msg(&first, 0, 0), "2026-11-26T07:00:00.000000Z");
    let batch = crate::schema::rows_to_batch(old, &[row]).unwrap();
    super::bronze::write_append(
        &lake,
        "bronze",
        "customers",
        batch,
        Some("date"),
        lake.commit_properties(),
    )
    .await
    .unwrap();
    let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
    // Offset 0 was "consumed" by the old writer; now one traced, one
    // untraced and one whose header is not a trace context.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let batch = vec![
        traced_msg(&ev(Op::Create, 2, "bob", 200, 1), 1, tp),
        msg(&ev(Op::Create, 3, "cy", 300, 1), 0, 2),
        traced_msg(&ev(Op::Create, 4, "di", 400, 1), 3, "garbage"),
    ];
    apply_batch(&lake, "g", &mut state, batch).await.unwrap();
    let got = rows(
        &lake,
        "bronze",
        "customers",
        "SELECT kafka_offset, traceparent, request_id, CAST(requested_at AS BIGINT) FROM t ORDER BY kafka_offset",
    )
    .await;
    assert_eq!(
        got,
        vec![
            some(&["0", "NULL", "NULL", "NULL"]),
            some(&["1", tp, "req-1", "1764140000000000"]),
            some(&["2", "NULL", "NULL", "NULL"]),
            some(&["3", "NULL", "NULL", "NULL"]),
        ]
    );
}
