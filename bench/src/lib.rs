//! Benchmarks of tributary against the tools analysts would otherwise use.
//!
//! - [`ssb`]: the Star Schema Benchmark (O'Neil et al.). Derives SSB's
//!   `lineorder` and dimensions from TPC-H data made by `tpchgen`, stores them
//!   as Delta tables, and runs the 13 queries through tributary's query
//!   engine, DuckDB and PostgreSQL, checking that all give the same answers.
//!
//! - [`compaction`]: a silver-like table after a day of small MERGE
//!   commits, queried before and after compaction and a checkpoint.
//!
//! - [`cdc`]: the CDC reader against PostgreSQL's own tools
//!   (`pg_recvlogical`, `COPY`) on the same database and write load, into
//!   the broker and into a discard sink, and the broker alone. Every run
//!   checks the broker holds exactly one event per change and per snapshot
//!   row, and fails otherwise.
//!
//! - [`lake`]: the whole pipeline under a sustained write load on a stack of
//!   its own: freshness (commit to silver), CDC against ingest throughput,
//!   backlog, files, the ingester's memory.
//!
//! - [`fraud`]: the fraud detector on a stack of its own under labelled
//!   traffic: precision and recall per rule, equality with a batch oracle
//!   in SQL, latency, kills, an idle shard, memory per customer.
//!
//! - [`profile`]: the customer risk-profile job on polars against the
//!   same profile in DataFusion SQL, over the same silver tables.
//!
//! - [`workflows`]: the scheduler's delay over a compressed day of minute
//!   schedules against a polling reference, and takeovers of a SIGKILLed
//!   leader under many short jobs (no run doubled or lost).
//!
//! - [`cache`]: the product cache against PostgreSQL alone under the same
//!   Zipf browse load while prices change: hit ratio, database reads saved,
//!   latency, invalidation lag, and a checker that no read was stale.
//!
//! - [`capacity`]: not a benchmark but what the benchmarks are for: the
//!   parts a load needs, from the per-core rates `lake` (and `ssb`) measured.
//!
//! The benchmarks that need PostgreSQL or a broker start from
//! [`tributary_stack`] (the local stack, its PostgreSQL programs and its
//! broker); [`process`] and [`scrape`] read what `/proc` and a process's
//! `/metrics` say.
//!
//! Each benchmark is a module with an options struct and an async `run` that
//! returns a report; the CLI (`tributary bench <name>`) only parses flags and
//! prints the report.
//!
//! ```no_run
//! # async fn demo() -> tributary_bench::Result<()> {
//! use tributary_bench::ssb;
//! let options = ssb::Options::new("/tmp/ssb".into());
//! let report = ssb::run(&options).await?;
//! println!("{report}");
//! # Ok(())
//! # }
//! ```

pub mod cache;
pub mod capacity;
pub mod cdc;
mod children;
pub mod compaction;
pub mod drill;
pub mod fraud;
pub mod gateway;
pub mod lake;
pub mod process;
pub mod profile;
pub mod scrape;
pub mod ssb;
pub mod workflows;

/// Errors of the benchmarks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad benchmark option: {0}")]
    Options(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("arrow")]
    Arrow(#[from] arrow::error::ArrowError),
    // Boxed: the lake error is large and would bloat every `Result` here.
    #[error("lake")]
    Lake(#[source] Box<tributary_lake::Error>),
    #[error("writing delta table {table}")]
    Delta {
        table: String,
        #[source]
        source: deltalake::DeltaTableError,
    },
    #[error("{query} through tributary")]
    Query {
        query: String,
        #[source]
        source: Box<tributary_query::Error>,
    },
    /// DuckDB (run through `python3`) is missing or failed.
    #[error("duckdb: {0}")]
    DuckDb(String),
    /// The scratch PostgreSQL cluster could not be made or started.
    #[error("postgres setup: {0}")]
    PostgresSetup(String),
    #[error("postgres: {context}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The local stack, the configuration, or a pipeline check.
    #[error(transparent)]
    Stack(Box<tributary_stack::Error>),
    /// The pipeline did not catch up with the load; its processes' logs say why.
    #[error("see {logs}")]
    Pipeline {
        logs: String,
        #[source]
        source: Box<tributary_stack::Error>,
    },
    #[error(transparent)]
    Kafka(#[from] tributary_kafka::Error),
    #[error("kafka: {context}")]
    KafkaClient {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("the risk-profile job")]
    Etl(#[source] Box<tributary_etl::Error>),
    #[error("the CDC reader failed")]
    Cdc(#[source] Box<tributary_cdc::Error>),
    #[error("order services")]
    Oltp(#[source] Box<tributary_oltp::Error>),
    #[error(transparent)]
    Model(#[from] tributary_model::Error),
    #[error("{context}")]
    Http {
        context: String,
        #[source]
        source: reqwest::Error,
    },
    /// A count that contradicts the pipeline's promise (an event lost or
    /// doubled): the measurement is void.
    #[error("wrong count: {0}")]
    Count(String),
    /// The benchmark could not finish as set up: a process exited, a
    /// deadline passed.
    #[error("{0}")]
    Run(String),
    /// A broken invariant of the data generator or of this crate.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<tributary_stack::Error> for Error {
    fn from(source: tributary_stack::Error) -> Self {
        Error::Stack(Box::new(source))
    }
}

impl From<tributary_cdc::Error> for Error {
    fn from(source: tributary_cdc::Error) -> Self {
        Error::Cdc(Box::new(source))
    }
}

impl From<tributary_lake::Error> for Error {
    fn from(source: tributary_lake::Error) -> Self {
        Error::Lake(Box::new(source))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a description to an I/O error.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Attaches a description to a PostgreSQL error.
pub(crate) fn pg(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let context = context.into();
    move |source| Error::Postgres { context, source }
}

/// Attaches a description to a Kafka client error.
pub(crate) fn kafka(
    context: impl Into<String>,
) -> impl FnOnce(rdkafka::error::KafkaError) -> Error {
    let context = context.into();
    move |source| Error::KafkaClient { context, source }
}

/// Attaches the query (or what was asked of the engine) to a query error.
pub(crate) fn query(query: impl Into<String>) -> impl FnOnce(tributary_query::Error) -> Error {
    let query = query.into();
    move |source| Error::Query {
        query,
        source: Box::new(source),
    }
}

/// A query session without the result cache: a benchmark that runs a
/// statement again over unchanged tables measures the engine, not a lookup.
pub(crate) async fn engine_session(
    lake: &tributary_lake::Lake,
) -> Result<tributary_query::Session> {
    let config = tributary_query::SqlConfig {
        result_cache: tributary_query::config::CacheSize(0),
        ..Default::default()
    };
    tributary_query::Session::with_config(lake.clone(), &config)
        .await
        .map_err(query("session"))
}

/// Nearest-rank percentile of sorted values (NaN when there are none).
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
