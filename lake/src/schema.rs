//! Arrow schemas of the bronze and silver tables, and JSON rows into
//! batches of them.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::Value;
use tributary_model::domain::silver_columns as meta;
use tributary_model::event::Column;
use tributary_model::pgtype::PgType;

use crate::Result;

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
pub(crate) fn merge_source_schema(silver: &Schema) -> SchemaRef {
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

/// How a column of an incoming event fits the column silver already has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fit {
    /// Every value of the incoming type is stored as is (same or narrower type).
    Fits,
    /// Silver's column must become this wider type first.
    Widen(DataType),
    /// No lossless way to store the incoming values in this column.
    Incompatible,
}

fn int_rank(t: &DataType) -> Option<u8> {
    match t {
        DataType::Int16 => Some(1),
        DataType::Int32 => Some(2),
        DataType::Int64 => Some(3),
        _ => None,
    }
}

fn float_rank(t: &DataType) -> Option<u8> {
    match t {
        DataType::Float32 => Some(1),
        DataType::Float64 => Some(2),
        _ => None,
    }
}

/// Decides how a source column of type `incoming` is stored in a silver column
/// of type `stored`: the widenings PostgreSQL can do without changing values
/// (int2 → int4 → int8, float4 → float8, numeric(p,s) → numeric(p',s) with
/// p' ≥ p, numeric(p,s) → numeric, varchar(n) → text) evolve the column; a
/// narrower incoming type fits the wider column (events of the old shape
/// after a widening); anything else is incompatible.
pub(crate) fn fit(incoming: &DataType, stored: &DataType) -> Fit {
    if incoming == stored {
        return Fit::Fits;
    }
    if let (Some(i), Some(s)) = (int_rank(incoming), int_rank(stored)) {
        return if i <= s {
            Fit::Fits
        } else {
            Fit::Widen(incoming.clone())
        };
    }
    if let (Some(i), Some(s)) = (float_rank(incoming), float_rank(stored)) {
        return if i <= s {
            Fit::Fits
        } else {
            Fit::Widen(incoming.clone())
        };
    }
    match (incoming, stored) {
        (DataType::Decimal128(pi, si), DataType::Decimal128(ps, ss)) if si == ss => {
            if pi <= ps {
                Fit::Fits
            } else {
                Fit::Widen(incoming.clone())
            }
        }
        // Exact decimal text: an unconstrained numeric keeps any constrained value.
        (DataType::Decimal128(..), DataType::Utf8) => Fit::Fits,
        (DataType::Utf8, DataType::Decimal128(..)) => Fit::Widen(DataType::Utf8),
        _ => Fit::Incompatible,
    }
}

/// A change the lake makes to a silver table's schema.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum SilverChange {
    /// A column the table did not have; rows written before read NULL.
    Add(Field),
    /// A column whose type becomes wider; every stored value is cast.
    Widen {
        column: String,
        from: DataType,
        to: DataType,
    },
}

/// A source column that silver cannot store.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Incompatible {
    pub column: String,
    pub stored: DataType,
    pub incoming: DataType,
}

/// The schema silver needs so that rows of `columns` fit, starting from
/// `current`, and the changes that lead there. Columns of `current` that
/// `columns` lacks (dropped or renamed at the source) stay.
pub(crate) fn evolve(
    current: &Schema,
    columns: &[Column],
) -> Result<(SchemaRef, Vec<SilverChange>), Incompatible> {
    let mut fields: Vec<Field> = current
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut changes = Vec::new();
    for c in columns {
        let incoming = arrow_type(&c.pg_type);
        match fields.iter_mut().find(|f| f.name() == &c.name) {
            Some(f) => match fit(&incoming, f.data_type()) {
                Fit::Fits => {}
                Fit::Widen(to) => {
                    changes.push(SilverChange::Widen {
                        column: c.name.clone(),
                        from: f.data_type().clone(),
                        to: to.clone(),
                    });
                    *f = f.clone().with_data_type(to);
                }
                Fit::Incompatible => {
                    return Err(Incompatible {
                        column: c.name.clone(),
                        stored: f.data_type().clone(),
                        incoming,
                    });
                }
            },
            None => {
                // Rows written before the column existed hold no value for it,
                // so an added column is nullable even when it is a key.
                let field = Field::new(&c.name, incoming, true);
                changes.push(SilverChange::Add(field.clone()));
                // Source columns stay ahead of the metadata columns only in
                // new tables; an added column goes last, as Delta adds it.
                fields.push(field);
            }
        }
    }
    Ok((Arc::new(Schema::new(fields)), changes))
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
        // The writer's trace, when it left one (`tributary_metrics::trace`);
        // after `date` because older tables gain them at the end.
        Field::new("traceparent", DataType::Utf8, true),
        Field::new("request_id", DataType::Utf8, true),
        Field::new("requested_at", timestamp_type(), true),
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

/// The record of replayed dead letters (`bronze._dead_letters_replayed`):
/// append-only, one row per dead letter a replay applied.
pub fn dead_letters_replayed_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("kafka_topic", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("source_table", DataType::Utf8, false),
        Field::new("event_id", DataType::Utf8, false),
        // `applied`, or `superseded` when a newer change of the key was in bronze.
        Field::new("silver", DataType::Utf8, false),
        Field::new("replayed_at", timestamp_type(), false),
    ]))
}

/// The schema-change log (`bronze._schema_changes`): one row per change of a
/// source table's shape, per shard, at the position of the first event of
/// the new shape, and one row per change the lake applied to silver.
pub fn schema_changes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source_table", DataType::Utf8, false),
        // NULL for changes applied to silver.
        Field::new("shard", DataType::Int32, true),
        Field::new("lsn", DataType::Int64, false),
        Field::new("ordinal", DataType::Int64, false),
        Field::new("event_id", DataType::Utf8, false),
        // first_seen, add_column, drop_column, change_type (source);
        // silver_add_column, silver_widen_column (silver).
        Field::new("change", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, true),
        Field::new("old_type", DataType::Utf8, true),
        Field::new("new_type", DataType::Utf8, true),
        // The source's column list from this change on (JSON), for source rows.
        Field::new("columns", DataType::Utf8, true),
        Field::new("recorded_at", timestamp_type(), false),
    ]))
}

/// JSON rows (one object per row, keyed by column name) as one batch of
/// `schema`; no rows give an empty batch.
pub(crate) fn rows_to_batch(schema: SchemaRef, rows: &[Value]) -> Result<RecordBatch> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .build_decoder()?;
    decoder.serialize(rows)?;
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn maps_source_types() {
        assert_eq!(
            arrow_type(&PgType::Numeric(Some((12, 2)))),
            DataType::Decimal128(12, 2)
        );
        assert_eq!(arrow_type(&PgType::Numeric(None)), DataType::Utf8);
        assert_eq!(arrow_type(&PgType::Timestamptz), timestamp_type());
        let s = silver_schema(&[Column::new("id", PgType::Int8, true)]);
        assert!(!s.field(0).is_nullable());
        assert_eq!(s.fields().len(), 6);
    }

    #[test]
    fn widenings_evolve_and_other_type_changes_are_refused() {
        use DataType::*;
        assert_eq!(fit(&Int32, &Int16), Fit::Widen(Int32));
        assert_eq!(fit(&Int64, &Int32), Fit::Widen(Int64));
        assert_eq!(fit(&Int16, &Int64), Fit::Fits);
        assert_eq!(fit(&Float64, &Float32), Fit::Widen(Float64));
        assert_eq!(fit(&Float32, &Float64), Fit::Fits);
        assert_eq!(
            fit(&Decimal128(12, 2), &Decimal128(6, 2)),
            Fit::Widen(Decimal128(12, 2))
        );
        assert_eq!(fit(&Decimal128(6, 2), &Decimal128(12, 2)), Fit::Fits);
        assert_eq!(
            fit(&Decimal128(12, 4), &Decimal128(12, 2)),
            Fit::Incompatible
        );
        assert_eq!(fit(&Utf8, &Decimal128(6, 2)), Fit::Widen(Utf8));
        assert_eq!(fit(&Decimal128(6, 2), &Utf8), Fit::Fits);
        assert_eq!(fit(&Int32, &Utf8), Fit::Incompatible);
        assert_eq!(fit(&Utf8, &Int32), Fit::Incompatible);
        assert_eq!(fit(&Float64, &Int64), Fit::Incompatible);

        let col = |name: &str, pg_type| Column::new(name, pg_type, name == "id");
        let current = silver_schema(&[col("id", PgType::Int8), col("qty", PgType::Int2)]);
        let (schema, changes) = evolve(
            &current,
            &[
                col("id", PgType::Int8),
                col("qty", PgType::Int4),
                col("note", PgType::Text),
            ],
        )
        .unwrap();
        assert_eq!(schema.field_with_name("qty").unwrap().data_type(), &Int32);
        assert!(schema.field_with_name("note").unwrap().is_nullable());
        // The metadata columns and a column the event lacks stay.
        assert_eq!(schema.fields().len(), current.fields().len() + 1);
        assert_eq!(changes.len(), 2);
        let err = evolve(
            &schema,
            &[col("id", PgType::Int8), col("note", PgType::Int4)],
        )
        .unwrap_err();
        assert_eq!(err.column, "note");
    }

    #[test]
    fn float_nan_and_infinity_reach_float_columns() {
        // The CDC reader sends them as text: JSON has no NaN.
        let schema = Arc::new(Schema::new(vec![
            Field::new("f", DataType::Float64, true),
            Field::new("g", DataType::Float32, true),
        ]));
        let rows = [
            json!({"f": "NaN", "g": "Infinity"}),
            json!({"f": "-Infinity", "g": 1.5}),
        ];
        let b = rows_to_batch(schema, &rows).unwrap();
        let f = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .unwrap();
        assert!(f.value(0).is_nan());
        assert_eq!(f.value(1), f64::NEG_INFINITY);
    }
}
