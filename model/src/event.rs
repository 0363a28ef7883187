//! The change-event envelope.
//!
//! One event per row change, as JSON in the shape of Debezium's envelope
//! (`before`, `after`, `source`, `op`, `ts_ms`, `transaction`) so existing Kafka
//! tooling reads it, plus what tributary needs on top: the deterministic
//! `event_id`, the ordinal of the change within its transaction, the list of
//! unchanged TOASTed columns, and the column types of the row.
//!
//! Ordering: changes of one row are ordered by [`ChangeEvent::position`], the
//! pair (commit LSN, ordinal). Snapshot reads carry the LSN just below the
//! slot's consistent point, so every streamed change of the same row sorts
//! after them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::lsn::Lsn;
use crate::pgtype::PgType;
use crate::{Error, Result};

/// The operation of a change, with Debezium's letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "c")]
    Create,
    #[serde(rename = "u")]
    Update,
    #[serde(rename = "d")]
    Delete,
    /// A row read by the initial snapshot.
    #[serde(rename = "r")]
    Read,
    #[serde(rename = "t")]
    Truncate,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }
}

/// One column of the row's table, as the source described it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub pg_type: PgType,
    /// Part of the primary key (replica identity).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key: bool,
}

impl Column {
    /// A column named `name` of type `pg_type`, `key` when it belongs to
    /// the primary key.
    pub fn new(name: impl Into<String>, pg_type: PgType, key: bool) -> Column {
        Column {
            name: name.into(),
            pg_type,
            key,
        }
    }
}

/// Where a change came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub version: String,
    pub connector: String,
    /// The logical database (`orders`, `catalog`), shared by all its shards.
    pub db: String,
    /// Shard index within the logical database (0 for unsharded ones).
    pub shard: u32,
    pub schema: String,
    pub table: String,
    /// Commit LSN of the transaction (for snapshot reads: consistent point − 1).
    pub lsn: Lsn,
    /// Position of this change within its transaction, from 1; snapshot rows
    /// count from 1 within their table.
    pub ordinal: u64,
    /// Commit time in microseconds since the Unix epoch.
    pub ts_us: i64,
    pub tx_id: Option<u32>,
    pub snapshot: bool,
}

/// Debezium's transaction block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: String,
    pub total_order: u64,
}

/// A row change as published to Kafka.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub before: Option<Map<String, Value>>,
    pub after: Option<Map<String, Value>>,
    pub source: Source,
    pub op: Op,
    /// When the reader produced the event (milliseconds since the epoch).
    pub ts_ms: i64,
    pub transaction: Option<Transaction>,
    pub event_id: String,
    /// Columns whose value did not change and was not sent (unchanged TOAST):
    /// they are absent from `after` and must keep their stored value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged_toast: Vec<String>,
    pub columns: Vec<Column>,
}

/// The deterministic identity of a change: the same change replayed after a
/// crash gets the same id.
pub fn event_id(db: &str, shard: u32, lsn: Lsn, ordinal: u64, snapshot: bool) -> String {
    let kind = if snapshot { "r" } else { "" };
    format!("{db}.{shard}/{lsn}/{kind}{ordinal}")
}

impl ChangeEvent {
    /// The (commit LSN, ordinal) pair that orders changes of one row.
    pub fn position(&self) -> (Lsn, u64) {
        (self.source.lsn, self.source.ordinal)
    }

    /// The row image that identifies the row: `after`, or `before` for deletes.
    pub fn row(&self) -> Option<&Map<String, Value>> {
        match self.op {
            Op::Delete => self.before.as_ref(),
            _ => self.after.as_ref(),
        }
    }

    /// The Kafka key: the shard and the primary-key values, as a JSON object.
    /// All changes of one row share it, so they land in one partition in order.
    pub fn key(&self) -> Result<Value> {
        let row = self.row().ok_or_else(|| {
            Error::InvalidEvent(format!("{} event has no row image", self.op.as_str()))
        })?;
        let mut key = Map::new();
        key.insert("shard".into(), Value::from(self.source.shard));
        for col in self.columns.iter().filter(|c| c.key) {
            let v = row.get(&col.name).ok_or_else(|| {
                Error::InvalidEvent(format!("key column {:?} missing from row image", col.name))
            })?;
            key.insert(col.name.clone(), v.clone());
        }
        Ok(Value::Object(key))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a change event always serialises")
    }

    /// Parses and checks an event read from Kafka.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let ev: ChangeEvent = serde_json::from_slice(bytes).map_err(Error::Json)?;
        match ev.op {
            Op::Create | Op::Read | Op::Update if ev.after.is_none() => {
                return Err(Error::InvalidEvent(format!(
                    "op {} without `after`",
                    ev.op.as_str()
                )));
            }
            Op::Delete if ev.before.is_none() => {
                return Err(Error::InvalidEvent("op d without `before`".into()));
            }
            _ => {}
        }
        if ev.op != Op::Truncate && !ev.columns.iter().any(|c| c.key) {
            return Err(Error::InvalidEvent("no key column in `columns`".into()));
        }
        Ok(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> ChangeEvent {
        ChangeEvent {
            before: None,
            after: Some(
                json!({"id": 7, "total": "9.90"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            source: Source {
                version: "0.1.0".into(),
                connector: "postgresql".into(),
                db: "orders".into(),
                shard: 1,
                schema: "public".into(),
                table: "orders".into(),
                lsn: Lsn(0x16B3748),
                ordinal: 3,
                ts_us: 1_700_000_000_000_000,
                tx_id: Some(42),
                snapshot: false,
            },
            op: Op::Create,
            ts_ms: 1_700_000_000_001,
            transaction: None,
            event_id: event_id("orders", 1, Lsn(0x16B3748), 3, false),
            unchanged_toast: vec![],
            columns: vec![
                Column::new("id", PgType::Int8, true),
                Column::new("total", PgType::Numeric(Some((12, 2))), false),
            ],
        }
    }

    #[test]
    fn envelope_round_trips_with_debezium_fields() {
        let ev = sample();
        let bytes = ev.to_json();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        for field in ["before", "after", "source", "op", "ts_ms", "transaction"] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert_eq!(v["op"], "c");
        assert_eq!(ChangeEvent::from_json(&bytes).unwrap(), ev);
    }

    #[test]
    fn event_id_is_deterministic_and_distinct() {
        assert_eq!(ev_id(3), ev_id(3));
        assert_ne!(ev_id(3), ev_id(4));
        assert_ne!(
            event_id("orders", 0, Lsn(1), 1, false),
            event_id("orders", 1, Lsn(1), 1, false)
        );
        assert_ne!(
            event_id("orders", 0, Lsn(1), 1, true),
            event_id("orders", 0, Lsn(1), 1, false)
        );
    }

    fn ev_id(ordinal: u64) -> String {
        event_id("orders", 1, Lsn(99), ordinal, false)
    }

    #[test]
    fn key_holds_shard_and_primary_key() {
        assert_eq!(sample().key().unwrap(), json!({"shard": 1, "id": 7}));
    }

    #[test]
    fn malformed_events_are_rejected_with_a_reason() {
        assert!(ChangeEvent::from_json(b"not json").is_err());
        let mut ev = sample();
        ev.after = None;
        let err = ChangeEvent::from_json(&ev.to_json()).unwrap_err();
        assert!(err.to_string().contains("after"), "{err}");
    }
}
