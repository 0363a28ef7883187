//! `tributary trace ORDER_ID`: one order's way from its source commits to
//! silver and gold, with the latency of each stage, from what the
//! processes recorded in the lake (no tracing backend needed):
//!
//! - every change of the order (the order row, its lines, payments and
//!   shipments) in bronze, with its source commit time (from the WAL), the
//!   Kafka partition and offset the reader gave it, and when the ingester
//!   wrote it (`ingested_at`);
//! - when silver became complete up to that commit: the first silver
//!   commit whose freshness record (`tributary.freshness` in its
//!   `commitInfo`, see `lake/src/freshness.rs`) covers the commit time. That
//!   is an upper bound of when the change became visible, exact to a batch;
//! - whether gold has the order, and when its fact table was last built;
//! - for a change made through the order API, the request that made it:
//!   its id, its W3C trace id and when it arrived, which the API wrote into
//!   the order's transaction and the reader and ingester carried into bronze
//!   (`tributary_metrics::trace`). With `[observe] otlp_endpoint` the same
//!   trace is in the collector, one span per stage.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use arrow::array::{Array, StringArray};
use arrow::datatypes::DataType;
use tributary_lake::freshness;
use tributary_stack::{Config, Platform};

/// One change of the order in bronze.
struct Change {
    table: &'static str,
    op: String,
    shard: String,
    commit_us: i64,
    ingested_us: i64,
    partition: String,
    offset: String,
    /// The API request that made the change, when it went through the API.
    request: Option<Request>,
}

struct Request {
    id: String,
    trace_id: String,
    received_us: i64,
}

fn strings(batches: &[arrow::record_batch::RecordBatch]) -> Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    for b in batches {
        let cols: Vec<StringArray> = (0..b.num_columns())
            .map(|i| {
                let c = arrow::compute::cast(b.column(i), &DataType::Utf8)?;
                Ok(c.as_any()
                    .downcast_ref::<StringArray>()
                    .expect("cast to utf8")
                    .clone())
            })
            .collect::<Result<_, arrow::error::ArrowError>>()?;
        for r in 0..b.num_rows() {
            rows.push(
                cols.iter()
                    .map(|c| {
                        if c.is_null(r) {
                            String::new()
                        } else {
                            c.value(r).to_string()
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

fn clock(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| us.to_string())
}

fn after(from_us: i64, to_us: i64) -> String {
    format!("+{:.3} s", (to_us - from_us) as f64 / 1e6)
}

pub async fn run(config: Config, order_id: i64) -> Result<()> {
    let platform = Platform::load(config)?;
    let lake = platform.lake()?;
    let session = tributary_query::Session::new(lake.clone()).await?;
    let mut changes = Vec::new();
    // The order row by its key; the others by the order id in their image.
    for (table, filter) in [
        ("orders", format!(r#"key LIKE '{{"id":{order_id},%'"#)),
        ("order_items", order_ref(order_id)),
        ("payments", order_ref(order_id)),
        ("shipments", order_ref(order_id)),
    ] {
        let sql = |trace: &str| {
            format!(
                "SELECT op, shard, CAST(commit_ts AS BIGINT) AS commit_us, \
                        CAST(ingested_at AS BIGINT) AS ingested_us, kafka_partition, kafka_offset, \
                        {trace} \
                 FROM bronze.{table} WHERE {filter} ORDER BY commit_us, lsn, ordinal"
            )
        };
        let traced = sql("request_id, CAST(requested_at AS BIGINT), traceparent");
        let batches = match session.sql(&traced).await {
            Ok(b) => b,
            // A table the lake does not have yet holds no change.
            Err(e) if tributary_model::error_chain(&e).contains("not found") => continue,
            // A table written before bronze had the trace columns (they
            // arrive with its next append).
            Err(e) if tributary_model::error_chain(&e).contains("request_id") => session
                .sql(&sql("NULL, NULL, NULL"))
                .await
                .with_context(|| format!("reading bronze.{table}"))?,
            Err(e) => return Err(e).with_context(|| format!("reading bronze.{table}")),
        };
        for r in strings(&batches)? {
            let request = (!r[6].is_empty()).then(|| Request {
                id: r[6].clone(),
                received_us: r[7].parse().unwrap_or(0),
                trace_id: r[8].split('-').nth(1).unwrap_or_default().to_string(),
            });
            changes.push(Change {
                table,
                op: r[0].clone(),
                shard: r[1].clone(),
                commit_us: r[2].parse().unwrap_or(0),
                ingested_us: r[3].parse().unwrap_or(0),
                partition: r[4].clone(),
                offset: r[5].clone(),
                request,
            });
        }
    }
    anyhow::ensure!(
        !changes.is_empty(),
        "order {order_id}: no change of it is in bronze (is the id right, and has the lake caught up? `tributary wait`)"
    );
    changes.sort_by_key(|c| (c.commit_us, c.ingested_us));
    let first = changes[0].commit_us;

    let mut out = String::new();
    writeln!(
        out,
        "order {order_id}: {} changes, first committed at {} UTC (shard {})\n",
        changes.len(),
        clock(first),
        changes[0].shard
    )?;
    // The API requests behind the changes, each with its trace.
    let mut requests: Vec<&Request> = Vec::new();
    for r in changes.iter().filter_map(|c| c.request.as_ref()) {
        if !requests.iter().any(|q| q.id == r.id) {
            requests.push(r);
        }
    }
    for r in &requests {
        writeln!(
            out,
            "request {} (trace {}): received at {} UTC",
            r.id,
            r.trace_id,
            clock(r.received_us)
        )?;
    }
    if !requests.is_empty() {
        writeln!(out)?;
    }
    writeln!(
        out,
        "| table | op | request → commit | source commit | partition/offset | in bronze | silver complete | commit → silver |"
    )?;
    writeln!(out, "|---|---|---:|---|---|---:|---:|---:|")?;
    let mut slowest = 0i64;
    // Each table's silver commits, read once.
    let mut records = std::collections::HashMap::new();
    for c in &changes {
        if !records.contains_key(c.table) {
            records.insert(c.table, freshness::records(&lake, c.table, 1000).await?);
        }
    }
    for c in &changes {
        // The earliest commit whose record covers the change's commit.
        let visible_ms = records[c.table]
            .iter()
            .filter(|(rec, _)| rec.complete_up_to_us >= c.commit_us)
            .filter_map(|(_, ts)| *ts)
            .min();
        let (silver, lat) = match visible_ms {
            Some(ms) => {
                let us = ms * 1000;
                slowest = slowest.max(us - c.commit_us);
                (after(c.commit_us, us), after(c.commit_us, us))
            }
            None => ("not yet".to_string(), "–".to_string()),
        };
        let request = c
            .request
            .as_ref()
            .map_or("–".to_string(), |r| after(r.received_us, c.commit_us));
        writeln!(
            out,
            "| {} | {} | {} | {} | {}/{} | {} | {} | {} |",
            c.table,
            c.op,
            request,
            clock(c.commit_us),
            c.partition,
            c.offset,
            after(c.commit_us, c.ingested_us),
            silver,
            lat
        )?;
    }
    // Gold: the order's lines in the fact table, and its last build.
    let gold = session
        .sql(&format!(
            "SELECT count(*) FROM gold.fct_order_line WHERE order_id = {order_id}"
        ))
        .await;
    match gold {
        Ok(b) => {
            let n = strings(&b)?
                .first()
                .and_then(|r| r.first().cloned())
                .unwrap_or_default();
            let built = lake.last_commit_ms("gold", "fct_order_line").await?;
            write!(out, "\ngold.fct_order_line: {n} lines of the order")?;
            if let Some(ms) = built {
                write!(
                    out,
                    "; table last built at {} UTC ({} after the order's first commit)",
                    clock(ms * 1000),
                    after(first, ms * 1000)
                )?;
            }
            writeln!(out)?;
        }
        Err(_) => writeln!(out, "\ngold: not built yet (`tributary etl run marts`)")?,
    }
    if slowest > 0 {
        writeln!(
            out,
            "slowest change: {:.3} s from source commit to silver",
            slowest as f64 / 1e6
        )?;
    }
    print!("{out}");
    Ok(())
}

/// A change whose row image names the order (`"order_id":N` followed by a
/// comma or the end of the object).
fn order_ref(order_id: i64) -> String {
    format!(r#"regexp_like(coalesce(after, before), '"order_id":{order_id}[,}}]')"#)
}
