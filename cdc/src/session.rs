//! One streaming session of one source database, from connecting to the
//! end of its stream.
//!
//! A session:
//! 1. connects (SQL and replication, [`crate::source`]) and brings the slot
//!    to where streaming can start ([`crate::slot`]: publication, lost
//!    slots, the snapshot);
//! 2. opens a sink and starts replication from the slot;
//! 3. loops over four events until shutdown or the first error:
//!    - a replication message: decoded and fed through the state machine
//!      ([`crate::stream`]) to the sink; a schema change it returns is
//!      recorded before the next message;
//!    - the status tick: the slot is confirmed with what the sink reports
//!      durable, never more (and the lag metrics are updated); when the
//!      newest durable commit moved, its watermark is published, so under
//!      load watermarks follow the status cadence (stream jobs close
//!      windows on them);
//!    - the heartbeat tick: a logical message in the database's WAL (so an
//!      idle slot moves and an idle shard's watermark still advances) and a
//!      pending resnapshot request, copied while the stream waits;
//!    - shutdown: what was sent gets up to 10 s to become durable, the slot
//!      is confirmed with it, and the session ends.
//!
//! The supervisor decides whether a failed session is followed by another.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tributary_kafka::KafkaConfig;
use tributary_model::lsn::Lsn;
use tributary_model::watermark::watermark_topic;

use crate::decode::{PgOutput, Relation, decode};
use crate::protocol::ReplicationMessage;
use crate::sink::Sink;
use crate::slot::Slot;
use crate::source::{SourceDb, connect_replication, connect_sql};
use crate::stream::StreamState;
use crate::{CdcConfig, Error, Result, pg, state};

/// Streams `source` into a new `S` until `shutdown` or an error.
pub(crate) async fn run<S: Sink>(
    config: &CdcConfig,
    kafka: &KafkaConfig,
    source: &SourceDb,
    shutdown: &CancellationToken,
    high_water: &mut Lsn,
) -> Result<()> {
    let slot = Slot {
        config,
        kafka,
        source,
        name: source.slot_name(&config.slot_prefix),
        high_water: *high_water,
    };
    let label = source.label();
    let mut client = connect_sql(&source.dsn).await?;
    let found = slot.inspect(&client).await?;
    let mut repl = connect_replication(&source.dsn).await?;
    let sink = S::open(kafka)?;
    let start = slot.prepare(found, &mut repl, &mut client, &sink).await?;

    let command = format!(
        "START_REPLICATION SLOT {} LOGICAL {start} (\"proto_version\" '1', \"publication_names\" '{}', \"messages\" 'true')",
        slot.name, config.publication
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
    let recorded = state::recorded_shapes(&client, &slot.name).await?;
    let mut state = StreamState::new(source, &kafka.topic_prefix, recorded);
    let mut received = start;
    // The stream, until it ends; on an error, what it already handed to the
    // sink gets a few seconds to be delivered before the sink is dropped
    // (dropping a producer purges its queue). Normally the slot would send
    // it again anyway; after a failover there is no slot to do so, and a
    // transaction purged half-way would stay incomplete in the change log.
    let streamed: Result<()> = async {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Stop intake, let what was sent become durable, confirm, exit.
                    let target = state.last_commit_end().max(sink.durable());
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
                    if let Some(w) = state.take_watermark() {
                        sink.send(&watermark_topic, &w.key(), &w.to_json(), &[])
                            .await?;
                    }
                }
                _ = heartbeat.tick() => {
                    // A heartbeat is a small transaction in this database's WAL:
                    // an idle database's slot advances too, and its commit time
                    // becomes the next watermark.
                    client
                        .execute("SELECT pg_logical_emit_message(true, 'tributary.heartbeat', now()::text)", &[])
                        .await
                        .map_err(pg("writing heartbeat"))?;
                    if let Some(label_lsn) = state.resnapshot_lsn()
                        && let Some((id, table)) = state::pending_resnapshot(&client).await?
                    {
                        let copy = slot.resnapshot(label_lsn, &sink, &table);
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
                            *high_water = (*high_water).max(received);
                            state.keepalive(wal_end, &sink)?;
                            if reply_requested {
                                status.send_status(received, sink.durable()).await?;
                            }
                        }
                        Some(ReplicationMessage::XLogData { wal_end, data, .. }) => {
                            received = received.max(wal_end);
                            *high_water = (*high_water).max(received);
                            let msg = match decode(&data)? {
                                PgOutput::Relation(rel) => PgOutput::Relation(row_key(&client, rel).await?),
                                other => other,
                            };
                            if let Some(change) = state.handle(msg, &sink).await? {
                                state::schema_change(&client, &slot.name, &change.table, change.lsn, &change.columns).await?;
                            }
                        }
                    }
                }
            }
        }
    }
    .await;
    if streamed.is_err() {
        let _ = sink
            .wait_durable(state.last_commit_end(), Duration::from_secs(5))
            .await;
    }
    streamed
}

/// The relation with its columns' key flags set to the row's key. With
/// REPLICA IDENTITY FULL pgoutput flags every column as part of the
/// identity; the row's key is still its primary key (when it has one).
async fn row_key(client: &tokio_postgres::Client, mut rel: Relation) -> Result<Relation> {
    if rel.replica_identity != b'f' {
        return Ok(rel);
    }
    let primary: Vec<String> = client
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
        for c in &mut rel.columns {
            c.key = primary.contains(&c.name);
        }
    }
    Ok(rel)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
