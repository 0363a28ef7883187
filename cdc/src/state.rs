//! The reader's state in each source database (schema `tributary_cdc`):
//! snapshot runs, their chunks and completion, and requests to re-copy a
//! table. It lives beside the data it describes, so it survives the reader,
//! and a restarted reader finds exactly where its snapshot stopped.

use std::collections::HashMap;

use tributary_model::lsn::Lsn;

use crate::snapshot::Chunk;
use crate::{Result, pg};

/// Creates the state tables when missing. Needs `CREATE` on the database, or
/// the schema made beforehand for the reader's role (see the README).
pub(crate) async fn ensure_schema(client: &tokio_postgres::Client) -> Result<()> {
    // CREATE SCHEMA checks the database privilege even when the schema
    // exists: a least-privilege role gets the schema made for it instead.
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = 'tributary_cdc'",
            &[],
        )
        .await
        .map_err(pg("looking for the tributary_cdc schema"))?
        .is_some();
    if !exists {
        client
            .batch_execute("CREATE SCHEMA tributary_cdc")
            .await
            .map_err(pg(
                "creating schema tributary_cdc (a role without CREATE on the database needs it made for it: CREATE SCHEMA tributary_cdc AUTHORIZATION <role>)",
            ))?;
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS tributary_cdc.snapshots (
                 slot_name text PRIMARY KEY,
                 consistent_lsn text NOT NULL,
                 rows bigint NOT NULL,
                 completed_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS tributary_cdc.snapshot_runs (
                 slot_name text PRIMARY KEY,
                 consistent_lsn text NOT NULL,
                 attempt int NOT NULL DEFAULT 0,
                 started_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS tributary_cdc.snapshot_chunks (
                 slot_name text NOT NULL,
                 table_name text NOT NULL,
                 chunk int NOT NULL,
                 key_column text,
                 lo bigint,
                 hi bigint,
                 rows bigint,
                 done_at timestamptz,
                 PRIMARY KEY (slot_name, table_name, chunk));
             CREATE TABLE IF NOT EXISTS tributary_cdc.resnapshot_requests (
                 id bigserial PRIMARY KEY,
                 table_name text NOT NULL,
                 requested_at timestamptz NOT NULL DEFAULT now(),
                 done_at timestamptz,
                 rows bigint);
             CREATE TABLE IF NOT EXISTS tributary_cdc.schema_changes (
                 slot_name text NOT NULL,
                 table_name text NOT NULL,
                 lsn text NOT NULL,
                 columns jsonb NOT NULL,
                 seen_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (slot_name, table_name, lsn));",
        )
        .await
        .map_err(pg("creating the tributary_cdc state tables"))
}

/// What the server says about a replication slot.
pub(crate) struct SlotInfo {
    /// `lost` once the server removed WAL the slot still needed.
    pub wal_status: Option<String>,
}

impl SlotInfo {
    pub(crate) fn lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

pub(crate) async fn slot(client: &tokio_postgres::Client, slot: &str) -> Result<Option<SlotInfo>> {
    Ok(client
        .query_opt(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(pg("reading pg_replication_slots"))?
        .map(|r| SlotInfo {
            wal_status: r.get(0),
        }))
}

/// A snapshot run of a slot: its consistent point and how often it started.
pub(crate) struct Run {
    pub consistent: Lsn,
    pub completed: bool,
}

pub(crate) async fn run(client: &tokio_postgres::Client, slot: &str) -> Result<Option<Run>> {
    let completed = client
        .query_opt(
            "SELECT consistent_lsn FROM tributary_cdc.snapshots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(pg("reading tributary_cdc.snapshots"))?;
    let run = client
        .query_opt(
            "SELECT consistent_lsn FROM tributary_cdc.snapshot_runs WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(pg("reading tributary_cdc.snapshot_runs"))?;
    Ok(match (run, completed) {
        (Some(r), c) => Some(Run {
            consistent: r.get::<_, String>(0).parse()?,
            completed: c.is_some(),
        }),
        // Completed by a reader from before runs were recorded.
        (None, Some(c)) => Some(Run {
            consistent: c.get::<_, String>(0).parse()?,
            completed: true,
        }),
        (None, None) => None,
    })
}

/// Forgets everything about the slot's snapshot (a new slot starts over).
pub(crate) async fn clear(client: &tokio_postgres::Client, slot: &str) -> Result<()> {
    for table in ["snapshots", "snapshot_runs", "snapshot_chunks"] {
        client
            .execute(
                &format!("DELETE FROM tributary_cdc.{table} WHERE slot_name = $1"),
                &[&slot],
            )
            .await
            .map_err(pg("clearing snapshot state"))?;
    }
    Ok(())
}

/// Records a new run and its plan in one transaction.
pub(crate) async fn start_run(
    client: &mut tokio_postgres::Client,
    slot: &str,
    consistent: Lsn,
    chunks: &[Chunk],
) -> Result<()> {
    let tx = client
        .transaction()
        .await
        .map_err(pg("recording the snapshot plan"))?;
    tx.execute(
        "INSERT INTO tributary_cdc.snapshot_runs(slot_name, consistent_lsn) VALUES ($1, $2)",
        &[&slot, &consistent.to_string()],
    )
    .await
    .map_err(pg("recording the snapshot run"))?;
    let insert = tx
        .prepare(
            "INSERT INTO tributary_cdc.snapshot_chunks(slot_name, table_name, chunk, key_column, lo, hi)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await
        .map_err(pg("recording the snapshot plan"))?;
    for c in chunks {
        tx.execute(&insert, &[&slot, &c.table, &c.index, &c.key, &c.lo, &c.hi])
            .await
            .map_err(pg("recording the snapshot plan"))?;
    }
    tx.commit().await.map_err(pg("recording the snapshot plan"))
}

/// Starts another attempt of an interrupted run; returns its number.
pub(crate) async fn next_attempt(client: &tokio_postgres::Client, slot: &str) -> Result<i32> {
    let row = client
        .query_one(
            "UPDATE tributary_cdc.snapshot_runs SET attempt = attempt + 1
             WHERE slot_name = $1 RETURNING attempt",
            &[&slot],
        )
        .await
        .map_err(pg("starting a snapshot attempt"))?;
    Ok(row.get(0))
}

/// The chunks of the slot's run that are not done yet.
pub(crate) async fn pending_chunks(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Vec<Chunk>> {
    let rows = client
        .query(
            "SELECT table_name, chunk, key_column, lo, hi FROM tributary_cdc.snapshot_chunks
             WHERE slot_name = $1 AND done_at IS NULL ORDER BY table_name, chunk",
            &[&slot],
        )
        .await
        .map_err(pg("reading snapshot chunks"))?;
    Ok(rows
        .iter()
        .map(|r| Chunk {
            table: r.get(0),
            index: r.get(1),
            key: r.get(2),
            lo: r.get(3),
            hi: r.get(4),
        })
        .collect())
}

pub(crate) async fn chunk_done(
    client: &tokio_postgres::Client,
    slot: &str,
    chunk: &Chunk,
    rows: u64,
) -> Result<()> {
    client
        .execute(
            "UPDATE tributary_cdc.snapshot_chunks SET done_at = now(), rows = $4
             WHERE slot_name = $1 AND table_name = $2 AND chunk = $3",
            &[&slot, &chunk.table, &chunk.index, &(rows as i64)],
        )
        .await
        .map_err(pg("recording a finished snapshot chunk"))?;
    Ok(())
}

/// Marks the slot's snapshot complete: from now on the reader streams.
pub(crate) async fn complete(
    client: &tokio_postgres::Client,
    slot: &str,
    consistent: Lsn,
) -> Result<u64> {
    let row = client
        .query_one(
            "INSERT INTO tributary_cdc.snapshots(slot_name, consistent_lsn, rows)
             SELECT $1, $2, coalesce(sum(rows), 0)::int8 FROM tributary_cdc.snapshot_chunks WHERE slot_name = $1
             RETURNING rows",
            &[&slot, &consistent.to_string()],
        )
        .await
        .map_err(pg("recording snapshot completion"))?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// The oldest request to re-copy a table that is not done yet.
pub(crate) async fn pending_resnapshot(
    client: &tokio_postgres::Client,
) -> Result<Option<(i64, String)>> {
    Ok(client
        .query_opt(
            "SELECT id, table_name FROM tributary_cdc.resnapshot_requests
             WHERE done_at IS NULL ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .map_err(pg("reading resnapshot requests"))?
        .map(|r| (r.get(0), r.get(1))))
}

pub(crate) async fn resnapshot_done(
    client: &tokio_postgres::Client,
    id: i64,
    rows: u64,
) -> Result<()> {
    client
        .execute(
            "UPDATE tributary_cdc.resnapshot_requests SET done_at = now(), rows = $2 WHERE id = $1",
            &[&id, &(rows as i64)],
        )
        .await
        .map_err(pg("recording a finished resnapshot"))?;
    Ok(())
}

/// Records a table's new shape, seen at `lsn` in the stream.
pub(crate) async fn schema_change(
    client: &tokio_postgres::Client,
    slot: &str,
    table: &str,
    lsn: Lsn,
    columns: &serde_json::Value,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO tributary_cdc.schema_changes(slot_name, table_name, lsn, columns)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[&slot, &table, &lsn.to_string(), columns],
        )
        .await
        .map_err(pg("recording a schema change"))?;
    Ok(())
}

/// The last shape recorded for each table of the slot (column lists as
/// JSON), so a restarted stream does not take them for changes.
pub(crate) async fn recorded_shapes(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<HashMap<String, serde_json::Value>> {
    Ok(client
        .query(
            "SELECT DISTINCT ON (table_name) table_name, columns FROM tributary_cdc.schema_changes
             WHERE slot_name = $1 ORDER BY table_name, seen_at DESC",
            &[&slot],
        )
        .await
        .map_err(pg("reading recorded schemas"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Asks the reader to copy `table` again; returns the request's id.
pub(crate) async fn request_resnapshot(
    client: &tokio_postgres::Client,
    table: &str,
) -> Result<i64> {
    Ok(client
        .query_one(
            "INSERT INTO tributary_cdc.resnapshot_requests(table_name) VALUES ($1) RETURNING id",
            &[&table],
        )
        .await
        .map_err(pg("requesting a resnapshot"))?
        .get(0))
}

/// The rows a finished resnapshot request copied; `None` while it is not
/// done.
pub(crate) async fn resnapshot_rows(
    client: &tokio_postgres::Client,
    id: i64,
) -> Result<Option<u64>> {
    let rows: Option<i64> = client
        .query_one(
            "SELECT rows FROM tributary_cdc.resnapshot_requests WHERE id = $1 AND done_at IS NOT NULL
             UNION ALL SELECT NULL LIMIT 1",
            &[&id],
        )
        .await
        .map_err(pg("reading a resnapshot request"))?
        .get(0);
    Ok(rows.map(|r| r as u64))
}
