//! The per-database reader: publication, slot, snapshot, stream.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tributary_model::domain::{KafkaConfig, topic_name};
use tributary_model::error_chain;
use tributary_model::event::{ChangeEvent, Column, Op, Source, Transaction, event_id};
use tributary_model::lsn::Lsn;
use tributary_model::pgtype::PgType;

use crate::decode::{PgOutput, Relation, TupleValue, decode};
use crate::protocol::{ReplicationConnection, ReplicationMessage};
use crate::sink::{KafkaSink, check_broker, ensure_topics};
use crate::{CdcConfig, Error, Result, snapshot};

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
        format!("{prefix}_{}_{}", self.db, self.shard)
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
    check_broker(&kafka, Duration::from_secs(10)).await?;
    let topics: Vec<String> = sources
        .iter()
        .flat_map(|s| {
            s.tables
                .iter()
                .map(|t| topic_name(&kafka.topic_prefix, &s.db, t))
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    ensure_topics(&kafka, &topics).await?;

    let mut tasks = JoinSet::new();
    for source in sources {
        let (config, kafka, shutdown) = (config.clone(), kafka.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                match run_reader(&config, &kafka, &source, &shutdown).await {
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

async fn connect_sql(dsn: &str) -> Result<tokio_postgres::Client> {
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

fn pg(context: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |source| Error::Postgres {
        context: context.to_string(),
        source,
    }
}

async fn run_reader(
    config: &CdcConfig,
    kafka: &KafkaConfig,
    source: &SourceDb,
    shutdown: &CancellationToken,
) -> Result<()> {
    let slot = source.slot_name(&config.slot_prefix);
    let client = connect_sql(&source.dsn).await?;
    ensure_publication(&client, &config.publication, &source.tables).await?;
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS tributary_cdc;
             CREATE TABLE IF NOT EXISTS tributary_cdc.snapshots (
                 slot_name text PRIMARY KEY,
                 consistent_lsn text NOT NULL,
                 rows bigint NOT NULL,
                 completed_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(pg("creating tributary_cdc.snapshots"))?;
    let slot_exists = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(pg("reading pg_replication_slots"))?
        .is_some();
    let snapshot_done = client
        .query_opt(
            "SELECT 1 FROM tributary_cdc.snapshots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(pg("reading tributary_cdc.snapshots"))?
        .is_some();

    let mut repl = ReplicationConnection::connect(&source.dsn, "tributary-cdc").await?;
    let sink;
    let start;
    if slot_exists && snapshot_done {
        start = Lsn::ZERO;
        sink = KafkaSink::new(kafka, start)?;
        tracing::info!(db = %source.db, shard = source.shard, slot = %slot, "resuming from slot");
    } else {
        if slot_exists {
            // A snapshot was interrupted: its slot cannot be trusted to match
            // what was published, so take the snapshot again from a new slot.
            tracing::warn!(slot = %slot, "snapshot did not complete before; recreating the slot");
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
                .map_err(|source| match source.as_db_error() {
                    Some(db) => Error::Server {
                        target: "drop slot".into(),
                        code: db.code().code().to_string(),
                        message: db.message().to_string(),
                    },
                    None => Error::Postgres {
                        context: "dropping slot".into(),
                        source,
                    },
                })?;
        }
        client
            .execute(
                "DELETE FROM tributary_cdc.snapshots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(pg("clearing snapshot state"))?;
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
        sink = KafkaSink::new(kafka, Lsn::ZERO)?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot_name}'"
            ))
            .await
            .map_err(pg("importing the exported snapshot"))?;
        let started = std::time::Instant::now();
        let rows = snapshot::copy_tables(
            &client,
            source,
            &kafka.topic_prefix,
            consistent,
            &sink,
            // Anything published before (an interrupted snapshot, or a lost
            // slot) must be cleared by the new snapshot.
            slot_exists || snapshot_done,
        )
        .await?;
        client
            .batch_execute("COMMIT")
            .await
            .map_err(pg("ending the snapshot"))?;
        sink.mark(consistent).await?;
        sink.wait_durable(consistent, Duration::from_secs(120))
            .await?;
        client
            .execute(
                "INSERT INTO tributary_cdc.snapshots(slot_name, consistent_lsn, rows) VALUES ($1, $2, $3)",
                &[&slot, &consistent.to_string(), &(rows as i64)],
            )
            .await
            .map_err(pg("recording snapshot completion"))?;
        crate::metrics::snapshot_rows(&format!("{}.{}", source.db, source.shard), rows);
        tracing::info!(db = %source.db, shard = source.shard, rows, lsn = %consistent, secs = started.elapsed().as_secs_f64(), "snapshot complete");
        start = consistent;
    }

    let command = format!(
        "START_REPLICATION SLOT {slot} LOGICAL {start} (\"proto_version\" '1', \"publication_names\" '{}')",
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

    let heartbeat_client = client;
    let mut heartbeat = tokio::time::interval(Duration::from_millis(config.heartbeat_interval_ms));
    let mut status_tick = tokio::time::interval(Duration::from_millis(config.status_interval_ms));
    let mut state = StreamState::new(source, &kafka.topic_prefix);
    let mut received = start;
    let source_label = format!("{}.{}", source.db, source.shard);
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
                crate::metrics::position(&source_label, received, sink.durable());
                status.send_status(received, sink.durable()).await?;
            }
            _ = heartbeat.tick() => {
                // A heartbeat writes WAL, so an idle database's slot advances
                // too (the keepalive that follows is confirmed below).
                heartbeat_client
                    .execute("SELECT pg_logical_emit_message(false, 'tributary.heartbeat', now()::text)", &[])
                    .await
                    .map_err(pg("writing heartbeat"))?;
            }
            msg = rx.recv() => {
                let msg = msg.ok_or_else(|| Error::Protocol("replication reader stopped".into()))??;
                match msg {
                    None => return Err(Error::Protocol("server ended the replication stream".into())),
                    Some(ReplicationMessage::Keepalive { wal_end, reply_requested }) => {
                        received = received.max(wal_end);
                        if state.tx.is_none() {
                            sink.mark(wal_end).await?;
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

fn sink_target(state: &StreamState, sink: &KafkaSink) -> Lsn {
    state.last_commit_end.max(sink.durable())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn ensure_publication(
    client: &tokio_postgres::Client,
    publication: &str,
    tables: &[String],
) -> Result<()> {
    let list = tables
        .iter()
        .map(|t| format!("public.{t}"))
        .collect::<Vec<_>>()
        .join(", ");
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(pg("reading pg_publication"))?
        .is_some();
    let sql = if exists {
        format!("ALTER PUBLICATION {publication} SET TABLE {list}")
    } else {
        format!("CREATE PUBLICATION {publication} FOR TABLE {list}")
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(pg("creating the publication"))?;
    Ok(())
}

struct RelationInfo {
    table: String,
    topic: String,
    columns: Vec<Column>,
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
    relations: HashMap<u32, RelationInfo>,
    tx: Option<TxState>,
    last_commit_end: Lsn,
}

impl<'a> StreamState<'a> {
    fn new(source: &'a SourceDb, topic_prefix: &'a str) -> Self {
        StreamState {
            source,
            topic_prefix,
            relations: HashMap::new(),
            tx: None,
            last_commit_end: Lsn::ZERO,
        }
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
            PgOutput::Commit { end_lsn, .. } => {
                self.tx = None;
                self.last_commit_end = end_lsn;
                sink.mark(end_lsn).await?;
            }
            PgOutput::Relation(rel) => self.add_relation(rel),
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
        rel.columns.iter().enumerate().any(|(i, c)| {
            c.key && old.get(i).is_some_and(|o| *o != TupleValue::Null) && old.get(i) != new.get(i)
        })
    }

    fn add_relation(&mut self, rel: Relation) {
        let columns = rel
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                pg_type: PgType::from_oid(c.type_oid, c.type_modifier),
                key: c.key,
            })
            .collect();
        let topic = topic_name(self.topic_prefix, &self.source.db, &rel.name);
        self.relations.insert(
            rel.id,
            RelationInfo {
                table: rel.name,
                topic,
                columns,
            },
        );
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
        let mut unchanged = Vec::new();
        let after = new
            .map(|t| tuple_to_row(&t, &rel.columns, &rel.table, Some(&mut unchanged)))
            .transpose()?;
        let before = old
            .map(|t| tuple_to_row(&t, &rel.columns, &rel.table, None))
            .transpose()?;
        // With REPLICA IDENTITY DEFAULT a delete carries only the key: keep
        // just the key columns so `before` never shows invented NULLs.
        let before = before.map(|mut b| {
            if op == Op::Delete || op == Op::Update {
                let key_only = rel
                    .columns
                    .iter()
                    .any(|c| !c.key && b.get(&c.name) == Some(&Value::Null));
                if key_only {
                    b.retain(|k, _| rel.columns.iter().any(|c| c.key && &c.name == k));
                }
            }
            b
        });
        let db = &self.source.db;
        let ev = ChangeEvent {
            before,
            after,
            source: Source {
                version: env!("CARGO_PKG_VERSION").into(),
                connector: "postgresql".into(),
                db: db.clone(),
                shard: self.source.shard,
                schema: "public".into(),
                table: rel.table.clone(),
                lsn: tx.lsn,
                ordinal: tx.ordinal,
                ts_us: tx.commit_ts_us,
                tx_id: Some(tx.xid),
                snapshot: false,
            },
            op,
            ts_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            transaction: Some(Transaction {
                id: format!("{}:{}", tx.xid, tx.lsn),
                total_order: tx.ordinal,
            }),
            event_id: event_id(db, self.source.shard, tx.lsn, tx.ordinal, false),
            unchanged_toast: unchanged,
            columns: rel.columns.clone(),
        };
        let key = if op == Op::Truncate {
            serde_json::json!({ "shard": self.source.shard, "truncate": true })
        } else {
            ev.key()?
        };
        let payload = ev.to_json();
        crate::metrics::event(&rel.table, op.as_str(), payload.len());
        sink.send(
            &rel.topic,
            &serde_json::to_vec(&key).expect("json"),
            &payload,
        )
        .await
    }
}

fn tuple_to_row(
    tuple: &[TupleValue],
    columns: &[Column],
    table: &str,
    mut unchanged: Option<&mut Vec<String>>,
) -> Result<Map<String, Value>> {
    if tuple.len() != columns.len() {
        return Err(Error::Decode(format!(
            "tuple of {table} has {} values for {} columns",
            tuple.len(),
            columns.len()
        )));
    }
    let mut row = Map::with_capacity(columns.len());
    for (value, col) in tuple.iter().zip(columns) {
        match value {
            TupleValue::Null => {
                row.insert(col.name.clone(), Value::Null);
            }
            TupleValue::UnchangedToast => {
                if let Some(u) = unchanged.as_deref_mut() {
                    u.push(col.name.clone());
                }
            }
            TupleValue::Text(t) => {
                row.insert(col.name.clone(), col.pg_type.text_to_json(&col.name, t)?);
            }
        }
    }
    Ok(row)
}
