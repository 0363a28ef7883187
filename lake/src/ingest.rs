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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::protocol::{DeltaOperation, OutputMode, SaveMode};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tributary_model::domain::{KafkaConfig, TABLES, silver_columns as meta, topic_of};
use tributary_model::error_chain;
use tributary_model::event::{ChangeEvent, Column, Op};
use tributary_model::pgtype::format_utc_micros;

use crate::schema::{
    SOURCE_OP, SOURCE_UNCHANGED, bronze_schema, dead_letter_schema, merge_source_schema,
    silver_schema,
};
use crate::{Error, Lake, Result};

/// Ingest settings (`[ingest]` in the config file).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Most messages in one commit.
    #[serde(default = "default_batch_messages")]
    pub batch_max_messages: usize,
    /// Longest time a batch collects before it is committed.
    #[serde(default = "default_batch_ms")]
    pub batch_max_ms: u64,
    /// Names the offsets in the lake (and the broker-side group, for monitoring only).
    #[serde(default = "default_group")]
    pub group_id: String,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            batch_max_messages: default_batch_messages(),
            batch_max_ms: default_batch_ms(),
            group_id: default_group(),
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

/// Name of the dead-letter table in the bronze layer.
pub const DEAD_LETTERS: &str = "_dead_letters";

/// Runs ingest until `shutdown`. Transient failures (broker, store, commit
/// conflicts) restart from the offsets recorded in the lake.
pub async fn run(
    lake: Lake,
    kafka: KafkaConfig,
    config: IngestConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    check_broker(&kafka).await?;
    let mut backoff = Duration::from_millis(200);
    loop {
        match run_once(&lake, &kafka, &config, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                tracing::warn!(error = %error_chain(&e), "ingest failed; resuming from the offsets in the lake");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
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
struct TableState {
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

async fn load_state(
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
    };
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
    }
    // Silver may lag bronze by one batch after a crash between the commits:
    // find the offsets bronze accepted in that gap.
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
    let c =
        arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Int32).expect("int column");
    c.as_any()
        .downcast_ref::<arrow::array::Int32Array>()
        .expect("int32")
        .values()
        .to_vec()
}

fn col_i64(b: &RecordBatch, i: usize) -> Vec<i64> {
    let c =
        arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Int64).expect("int column");
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

async fn run_once(
    lake: &Lake,
    kafka: &KafkaConfig,
    config: &IngestConfig,
    shutdown: &CancellationToken,
) -> Result<()> {
    let consumer: StreamConsumer =
        consumer_config(kafka, &config.group_id)
            .create()
            .map_err(|source| Error::Kafka {
                context: "creating the consumer".into(),
                source,
            })?;
    let topics: Vec<(String, &str)> = TABLES
        .iter()
        .map(|t| (topic_of(&kafka.topic_prefix, t), t.name))
        .collect();
    let names: Vec<String> = topics.iter().map(|(t, _)| t.clone()).collect();
    let counts = partition_counts(&consumer, &names, shutdown).await?;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    let mut states: HashMap<String, TableState> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for (topic, table) in &topics {
        let n = counts[topic];
        let state = load_state(lake, &config.group_id, table, topic, n).await?;
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
    loop {
        let mut batch: BTreeMap<String, Vec<OwnedMessage>> = BTreeMap::new();
        let mut count = 0usize;
        let deadline = tokio::time::Instant::now() + max_wait;
        while count < config.batch_max_messages {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                m = consumer.recv() => {
                    let m = m.map_err(|source| Error::Kafka { context: "consuming".into(), source })?;
                    batch.entry(m.topic().to_string()).or_default().push(m.detach());
                    count += 1;
                }
            }
        }
        for (topic, messages) in batch {
            let state = states
                .get_mut(&topic)
                .expect("only assigned topics are consumed");
            apply_batch(lake, &config.group_id, state, messages).await?;
        }
        if shutdown.is_cancelled() {
            tracing::info!("ingest stopped");
            return Ok(());
        }
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn rows_to_batch(schema: SchemaRef, rows: &[Value]) -> Result<RecordBatch> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .build_decoder()?;
    decoder.serialize(rows)?;
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

async fn apply_batch(
    lake: &Lake,
    group: &str,
    state: &mut TableState,
    messages: Vec<OwnedMessage>,
) -> Result<()> {
    let started = Instant::now();
    let mut next: HashMap<i32, i64> = HashMap::new();
    let mut bronze_rows = Vec::new();
    let mut silver_events: Vec<ChangeEvent> = Vec::new();
    let mut dead = Vec::new();
    let ingested = format_utc_micros(now_us());
    for m in &messages {
        let (p, o) = (m.partition(), m.offset());
        next.entry(p)
            .and_modify(|v| *v = (*v).max(o + 1))
            .or_insert(o + 1);
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
                continue;
            }
            Err(e) => {
                if new_for_dead_letters {
                    dead.push(dead_letter(m, &error_chain(&e)));
                }
                continue;
            }
        };
        let accepted = if new_for_bronze {
            let key = (p, ev.source.shard as i32);
            let pos = (ev.source.lsn.as_i64(), ev.source.ordinal as i64);
            if state.high_water.get(&key).is_none_or(|h| pos > *h) {
                state.high_water.insert(key, pos);
                bronze_rows.push(bronze_row(&ev, m, &ingested));
                true
            } else {
                false
            }
        } else {
            state.silver_catch_up.contains(&(p, o))
        };
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
        let props = CommitProperties::default().with_application_transactions(txns);
        write_append(lake, "bronze", DEAD_LETTERS, batch, None, props).await?;
        state.dead_next.extend(dead_offsets);
        tracing::warn!(table = %state.table, messages = dead_count, "messages sent to the dead-letter table");
    }

    let txns = |group: &str| -> Vec<Transaction> {
        next.iter()
            .map(|(p, v)| Transaction::new(app_id(group, &state.topic, *p), *v))
            .collect()
    };
    // Every batch records its offsets, even when all it held were replays,
    // so the lake's offsets always reach the end of what was consumed.
    let bronze_count = bronze_rows.len();
    let committed = if !bronze_rows.is_empty() {
        let batch = rows_to_batch(bronze_schema(), &bronze_rows)?;
        let props = CommitProperties::default().with_application_transactions(txns(group));
        write_append(lake, "bronze", &state.table, batch, Some("date"), props).await?;
        true
    } else {
        commit_offsets_only(lake, "bronze", &state.table, group, txns(group)).await?
    };
    if committed {
        for (p, v) in &next {
            state.bronze_next.insert(*p, *v);
        }
    }
    let silver_count = silver_events.len();
    let committed = if !silver_events.is_empty() {
        merge_silver(lake, &state.table, silver_events, txns(group)).await?;
        true
    } else {
        commit_offsets_only(lake, "silver", &state.table, group, txns(group)).await?
    };
    if committed {
        for (p, v) in &next {
            state.silver_next.insert(*p, *v);
        }
    }
    crate::metrics::batch(
        &state.table,
        messages.len(),
        bronze_count,
        silver_count,
        dead_count,
        started.elapsed().as_secs_f64(),
    );
    state
        .silver_catch_up
        .retain(|(p, o)| next.get(p).is_none_or(|n| o >= n));
    tracing::debug!(table = %state.table, messages = messages.len(), bronze = bronze_count, silver = silver_count, ms = started.elapsed().as_millis() as u64, "batch committed");
    Ok(())
}

/// Commits only `txn` actions (a streaming update that wrote no rows).
/// Returns false when the table does not exist yet.
async fn commit_offsets_only(
    lake: &Lake,
    layer: &str,
    table: &str,
    group: &str,
    txns: Vec<Transaction>,
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
    CommitBuilder::from(CommitProperties::default().with_application_transactions(txns))
        .build(Some(snapshot), t.log_store(), operation)
        .await
        .map_err(|source| Error::Delta {
            table: name,
            source,
        })?;
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

fn dead_letter(m: &OwnedMessage, error: &str) -> Value {
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

fn bronze_row(ev: &ChangeEvent, m: &OwnedMessage, ingested: &str) -> Value {
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

async fn write_append(
    lake: &Lake,
    layer: &str,
    table: &str,
    batch: RecordBatch,
    partition: Option<&str>,
    props: CommitProperties,
) -> Result<()> {
    let name = format!("{layer}.{table}");
    let t = match lake.open(layer, table).await? {
        Some(t) => t,
        None => lake.table_handle(layer, table)?,
    };
    let mut w = t
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .with_commit_properties(props);
    if let Some(p) = partition {
        w = w.with_partition_columns([p.to_string()]);
    }
    w.await.map_err(|source| Error::Delta {
        table: name,
        source,
    })?;
    Ok(())
}

/// Applies change events to the silver table: creates it on first use,
/// splits the batch at truncates, and keeps only the newest change per key.
async fn merge_silver(
    lake: &Lake,
    table: &str,
    events: Vec<ChangeEvent>,
    txns: Vec<Transaction>,
) -> Result<()> {
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
        // Offsets are recorded with the last commit of the batch only.
        let txns = if i == last { txns.clone() } else { vec![] };
        if !events.is_empty() || i == last {
            merge_segment(lake, table, events, txns).await?;
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
    Ok(())
}

async fn merge_segment(
    lake: &Lake,
    table: &str,
    events: Vec<ChangeEvent>,
    txns: Vec<Transaction>,
) -> Result<()> {
    let name = format!("silver.{table}");
    let Some(columns) = events.last().map(|e| e.columns.clone()) else {
        // Nothing to merge (a batch ending in a truncate): still record the offsets.
        if !txns.is_empty() {
            commit_offsets_only(lake, "silver", table, "merge", txns).await?;
        }
        return Ok(());
    };
    let keys: Vec<&Column> = columns.iter().filter(|c| c.key).collect();
    // The newest change per key wins within the batch.
    let mut newest: HashMap<String, ChangeEvent> = HashMap::new();
    for ev in events {
        let Some(row) = ev.row() else { continue };
        let mut k = ev.source.shard.to_string();
        for c in &keys {
            k.push('\u{1f}');
            k.push_str(&row.get(&c.name).map(Value::to_string).unwrap_or_default());
        }
        match newest.get(&k) {
            Some(cur) if cur.position() >= ev.position() => {}
            _ => {
                newest.insert(k, ev);
            }
        }
    }
    let rows: Vec<Value> = newest.values().map(merge_row).collect();
    let batch = rows_to_batch(merge_source_schema(&columns), &rows)?;

    let target = match lake.open("silver", table).await? {
        Some(t) => t,
        None => {
            let schema = silver_schema(&columns);
            let empty = RecordBatch::new_empty(schema);
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
    let ctx = SessionContext::new();
    let source = ctx.read_batch(batch).map_err(|source| Error::DataFusion {
        table: name.clone(),
        source,
    })?;
    let mut on = vec![format!("target.{0} = source.{0}", meta::SHARD)];
    on.extend(
        keys.iter()
            .map(|c| format!("target.\"{0}\" = source.\"{0}\"", c.name)),
    );
    let newer = format!(
        "(source.{lsn} > target.{lsn} OR (source.{lsn} = target.{lsn} AND source.{ord} > target.{ord}))",
        lsn = meta::LSN,
        ord = meta::ORDINAL
    );
    let all: Vec<String> = silver_schema(&columns)
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let source_value = |c: &str| {
        if columns.iter().any(|col| col.name == c && !col.key) {
            // An unchanged TOAST value keeps what silver already has.
            format!(
                "CASE WHEN strpos(coalesce(source.{SOURCE_UNCHANGED}, ''), ',{c},') > 0 THEN target.\"{c}\" ELSE source.\"{c}\" END"
            )
        } else {
            format!("source.\"{c}\"")
        }
    };
    let all_u = all.clone();
    let all_i = all.clone();
    let version_before = target.version();
    let props = CommitProperties::default().with_application_transactions(txns.clone());
    let (merged, _metrics) = target
        .merge(source, on.join(" AND "))
        .with_source_alias("source")
        .with_target_alias("target")
        .with_merge_schema(true)
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
    // A merge that changes nothing writes no commit, and so no offsets.
    if merged.version() == version_before && !txns.is_empty() {
        commit_offsets_only(lake, "silver", table, "merge", txns).await?;
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
            let names =
                arrow::compute::cast(b.column(1), &arrow::datatypes::DataType::Utf8).unwrap();
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
    async fn truncate_removes_only_rows_written_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(&crate::LakeConfig {
            root: dir.path().display().to_string(),
            s3: None,
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
        let raw =
            arrow::compute::cast(raw[0].column(0), &arrow::datatypes::DataType::Binary).unwrap();
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
}
