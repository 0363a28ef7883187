//! Whether the pipeline has done its job: caught up with the sources
//! ([`wait_caught_up`]), silver equal to the sources row for row
//! ([`compare_silver`]), bronze without a change twice
//! ([`bronze_duplicates`]). `tributary wait` and `tributary verify`, the
//! demo, the benchmarks and the end-to-end tests all ask these.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatch, StringArray};
use rdkafka::consumer::BaseConsumer;
use tributary_model::domain::{TABLES, slot_name, topic_of};
use tributary_model::lsn::Lsn;

use crate::platform::{Platform, Sources};
use crate::postgres::connect;
use crate::{Error, Result, pg};

/// Waits until everything written to the sources so far is in silver:
/// every slot confirmed past the WAL position of now, and the lake's
/// recorded offsets at the end of every partition.
pub async fn wait_caught_up(platform: &Platform, timeout: Duration) -> Result<()> {
    let config = platform.config();
    let sources = platform.sources()?;
    let kafka = platform.kafka()?;
    let deadline = Instant::now() + timeout;
    let mut targets = Vec::new();
    for src in sources.cdc_sources() {
        let client = connect(&src.dsn).await?;
        let lsn: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(pg("reading the WAL position"))?
            .get(0);
        let slot = slot_name(&config.cdc.slot_prefix, &src.db, src.shard);
        targets.push((client, slot, lsn.parse::<Lsn>()?));
    }
    for (client, slot, target) in &targets {
        loop {
            if tributary_cdc::slot_status(client, slot)
                .await?
                .caught_up_to(*target)
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::SlotBehind {
                    slot: slot.clone(),
                    target: *target,
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let consumer: Arc<BaseConsumer> = Arc::new(
        tributary_kafka::consumer_config(kafka, "tributary-catch-up")
            .create()
            .map_err(tributary_kafka::kafka_err("creating a consumer"))?,
    );
    let lake = platform.lake()?;
    for t in TABLES {
        let topic = topic_of(&kafka.topic_prefix, t);
        let mut high = end_offsets(&consumer, &topic).await?;
        let partitions = high.len() as i32;
        high.retain(|_, h| *h > 0);
        loop {
            let (bronze, silver) = tributary_lake::ingest::committed_offsets(
                &lake,
                &config.ingest.group_id,
                t.name,
                &topic,
                partitions,
            )
            .await?;
            let done = high.iter().all(|(p, h)| {
                bronze.get(p).is_some_and(|b| b >= h) && silver.get(p).is_some_and(|s| s >= h)
            });
            if done {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::LakeBehind { topic, timeout });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(())
}

/// The end offset of every partition of `topic` (none when it does not
/// exist), read off the async threads.
async fn end_offsets(consumer: &Arc<BaseConsumer>, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let (consumer, topic) = (consumer.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        tributary_kafka::end_offsets(&*consumer, &topic, Duration::from_secs(10))
    })
    .await
    .map_err(|e| Error::Internal(format!("end offsets task: {e}")))?
    .map_err(Error::from)
}

/// One table's comparison of source and silver.
#[derive(Debug)]
pub struct TableCheck {
    pub table: String,
    pub source_rows: usize,
    pub silver_rows: usize,
    /// Rows in the source and not in silver (or differing), first few.
    pub missing: Vec<String>,
    /// Rows in silver and not in the source (or differing), first few.
    pub extra: Vec<String>,
}

impl TableCheck {
    pub fn equal(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.source_rows == self.silver_rows
    }
}

/// Compares every silver table with its source tables, row for row and
/// column for column (all shards of a table against the one silver table).
pub async fn compare_silver(
    sources: &Sources,
    session: &tributary_query::Session,
) -> Result<Vec<TableCheck>> {
    let mut out = Vec::new();
    for t in TABLES {
        let dsns = sources.dsns(t.db);
        // Column list and types from the first source database.
        let client = connect(dsns[0]).await?;
        let cols = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&format!("public.{}", t.name)],
            )
            .await
            .map_err(pg(format!("reading the columns of {}", t.name)))?;
        let mut pg_exprs = Vec::new();
        let mut df_exprs = Vec::new();
        for c in &cols {
            let (name, ty): (String, String) = (c.get(0), c.get(1));
            let (pg, df) = if ty.starts_with("timestamp") {
                (
                    format!("(extract(epoch from \"{name}\") * 1000000)::int8::text"),
                    format!("CAST(CAST(\"{name}\" AS BIGINT) AS VARCHAR)"),
                )
            } else if ty == "double precision" || ty == "real" {
                // Shortest float text differs between engines ("52" vs "52.0"):
                // compare floats in billionths, rounded the same way on both
                // sides from the same IEEE product. Not `x::numeric`:
                // PostgreSQL casts a float8 to numeric through 15 significant
                // digits, so 139.82360285249999 became 139.823602852500 and
                // rounded up where the lake's exact value rounded down.
                (
                    format!("round(((\"{name}\"::float8 * 1e9::float8)::text)::numeric)::text"),
                    format!(
                        "CAST(CAST(round(CAST(\"{name}\" AS DOUBLE) * 1000000000.0) AS DECIMAL(38, 0)) AS VARCHAR)"
                    ),
                )
            } else {
                (
                    format!("\"{name}\"::text"),
                    format!("CAST(\"{name}\" AS VARCHAR)"),
                )
            };
            pg_exprs.push(format!("coalesce({pg}, '<null>')"));
            df_exprs.push(format!("coalesce({df}, '<null>')"));
        }
        let mut source_rows = Vec::new();
        for (shard, dsn) in dsns.iter().enumerate() {
            let client = connect(dsn).await?;
            let sql = format!(
                "SELECT concat_ws('|', '{shard}', {}) FROM public.{}",
                pg_exprs.join(", "),
                t.name
            );
            let rows = client
                .query(&sql, &[])
                .await
                .map_err(pg(format!("reading {} on shard {shard}", t.name)))?;
            for r in rows {
                source_rows.push(r.get::<_, String>(0));
            }
        }
        let sql = format!(
            "SELECT concat_ws('|', CAST(_shard AS VARCHAR), {}) AS r FROM silver.{}",
            df_exprs.join(", "),
            t.name
        );
        let silver_rows: Vec<String> = match session.sql(&sql).await {
            Ok(batches) => first_column(&batches),
            // No silver table yet: it is empty.
            Err(e)
                if session
                    .sql(&format!("SELECT 1 FROM silver.{} LIMIT 0", t.name))
                    .await
                    .is_err() =>
            {
                tracing::debug!(error = %e, table = t.name, "no silver table");
                vec![]
            }
            Err(e) => {
                return Err(Error::Query {
                    context: format!("reading silver.{}", t.name),
                    source: Box::new(e),
                });
            }
        };
        source_rows.sort();
        let mut silver_sorted = silver_rows.clone();
        silver_sorted.sort();
        let (missing, extra) = diff(&source_rows, &silver_sorted);
        out.push(TableCheck {
            table: t.name.to_string(),
            source_rows: source_rows.len(),
            silver_rows: silver_sorted.len(),
            missing: missing.into_iter().take(5).collect(),
            extra: extra.into_iter().take(5).collect(),
        });
    }
    Ok(out)
}

/// The first column of query results as text, `<null>` for NULL.
pub fn first_column(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let col = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)
            .expect("castable to text");
        let a = col.as_any().downcast_ref::<StringArray>().expect("utf8");
        for i in 0..a.len() {
            out.push(if a.is_null(i) {
                "<null>".into()
            } else {
                a.value(i).to_string()
            });
        }
    }
    out
}

/// Sorted multiset difference: (in a not b, in b not a).
fn diff(a: &[String], b: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut i, mut j) = (0, 0);
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                only_a.push(x.clone());
                i += 1;
            }
            (Some(_), Some(y)) => {
                only_b.push(y.clone());
                j += 1;
            }
            (Some(x), None) => {
                only_a.push(x.clone());
                i += 1;
            }
            (None, Some(y)) => {
                only_b.push(y.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    (only_a, only_b)
}

/// Bronze must hold each change once: duplicate `event_id`s per table.
pub async fn bronze_duplicates(
    session: &tributary_query::Session,
) -> Result<BTreeMap<String, (i64, i64)>> {
    let mut out = BTreeMap::new();
    for t in TABLES {
        let sql = format!(
            "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM bronze.{}",
            t.name
        );
        let Ok(batches) = session.sql(&sql).await else {
            continue;
        };
        let v = strings_pairs(&batches);
        out.insert(t.name.to_string(), v);
    }
    Ok(out)
}

fn strings_pairs(batches: &[RecordBatch]) -> (i64, i64) {
    let b = &batches[0];
    let get = |i: usize| {
        let c = arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Int64).expect("int");
        c.as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("int64")
            .value(0)
    };
    (get(0), get(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_finds_both_sides() {
        let a: Vec<String> = ["1", "2", "2", "4"].iter().map(|s| s.to_string()).collect();
        let b: Vec<String> = ["2", "3", "4"].iter().map(|s| s.to_string()).collect();
        let (x, y) = diff(&a, &b);
        assert_eq!(x, vec!["1", "2"]);
        assert_eq!(y, vec!["3"]);
    }
}
