//! The risk-profile job over real Delta tables: both engines against
//! profiles worked out by hand, a file written before the fraud columns
//! existed, and the table a run leaves.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::{DateTime, TimeDelta, Utc};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use tributary_etl::Error;
use tributary_etl::profile::{self, Engine, Inputs, ProfileOptions, RiskProfile};
use tributary_lake::Lake;

use crate::scratch_lake::{self, lake};

fn as_of() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
        .unwrap()
        .to_utc()
}

fn ago(days: i64) -> i64 {
    (as_of() - TimeDelta::days(days)).timestamp_micros()
}

fn ts(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

fn money(cents: Vec<i128>) -> ArrayRef {
    Arc::new(
        Decimal128Array::from(cents)
            .with_precision_and_scale(12, 2)
            .unwrap(),
    )
}

fn text(v: Vec<Option<&str>>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

fn ints(v: Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(v))
}

fn timestamp() -> DataType {
    tributary_lake::schema::timestamp_type()
}

/// `orders` as silver held it before migration 2: no device, no countries.
fn old_orders(rows: &[(i64, i64, i128, i64)]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("total", DataType::Decimal128(12, 2), false),
        Field::new("created_at", timestamp(), false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            ints(rows.iter().map(|r| r.0).collect()),
            ints(rows.iter().map(|r| r.1).collect()),
            money(rows.iter().map(|r| r.2).collect()),
            ts(rows.iter().map(|r| r.3).collect()),
        ],
    )
    .unwrap()
}

type Order<'a> = (
    i64,
    i64,
    i128,
    i64,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

fn orders(rows: &[Order]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("total", DataType::Decimal128(12, 2), false),
        Field::new("created_at", timestamp(), false),
        Field::new("device_id", DataType::Utf8, true),
        Field::new("billing_country", DataType::Utf8, true),
        Field::new("shipping_country", DataType::Utf8, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            ints(rows.iter().map(|r| r.0).collect()),
            ints(rows.iter().map(|r| r.1).collect()),
            money(rows.iter().map(|r| r.2).collect()),
            ts(rows.iter().map(|r| r.3).collect()),
            text(rows.iter().map(|r| r.4).collect()),
            text(rows.iter().map(|r| r.5).collect()),
            text(rows.iter().map(|r| r.6).collect()),
        ],
    )
    .unwrap()
}

type Payment<'a> = (i64, Option<i64>, Option<&'a str>, &'a str, i64);

fn payments(rows: &[Payment]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, true),
        Field::new("card_fingerprint", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("created_at", timestamp(), false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            ints(rows.iter().map(|r| r.0).collect()),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            text(rows.iter().map(|r| r.2).collect()),
            text(rows.iter().map(|r| Some(r.3)).collect()),
            ts(rows.iter().map(|r| r.4).collect()),
        ],
    )
    .unwrap()
}

/// Appends with the schema merged, as ingest does after a column is added.
async fn append_merged(lake: &Lake, table: &str, batch: RecordBatch) {
    scratch_lake::table(lake, "silver", table)
        .await
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .with_schema_mode(SchemaMode::Merge)
        .await
        .unwrap();
}

/// Two order files (one from before the fraud columns) and payments.
async fn silver(lake: &Lake) {
    scratch_lake::append(
        lake,
        "silver",
        "orders",
        old_orders(&[(1, 1, 10_00, ago(10)), (2, 2, 99_00, ago(200))]),
    )
    .await;
    append_merged(
        lake,
        "orders",
        orders(&[
            (3, 1, 20_00, ago(5), Some("d1"), Some("DE"), Some("DE")),
            (4, 1, 60_00, ago(1), Some("d2"), Some("DE"), Some("FR")),
            (5, 3, 5_00, ago(2), Some("d9"), None, Some("US")),
            // Exactly at the window's ends: included; a second later: not.
            (
                6,
                4,
                7_50,
                as_of().timestamp_micros(),
                Some("d4"),
                Some("PL"),
                Some("PL"),
            ),
            (7, 4, 8_50, ago(90), None, Some("PL"), Some("PL")),
            (
                8,
                5,
                1_00,
                as_of().timestamp_micros() + 1_000_000,
                Some("d5"),
                Some("ES"),
                Some("ES"),
            ),
        ]),
    )
    .await;
    scratch_lake::append(
        lake,
        "silver",
        "payments",
        payments(&[
            (1, Some(1), Some("c1"), "captured", ago(5)),
            (2, Some(1), Some("c1"), "failed", ago(4)),
            (3, Some(1), Some("c2"), "failed", ago(1)),
            (4, Some(3), None, "captured", ago(2)),
            (5, Some(6), Some("c7"), "captured", ago(3)),
            // No customer (a row from before migration 2), or too old.
            (6, None, Some("c8"), "failed", ago(3)),
            (7, Some(2), Some("c9"), "captured", ago(100)),
        ]),
    )
    .await;
}

fn expected() -> Vec<RiskProfile> {
    let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        RiskProfile {
            customer_id: 1,
            orders_90d: 3,
            amount_mean_90d: Some(30.0),
            // Deviations -20, -10, 30: 1400 / (3 - 1).
            amount_stddev_90d: Some(700f64.sqrt()),
            countries_90d: list(&["DE", "FR"]),
            devices_90d: list(&["d1", "d2"]),
            cards_90d: 2,
            failed_payments_90d: 2,
        },
        RiskProfile {
            customer_id: 3,
            orders_90d: 1,
            amount_mean_90d: Some(5.0),
            amount_stddev_90d: None,
            countries_90d: list(&["US"]),
            devices_90d: list(&["d9"]),
            cards_90d: 0,
            failed_payments_90d: 0,
        },
        RiskProfile {
            customer_id: 4,
            orders_90d: 2,
            amount_mean_90d: Some(8.0),
            amount_stddev_90d: Some(0.5f64.sqrt()),
            countries_90d: list(&["PL"]),
            devices_90d: list(&["d4"]),
            cards_90d: 0,
            failed_payments_90d: 0,
        },
        RiskProfile {
            customer_id: 6,
            orders_90d: 0,
            amount_mean_90d: None,
            amount_stddev_90d: None,
            countries_90d: vec![],
            devices_90d: vec![],
            cards_90d: 1,
            failed_payments_90d: 0,
        },
    ]
}

fn assert_same(engine: Engine, got: &[RiskProfile], want: &[RiskProfile]) {
    assert_eq!(
        got.iter().map(|p| p.customer_id).collect::<Vec<_>>(),
        want.iter().map(|p| p.customer_id).collect::<Vec<_>>(),
        "{engine}: customers"
    );
    for (g, w) in got.iter().zip(want) {
        assert!(g.same_as(w), "{engine}:\n got {g:?}\nwant {w:?}");
    }
}

#[tokio::test]
async fn both_engines_give_the_profiles_worked_out_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    silver(&lake).await;
    let inputs = Inputs::open(&lake, as_of()).await.unwrap();
    for engine in [Engine::Polars, Engine::DataFusion] {
        let got = profile::compute(&inputs, engine).await.unwrap();
        assert_same(engine, &got, &expected());
    }
}

#[tokio::test]
async fn orders_without_payments_yet_still_profile() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    scratch_lake::append(
        &lake,
        "silver",
        "orders",
        orders(&[(1, 9, 12_00, ago(1), Some("d"), Some("NL"), Some("NL"))]),
    )
    .await;
    let inputs = Inputs::open(&lake, as_of()).await.unwrap();
    assert!(inputs.payments.is_none());
    for engine in [Engine::Polars, Engine::DataFusion] {
        let got = profile::compute(&inputs, engine).await.unwrap();
        assert_eq!(got.len(), 1, "{engine}");
        assert_eq!(
            (got[0].customer_id, got[0].orders_90d, got[0].cards_90d),
            (9, 1, 0)
        );
        assert_eq!(got[0].amount_mean_90d, Some(12.0));
    }
}

#[tokio::test]
async fn without_orders_the_job_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let err = profile::build_risk_profile(&lake, &ProfileOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingSource {
                layer: "silver",
                table: "orders"
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("run ingest first"), "{err}");
}

#[tokio::test]
async fn each_run_replaces_the_table_in_one_version_and_records_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    silver(&lake).await;
    let options = ProfileOptions {
        engine: Engine::Polars,
        as_of: Some(as_of()),
    };
    let first = profile::build_risk_profile(&lake, &options).await.unwrap();
    assert_eq!((first.customers, first.version), (4, Some(0)));
    assert_eq!(
        (first.orders_version, first.payments_version),
        (Some(1), Some(0))
    );

    // A new order for a new customer; the next run (on the other engine)
    // replaces every row.
    append_merged(
        &lake,
        "orders",
        orders(&[(9, 7, 3_00, ago(1), Some("d7"), Some("IT"), Some("IT"))]),
    )
    .await;
    let options = ProfileOptions {
        engine: Engine::DataFusion,
        as_of: Some(as_of()),
    };
    let second = profile::build_risk_profile(&lake, &options).await.unwrap();
    assert_eq!((second.customers, second.version), (5, Some(1)));

    let table = lake.open("gold", profile::TABLE).await.unwrap().unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    let rows: usize = ctx
        .read_table(table.table_provider().await.unwrap())
        .unwrap()
        .collect()
        .await
        .unwrap()
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(rows, 5);
    let history: Vec<_> = futures::TryStreamExt::try_collect(table.history(Some(1)))
        .await
        .unwrap();
    let provenance = history[0]
        .info
        .get(profile::PROVENANCE_KEY)
        .expect("recorded");
    assert_eq!(provenance["engine"], "datafusion");
    assert_eq!(provenance["silver.orders"], 2);
    assert_eq!(provenance["silver.payments"], 0);
    assert_eq!(provenance["as_of"], as_of().to_rfc3339());
}
