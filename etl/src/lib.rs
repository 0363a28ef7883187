//! Transformations inside the lake.
//!
//! - [`marts`]: the gold star schema — SCD2 dimensions built from the bronze
//!   change log, facts and aggregates built with DataFusion SQL from silver —
//!   incremental by Delta version, with data tests that gate every commit
//!   ([`test_marts`] runs them on their own) and the models as a DAG
//!   ([`models`], for listing).
//!
//! - [`profile`]: the customer risk profiles the fraud detector reads,
//!   computed with polars (and, as its reference, DataFusion SQL).
//!
//! Seam: bronze and silver are read and gold written only through
//! [`tributary_lake::Lake`]. A build reads every source at one pinned
//! version, so all gold tables of one build describe the same moment, and
//! records those versions in the same Delta commits as its output.
//!
//! ```no_run
//! # async fn demo(lake: tributary_lake::Lake) -> tributary_etl::Result<()> {
//! let report = tributary_etl::build_marts(&lake).await?;
//! println!("{report}");
//! # Ok(())
//! # }
//! ```

pub mod marts;
pub mod profile;

pub use marts::{
    BuildOptions, DataTestReport, MartTable, MartsReport, Mode, ModelInfo, ModelKind, build_marts,
    build_marts_with, follow_marts, models, source_versions, test_marts,
};

/// Errors of the ETL jobs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Boxed: the lake error is large and would bloat every `Result` here.
    #[error("lake")]
    Lake(#[source] Box<tributary_lake::Error>),
    /// A table the marts read does not exist yet (nothing ingested).
    #[error("source table {layer}.{table} does not exist yet; run ingest first")]
    MissingSource {
        layer: &'static str,
        table: &'static str,
    },
    /// The data tests found problems in the new marts; nothing was written.
    #[error("data tests failed; gold is unchanged\n{0}")]
    DataTests(DataTestReport),
    /// A data test's query failed to run: a bug in the test.
    #[error("data test {test}")]
    DataTest {
        test: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// A bronze row that cannot be read back: a broken invariant of ingest.
    #[error("reading bronze")]
    Bronze(#[source] marts::BadChange),
    /// Fault injection in tests.
    #[doc(hidden)]
    #[error("run stopped on purpose after {0} gold commits")]
    Injected(usize),
    /// A model's SQL failed to plan or run: a bug in the model or a silver
    /// schema that changed under it.
    #[error("model {model}")]
    Model {
        model: &'static str,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("reading {table}")]
    Source {
        table: &'static str,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("writing gold.{table}")]
    Write {
        table: &'static str,
        #[source]
        source: deltalake::DeltaTableError,
    },
    /// Reading a Delta table's snapshot or files.
    #[error("reading silver.{table}")]
    Read {
        table: &'static str,
        #[source]
        source: deltalake::DeltaTableError,
    },
    /// A polars plan failed (a file it cannot decode, a column of an
    /// unexpected type).
    #[error("polars over {table}: {message}")]
    Polars {
        table: &'static str,
        message: String,
    },
    #[error("preparing rows of gold.{table}")]
    Arrow {
        table: &'static str,
        #[source]
        source: arrow::error::ArrowError,
    },
}

impl Error {
    /// Whether running the build again later can succeed (store unavailable,
    /// a concurrent commit), as opposed to a broken model or missing input.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Lake(e) => e.is_transient(),
            Error::Write { source, .. } => matches!(
                source,
                deltalake::DeltaTableError::VersionAlreadyExists(_)
                    | deltalake::DeltaTableError::ObjectStore { .. }
            ),
            _ => false,
        }
    }
}

impl From<tributary_lake::Error> for Error {
    fn from(source: tributary_lake::Error) -> Self {
        Error::Lake(Box::new(source))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
