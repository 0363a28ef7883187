//! Transformations inside the lake.
//!
//! - [`marts`]: the gold star schema (dimensions, facts, aggregates) rebuilt
//!   from silver with DataFusion SQL and written with Delta overwrites.
//!
//! Seam: silver is read and gold written only through
//! [`tributary_lake::Lake`]. A build reads every silver table at one pinned
//! version, so all gold tables of one build describe the same moment.
//!
//! ```no_run
//! # async fn demo(lake: tributary_lake::Lake) -> tributary_etl::Result<()> {
//! let report = tributary_etl::build_marts(&lake).await?;
//! println!("{report}");
//! # Ok(())
//! # }
//! ```

pub mod marts;

pub use marts::{MartTable, MartsReport, ModelInfo, build_marts, models};

/// Errors of the ETL jobs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Boxed: the lake error is large and would bloat every `Result` here.
    #[error("lake")]
    Lake(#[source] Box<tributary_lake::Error>),
    /// A silver table the marts read does not exist yet (nothing ingested).
    #[error("source table silver.{0} does not exist yet; run ingest first")]
    MissingSource(&'static str),
    /// A model's SQL failed to plan or run: a bug in the model or a silver
    /// schema that changed under it.
    #[error("model {model}")]
    Model {
        model: &'static str,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("reading silver.{table}")]
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
