//! Kafka change topics into bronze and silver, exactly once.
//!
//! Promise: after any crash, bronze holds every change event exactly once and
//! silver equals the source once ingest catches up.
//!
//! - Offsets live in the lake, not the broker: each bronze and silver commit
//!   carries Delta `txn` actions `(<group>/<topic>/<partition>, next offset)`
//!   in the same commit as the data, and ingest resumes from them.
//! - Replays of the CDC reader (same events at later offsets) are dropped by
//!   position: events of one shard reach a partition in (commit LSN, ordinal)
//!   order, so anything at or below the highest position already in bronze for
//!   that (partition, shard) is a replay.
//! - Silver applies exactly the events bronze accepted, through a MERGE that
//!   only takes a change newer than the row's stored position.
//! - A round commits every table's silver before any bronze, since freshness
//!   is measured in silver. Each commit carries its own offsets, so a crash
//!   in between leaves bronze a batch behind, and the replay writes bronze
//!   only.
//! - Silver follows the source's schema: each event carries its columns, and
//!   silver gains added columns and widened types before a merge; dropped
//!   columns stay (NULL on rows written after). Changes are logged in
//!   `bronze._schema_changes`. An event silver cannot take stops ingest of
//!   its table only, right before that event ([`Error::Incompatible`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{StructField, Transaction};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::{DeltaOperation, OutputMode, SaveMode};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tributary_kafka::KafkaConfig;
use tributary_model::domain::{TABLES, silver_columns as meta, topic_of};
use tributary_model::error_chain;
use tributary_model::event::{ChangeEvent, Column, Op};
use tributary_model::pgtype::format_utc_micros;

use crate::lease::{Leases, Owned};
use crate::schema::{
    SOURCE_OP, SOURCE_UNCHANGED, SilverChange, bronze_schema, dead_letter_schema, evolve,
    merge_source_schema, schema_changes_schema, silver_schema,
};
use crate::{Error, Lake, Result};

/// Ingest settings (`[ingest]` in the config file).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Most messages in one commit.
    #[serde(default = "default_batch_messages")]
    pub batch_max_messages: usize,
    /// Longest time a change waits in the ingester before its batch starts
    /// committing: counted from the end of the previous collection, so the
    /// time the previous batch took to commit counts against it.
    #[serde(default = "default_batch_ms")]
    pub batch_max_ms: u64,
    /// Names the offsets in the lake (and the broker-side group, for monitoring only).
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Time to live of a table's single-writer lease (with a coordinator): a
    /// killed owner is replaced within about this long.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// Compaction, checkpoints and vacuum of the tables ingest writes.
    #[serde(default)]
    pub maintenance: crate::maintenance::MaintenanceConfig,
    /// Longest time an idle silver table's freshness record in the lake may
    /// lag the ingester's own (see [`crate::freshness`]): at most one
    /// offsets-only commit per idle table per this interval.
    #[serde(default = "default_freshness_record_ms")]
    pub freshness_record_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            batch_max_messages: default_batch_messages(),
            batch_max_ms: default_batch_ms(),
            group_id: default_group(),
            lease_ttl_ms: default_lease_ttl_ms(),
            maintenance: Default::default(),
            freshness_record_ms: default_freshness_record_ms(),
        }
    }
}

fn default_batch_messages() -> usize {
    50_000
}
fn default_batch_ms() -> u64 {
    1000
}
fn default_group() -> String {
    "tributary-lake".into()
}
fn default_lease_ttl_ms() -> u64 {
    6000
}
fn default_freshness_record_ms() -> u64 {
    10_000
}

/// Name of the dead-letter table in the bronze layer.
pub const DEAD_LETTERS: &str = "_dead_letters";

/// Name of the schema-change log in the bronze layer.
pub const SCHEMA_CHANGES: &str = "_schema_changes";

/// `delta.targetFileSize` of a silver table, set when ingest creates it.
/// A MERGE rewrites every file holding a key it updates, and the files it
/// writes are cut at this size; small files keep a batch that updates
/// recent rows from rewriting the whole table (the merge skips files whose
/// key range the batch misses).
pub const SILVER_TARGET_FILE_SIZE: u64 = 1 << 20;

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
    check_broker(&kafka).await?;
    let tables = TABLES.iter().map(|t| t.name.to_string()).collect();
    let leases = Leases::start(
        &lake,
        tables,
        Duration::from_millis(config.lease_ttl_ms),
        shutdown.clone(),
    )
    .await?;
    let mut backoff = Duration::from_millis(200);
    let mut stopped: HashSet<String> = HashSet::new();
    let result = loop {
        match run_once(&lake, &kafka, &config, &shutdown, &mut stopped, &leases).await {
            Ok(Exit::Shutdown) => break Ok(()),
            Ok(Exit::Reassign) => backoff = Duration::from_millis(200),
            Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                tracing::warn!(error = %error_chain(&e), "ingest failed; resuming from the offsets in the lake");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => break Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
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
    if let Ok(Err(e)) = follower.await {
        tracing::warn!(error = %error_chain(&e), "watermark follower stopped");
    }
    result
}

fn consumer_config(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("socket.timeout.ms", "10000")
        .set("fetch.wait.max.ms", "100")
        .set("log_level", "3");
    c
}

/// Fails with a clear message when the broker does not answer.
pub async fn check_broker(kafka: &KafkaConfig) -> Result<()> {
    let consumer: StreamConsumer =
        consumer_config(kafka, "tributary-check")
            .create()
            .map_err(|source| Error::Kafka {
                context: "creating a consumer".into(),
                source,
            })?;
    let brokers = kafka.brokers.clone();
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .map(|_| ())
            .map_err(|source| Error::Kafka {
                context: format!(
                    "cannot reach the Kafka broker at {brokers} within 10s; is it running?"
                ),
                source,
            })
    })
    .await
    .map_err(|e| Error::Config(format!("metadata task: {e}")))?
}

/// What ingest knows about one table between batches.
pub(crate) struct TableState {
    table: String,
    topic: String,
    bronze_next: HashMap<i32, i64>,
    silver_next: HashMap<i32, i64>,
    /// Highest (lsn, ordinal) in bronze per (partition, shard).
    high_water: HashMap<(i32, i32), (i64, i64)>,
    /// Offsets below `bronze_next` that bronze accepted but silver has not applied.
    silver_catch_up: HashSet<(i32, i64)>,
    /// Dead letters below these offsets are already in the dead-letter table.
    dead_next: HashMap<i32, i64>,
    /// Silver's schema as of the last merge (`None` before silver exists).
    silver_schema: Option<SchemaRef>,
    /// No row of silver has a key above `.0` at version `.1` (tables with
    /// one integer key; `None` until a batch needs it). See
    /// [`merge_segment`].
    silver_key_max: Option<(i64, u64)>,
    /// The newest source shape seen per shard, at its position: a change of
    /// shape is logged once, at the first event of the new shape.
    shapes: HashMap<u32, ((i64, i64), Vec<Column>)>,
}

fn app_id(group: &str, topic: &str, partition: i32) -> String {
    format!("{group}/{topic}/{partition}")
}

async fn txn_versions(
    table: &DeltaTable,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<HashMap<i32, i64>> {
    let mut out = HashMap::new();
    let snapshot = table.snapshot().map_err(|source| Error::Delta {
        table: topic.into(),
        source,
    })?;
    let log_store = table.log_store();
    for p in 0..partitions {
        if let Some(v) = snapshot
            .transaction_version(log_store.as_ref(), app_id(group, topic, p))
            .await
            .map_err(|source| Error::Delta {
                table: topic.into(),
                source,
            })?
        {
            out.insert(p, v);
        }
    }
    Ok(out)
}

/// Runs a query over one Delta table registered as `t`.
pub(crate) async fn query_table(
    table: &DeltaTable,
    name: &str,
    sql: &str,
) -> Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    let df_err = |source| Error::DataFusion {
        table: name.to_string(),
        source,
    };
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|source| Error::Delta {
            table: name.to_string(),
            source,
        })?;
    let provider = table.table_provider().await.map_err(df_err)?;
    ctx.register_table("t", provider).map_err(df_err)?;
    ctx.sql(sql)
        .await
        .map_err(df_err)?
        .collect()
        .await
        .map_err(df_err)
}

pub(crate) async fn load_state(
    lake: &Lake,
    group: &str,
    table: &str,
    topic: &str,
    partitions: i32,
) -> Result<TableState> {
    let mut state = TableState {
        table: table.to_string(),
        topic: topic.to_string(),
        bronze_next: HashMap::new(),
        silver_next: HashMap::new(),
        high_water: HashMap::new(),
        silver_catch_up: HashSet::new(),
        dead_next: HashMap::new(),
        silver_schema: None,
        silver_key_max: None,
        shapes: HashMap::new(),
    };
    if let Some(log) = lake.open("bronze", SCHEMA_CHANGES).await? {
        let sql = format!(
            "SELECT shard, lsn, ordinal, columns FROM t WHERE source_table = '{}' AND shard IS NOT NULL",
            table.replace('\'', "''")
        );
        for b in query_table(&log, SCHEMA_CHANGES, &sql).await? {
            let shards = col_i32(&b, 0);
            let lsns = col_i64(&b, 1);
            let ordinals = col_i64(&b, 2);
            let columns = arrow::compute::cast(b.column(3), &DataType::Utf8)?;
            let columns = columns
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .expect("cast to Utf8");
            for i in 0..b.num_rows() {
                let pos = (lsns[i], ordinals[i]);
                let shard = shards[i] as u32;
                if state.shapes.get(&shard).is_some_and(|(p, _)| *p >= pos) {
                    continue;
                }
                let cols: Vec<Column> =
                    serde_json::from_str(columns.value(i)).map_err(|e| Error::Schema {
                        table: format!("bronze.{SCHEMA_CHANGES}"),
                        message: format!("columns of {table} at row {i}: {e}"),
                    })?;
                state.shapes.insert(shard, (pos, cols));
            }
        }
    }
    if let Some(dead) = lake.open("bronze", DEAD_LETTERS).await? {
        state.dead_next = txn_versions(&dead, group, topic, partitions).await?;
    }
    if let Some(bronze) = lake.open("bronze", table).await? {
        state.bronze_next = txn_versions(&bronze, group, topic, partitions).await?;
        // The highest (lsn, ordinal) per (partition, shard): the row(s) at
        // the highest LSN, then their highest ordinal.
        let batches = query_table(
            &bronze,
            table,
            "SELECT t.kafka_partition, t.shard, t.lsn, max(t.ordinal) AS ordinal FROM t
             JOIN (SELECT kafka_partition, shard, max(lsn) AS lsn FROM t GROUP BY kafka_partition, shard) m
               ON t.kafka_partition = m.kafka_partition AND t.shard = m.shard AND t.lsn = m.lsn
             GROUP BY t.kafka_partition, t.shard, t.lsn",
        )
        .await?;
        for b in &batches {
            let p = col_i32(b, 0);
            let s = col_i32(b, 1);
            let l = col_i64(b, 2);
            let o = col_i64(b, 3);
            for i in 0..b.num_rows() {
                state.high_water.insert((p[i], s[i]), (l[i], o[i]));
            }
        }
    }
    if let Some(silver) = lake.open("silver", table).await? {
        state.silver_next = txn_versions(&silver, group, topic, partitions).await?;
        let snapshot = silver.snapshot().map_err(|source| Error::Delta {
            table: format!("silver.{table}"),
            source,
        })?;
        state.silver_schema = Some(snapshot.snapshot().arrow_schema());
    }
    // Silver may lag bronze by one batch after a crash between the commits
    // of a build that wrote bronze first: find the offsets bronze accepted
    // in that gap.
    let mut gaps = Vec::new();
    for (p, b) in &state.bronze_next {
        let s = state.silver_next.get(p).copied().unwrap_or(0);
        if s < *b {
            gaps.push(format!(
                "(kafka_partition = {p} AND kafka_offset >= {s} AND kafka_offset < {b})"
            ));
        }
    }
    if !gaps.is_empty() {
        let bronze = lake
            .open("bronze", table)
            .await?
            .expect("bronze has offsets, so it exists");
        let sql = format!(
            "SELECT kafka_partition, kafka_offset FROM t WHERE {}",
            gaps.join(" OR ")
        );
        for b in query_table(&bronze, table, &sql).await? {
            let p = col_i32(&b, 0);
            let o = col_i64(&b, 1);
            for i in 0..b.num_rows() {
                state.silver_catch_up.insert((p[i], o[i]));
            }
        }
        tracing::info!(
            table,
            events = state.silver_catch_up.len(),
            "silver catches up with bronze"
        );
    }
    Ok(state)
}

fn col_i32(b: &RecordBatch, i: usize) -> Vec<i32> {
    let c = arrow::compute::cast(b.column(i), &DataType::Int32).expect("int column");
    c.as_any()
        .downcast_ref::<arrow::array::Int32Array>()
        .expect("int32")
        .values()
        .to_vec()
}

fn col_i64(b: &RecordBatch, i: usize) -> Vec<i64> {
    let c = arrow::compute::cast(b.column(i), &DataType::Int64).expect("int column");
    c.as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("int64")
        .values()
        .to_vec()
}

async fn partition_counts(
    consumer: &StreamConsumer,
    topics: &[String],
    shutdown: &CancellationToken,
) -> Result<HashMap<String, i32>> {
    let mut last_log = Instant::now() - Duration::from_secs(60);
    loop {
        let md = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(|source| Error::Kafka {
                context: "reading topic metadata".into(),
                source,
            })?;
        let mut counts = HashMap::new();
        for t in md.topics() {
            if t.error().is_none() && !t.partitions().is_empty() {
                counts.insert(t.name().to_string(), t.partitions().len() as i32);
            }
        }
        let missing: Vec<&String> = topics.iter().filter(|t| !counts.contains_key(*t)).collect();
        if missing.is_empty() {
            return Ok(counts);
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            tracing::info!(?missing, "waiting for the CDC reader to create topics");
            last_log = Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return Ok(counts),
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
    let consumer: StreamConsumer =
        consumer_config(kafka, &config.group_id)
            .create()
            .map_err(|source| Error::Kafka {
                context: "creating the consumer".into(),
                source,
            })?;
    let topics: Vec<(String, &str)> = TABLES
        .iter()
        .filter(|t| owned.contains_key(t.name))
        .map(|t| (topic_of(&kafka.topic_prefix, t), t.name))
        .collect();
    let names: Vec<String> = topics.iter().map(|(t, _)| t.clone()).collect();
    let counts = partition_counts(&consumer, &names, shutdown).await?;
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
            let b = state.bronze_next.get(&p).copied().unwrap_or(0);
            let s = state.silver_next.get(&p).copied().unwrap_or(0);
            let from = b.min(s);
            let offset = if from == 0 {
                Offset::Beginning
            } else {
                Offset::Offset(from)
            };
            assignment
                .add_partition_offset(topic, p, offset)
                .map_err(|source| Error::Kafka {
                    context: format!("assigning {topic}/{p}"),
                    source,
                })?;
        }
        states.insert(topic.clone(), state);
    }
    consumer
        .assign(&assignment)
        .map_err(|source| Error::Kafka {
            context: "assigning partitions".into(),
            source,
        })?;
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
                    let m = m.map_err(|source| Error::Kafka { context: "consuming".into(), source })?;
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
            maintainer.after_batch(&lakes[table.as_str()], &table).await;
        }
        for topic in halted {
            let mut paused = TopicPartitionList::new();
            for p in 0..counts[&topic] {
                paused.add_partition(&topic, p);
            }
            consumer.pause(&paused).map_err(|source| Error::Kafka {
                context: format!("pausing {topic}"),
                source,
            })?;
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

/// Applies one table's batch. A failure a retry cannot cure stops that table
/// only (returns true); a transient one is returned (see [`stop_or_fail`]).
#[cfg(test)]
async fn apply_or_stop(
    lake: &Lake,
    group: &str,
    states: &mut HashMap<String, TableState>,
    stopped: &mut HashSet<String>,
    topic: &str,
    messages: Vec<OwnedMessage>,
) -> Result<bool> {
    let Some(state) = states.get_mut(topic) else {
        return Ok(false);
    };
    let Err(e) = apply_batch(lake, group, state, messages).await else {
        return Ok(false);
    };
    stop_or_fail(states, stopped, topic, e)?;
    Ok(true)
}

/// A failed batch of one table. A failure a retry cannot cure stops that
/// table only: its state is dropped and it is added to `stopped`. A
/// transient one (or a lost lease) is returned, so the caller restarts from
/// the lake's offsets. Messages of a stopped table are dropped: its offsets
/// in the lake did not move past what was applied, so nothing is lost.
fn stop_or_fail(
    states: &mut HashMap<String, TableState>,
    stopped: &mut HashSet<String>,
    topic: &str,
    e: Error,
) -> Result<()> {
    if e.is_transient() || crate::is_fenced(&e) {
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

pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

pub(crate) fn rows_to_batch(schema: SchemaRef, rows: &[Value]) -> Result<RecordBatch> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .build_decoder()?;
    decoder.serialize(rows)?;
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

/// Applies one table's batch: silver, then bronze ([`stage_batch`], then
/// [`finish_batch`]).
#[cfg(test)]
pub(crate) async fn apply_batch(
    lake: &Lake,
    group: &str,
    state: &mut TableState,
    messages: Vec<OwnedMessage>,
) -> Result<()> {
    let staged = stage_batch(lake, group, state, messages).await?;
    finish_batch(lake, group, state, staged).await
}

/// A batch whose silver part is committed and whose bronze part is not yet.
pub(crate) struct Staged {
    started: Instant,
    messages: usize,
    /// The next offset per partition once the batch is applied.
    next: HashMap<i32, i64>,
    bronze_rows: Vec<Value>,
    silver_count: usize,
    dead_count: usize,
    silver_ms: u64,
    /// The change the table stopped at, reported once bronze is committed.
    failure: Option<Error>,
}

/// The first half of a batch: decodes it, writes its dead letters and shape
/// changes, and merges it into silver with its offsets. Silver goes first
/// because freshness is measured there: in a round of several tables, no
/// silver commit waits for a bronze one. Both halves carry their own
/// offsets, so a crash between them leaves bronze behind silver, and the
/// replay after it writes bronze only (see `new_for_silver`).
pub(crate) async fn stage_batch(
    lake: &Lake,
    group: &str,
    state: &mut TableState,
    messages: Vec<OwnedMessage>,
) -> Result<Staged> {
    let started = Instant::now();
    let mut next: HashMap<i32, i64> = HashMap::new();
    let mut bronze_rows = Vec::new();
    let mut silver_events: Vec<ChangeEvent> = Vec::new();
    let mut dead = Vec::new();
    let mut shape_rows = Vec::new();
    let ingested = format_utc_micros(now_us());
    // Silver's schema as the batch evolves it, to find the first event
    // silver cannot take before anything is committed.
    let mut running = (state.silver_schema.clone(), Vec::new());
    let mut failure = None;
    for m in &messages {
        let (p, o) = (m.partition(), m.offset());
        let consumed = |next: &mut HashMap<i32, i64>| {
            next.entry(p)
                .and_modify(|v| *v = (*v).max(o + 1))
                .or_insert(o + 1);
        };
        let new_for_bronze = o >= state.bronze_next.get(&p).copied().unwrap_or(0);
        let new_for_silver = o >= state.silver_next.get(&p).copied().unwrap_or(0);
        let new_for_dead_letters =
            new_for_bronze && o >= state.dead_next.get(&p).copied().unwrap_or(0);
        let ev = match ChangeEvent::from_json(m.payload().unwrap_or_default()) {
            Ok(ev) if ev.source.table == state.table => ev,
            Ok(ev) => {
                if new_for_dead_letters {
                    dead.push(dead_letter(
                        m,
                        &format!(
                            "event for table {} on topic {}",
                            ev.source.table, state.topic
                        ),
                    ));
                }
                consumed(&mut next);
                continue;
            }
            Err(e) => {
                if new_for_dead_letters {
                    dead.push(dead_letter(m, &error_chain(&e)));
                }
                consumed(&mut next);
                continue;
            }
        };
        let key = (p, ev.source.shard as i32);
        let pos = (ev.source.lsn.as_i64(), ev.source.ordinal as i64);
        let new_in_bronze = new_for_bronze && state.high_water.get(&key).is_none_or(|h| pos > *h);
        let accepted =
            new_in_bronze || (!new_for_bronze && state.silver_catch_up.contains(&(p, o)));
        if new_in_bronze {
            // Logged even when silver cannot take the event: it says what changed.
            track_shape(state, &ev, &ingested, &mut shape_rows);
        }
        if accepted && new_for_silver {
            // Ingest of the table stops right before an event silver cannot
            // take: everything before it is committed, it and the rest are not.
            if let Err(e) = check_event(&state.table, &mut running, &ev) {
                failure = Some(e);
                break;
            }
        }
        consumed(&mut next);
        if new_in_bronze {
            state.high_water.insert(key, pos);
            bronze_rows.push(bronze_row(&ev, m, &ingested));
        }
        if accepted && new_for_silver {
            silver_events.push(ev);
        }
    }

    let dead_count = dead.len();
    if !dead.is_empty() {
        // The dead-letter table records its own offsets, so a crash before
        // the bronze commit cannot write a dead letter twice.
        let mut dead_offsets: HashMap<i32, i64> = HashMap::new();
        for d in &dead {
            let (p, o) = (
                d["kafka_partition"].as_i64().unwrap_or(0) as i32,
                d["kafka_offset"].as_i64().unwrap_or(0),
            );
            dead_offsets
                .entry(p)
                .and_modify(|v| *v = (*v).max(o + 1))
                .or_insert(o + 1);
        }
        let txns: Vec<Transaction> = dead_offsets
            .iter()
            .map(|(p, v)| Transaction::new(app_id(group, &state.topic, *p), *v))
            .collect();
        let batch = rows_to_batch(dead_letter_schema(), &dead)?;
        let props = lake.commit_properties().with_application_transactions(txns);
        write_append(lake, "bronze", DEAD_LETTERS, batch, None, props).await?;
        state.dead_next.extend(dead_offsets);
        tracing::warn!(table = %state.table, messages = dead_count, "messages sent to the dead-letter table");
    }

    if !shape_rows.is_empty() {
        // Deduplicated by position: on a replay the log already holds the
        // shape, so nothing is written twice.
        let batch = rows_to_batch(schema_changes_schema(), &shape_rows)?;
        write_append(
            lake,
            "bronze",
            SCHEMA_CHANGES,
            batch,
            None,
            lake.commit_properties(),
        )
        .await?;
    }
    if next.is_empty() {
        // The first message already stopped the table: nothing to commit.
        return Err(failure.expect("a batch has messages"));
    }

    let txns = |group: &str| -> Vec<Transaction> {
        next.iter()
            .map(|(p, v)| Transaction::new(app_id(group, &state.topic, *p), *v))
            .collect()
    };
    let silver_count = silver_events.len();
    // Freshness: the commit records how far silver is complete once it
    // lands; streamed changes are timed from their source commit.
    let newest_commit = silver_events.iter().map(|e| e.source.ts_us).max();
    let streamed_commits: Vec<i64> = silver_events
        .iter()
        .filter(|e| e.op != Op::Read)
        .map(|e| e.source.ts_us)
        .collect();
    let mut after = state.silver_next.clone();
    for (p, v) in &next {
        let o = after.entry(*p).or_insert(*v);
        *o = (*o).max(*v);
    }
    let freshness = crate::freshness::preview(&state.table, &after, newest_commit);
    let metadata = freshness.as_ref().map(|r| r.metadata()).unwrap_or_default();
    let committed = if !silver_events.is_empty() {
        if let Some(schema) = merge_silver(
            lake,
            &state.table,
            silver_events,
            txns(group),
            metadata,
            &mut state.silver_key_max,
        )
        .await?
        {
            state.silver_schema = Some(schema);
        }
        true
    } else {
        commit_offsets_only(lake, "silver", &state.table, group, txns(group), metadata).await?
    };
    if committed {
        for (p, v) in &next {
            state.silver_next.insert(*p, *v);
        }
        crate::freshness::committed(
            &state.table,
            &state.silver_next,
            newest_commit,
            freshness.as_ref(),
        );
        let now = now_us();
        crate::metrics::freshness(streamed_commits.iter().map(|ts| (now - ts) as f64 / 1e6));
    }
    Ok(Staged {
        started,
        messages: messages.len(),
        next,
        bronze_rows,
        silver_count,
        dead_count,
        silver_ms: started.elapsed().as_millis() as u64,
        failure,
    })
}

/// The second half of a batch: appends its rows to bronze with its offsets.
/// Returns the change the table stopped at, if any.
pub(crate) async fn finish_batch(
    lake: &Lake,
    group: &str,
    state: &mut TableState,
    staged: Staged,
) -> Result<()> {
    let Staged {
        started,
        messages,
        next,
        bronze_rows,
        silver_count,
        dead_count,
        silver_ms,
        failure,
    } = staged;
    let txns: Vec<Transaction> = next
        .iter()
        .map(|(p, v)| Transaction::new(app_id(group, &state.topic, *p), *v))
        .collect();
    // Every batch records its offsets, even when all it held were replays,
    // so the lake's offsets always reach the end of what was consumed.
    let bronze_count = bronze_rows.len();
    let committed = if !bronze_rows.is_empty() {
        let batch = rows_to_batch(bronze_schema(), &bronze_rows)?;
        let props = lake.commit_properties().with_application_transactions(txns);
        write_append(lake, "bronze", &state.table, batch, Some("date"), props).await?;
        true
    } else {
        commit_offsets_only(lake, "bronze", &state.table, group, txns, vec![]).await?
    };
    if committed {
        for (p, v) in &next {
            state.bronze_next.insert(*p, *v);
        }
    }
    crate::metrics::batch(
        &state.table,
        messages,
        bronze_count,
        silver_count,
        dead_count,
        started.elapsed().as_secs_f64(),
    );
    state
        .silver_catch_up
        .retain(|(p, o)| next.get(p).is_none_or(|n| o >= n));
    tracing::debug!(table = %state.table, messages, bronze = bronze_count, silver = silver_count, silver_ms, ms = started.elapsed().as_millis() as u64, "batch committed");
    failure.map_or(Ok(()), Err)
}

/// Checks that silver can take the event, without touching the lake.
/// `running` is silver's schema as the batch evolves it, and the last shape
/// it was evolved for (most events share their predecessor's shape).
pub(crate) fn check_event(
    table: &str,
    running: &mut (Option<SchemaRef>, Vec<Column>),
    ev: &ChangeEvent,
) -> Result<()> {
    if ev.columns.is_empty() {
        return Ok(());
    }
    let schema = match &running.0 {
        Some(s) if running.1 == ev.columns => s.clone(),
        current => {
            let current = current
                .clone()
                .unwrap_or_else(|| silver_schema(&ev.columns));
            let (schema, _) = plan_silver(table, &current, std::slice::from_ref(ev))?;
            *running = (Some(schema.clone()), ev.columns.clone());
            schema
        }
    };
    check_values(table, &schema, std::slice::from_ref(ev))
}

/// Notes the source shape of an event newly accepted into bronze, and the
/// rows for the schema-change log when it differs from the shard's last one.
fn track_shape(state: &mut TableState, ev: &ChangeEvent, recorded: &str, rows: &mut Vec<Value>) {
    if ev.op == Op::Truncate || ev.columns.is_empty() {
        return;
    }
    let pos = (ev.source.lsn.as_i64(), ev.source.ordinal as i64);
    let shard = ev.source.shard;
    let mut row = |change: &str, column: Option<&str>, old: Option<String>, new: Option<String>| {
        if change != "first_seen" {
            tracing::info!(table = %state.table, shard, column, change, old_type = old, new_type = new, lsn = %ev.source.lsn, event_id = %ev.event_id, "source schema changed");
            crate::metrics::schema_change(&state.table, change);
        }
        rows.push(json!({
            "source_table": state.table,
            "shard": shard,
            "lsn": pos.0,
            "ordinal": pos.1,
            "event_id": ev.event_id,
            "change": change,
            "column_name": column,
            "old_type": old,
            "new_type": new,
            "columns": serde_json::to_string(&ev.columns).expect("columns serialise"),
            "recorded_at": recorded,
        }));
    };
    match state.shapes.get(&shard) {
        // An older event delivered late by another partition: not a change.
        Some((p, _)) if *p >= pos => return,
        Some((_, prev)) if *prev == ev.columns => {}
        Some((_, prev)) => {
            for c in &ev.columns {
                match prev.iter().find(|p| p.name == c.name) {
                    None => row(
                        "add_column",
                        Some(&c.name),
                        None,
                        Some(c.pg_type.to_string()),
                    ),
                    Some(p) if p.pg_type != c.pg_type => row(
                        "change_type",
                        Some(&c.name),
                        Some(p.pg_type.to_string()),
                        Some(c.pg_type.to_string()),
                    ),
                    Some(_) => {}
                }
            }
            for p in prev
                .iter()
                .filter(|p| !ev.columns.iter().any(|c| c.name == p.name))
            {
                row(
                    "drop_column",
                    Some(&p.name),
                    Some(p.pg_type.to_string()),
                    None,
                );
            }
        }
        None => row("first_seen", None, None, None),
    }
    state.shapes.insert(shard, (pos, ev.columns.clone()));
}

/// Commits only `txn` actions (a streaming update that wrote no rows), with
/// `metadata` in its `commitInfo`. Returns false when the table does not
/// exist yet.
async fn commit_offsets_only(
    lake: &Lake,
    layer: &str,
    table: &str,
    group: &str,
    txns: Vec<Transaction>,
    metadata: Vec<(String, Value)>,
) -> Result<bool> {
    let name = format!("{layer}.{table}");
    let Some(t) = lake.open(layer, table).await? else {
        return Ok(false);
    };
    let snapshot = t.snapshot().map_err(|source| Error::Delta {
        table: name.clone(),
        source,
    })?;
    let operation = DeltaOperation::StreamingUpdate {
        output_mode: OutputMode::Append,
        query_id: group.to_string(),
        epoch_id: snapshot.version() as i64,
    };
    CommitBuilder::from(
        lake.commit_properties()
            .with_application_transactions(txns)
            .with_metadata(metadata),
    )
    .build(Some(snapshot), t.log_store(), operation)
    .await
    .map_err(|source| Error::Delta {
        table: name,
        source,
    })?;
    // The kept table does not hold this commit: read it again next time.
    lake.forget(layer, table);
    Ok(true)
}

/// The next offsets bronze and silver recorded for each partition of a
/// table's topic: ingest has applied everything below them.
pub async fn committed_offsets(
    lake: &Lake,
    group: &str,
    table: &str,
    topic: &str,
    partitions: i32,
) -> Result<(HashMap<i32, i64>, HashMap<i32, i64>)> {
    let bronze = match lake.open("bronze", table).await? {
        Some(t) => txn_versions(&t, group, topic, partitions).await?,
        None => HashMap::new(),
    };
    let silver = match lake.open("silver", table).await? {
        Some(t) => txn_versions(&t, group, topic, partitions).await?,
        None => HashMap::new(),
    };
    Ok((bronze, silver))
}

pub(crate) fn dead_letter(m: &OwnedMessage, error: &str) -> Value {
    json!({
        "kafka_topic": m.topic(),
        "kafka_partition": m.partition(),
        "kafka_offset": m.offset(),
        // Binary columns travel through the JSON decoder as hex.
        "key": m.key().map(hex),
        "payload": m.payload().map(hex),
        "error": error,
        "failed_at": format_utc_micros(now_us()),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn bronze_row(ev: &ChangeEvent, m: &OwnedMessage, ingested: &str) -> Value {
    let commit = format_utc_micros(ev.source.ts_us);
    let date = commit[..10].to_string();
    json!({
        "event_id": ev.event_id,
        "op": ev.op.as_str(),
        "shard": ev.source.shard,
        "lsn": ev.source.lsn.as_i64(),
        "ordinal": ev.source.ordinal,
        "commit_ts": commit,
        "tx_id": ev.source.tx_id,
        "key": m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
        "before": ev.before.as_ref().map(|b| Value::Object(b.clone()).to_string()),
        "after": ev.after.as_ref().map(|a| Value::Object(a.clone()).to_string()),
        "unchanged_toast": if ev.unchanged_toast.is_empty() { None } else { Some(ev.unchanged_toast.join(",")) },
        "kafka_topic": m.topic(),
        "kafka_partition": m.partition(),
        "kafka_offset": m.offset(),
        "ingested_at": ingested,
        "date": date,
    })
}

pub(crate) async fn write_append(
    lake: &Lake,
    layer: &str,
    table: &str,
    batch: RecordBatch,
    partition: Option<&str>,
    props: CommitProperties,
) -> Result<()> {
    let t = match lake.open(layer, table).await? {
        Some(t) => t,
        None => lake.table_handle(layer, table).await?,
    };
    append_to(lake, layer, table, t, batch, partition, props).await?;
    Ok(())
}

/// Appends `batch` to the open table `t` and keeps the result; returns it.
async fn append_to(
    lake: &Lake,
    layer: &str,
    table: &str,
    t: DeltaTable,
    batch: RecordBatch,
    partition: Option<&str>,
    props: CommitProperties,
) -> Result<DeltaTable> {
    let name = format!("{layer}.{table}");
    let mut w = t
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .with_commit_properties(props);
    if let Some(p) = partition {
        w = w.with_partition_columns([p.to_string()]);
    }
    if layer == "silver" {
        // Only read when the write creates the table.
        w = w.with_configuration([(
            "delta.targetFileSize",
            Some(SILVER_TARGET_FILE_SIZE.to_string()),
        )]);
    }
    let t = w.await.map_err(|source| Error::Delta {
        table: name,
        source,
    })?;
    lake.keep(layer, table, &t);
    Ok(t)
}

/// Applies change events to the silver table: creates it on first use,
/// evolves its schema, splits the batch at truncates, and keeps only the
/// newest change per key. Returns silver's schema when it merged rows.
pub(crate) async fn merge_silver(
    lake: &Lake,
    table: &str,
    events: Vec<ChangeEvent>,
    txns: Vec<Transaction>,
    metadata: Vec<(String, Value)>,
    key_max: &mut Option<(i64, u64)>,
) -> Result<Option<SchemaRef>> {
    let mut schema = None;
    if let Some(t) = events.iter().find(|e| e.op == Op::Truncate)
        && lake.open("silver", table).await?.is_none()
    {
        // A table whose first change is a truncate (a replacing snapshot of
        // a table never written before): create it empty from the columns
        // the truncate carries, so the batch's offsets have a home.
        let empty = RecordBatch::new_empty(silver_schema(&t.columns));
        write_append(lake, "silver", table, empty, None, lake.commit_properties()).await?;
    }
    let mut segment: Vec<ChangeEvent> = Vec::new();
    let mut segments: Vec<(Vec<ChangeEvent>, Option<ChangeEvent>)> = Vec::new();
    for ev in events {
        if ev.op == Op::Truncate {
            segments.push((std::mem::take(&mut segment), Some(ev)));
        } else {
            segment.push(ev);
        }
    }
    segments.push((segment, None));
    let last = segments.len() - 1;
    for (i, (events, truncate)) in segments.into_iter().enumerate() {
        // Offsets (and freshness) are recorded with the last commit of the
        // batch only.
        let (txns, metadata) = if i == last {
            (txns.clone(), metadata.clone())
        } else {
            (vec![], vec![])
        };
        if (!events.is_empty() || i == last)
            && let Some(s) = merge_segment(lake, table, events, txns, metadata, key_max).await?
        {
            schema = Some(s);
        }
        if let Some(truncate) = truncate
            && let Some(t) = lake.open("silver", table).await?
        {
            t.delete()
                // Only rows written before the truncate: a later change of
                // the shard that another partition delivered first stays.
                .with_predicate(format!(
                    "{shard_col} = {shard} AND ({lsn} < {l} OR ({lsn} = {l} AND {ord} < {o}))",
                    shard_col = meta::SHARD,
                    shard = truncate.source.shard,
                    lsn = meta::LSN,
                    ord = meta::ORDINAL,
                    l = truncate.source.lsn.as_i64(),
                    o = truncate.source.ordinal,
                ))
                .await
                .map_err(|source| Error::Delta {
                    table: format!("silver.{table}"),
                    source,
                })?;
        }
    }
    Ok(schema)
}

async fn merge_segment(
    lake: &Lake,
    table: &str,
    events: Vec<ChangeEvent>,
    txns: Vec<Transaction>,
    metadata: Vec<(String, Value)>,
    key_max: &mut Option<(i64, u64)>,
) -> Result<Option<SchemaRef>> {
    let name = format!("silver.{table}");
    if events.is_empty() {
        // Nothing to merge (a batch ending in a truncate): still record the offsets.
        if !txns.is_empty() {
            commit_offsets_only(lake, "silver", table, "merge", txns, metadata).await?;
        }
        return Ok(None);
    }
    let opened = Instant::now();
    let (target, schema) = prepare_silver(lake, table, &events).await?;
    tracing::debug!(
        table,
        ms = opened.elapsed().as_millis() as u64,
        "silver opened"
    );
    check_values(table, &schema, &events)?;
    let events = collapse(events);
    // The key columns as the newest shape names them.
    let keys: Vec<String> = events
        .iter()
        .max_by_key(|e| e.position())
        .map(|e| {
            e.columns
                .iter()
                .filter(|c| c.key)
                .map(|c| c.name.clone())
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<Value> = events.iter().map(merge_row).collect();
    let batch = rows_to_batch(merge_source_schema(&schema), &rows)?;
    // A batch of inserts whose keys are all above every key silver holds
    // (new rows of a table keyed by a growing id: order lines, payments)
    // cannot match a row, so it is appended instead of merged: the same
    // rows, without the join against silver.
    let key = match keys.as_slice() {
        [key] => Some(key),
        _ => None,
    };
    let batch_keys: Option<Vec<i64>> = key.and_then(|key| {
        events
            .iter()
            .map(|e| e.row().and_then(|r| r.get(key)).and_then(Value::as_i64))
            .collect()
    });
    let newest_key = batch_keys.as_ref().and_then(|k| k.iter().max().copied());
    if let (Some(batch_keys), Some(key)) = (&batch_keys, key)
        && events.iter().all(|e| e.op == Op::Create)
    {
        // Known from this writer's own commits as long as nobody else
        // committed since; read from silver otherwise.
        let bound = match *key_max {
            Some((m, v)) if Some(v) == target.version() => m,
            _ => silver_key_max(&target, &name, key).await?,
        };
        if batch_keys.iter().all(|k| *k > bound) {
            let columns = batch.columns()[..schema.fields().len()].to_vec();
            let rows = RecordBatch::try_new(schema.clone(), columns)?;
            let props = lake
                .commit_properties()
                .with_application_transactions(txns)
                .with_metadata(metadata);
            let t = append_to(lake, "silver", table, target, rows, None, props).await?;
            *key_max = newest_key.zip(t.version()).map(|(k, v)| (k.max(bound), v));
            return Ok(Some(schema));
        }
    }

    let ctx = SessionContext::new();
    let source = ctx.read_batch(batch).map_err(|source| Error::DataFusion {
        table: name.clone(),
        source,
    })?;
    let mut on = vec![format!("target.{0} = source.{0}", meta::SHARD)];
    on.extend(
        keys.iter()
            .map(|c| format!("target.\"{c}\" = source.\"{c}\"")),
    );
    let newer = format!(
        "(source.{lsn} > target.{lsn} OR (source.{lsn} = target.{lsn} AND source.{ord} > target.{ord}))",
        lsn = meta::LSN,
        ord = meta::ORDINAL
    );
    // Every silver column is written, so a column the event's shape lacks
    // (dropped or renamed at the source) becomes NULL on the rows it touches.
    let all: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let source_value = |c: &str| {
        if is_meta(c) || keys.iter().any(|k| k == c) {
            format!("source.\"{c}\"")
        } else {
            // An unchanged TOAST value keeps what silver already has.
            format!(
                "CASE WHEN strpos(coalesce(source.{SOURCE_UNCHANGED}, ''), ',{c},') > 0 THEN target.\"{c}\" ELSE source.\"{c}\" END"
            )
        }
    };
    let all_u = all.clone();
    let all_i = all;
    let version_before = target.version();
    let props = lake
        .commit_properties()
        .with_application_transactions(txns.clone())
        .with_metadata(metadata.clone());
    let (merged, _metrics) = target
        .merge(source, on.join(" AND "))
        .with_source_alias("source")
        .with_target_alias("target")
        .with_commit_properties(props)
        .when_matched_delete(|d| d.predicate(format!("source.{SOURCE_OP} = 'd' AND {newer}")))
        .and_then(|b| {
            b.when_matched_update(|u| {
                let mut u = u.predicate(format!("source.{SOURCE_OP} <> 'd' AND {newer}"));
                for c in &all_u {
                    u = u.update(format!("\"{c}\""), source_value(c));
                }
                u
            })
        })
        .and_then(|b| {
            b.when_not_matched_insert(|ins| {
                let mut ins = ins.predicate(format!("source.{SOURCE_OP} <> 'd'"));
                for c in &all_i {
                    ins = ins.set(format!("\"{c}\""), format!("source.\"{c}\""));
                }
                ins
            })
        })
        .map_err(|source| Error::Delta {
            table: name.clone(),
            source,
        })?
        .await
        .map_err(|source| Error::Delta {
            table: name,
            source,
        })?;
    lake.keep("silver", table, &merged);
    // The bound stays known when it was known for the version merged into.
    *key_max = match (*key_max, newest_key, merged.version()) {
        (Some((m, v)), Some(k), Some(now)) if Some(v) == version_before => Some((m.max(k), now)),
        _ => None,
    };
    // A merge that changes nothing writes no commit, and so no offsets.
    if merged.version() == version_before && !txns.is_empty() {
        commit_offsets_only(lake, "silver", table, "merge", txns, metadata).await?;
    }
    Ok(Some(schema))
}

/// The highest value of `key` in silver; `i64::MIN` when it has no rows.
async fn silver_key_max(target: &DeltaTable, name: &str, key: &str) -> Result<i64> {
    let batches = query_table(
        target,
        name,
        &format!("SELECT CAST(max(\"{key}\") AS BIGINT) FROM t"),
    )
    .await?;
    Ok(batches
        .first()
        .filter(|b| b.num_rows() > 0 && b.column(0).is_valid(0))
        .map_or(i64::MIN, |b| col_i64(b, 0)[0]))
}

fn is_meta(c: &str) -> bool {
    [
        meta::SHARD,
        meta::LSN,
        meta::ORDINAL,
        meta::EVENT_ID,
        meta::COMMIT_TS,
    ]
    .contains(&c)
}

/// Keeps the newest change per key. Unchanged TOAST columns of a change are
/// filled from the previous change of the same key in the batch when that
/// one carried the value: silver's stored value is older than it.
///
/// Relies on all changes of a key reaching one partition in position order
/// (the key decides the partition; replays are dropped by position), so an
/// earlier change of the batch is never older than silver's row.
fn collapse(mut events: Vec<ChangeEvent>) -> Vec<ChangeEvent> {
    let keys: Vec<String> = events
        .iter()
        .max_by_key(|e| e.position())
        .map(|e| {
            e.columns
                .iter()
                .filter(|c| c.key)
                .map(|c| c.name.clone())
                .collect()
        })
        .unwrap_or_default();
    events.sort_by_key(|e| e.position());
    let mut newest: HashMap<String, ChangeEvent> = HashMap::new();
    for mut ev in events {
        fill_from_before(&mut ev);
        let Some(row) = ev.row() else { continue };
        let mut k = ev.source.shard.to_string();
        for c in &keys {
            k.push('\u{1f}');
            k.push_str(&row.get(c).map(Value::to_string).unwrap_or_default());
        }
        if let Some(prev) = newest.get(&k) {
            if prev.position() >= ev.position() {
                continue;
            }
            fill_unchanged(&mut ev, prev);
        }
        newest.insert(k, ev);
    }
    let mut out: Vec<ChangeEvent> = newest.into_values().collect();
    out.sort_by_key(|e| e.position());
    out
}

/// An unchanged column equals its old value: with REPLICA IDENTITY FULL the
/// old row image carries it. A NULL there is never taken for a value.
fn fill_from_before(ev: &mut ChangeEvent) {
    if ev.op != Op::Update || ev.unchanged_toast.is_empty() {
        return;
    }
    let (Some(after), Some(before)) = (ev.after.as_mut(), ev.before.as_ref()) else {
        return;
    };
    ev.unchanged_toast
        .retain(|c| match before.get(c).filter(|v| !v.is_null()) {
            Some(v) => {
                after.insert(c.clone(), v.clone());
                false
            }
            None => true,
        });
}

/// Moves the values of `ev`'s unchanged TOAST columns over from `prev`, the
/// change of the same row just before it, where `prev` carried them.
fn fill_unchanged(ev: &mut ChangeEvent, prev: &ChangeEvent) {
    if ev.op == Op::Delete || prev.op == Op::Delete || ev.unchanged_toast.is_empty() {
        return;
    }
    let (Some(after), Some(prev_after)) = (ev.after.as_mut(), prev.after.as_ref()) else {
        return;
    };
    ev.unchanged_toast.retain(|c| {
        if prev.unchanged_toast.contains(c) {
            return true;
        }
        match prev_after.get(c) {
            Some(v) => {
                after.insert(c.clone(), v.clone());
                false
            }
            None => true,
        }
    });
}

/// Opens silver for a segment of events, creating it on first use and
/// evolving its schema (added columns, widened types) so every event fits.
/// Returns the table and its schema.
async fn prepare_silver(
    lake: &Lake,
    table: &str,
    events: &[ChangeEvent],
) -> Result<(DeltaTable, SchemaRef)> {
    let name = format!("silver.{table}");
    let delta_err = |source| Error::Delta {
        table: name.clone(),
        source,
    };
    let target = match lake.open("silver", table).await? {
        Some(t) => t,
        None => {
            let first = events
                .iter()
                .find(|e| !e.columns.is_empty())
                .map(|e| e.columns.as_slice())
                .unwrap_or_default();
            let empty = RecordBatch::new_empty(silver_schema(first));
            write_append(
                lake,
                "silver",
                table,
                empty,
                None,
                CommitProperties::default(),
            )
            .await?;
            lake.open("silver", table)
                .await?
                .expect("silver table was just created")
        }
    };
    let current = target
        .snapshot()
        .map_err(delta_err)?
        .snapshot()
        .arrow_schema();
    let (schema, changes) = plan_silver(table, &current, events)?;
    if changes.is_empty() {
        return Ok((target, schema));
    }
    let described: Vec<Value> = changes
        .iter()
        .map(|(c, ev)| {
            let (change, column, from, to) = describe(c);
            json!({
                "change": change,
                "column": column,
                "old_type": from,
                "new_type": to,
                "lsn": ev.source.lsn.to_string(),
                "event_id": ev.event_id,
            })
        })
        .collect();
    // The commit that changes the schema says why, with the LSN.
    let props = CommitProperties::default().with_metadata([(
        "tributary.schema_changes".to_string(),
        Value::Array(described),
    )]);
    let widen = changes
        .iter()
        .any(|(c, _)| matches!(c, SilverChange::Widen { .. }));
    let target = if widen {
        rewrite_silver(&name, target, schema.clone(), props).await?
    } else {
        let mut fields = Vec::new();
        for (c, _) in &changes {
            if let SilverChange::Add(f) = c {
                fields.push(StructField::try_from_arrow(f).map_err(|e| Error::Schema {
                    table: name.clone(),
                    message: format!("column {:?}: {e}", f.name()),
                })?);
            }
        }
        target
            .add_columns()
            .with_fields(fields)
            .with_commit_properties(props)
            .await
            .map_err(delta_err)?
    };
    let recorded = format_utc_micros(now_us());
    let mut rows = Vec::new();
    for (c, ev) in &changes {
        let (change, column, from, to) = describe(c);
        tracing::info!(table, column, change, old_type = from, new_type = to, lsn = %ev.source.lsn, event_id = %ev.event_id, "silver schema evolved");
        crate::metrics::schema_change(table, change);
        rows.push(json!({
            "source_table": table,
            "shard": null,
            "lsn": ev.source.lsn.as_i64(),
            "ordinal": ev.source.ordinal,
            "event_id": ev.event_id,
            "change": change,
            "column_name": column,
            "old_type": from,
            "new_type": to,
            "recorded_at": recorded,
        }));
    }
    // After the schema commit: a crash in between loses the log row, never
    // doubles it (the replayed batch finds silver evolved already).
    write_append(
        lake,
        "bronze",
        SCHEMA_CHANGES,
        rows_to_batch(schema_changes_schema(), &rows)?,
        None,
        CommitProperties::default(),
    )
    .await?;
    Ok((target, schema))
}

fn describe(c: &SilverChange) -> (&'static str, String, Option<String>, Option<String>) {
    match c {
        SilverChange::Add(f) => (
            "silver_add_column",
            f.name().clone(),
            None,
            Some(f.data_type().to_string()),
        ),
        SilverChange::Widen { column, from, to } => (
            "silver_widen_column",
            column.clone(),
            Some(from.to_string()),
            Some(to.to_string()),
        ),
    }
}

/// The silver schema every event of `events` fits, from `current`, with the
/// changes that lead there and the event that asked for each.
fn plan_silver<'a>(
    table: &str,
    current: &SchemaRef,
    events: &'a [ChangeEvent],
) -> Result<(SchemaRef, Vec<(SilverChange, &'a ChangeEvent)>)> {
    let mut schema = current.clone();
    let mut changes = Vec::new();
    let mut last: Option<&[Column]> = None;
    for ev in events {
        if ev.columns.is_empty() || last == Some(ev.columns.as_slice()) {
            continue;
        }
        last = Some(ev.columns.as_slice());
        match evolve(&schema, &ev.columns) {
            Ok((next, found)) => {
                schema = next;
                changes.extend(found.into_iter().map(|c| (c, ev)));
            }
            Err(bad) => {
                let source_type = ev
                    .columns
                    .iter()
                    .find(|c| c.name == bad.column)
                    .map(|c| c.pg_type.to_string())
                    .unwrap_or_default();
                return Err(Error::Incompatible(Box::new(crate::IncompatibleChange {
                    table: table.to_string(),
                    column: bad.column.clone(),
                    lsn: ev.source.lsn.to_string(),
                    event_id: ev.event_id.clone(),
                    reason: format!(
                        "the source changed its type to {source_type} ({}), which silver's {} column cannot hold without loss",
                        bad.incoming, bad.stored
                    ),
                    remedy: format!(
                        "every event before this one is applied; rewrite silver.{table} with \"{}\" cast to {} (or without that column), then restart the ingester: it resumes at this event",
                        bad.column, bad.incoming
                    ),
                })));
            }
        }
    }
    Ok((schema, changes))
}

/// The fix for a table stopped on a type change (see [`Error::Incompatible`]):
/// rewrites `silver.<table>` with `column` cast to `to`, or without it when
/// `to` is `None`, in one overwrite commit. Stored values that do not convert
/// become NULL (bronze keeps every change as sent). Run it while ingest of
/// the table is stopped, then restart the ingester.
pub async fn retype_silver_column(
    lake: &Lake,
    table: &str,
    column: &str,
    to: Option<DataType>,
) -> Result<()> {
    let name = format!("silver.{table}");
    let t = lake
        .open("silver", table)
        .await?
        .ok_or_else(|| Error::Schema {
            table: name.clone(),
            message: "no such table".into(),
        })?;
    let current = t
        .snapshot()
        .map_err(|source| Error::Delta {
            table: name.clone(),
            source,
        })?
        .snapshot()
        .arrow_schema();
    if current.field_with_name(column).is_err() || is_meta(column) {
        return Err(Error::Schema {
            table: name,
            message: format!("no source column {column:?}"),
        });
    }
    let fields: Vec<_> = current
        .fields()
        .iter()
        .filter(|f| f.name() != column || to.is_some())
        .map(|f| match &to {
            Some(to) if f.name() == column => {
                Arc::new(f.as_ref().clone().with_data_type(to.clone()))
            }
            _ => f.clone(),
        })
        .collect();
    let props = CommitProperties::default().with_metadata([(
        "tributary.schema_changes".to_string(),
        json!([{
            "change": if to.is_some() { "silver_retype_column" } else { "silver_drop_column" },
            "column": column,
            "new_type": to.as_ref().map(|t| t.to_string()),
        }]),
    )]);
    rewrite_silver(&name, t, Arc::new(Schema::new(fields)), props).await?;
    tracing::warn!(table, column, new_type = ?to, "silver column rewritten by hand");
    Ok(())
}

/// Rewrites silver with `schema` (wider column types) in one overwrite
/// commit: Delta type widening is a reader feature delta-rs 1.1 cannot read.
async fn rewrite_silver(
    name: &str,
    target: DeltaTable,
    schema: SchemaRef,
    props: CommitProperties,
) -> Result<DeltaTable> {
    let mut out = Vec::new();
    for b in query_table(&target, name, "SELECT * FROM t").await? {
        let mut columns = Vec::with_capacity(schema.fields().len());
        for f in schema.fields() {
            columns.push(match b.schema().index_of(f.name()) {
                Ok(i) => arrow::compute::cast(b.column(i), f.data_type())?,
                Err(_) => arrow::array::new_null_array(f.data_type(), b.num_rows()),
            });
        }
        out.push(RecordBatch::try_new(schema.clone(), columns)?);
    }
    if out.is_empty() {
        out.push(RecordBatch::new_empty(schema));
    }
    target
        .write(out)
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(SchemaMode::Overwrite)
        .with_commit_properties(props)
        .await
        .map_err(|source| Error::Delta {
            table: name.to_string(),
            source,
        })
}

/// Fails on a value silver cannot store exactly: a NaN or infinite numeric,
/// or one with more digits than its decimal column. Never names the value.
fn check_values(table: &str, schema: &SchemaRef, events: &[ChangeEvent]) -> Result<()> {
    let decimals: Vec<(&str, u8, i8)> = schema
        .fields()
        .iter()
        .filter_map(|f| match f.data_type() {
            DataType::Decimal128(p, s) => Some((f.name().as_str(), *p, *s)),
            _ => None,
        })
        .collect();
    if decimals.is_empty() {
        return Ok(());
    }
    for ev in events {
        let Some(after) = ev.after.as_ref() else {
            continue;
        };
        for (column, p, s) in &decimals {
            let Some(v) = after.get(*column) else {
                continue;
            };
            if let Err(reason) = decimal_fits(v, *p, *s) {
                return Err(Error::Incompatible(Box::new(crate::IncompatibleChange {
                    table: table.to_string(),
                    column: column.to_string(),
                    lsn: ev.source.lsn.to_string(),
                    event_id: ev.event_id.clone(),
                    reason,
                    remedy: format!(
                        "every event before this one is applied; rewrite silver.{table} with \"{column}\" as text (Utf8), then restart the ingester: it resumes at this event"
                    ),
                })));
            }
        }
    }
    Ok(())
}

/// Whether a JSON value (exact decimal text, or a number) fits
/// `Decimal128(p, s)` without loss.
fn decimal_fits(v: &Value, p: u8, s: i8) -> std::result::Result<(), String> {
    let text = match v {
        Value::Null => return Ok(()),
        Value::String(t) => t.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(format!(
                "a non-numeric value cannot be stored as Decimal128({p}, {s})"
            ));
        }
    };
    let digits = text.trim_start_matches(['-', '+']);
    let lower = digits.to_ascii_lowercase();
    if lower == "nan" || lower.starts_with("inf") {
        return Err(format!(
            "a NaN or infinite numeric cannot be stored as Decimal128({p}, {s})"
        ));
    }
    if lower.contains('e') {
        // Exponent notation only comes from JSON numbers; let the decoder judge.
        return Ok(());
    }
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int_digits = int.trim_start_matches('0').len() as i32;
    let frac_digits = frac.trim_end_matches('0').len() as i32;
    if frac_digits > i32::from(s).max(0) {
        return Err(format!(
            "a value with {frac_digits} decimal places does not fit Decimal128({p}, {s})"
        ));
    }
    if int_digits > i32::from(p) - i32::from(s) {
        return Err(format!(
            "a value with {int_digits} integer digits does not fit Decimal128({p}, {s})"
        ));
    }
    Ok(())
}

fn merge_row(ev: &ChangeEvent) -> Value {
    let mut row: Map<String, Value> = ev.row().cloned().unwrap_or_default();
    row.insert(meta::SHARD.into(), json!(ev.source.shard));
    row.insert(meta::LSN.into(), json!(ev.source.lsn.as_i64()));
    row.insert(meta::ORDINAL.into(), json!(ev.source.ordinal));
    row.insert(meta::EVENT_ID.into(), json!(ev.event_id));
    row.insert(
        meta::COMMIT_TS.into(),
        json!(format_utc_micros(ev.source.ts_us)),
    );
    row.insert(SOURCE_OP.into(), json!(ev.op.as_str()));
    if !ev.unchanged_toast.is_empty() {
        row.insert(
            SOURCE_UNCHANGED.into(),
            json!(format!(",{},", ev.unchanged_toast.join(","))),
        );
    }
    Value::Object(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{OwnedHeaders, Timestamp};
    use std::sync::Arc;
    use tributary_model::event::{Source, event_id};
    use tributary_model::lsn::Lsn;
    use tributary_model::pgtype::PgType;

    const TOPIC: &str = "tributary.orders.customers";

    fn ev(op: Op, id: i64, name: &str, lsn: u64, ordinal: u64) -> ChangeEvent {
        let row = json!({"id": id, "name": name, "created_at": "2026-11-26T07:00:00.000000Z"});
        let (before, after) = match op {
            Op::Delete => (Some(json!({"id": id}).as_object().unwrap().clone()), None),
            _ => (None, Some(row.as_object().unwrap().clone())),
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
                table: "customers".into(),
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
            columns: vec![
                Column {
                    name: "id".into(),
                    pg_type: PgType::Int8,
                    key: true,
                },
                Column {
                    name: "name".into(),
                    pg_type: PgType::Text,
                    key: false,
                },
                Column {
                    name: "created_at".into(),
                    pg_type: PgType::Timestamptz,
                    key: false,
                },
            ],
        }
    }

    fn msg(e: &ChangeEvent, partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            Some(e.to_json()),
            Some(b"k".to_vec()),
            TOPIC.into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            Some(OwnedHeaders::new()),
        )
    }

    async fn silver_rows(lake: &Lake) -> Vec<(i64, String)> {
        let t = lake.open("silver", "customers").await.unwrap().unwrap();
        let batches = query_table(&t, "customers", "SELECT id, name FROM t ORDER BY id")
            .await
            .unwrap();
        let mut out = vec![];
        for b in batches {
            let ids = col_i64(&b, 0);
            let names = arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
            let names = names
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            for (i, id) in ids.into_iter().enumerate() {
                out.push((id, names.value(i).to_string()));
            }
        }
        out
    }

    async fn bronze_count(lake: &Lake) -> i64 {
        let t = lake.open("bronze", "customers").await.unwrap().unwrap();
        col_i64(
            &query_table(&t, "customers", "SELECT count(*) FROM t")
                .await
                .unwrap()[0],
            0,
        )[0]
    }

    #[tokio::test]
    async fn a_crash_between_silver_and_bronze_is_replayed_into_bronze_only() {
        let (_dir, lake) = new_lake();
        let events = [
            ev(Op::Create, 1, "ann", 100, 1),
            ev(Op::Create, 2, "bob", 100, 2),
            ev(Op::Update, 1, "amy", 200, 1),
        ];
        let batch = || -> Vec<OwnedMessage> {
            events
                .iter()
                .enumerate()
                .map(|(i, e)| msg(e, 0, i as i64))
                .collect()
        };
        let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
        apply_batch(&lake, "g", &mut state, batch()[..1].to_vec())
            .await
            .unwrap();
        // Silver commits the rest; the process dies before bronze does.
        let staged = stage_batch(&lake, "g", &mut state, batch()[1..].to_vec())
            .await
            .unwrap();
        drop(staged);
        assert_eq!(bronze_count(&lake).await, 1);
        // The restart reads the offsets back: bronze is behind silver.
        let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
        assert_eq!(state.bronze_next.get(&0), Some(&1));
        assert_eq!(state.silver_next.get(&0), Some(&3));
        apply_batch(&lake, "g", &mut state, batch()[1..].to_vec())
            .await
            .unwrap();
        assert_eq!(bronze_count(&lake).await, 3, "each event once in bronze");
        assert_eq!(
            silver_rows(&lake).await,
            vec![(1, "amy".to_string()), (2, "bob".to_string())]
        );
    }

    /// The operation of silver.customers' newest commit.
    async fn last_silver_operation(lake: &Lake) -> String {
        use futures::StreamExt;
        let t = lake.open("silver", "customers").await.unwrap().unwrap();
        let info = t.history(Some(1)).next().await.unwrap().unwrap();
        info.operation.unwrap()
    }

    #[tokio::test]
    async fn inserts_above_silver_keys_are_appended_and_the_rest_merged() {
        let (_dir, lake) = new_lake();
        // The ingester's handle keeps its tables between commits.
        let lake = lake.with_table_cache();
        let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
        let mut offset = 0;
        let mut apply = async |state: &mut TableState, events: &[ChangeEvent]| {
            let batch = events
                .iter()
                .map(|e| {
                    offset += 1;
                    msg(e, 0, offset - 1)
                })
                .collect();
            apply_batch(&lake, "g", state, batch).await.unwrap();
        };
        let rows = |v: &[(i64, &str)]| -> Vec<(i64, String)> {
            v.iter().map(|(i, n)| (*i, n.to_string())).collect()
        };
        apply(
            &mut state,
            &[
                ev(Op::Create, 1, "ann", 100, 1),
                ev(Op::Create, 2, "bob", 100, 2),
            ],
        )
        .await;
        apply(&mut state, &[ev(Op::Create, 3, "cat", 200, 1)]).await;
        assert_eq!(last_silver_operation(&lake).await, "WRITE");
        apply(&mut state, &[ev(Op::Delete, 2, "", 300, 1)]).await;
        assert_eq!(last_silver_operation(&lake).await, "MERGE");
        // A key silver held before: merged, never a second row.
        apply(&mut state, &[ev(Op::Create, 2, "bea", 400, 1)]).await;
        assert_eq!(last_silver_operation(&lake).await, "MERGE");
        assert_eq!(
            silver_rows(&lake).await,
            rows(&[(1, "ann"), (2, "bea"), (3, "cat")])
        );
        // Another writer puts key 7 in silver with a newer position; the
        // kept table and the known highest key are both out of date now.
        let other = Lake::new(&crate::LakeConfig {
            root: lake.root().to_string(),
            s3: None,
            coordinator_dsn: None,
        })
        .unwrap();
        merge_silver(
            &other,
            "customers",
            vec![ev(Op::Create, 7, "zed", 900, 1)],
            vec![],
            vec![],
            &mut None,
        )
        .await
        .unwrap();
        apply(&mut state, &[ev(Op::Create, 7, "gus", 500, 1)]).await;
        assert_eq!(
            silver_rows(&lake).await,
            rows(&[(1, "ann"), (2, "bea"), (3, "cat"), (7, "zed")]),
            "the older insert of key 7 did not add a row or overwrite the newer one"
        );
        apply(&mut state, &[ev(Op::Create, 8, "hal", 600, 1)]).await;
        assert_eq!(last_silver_operation(&lake).await, "WRITE");
        assert_eq!(silver_rows(&lake).await.len(), 5);
    }

    #[tokio::test]
    async fn truncate_removes_only_rows_written_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(&crate::LakeConfig {
            root: dir.path().display().to_string(),
            s3: None,
            coordinator_dsn: None,
        })
        .unwrap();
        let mut state = load_state(&lake, "g", "customers", TOPIC, 2).await.unwrap();
        let a = [
            ev(Op::Create, 1, "ann", 100, 1),
            ev(Op::Create, 2, "bob", 200, 1),
        ];
        apply_batch(
            &lake,
            "g",
            &mut state,
            a.iter()
                .enumerate()
                .map(|(i, e)| msg(e, 0, i as i64))
                .collect(),
        )
        .await
        .unwrap();
        // Committed after the truncate, but delivered first by another partition.
        apply_batch(
            &lake,
            "g",
            &mut state,
            vec![msg(&ev(Op::Create, 4, "dan", 400, 1), 1, 0)],
        )
        .await
        .unwrap();
        let mut truncate = ev(Op::Truncate, 0, "", 300, 1);
        truncate.after = None;
        apply_batch(&lake, "g", &mut state, vec![msg(&truncate, 0, 2)])
            .await
            .unwrap();
        assert_eq!(silver_rows(&lake).await, vec![(4, "dan".to_string())]);
        let state = load_state(&lake, "g", "customers", TOPIC, 2).await.unwrap();
        assert_eq!(
            state.silver_next.get(&0),
            Some(&3),
            "the truncate's offset is recorded"
        );
    }

    #[tokio::test]
    async fn replays_and_stale_events_never_move_silver_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(&crate::LakeConfig {
            root: dir.path().display().to_string(),
            s3: None,
            coordinator_dsn: None,
        })
        .unwrap();
        let events = [
            ev(Op::Create, 1, "ann", 100, 1),
            ev(Op::Update, 1, "anna", 200, 1),
            ev(Op::Create, 2, "bob", 200, 2),
            ev(Op::Delete, 2, "bob", 300, 1),
        ];
        let mut state = load_state(&lake, "g", "customers", TOPIC, 2).await.unwrap();
        let batch: Vec<_> = events
            .iter()
            .enumerate()
            .map(|(i, e)| msg(e, 0, i as i64))
            .collect();
        apply_batch(&lake, "g", &mut state, batch).await.unwrap();
        assert_eq!(silver_rows(&lake).await, vec![(1, "anna".to_string())]);
        assert_eq!(bronze_count(&lake).await, 4);

        // The reader replays the same events after a crash: nothing changes.
        let replay: Vec<_> = events
            .iter()
            .enumerate()
            .map(|(i, e)| msg(e, 0, 4 + i as i64))
            .collect();
        apply_batch(&lake, "g", &mut state, replay).await.unwrap();
        assert_eq!(bronze_count(&lake).await, 4);
        assert_eq!(silver_rows(&lake).await, vec![(1, "anna".to_string())]);

        // An older version delivered late (another partition, so bronze takes
        // it) must not overwrite the newer row.
        apply_batch(
            &lake,
            "g",
            &mut state,
            vec![msg(&ev(Op::Update, 1, "stale", 150, 1), 1, 0)],
        )
        .await
        .unwrap();
        assert_eq!(silver_rows(&lake).await, vec![(1, "anna".to_string())]);

        // A poison message goes to the dead-letter table and the rest applies.
        let poison = OwnedMessage::new(
            Some(b"{not json".to_vec()),
            None,
            TOPIC.into(),
            Timestamp::NotAvailable,
            0,
            8,
            None,
        );
        apply_batch(
            &lake,
            "g",
            &mut state,
            vec![poison, msg(&ev(Op::Update, 1, "annie", 400, 1), 0, 9)],
        )
        .await
        .unwrap();
        assert_eq!(silver_rows(&lake).await, vec![(1, "annie".to_string())]);
        let dlq = lake.open("bronze", DEAD_LETTERS).await.unwrap().unwrap();
        let n = col_i64(
            &query_table(&dlq, "dlq", "SELECT count(*) FROM t WHERE kafka_offset = 8")
                .await
                .unwrap()[0],
            0,
        )[0];
        assert_eq!(n, 1);
        let raw = query_table(&dlq, "dlq", "SELECT payload FROM t")
            .await
            .unwrap();
        let raw = arrow::compute::cast(raw[0].column(0), &DataType::Binary).unwrap();
        let raw = raw
            .as_any()
            .downcast_ref::<arrow::array::BinaryArray>()
            .unwrap()
            .value(0)
            .to_vec();
        assert_eq!(
            raw,
            b"{not json".to_vec(),
            "the dead letter keeps the raw bytes"
        );

        // A restart resumes from the offsets in the lake and rebuilds the high-water mark.
        let state = load_state(&lake, "g", "customers", TOPIC, 2).await.unwrap();
        assert_eq!(state.bronze_next.get(&0), Some(&10));
        assert_eq!(state.silver_next.get(&0), Some(&10));
        assert_eq!(state.bronze_next.get(&1), Some(&1));
        assert_eq!(state.high_water.get(&(0, 0)), Some(&(400, 1)));
        assert!(state.silver_catch_up.is_empty());
        assert_eq!(
            state.dead_next.get(&0),
            Some(&9),
            "the dead-letter table records its offsets"
        );
    }

    fn new_lake() -> (tempfile::TempDir, Lake) {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(&crate::LakeConfig {
            root: dir.path().display().to_string(),
            s3: None,
            coordinator_dsn: None,
        })
        .unwrap();
        (dir, lake)
    }

    fn col(name: &str, pg_type: PgType) -> Column {
        Column {
            name: name.into(),
            pg_type,
            key: name == "id",
        }
    }

    /// An event of `table` on shard 0 with any shape: `row` is `after`, or
    /// `before` for deletes.
    fn shaped(
        table: &str,
        op: Op,
        lsn: u64,
        ordinal: u64,
        columns: Vec<Column>,
        row: Value,
    ) -> ChangeEvent {
        let mut e = ev(op, 0, "", lsn, ordinal);
        e.source.table = table.into();
        e.columns = columns;
        let row = row.as_object().unwrap().clone();
        if op == Op::Delete {
            e.before = Some(row);
        } else {
            e.after = Some(row);
        }
        e
    }

    fn msgs(topic: &str, events: &[ChangeEvent], partition: i32, first: i64) -> Vec<OwnedMessage> {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut m = msg(e, partition, first + i as i64);
                if topic != TOPIC {
                    m = OwnedMessage::new(
                        Some(e.to_json()),
                        Some(b"k".to_vec()),
                        topic.into(),
                        Timestamp::NotAvailable,
                        partition,
                        first + i as i64,
                        None,
                    );
                }
                m
            })
            .collect()
    }

    /// Rows of a query, every value as text (`None` for NULL).
    async fn rows(lake: &Lake, layer: &str, table: &str, sql: &str) -> Vec<Vec<Option<String>>> {
        let t = lake.open(layer, table).await.unwrap().unwrap();
        let mut out = vec![];
        for b in query_table(&t, table, sql).await.unwrap() {
            let cols: Vec<_> = b
                .columns()
                .iter()
                .map(|c| arrow::compute::cast(c, &DataType::Utf8).unwrap())
                .collect();
            for i in 0..b.num_rows() {
                out.push(
                    cols.iter()
                        .map(|c| {
                            let c = c
                                .as_any()
                                .downcast_ref::<arrow::array::StringArray>()
                                .unwrap();
                            arrow::array::Array::is_valid(c, i).then(|| c.value(i).to_string())
                        })
                        .collect(),
                );
            }
        }
        out
    }

    fn some(v: &[&str]) -> Vec<Option<String>> {
        v.iter()
            .map(|s| (*s != "NULL").then(|| s.to_string()))
            .collect()
    }

    async fn silver_type(lake: &Lake, table: &str, column: &str) -> DataType {
        let t = lake.open("silver", table).await.unwrap().unwrap();
        let schema = t.snapshot().unwrap().snapshot().arrow_schema();
        schema.field_with_name(column).unwrap().data_type().clone()
    }

    #[test]
    fn float_nan_and_infinity_reach_float_columns() {
        // The CDC reader sends them as text: JSON has no NaN.
        let schema = Arc::new(Schema::new(vec![
            arrow::datatypes::Field::new("f", DataType::Float64, true),
            arrow::datatypes::Field::new("g", DataType::Float32, true),
        ]));
        let rows = [
            json!({"f": "NaN", "g": "Infinity"}),
            json!({"f": "-Infinity", "g": 1.5}),
        ];
        let b = rows_to_batch(schema, &rows).unwrap();
        let f = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .unwrap();
        assert!(f.value(0).is_nan());
        assert_eq!(f.value(1), f64::NEG_INFINITY);
    }

    #[test]
    fn decimal_values_that_do_not_fit_are_named_without_the_value() {
        assert!(decimal_fits(&json!("9.90"), 6, 2).is_ok());
        assert!(decimal_fits(&json!("-9999.99"), 6, 2).is_ok());
        assert!(decimal_fits(&json!("0009.900"), 6, 2).is_ok());
        assert!(decimal_fits(&Value::Null, 6, 2).is_ok());
        assert!(decimal_fits(&json!(12.5), 6, 2).is_ok());
        for bad in ["NaN", "Infinity", "-Infinity", "10000.00", "1.234"] {
            let e = decimal_fits(&json!(bad), 6, 2).unwrap_err();
            assert!(!e.contains(bad) || bad == "NaN", "{e}");
        }
    }

    #[tokio::test]
    async fn added_column_appears_mid_stream_and_old_rows_read_null() {
        let (_dir, lake) = new_lake();
        let v1 = vec![col("id", PgType::Int8), col("name", PgType::Text)];
        let v2 = vec![
            col("id", PgType::Int8),
            col("name", PgType::Text),
            col("email", PgType::Text),
        ];
        let c =
            |op, lsn, cols: &Vec<Column>, row| shaped("customers", op, lsn, 1, cols.clone(), row);
        let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
        let first = [
            c(Op::Create, 100, &v1, json!({"id": 1, "name": "ann"})),
            c(Op::Create, 110, &v1, json!({"id": 2, "name": "bob"})),
        ];
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &first, 0, 0))
            .await
            .unwrap();
        // One batch mixes the old shape and the new one.
        let second = [
            c(Op::Update, 200, &v1, json!({"id": 1, "name": "anna"})),
            c(
                Op::Create,
                300,
                &v2,
                json!({"id": 3, "name": "cy", "email": "c@x"}),
            ),
            c(
                Op::Update,
                310,
                &v2,
                json!({"id": 2, "name": "bob", "email": "b@x"}),
            ),
        ];
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &second, 0, 2))
            .await
            .unwrap();
        let sql = "SELECT id, name, email FROM t ORDER BY id";
        let expected = vec![
            some(&["1", "anna", "NULL"]),
            some(&["2", "bob", "b@x"]),
            some(&["3", "cy", "c@x"]),
        ];
        assert_eq!(rows(&lake, "silver", "customers", sql).await, expected);

        // The change is logged once at the source (with its LSN) and once in silver.
        let log_sql = "SELECT change, column_name, shard, lsn FROM t ORDER BY change, lsn";
        let log = vec![
            some(&["add_column", "email", "0", "300"]),
            some(&["first_seen", "NULL", "0", "100"]),
            some(&["silver_add_column", "email", "NULL", "300"]),
        ];
        assert_eq!(rows(&lake, "bronze", SCHEMA_CHANGES, log_sql).await, log);

        // A replay of both batches after a crash changes nothing, logs nothing.
        let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
        let replay: Vec<_> = first.iter().chain(second.iter()).cloned().collect();
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &replay, 0, 5))
            .await
            .unwrap();
        assert_eq!(rows(&lake, "silver", "customers", sql).await, expected);
        assert_eq!(rows(&lake, "bronze", SCHEMA_CHANGES, log_sql).await, log);
        // An old-shape event delivered late changes nothing either.
        apply_batch(
            &lake,
            "g",
            &mut state,
            msgs(
                TOPIC,
                &[c(Op::Update, 150, &v1, json!({"id": 2, "name": "old"}))],
                0,
                10,
            ),
        )
        .await
        .unwrap();
        assert_eq!(rows(&lake, "silver", "customers", sql).await, expected);
    }

    #[tokio::test]
    async fn dropped_and_renamed_columns_stay_and_read_null_on_rows_written_after() {
        let (_dir, lake) = new_lake();
        let v1 = vec![
            col("id", PgType::Int8),
            col("name", PgType::Text),
            col("phone", PgType::Text),
        ];
        // DROP COLUMN phone, then RENAME name TO full_name.
        let v2 = vec![col("id", PgType::Int8), col("name", PgType::Text)];
        let v3 = vec![col("id", PgType::Int8), col("full_name", PgType::Text)];
        let c =
            |op, lsn, cols: &Vec<Column>, row| shaped("customers", op, lsn, 1, cols.clone(), row);
        let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
        let events = [
            c(
                Op::Create,
                100,
                &v1,
                json!({"id": 1, "name": "ann", "phone": "111"}),
            ),
            c(
                Op::Create,
                110,
                &v1,
                json!({"id": 2, "name": "bob", "phone": "222"}),
            ),
            c(
                Op::Create,
                120,
                &v1,
                json!({"id": 4, "name": "dan", "phone": "444"}),
            ),
        ];
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 0))
            .await
            .unwrap();
        let events = [
            c(Op::Update, 200, &v2, json!({"id": 2, "name": "bobby"})),
            c(Op::Create, 210, &v2, json!({"id": 3, "name": "cy"})),
        ];
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 3))
            .await
            .unwrap();
        let events = [c(
            Op::Update,
            300,
            &v3,
            json!({"id": 4, "full_name": "dan d"}),
        )];
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 5))
            .await
            .unwrap();
        assert_eq!(
            rows(
                &lake,
                "silver",
                "customers",
                "SELECT id, name, phone, full_name FROM t ORDER BY id"
            )
            .await,
            vec![
                // Untouched since the drop: keeps its old value.
                some(&["1", "ann", "111", "NULL"]),
                // Written after the drop: the dropped column is NULL.
                some(&["2", "bobby", "NULL", "NULL"]),
                some(&["3", "cy", "NULL", "NULL"]),
                // Written after the rename: the value is under the new name.
                some(&["4", "NULL", "NULL", "dan d"]),
            ]
        );
        assert_eq!(
            rows(
                &lake,
                "bronze",
                SCHEMA_CHANGES,
                "SELECT change, column_name, lsn FROM t WHERE shard IS NOT NULL AND change <> 'first_seen' ORDER BY lsn, change"
            )
            .await,
            vec![
                some(&["drop_column", "phone", "200"]),
                some(&["add_column", "full_name", "300"]),
                some(&["drop_column", "name", "300"]),
            ]
        );
    }

    #[tokio::test]
    async fn widening_evolves_silver_types_and_keeps_stored_values() {
        let (_dir, lake) = new_lake();
        let shape = |qty: PgType, score: PgType, price: PgType| {
            vec![
                col("id", PgType::Int8),
                col("qty", qty),
                col("score", score),
                col("price", price),
                col("code", PgType::Text),
            ]
        };
        let v1 = shape(PgType::Int2, PgType::Float4, PgType::Numeric(Some((6, 2))));
        let v2 = shape(PgType::Int4, PgType::Float8, PgType::Numeric(Some((12, 2))));
        let v3 = shape(PgType::Int8, PgType::Float8, PgType::Numeric(None));
        let c =
            |op, lsn, cols: &Vec<Column>, row| shaped("customers", op, lsn, 1, cols.clone(), row);
        let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
        let events = [c(
            Op::Create,
            100,
            &v1,
            json!({"id": 1, "qty": 7, "score": 1.5, "price": "9.90", "code": "a"}),
        )];
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 0))
            .await
            .unwrap();
        assert_eq!(
            silver_type(&lake, "customers", "qty").await,
            DataType::Int16
        );
        assert_eq!(
            silver_type(&lake, "customers", "score").await,
            DataType::Float32
        );
        assert_eq!(
            silver_type(&lake, "customers", "price").await,
            DataType::Decimal128(6, 2)
        );

        // int2 → int4, float4 → float8, numeric(6,2) → numeric(12,2); the
        // batch also holds an old-shape event from another shard after them.
        let mut late = c(
            Op::Create,
            210,
            &v1,
            json!({"id": 5, "qty": 5, "score": 0.5, "price": "1.00", "code": "e"}),
        );
        late.source.shard = 1;
        let events = [
            c(
                Op::Create,
                200,
                &v2,
                json!({"id": 2, "qty": 70000, "score": 1e300, "price": "1234567890.12", "code": "b"}),
            ),
            late,
        ];
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 1))
            .await
            .unwrap();
        assert_eq!(
            silver_type(&lake, "customers", "qty").await,
            DataType::Int32
        );
        assert_eq!(
            silver_type(&lake, "customers", "score").await,
            DataType::Float64
        );
        assert_eq!(
            silver_type(&lake, "customers", "price").await,
            DataType::Decimal128(12, 2)
        );

        // int4 → int8, numeric(12,2) → numeric: exact text.
        let events = [
            c(
                Op::Create,
                300,
                &v3,
                json!({"id": 3, "qty": 5_000_000_000_i64, "score": 2.0, "price": "3.14159", "code": "c"}),
            ),
            // An update of the old shape after the widening, same batch.
            c(
                Op::Update,
                310,
                &v2,
                json!({"id": 2, "qty": 70001, "score": 1e300, "price": "1234567890.12", "code": "bb"}),
            ),
        ];
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 3))
            .await
            .unwrap();
        assert_eq!(
            silver_type(&lake, "customers", "qty").await,
            DataType::Int64
        );
        assert_eq!(
            silver_type(&lake, "customers", "price").await,
            DataType::Utf8
        );
        assert_eq!(
            rows(
                &lake,
                "silver",
                "customers",
                "SELECT id, qty, price, code, _lsn FROM t ORDER BY id"
            )
            .await,
            vec![
                some(&["1", "7", "9.90", "a", "100"]),
                some(&["2", "70001", "1234567890.12", "bb", "310"]),
                some(&["3", "5000000000", "3.14159", "c", "300"]),
                some(&["5", "5", "1.00", "e", "210"]),
            ]
        );
        assert_eq!(
            rows(
                &lake,
                "bronze",
                SCHEMA_CHANGES,
                "SELECT column_name, old_type, new_type, lsn FROM t WHERE change = 'silver_widen_column' ORDER BY lsn, column_name"
            )
            .await,
            vec![
                some(&["price", "Decimal128(6, 2)", "Decimal128(12, 2)", "200"]),
                some(&["qty", "Int16", "Int32", "200"]),
                some(&["score", "Float32", "Float64", "200"]),
                some(&["price", "Decimal128(12, 2)", "Utf8", "300"]),
                some(&["qty", "Int32", "Int64", "300"]),
            ]
        );
        // The widening commit says why, with the LSN.
        let t = lake.open("silver", "customers").await.unwrap().unwrap();
        let history: Vec<_> = futures::StreamExt::collect::<Vec<_>>(t.history(None))
            .await
            .into_iter()
            .map(|c| c.unwrap())
            .collect();
        assert!(
            history.iter().any(|c| c
                .info
                .get("tributary.schema_changes")
                .is_some_and(|v| v.to_string().contains("silver_widen_column"))),
            "{history:?}"
        );
    }

    #[tokio::test]
    async fn unchanged_toast_takes_the_value_an_earlier_change_of_the_batch_set() {
        let (_dir, lake) = new_lake();
        let cols = vec![
            col("id", PgType::Int8),
            col("name", PgType::Text),
            col("bio", PgType::Text),
        ];
        let big = |c: char| c.to_string().repeat(10_000);
        let c = |op, lsn, row| shaped("customers", op, lsn, 1, cols.clone(), row);
        let unchanged = |lsn, name: &str| {
            let mut e = c(Op::Update, lsn, json!({"id": 1, "name": name}));
            e.unchanged_toast = vec!["bio".into()];
            e
        };
        let bio = |lake: Lake| async move {
            let r = rows(&lake, "silver", "customers", "SELECT name, bio FROM t").await;
            assert_eq!(r.len(), 1);
            (r[0][0].clone().unwrap(), r[0][1].clone())
        };
        let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
        // Insert, an update that sets the big value, one that leaves it: one batch.
        let events = [
            c(
                Op::Create,
                100,
                json!({"id": 1, "name": "ann", "bio": big('a')}),
            ),
            c(
                Op::Update,
                200,
                json!({"id": 1, "name": "ann", "bio": big('b')}),
            ),
            unchanged(300, "anna"),
        ];
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 0))
            .await
            .unwrap();
        assert_eq!(bio(lake.clone()).await, ("anna".into(), Some(big('b'))));
        // Across batches: silver's stored value is kept.
        apply_batch(
            &lake,
            "g",
            &mut state,
            msgs(TOPIC, &[unchanged(400, "annie")], 0, 3),
        )
        .await
        .unwrap();
        assert_eq!(bio(lake.clone()).await, ("annie".into(), Some(big('b'))));
        // A batch of only unchanged updates never writes NULL over the value.
        let events = [unchanged(500, "x"), unchanged(600, "y")];
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 4))
            .await
            .unwrap();
        assert_eq!(bio(lake.clone()).await, ("y".into(), Some(big('b'))));
        // Set in one batch, left unchanged in the next.
        let events = [c(
            Op::Update,
            700,
            json!({"id": 1, "name": "z", "bio": big('c')}),
        )];
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 6))
            .await
            .unwrap();
        apply_batch(
            &lake,
            "g",
            &mut state,
            msgs(TOPIC, &[unchanged(800, "zz")], 0, 7),
        )
        .await
        .unwrap();
        assert_eq!(bio(lake.clone()).await, ("zz".into(), Some(big('c'))));
        // A replay of the first batch moves nothing backwards.
        let events = [
            c(
                Op::Create,
                100,
                json!({"id": 1, "name": "ann", "bio": big('a')}),
            ),
            c(
                Op::Update,
                200,
                json!({"id": 1, "name": "ann", "bio": big('b')}),
            ),
            unchanged(300, "anna"),
        ];
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &events, 0, 8))
            .await
            .unwrap();
        assert_eq!(bio(lake.clone()).await, ("zz".into(), Some(big('c'))));
        // REPLICA IDENTITY FULL: the old image holds the unchanged value, and
        // a NULL there is not taken for one.
        let mut full = unchanged(900, "full");
        full.before = Some(
            json!({"id": 1, "name": "zz", "bio": big('c')})
                .as_object()
                .unwrap()
                .clone(),
        );
        let mut null_before = unchanged(1000, "nb");
        null_before.before = Some(json!({"id": 1, "bio": null}).as_object().unwrap().clone());
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &[full], 0, 11))
            .await
            .unwrap();
        assert_eq!(bio(lake.clone()).await, ("full".into(), Some(big('c'))));
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &[null_before], 0, 12))
            .await
            .unwrap();
        assert_eq!(bio(lake.clone()).await, ("nb".into(), Some(big('c'))));
        let mut f = unchanged(1100, "f");
        f.before = Some(
            json!({"id": 1, "bio": big('d')})
                .as_object()
                .unwrap()
                .clone(),
        );
        let mut after_full = c(Op::Update, 1200, json!({"id": 1, "name": "g"}));
        after_full.unchanged_toast = vec!["bio".into()];
        apply_batch(&lake, "g", &mut state, msgs(TOPIC, &[f, after_full], 0, 13))
            .await
            .unwrap();
        assert_eq!(bio(lake.clone()).await, ("g".into(), Some(big('d'))));
    }

    #[tokio::test]
    async fn an_incompatible_change_stops_only_its_table() {
        const PRODUCTS: &str = "tributary.catalog.products";
        let (_dir, lake) = new_lake();
        let v1 = vec![col("id", PgType::Int8), col("name", PgType::Text)];
        // ALTER COLUMN name TYPE int: text → int cannot be stored without loss.
        let v2 = vec![col("id", PgType::Int8), col("name", PgType::Int4)];
        let prod = vec![
            col("id", PgType::Int8),
            col("price", PgType::Numeric(Some((6, 2)))),
        ];
        let c =
            |op, lsn, cols: &Vec<Column>, row| shaped("customers", op, lsn, 1, cols.clone(), row);
        let p = |lsn, id: i64, price: &str| {
            shaped(
                "products",
                Op::Create,
                lsn,
                1,
                prod.clone(),
                json!({"id": id, "price": price}),
            )
        };
        let mut states = HashMap::new();
        states.insert(
            TOPIC.to_string(),
            load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap(),
        );
        states.insert(
            PRODUCTS.to_string(),
            load_state(&lake, "g", "products", PRODUCTS, 1)
                .await
                .unwrap(),
        );
        let mut stopped = HashSet::new();
        let ok = [c(Op::Create, 100, &v1, json!({"id": 1, "name": "ann"}))];
        assert!(
            !apply_or_stop(
                &lake,
                "g",
                &mut states,
                &mut stopped,
                TOPIC,
                msgs(TOPIC, &ok, 0, 0)
            )
            .await
            .unwrap()
        );

        let bad = [
            c(Op::Create, 200, &v1, json!({"id": 2, "name": "bob"})),
            c(Op::Create, 300, &v2, json!({"id": 3, "name": 3})),
            c(Op::Create, 310, &v2, json!({"id": 4, "name": 4})),
        ];
        let stops = apply_or_stop(
            &lake,
            "g",
            &mut states,
            &mut stopped,
            TOPIC,
            msgs(TOPIC, &bad, 0, 1),
        );
        assert!(stops.await.unwrap(), "the table stops");
        assert!(stopped.contains("customers"));
        assert!(
            crate::metrics::render()
                .contains("tributary_lake_table_stopped{table=\"customers\"} 1")
        );
        // Everything before the event is applied; it and what follows are not.
        let state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
        assert_eq!(state.bronze_next.get(&0), Some(&2));
        assert_eq!(state.silver_next.get(&0), Some(&2));
        assert_eq!(bronze_count(&lake).await, 2);
        let sql = "SELECT id, name FROM t ORDER BY id";
        assert_eq!(
            rows(&lake, "silver", "customers", sql).await,
            vec![some(&["1", "ann"]), some(&["2", "bob"])]
        );
        // Later messages of the stopped table are not applied.
        let later = [c(Op::Create, 400, &v2, json!({"id": 5, "name": 5}))];
        let stops = apply_or_stop(
            &lake,
            "g",
            &mut states,
            &mut stopped,
            TOPIC,
            msgs(TOPIC, &later, 0, 4),
        );
        assert!(!stops.await.unwrap());
        assert_eq!(bronze_count(&lake).await, 2);
        // A restart without a fix stops at the same event, with an error
        // that names the table, the column and the LSN, and writes nothing.
        let mut replay = msgs(TOPIC, &bad[1..], 0, 2);
        replay.extend(msgs(TOPIC, &later, 0, 4));
        let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
        let err = apply_batch(&lake, "g", &mut state, replay.clone())
            .await
            .unwrap_err();
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(
            text.contains("customers")
                && text.contains("\"name\"")
                && text.contains(&Lsn(300).to_string()),
            "{text}"
        );
        assert_eq!(bronze_count(&lake).await, 2);
        // The source's type change is logged once, with its LSN.
        assert_eq!(
            rows(
                &lake,
                "bronze",
                SCHEMA_CHANGES,
                "SELECT column_name, old_type, new_type, lsn FROM t WHERE change = 'change_type'"
            )
            .await,
            vec![some(&["name", "text", "int4", "300"])]
        );

        // Another table keeps flowing, and a NaN numeric stops it in turn.
        let batch = msgs(PRODUCTS, &[p(100, 1, "9.90"), p(110, 2, "19.90")], 0, 0);
        assert!(
            !apply_or_stop(&lake, "g", &mut states, &mut stopped, PRODUCTS, batch)
                .await
                .unwrap()
        );
        assert_eq!(
            rows(
                &lake,
                "silver",
                "products",
                "SELECT id, price FROM t ORDER BY id"
            )
            .await,
            vec![some(&["1", "9.90"]), some(&["2", "19.90"])]
        );
        for (bad, reason) in [("NaN", "NaN"), ("12345.00", "integer digits")] {
            let mut state = load_state(&lake, "g", "products", PRODUCTS, 1)
                .await
                .unwrap();
            let err = apply_batch(
                &lake,
                "g",
                &mut state,
                msgs(PRODUCTS, &[p(200, 3, bad)], 0, 2),
            )
            .await
            .unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, Error::Incompatible(_)) && text.contains(reason),
                "{text}"
            );
            assert!(
                !text.contains(bad) || bad == "NaN",
                "no row values in errors: {text}"
            );
        }

        // The fix: rewrite silver with the column cast to the new type (the
        // stored names do not parse: NULL). After a restart the table resumes
        // at the event it stopped on, and nothing was lost.
        retype_silver_column(&lake, "customers", "name", Some(DataType::Int32))
            .await
            .unwrap();
        assert!(
            retype_silver_column(&lake, "customers", "_lsn", None)
                .await
                .is_err()
        );
        let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
        apply_batch(&lake, "g", &mut state, replay).await.unwrap();
        assert_eq!(
            rows(&lake, "silver", "customers", sql).await,
            vec![
                some(&["1", "NULL"]),
                some(&["2", "NULL"]),
                some(&["3", "3"]),
                some(&["4", "4"]),
                some(&["5", "5"]),
            ]
        );
        assert_eq!(
            silver_type(&lake, "customers", "name").await,
            DataType::Int32
        );
        assert_eq!(bronze_count(&lake).await, 5);
    }
}
