//! Change events into silver: one MERGE per segment between truncates,
//! newest change per key, or a plain append when every change of the batch
//! is an insert above every key silver holds.
//!
//! Rules kept here:
//! - A change is applied only when its (commit LSN, ordinal) is newer than
//!   the row's, so replays and out-of-order delivery cannot move a row
//!   backwards.
//! - An unchanged TOAST column keeps the value silver (or an earlier change
//!   of the batch) holds; it is never overwritten with NULL.
//! - A truncate removes only the rows of its shard written before it.
//! - The batch's offsets ride on its last commit only.

use std::collections::HashMap;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use serde_json::{Map, Value, json};
use tributary_model::domain::silver_columns as meta;
use tributary_model::event::{ChangeEvent, Op};
use tributary_model::pgtype::format_utc_micros;

use super::evolution::prepare_silver;
use super::is_meta;
use super::validation::check_values;
use crate::ingest::bronze::{append_to, write_append};
use crate::ingest::resume::commit_offsets_only;
use crate::schema::{
    SOURCE_OP, SOURCE_UNCHANGED, merge_source_schema, rows_to_batch, silver_schema,
};
use crate::store::{col_i64, query_table};
use crate::{Error, Lake, Result};

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
    let keys = newest_keys(&events);
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

/// The key columns as the newest shape of the batch names them.
fn newest_keys(events: &[ChangeEvent]) -> Vec<String> {
    events
        .iter()
        .max_by_key(|e| e.position())
        .map(|e| {
            e.columns
                .iter()
                .filter(|c| c.key)
                .map(|c| c.name.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Keeps the newest change per key. Unchanged TOAST columns of a change are
/// filled from the previous change of the same key in the batch when that
/// one carried the value: silver's stored value is older than it.
///
/// Relies on all changes of a key reaching one partition in position order
/// (the key decides the partition; replays are dropped by position), so an
/// earlier change of the batch is never older than silver's row.
fn collapse(mut events: Vec<ChangeEvent>) -> Vec<ChangeEvent> {
    let keys = newest_keys(&events);
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
