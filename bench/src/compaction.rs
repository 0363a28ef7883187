//! What compaction buys: a silver-like table built the way ingest builds
//! it, through many small MERGE commits (by default 1,440: one a minute for
//! a day), queried before and after `optimize` + checkpoint.
//!
//! Odd commits append new orders; even ones MERGE new orders and move some
//! recent ones to their next status, as the order service does. A MERGE
//! rewrites every file holding a row it changes into one new file (delta-rs
//! 1.1.3), so updates of recent orders fold the recent small files together
//! while older ones stay: the file count grows with the day. (With MERGE
//! alone and updates reaching back, delta-rs rewrites the whole table each
//! commit and the table stays one file: the cost is then write
//! amplification and log length, not file count.) The
//! queries are the two an analyst runs most: a point lookup by key and an
//! aggregate over the whole table, each timed from opening the table at its
//! latest version to the last row.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::SessionContext;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use tributary_lake::maintenance::{self, OptimizeOptions};
use tributary_lake::{Lake, LakeConfig};
use tributary_query::Session;

use crate::ssb::median;
use crate::{Error, Result, io, query};

const TABLE: &str = "orders";
const STATUSES: [&str; 4] = ["placed", "paid", "shipped", "delivered"];

/// What to build and how often to time each query.
#[derive(Clone, Debug)]
pub struct Options {
    /// A fresh lake is made here (anything in it is deleted first).
    pub dir: PathBuf,
    pub commits: usize,
    /// New orders per commit.
    pub inserts: usize,
    /// Recent orders moved to their next status per commit.
    pub updates: usize,
    /// Timed runs per query, after one warm-up run.
    pub runs: usize,
    pub target_size: u64,
}

impl Options {
    pub fn new(dir: PathBuf) -> Self {
        Options {
            dir,
            commits: 1440,
            inserts: 40,
            updates: 20,
            runs: 5,
            target_size: 128 << 20,
        }
    }
}

/// The table and its query times at one moment.
#[derive(Clone, Debug)]
pub struct State {
    pub files: usize,
    pub bytes: u64,
    /// JSON commits a reader replays after the last checkpoint.
    pub log_tail: usize,
    pub point: Duration,
    pub aggregate: Duration,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub options: Options,
    pub build: Duration,
    pub rows: i64,
    pub before: State,
    pub after: State,
    pub optimize: Duration,
    pub checkpoint: Duration,
    pub debug_build: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "silver-like table: {} commits (odd: append of {} orders; even: MERGE of {} new + {} updated), {} rows, built in {:.1}s{}",
            o.commits,
            o.inserts,
            o.inserts,
            o.updates,
            self.rows,
            self.build.as_secs_f64(),
            if self.debug_build {
                " [debug build: times are not representative]"
            } else {
                ""
            }
        )?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let (b, a) = (&self.before, &self.after);
        writeln!(
            f,
            "{:<26} {:>12} {:>12} {:>8}",
            "", "before", "after", "ratio"
        )?;
        writeln!(
            f,
            "{:<26} {:>12} {:>12} {:>7.1}x",
            "data files",
            b.files,
            a.files,
            ratio(b.files as f64, a.files as f64)
        )?;
        writeln!(
            f,
            "{:<26} {:>12} {:>12} {:>7.1}x",
            "bytes",
            b.bytes,
            a.bytes,
            ratio(b.bytes as f64, a.bytes as f64)
        )?;
        writeln!(
            f,
            "{:<26} {:>12} {:>12}",
            "log commits after ckpt", b.log_tail, a.log_tail
        )?;
        writeln!(
            f,
            "{:<26} {:>10.1}ms {:>10.1}ms {:>7.1}x",
            "point lookup (median)",
            ms(b.point),
            ms(a.point),
            ratio(ms(b.point), ms(a.point))
        )?;
        writeln!(
            f,
            "{:<26} {:>10.1}ms {:>10.1}ms {:>7.1}x",
            "aggregate (median)",
            ms(b.aggregate),
            ms(a.aggregate),
            ratio(ms(b.aggregate), ms(a.aggregate))
        )?;
        writeln!(
            f,
            "optimize {:.2}s, checkpoint {:.2}s (median of {} runs per query)",
            self.optimize.as_secs_f64(),
            self.checkpoint.as_secs_f64(),
            o.runs
        )
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
        Field::new("version", DataType::Int64, false),
    ]))
}

/// The source rows of commit `k`: `inserts` new orders, and `updates`
/// orders of the last few commits moved on (deterministic, no RNG).
fn commit_rows(o: &Options, k: usize) -> Result<RecordBatch> {
    let mut ids = Vec::new();
    let mut status = Vec::new();
    for i in 0..o.inserts {
        ids.push((k * o.inserts + i) as i64);
        status.push(STATUSES[0]);
    }
    if k > 0 {
        let recent = (k.min(8) * o.inserts) as i64;
        let first = (k * o.inserts) as i64 - recent;
        for j in 0..o.updates.min(recent as usize) {
            // Spread over the recent window, a different stride each commit.
            let id = first + ((j as i64 * 7919 + k as i64 * 31) % recent);
            if ids.contains(&id) {
                continue;
            }
            ids.push(id);
            status.push(STATUSES[1 + (k + j) % 3]);
        }
    }
    let n = ids.len();
    let customers = ids.iter().map(|i| i % 5000);
    let amounts = ids.iter().map(|i| (i % 997) as f64 * 1.25);
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Int64Array::from_iter_values(customers)),
            Arc::new(StringArray::from(status)),
            Arc::new(Float64Array::from_iter_values(amounts)),
            Arc::new(Int64Array::from(vec![k as i64; n])),
        ],
    )?)
}

/// The bench table, which must exist by now.
async fn open_table(lake: &Lake) -> Result<DeltaTable> {
    lake.open("silver", TABLE)
        .await?
        .ok_or_else(|| Error::Internal("the bench table vanished".into()))
}

fn delta_err(source: DeltaTableError) -> Error {
    Error::Delta {
        table: format!("silver.{TABLE}"),
        source,
    }
}

/// Appends `rows` to the bench table through `table`, its handle.
async fn append(table: DeltaTable, rows: RecordBatch) -> Result<()> {
    table
        .write(vec![rows])
        .with_save_mode(SaveMode::Append)
        .await
        .map_err(delta_err)?;
    Ok(())
}

async fn merge(lake: &Lake, batch: RecordBatch) -> Result<()> {
    let t = open_table(lake).await?;
    let source = SessionContext::new()
        .read_batch(batch)
        .map_err(|e| Error::Internal(format!("source batch: {e}")))?;
    let cols = ["id", "customer_id", "status", "amount", "version"];
    t.merge(source, "target.id = source.id")
        .with_source_alias("source")
        .with_target_alias("target")
        .when_matched_update(|mut u| {
            for c in &cols[1..] {
                u = u.update(*c, format!("source.{c}"));
            }
            u
        })
        .and_then(|m| {
            m.when_not_matched_insert(|mut i| {
                for c in cols {
                    i = i.set(c, format!("source.{c}"));
                }
                i
            })
        })
        .map_err(delta_err)?
        .await
        .map_err(delta_err)?;
    Ok(())
}

fn log_tail(dir: &std::path::Path) -> Result<usize> {
    let log = dir.join("silver").join(TABLE).join("_delta_log");
    let last: Option<u64> = std::fs::read(log.join("_last_checkpoint"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["version"].as_u64());
    let mut n = 0;
    for e in std::fs::read_dir(&log).map_err(io(format!("listing {}", log.display())))? {
        let name = e
            .map_err(io(format!("listing {}", log.display())))?
            .file_name();
        let name = name.to_string_lossy();
        if let Some(v) = name
            .strip_suffix(".json")
            .and_then(|v| v.parse::<u64>().ok())
            && last.is_none_or(|l| v > l)
        {
            n += 1;
        }
    }
    Ok(n)
}

async fn time_query(session: &Session, sql: &str, runs: usize) -> Result<(Duration, String)> {
    let run = || async { session.sql(sql).await.map_err(query(sql)) };
    let answer = arrow::util::pretty::pretty_format_batches(&run().await?)?.to_string();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        drop(run().await?);
        times.push(started.elapsed());
    }
    Ok((median(&times), answer))
}

const POINT: &str = "SELECT * FROM silver.orders WHERE id = 12345";
const AGGREGATE: &str = "SELECT status, count(*) AS n, sum(amount) AS amount FROM silver.orders GROUP BY status ORDER BY status";

async fn measure(lake: &Lake, o: &Options) -> Result<(State, Vec<String>)> {
    let t = open_table(lake).await?;
    let (files, bytes) = maintenance::file_stats(&t, TABLE)?;
    // A session of its own, so nothing is cached from the other state.
    let session = crate::engine_session(lake).await?;
    let (point, a) = time_query(&session, POINT, o.runs).await?;
    let (aggregate, b) = time_query(&session, AGGREGATE, o.runs).await?;
    Ok((
        State {
            files,
            bytes,
            log_tail: log_tail(&o.dir)?,
            point,
            aggregate,
        },
        vec![a, b],
    ))
}

/// Builds the table, measures, compacts and checkpoints, measures again.
/// Fails when the answers differ after compaction.
pub async fn run(o: &Options) -> Result<Report> {
    if o.commits == 0 || o.inserts == 0 {
        return Err(Error::Options(
            "--commits and --inserts must be above 0".into(),
        ));
    }
    if o.dir.exists() {
        std::fs::remove_dir_all(&o.dir).map_err(io(format!("clearing {}", o.dir.display())))?;
    }
    let lake = Lake::new(&LakeConfig {
        root: o.dir.display().to_string(),
        s3: None,
        coordinator_dsn: None,
    })?;
    let started = Instant::now();
    let first = commit_rows(o, 0)?;
    append(lake.table_handle("silver", TABLE).await?, first).await?;
    for k in 1..o.commits {
        if k % 2 == 1 {
            // New orders only: a blind append, as bronze and a silver
            // insert-only batch write. It adds one small file.
            let rows = commit_rows(o, k)?;
            let inserts = rows.slice(0, o.inserts.min(rows.num_rows()));
            append(open_table(&lake).await?, inserts).await?;
        } else {
            merge(&lake, commit_rows(o, k)?).await?;
        }
        if k % 100 == 0 {
            tracing::info!(commit = k, of = o.commits, "building the bench table");
        }
    }
    let build = started.elapsed();
    let (before, answers_before) = measure(&lake, o).await?;

    let started = Instant::now();
    let options = OptimizeOptions {
        target_size: o.target_size,
        ..OptimizeOptions::default()
    };
    maintenance::optimize(&lake, "silver", TABLE, &options).await?;
    let optimize = started.elapsed();
    let started = Instant::now();
    maintenance::checkpoint(&lake, "silver", TABLE, false).await?;
    let checkpoint = started.elapsed();

    let (after, answers_after) = measure(&lake, o).await?;
    if answers_before != answers_after {
        return Err(Error::Internal(format!(
            "answers differ after compaction:\n{answers_before:?}\n{answers_after:?}"
        )));
    }
    let session = Session::new(lake.clone()).await.map_err(query("session"))?;
    let rows = session
        .sql("SELECT count(*) FROM silver.orders")
        .await
        .map_err(query("count"))?;
    let rows = rows
        .first()
        .and_then(|b| b.column(0).as_any().downcast_ref::<Int64Array>())
        .map(|a| a.value(0))
        .unwrap_or(0);
    Ok(Report {
        options: o.clone(),
        build,
        rows,
        before,
        after,
        optimize,
        checkpoint,
        debug_build: cfg!(debug_assertions),
    })
}
