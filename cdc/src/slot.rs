//! Slot management: everything between connecting and streaming, and the
//! re-copy of one table while streaming.
//!
//! - The publication publishes exactly the source's tables.
//! - The slot exists and is usable: a slot the server invalidated (WAL
//!   removed) or that vanished (dropped, failover) is reported loudly and
//!   the database snapshotted again; other databases are not affected.
//! - A new slot gets a consistent snapshot at its consistent point
//!   ([`crate::snapshot`]); an interrupted snapshot resumes with the chunks
//!   not done. Only a complete snapshot lets the stream start.
//!
//! Progress lives in the source database ([`crate::state`]), so a restarted
//! reader finds exactly where it stopped.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tributary_model::event::Column;
use tributary_model::lsn::Lsn;

use crate::protocol::ReplicationConnection;
use crate::sink::Sink;
use crate::source::{SourceDb, connect_sql, export_snapshot};
use crate::state::{self, Run, SlotInfo};
use crate::{CdcConfig, Error, Result, pg, snapshot};

/// One source database's slot, as one session manages it.
pub(crate) struct Slot<'a> {
    pub config: &'a CdcConfig,
    /// The broker: its topic prefix, and what was published when
    /// `high_water` is not known ([`crate::published`]).
    pub kafka: &'a tributary_kafka::KafkaConfig,
    pub source: &'a SourceDb,
    /// The slot's name ([`SourceDb::slot_name`]).
    pub name: String,
    /// The newest WAL position this process received from the source
    /// (any earlier session): what it may have published.
    pub high_water: Lsn,
}

/// What the server and the state tables say about the slot.
pub(crate) struct Found {
    slot: Option<SlotInfo>,
    run: Option<Run>,
}

impl Slot<'_> {
    /// Makes the publication and the state tables, and finds the slot and
    /// its snapshot run. A lost slot is reported, and dropped when the
    /// server still has it.
    pub(crate) async fn inspect(&self, client: &tokio_postgres::Client) -> Result<Found> {
        let (source, slot) = (self.source, &self.name);
        ensure_publication(client, &self.config.publication, &source.tables).await?;
        state::ensure_schema(client).await?;
        let mut slot_info = state::slot(client, slot).await?;
        let run = state::run(client, slot).await?;
        if let Some(info) = &slot_info
            && info.lost()
        {
            tracing::error!(db = %source.db, shard = source.shard, slot = %slot,
                "REPLICATION SLOT LOST: the server removed WAL the slot still needed (wal_status = lost, see max_slot_wal_keep_size); changes made meanwhile cannot be streamed. Dropping the slot and taking a new snapshot of this database; other databases are not affected");
            crate::metrics::slot_lost(&source.label());
            drop_slot(client, slot).await?;
            slot_info = None;
        } else if slot_info.is_none() && run.is_some() {
            tracing::error!(db = %source.db, shard = source.shard, slot = %slot,
                "REPLICATION SLOT LOST: the slot this reader streamed from no longer exists (dropped by hand or by a failover); changes made meanwhile cannot be streamed. Taking a new snapshot of this database; other databases are not affected");
            crate::metrics::slot_lost(&source.label());
        }
        Ok(Found {
            slot: slot_info,
            run,
        })
    }

    /// Brings the slot to where streaming can start: resumes from it, or
    /// finishes an interrupted snapshot, or makes a new slot and snapshot.
    /// Returns the position to stream from (`0/0`: the slot's own).
    pub(crate) async fn prepare<S: Sink>(
        &self,
        found: Found,
        repl: &mut ReplicationConnection,
        client: &mut tokio_postgres::Client,
        sink: &S,
    ) -> Result<Lsn> {
        let (source, slot) = (self.source, &self.name);
        match (&found.slot, &found.run) {
            (Some(_), Some(run)) if run.completed => {
                tracing::info!(db = %source.db, shard = source.shard, slot = %slot, "resuming from slot");
                Ok(Lsn::ZERO)
            }
            (Some(_), Some(run)) => {
                self.resume_snapshot(run, client, sink).await?;
                Ok(run.consistent)
            }
            _ => {
                if found.slot.is_some() {
                    // A slot without a recorded run: its stream cannot be
                    // matched to anything published, so start over from a
                    // new slot.
                    tracing::warn!(slot = %slot, "slot has no recorded snapshot; recreating it");
                    drop_slot(client, slot).await?;
                }
                // Anything published before (a lost slot, an unrecorded run)
                // must be replaced by the new snapshot.
                let reset = found.slot.is_some() || found.run.is_some();
                if found.slot.is_none() && found.run.is_some() {
                    advance_wal_past(client, &source.label(), self.published().await?).await?;
                }
                self.fresh_snapshot(repl, client, sink, reset).await
            }
        }
    }

    /// The newest position this reader may have published: what it
    /// remembers, or, when it remembers nothing (it started after the
    /// failover), the newest of its shard in Kafka.
    async fn published(&self) -> Result<Lsn> {
        if self.high_water > Lsn::ZERO {
            return Ok(self.high_water);
        }
        let started = std::time::Instant::now();
        let lsn = crate::published::high_water(self.kafka, self.source).await?;
        tracing::info!(db = %self.source.db, shard = self.source.shard, published = %lsn,
            ms = started.elapsed().as_millis() as u64,
            "started after a failover: read the newest published position of this shard from Kafka");
        Ok(lsn)
    }

    /// A new slot and a full snapshot at its consistent point. Returns the
    /// position to stream from.
    async fn fresh_snapshot<S: Sink>(
        &self,
        repl: &mut ReplicationConnection,
        client: &mut tokio_postgres::Client,
        sink: &S,
        reset: bool,
    ) -> Result<Lsn> {
        let (source, slot, config) = (self.source, &self.name, self.config);
        state::clear(client, slot).await?;
        let rows = repl
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput EXPORT_SNAPSHOT"
            ))
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
        let consistent: Lsn = row
            .get(1)
            .cloned()
            .flatten()
            .ok_or_else(|| Error::Protocol("no consistent point".into()))?
            .parse()?;
        let snapshot_name = row
            .get(2)
            .cloned()
            .flatten()
            .ok_or_else(|| Error::Protocol("no exported snapshot".into()))?;
        // Plan under the exported snapshot (a second connection records it).
        let planner = connect_sql(&source.dsn).await?;
        planner
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot_name}'"
            ))
            .await
            .map_err(pg("importing the exported snapshot"))?;
        let chunks = snapshot::plan(&planner, &source.tables, config.snapshot_chunk_rows).await?;
        let columns = columns_of(&planner, &source.tables).await?;
        state::start_run(client, slot, consistent, &chunks).await?;
        tracing::info!(db = %source.db, shard = source.shard, chunks = chunks.len(), workers = config.snapshot_workers, lsn = %consistent, "snapshot started");
        let job = snapshot::Copy {
            source,
            topic_prefix: &self.kafka.topic_prefix,
            snapshot: snapshot_name,
            label: snapshot::Label {
                lsn: Lsn(consistent.0.saturating_sub(1)),
                ordinal_base: 0,
            },
            workers: config.snapshot_workers,
            reset: if reset { source.tables.clone() } else { vec![] },
            columns,
        };
        self.finish_snapshot(job, chunks, consistent, client, sink)
            .await?;
        drop(planner);
        Ok(consistent)
    }

    /// Copies the chunks an interrupted snapshot did not finish, under a new
    /// snapshot. Its rows carry the run's label (consistent point − 1) with
    /// ordinals above every earlier attempt's, so they sort after what was
    /// published before and before the stream, which replays every change
    /// since the consistent point over them: once the stream has caught up,
    /// each row is exactly as the source has it.
    async fn resume_snapshot<S: Sink>(
        &self,
        run: &Run,
        client: &mut tokio_postgres::Client,
        sink: &S,
    ) -> Result<()> {
        let (source, slot, config) = (self.source, &self.name, self.config);
        let attempt = state::next_attempt(client, slot).await?;
        let chunks = state::pending_chunks(client, slot).await?;
        tracing::warn!(db = %source.db, shard = source.shard, slot = %slot, attempt, chunks_left = chunks.len(), "resuming an interrupted snapshot");
        let (exporter, name) = export_snapshot(&source.dsn).await?;
        let columns = columns_of(&exporter, &source.tables).await?;
        let job = snapshot::Copy {
            source,
            topic_prefix: &self.kafka.topic_prefix,
            snapshot: name,
            label: snapshot::Label {
                lsn: Lsn(run.consistent.0.saturating_sub(1)),
                ordinal_base: (attempt as u64) << 40,
            },
            workers: config.snapshot_workers,
            reset: vec![],
            columns,
        };
        self.finish_snapshot(job, chunks, run.consistent, client, sink)
            .await?;
        drop(exporter);
        Ok(())
    }

    /// Copies `chunks`, recording each once durable, then records the
    /// snapshot complete once everything through `consistent` is durable.
    async fn finish_snapshot<S: Sink>(
        &self,
        job: snapshot::Copy<'_>,
        chunks: Vec<snapshot::Chunk>,
        consistent: Lsn,
        client: &tokio_postgres::Client,
        sink: &S,
    ) -> Result<()> {
        let (source, slot) = (self.source, self.name.as_str());
        let started = std::time::Instant::now();
        let copied = snapshot::copy_chunks(job, chunks, sink, |chunk, rows| async move {
            state::chunk_done(client, slot, &chunk, rows).await
        })
        .await?;
        sink.mark(consistent)?;
        sink.wait_durable(consistent, Duration::from_secs(120))
            .await?;
        let rows = state::complete(client, slot, consistent).await?;
        tracing::info!(db = %source.db, shard = source.shard, rows, copied, lsn = %consistent, secs = started.elapsed().as_secs_f64(), "snapshot complete");
        Ok(())
    }

    /// Re-copies one table while streaming (`tributary cdc resnapshot`). Its
    /// rows sort after everything published so far and before every change
    /// still to come (`label_lsn`), after a truncate that clears the shard's
    /// older rows of the table; changes committed while it copies are
    /// replayed over it by the stream. Returns the rows copied, once they
    /// are all durable.
    pub(crate) async fn resnapshot<S: Sink>(
        &self,
        label_lsn: Lsn,
        sink: &S,
        table: &str,
    ) -> Result<u64> {
        let (source, config) = (self.source, self.config);
        if !source.tables.iter().any(|t| t == table) {
            tracing::error!(
                table,
                "resnapshot requested for a table that is not published; ignored"
            );
            return Ok(0);
        }
        let tables = vec![table.to_string()];
        let (exporter, name) = export_snapshot(&source.dsn).await?;
        let chunks = snapshot::plan(&exporter, &tables, config.snapshot_chunk_rows).await?;
        let columns = columns_of(&exporter, &tables).await?;
        // Ordinals far above any transaction's, rising with the clock so a
        // repeated request sorts after the previous one.
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let job = snapshot::Copy {
            source,
            topic_prefix: &self.kafka.topic_prefix,
            snapshot: name,
            label: snapshot::Label {
                lsn: label_lsn,
                ordinal_base: now_ms << 22,
            },
            workers: config.snapshot_workers,
            reset: tables,
            columns,
        };
        // Returns once every chunk (and the truncate before them) is durable.
        snapshot::copy_chunks(job, chunks, sink, |_, _| async { Ok(()) }).await
    }
}

/// After a failover the new primary's WAL may stand *behind* what this
/// reader streamed from the old one: with asynchronous replication the
/// standby had not received the newest transactions, and a transaction
/// whose commit waited for a synchronous standby is decoded before that
/// wait ends. Those changes are in Kafka and the lake with positions the new
/// primary will give to other transactions. The new snapshot's truncate
/// replaces only rows older than its position, so that position must be
/// past `high_water`: WAL segment switches move the new primary there
/// (each ends the current 16 MiB segment). PostgreSQL 17's failover slots
/// (`synchronized_standby_slots`) keep the reader from getting ahead of
/// the standby in the first place; PostgreSQL 15 has no such thing.
pub async fn advance_wal_past(
    client: &tokio_postgres::Client,
    label: &str,
    high_water: Lsn,
) -> Result<()> {
    let start = current_lsn(client).await?;
    if start > high_water {
        return Ok(());
    }
    tracing::error!(source = label, new_primary = %start, streamed = %high_water,
    behind_bytes = high_water.0 - start.0,
    "the new primary's WAL is behind what this reader streamed from the old one: those transactions were lost by the failover (they were in Kafka and the lake); moving the WAL past them so the new snapshot replaces them");
    crate::metrics::failover_wal_behind(label, high_water.0 - start.0);
    let mut now = start;
    // One switch per segment between, and a margin.
    let most = (high_water.0 - start.0) / (16 << 20) + 4;
    for _ in 0..most {
        if now > high_water {
            return Ok(());
        }
        client
        .batch_execute(
            "SELECT pg_logical_emit_message(false, 'tributary.failover', 'advance'); SELECT pg_switch_wal()",
        )
        .await
        .map_err(pg(
            "switching WAL segments (pg_switch_wal needs superuser or GRANT EXECUTE)",
        ))?;
        now = current_lsn(client).await?;
    }
    if now > high_water {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "the new primary's WAL stays at {now} after {most} segment switches, behind {high_water}"
        )))
    }
}

/// The server's current WAL insert position.
async fn current_lsn(client: &tokio_postgres::Client) -> Result<Lsn> {
    let text: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(pg("reading pg_current_wal_lsn()"))?
        .get(0);
    Ok(text.parse::<Lsn>()?)
}

async fn drop_slot(client: &tokio_postgres::Client, slot: &str) -> Result<()> {
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(|source| match source.as_db_error() {
            Some(db) => Error::Server {
                target: format!("drop slot {slot}"),
                code: db.code().code().to_string(),
                message: db.message().to_string(),
            },
            None => Error::Postgres {
                context: "dropping slot".into(),
                source,
            },
        })?;
    Ok(())
}

/// Reads the columns of every table under the caller's transaction.
async fn columns_of(
    client: &tokio_postgres::Client,
    tables: &[String],
) -> Result<HashMap<String, Vec<Column>>> {
    let mut out = HashMap::new();
    for t in tables {
        out.insert(t.clone(), snapshot::table_columns(client, t).await?);
    }
    Ok(out)
}

/// Makes the publication publish exactly `tables`. A publication that
/// already does is left alone, so a role that does not own the tables (and
/// so may not alter it) works with one an administrator made.
async fn ensure_publication(
    client: &tokio_postgres::Client,
    publication: &str,
    tables: &[String],
) -> Result<()> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(pg("reading pg_publication"))?
        .is_some();
    if exists {
        let mut published: Vec<String> = client
            .query(
                "SELECT tablename::text FROM pg_publication_tables
                 WHERE pubname = $1 AND schemaname = 'public' ORDER BY 1",
                &[&publication],
            )
            .await
            .map_err(pg("reading pg_publication_tables"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // Sorted here: the server's collation may order `_` differently.
        published.sort();
        let mut wanted = tables.to_vec();
        wanted.sort();
        if published == wanted {
            return Ok(());
        }
    }
    let list = tables
        .iter()
        .map(|t| format!("public.{t}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = if exists {
        format!("ALTER PUBLICATION {publication} SET TABLE {list}")
    } else {
        format!("CREATE PUBLICATION {publication} FOR TABLE {list}")
    };
    client.batch_execute(&sql).await.map_err(|source| Error::Postgres {
        context: format!(
            "making publication {publication} publish {list} (a role that does not own the tables needs an administrator to run: {sql})"
        ),
        source,
    })?;
    Ok(())
}

/// Asks the readers of every database that publishes `table` to copy it
/// again (`tributary cdc resnapshot`). With `wait`, returns once all of them
/// did (the total rows copied); a reader that is not running does it when it
/// starts.
pub async fn request_resnapshot(
    sources: &[SourceDb],
    table: &str,
    wait: Option<Duration>,
) -> Result<Option<u64>> {
    let mut requests = Vec::new();
    for source in sources
        .iter()
        .filter(|s| s.tables.iter().any(|t| t == table))
    {
        let client = connect_sql(&source.dsn).await?;
        state::ensure_schema(&client).await?;
        let id = state::request_resnapshot(&client, table).await?;
        tracing::info!(db = %source.db, shard = source.shard, table, id, "resnapshot requested");
        requests.push((client, id));
    }
    if requests.is_empty() {
        return Err(Error::Config(format!(
            "no source database publishes a table named {table:?}"
        )));
    }
    let Some(wait) = wait else {
        return Ok(None);
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut total = 0u64;
    for (client, id) in &requests {
        loop {
            if let Some(rows) = state::resnapshot_rows(client, *id).await? {
                total += rows;
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Delivery(format!(
                    "resnapshot of {table} not finished within {wait:?}; is `tributary cdc run` running?"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(Some(total))
}
