//! Wiring between stages: which databases the CDC reader captures, where
//! the lake is, when the pipeline has caught up, and whether the lake equals
//! the source.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::{Array, RecordBatch, StringArray};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tributary_cdc::SourceDb;
use tributary_kafka::KafkaConfig;
use tributary_lake::{Lake, LakeConfig};
use tributary_model::domain::{Database, TABLES, slot_name, tables_of, topic_of};
use tributary_model::lsn::Lsn;

use crate::config::Config;
use crate::stack::StackState;

/// The lake settings: configured, or `<state>/lake`. Commits are claimed in
/// `lake.coordinator_dsn`, by default the `postgres` database of the local
/// stack's catalog cluster, else `[sources].catalog`.
pub fn lake_config(config: &Config) -> LakeConfig {
    let mut lake = config.lake.clone().unwrap_or_else(|| LakeConfig {
        root: config.state_dir.join("lake").to_string_lossy().into_owned(),
        s3: None,
        coordinator_dsn: None,
    });
    if lake.coordinator_dsn.is_none() {
        lake.coordinator_dsn = match (&config.sources, StackState::load(&config.state_dir)) {
            (Some(s), _) => Some(s.catalog.clone()),
            (None, Ok(Some(stack))) => Some(format!(
                "host=127.0.0.1 port={} user=tributary dbname=postgres",
                stack.catalog.port
            )),
            _ => None,
        };
    }
    lake
}

/// The source databases: `[sources]` when configured, else the local stack.
pub struct Sources {
    pub shards: Vec<String>,
    pub catalog: String,
}

impl Sources {
    pub fn resolve(config: &Config, stack: Option<&StackState>) -> Result<Sources> {
        if let Some(s) = &config.sources {
            return Ok(Sources {
                shards: s.shards.clone(),
                catalog: s.catalog.clone(),
            });
        }
        let stack =
            stack.context("no [sources] configured and no local stack: run `tributary up`")?;
        Ok(Sources {
            shards: stack.shards.iter().map(|s| s.dsn()).collect(),
            catalog: stack.catalog.dsn(),
        })
    }

    /// One CDC source per database.
    pub fn cdc_sources(&self) -> Vec<SourceDb> {
        let orders: Vec<String> = tables_of(Database::Orders)
            .map(|t| t.name.to_string())
            .collect();
        let catalog: Vec<String> = tables_of(Database::Catalog)
            .map(|t| t.name.to_string())
            .collect();
        let mut out: Vec<SourceDb> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, dsn)| SourceDb {
                db: "orders".into(),
                shard: i as u32,
                dsn: dsn.clone(),
                tables: orders.clone(),
            })
            .collect();
        out.push(SourceDb {
            db: "catalog".into(),
            shard: 0,
            dsn: self.catalog.clone(),
            tables: catalog,
        });
        out
    }

    pub fn topology(&self) -> tributary_oltp::Topology {
        tributary_oltp::Topology {
            shards: self.shards.clone(),
            catalog: self.catalog.clone(),
        }
    }

    /// The DSN of the database that holds `db`'s shard `shard`.
    fn dsn(&self, db: Database, shard: usize) -> &str {
        match db {
            Database::Orders => &self.shards[shard],
            Database::Catalog => &self.catalog,
        }
    }

    fn shard_count(&self, db: Database) -> usize {
        match db {
            Database::Orders => self.shards.len(),
            Database::Catalog => 1,
        }
    }
}

pub(crate) async fn connect(dsn: &str) -> Result<tokio_postgres::Client> {
    let mut cfg: tokio_postgres::Config = dsn.parse().context("invalid DSN")?;
    cfg.options("-c TimeZone=UTC -c extra_float_digits=1");
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {dsn}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// Waits until everything written to the sources so far is in silver:
/// every slot confirmed past the WAL position of now, and the lake's
/// recorded offsets at the end of every partition.
pub async fn wait_caught_up(
    config: &Config,
    sources: &Sources,
    kafka: &KafkaConfig,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut targets = Vec::new();
    for src in sources.cdc_sources() {
        let client = connect(&src.dsn).await?;
        let lsn: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
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
                bail!(
                    "slot {slot} did not confirm {target} within {timeout:?}: is `tributary cdc run` running?"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", "tributary-catch-up")
        .set("log_level", "3")
        .create()?;
    let lake = Lake::new(&lake_config(config))?;
    for t in TABLES {
        let topic = topic_of(&kafka.topic_prefix, t);
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let partitions = md
            .topics()
            .first()
            .map(|t| t.partitions().len() as i32)
            .unwrap_or(0);
        let mut high = BTreeMap::new();
        for p in 0..partitions {
            let (_, h) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
            if h > 0 {
                high.insert(p, h);
            }
        }
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
                bail!(
                    "the lake did not reach the end of {topic} within {timeout:?}: is `tributary lake ingest` running?"
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(())
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
        // Column list and types from the first source database.
        let client = connect(sources.dsn(t.db, 0)).await?;
        let cols = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&format!("public.{}", t.name)],
            )
            .await?;
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
                // compare floats as decimals with 9 places.
                (
                    format!("round(\"{name}\"::numeric, 9)::text"),
                    format!("CAST(CAST(\"{name}\" AS DECIMAL(38, 9)) AS VARCHAR)"),
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
        for shard in 0..sources.shard_count(t.db) {
            let client = connect(sources.dsn(t.db, shard)).await?;
            let sql = format!(
                "SELECT concat_ws('|', '{shard}', {}) FROM public.{}",
                pg_exprs.join(", "),
                t.name
            );
            for r in client.query(&sql, &[]).await? {
                source_rows.push(r.get::<_, String>(0));
            }
        }
        let sql = format!(
            "SELECT concat_ws('|', CAST(_shard AS VARCHAR), {}) AS r FROM silver.{}",
            df_exprs.join(", "),
            t.name
        );
        let silver_rows: Vec<String> = match session.sql(&sql).await {
            Ok(batches) => strings(&batches),
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
            Err(e) => return Err(e).with_context(|| format!("reading silver.{}", t.name)),
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

pub(crate) fn strings(batches: &[RecordBatch]) -> Vec<String> {
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
