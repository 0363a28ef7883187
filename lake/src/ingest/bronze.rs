//! Bronze: the append-only change log, one row per change event as it
//! arrived, and the append every bronze table (and silver's insert-only
//! path) uses.
//!
//! Rule kept here: an append carries the caller's commit properties, so the
//! offsets of what it holds land in the same commit; a table is created by
//! its first append.

use arrow::array::RecordBatch;
use deltalake::DeltaTable;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use rdkafka::message::{Headers, Message, OwnedMessage};
use serde_json::{Value, json};
use tributary_metrics::trace::{HEADER_REQUEST_ID, HEADER_REQUESTED_US, HEADER_TRACEPARENT};
use tributary_model::event::ChangeEvent;
use tributary_model::pgtype::format_utc_micros;

use super::config::SILVER_TARGET_FILE_SIZE;
use crate::{Error, Lake, Result};

pub(crate) use tributary_metrics::otlp::now_us;

/// A header's value as text, when the message has it and it is UTF-8.
fn header<'a>(m: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

pub(crate) fn bronze_row(ev: &ChangeEvent, m: &OwnedMessage, ingested: &str) -> Value {
    let commit = format_utc_micros(ev.source.ts_us);
    // The writer's trace (see `tributary_metrics::trace`), checked here:
    // headers are whatever a producer put there.
    let traceparent = header(m, HEADER_TRACEPARENT)
        .and_then(tributary_metrics::trace::TraceContext::parse)
        .map(|t| t.header());
    let request_id = traceparent
        .as_ref()
        .and(header(m, HEADER_REQUEST_ID))
        .filter(|r| r.len() <= 128);
    let requested_at = traceparent
        .as_ref()
        .and(header(m, HEADER_REQUESTED_US))
        .and_then(|us| us.parse::<i64>().ok())
        .map(format_utc_micros);
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
        "traceparent": traceparent,
        "request_id": request_id,
        "requested_at": requested_at,
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
pub(crate) async fn append_to(
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
    if layer == "bronze" {
        // Tables written before a column was added to the bronze schema
        // (the trace columns) take it on their next append.
        w = w.with_schema_mode(SchemaMode::Merge);
    }
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
