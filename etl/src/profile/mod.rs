//! Customer risk profiles: `gold.customer_risk_profile`, one row per
//! customer with recent activity, the baseline the fraud detector reads
//! next to its own live state.
//!
//! Per customer, over the 90 days up to the run's `as_of`:
//! - `orders_90d`, and the mean and sample standard deviation of the order
//!   totals (`amount_mean_90d`, `amount_stddev_90d`; no deviation under two
//!   orders);
//! - `countries_90d`: every billing and shipping country of those orders,
//!   `devices_90d`: every device they came from (sorted, comma-separated);
//! - `cards_90d`: distinct card fingerprints of the customer's payments, and
//!   `failed_payments_90d`.
//!
//! Inputs: `silver.orders` and `silver.payments`, each read at one version
//! (recorded in the commit's metadata with `as_of` and the engine). Output:
//! the whole table replaced in one Delta commit, so each run is one version
//! and a reader sees either the old profiles or the new ones.
//!
//! Two engines compute the same profiles: [`Engine::Polars`], lazy frames
//! over the tables' Parquet files (the job's engine), and
//! [`Engine::DataFusion`], the same profile as SQL over the Delta tables
//! (the reference it is measured against: `tributary bench profile`, see
//! BENCHMARKS.md). Both return [`RiskProfile`] rows sorted by customer, so
//! their results compare row for row.

mod datafusion_sql;
mod polars_frames;
mod table;

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use deltalake::DeltaTable;
use tributary_lake::Lake;

use crate::marts::session;
use crate::{Error, Result};

pub use table::{PROVENANCE_KEY, SCHEMA};
pub use tributary_model::profile::{RiskProfile, TABLE};

/// How far back a profile looks.
pub const WINDOW: TimeDelta = TimeDelta::days(tributary_model::profile::WINDOW_DAYS);

/// Which engine computes the profiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// Lazy polars frames over the Parquet files (the default: faster here,
    /// see BENCHMARKS.md).
    #[default]
    Polars,
    /// DataFusion SQL over the Delta tables.
    DataFusion,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Polars => "polars",
            Engine::DataFusion => "datafusion",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a run reads: both tables at one version each, and the window.
pub struct Inputs {
    pub orders: DeltaTable,
    /// `None` when no payment has been ingested yet.
    pub payments: Option<DeltaTable>,
    pub as_of: DateTime<Utc>,
}

impl Inputs {
    /// Opens the inputs at their current versions.
    pub async fn open(lake: &Lake, as_of: DateTime<Utc>) -> Result<Inputs> {
        let orders =
            session::open(lake, "silver", "orders")
                .await?
                .ok_or(Error::MissingSource {
                    layer: "silver",
                    table: "orders",
                })?;
        let payments = session::open(lake, "silver", "payments").await?;
        Ok(Inputs {
            orders,
            payments,
            as_of,
        })
    }

    /// The window as microseconds since the epoch, both ends included.
    pub fn window_us(&self) -> (i64, i64) {
        let end = self.as_of.timestamp_micros();
        (end - WINDOW.num_microseconds().expect("90 days fit"), end)
    }

    fn versions(&self) -> (Option<u64>, Option<u64>) {
        (
            self.orders.version(),
            self.payments.as_ref().and_then(|p| p.version()),
        )
    }
}

/// Computes the profiles of `inputs` with `engine`, sorted by customer.
pub async fn compute(inputs: &Inputs, engine: Engine) -> Result<Vec<RiskProfile>> {
    match engine {
        Engine::Polars => polars_frames::compute(inputs).await,
        Engine::DataFusion => datafusion_sql::compute(inputs).await,
    }
}

/// Options of a run.
#[derive(Clone, Debug, Default)]
pub struct ProfileOptions {
    pub engine: Engine,
    /// The end of the window (default: now).
    pub as_of: Option<DateTime<Utc>>,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct ProfileReport {
    pub engine: Engine,
    pub as_of: DateTime<Utc>,
    pub customers: usize,
    pub orders_version: Option<u64>,
    pub payments_version: Option<u64>,
    /// The committed version of `gold.customer_risk_profile`.
    pub version: Option<u64>,
    pub compute: Duration,
    pub write: Duration,
}

impl fmt::Display for ProfileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        write!(
            f,
            "gold.{TABLE}: {} customers as of {} (silver.orders v{}, silver.payments v{}) \
             -> version {}; {} {:.2}s, write {:.2}s",
            self.customers,
            self.as_of.format("%Y-%m-%d %H:%M:%S UTC"),
            v(self.orders_version),
            v(self.payments_version),
            v(self.version),
            self.engine,
            self.compute.as_secs_f64(),
            self.write.as_secs_f64(),
        )
    }
}

/// Builds `gold.customer_risk_profile` from silver.
pub async fn build_risk_profile(lake: &Lake, options: &ProfileOptions) -> Result<ProfileReport> {
    let as_of = options.as_of.unwrap_or_else(Utc::now);
    let inputs = Inputs::open(lake, as_of).await?;
    let started = Instant::now();
    let profiles = compute(&inputs, options.engine).await?;
    let compute_time = started.elapsed();
    let started = Instant::now();
    let (orders_version, payments_version) = inputs.versions();
    let version = table::write(
        lake,
        &profiles,
        &table::Provenance {
            as_of,
            engine: options.engine,
            orders_version,
            payments_version,
        },
    )
    .await?;
    let report = ProfileReport {
        engine: options.engine,
        as_of,
        customers: profiles.len(),
        orders_version,
        payments_version,
        version,
        compute: compute_time,
        write: started.elapsed(),
    };
    tracing::info!(%report, "risk profiles built");
    Ok(report)
}
