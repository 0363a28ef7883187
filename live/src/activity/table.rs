//! `gold.product_activity_5m`: one row per product per closed window.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Decimal128Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tributary_lake::schema::timestamp_type;

use super::Row;
use crate::{Error, Result};

pub static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("window_start", timestamp_type(), false),
        Field::new("window_end", timestamp_type(), false),
        Field::new("product_id", DataType::Int64, false),
        Field::new("views", DataType::Int64, false),
        Field::new("add_to_carts", DataType::Int64, false),
        Field::new("orders", DataType::Int64, false),
        Field::new("units", DataType::Int64, false),
        Field::new("revenue", DataType::Decimal128(18, 2), false),
    ]))
});

fn ts(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(values).with_timezone("UTC"))
}

fn int(values: impl Iterator<Item = u64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values.map(|v| v as i64)))
}

pub fn rows(rows: &[Row]) -> Result<RecordBatch> {
    let revenue =
        Decimal128Array::from_iter_values(rows.iter().map(|r| r.activity.revenue_cents as i128))
            .with_precision_and_scale(18, 2)
            .map_err(|e| Error::Input(format!("revenue: {e}")))?;
    let columns: Vec<ArrayRef> = vec![
        ts(rows.iter().map(|r| r.window.start)),
        ts(rows.iter().map(|r| r.window.end)),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.product_id),
        )),
        int(rows.iter().map(|r| r.activity.views)),
        int(rows.iter().map(|r| r.activity.add_to_carts)),
        int(rows.iter().map(|r| r.activity.orders)),
        int(rows.iter().map(|r| r.activity.units)),
        Arc::new(revenue),
    ];
    RecordBatch::try_new(SCHEMA.clone(), columns)
        .map_err(|e| Error::Input(format!("building {} rows: {e}", super::TABLE)))
}
