//! Silver follows the source's schema.
//!
//! Each event carries its columns. Before a merge, silver gains the columns
//! the source added and widens the types the source widened (a rewrite of
//! the table: delta-rs cannot read Delta's type widening); dropped and
//! renamed columns stay, NULL on rows written after. Every change is
//! logged in `bronze._schema_changes` and in the commit that makes it.
//!
//! Rules kept here:
//! - A type silver cannot widen to without loss stops the table right
//!   before the event ([`crate::Error::Incompatible`]), naming the column,
//!   the LSN and the fix ([`retype_silver_column`]).
//! - The log row is written after the schema commit: a crash in between
//!   loses the row, never doubles it.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use deltalake::DeltaTable;
use deltalake::kernel::StructField;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use serde_json::{Value, json};
use tributary_model::event::{ChangeEvent, Column};
use tributary_model::pgtype::format_utc_micros;

use super::is_meta;
use crate::ingest::bronze::{now_us, write_append};
use crate::ingest::config::SCHEMA_CHANGES;
use crate::schema::{SilverChange, evolve, rows_to_batch, schema_changes_schema, silver_schema};
use crate::store::query_table;
use crate::{Error, Lake, Result};

/// Opens silver for a segment of events, creating it on first use and
/// evolving its schema (added columns, widened types) so every event fits.
/// Returns the table and its schema.
pub(super) async fn prepare_silver(
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
            lake.open("silver", table).await?.ok_or_else(|| {
                Error::Internal(format!("{name} does not open right after its create"))
            })?
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
pub(crate) fn plan_silver<'a>(
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
