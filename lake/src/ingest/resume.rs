//! Where a table's ingest resumes: the offsets recorded in Delta.
//!
//! Owns [`TableState`] and how it is rebuilt from the lake alone: the `txn`
//! versions of bronze, silver and the dead-letter table (the next offset of
//! each partition, written in the same commit as the data), the highest
//! (LSN, ordinal) per (partition, shard) in bronze, the offsets bronze took
//! that silver has not, and the newest source shape per shard.
//!
//! Rule kept here: offsets move only inside the commit that holds what was
//! consumed below them (or, with nothing to write, in an offsets-only
//! commit: [`commit_offsets_only`]), so what the lake records is exactly
//! what it holds, and the broker's group offsets are never read.

use std::collections::{HashMap, HashSet};

use arrow::array::StringArray;
use arrow::datatypes::DataType;
use arrow::datatypes::SchemaRef;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use serde_json::Value;
use tributary_model::event::Column;

use super::config::{DEAD_LETTERS, SCHEMA_CHANGES};
use crate::store::{cast_column, col_i32, col_i64, commit_without_data, query_table};
use crate::{Error, Lake, Result};

/// What ingest knows about one table between batches.
pub(crate) struct TableState {
    pub(crate) table: String,
    pub(crate) topic: String,
    pub(crate) bronze_next: HashMap<i32, i64>,
    pub(crate) silver_next: HashMap<i32, i64>,
    /// Highest (lsn, ordinal) in bronze per (partition, shard).
    pub(crate) high_water: HashMap<(i32, i32), (i64, i64)>,
    /// Offsets below `bronze_next` that bronze accepted but silver has not applied.
    pub(crate) silver_catch_up: HashSet<(i32, i64)>,
    /// Dead letters below these offsets are already in the dead-letter table.
    pub(crate) dead_next: HashMap<i32, i64>,
    /// Silver's schema as of the last merge (`None` before silver exists).
    pub(crate) silver_schema: Option<SchemaRef>,
    /// No row of silver has a key above `.0` at version `.1` (tables with
    /// one integer key; `None` until a batch needs it). See
    /// [`merge_segment`].
    pub(crate) silver_key_max: Option<(i64, u64)>,
    /// The newest source shape seen per shard, at its position: a change of
    /// shape is logged once, at the first event of the new shape.
    pub(crate) shapes: HashMap<u32, ((i64, i64), Vec<Column>)>,
}

pub(crate) fn app_id(group: &str, topic: &str, partition: i32) -> String {
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
            let columns: StringArray = cast_column(&b, 3, &DataType::Utf8)?;
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
        let bronze = lake.open("bronze", table).await?.ok_or_else(|| {
            Error::Internal(format!(
                "bronze.{table} has recorded offsets but does not open"
            ))
        })?;
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

/// Commits only `txn` actions (a streaming update that wrote no rows), with
/// `metadata` in its `commitInfo`. Returns false when the table does not
/// exist yet.
pub(crate) async fn commit_offsets_only(
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
    let props = lake
        .commit_properties()
        .with_application_transactions(txns)
        .with_metadata(metadata);
    commit_without_data(&t, group, props)
        .await
        .map_err(|source| Error::Delta {
            table: name,
            source,
        })?;
    // The kept table does not hold this commit: read it again next time.
    lake.forget(layer, table);
    Ok(true)
}

/// Where ingest resumes a partition: the lower of the next offsets bronze
/// and silver recorded (0, its start, when either has none).
pub(crate) fn resume_at(bronze: &HashMap<i32, i64>, silver: &HashMap<i32, i64>, p: i32) -> i64 {
    let next = |m: &HashMap<i32, i64>| m.get(&p).copied().unwrap_or(0);
    next(bronze).min(next(silver))
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
