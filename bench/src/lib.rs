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

pub mod compaction;
pub mod ssb;

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
    /// A broken invariant of the data generator or of this crate.
    #[error("internal: {0}")]
    Internal(String),
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
