//! What the crate's tests share: a lake in a temporary folder, and change
//! events of any shape on shard 0 of `orders`.

use serde_json::Value;
use tributary_model::event::{ChangeEvent, Column, Op, Source, event_id};
use tributary_model::lsn::Lsn;

use crate::{Lake, LakeConfig};

/// A lake at `root` on the local file system, without a coordinator.
pub(crate) fn lake_at(root: &str) -> Lake {
    Lake::new(&LakeConfig {
        root: root.to_string(),
        s3: None,
        coordinator_dsn: None,
    })
    .unwrap()
}

/// A lake in a new temporary folder, which lives as long as the `TempDir`.
pub(crate) fn new_lake() -> (tempfile::TempDir, Lake) {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake_at(&dir.path().display().to_string());
    (dir, lake)
}

/// A change of `table` on shard 0 of `orders`, the change `ordinal` of
/// transaction 1 committed at `lsn`: `row` is `after`, or `before` for
/// deletes.
pub(crate) fn event(
    table: &str,
    op: Op,
    lsn: u64,
    ordinal: u64,
    columns: Vec<Column>,
    row: Value,
) -> ChangeEvent {
    let row = row.as_object().unwrap().clone();
    let (before, after) = match op {
        Op::Delete => (Some(row), None),
        _ => (None, Some(row)),
    };
    ChangeEvent {
        before,
        after,
        source: Source {
            version: "test".into(),
            connector: "postgresql".into(),
            db: "orders".into(),
            shard: 0,
            schema: "public".into(),
            table: table.into(),
            lsn: Lsn(lsn),
            ordinal,
            ts_us: 1_764_140_400_000_000,
            tx_id: Some(1),
            snapshot: false,
        },
        op,
        ts_ms: 0,
        transaction: None,
        event_id: event_id("orders", 0, Lsn(lsn), ordinal, false),
        unchanged_toast: vec![],
        columns,
    }
}
