//! `gold.fraud_alerts`: one row per alert, exactly once.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tributary_lake::schema::timestamp_type;

use super::alert::Alert;
use crate::{Error, Result};

pub static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("order_id", DataType::Int64, true),
        Field::new("window_start", timestamp_type(), false),
        Field::new("window_end", timestamp_type(), false),
        Field::new("detail", DataType::Utf8, false),
        Field::new("source_commit_ts", timestamp_type(), false),
        Field::new("detected_at", timestamp_type(), false),
    ]))
});

fn ts(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(values).with_timezone("UTC"))
}

/// Alerts as one batch of the table's schema.
pub fn rows(alerts: &[Alert]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(alerts.iter().map(|a| &a.id))),
        Arc::new(StringArray::from_iter_values(
            alerts.iter().map(|a| a.rule.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            alerts.iter().map(|a| a.customer_id),
        )),
        Arc::new(Int64Array::from_iter(alerts.iter().map(|a| a.order_id))),
        ts(alerts.iter().map(|a| a.window_start_us)),
        ts(alerts.iter().map(|a| a.window_end_us)),
        Arc::new(StringArray::from_iter_values(
            alerts.iter().map(|a| &a.detail),
        )),
        ts(alerts.iter().map(|a| a.source_commit_us)),
        ts(alerts.iter().map(|a| a.detected_at_us)),
    ];
    RecordBatch::try_new(SCHEMA.clone(), columns)
        .map_err(|e| Error::Input(format!("building {} rows: {e}", super::TABLE)))
}
