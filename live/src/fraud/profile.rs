//! The customers' risk profiles (`gold.customer_risk_profile`, written by
//! the batch job `tributary etl run risk-profile`): the detector loads the
//! newest version at start and follows new ones, and each alert's detail
//! carries the customer's 90-day baseline, so an analyst sees at once
//! whether the order is unusual for that customer.
//!
//! Profiles only inform a person: no rule reads them, so the alerts (and
//! their ids) stay a function of the change streams alone, which is what
//! keeps them equal to the batch oracle and the same across a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use deltalake::DeltaTable;
use deltalake::datafusion::prelude::SessionContext;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tributary_lake::Lake;
use tributary_model::profile::{RiskProfile, TABLE, split_list};

use crate::{Error, Result};

/// One version of the profiles.
#[derive(Debug, Default)]
pub struct Profiles {
    pub version: u64,
    by_customer: HashMap<i64, RiskProfile>,
}

impl Profiles {
    pub fn get(&self, customer_id: i64) -> Option<&RiskProfile> {
        self.by_customer.get(&customer_id)
    }

    pub fn len(&self) -> usize {
        self.by_customer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_customer.is_empty()
    }

    /// What an alert about `customer_id` adds to its detail.
    pub fn describe(&self, customer_id: i64) -> String {
        match self.get(customer_id) {
            Some(p) => format!("profile v{}: {}", self.version, p.summary()),
            None => format!("profile v{}: no activity in 90 days", self.version),
        }
    }
}

fn column<'a, A: Array + 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a A> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<A>())
        .ok_or_else(|| Error::Profiles(format!("column {name} missing or of another type")))
}

/// The rows of `table` at its loaded version.
pub async fn read(table: &DeltaTable) -> Result<Profiles> {
    let version = table.version().unwrap_or(0);
    let ctx = SessionContext::new();
    let provider = table
        .table_provider()
        .await
        .map_err(|e| Error::Profiles(format!("{e}")))?;
    let frame = ctx
        .read_table(provider)
        .map_err(|e| Error::Profiles(format!("{e}")))?;
    let batches = frame
        .collect()
        .await
        .map_err(|e| Error::Profiles(format!("{e}")))?;
    let mut by_customer = HashMap::new();
    for b in &batches {
        // Strings may come back as views: cast the batch's text columns.
        let text = |name: &str| -> Result<StringArray> {
            let c = b
                .column_by_name(name)
                .ok_or_else(|| Error::Profiles(format!("column {name} missing")))?;
            let cast = arrow::compute::cast(c, &DataType::Utf8)
                .map_err(|e| Error::Profiles(format!("column {name}: {e}")))?;
            Ok(cast
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8")
                .clone())
        };
        let ids = column::<Int64Array>(b, "customer_id")?;
        let orders = column::<Int64Array>(b, "orders_90d")?;
        let mean = column::<Float64Array>(b, "amount_mean_90d")?;
        let sd = column::<Float64Array>(b, "amount_stddev_90d")?;
        let countries = text("countries_90d")?;
        let devices = text("devices_90d")?;
        let cards = column::<Int64Array>(b, "cards_90d")?;
        let failed = column::<Int64Array>(b, "failed_payments_90d")?;
        let opt = |a: &Float64Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
        for i in 0..b.num_rows() {
            let p = RiskProfile {
                customer_id: ids.value(i),
                orders_90d: orders.value(i),
                amount_mean_90d: opt(mean, i),
                amount_stddev_90d: opt(sd, i),
                countries_90d: split_list(countries.value(i)),
                devices_90d: split_list(devices.value(i)),
                cards_90d: cards.value(i),
                failed_payments_90d: failed.value(i),
            };
            by_customer.insert(p.customer_id, p);
        }
    }
    Ok(Profiles {
        version,
        by_customer,
    })
}

/// The table at its newest version, or `None` while the job has never run.
async fn open(lake: &Lake) -> Result<Option<DeltaTable>> {
    let lake_err = |what: String| {
        move |e| Error::Lake {
            what,
            source: Box::new(e),
        }
    };
    // A missing table reads as an error on object stores: list first.
    let tables = lake
        .list_tables("gold")
        .await
        .map_err(lake_err("listing gold".into()))?;
    if !tables.iter().any(|t| t == TABLE) {
        return Ok(None);
    }
    lake.open("gold", TABLE)
        .await
        .map_err(lake_err(format!("opening gold.{TABLE}")))
}

/// The newest profiles, or `None` while the job has never run.
pub async fn load(lake: &Lake) -> Result<Option<Profiles>> {
    match open(lake).await? {
        Some(table) => Ok(Some(read(&table).await?)),
        None => Ok(None),
    }
}

/// Follows the table: loads the newest version before it returns (so the
/// first alerts already carry it), then checks for a new one every
/// `every`. A failed check is logged and tried again next time; the
/// detector keeps the profiles it has.
pub async fn follow(
    lake: Lake,
    every: Duration,
    shutdown: CancellationToken,
) -> watch::Receiver<Option<Arc<Profiles>>> {
    let (tx, rx) = watch::channel(None);
    let mut seen: Option<u64> = None;
    refresh(&lake, &mut seen, &tx).await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if tx.is_closed() {
                return;
            }
            refresh(&lake, &mut seen, &tx).await;
        }
    });
    rx
}

/// Sends the profiles when a version newer than `seen` exists.
async fn refresh(lake: &Lake, seen: &mut Option<u64>, tx: &watch::Sender<Option<Arc<Profiles>>>) {
    match newer(lake, *seen).await {
        Ok(Some(p)) => {
            tracing::info!(
                version = p.version,
                customers = p.len(),
                "risk profiles loaded"
            );
            *seen = Some(p.version);
            tx.send_replace(Some(Arc::new(p)));
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %tributary_model::error_chain(&e), "risk profiles not refreshed")
        }
    }
}

/// The profiles, when the table has a version newer than `seen`.
async fn newer(lake: &Lake, seen: Option<u64>) -> Result<Option<Profiles>> {
    let Some(table) = open(lake).await? else {
        return Ok(None);
    };
    let version = table.version();
    if version.is_none() || version == seen {
        return Ok(None);
    }
    read(&table).await.map(Some)
}
