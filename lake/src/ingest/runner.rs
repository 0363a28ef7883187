//! The ingest loop: one assignment of partitions per set of owned tables,
//! restarted from the lake's offsets after a transient failure.
//!
//! Owns: [`run`] and [`serve`], the standby wait, the assignment of each
//! owned table's partitions from its recorded offsets, the collection of a
//! batch (at most `batch_max_messages`, closing `batch_max_ms` after the
//! previous collection), the round that commits every table's silver before
//! any bronze, maintenance between rounds, and the offsets-only commits that
//! keep idle tables' freshness in the lake.
//!
//! Rules kept here:
//! - A restart never trusts memory: each assignment loads every table's
//!   state from the lake ([`super::resume`]), and the consumer starts at the
//!   lower of the bronze and silver offsets.
//! - A table is written only while this process holds its lease; a commit
//!   refused by the fence drops the table and assigns again.
//! - A failure a retry cannot cure stops its table only, right before the
//!   change it failed on; transient ones restart the whole assignment with
//!   backoff.
//! - A refusal of the commit coordinator's database that no retry cures (a
//!   missing privilege) stops the ingester with that error, whether a
//!   commit, the lease keeper ([`Leases::failure`]) or maintenance met it:
//!   every table needs that database, so waiting would never end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use deltalake::kernel::Transaction;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tributary_kafka::{KafkaConfig, kafka_err};
use tributary_model::backoff::Backoff;
use tributary_model::domain::{TABLES, topic_of};
use tributary_model::error_chain;

use super::batch::{finish_batch, stage_batch};
use super::config::IngestConfig;
use super::resume::{TableState, app_id, commit_offsets_only, load_state};
use crate::lease::{Leases, Owned};
use crate::{Error, Lake, Result};

/// Runs ingest until `shutdown`. Transient failures (broker, store, commit
/// conflicts) restart from the offsets recorded in the lake. A change one
/// table cannot take (see [`Error::Incompatible`]) stops that table only,
/// with its offsets right before that change, until the process restarts.
///
/// With a commit coordinator, each table is written only while this process
/// holds its lease ([`crate::lease`]); tables it does not own are left to
/// the ingester that does, and taken over when their lease expires.
pub async fn run(
    lake: Lake,
    kafka: KafkaConfig,
    config: IngestConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    tributary_kafka::check_broker(&kafka, Duration::from_secs(10)).await?;
    crate::metrics::register();
    let tables = TABLES.iter().map(|t| t.name.to_string()).collect();
    let leases = Leases::start(
        &lake,
        tables,
        Duration::from_millis(config.lease_ttl_ms),
        shutdown.clone(),
    )
    .await?;
    let mut backoff = Backoff::restarts();
    let mut stopped: HashSet<String> = HashSet::new();
    let result = loop {
        if let Some(e) = leases.failure() {
            break Err(e);
        }
        match run_once(&lake, &kafka, &config, &shutdown, &mut stopped, &leases).await {
            Ok(Exit::Shutdown) => break Ok(()),
            Ok(Exit::Reassign) => backoff.reset(),
            Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                tracing::warn!(error = %error_chain(&e), "ingest failed; resuming from the offsets in the lake");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.cancelled() => break Ok(()),
                }
            }
            Err(e) => break Err(e),
        }
    };
    leases.release_all().await;
    result
}

/// Why one assignment of partitions ended.
enum Exit {
    Shutdown,
    /// The set of owned tables changed: assign again.
    Reassign,
}

/// Runs ingest ([`run`]) and, beside it, the CDC watermark follower that
/// tells [`crate::freshness`] how far each silver table is complete, until
/// `shutdown`. The follower stops with ingest.
pub async fn serve(
    lake: Lake,
    kafka: KafkaConfig,
    config: IngestConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    let follower_stop = shutdown.child_token();
    let follower = tokio::spawn(crate::freshness::follow_watermarks(
        kafka.clone(),
        follower_stop.clone(),
    ));
    let result = run(lake, kafka, config, shutdown).await;
    follower_stop.cancel();
    let stopped = match follower.await {
        Ok(r) => r,
        Err(e) => Err(Error::Internal(format!(
            "the watermark follower task failed: {e}"
        ))),
    };
    if let Err(e) = stopped {
        tracing::warn!(error = %error_chain(&e), "watermark follower stopped");
    }
    result
}

/// The ingest consumer: tributary's consumer settings (no broker-side
/// offsets: they live in the lake), reading a partition from its start when
/// the lake has no offset for it.
fn consumer_config(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = tributary_kafka::consumer_config(kafka, group);
    c.set("auto.offset.reset", "earliest");
    c
}

/// The partition count of every topic of `topics`, once they all exist;
/// `None` when `shutdown` or a change of owned tables came first.
async fn partition_counts(
    consumer: &StreamConsumer,
    topics: &[String],
    shutdown: &CancellationToken,
    changed: &mut watch::Receiver<u64>,
) -> Result<Option<HashMap<String, i32>>> {
    let mut last_log = Instant::now() - Duration::from_secs(60);
    loop {
        let md = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(kafka_err("reading topic metadata"))?;
        let mut counts = HashMap::new();
        for t in md.topics() {
            if t.error().is_none() && !t.partitions().is_empty() {
                counts.insert(t.name().to_string(), t.partitions().len() as i32);
            }
        }
        let missing: Vec<&String> = topics.iter().filter(|t| !counts.contains_key(*t)).collect();
        if missing.is_empty() {
            return Ok(Some(counts));
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            tracing::info!(?missing, "waiting for the CDC reader to create topics");
            last_log = Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return Ok(None),
            _ = changed.changed() => return Ok(None),
        }
    }
}

/// The shortest collection of a batch: enough to drain what the consumer
/// already buffered when the previous commits ran past `batch_max_ms`.
const MIN_COLLECT: Duration = Duration::from_millis(20);

async fn run_once(
    lake: &Lake,
    kafka: &KafkaConfig,
    config: &IngestConfig,
    shutdown: &CancellationToken,
    stopped: &mut HashSet<String>,
    leases: &Leases,
) -> Result<Exit> {
    let mut changed = leases.watch();
    changed.mark_unchanged();
    let owned: Owned = leases.owned();
    if owned.is_empty() {
        tracing::info!("standby: this ingester holds no table's lease yet; waiting for one");
        tokio::select! {
            _ = changed.changed() => return Ok(Exit::Reassign),
            _ = shutdown.cancelled() => return Ok(Exit::Shutdown),
        }
    }
    let consumer: StreamConsumer = consumer_config(kafka, &config.group_id)
        .create()
        .map_err(kafka_err("creating the consumer"))?;
    let topics: Vec<(String, &str)> = TABLES
        .iter()
        .filter(|t| owned.contains_key(t.name))
        .map(|t| (topic_of(&kafka.topic_prefix, t), t.name))
        .collect();
    let names: Vec<String> = topics.iter().map(|(t, _)| t.clone()).collect();
    let Some(counts) = partition_counts(&consumer, &names, shutdown, &mut changed).await? else {
        return Ok(if shutdown.is_cancelled() {
            Exit::Shutdown
        } else {
            Exit::Reassign
        });
    };
    if shutdown.is_cancelled() {
        return Ok(Exit::Shutdown);
    }
    // Each table is written through a handle whose commits carry its lease
    // and which keeps the tables it opens (dropped with this run, so a
    // restart after any error loads them from the store again).
    let lakes: HashMap<&str, Lake> = topics
        .iter()
        .map(|(_, table)| {
            let l = match &owned[*table] {
                Some(fence) => lake.with_fence(fence.clone()),
                None => lake.clone(),
            };
            let l = l.with_table_cache();
            let l = if config.maintenance.writes_checkpoints() {
                l.with_checkpoints_by_maintenance()
            } else {
                l
            };
            (*table, l)
        })
        .collect();
    let mut states: HashMap<String, TableState> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for (topic, table) in &topics {
        if stopped.contains(*table) {
            tracing::warn!(
                table,
                "ingest of this table stays stopped until the ingester restarts"
            );
            continue;
        }
        let n = counts[topic];
        let state = load_state(lake, &config.group_id, table, topic, n).await?;
        crate::metrics::table_stopped(table, false);
        for p in 0..n {
            let from = super::resume::resume_at(&state.bronze_next, &state.silver_next, p);
            if let Some(g) = super::gaps::gap(
                table,
                topic,
                p,
                from,
                super::gaps::log_start(&consumer, topic, p)?,
            ) {
                crate::metrics::retention_gap(table, g.lost());
                tracing::error!(
                    table,
                    topic = %topic,
                    partition = p,
                    resume_at = from,
                    log_start = g.log_start,
                    lost = g.lost(),
                    "the broker no longer holds changes this table needs (deleted by retention): \
                     silver misses them until the table is re-snapshotted (`tributary cdc resnapshot {table}`)"
                );
            }
            let offset = if from == 0 {
                Offset::Beginning
            } else {
                Offset::Offset(from)
            };
            assignment
                .add_partition_offset(topic, p, offset)
                .map_err(kafka_err(&format!("assigning {topic}/{p}")))?;
        }
        states.insert(topic.clone(), state);
    }
    consumer
        .assign(&assignment)
        .map_err(kafka_err("assigning partitions"))?;
    tracing::info!(tables = states.len(), "ingest started");

    let max_wait = Duration::from_millis(config.batch_max_ms);
    let mut maintainer = crate::maintenance::Maintainer::new(config.maintenance.clone());
    // Changes that arrived while the previous batch committed have waited
    // since that batch stopped collecting: the next one closes `max_wait`
    // after that moment, not after its own start, so a change waits at most
    // `max_wait` before its commit begins however long commits take. A
    // short floor drains what the consumer already holds.
    let mut collected = tokio::time::Instant::now();
    loop {
        let mut batch: BTreeMap<String, Vec<OwnedMessage>> = BTreeMap::new();
        let mut count = 0usize;
        let deadline = (collected + max_wait).max(tokio::time::Instant::now() + MIN_COLLECT);
        let mut reassign = false;
        while count < config.batch_max_messages {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = changed.changed() => { reassign = true; break }
                m = consumer.recv() => {
                    let m = m.map_err(kafka_err("consuming"))?;
                    batch.entry(m.topic().to_string()).or_default().push(m.detach());
                    count += 1;
                }
            }
        }
        collected = tokio::time::Instant::now();
        // A table whose lease was lost is not written again: what was
        // consumed for it is dropped (its offsets in the lake did not move).
        let still_owned = if reassign {
            leases.owned()
        } else {
            owned.clone()
        };
        // Every table's silver first, then every table's bronze: freshness
        // is measured in silver, and no silver commit waits for a bronze one.
        let mut staged = Vec::new();
        let mut halted = Vec::new();
        for (topic, messages) in batch {
            let Some(state) = states.get_mut(&topic) else {
                continue;
            };
            let table = state.table.clone();
            if !still_owned.contains_key(&table) {
                continue;
            }
            let lake = &lakes[table.as_str()];
            match stage_batch(lake, &config.group_id, state, messages).await {
                Ok(s) => staged.push((topic, table, s)),
                Err(e) if crate::is_fenced(&e) => return Ok(fenced(leases, &table, &e)),
                Err(e) => {
                    stop_or_fail(&mut states, stopped, &topic, e)?;
                    halted.push(topic);
                }
            }
        }
        let mut committed = Vec::new();
        for (topic, table, s) in staged {
            let Some(state) = states.get_mut(&topic) else {
                continue;
            };
            let lake = &lakes[table.as_str()];
            match finish_batch(lake, &config.group_id, state, s).await {
                Ok(()) => committed.push(table),
                Err(e) if crate::is_fenced(&e) => return Ok(fenced(leases, &table, &e)),
                Err(e) => {
                    stop_or_fail(&mut states, stopped, &topic, e)?;
                    halted.push(topic);
                }
            }
        }
        // Maintenance of the tables just committed, by their one writer and
        // under its lease.
        for table in committed {
            maintainer
                .after_batch(&lakes[table.as_str()], &table)
                .await?;
        }
        for topic in halted {
            let mut paused = TopicPartitionList::new();
            for p in 0..counts[&topic] {
                paused.add_partition(&topic, p);
            }
            consumer
                .pause(&paused)
                .map_err(kafka_err(&format!("pausing {topic}")))?;
        }
        if let Some(table) = record_idle_freshness(&lakes, config, &states).await? {
            leases.lost(&table);
            return Ok(Exit::Reassign);
        }
        if shutdown.is_cancelled() {
            tracing::info!("ingest stopped");
            return Ok(Exit::Shutdown);
        }
        if reassign {
            tracing::info!("owned tables changed; assigning partitions again");
            return Ok(Exit::Reassign);
        }
    }
}

/// Reports every table's silver offsets to [`crate::freshness`] (so idle
/// tables follow the watermarks) and records the freshness of idle tables in
/// the lake with an offsets-only commit that restates their offsets, at most
/// once per `freshness_record_ms` per table. Returns a table whose commit
/// was refused because this ingester lost its lease.
async fn record_idle_freshness(
    lakes: &HashMap<&str, Lake>,
    config: &IngestConfig,
    states: &HashMap<String, TableState>,
) -> Result<Option<String>> {
    let interval = Duration::from_millis(config.freshness_record_ms);
    for state in states.values() {
        crate::freshness::observe_offsets(&state.table, &state.silver_next);
        if state.silver_next.is_empty() {
            continue;
        }
        let Some(record) = crate::freshness::idle_record_due(&state.table, interval) else {
            continue;
        };
        let txns = state
            .silver_next
            .iter()
            .map(|(p, v)| Transaction::new(app_id(&config.group_id, &state.topic, *p), *v))
            .collect();
        let Some(lake) = lakes.get(state.table.as_str()) else {
            continue;
        };
        match commit_offsets_only(
            lake,
            "silver",
            &state.table,
            &config.group_id,
            txns,
            record.metadata(),
        )
        .await
        {
            Ok(true) => {
                crate::freshness::committed(&state.table, &state.silver_next, None, Some(&record));
            }
            Ok(false) => {}
            Err(e) if crate::is_fenced(&e) => {
                tracing::warn!(table = %state.table, error = %error_chain(&e), "commit refused: this ingester no longer holds the table's lease");
                return Ok(Some(state.table.clone()));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// A failed batch of one table. A failure a retry cannot cure stops that
/// table only: its state is dropped and it is added to `stopped`. A
/// transient one (or a lost lease) is returned, so the caller restarts from
/// the lake's offsets; so is a refusal of the commit coordinator, which
/// stops the ingester. Messages of a stopped table are dropped: its offsets
/// in the lake did not move past what was applied, so nothing is lost.
pub(super) fn stop_or_fail(
    states: &mut HashMap<String, TableState>,
    stopped: &mut HashSet<String>,
    topic: &str,
    e: Error,
) -> Result<()> {
    if e.is_transient() || crate::is_fenced(&e) || e.is_coordinator_refusal() {
        return Err(e);
    }
    if let Some(state) = states.remove(topic) {
        stop_table(&state, &e);
        stopped.insert(state.table);
    }
    Ok(())
}

/// A commit refused because this ingester lost the table's lease.
fn fenced(leases: &Leases, table: &str, e: &Error) -> Exit {
    tracing::warn!(table, error = %error_chain(e), "commit refused: this ingester no longer holds the table's lease");
    leases.lost(table);
    Exit::Reassign
}

/// Says loudly that ingest of one table stopped, and why.
fn stop_table(state: &TableState, e: &Error) {
    let mut offsets: Vec<(i32, i64)> = state.silver_next.iter().map(|(p, o)| (*p, *o)).collect();
    offsets.sort_unstable();
    match e {
        Error::Incompatible(change) => tracing::error!(
            table = %state.table,
            column = %change.column,
            lsn = %change.lsn,
            event_id = %change.event_id,
            silver_offsets = ?offsets,
            error = %error_chain(e),
            "ingest of this table stopped on a change the lake cannot apply; other tables go on. Nothing is lost: after the fix, restart the ingester and it resumes from these offsets"
        ),
        _ => tracing::error!(
            table = %state.table,
            silver_offsets = ?offsets,
            error = %error_chain(e),
            "ingest of this table stopped on an error a retry cannot cure; other tables go on. Nothing is lost: after the fix, restart the ingester and it resumes from these offsets"
        ),
    }
    crate::metrics::table_stopped(&state.table, true);
}
