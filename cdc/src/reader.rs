//! The per-database reader: publication, slot, snapshot, stream.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tributary_kafka::KafkaConfig;
use tributary_model::domain::topic_name;
use tributary_model::error_chain;
use tributary_model::event::{Column, Op};
use tributary_model::lsn::Lsn;
use tributary_model::pgtype::PgType;
use tributary_model::watermark::{Watermark, watermark_topic};

use crate::decode::{PgOutput, Relation, TupleValue, decode};
use crate::encode::{self, Cell, Meta, TableEncoder};
use crate::protocol::{ReplicationConnection, ReplicationMessage};
use crate::sink::{KafkaSink, check_broker, ensure_topics};
use crate::{CdcConfig, Error, Result, pg, snapshot, state};

/// One source database to capture.
#[derive(Clone, Debug)]
pub struct SourceDb {
    /// Logical database name (`orders`, `catalog`).
    pub db: String,
    /// Shard index (0 for unsharded databases).
    pub shard: u32,
    /// libpq-style connection string.
    pub dsn: String,
    /// Tables (schema `public`) to publish.
    pub tables: Vec<String>,
}

impl SourceDb {
    fn slot_name(&self, prefix: &str) -> String {
        tributary_model::domain::slot_name(prefix, &self.db, self.shard)
    }
}

/// Runs one reader per source until `shutdown`, restarting a reader after
/// transient failures (connection loss, broker trouble) from its slot.
/// Returns the first non-transient error.
pub async fn run(
    config: CdcConfig,
    kafka: KafkaConfig,
    sources: Vec<SourceDb>,
    shutdown: CancellationToken,
) -> Result<()> {
    run_with(config, kafka, sources, shutdown, SinkKind::Kafka).await
}

/// Benchmarks only (`tributary bench cdc`): [`run`] with every event
/// dropped instead of published, and reported durable at once, so slots
/// move past changes that nobody received. Measures the reader's own
/// ceiling (replication, decoding, JSON) without a broker.
#[doc(hidden)]
pub async fn run_discarding(
    config: CdcConfig,
    kafka: KafkaConfig,
    sources: Vec<SourceDb>,
    shutdown: CancellationToken,
) -> Result<()> {
    run_with(config, kafka, sources, shutdown, SinkKind::Discard).await
}

/// Where events go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SinkKind {
    Kafka,
    Discard,
}

async fn run_with(
    config: CdcConfig,
    kafka: KafkaConfig,
    sources: Vec<SourceDb>,
    shutdown: CancellationToken,
    sink: SinkKind,
) -> Result<()> {
    if sink == SinkKind::Kafka {
        check_broker(&kafka, Duration::from_secs(10)).await?;
    }
    let topics: Vec<String> = sources
        .iter()
        .flat_map(|s| {
            s.tables
                .iter()
                .map(|t| topic_name(&kafka.topic_prefix, &s.db, t))
                .chain([watermark_topic(&kafka.topic_prefix, &s.db)])
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if sink == SinkKind::Kafka {
        ensure_topics(&kafka, &topics).await?;
    }

    let mut tasks = JoinSet::new();
    for source in sources {
        let (config, kafka, shutdown) = (config.clone(), kafka.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                match run_reader(&config, &kafka, &source, &shutdown, sink).await {
                    Ok(()) => return Ok(()),
                    Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                        tracing::warn!(db = %source.db, shard = source.shard, error = %error_chain(&e), "reader failed, resuming from the slot");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.cancelled() => return Ok(()),
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => {
                        return Err(e);
                    }
                }
            }
        });
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.cancel();
                if result.is_ok() {
                    result = Err(e);
                }
            }
            Err(e) => {
                shutdown.cancel();
                result = Err(Error::Internal(format!("reader task: {e}")));
            }
        }
    }
    result
}

pub(crate) async fn connect_sql(dsn: &str) -> Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = dsn
        .parse()
        .map_err(|e| Error::Config(format!("invalid DSN: {e}")))?;
    config.options("-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=3");
    config.application_name("tributary-cdc");
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|source| Error::Postgres {
            context: "connecting".into(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "source connection closed");
        }
    });
    Ok(client)
}

/// A connection inside a REPEATABLE READ transaction whose snapshot it
/// exported, for copy workers to import.
async fn export_snapshot(dsn: &str) -> Result<(tokio_postgres::Client, String)> {
    let client = connect_sql(dsn).await?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(pg("starting a snapshot transaction"))?;
    let name = client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(pg("exporting a snapshot"))?
        .get(0);
    Ok((client, name))
}

async fn run_reader(
    config: &CdcConfig,
    kafka: &KafkaConfig,
    source: &SourceDb,
    shutdown: &CancellationToken,
    sink_kind: SinkKind,
) -> Result<()> {
    let slot = source.slot_name(&config.slot_prefix);
    let label = format!("{}.{}", source.db, source.shard);
    let mut client = connect_sql(&source.dsn).await?;
    ensure_publication(&client, &config.publication, &source.tables).await?;
    state::ensure_schema(&client).await?;
    let mut slot_info = state::slot(&client, &slot).await?;
    let run = state::run(&client, &slot).await?;

    if let Some(info) = &slot_info
        && info.lost()
    {
        tracing::error!(db = %source.db, shard = source.shard, slot = %slot,
            "REPLICATION SLOT LOST: the server removed WAL the slot still needed (wal_status = lost, see max_slot_wal_keep_size); changes made meanwhile cannot be streamed. Dropping the slot and taking a new snapshot of this database; other databases are not affected");
        crate::metrics::slot_lost(&label);
        drop_slot(&client, &slot).await?;
        slot_info = None;
    } else if slot_info.is_none() && run.is_some() {
        tracing::error!(db = %source.db, shard = source.shard, slot = %slot,
            "REPLICATION SLOT LOST: the slot this reader streamed from no longer exists (dropped by hand or by a failover); changes made meanwhile cannot be streamed. Taking a new snapshot of this database; other databases are not affected");
        crate::metrics::slot_lost(&label);
    }

    let mut repl = ReplicationConnection::connect(&source.dsn, "tributary-cdc").await?;
    let sink = match sink_kind {
        SinkKind::Kafka => KafkaSink::new(kafka, Lsn::ZERO)?,
        SinkKind::Discard => KafkaSink::discard(Lsn::ZERO),
    };
    let start = match (&slot_info, &run) {
        (Some(_), Some(run)) if run.completed => {
            tracing::info!(db = %source.db, shard = source.shard, slot = %slot, "resuming from slot");
            Lsn::ZERO
        }
        (Some(_), Some(run)) => {
            resume_snapshot(config, kafka, source, &slot, run, &mut client, &sink).await?;
            run.consistent
        }
        _ => {
            if slot_info.is_some() {
                // A slot without a recorded run: its stream cannot be matched
                // to anything published, so start over from a new slot.
                tracing::warn!(slot = %slot, "slot has no recorded snapshot; recreating it");
                drop_slot(&client, &slot).await?;
            }
            // Anything published before (a lost slot, an unrecorded run) must
            // be replaced by the new snapshot.
            let reset = slot_info.is_some() || run.is_some();
            fresh_snapshot(
                config,
                kafka,
                source,
                &slot,
                &mut repl,
                &mut client,
                &sink,
                reset,
            )
            .await?
        }
    };

    let command = format!(
        "START_REPLICATION SLOT {slot} LOGICAL {start} (\"proto_version\" '1', \"publication_names\" '{}', \"messages\" 'true')",
        config.publication
    );
    let (mut reader, mut status) = repl.start_replication(&command).await?;

    // Reading runs in its own task so that a read is never cancelled halfway
    // through a message; the loop below owns the sending half.
    let (tx, mut rx) = mpsc::channel(4096);
    let read_task = tokio::spawn(async move {
        loop {
            let msg = reader.next_message().await;
            let end = !matches!(msg, Ok(Some(_)));
            if tx.send(msg).await.is_err() || end {
                return;
            }
        }
    });
    let _abort_reader = AbortOnDrop(read_task);

    let mut heartbeat = tokio::time::interval(Duration::from_millis(config.heartbeat_interval_ms));
    let mut status_tick = tokio::time::interval(Duration::from_millis(config.status_interval_ms));
    let watermark_topic = watermark_topic(&kafka.topic_prefix, &source.db);
    let mut state = StreamState::new(source, &kafka.topic_prefix, &slot, &client);
    let mut received = start;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Stop intake, let what was sent be acknowledged, confirm, exit.
                let target = sink_target(&state, &sink);
                let _ = sink.wait_durable(target, Duration::from_secs(10)).await;
                status.send_status(received, sink.durable()).await?;
                tracing::info!(db = %source.db, shard = source.shard, confirmed = %sink.durable(), "reader stopped");
                return Ok(());
            }
            _ = status_tick.tick() => {
                sink.check()?;
                state.settle(sink.durable());
                crate::metrics::position(&label, received, sink.durable());
                crate::metrics::lag_seconds(&label, state.lag_seconds());
                status.send_status(received, sink.durable()).await?;
            }
            _ = heartbeat.tick() => {
                // A heartbeat is a small transaction in this database's WAL:
                // an idle database's slot advances too, and its commit time
                // becomes the next watermark.
                client
                    .execute("SELECT pg_logical_emit_message(true, 'tributary.heartbeat', now()::text)", &[])
                    .await
                    .map_err(pg("writing heartbeat"))?;
                state.settle(sink.durable());
                if let Some(w) = state.take_watermark() {
                    sink.send(&watermark_topic, &w.key(), &w.to_json()).await?;
                }
                if let Some(label_lsn) = state.resnapshot_lsn()
                    && let Some((id, table)) = state::pending_resnapshot(&client).await?
                {
                    let copy = resnapshot(config, kafka, source, label_lsn, &sink, &table);
                    tokio::pin!(copy);
                    // The stream waits (the server buffers) while the table is
                    // copied; keep the connection alive meanwhile.
                    let rows = loop {
                        tokio::select! {
                            rows = &mut copy => break rows?,
                            _ = status_tick.tick() => status.send_status(received, sink.durable()).await?,
                        }
                    };
                    state::resnapshot_done(&client, id, rows).await?;
                    tracing::info!(db = %source.db, shard = source.shard, table = %table, rows, "resnapshot complete");
                }
            }
            msg = rx.recv() => {
                let msg = msg.ok_or_else(|| Error::Protocol("replication reader stopped".into()))??;
                match msg {
                    None => return Err(Error::Protocol("server ended the replication stream".into())),
                    Some(ReplicationMessage::Keepalive { wal_end, reply_requested }) => {
                        received = received.max(wal_end);
                        if state.tx.is_none() {
                            sink.mark(wal_end).await?;
                            state.marked = state.marked.max(wal_end);
                        }
                        if reply_requested {
                            status.send_status(received, sink.durable()).await?;
                        }
                    }
                    Some(ReplicationMessage::XLogData { wal_end, data, .. }) => {
                        received = received.max(wal_end);
                        state.handle(decode(&data)?, &sink).await?;
                    }
                }
            }
        }
    }
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

/// A new slot and a full snapshot at its consistent point. Returns the
/// position to stream from.
#[allow(clippy::too_many_arguments)]
async fn fresh_snapshot(
    config: &CdcConfig,
    kafka: &KafkaConfig,
    source: &SourceDb,
    slot: &str,
    repl: &mut ReplicationConnection,
    client: &mut tokio_postgres::Client,
    sink: &KafkaSink,
    reset: bool,
) -> Result<Lsn> {
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
        topic_prefix: &kafka.topic_prefix,
        snapshot: snapshot_name,
        label: snapshot::Label {
            lsn: Lsn(consistent.0.saturating_sub(1)),
            ordinal_base: 0,
        },
        workers: config.snapshot_workers,
        reset: if reset { source.tables.clone() } else { vec![] },
        columns,
    };
    finish_snapshot(job, chunks, source, slot, consistent, client, sink).await?;
    drop(planner);
    Ok(consistent)
}

/// Copies the chunks an interrupted snapshot did not finish, under a new
/// snapshot. Its rows carry the run's label (consistent point − 1) with
/// ordinals above every earlier attempt's, so they sort after what was
/// published before and before the stream, which replays every change since
/// the consistent point over them: once the stream has caught up, each row
/// is exactly as the source has it.
async fn resume_snapshot(
    config: &CdcConfig,
    kafka: &KafkaConfig,
    source: &SourceDb,
    slot: &str,
    run: &state::Run,
    client: &mut tokio_postgres::Client,
    sink: &KafkaSink,
) -> Result<()> {
    let attempt = state::next_attempt(client, slot).await?;
    let chunks = state::pending_chunks(client, slot).await?;
    tracing::warn!(db = %source.db, shard = source.shard, slot = %slot, attempt, chunks_left = chunks.len(), "resuming an interrupted snapshot");
    let (exporter, name) = export_snapshot(&source.dsn).await?;
    let columns = columns_of(&exporter, &source.tables).await?;
    let job = snapshot::Copy {
        source,
        topic_prefix: &kafka.topic_prefix,
        snapshot: name,
        label: snapshot::Label {
            lsn: Lsn(run.consistent.0.saturating_sub(1)),
            ordinal_base: (attempt as u64) << 40,
        },
        workers: config.snapshot_workers,
        reset: vec![],
        columns,
    };
    finish_snapshot(job, chunks, source, slot, run.consistent, client, sink).await?;
    drop(exporter);
    Ok(())
}

async fn finish_snapshot(
    job: snapshot::Copy<'_>,
    chunks: Vec<snapshot::Chunk>,
    source: &SourceDb,
    slot: &str,
    consistent: Lsn,
    client: &tokio_postgres::Client,
    sink: &KafkaSink,
) -> Result<()> {
    let started = std::time::Instant::now();
    let copied = snapshot::copy_chunks(job, chunks, sink, |chunk, rows| async move {
        state::chunk_done(client, slot, &chunk, rows).await
    })
    .await?;
    sink.mark(consistent).await?;
    sink.wait_durable(consistent, Duration::from_secs(120))
        .await?;
    let rows = state::complete(client, slot, consistent).await?;
    tracing::info!(db = %source.db, shard = source.shard, rows, copied, lsn = %consistent, secs = started.elapsed().as_secs_f64(), "snapshot complete");
    Ok(())
}

/// Re-copies one table while streaming (`tributary cdc resnapshot`). Its rows
/// sort after everything published so far and before every change still to
/// come, after a truncate that clears the shard's older rows of the table;
/// changes committed while it copies are replayed over it by the stream.
async fn resnapshot(
    config: &CdcConfig,
    kafka: &KafkaConfig,
    source: &SourceDb,
    label_lsn: Lsn,
    sink: &KafkaSink,
    table: &str,
) -> Result<u64> {
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
        topic_prefix: &kafka.topic_prefix,
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

fn sink_target(state: &StreamState, sink: &KafkaSink) -> Lsn {
    state.last_commit_end.max(sink.durable())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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

struct RelationInfo {
    table: String,
    topic: String,
    encoder: TableEncoder,
}

struct TxState {
    lsn: Lsn,
    commit_ts_us: i64,
    xid: u32,
    ordinal: u64,
}

/// Turns decoded pgoutput into events.
struct StreamState<'a> {
    source: &'a SourceDb,
    topic_prefix: &'a str,
    slot: &'a str,
    /// For recording schema changes.
    client: &'a tokio_postgres::Client,
    relations: HashMap<u32, RelationInfo>,
    /// The last recorded shape of each table (column list as JSON).
    shapes: HashMap<String, Value>,
    tx: Option<TxState>,
    last_commit_end: Lsn,
    /// Everything before this position has been handed to the sink.
    marked: Lsn,
    /// Commits handed to the sink and not yet acknowledged: (end, time).
    pending_commits: VecDeque<(Lsn, i64)>,
    /// The newest acknowledged commit: (end, time).
    durable_commit: Option<(Lsn, i64)>,
    watermark_sent: Option<Lsn>,
    buffers: Buffers,
}

impl<'a> StreamState<'a> {
    fn new(
        source: &'a SourceDb,
        topic_prefix: &'a str,
        slot: &'a str,
        client: &'a tokio_postgres::Client,
    ) -> Self {
        StreamState {
            source,
            topic_prefix,
            slot,
            client,
            relations: HashMap::new(),
            shapes: HashMap::new(),
            tx: None,
            last_commit_end: Lsn::ZERO,
            marked: Lsn::ZERO,
            pending_commits: VecDeque::new(),
            durable_commit: None,
            watermark_sent: None,
            buffers: Buffers::default(),
        }
    }

    /// Moves commits the broker acknowledged out of the pending list.
    fn settle(&mut self, durable: Lsn) {
        while let Some(&(end, ts)) = self.pending_commits.front() {
            if end > durable {
                break;
            }
            self.durable_commit = Some((end, ts));
            self.pending_commits.pop_front();
        }
    }

    /// How old the oldest commit not yet acknowledged by Kafka is.
    fn lag_seconds(&self) -> f64 {
        self.pending_commits
            .front()
            .map_or(0.0, |(_, ts)| ((now_us() - ts) as f64 / 1e6).max(0.0))
    }

    /// A watermark when the acknowledged commit moved since the last.
    fn take_watermark(&mut self) -> Option<Watermark> {
        let (end, ts) = self.durable_commit?;
        if self.watermark_sent.is_some_and(|w| w >= end) {
            return None;
        }
        self.watermark_sent = Some(end);
        Some(Watermark::new(
            &self.source.db,
            self.source.shard,
            end,
            ts,
            now_us(),
        ))
    }

    /// The position for a resnapshot's rows: after everything handed to the
    /// sink, before any change still to come. None inside a transaction or
    /// before the stream reported a position.
    fn resnapshot_lsn(&self) -> Option<Lsn> {
        (self.tx.is_none() && self.marked > Lsn::ZERO).then(|| Lsn(self.marked.0 - 1))
    }

    async fn handle(&mut self, msg: PgOutput, sink: &KafkaSink) -> Result<()> {
        match msg {
            PgOutput::Begin {
                final_lsn,
                commit_ts_us,
                xid,
            } => {
                self.tx = Some(TxState {
                    lsn: final_lsn,
                    commit_ts_us,
                    xid,
                    ordinal: 0,
                });
            }
            PgOutput::Commit {
                end_lsn,
                commit_ts_us,
                ..
            } => {
                self.tx = None;
                self.last_commit_end = end_lsn;
                self.marked = self.marked.max(end_lsn);
                self.pending_commits.push_back((end_lsn, commit_ts_us));
                sink.mark(end_lsn).await?;
            }
            PgOutput::Relation(rel) => self.add_relation(rel).await?,
            PgOutput::Insert { relation, new } => {
                self.emit(relation, Op::Create, None, Some(new), sink)
                    .await?;
            }
            PgOutput::Update { relation, old, new } => {
                if let Some(old_key) = old.as_ref().filter(|o| self.key_changed(relation, o, &new))
                {
                    // A primary-key change is a delete of the old row and an
                    // insert of the new one, as Debezium reports it.
                    self.emit(relation, Op::Delete, Some(old_key.clone()), None, sink)
                        .await?;
                    self.emit(relation, Op::Create, None, Some(new), sink)
                        .await?;
                } else {
                    self.emit(relation, Op::Update, old, Some(new), sink)
                        .await?;
                }
            }
            PgOutput::Delete { relation, old } => {
                self.emit(relation, Op::Delete, Some(old), None, sink)
                    .await?;
            }
            PgOutput::Truncate { relations } => {
                for relation in relations {
                    self.emit(relation, Op::Truncate, None, None, sink).await?;
                }
            }
            PgOutput::Message { .. } | PgOutput::Other(_) => {}
        }
        Ok(())
    }

    fn key_changed(&self, relation: u32, old: &[TupleValue], new: &[TupleValue]) -> bool {
        let Some(rel) = self.relations.get(&relation) else {
            return false;
        };
        rel.encoder.columns().iter().enumerate().any(|(i, c)| {
            c.key && old.get(i).is_some_and(|o| *o != TupleValue::Null) && old.get(i) != new.get(i)
        })
    }

    /// Takes a table's (new) shape. A shape that differs from the last one
    /// recorded for the table is a schema change: logged, counted, and
    /// recorded with the LSN from which events carry it.
    async fn add_relation(&mut self, rel: Relation) -> Result<()> {
        let mut columns: Vec<Column> = rel
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                pg_type: PgType::from_oid(c.type_oid, c.type_modifier),
                key: c.key,
            })
            .collect();
        if rel.replica_identity == b'f' {
            // REPLICA IDENTITY FULL flags every column as part of the
            // identity; the row's key is still its primary key.
            let primary: Vec<String> = self
                .client
                .query(
                    "SELECT a.attname::text FROM pg_index i
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                     WHERE i.indrelid = $1::text::regclass AND i.indisprimary",
                    &[&format!("{}.{}", rel.namespace, rel.name)],
                )
                .await
                .map_err(pg("reading the primary key"))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !primary.is_empty() {
                for c in &mut columns {
                    c.key = primary.contains(&c.name);
                }
            }
        }
        let shape = serde_json::to_value(&columns).expect("json");
        let previous = match self.shapes.get(&rel.name) {
            Some(v) => Some(v.clone()),
            None => self
                .client
                .query_opt(
                    "SELECT columns FROM tributary_cdc.schema_changes
                     WHERE slot_name = $1 AND table_name = $2 ORDER BY seen_at DESC LIMIT 1",
                    &[&self.slot, &rel.name],
                )
                .await
                .map_err(pg("reading recorded schemas"))?
                .map(|r| r.get::<_, Value>(0)),
        };
        if previous.as_ref() != Some(&shape) {
            let lsn = self.tx.as_ref().map_or(self.marked, |t| t.lsn);
            if previous.is_some() {
                tracing::warn!(db = %self.source.db, shard = self.source.shard, table = %rel.name, lsn = %lsn, columns = %shape, "schema change: events carry the new columns from here on");
                crate::metrics::schema_change(
                    &format!("{}.{}", self.source.db, self.source.shard),
                    &rel.name,
                );
            }
            state::schema_change(self.client, self.slot, &rel.name, lsn, &shape).await?;
        }
        self.shapes.insert(rel.name.clone(), shape);
        let topic = topic_name(self.topic_prefix, &self.source.db, &rel.name);
        self.relations.insert(
            rel.id,
            RelationInfo {
                encoder: TableEncoder::new(&self.source.db, self.source.shard, &rel.name, columns),
                table: rel.name,
                topic,
            },
        );
        Ok(())
    }

    async fn emit(
        &mut self,
        relation: u32,
        op: Op,
        old: Option<Vec<TupleValue>>,
        new: Option<Vec<TupleValue>>,
        sink: &KafkaSink,
    ) -> Result<()> {
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| Error::Protocol("row change outside a transaction".into()))?;
        let rel = self
            .relations
            .get(&relation)
            .ok_or_else(|| Error::Protocol(format!("change for unknown relation {relation}")))?;
        tx.ordinal += 1;
        // With REPLICA IDENTITY FULL the old row carries the values the new
        // one left out as unchanged TOAST: take them, so the event is whole.
        let new = match (new, old.as_ref()) {
            (Some(mut n), Some(o)) if o.len() == n.len() => {
                for (v, before) in n.iter_mut().zip(o) {
                    if *v == TupleValue::UnchangedToast && matches!(before, TupleValue::Text(_)) {
                        *v = before.clone();
                    }
                }
                Some(n)
            }
            (n, _) => n,
        };
        let enc = &rel.encoder;
        let columns = enc.columns();
        let bufs = &mut self.buffers;
        let after: Option<Vec<Cell<'_>>> = new.as_deref().map(cells);
        let mut before: Option<Vec<Cell<'_>>> = old.as_deref().map(cells);
        // With REPLICA IDENTITY DEFAULT a delete carries only the key: keep
        // just the key columns so `before` never shows invented NULLs.
        if let Some(b) = before.as_mut()
            && (op == Op::Delete || op == Op::Update)
            && b.len() == columns.len()
        {
            let key_only = columns
                .iter()
                .zip(b.iter())
                .any(|(c, v)| !c.key && encode::reads_as_null(&c.pg_type, *v));
            if key_only {
                for (c, v) in columns.iter().zip(b.iter_mut()) {
                    if !c.key {
                        *v = Cell::Absent;
                    }
                }
            }
        }
        let unchanged: Vec<&str> = match &new {
            Some(n) => n
                .iter()
                .zip(columns)
                .filter(|(v, _)| **v == TupleValue::UnchangedToast)
                .map(|(_, c)| c.name.as_str())
                .collect(),
            None => Vec::new(),
        };
        if let Some(a) = &after {
            let key = (op != Op::Delete && op != Op::Truncate).then_some(&mut bufs.key);
            enc.row(a, &mut bufs.after, key)?;
        }
        if let Some(b) = &before {
            let key = (op == Op::Delete).then_some(&mut bufs.key);
            enc.row(b, &mut bufs.before, key)?;
        }
        let identified = if op == Op::Delete {
            before.is_some()
        } else {
            after.is_some()
        };
        if op == Op::Truncate {
            bufs.key.clear();
            serde_json::to_writer(
                &mut bufs.key,
                &serde_json::json!({ "shard": self.source.shard, "truncate": true }),
            )
            .expect("json");
        } else if !identified {
            return Err(Error::Value(tributary_model::Error::InvalidEvent(format!(
                "{} event has no row image",
                op.as_str()
            ))));
        }
        let meta = Meta {
            op,
            lsn: tx.lsn,
            ordinal: tx.ordinal,
            ts_us: tx.commit_ts_us,
            tx_id: Some(tx.xid),
            snapshot: false,
            ts_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        };
        enc.event(
            &meta,
            before.is_some().then_some(&bufs.before[..]),
            after.is_some().then_some(&bufs.after[..]),
            &unchanged,
            &mut bufs.payload,
        );
        crate::metrics::event(&rel.table, op.as_str(), bufs.payload.len());
        sink.send(&rel.topic, &bufs.key, &bufs.payload).await
    }
}

/// Reused buffers for the event being written.
#[derive(Default)]
struct Buffers {
    before: Vec<u8>,
    after: Vec<u8>,
    key: Vec<u8>,
    payload: Vec<u8>,
}

/// A pgoutput tuple as row-image cells (unchanged TOAST is absent).
fn cells(tuple: &[TupleValue]) -> Vec<Cell<'_>> {
    tuple
        .iter()
        .map(|v| match v {
            TupleValue::Null => Cell::Null,
            TupleValue::UnchangedToast => Cell::Absent,
            TupleValue::Text(t) => Cell::Text(t),
        })
        .collect()
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
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
        let id: i64 = client
            .query_one(
                "INSERT INTO tributary_cdc.resnapshot_requests(table_name) VALUES ($1) RETURNING id",
                &[&table],
            )
            .await
            .map_err(pg("requesting a resnapshot"))?
            .get(0);
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
            let rows: Option<i64> = client
                .query_one(
                    "SELECT rows FROM tributary_cdc.resnapshot_requests WHERE id = $1 AND done_at IS NOT NULL
                     UNION ALL SELECT NULL LIMIT 1",
                    &[id],
                )
                .await
                .map_err(pg("reading a resnapshot request"))?
                .get(0);
            if let Some(rows) = rows {
                total += rows as u64;
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
