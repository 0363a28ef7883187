//! `gold.live_late_events`: the late path's record, one row per event that
//! arrived later than the allowed lateness behind the watermark.
//!
//! Written with the checkpoint that consumed the events, before the job's
//! own output, under the `txn` app `tributary-live/<job>/late`; a replay of
//! a checkpoint whose late rows are already in finds its number there and
//! writes them not again.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tributary_lake::Lake;
use tributary_lake::schema::timestamp_type;
use tributary_stream::late::LateEvent;

use super::delta::DeltaOutput;
use crate::{Error, Result};

pub const TABLE: &str = "live_late_events";

pub static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("job", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("event_time", timestamp_type(), false),
        Field::new("watermark", timestamp_type(), false),
        Field::new("reason", DataType::Utf8, false),
    ]))
});

/// The late table's output for `job`.
pub fn output(lake: &Lake, job: &str) -> DeltaOutput {
    DeltaOutput::new(
        lake.clone(),
        TABLE,
        &format!("tributary-live/{job}/late"),
        SCHEMA.clone(),
    )
    .at_most_once_per_checkpoint()
}

fn ts(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(values).with_timezone("UTC"))
}

pub fn rows(late: &[LateEvent]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(late.iter().map(|l| &l.job))),
        Arc::new(StringArray::from_iter_values(
            late.iter().map(|l| &l.source.topic),
        )),
        Arc::new(Int32Array::from_iter_values(
            late.iter().map(|l| l.source.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            late.iter().map(|l| l.source.offset),
        )),
        ts(late.iter().map(|l| l.event_time)),
        ts(late.iter().map(|l| l.watermark)),
        Arc::new(StringArray::from_iter_values(
            late.iter().map(|l| &l.reason),
        )),
    ];
    RecordBatch::try_new(SCHEMA.clone(), columns)
        .map_err(|e| Error::Input(format!("building {TABLE} rows: {e}")))
}
