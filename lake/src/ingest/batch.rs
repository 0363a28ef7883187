//! One table's batch in two commits: silver, then bronze.
//!
//! Owns [`stage_batch`] (the batch sorted by [`super::staging`], its dead
//! letters and shape changes written, then merged into silver with its
//! offsets and freshness record) and [`finish_batch`] (its rows appended to
//! bronze with its offsets).
//!
//! Rules kept here:
//! - Silver goes first, because freshness is measured there: in a round of
//!   several tables, no silver commit waits for a bronze one.
//! - Both halves carry their own offsets, so a crash between them leaves
//!   bronze behind silver, and the replay after it writes bronze only.
//! - Every batch records its offsets, even one of replays only, so the
//!   lake's offsets always reach the end of what was consumed.
//! - A traced change (one whose event carries a `traceparent` header, see
//!   `tributary_metrics::trace`) keeps its trace in bronze, and its batch
//!   is a span of that trace once bronze is committed.

/// The service name of the ingester's spans.
const SERVICE: &str = "tributary-lake";

use std::collections::HashMap;
use std::time::Instant;

use deltalake::kernel::Transaction;
use rdkafka::message::OwnedMessage;
use serde_json::Value;
use tributary_metrics::otlp::{self, Kind, Span};
use tributary_metrics::trace::TraceContext;
use tributary_model::event::Op;

use super::bronze::{now_us, write_append};
use super::resume::{TableState, app_id, commit_offsets_only};
use super::silver::merge_silver;
use super::staging::{self, Sorted};
use crate::schema::{bronze_schema, rows_to_batch};
use crate::{Error, Lake, Result};

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
    /// When the batch started, for its spans (microseconds since the epoch).
    started_us: i64,
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

/// The first half of a batch: sorts it ([`staging::sort`]), writes its dead
/// letters and shape changes, and merges it into silver with its offsets.
/// Silver goes first because freshness is measured there: in a round of
/// several tables, no silver commit waits for a bronze one. Both halves
/// carry their own offsets, so a crash between them leaves bronze behind
/// silver, and the replay after it writes bronze only.
pub(crate) async fn stage_batch(
    lake: &Lake,
    group: &str,
    state: &mut TableState,
    messages: Vec<OwnedMessage>,
) -> Result<Staged> {
    let started = Instant::now();
    let started_us = now_us();
    let Sorted {
        next,
        bronze_rows,
        silver_events,
        dead,
        shape_rows,
        failure,
    } = staging::sort(state, &messages);
    let dead_count = dead.len();
    staging::record_dead_letters(lake, group, state, &dead).await?;
    staging::record_shapes(lake, &shape_rows).await?;
    if next.is_empty() {
        // The first message already stopped the table: nothing to commit.
        return Err(failure.unwrap_or_else(|| {
            Error::Internal(format!("an empty batch of {} reached staging", state.table))
        }));
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
        started_us,
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
        started_us,
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
        if otlp::enabled() {
            record_spans(&state.table, &bronze_rows, started_us, silver_ms);
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

/// Distinct traces one batch records a span for at most.
const SPANS_PER_BATCH: usize = 256;

/// One span per traced transaction in the batch: from the batch's start
/// until its bronze commit, under the change reader's span (the events'
/// `traceparent` header, kept in bronze).
fn record_spans(table: &str, bronze_rows: &[Value], started_us: i64, silver_ms: u64) {
    let mut seen: HashMap<&str, i64> = HashMap::new();
    for row in bronze_rows {
        if let Some(tp) = row.get("traceparent").and_then(Value::as_str)
            && (seen.len() < SPANS_PER_BATCH || seen.contains_key(tp))
        {
            *seen.entry(tp).or_default() += 1;
        }
    }
    let end = now_us();
    for (tp, events) in seen {
        let Some(parent) = TraceContext::parse(tp) else {
            continue;
        };
        otlp::record(
            Span::new(
                SERVICE,
                format!("ingest {table}"),
                Kind::Consumer,
                parent.child(),
                Some(&parent),
                started_us,
                end,
            )
            .attr("messaging.system", "kafka")
            .attr("tributary.table", table)
            .attr("tributary.events", events)
            .attr("tributary.silver_ms", silver_ms as i64),
        );
    }
}
