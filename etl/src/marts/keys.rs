//! Surrogate keys and the point-in-time dimension lookup.
//!
//! A dimension version's key is a 63-bit FNV-1a hash of the `event_id` of
//! the change that opened it. Event ids are deterministic (the same change
//! always has the same id, replays included), so a version gets the same key
//! in every run, incremental or full refresh, without a key map to keep in
//! step; the unique-key data test guards against a collision.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int32Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

/// The key of the Unknown member of every dimension.
pub(crate) const UNKNOWN: i64 = -1;

/// The surrogate key of a dimension version opened by `event_id`.
pub(crate) fn surrogate_key(event_id: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in event_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Positive, so never the Unknown member's -1.
    (hash >> 1) as i64
}

/// Versions of one dimension by natural id, for "the version valid at time t".
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    /// `(valid_from, version, key)` sorted by valid_from then version.
    versions: HashMap<i64, Vec<(i64, i32, i64)>>,
}

impl KeyIndex {
    /// Builds the index from dimension batches with columns `<key>`, `<id>`,
    /// `version` and `valid_from`.
    pub(crate) fn from_batches(
        batches: &[RecordBatch],
        key: &str,
        id: &str,
    ) -> Result<Self, DataFusionError> {
        let mut versions: HashMap<i64, Vec<(i64, i32, i64)>> = HashMap::new();
        for b in batches {
            let keys = column::<Int64Array>(b, key, &DataType::Int64)?;
            let ids = column::<Int64Array>(b, id, &DataType::Int64)?;
            let numbers = column::<Int32Array>(b, "version", &DataType::Int32)?;
            let from = column::<TimestampMicrosecondArray>(b, "valid_from", &ts_type())?;
            for i in 0..b.num_rows() {
                if keys.is_null(i) || ids.is_null(i) || keys.value(i) == UNKNOWN {
                    continue;
                }
                versions.entry(ids.value(i)).or_default().push((
                    from.value(i),
                    numbers.value(i),
                    keys.value(i),
                ));
            }
        }
        for v in versions.values_mut() {
            v.sort_unstable();
        }
        Ok(KeyIndex { versions })
    }

    /// The key of `id`'s version valid at `at`: the last version that started
    /// at or before `at`; the first version when `at` precedes them all (a
    /// fact stamped a moment before its dimension row committed); the latest
    /// when `at` is unknown; -1 when the dimension has no row for `id` (yet).
    pub(crate) fn lookup(&self, id: Option<i64>, at: Option<i64>) -> i64 {
        let Some(versions) = id.and_then(|id| self.versions.get(&id)) else {
            return UNKNOWN;
        };
        let Some(at) = at else {
            return versions.last().map_or(UNKNOWN, |v| v.2);
        };
        let after = versions.partition_point(|v| v.0 <= at);
        match after {
            0 => versions[0].2,
            n => versions[n - 1].2,
        }
    }
}

/// A column of `batch` cast to `data_type` and downcast to `A`.
pub(crate) fn column<A: Array + Clone + 'static>(
    batch: &RecordBatch,
    name: &str,
    data_type: &DataType,
) -> Result<A, DataFusionError> {
    let array = batch.column_by_name(name).ok_or_else(|| {
        DataFusionError::Internal(format!("column {name} missing from {:?}", batch.schema()))
    })?;
    let cast = arrow::compute::cast(array, data_type)?;
    cast.as_any()
        .downcast_ref::<A>()
        .cloned()
        .ok_or_else(|| DataFusionError::Internal(format!("column {name} is not {data_type}")))
}

/// The lake's timestamp type: microseconds in UTC.
pub(crate) fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// `<name>(id BIGINT, at TIMESTAMP) -> BIGINT`: the point-in-time lookup as a
/// SQL function, so fact models read like `customer_key_at(customer_id, placed_at)`.
pub(crate) fn key_lookup_udf(name: &str, index: Arc<KeyIndex>) -> ScalarUDF {
    create_udf(
        name,
        vec![DataType::Int64, ts_type()],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let rows = args
                .iter()
                .find_map(|a| match a {
                    ColumnarValue::Array(a) => Some(a.len()),
                    ColumnarValue::Scalar(_) => None,
                })
                .unwrap_or(1);
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let ids = downcast::<Int64Array>(&arrays[0], &DataType::Int64)?;
            let at = downcast::<TimestampMicrosecondArray>(&arrays[1], &ts_type())?;
            let keys: Int64Array = (0..rows.min(ids.len()))
                .map(|i| {
                    let id = (!ids.is_null(i)).then(|| ids.value(i));
                    let t = (!at.is_null(i)).then(|| at.value(i));
                    Some(index.lookup(id, t))
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(keys)))
        }),
    )
}

/// `date_key(TIMESTAMP) -> INT`: `yyyymmdd` of the UTC date, -1 for NULL
/// (the Unknown date, also "milestone not reached").
pub(crate) fn date_key_udf() -> ScalarUDF {
    create_udf(
        "date_key",
        vec![ts_type()],
        DataType::Int32,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            if let ColumnarValue::Scalar(s) = &args[0] {
                let key = match s {
                    ScalarValue::TimestampMicrosecond(Some(us), _) => date_key_of(*us),
                    _ => UNKNOWN as i32,
                };
                return Ok(ColumnarValue::Scalar(ScalarValue::Int32(Some(key))));
            }
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let at = downcast::<TimestampMicrosecondArray>(&arrays[0], &ts_type())?;
            let keys: Int32Array = (0..at.len())
                .map(|i| {
                    Some(if at.is_null(i) {
                        UNKNOWN as i32
                    } else {
                        date_key_of(at.value(i))
                    })
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(keys)))
        }),
    )
}

/// `yyyymmdd` of a UTC timestamp in microseconds.
pub(crate) fn date_key_of(us: i64) -> i32 {
    use chrono::Datelike;
    let date = chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.date_naive())
        .unwrap_or_default();
    date.year() * 10_000 + date.month() as i32 * 100 + date.day() as i32
}

fn downcast<A: Array + Clone + 'static>(
    array: &ArrayRef,
    data_type: &DataType,
) -> Result<A, DataFusionError> {
    let cast = arrow::compute::cast(array, data_type)?;
    cast.as_any()
        .downcast_ref::<A>()
        .cloned()
        .ok_or_else(|| DataFusionError::Internal(format!("argument is not {data_type}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_positive_and_distinct() {
        assert_eq!(surrogate_key("orders.0/0/1"), surrogate_key("orders.0/0/1"));
        assert_ne!(surrogate_key("orders.0/0/1"), surrogate_key("orders.0/0/2"));
        assert!(surrogate_key("") > 0);
    }

    #[test]
    fn lookup_takes_the_version_valid_at_the_time() {
        let mut index = KeyIndex::default();
        index.versions.insert(
            7,
            vec![(100, 1, 71), (200, 2, 72), (200, 3, 73), (300, 4, 74)],
        );
        assert_eq!(index.lookup(Some(7), Some(150)), 71);
        // A zero-length version (two changes in one commit) is never chosen.
        assert_eq!(index.lookup(Some(7), Some(200)), 73);
        assert_eq!(index.lookup(Some(7), Some(250)), 73);
        assert_eq!(index.lookup(Some(7), Some(999)), 74);
        assert_eq!(
            index.lookup(Some(7), Some(50)),
            71,
            "before the first version"
        );
        assert_eq!(index.lookup(Some(7), None), 74);
        assert_eq!(index.lookup(Some(8), Some(150)), UNKNOWN);
        assert_eq!(index.lookup(None, Some(150)), UNKNOWN);
    }

    #[test]
    fn date_keys_are_utc_days() {
        let us = chrono::DateTime::parse_from_rfc3339("2024-03-02T23:30:00Z")
            .unwrap()
            .timestamp_micros();
        assert_eq!(date_key_of(us), 20240302);
    }
}
