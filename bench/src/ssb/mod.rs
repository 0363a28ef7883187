//! The Star Schema Benchmark: data from `tpchgen`, stored as Delta tables,
//! queried hot through tributary, plain DataFusion, DuckDB and PostgreSQL.
//!
//! - [`generate`](self::generate): SSB's tables derived from TPC-H rows.
//! - [`queries`]: Q1.1 to Q4.3.
//! - `store`: the Delta tables under `<dir>/sf<scale>/lake/gold`, made once
//!   per scale and reused.
//! - `session`, `plain`, `duckdb`, `postgres`: one runner per engine, each returning
//!   the first run's rows and the timed runs' durations per query.
//! - [`answers`]: rows as text and their comparison.
//!
//! Every engine runs alone (never two at once), each query first once to
//! warm caches and then `runs` times; the median is reported. DuckDB's and
//! PostgreSQL's answers are compared with ours, and any difference fails the
//! run after the report is printed.

pub mod answers;
mod duckdb;
pub(crate) mod generate;
mod plain;
mod postgres;
pub mod queries;
mod session;
mod store;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use answers::Rows;
pub use queries::{QUERIES, Query};

use crate::{Error, Result};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// TPC-H scale factor; lineorder has about 6 000 000 × scale rows.
    pub scale: f64,
    /// Timed runs per query and engine, after one warm-up run.
    pub runs: usize,
    /// Where the data sets live (`<dir>/sf<scale>`); kept between runs.
    pub dir: PathBuf,
    /// Also run plain DataFusion over the same Parquet files (no Delta).
    pub datafusion: bool,
    /// Also run DuckDB.
    pub duckdb: bool,
    /// Also load and run PostgreSQL.
    pub postgres: bool,
    /// The Python that has the `duckdb` package.
    pub python: String,
}

impl Options {
    /// SF1, five runs, every engine.
    pub fn new(dir: PathBuf) -> Options {
        Options {
            scale: 1.0,
            runs: 5,
            dir,
            datafusion: true,
            duckdb: true,
            postgres: true,
            python: "python3".into(),
        }
    }

    fn validate(&self) -> Result<()> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(Error::Options(format!(
                "scale must be positive, not {}",
                self.scale
            )));
        }
        if self.runs == 0 {
            return Err(Error::Options("runs must be at least 1".into()));
        }
        Ok(())
    }
}

/// One engine's runs of one query.
#[derive(Clone, Debug)]
pub struct Measured {
    /// The timed runs, in order.
    pub times: Vec<Duration>,
    /// The warm-up run's answer.
    pub rows: Rows,
}

impl Measured {
    pub fn median(&self) -> Duration {
        median(&self.times)
    }
}

/// Every query hot on `engine`: one warm-up run of `first`, whose rows are
/// kept, then `runs` runs of `timed`, each timed until it returns (what it
/// returns is dropped after the clock stops).
async fn measure_hot<R>(
    engine: &str,
    queries: &[Query],
    runs: usize,
    first: impl AsyncFn(&Query) -> Result<Rows>,
    timed: impl AsyncFn(&Query) -> Result<R>,
) -> Result<Vec<Measured>> {
    let mut out = Vec::with_capacity(queries.len());
    for query in queries {
        let rows = first(query).await?;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = std::time::Instant::now();
            let result = timed(query).await?;
            times.push(started.elapsed());
            drop(result);
        }
        tracing::debug!(query = query.name, "measured on {engine}");
        out.push(Measured { times, rows });
    }
    Ok(out)
}

/// The median; the mean of the middle two for an even count.
pub fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}

/// An engine compared with ours.
#[derive(Clone, Debug)]
pub struct Other {
    /// Name and version, e.g. `DuckDB 1.4.0`.
    pub engine: String,
    /// Per query, in [`QUERIES`] order.
    pub measured: Vec<Measured>,
    /// `(query, difference)` for every query whose answer differs from ours.
    pub mismatches: Vec<(&'static str, String)>,
    /// Setup worth recording (load time, settings).
    pub notes: Vec<String>,
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub scale: f64,
    pub runs: usize,
    pub lineorder_rows: usize,
    pub data_dir: PathBuf,
    /// Generation and Delta write time, when this run made the data.
    pub generated_in: Option<Duration>,
    /// Tributary's measurements, in [`QUERIES`] order.
    pub tributary: Vec<Measured>,
    /// The same, repeated over unchanged tables with the result cache on.
    pub cached: Vec<Measured>,
    pub datafusion: Option<Other>,
    pub duckdb: Option<Other>,
    pub postgres: Option<Other>,
}

impl Report {
    /// Whether every other engine agreed with tributary on every query.
    pub fn answers_agree(&self) -> bool {
        [&self.datafusion, &self.duckdb, &self.postgres]
            .into_iter()
            .flatten()
            .all(|o| o.mismatches.is_empty())
    }

    /// The core-seconds of one query of tributary's, for `tributary
    /// capacity`: the mean of the medians times the cores it ran on.
    pub fn core_seconds_per_query(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let n = self.tributary.len().max(1) as f64;
        Self::total(&self.tributary).as_secs_f64() / n * cores
    }

    fn total(measured: &[Measured]) -> Duration {
        measured.iter().map(Measured::median).sum()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "-".into();
    }
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Star Schema Benchmark, SF{} ({} lineorder rows), data in {}",
            self.scale,
            self.lineorder_rows,
            self.data_dir.display()
        )?;
        if let Some(g) = self.generated_in {
            writeln!(f, "generated and written in {:.1} s", g.as_secs_f64())?;
        }
        writeln!(
            f,
            "median of {} hot runs after one warm-up, milliseconds",
            self.runs
        )?;
        for other in [&self.datafusion, &self.duckdb, &self.postgres]
            .into_iter()
            .flatten()
        {
            writeln!(f, "{}: {}", other.engine, other.notes.join("; "))?;
        }
        let mut header = format!("{:<6} {:>10} {:>8}", "query", "tributary", "cached");
        if self.datafusion.is_some() {
            header.push_str(&format!(
                " {:>10} {:>20}",
                "datafusion", "tributary/datafusion"
            ));
        }
        if self.duckdb.is_some() {
            header.push_str(&format!(" {:>10} {:>16}", "duckdb", "tributary/duckdb"));
        }
        if self.postgres.is_some() {
            header.push_str(&format!(" {:>10} {:>18}", "postgres", "postgres/tributary"));
        }
        writeln!(f, "{header}")?;
        let row = |name: &str,
                   ours: Duration,
                   cached: Duration,
                   plain: Option<Duration>,
                   duck: Option<Duration>,
                   pg: Option<Duration>| {
            let cached = format!("{:.2}", cached.as_secs_f64() * 1e3);
            let mut line = format!("{name:<6} {:>10} {cached:>8}", ms(ours));
            if let Some(d) = plain {
                line.push_str(&format!(" {:>10} {:>20}", ms(d), ratio(ours, d)));
            }
            if let Some(d) = duck {
                line.push_str(&format!(" {:>10} {:>16}", ms(d), ratio(ours, d)));
            }
            if let Some(p) = pg {
                line.push_str(&format!(" {:>10} {:>18}", ms(p), ratio(p, ours)));
            }
            line
        };
        for (i, query) in QUERIES.iter().enumerate() {
            let ours = self.tributary[i].median();
            let duck = self.duckdb.as_ref().map(|o| o.measured[i].median());
            let pg = self.postgres.as_ref().map(|o| o.measured[i].median());
            let cached = self.cached[i].median();
            let plain = self.datafusion.as_ref().map(|o| o.measured[i].median());
            writeln!(f, "{}", row(query.name, ours, cached, plain, duck, pg))?;
        }
        let total = |o: &Option<Other>| o.as_ref().map(|o| Report::total(&o.measured));
        writeln!(
            f,
            "{}",
            row(
                "total",
                Report::total(&self.tributary),
                Report::total(&self.cached),
                total(&self.datafusion),
                total(&self.duckdb),
                total(&self.postgres)
            )
        )?;
        for other in [&self.datafusion, &self.duckdb, &self.postgres]
            .into_iter()
            .flatten()
        {
            if other.mismatches.is_empty() {
                writeln!(
                    f,
                    "answers: {} agrees on all {} queries",
                    other.engine,
                    QUERIES.len()
                )?;
            }
            for (query, difference) in &other.mismatches {
                writeln!(
                    f,
                    "answers: {query} differs on {}: {difference}",
                    other.engine
                )?;
            }
        }
        Ok(())
    }
}

fn compare(ours: &[Measured], theirs: &[Measured]) -> Vec<(&'static str, String)> {
    QUERIES
        .iter()
        .zip(ours.iter().zip(theirs))
        .filter_map(|(q, (a, b))| {
            answers::compare(&a.rows, &b.rows)
                .err()
                .map(|e| (q.name, e))
        })
        .collect()
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
}

/// The data set for `scale` under `dir`: generated and written as Delta
/// tables when missing. Returns its lake and the lineorder row count.
pub async fn prepare(dir: &Path, scale: f64) -> Result<(tributary_lake::Lake, usize)> {
    let prepared = store::prepare(dir, scale, threads()).await?;
    Ok((prepared.lake, prepared.lineorder_rows))
}

/// Each query's answer through tributary's engine, in [`QUERIES`] order.
pub async fn answers(lake: &tributary_lake::Lake) -> Result<Vec<Rows>> {
    let session = session::open(lake, false).await?;
    let mut out = Vec::with_capacity(QUERIES.len());
    for query in &QUERIES {
        out.push(session::answer(&session, query).await?);
    }
    Ok(out)
}

/// Runs the benchmark: prepares the data, then each engine in turn.
pub async fn run(options: &Options) -> Result<Report> {
    options.validate()?;
    let prepared = store::prepare(&options.dir, options.scale, threads()).await?;
    let session = session::open(&prepared.lake, false).await?;
    tracing::info!(runs = options.runs, "running the queries on tributary");
    let tributary = session::measure(&session, &QUERIES, options.runs).await?;
    tracing::info!("running the queries again over unchanged tables, with the result cache");
    let with_cache = session::open(&prepared.lake, true).await?;
    let cached = session::measure(&with_cache, &QUERIES, options.runs).await?;
    let stats = with_cache.cache_stats();
    if stats.hits < (QUERIES.len() * options.runs) as u64 {
        return Err(Error::Options(format!(
            "the result cache answered {} of {} repeated queries over unchanged tables",
            stats.hits,
            QUERIES.len() * options.runs
        )));
    }

    let files = store::parquet_files(&prepared.lake).await?;
    let datafusion = if options.datafusion {
        tracing::info!("running the queries on plain DataFusion over the same Parquet files");
        let (version, measured) = plain::measure(&files, &QUERIES, options.runs).await?;
        Some(Other {
            engine: format!("DataFusion {version}"),
            mismatches: compare(&tributary, &measured),
            measured,
            notes: vec![
                "listing tables over the Delta tables' current files, default settings".into(),
            ],
        })
    } else {
        None
    };
    let duckdb = if options.duckdb {
        tracing::info!("running the queries on duckdb");
        let (version, measured) =
            duckdb::measure(&options.python, &files, &QUERIES, options.runs).await?;
        Some(Other {
            engine: format!("DuckDB {version}"),
            mismatches: compare(&tributary, &measured),
            measured,
            notes: vec!["read_parquet over the Delta tables' current files".into()],
        })
    } else {
        None
    };

    let postgres = if options.postgres {
        tracing::info!("loading postgres");
        let cluster = postgres::Cluster::start()?;
        let client = cluster.connect().await?;
        let loaded = postgres::load(&client, &session).await?;
        tracing::info!(
            seconds = loaded.as_secs_f64(),
            "running the queries on postgres"
        );
        let measured = postgres::measure(&client, &QUERIES, options.runs).await?;
        let settings: Vec<String> = postgres::SETTINGS
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let other = Other {
            engine: cluster
                .version()
                .replace("postgres (PostgreSQL)", "PostgreSQL"),
            mismatches: compare(&tributary, &measured),
            measured,
            notes: vec![
                format!("loaded with COPY in {:.1} s", loaded.as_secs_f64()),
                settings.join(" "),
            ],
        };
        drop(client);
        drop(cluster);
        Some(other)
    } else {
        None
    };

    Ok(Report {
        scale: options.scale,
        runs: options.runs,
        lineorder_rows: prepared.lineorder_rows,
        data_dir: store::scale_dir(&options.dir, options.scale),
        generated_in: prepared.generated_in,
        tributary,
        cached,
        datafusion,
        duckdb,
        postgres,
    })
}
