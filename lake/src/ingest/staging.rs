//! One table's messages decoded and sorted, before anything is written.
//!
//! Owns the walk over a batch ([`sort`]): decoding each payload, dropping
//! replays, setting aside dead letters (what does not decode, or belongs to
//! another table), noting changes of the source's shape, and finding the
//! first event silver cannot take ([`check_event`]); and the two side
//! tables that walk feeds, `bronze._dead_letters` and
//! `bronze._schema_changes`.
//!
//! Rules kept here:
//! - A replay is recognised by position: at or below the highest (LSN,
//!   ordinal) bronze holds for its (partition, shard), or below bronze's
//!   offset. Silver takes exactly the events bronze accepted, plus those
//!   bronze took in a batch whose silver commit was lost.
//! - Ingest of a table stops right before the first event silver cannot
//!   take: everything before it is staged, it and the rest are not.
//! - A dead letter is written once: its table records its own offsets.
//! - A shape change is logged once per shard, at its first event.

use std::collections::HashMap;

use arrow::datatypes::SchemaRef;
use deltalake::kernel::Transaction;
use rdkafka::message::{Message, OwnedMessage};
use serde_json::{Value, json};
use tributary_model::error_chain;
use tributary_model::event::{ChangeEvent, Column, Op};
use tributary_model::pgtype::format_utc_micros;

use super::bronze::{bronze_row, now_us, write_append};
use super::config::{DEAD_LETTERS, SCHEMA_CHANGES};
use super::resume::{TableState, app_id};
use super::silver::{check_values, plan_silver};
use crate::schema::{dead_letter_schema, rows_to_batch, schema_changes_schema, silver_schema};
use crate::{Error, Lake, Result};

/// One table's batch, sorted by where each message goes.
pub(super) struct Sorted {
    /// The next offset per partition once the batch is applied.
    pub(super) next: HashMap<i32, i64>,
    /// Events new to bronze, as bronze rows.
    pub(super) bronze_rows: Vec<Value>,
    /// Events silver takes, in batch order.
    pub(super) silver_events: Vec<ChangeEvent>,
    /// Dead-letter rows of messages new to the dead-letter table.
    pub(super) dead: Vec<Value>,
    /// Rows for the schema-change log.
    pub(super) shape_rows: Vec<Value>,
    /// The change the table stops at: it and the messages after it are not
    /// in the other fields.
    pub(super) failure: Option<Error>,
}

/// Decodes a batch and sorts its messages: replays dropped, dead letters set
/// aside, shape changes noted, and the walk stopped at the first event
/// silver cannot take. Writes nothing; notes the batch's high-water marks
/// and shapes in `state`.
pub(super) fn sort(state: &mut TableState, messages: &[OwnedMessage]) -> Sorted {
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
    for m in messages {
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

    Sorted {
        next,
        bronze_rows,
        silver_events,
        dead,
        shape_rows,
        failure,
    }
}

/// Writes a batch's dead letters with the dead-letter table's own offsets,
/// so a crash before the bronze commit cannot write one twice.
pub(super) async fn record_dead_letters(
    lake: &Lake,
    group: &str,
    state: &mut TableState,
    dead: &[Value],
) -> Result<()> {
    if dead.is_empty() {
        return Ok(());
    }
    let mut dead_offsets: HashMap<i32, i64> = HashMap::new();
    for d in dead {
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
    let batch = rows_to_batch(dead_letter_schema(), dead)?;
    let props = lake.commit_properties().with_application_transactions(txns);
    write_append(lake, "bronze", DEAD_LETTERS, batch, None, props).await?;
    state.dead_next.extend(dead_offsets);
    tracing::warn!(table = %state.table, messages = dead.len(), "messages sent to the dead-letter table");
    Ok(())
}

/// Appends a batch's shape changes to the schema-change log. Deduplicated
/// by position: on a replay the log already holds the shape (see
/// [`track_shape`]), so nothing is written twice.
pub(super) async fn record_shapes(lake: &Lake, rows: &[Value]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let batch = rows_to_batch(schema_changes_schema(), rows)?;
    write_append(
        lake,
        "bronze",
        SCHEMA_CHANGES,
        batch,
        None,
        lake.commit_properties(),
    )
    .await
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
