//! The profile with polars: lazy frames over the Parquet files of the
//! tables' active versions.
//!
//! Delta is read by hand, in three steps: the snapshot lists the active
//! files, the table's object store fetches each (so a local folder and S3
//! read alike), and polars decodes the bytes. Each file is brought to one
//! schema first (a file written before a column was added gets the column
//! as nulls, as a Delta reader must), then one lazy plan aggregates all of
//! them on polars' thread pool, off the async runtime.
//!
//! Limits: every active file of both tables is held in memory while the
//! plan runs (the projected columns only); partitioned tables and deletion
//! vectors, which silver never has, are refused rather than misread.

use std::io::Cursor;

use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use polars::prelude::{
    Column, DataFrame, DataType as PlType, Expr, IntoLazy, LazyFrame, ParquetReader, PolarsError,
    SerReader, Series, SortMultipleOptions, SortOptions, TimeUnit, UnionArgs, UniqueKeepStrategy,
    col, concat, len, lit,
};

use super::{Inputs, RiskProfile};
use crate::{Error, Result};

/// Files fetched at once.
const FETCH_CONCURRENCY: usize = 8;

/// A column a profile reads and the type it is brought to.
struct Wanted {
    name: &'static str,
    kind: Kind,
}

enum Kind {
    Int,
    /// A decimal or float amount, as `f64`.
    Amount,
    Text,
    /// A timestamp, as microseconds since the epoch.
    Micros,
}

const ORDERS: &[Wanted] = &[
    Wanted {
        name: "customer_id",
        kind: Kind::Int,
    },
    Wanted {
        name: "total",
        kind: Kind::Amount,
    },
    Wanted {
        name: "created_at",
        kind: Kind::Micros,
    },
    Wanted {
        name: "device_id",
        kind: Kind::Text,
    },
    Wanted {
        name: "billing_country",
        kind: Kind::Text,
    },
    Wanted {
        name: "shipping_country",
        kind: Kind::Text,
    },
];

const PAYMENTS: &[Wanted] = &[
    Wanted {
        name: "customer_id",
        kind: Kind::Int,
    },
    Wanted {
        name: "card_fingerprint",
        kind: Kind::Text,
    },
    Wanted {
        name: "status",
        kind: Kind::Text,
    },
    Wanted {
        name: "created_at",
        kind: Kind::Micros,
    },
];

fn polars_err(table: &'static str) -> impl Fn(PolarsError) -> Error {
    move |e| Error::Polars {
        table,
        message: e.to_string(),
    }
}

pub(super) async fn compute(inputs: &Inputs) -> Result<Vec<RiskProfile>> {
    let orders = fetch(&inputs.orders, "orders").await?;
    let payments = match &inputs.payments {
        Some(p) => fetch(p, "payments").await?,
        None => Vec::new(),
    };
    let (start, end) = inputs.window_us();
    tokio::task::spawn_blocking(move || plan(orders, payments, start, end))
        .await
        .expect("the polars plan does not panic")
}

/// The bytes of every active Parquet file of `table`.
async fn fetch(table: &DeltaTable, name: &'static str) -> Result<Vec<bytes::Bytes>> {
    let snapshot = table.snapshot().map_err(|source| Error::Read {
        table: name,
        source,
    })?;
    let paths: Vec<_> = snapshot
        .log_data()
        .into_iter()
        .map(|add| {
            let refuse = |what: &str| Error::Polars {
                table: name,
                message: format!("{} has {what}, which this reader does not read", add.path()),
            };
            if add.deletion_vector_descriptor().is_some() {
                Err(refuse("a deletion vector"))
            } else if !add.partition_values_map().is_empty() {
                Err(refuse("partition values"))
            } else {
                Ok(add.object_store_path())
            }
        })
        .collect::<Result<_>>()?;
    let store = table.object_store();
    futures::stream::iter(paths)
        .map(|path| {
            let store = store.clone();
            async move {
                let got = store.get(&path).await?;
                got.bytes().await
            }
        })
        .buffered(FETCH_CONCURRENCY)
        .try_collect()
        .await
        .map_err(|e| Error::Read {
            table: name,
            source: e.into(),
        })
}

/// One file as a frame with exactly the `wanted` columns, in their types.
fn normalise(bytes: bytes::Bytes, table: &'static str, wanted: &[Wanted]) -> Result<LazyFrame> {
    let err = polars_err(table);
    let mut reader = ParquetReader::new(Cursor::new(bytes));
    let schema = reader.schema().map_err(&err)?;
    let present: Vec<String> = wanted
        .iter()
        .filter(|w| schema.contains(w.name))
        .map(|w| w.name.to_string())
        .collect();
    let mut df = reader.with_columns(Some(present)).finish().map_err(&err)?;
    let mut exprs: Vec<Expr> = Vec::with_capacity(wanted.len());
    for w in wanted {
        let target = match w.kind {
            Kind::Int => PlType::Int64,
            Kind::Amount => PlType::Float64,
            Kind::Text => PlType::String,
            Kind::Micros => PlType::Int64,
        };
        let Ok(column) = df.column(w.name) else {
            // Written before the column existed: nulls, as Delta reads it.
            let nulls = Series::full_null(w.name.into(), df.height(), &target);
            df.with_column(Column::from(nulls)).map_err(&err)?;
            exprs.push(col(w.name));
            continue;
        };
        let e = match (&w.kind, column.dtype()) {
            (Kind::Micros, PlType::Datetime(_, tz)) => col(w.name)
                .cast(PlType::Datetime(TimeUnit::Microseconds, tz.clone()))
                .cast(PlType::Int64),
            (Kind::Micros, other) => {
                return Err(Error::Polars {
                    table,
                    message: format!("column {} is {other}, not a timestamp", w.name),
                });
            }
            _ => col(w.name).cast(target),
        };
        exprs.push(e.alias(w.name));
    }
    Ok(df.lazy().select(exprs))
}

/// All files of a table as one frame (an empty one with the columns when
/// there are none).
fn table_frame(
    files: Vec<bytes::Bytes>,
    table: &'static str,
    wanted: &[Wanted],
) -> Result<LazyFrame> {
    let frames = files
        .into_iter()
        .map(|b| normalise(b, table, wanted))
        .collect::<Result<Vec<_>>>()?;
    if frames.is_empty() {
        let columns = wanted
            .iter()
            .map(|w| {
                let t = match w.kind {
                    Kind::Amount => PlType::Float64,
                    Kind::Text => PlType::String,
                    Kind::Int | Kind::Micros => PlType::Int64,
                };
                Column::from(Series::new_empty(w.name.into(), &t))
            })
            .collect();
        let df = DataFrame::new(0, columns).map_err(polars_err(table))?;
        return Ok(df.lazy());
    }
    concat(frames, UnionArgs::default()).map_err(polars_err(table))
}

fn in_window(start: i64, end: i64) -> Expr {
    col("created_at")
        .gt_eq(lit(start))
        .and(col("created_at").lt_eq(lit(end)))
}

/// Distinct non-null values of `column` per customer, sorted, as a list.
fn distinct_per_customer(frame: LazyFrame, column: &str, alias: &str) -> LazyFrame {
    frame
        .filter(col(column).is_not_null())
        .group_by([col("customer_id")])
        .agg([col(column)
            .unique()
            .sort(SortOptions::default())
            .alias(alias)])
}

fn plan(
    orders: Vec<bytes::Bytes>,
    payments: Vec<bytes::Bytes>,
    start: i64,
    end: i64,
) -> Result<Vec<RiskProfile>> {
    let err = polars_err("customer_risk_profile");
    let orders = table_frame(orders, "orders", ORDERS)?
        .filter(in_window(start, end))
        .with_column(col("total").alias("amount"));
    let payments = table_frame(payments, "payments", PAYMENTS)?
        .filter(col("customer_id").is_not_null().and(in_window(start, end)));

    let amounts = orders.clone().group_by([col("customer_id")]).agg([
        len().cast(PlType::Int64).alias("orders_90d"),
        col("amount").mean().alias("amount_mean_90d"),
        col("amount").std(1).alias("amount_stddev_90d"),
    ]);
    let countries = distinct_per_customer(
        concat(
            [
                orders
                    .clone()
                    .select([col("customer_id"), col("billing_country").alias("country")]),
                orders
                    .clone()
                    .select([col("customer_id"), col("shipping_country").alias("country")]),
            ],
            UnionArgs::default(),
        )
        .map_err(&err)?,
        "country",
        "countries_90d",
    );
    let devices = distinct_per_customer(orders.clone(), "device_id", "devices_90d");
    let cards = payments.clone().group_by([col("customer_id")]).agg([
        col("card_fingerprint")
            .drop_nulls()
            .n_unique()
            .cast(PlType::Int64)
            .alias("cards_90d"),
        col("status")
            .eq(lit("failed"))
            .cast(PlType::Int64)
            .sum()
            .alias("failed_payments_90d"),
    ]);
    let ids = concat(
        [
            orders.select([col("customer_id")]),
            payments.select([col("customer_id")]),
        ],
        UnionArgs::default(),
    )
    .map_err(&err)?
    .unique(None, UniqueKeepStrategy::Any);
    let on = || col("customer_id");
    let df = ids
        .left_join(amounts, on(), on())
        .left_join(countries, on(), on())
        .left_join(devices, on(), on())
        .left_join(cards, on(), on())
        .sort(["customer_id"], SortMultipleOptions::default())
        .collect()
        .map_err(&err)?;
    rows(&df).map_err(&err)
}

fn rows(df: &DataFrame) -> Result<Vec<RiskProfile>, PolarsError> {
    let ids = df.column("customer_id")?.i64()?;
    let orders = df.column("orders_90d")?.i64()?;
    let mean = df.column("amount_mean_90d")?.f64()?;
    let sd = df.column("amount_stddev_90d")?.f64()?;
    let countries = df.column("countries_90d")?.list()?;
    let devices = df.column("devices_90d")?.list()?;
    let cards = df.column("cards_90d")?.i64()?;
    let failed = df.column("failed_payments_90d")?.i64()?;
    let strings = |s: Option<Series>| -> Result<Vec<String>, PolarsError> {
        Ok(match s {
            Some(s) => {
                let values = s.str()?;
                (0..values.len())
                    .filter_map(|i| values.get(i).map(str::to_string))
                    .collect()
            }
            None => Vec::new(),
        })
    };
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let orders_90d = orders.get(i).unwrap_or(0);
        out.push(RiskProfile {
            customer_id: ids.get(i).expect("customer ids are not null"),
            orders_90d,
            amount_mean_90d: if orders_90d > 0 { mean.get(i) } else { None },
            amount_stddev_90d: if orders_90d > 1 { sd.get(i) } else { None },
            countries_90d: strings(countries.get_as_series(i))?,
            devices_90d: strings(devices.get_as_series(i))?,
            cards_90d: cards.get(i).unwrap_or(0),
            failed_payments_90d: failed.get(i).unwrap_or(0),
        });
    }
    Ok(out)
}
