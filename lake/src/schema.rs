//! Arrow schemas of the bronze and silver tables.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tributary_model::domain::silver_columns as meta;
use tributary_model::event::Column;
use tributary_model::pgtype::PgType;

/// Timestamps are stored as microseconds in UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The Arrow type a source column is stored as in silver.
pub fn arrow_type(t: &PgType) -> DataType {
    match t {
        PgType::Bool => DataType::Boolean,
        PgType::Int2 => DataType::Int16,
        PgType::Int4 => DataType::Int32,
        PgType::Int8 => DataType::Int64,
        PgType::Float4 => DataType::Float32,
        PgType::Float8 => DataType::Float64,
        PgType::Numeric(Some((p, s))) if *p <= 38 && *s >= 0 => DataType::Decimal128(*p, *s),
        // Unconstrained numerics can hold any scale: keep their exact text.
        PgType::Numeric(_) => DataType::Utf8,
        PgType::Date => DataType::Date32,
        PgType::Timestamp | PgType::Timestamptz => timestamp_type(),
        PgType::Text | PgType::Json | PgType::Uuid | PgType::Other(_) => DataType::Utf8,
    }
}

/// The silver schema: the source columns, then the metadata columns.
pub fn silver_schema(columns: &[Column]) -> SchemaRef {
    let mut fields: Vec<Field> = columns
        .iter()
        .map(|c| Field::new(&c.name, arrow_type(&c.pg_type), !c.key))
        .collect();
    fields.extend([
        Field::new(meta::SHARD, DataType::Int32, false),
        Field::new(meta::LSN, DataType::Int64, false),
        Field::new(meta::ORDINAL, DataType::Int64, false),
        Field::new(meta::EVENT_ID, DataType::Utf8, false),
        Field::new(meta::COMMIT_TS, timestamp_type(), false),
    ]);
    Arc::new(Schema::new(fields))
}

/// Columns of the merge source beyond the silver schema.
pub(crate) const SOURCE_OP: &str = "_op";
pub(crate) const SOURCE_UNCHANGED: &str = "_unchanged";

/// The schema of a MERGE source batch: silver plus the operation and the
/// unchanged-TOAST list (as `,a,b,`).
pub(crate) fn merge_source_schema(columns: &[Column]) -> SchemaRef {
    let silver = silver_schema(columns);
    let mut fields: Vec<Field> = silver
        .fields()
        .iter()
        // Unchanged TOAST values arrive absent, so every source column is nullable here.
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.push(Field::new(SOURCE_OP, DataType::Utf8, false));
    fields.push(Field::new(SOURCE_UNCHANGED, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// The bronze change-log schema (partitioned by `date`).
pub fn bronze_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("op", DataType::Utf8, false),
        Field::new("shard", DataType::Int32, false),
        Field::new("lsn", DataType::Int64, false),
        Field::new("ordinal", DataType::Int64, false),
        Field::new("commit_ts", timestamp_type(), false),
        Field::new("tx_id", DataType::Int64, true),
        Field::new("key", DataType::Utf8, false),
        Field::new("before", DataType::Utf8, true),
        Field::new("after", DataType::Utf8, true),
        Field::new("unchanged_toast", DataType::Utf8, true),
        Field::new("kafka_topic", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("ingested_at", timestamp_type(), false),
        Field::new("date", DataType::Utf8, false),
    ]))
}

/// The dead-letter table: messages that could not be applied, with the reason.
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("kafka_topic", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("key", DataType::Binary, true),
        Field::new("payload", DataType::Binary, true),
        Field::new("error", DataType::Utf8, false),
        Field::new("failed_at", timestamp_type(), false),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_source_types() {
        assert_eq!(
            arrow_type(&PgType::Numeric(Some((12, 2)))),
            DataType::Decimal128(12, 2)
        );
        assert_eq!(arrow_type(&PgType::Numeric(None)), DataType::Utf8);
        assert_eq!(arrow_type(&PgType::Timestamptz), timestamp_type());
        let s = silver_schema(&[Column {
            name: "id".into(),
            pg_type: PgType::Int8,
            key: true,
        }]);
        assert!(!s.field(0).is_nullable());
        assert_eq!(s.fields().len(), 6);
    }
}
