//! What a reader has done for one slot, as the source database records it:
//! the public way for other crates to ask (`tributary wait`, benchmarks,
//! tests), so none of them reads the reader's private `tributary_cdc` tables.

use chrono::{DateTime, Utc};
use tributary_model::lsn::Lsn;

use crate::{Result, pg};

/// A slot's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotStatus {
    /// The slot exists on the server.
    pub exists: bool,
    /// Every change before this LSN is durable in Kafka (the slot's
    /// `confirmed_flush_lsn`).
    pub confirmed: Option<Lsn>,
    /// When the slot's initial snapshot was completely published; `None`
    /// while it is being copied or before the reader first started. A new
    /// slot is confirmed at its consistent point before its snapshot is
    /// published, so "caught up" needs both.
    pub snapshot_completed_at: Option<DateTime<Utc>>,
}

impl SlotStatus {
    /// The snapshot is published and the slot confirmed at or past `lsn`.
    pub fn caught_up_to(&self, lsn: Lsn) -> bool {
        self.snapshot_completed_at.is_some() && self.confirmed.is_some_and(|c| c >= lsn)
    }
}

/// Reads `slot`'s status over an SQL connection to its source database.
pub async fn slot_status(client: &tokio_postgres::Client, slot: &str) -> Result<SlotStatus> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(pg("reading pg_replication_slots"))?;
    let confirmed = match row.as_ref().and_then(|r| r.get::<_, Option<String>>(0)) {
        Some(text) => Some(text.parse()?),
        None => None,
    };
    // The state tables appear at the reader's first start.
    let has_state = client
        .query_one(
            "SELECT to_regclass('tributary_cdc.snapshots') IS NOT NULL",
            &[],
        )
        .await
        .map_err(pg("looking for tributary_cdc.snapshots"))?
        .get::<_, bool>(0);
    let snapshot_completed_at = if has_state {
        client
            .query_opt(
                "SELECT completed_at FROM tributary_cdc.snapshots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(pg("reading tributary_cdc.snapshots"))?
            .map(|r| r.get(0))
    } else {
        None
    };
    Ok(SlotStatus {
        exists: row.is_some(),
        confirmed,
        snapshot_completed_at,
    })
}
