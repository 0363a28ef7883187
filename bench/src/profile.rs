//! The risk-profile job (`tributary etl run risk-profile`) on its two
//! engines: polars over the Parquet files against DataFusion SQL over the
//! Delta tables, on the same synthetic silver tables, in the same run.
//!
//! The tables look like silver's: `orders` (a customer, a total, a device,
//! billing and shipping countries, a creation time spread over 120 days so
//! the 90-day window keeps about three quarters) and `payments` (one per
//! order, a card fingerprint, about 3% failed), written in several commits
//! so each table is several files, as ingest leaves it between
//! compactions. Each engine runs once to warm up, then `runs` times,
//! alternating; the report gives medians and checks the two results are
//! the same profiles.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Decimal128Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, TimeDelta, Utc};
use deltalake::protocol::SaveMode;
use tributary_etl::profile::{self, Engine, Inputs};
use tributary_lake::schema::timestamp_type;
use tributary_lake::{Lake, LakeConfig};

use crate::ssb::median;
use crate::{Error, Result, io};

#[derive(Clone, Debug)]
pub struct Options {
    /// A fresh lake is made here (anything in it is deleted first).
    pub dir: PathBuf,
    pub orders: usize,
    pub customers: usize,
    /// Commits (files) per table.
    pub files: usize,
    /// Timed runs per engine, after one warm-up run each.
    pub runs: usize,
}

impl Options {
    pub fn new(dir: PathBuf) -> Self {
        Options {
            dir,
            orders: 1_000_000,
            customers: 100_000,
            files: 16,
            runs: 3,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub options: Options,
    pub build: Duration,
    pub profiles: usize,
    pub polars: Vec<Duration>,
    pub datafusion: Vec<Duration>,
    /// Customers whose two profiles differ (0 when the engines agree).
    pub mismatches: usize,
}

impl Report {
    pub fn ratio(&self) -> f64 {
        median(&self.polars).as_secs_f64() / median(&self.datafusion).as_secs_f64()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "risk profiles: {} orders and payments of {} customers, {} files per table (built in {:.1}s); {} profiles",
            o.orders,
            o.customers,
            o.files,
            self.build.as_secs_f64(),
            self.profiles
        )?;
        writeln!(
            f,
            "{:<12} {:>10} {:>10} {:>10}",
            "engine", "median s", "min s", "max s"
        )?;
        for (name, times) in [("polars", &self.polars), ("datafusion", &self.datafusion)] {
            let secs = |d: Duration| d.as_secs_f64();
            writeln!(
                f,
                "{:<12} {:>10.3} {:>10.3} {:>10.3}",
                name,
                secs(median(times)),
                secs(*times.iter().min().expect("runs > 0")),
                secs(*times.iter().max().expect("runs > 0")),
            )?;
        }
        writeln!(f, "polars / datafusion: {:.2}x", self.ratio())?;
        writeln!(
            f,
            "results: {}",
            if self.mismatches == 0 {
                "the same profiles".to_string()
            } else {
                format!("{} customers differ", self.mismatches)
            }
        )
    }
}

/// A deterministic stream of numbers (splitmix64).
struct Numbers(u64);

impl Numbers {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const COUNTRIES: [&str; 8] = ["US", "DE", "FR", "GB", "NL", "PL", "ES", "IT"];

fn orders_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("total", DataType::Decimal128(12, 2), false),
        Field::new("created_at", timestamp_type(), false),
        Field::new("device_id", DataType::Utf8, true),
        Field::new("billing_country", DataType::Utf8, true),
        Field::new("shipping_country", DataType::Utf8, true),
    ]))
}

fn payments_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("order_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, true),
        Field::new("amount", DataType::Decimal128(12, 2), false),
        Field::new("status", DataType::Utf8, false),
        Field::new("card_fingerprint", DataType::Utf8, true),
        Field::new("created_at", timestamp_type(), false),
    ]))
}

/// One commit's orders and payments: ids `first..first + n`.
fn batches(
    first: usize,
    n: usize,
    customers: usize,
    now: DateTime<Utc>,
) -> Result<(RecordBatch, RecordBatch)> {
    let mut rng = Numbers(first as u64);
    let span = TimeDelta::days(120).num_microseconds().expect("fits");
    let end = now.timestamp_micros();
    let ids: Vec<i64> = (first..first + n).map(|i| i as i64).collect();
    let mut customer = Vec::with_capacity(n);
    let mut total = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut device = Vec::with_capacity(n);
    let mut billing = Vec::with_capacity(n);
    let mut shipping = Vec::with_capacity(n);
    let mut card = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    for _ in 0..n {
        let c = rng.below(customers as u64) as i64;
        customer.push(c);
        total.push(500 + rng.below(50_000) as i128);
        created.push(end - rng.below(span as u64) as i64);
        // A customer's usual device, country and card, and sometimes another.
        let odd = rng.below(10) == 0;
        let home = COUNTRIES[(c as usize) % COUNTRIES.len()];
        device.push(format!("dev-{c}-{}", if odd { rng.below(4) } else { 0 }));
        billing.push(home.to_string());
        shipping.push(if odd {
            COUNTRIES[rng.below(8) as usize].to_string()
        } else {
            home.to_string()
        });
        card.push(format!("card-{c}-{}", if odd { rng.below(3) } else { 0 }));
        status.push(if rng.below(33) == 0 {
            "failed"
        } else {
            "captured"
        });
    }
    let created_at = TimestampMicrosecondArray::from(created).with_timezone("UTC");
    let money = |v: Vec<i128>| Decimal128Array::from(v).with_precision_and_scale(12, 2);
    let orders = RecordBatch::try_new(
        orders_schema(),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Int64Array::from(customer.clone())),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                "paid", n,
            ))),
            Arc::new(money(total.clone())?),
            Arc::new(created_at.clone()),
            Arc::new(StringArray::from_iter_values(device)),
            Arc::new(StringArray::from_iter_values(billing)),
            Arc::new(StringArray::from_iter_values(shipping)),
        ],
    )?;
    let payments = RecordBatch::try_new(
        payments_schema(),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Int64Array::from(ids)),
            Arc::new(Int64Array::from(customer)),
            Arc::new(money(total)?),
            Arc::new(StringArray::from_iter_values(status)),
            Arc::new(StringArray::from_iter_values(card)),
            Arc::new(created_at),
        ],
    )?;
    Ok((orders, payments))
}

async fn append(lake: &Lake, table: &str, batch: RecordBatch) -> Result<()> {
    let handle = match lake.open("silver", table).await? {
        Some(t) => t,
        None => lake.table_handle("silver", table).await?,
    };
    handle
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .await
        .map_err(|source| Error::Delta {
            table: format!("silver.{table}"),
            source,
        })?;
    Ok(())
}

/// Builds the tables, then times both engines.
pub async fn run(options: &Options) -> Result<Report> {
    if options.runs == 0 || options.files == 0 || options.customers == 0 {
        return Err(Error::Options(
            "runs, files and customers must be positive".into(),
        ));
    }
    if options.dir.exists() {
        std::fs::remove_dir_all(&options.dir)
            .map_err(io(format!("clearing {}", options.dir.display())))?;
    }
    std::fs::create_dir_all(&options.dir)
        .map_err(io(format!("creating {}", options.dir.display())))?;
    let lake = Lake::new(&LakeConfig {
        root: options.dir.to_string_lossy().into_owned(),
        s3: None,
        coordinator_dsn: None,
    })?;
    let now = Utc::now();
    let started = Instant::now();
    let per_file = options.orders.div_ceil(options.files);
    let mut first = 0;
    while first < options.orders {
        let n = per_file.min(options.orders - first);
        let (orders, payments) = batches(first, n, options.customers, now)?;
        append(&lake, "orders", orders).await?;
        append(&lake, "payments", payments).await?;
        first += n;
    }
    let build = started.elapsed();
    eprintln!(
        "built silver.orders and silver.payments in {:.1}s; timing",
        build.as_secs_f64()
    );

    let inputs = Inputs::open(&lake, now).await.map_err(etl)?;
    let reference = profile::compute(&inputs, Engine::DataFusion)
        .await
        .map_err(etl)?;
    let candidate = profile::compute(&inputs, Engine::Polars)
        .await
        .map_err(etl)?;
    let mismatches = if reference.len() != candidate.len() {
        reference.len().abs_diff(candidate.len()).max(1)
    } else {
        reference
            .iter()
            .zip(&candidate)
            .filter(|(a, b)| !a.same_as(b))
            .count()
    };
    let mut polars = Vec::new();
    let mut datafusion = Vec::new();
    for run in 0..options.runs {
        for (engine, times) in [
            (Engine::Polars, &mut polars),
            (Engine::DataFusion, &mut datafusion),
        ] {
            let started = Instant::now();
            let rows = profile::compute(&inputs, engine).await.map_err(etl)?;
            times.push(started.elapsed());
            eprintln!(
                "run {}/{}: {engine} {:.3}s ({} profiles)",
                run + 1,
                options.runs,
                started.elapsed().as_secs_f64(),
                rows.len()
            );
        }
    }
    Ok(Report {
        options: options.clone(),
        build,
        profiles: reference.len(),
        polars,
        datafusion,
        mismatches,
    })
}

fn etl(e: tributary_etl::Error) -> Error {
    Error::Etl(Box::new(e))
}
