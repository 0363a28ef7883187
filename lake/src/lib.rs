//! The lake: Delta tables in a local folder or on S3.
//!
//! - [`store`]: where tables live (`<root>/{bronze,silver,gold}/<table>`),
//!   opening them at their latest version, listing them.
//! - [`check`]: whether the store refuses a second create of a key, which
//!   is what keeps concurrent Delta writers apart without a coordinator.
//! - [`ingest`]: Kafka change topics into bronze (append-only change log) and
//!   silver (current state via MERGE), exactly once.
//! - [`dlq`]: the dead letters ingest set aside, listed and replayed.
//!
//! - [`maintenance`]: compaction, vacuum and checkpoints, by hand or on the
//!   ingester's own cadence.
//! - [`freshness`]: how far behind its sources each silver table is.
//!
//! Seam: [`store::Lake`] is the only way other crates reach tables, so the
//! storage options (S3 endpoint, credentials) are decided in one place.

pub mod check;
pub mod coordinator;
pub mod dlq;
pub mod freshness;
pub mod ingest;
pub mod lease;
pub mod maintenance;
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
    /// The broker failed or could not be reached.
    #[error(transparent)]
    Kafka(#[from] tributary_kafka::Error),
    #[error("table {table}: {message}")]
    Schema { table: String, message: String },
    /// The commit coordinator's database failed (retryable).
    #[error("commit coordinator: {0}")]
    Coordinator(String),
    #[error("object store at {0}")]
    ObjectStore(String, #[source] object_store::Error),
    /// A change silver cannot store without loss: an incompatible column type
    /// change, a value that does not fit its column. Ingest of that table
    /// stops until someone fixes it; other tables go on.
    #[error(
        "table {}: column {:?} at LSN {} (event {}): {}; {}",
        .0.table, .0.column, .0.lsn, .0.event_id, .0.reason, .0.remedy
    )]
    Incompatible(Box<IncompatibleChange>),
    #[error("table {0} does not exist")]
    NoSuchTable(String),
    /// Another process holds the table's compaction lock.
    #[error("table {0}: another compaction of this table is running")]
    CompactionBusy(String),
    /// Vacuum with a retention shorter than the table keeps removed files:
    /// a running query or writer may still read them.
    #[error(
        "table {table}: a vacuum retention of {hours} h is below the table's minimum of {min_hours} h (delta.deletedFileRetentionDuration); queries and writers still running may read those files. Pass --force (`vacuum_force = true` in [ingest.maintenance]) to vacuum anyway"
    )]
    RetentionTooShort {
        table: String,
        hours: u64,
        min_hours: u64,
    },
    /// A maintenance commit lost the race with other writers every time.
    #[error("table {table}: {op} lost the race with other writers {attempts} times; giving up")]
    MaintenanceGaveUp {
        table: String,
        op: &'static str,
        attempts: u32,
        #[source]
        source: Box<Error>,
    },
}

/// What silver could not take, where, and what to do about it.
#[derive(Debug)]
pub struct IncompatibleChange {
    pub table: String,
    pub column: String,
    /// The LSN of the event, as `X/Y`.
    pub lsn: String,
    pub event_id: String,
    pub reason: String,
    pub remedy: String,
}

impl Error {
    /// Whether retrying the same operation later can succeed (broker or store
    /// unavailable, commit conflict) as opposed to bad data or config.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kafka(e) => e.is_transient(),
            Error::ObjectStore(..) | Error::Coordinator(_) => true,
            Error::Delta { source, .. } => {
                matches!(source, deltalake::DeltaTableError::ObjectStore { .. })
                    // A concurrent commit changed what this one read: redo
                    // it from the lake's state.
                    || maintenance::is_commit_conflict(source)
                    || caused_by_io(source)
                    || coordinator_unavailable(source)
            }
            // A query fails transiently when it could not read the store.
            Error::DataFusion { source, .. } => caused_by_io(source),
            _ => false,
        }
    }
}

/// Whether a commit was refused because its writer lost the table's lease.
pub fn is_fenced(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<coordinator::Fenced>() {
            return true;
        }
        cur = e.source();
    }
    false
}

fn coordinator_unavailable(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if matches!(
            e.downcast_ref::<coordinator::ClaimError>(),
            Some(coordinator::ClaimError::Db(_))
        ) || matches!(e.downcast_ref::<Error>(), Some(Error::Coordinator(_)))
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Whether an error was caused by the object store or the file system.
fn caused_by_io(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<object_store::Error>()
            || e.is::<std::io::Error>()
            || matches!(
                e.downcast_ref::<deltalake::DeltaTableError>(),
                Some(deltalake::DeltaTableError::ObjectStore { .. })
            )
        {
            return true;
        }
        cur = e.source();
    }
    false
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
