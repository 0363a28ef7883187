//! The lake: Delta tables in a local folder or on S3, written exactly once
//! from the CDC topics and kept readable by any Delta reader.
//!
//! What it owns:
//! - [`store`]: where tables live (`<root>/{bronze,silver,gold}/<table>`),
//!   opening them at their latest version, listing and querying them.
//! - [`coordinator`]: commits that are safe on any object store, claimed in
//!   PostgreSQL, and the single-writer leases; [`lease`] keeps an
//!   ingester's leases.
//! - [`check`]: whether the store refuses a second create of a key, which
//!   is what keeps concurrent Delta writers apart without a coordinator.
//! - [`ingest`]: Kafka change topics into bronze (append-only change log) and
//!   silver (current state via MERGE), exactly once.
//! - [`dlq`]: the dead letters ingest set aside, listed and replayed.
//! - [`maintenance`]: compaction, vacuum and checkpoints, by hand or on the
//!   ingester's own cadence.
//! - [`freshness`]: how far behind its sources each silver table is.
//! - [`schema`]: the Arrow schemas of bronze, silver and the side tables.
//! - [`metrics`]: the `tributary_lake_*` metrics.
//!
//! Seams:
//! - [`Lake`] is the only way other crates reach tables, so the storage
//!   options (S3 endpoint, credentials) and the commit path are decided in
//!   one place.
//! - [`coordinator::CoordinatedLogStore`] is delta-rs's `LogStore` for every
//!   table of a lake with a coordinator. Its promise is delta-rs's: one
//!   writer, and only one, creates each version; a claimed version is never
//!   lost or overwritten, even on a store whose put-if-absent is not atomic.
//! - Leases ([`coordinator::Coordinator::try_acquire`], [`lease::Leases`]):
//!   one writer per table at a time; a commit made under a lease its writer
//!   lost is refused ([`coordinator::Fenced`]).
//! - Ingest → silver: after any crash, bronze holds every change event once
//!   and silver equals the source once ingest catches up; each commit
//!   carries the Kafka offsets it consumed, and ingest resumes from them
//!   ([`ingest::committed_offsets`]), never from the broker's group offsets.
//!
//! Errors say whether a retry can cure them ([`Error::is_transient`]); a
//! broken invariant is [`Error::Internal`].
//!
//! ```no_run
//! # async fn demo() -> tributary_lake::Result<()> {
//! use tributary_lake::{Lake, LakeConfig};
//! let lake = Lake::new(&LakeConfig {
//!     root: "/var/lib/tributary/lake".into(),
//!     s3: None,
//!     // With a coordinator every commit is claimed in PostgreSQL first.
//!     coordinator_dsn: Some("host=127.0.0.1 user=tributary dbname=catalog".into()),
//! })?;
//! for table in lake.list_tables("silver").await? {
//!     let (bronze, silver) =
//!         tributary_lake::ingest::committed_offsets(&lake, "tributary-lake", &table, "tributary.orders.orders", 3).await?;
//!     println!("{table}: bronze at {bronze:?}, silver at {silver:?}");
//! }
//! # Ok(())
//! # }
//! ```

pub mod backup;
pub mod check;
pub mod coordinator;
pub mod dlq;
#[cfg(test)]
mod fixtures;
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
    /// The commit coordinator's database failed or refused. Transient or
    /// not by its SQLSTATE ([`coordinator::is_transient_db_error`]); the
    /// message says when a retry cannot cure it.
    #[error("commit coordinator: {context}{}", coordinator::advice(source))]
    Coordinator {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A broken invariant or a failed task of the lake itself: a bug, not
    /// bad input or a failing environment.
    #[error("internal error: {0}; this is a bug in tributary, please report it")]
    Internal(String),
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
    /// Whether retrying the same operation later can succeed (broker, store
    /// or commit coordinator unavailable, commit conflict) as opposed to bad
    /// data or config, a refusal of the coordinator's database (see
    /// [`coordinator::is_transient_db_error`]) or a broken invariant.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kafka(e) => e.is_transient(),
            Error::ObjectStore(..) => true,
            Error::Coordinator { source, .. } => coordinator::is_transient_db_error(source),
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

    /// Whether the commit coordinator's database refused in a way no retry
    /// cures (a missing privilege or table, bad credentials). Every commit
    /// and lease of the process needs that database, so such an error stops
    /// the ingester rather than one table.
    pub fn is_coordinator_refusal(&self) -> bool {
        coordinator_db_error(self).is_some_and(|e| !coordinator::is_transient_db_error(e))
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

/// Whether the commit coordinator's database failed in a way a retry can
/// cure.
fn coordinator_unavailable(e: &(dyn std::error::Error + 'static)) -> bool {
    coordinator_db_error(e).is_some_and(coordinator::is_transient_db_error)
}

/// The error of the commit coordinator's database in `e`'s chain, if any
/// (the lake speaks to PostgreSQL only there).
fn coordinator_db_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a tokio_postgres::Error> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() {
            return Some(pg);
        }
        cur = e.source();
    }
    None
}

/// Whether an error was caused by the object store or the file system.
pub(crate) fn caused_by_io(e: &(dyn std::error::Error + 'static)) -> bool {
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
