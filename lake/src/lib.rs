//! The lake: Delta tables in a local folder or on S3.
//!
//! - [`store`]: where tables live (`<root>/{bronze,silver,gold}/<table>`),
//!   opening them at their latest version, listing them.
//! - [`ingest`]: Kafka change topics into bronze (append-only change log) and
//!   silver (current state via MERGE), exactly once.
//!
//! Seam: [`store::Lake`] is the only way other crates reach tables, so the
//! storage options (S3 endpoint, credentials) are decided in one place.

pub mod ingest;
pub mod metrics;
pub mod schema;
pub mod store;

pub use store::{Lake, LakeConfig};

/// Errors of the lake.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("lake config: {0}")]
    Config(String),
    #[error("delta table {table}")]
    Delta {
        table: String,
        #[source]
        source: deltalake::DeltaTableError,
    },
    #[error("query over {table}")]
    DataFusion {
        table: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("arrow")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("kafka: {context}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("table {table}: {message}")]
    Schema { table: String, message: String },
    #[error("object store at {0}")]
    ObjectStore(String, #[source] object_store::Error),
}

impl Error {
    /// Whether retrying the same operation later can succeed (broker or store
    /// unavailable, commit conflict) as opposed to bad data or config.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Kafka { .. } | Error::ObjectStore(..))
            || matches!(self, Error::Delta { source, .. } if matches!(source, deltalake::DeltaTableError::VersionAlreadyExists(_) | deltalake::DeltaTableError::ObjectStore { .. }))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
