//! `gold.customer_risk_profile` on disk: its columns and the run's commit.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, Utc};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use tributary_lake::Lake;
use tributary_lake::schema::timestamp_type;
use tributary_model::profile::join_list;

use super::{Engine, RiskProfile, TABLE};
use crate::marts::session;
use crate::{Error, Result};

const GOLD: &str = "gold";

/// The commit metadata key that records what a version was built from.
pub const PROVENANCE_KEY: &str = "tributary.risk_profile";

pub static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Int64, false),
        Field::new("as_of", timestamp_type(), false),
        Field::new("orders_90d", DataType::Int64, false),
        Field::new("amount_mean_90d", DataType::Float64, true),
        Field::new("amount_stddev_90d", DataType::Float64, true),
        Field::new("countries_90d", DataType::Utf8, false),
        Field::new("devices_90d", DataType::Utf8, false),
        Field::new("cards_90d", DataType::Int64, false),
        Field::new("failed_payments_90d", DataType::Int64, false),
    ]))
});

/// What a version of the table was built from.
pub(super) struct Provenance {
    pub as_of: DateTime<Utc>,
    pub engine: Engine,
    pub orders_version: Option<u64>,
    pub payments_version: Option<u64>,
}

pub(super) fn batch(profiles: &[RiskProfile], as_of: DateTime<Utc>) -> Result<RecordBatch> {
    let int = |f: fn(&RiskProfile) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(profiles.iter().map(f)))
    };
    let float = |f: fn(&RiskProfile) -> Option<f64>| -> ArrayRef {
        Arc::new(profiles.iter().map(f).collect::<Float64Array>())
    };
    let text = |f: fn(&RiskProfile) -> &Vec<String>| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            profiles.iter().map(|p| join_list(f(p))),
        ))
    };
    let as_of = TimestampMicrosecondArray::from_value(as_of.timestamp_micros(), profiles.len())
        .with_timezone("UTC");
    RecordBatch::try_new(
        SCHEMA.clone(),
        vec![
            int(|p| p.customer_id),
            Arc::new(as_of),
            int(|p| p.orders_90d),
            float(|p| p.amount_mean_90d),
            float(|p| p.amount_stddev_90d),
            text(|p| &p.countries_90d),
            text(|p| &p.devices_90d),
            int(|p| p.cards_90d),
            int(|p| p.failed_payments_90d),
        ],
    )
    .map_err(|source| Error::Arrow {
        table: TABLE,
        source,
    })
}

/// Replaces the table's rows with `profiles` in one commit; returns the
/// version.
pub(super) async fn write(
    lake: &Lake,
    profiles: &[RiskProfile],
    provenance: &Provenance,
) -> Result<Option<u64>> {
    let handle = match session::open(lake, GOLD, TABLE).await? {
        Some(t) => t,
        None => lake.table_handle(GOLD, TABLE).await?,
    };
    let metadata = serde_json::json!({
        "as_of": provenance.as_of.to_rfc3339(),
        "engine": provenance.engine.as_str(),
        "silver.orders": provenance.orders_version,
        "silver.payments": provenance.payments_version,
    });
    let props = lake
        .commit_properties()
        .with_metadata([(PROVENANCE_KEY.to_string(), metadata)]);
    let table = handle
        .write(vec![batch(profiles, provenance.as_of)?])
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(SchemaMode::Overwrite)
        .with_table_name(TABLE)
        .with_commit_properties(props)
        .await
        .map_err(|source| Error::Write {
            table: TABLE,
            source,
        })?;
    Ok(table.version())
}
