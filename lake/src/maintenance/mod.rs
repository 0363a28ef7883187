//! Lake maintenance: compaction, vacuum and checkpoints, by hand
//! (`tributary lake optimize|vacuum|checkpoint`) or on a cadence the
//! ingester keeps by itself ([`Maintainer`]).
//!
//! Ingest commits once per table and layer every batch (about a second), so
//! tables collect many small files and many log entries. Compaction
//! ([`optimize`]) rewrites small files into few of a target size (optionally
//! Z-ordered), a checkpoint ([`checkpoint`]) lets readers start from one
//! Parquet file instead of replaying the JSON log, and [`vacuum`] deletes the
//! files compaction replaced once no reader can need them any more.
//!
//! - `operations`: the three operations, their options and reports, and the
//!   redo of a commit that lost a race.
//! - `cadence`: `[ingest.maintenance]` and the [`Maintainer`] that runs
//!   what is due between ingest batches.
//! - `lock`: one compaction per table at a time, across processes.
//!
//! Promises:
//! - Nothing changes what a table holds: compaction commits only
//!   `dataChange = false` actions, and every test checks the rows.
//! - A maintenance commit that loses a race with another writer is redone
//!   on the table as it now is, a bounded number of times with backoff
//!   ([`MaintenanceConfig::max_attempts`]); it is never dropped silently:
//!   after the last attempt the error says so.
//! - Vacuum refuses a retention below the table's
//!   `delta.deletedFileRetentionDuration` (7 days by default) unless forced.
//! - Inside the ingester, maintenance runs between batches on the tables the
//!   batch just committed, in the ingest task itself: the table's one writer
//!   does it, so it never races ingest (see "Why inline" in
//!   `docs/lake-maintenance.md`), and a failure is logged, not returned;
//!   only a refusal of the commit coordinator that no retry cures stops the
//!   ingester, since its own commits need that database too.
//!
//! ```no_run
//! # async fn demo(lake: &tributary_lake::Lake) -> tributary_lake::Result<()> {
//! use tributary_lake::maintenance::{self, OptimizeOptions};
//! let report = maintenance::optimize(lake, "silver", "orders", &OptimizeOptions::default()).await?;
//! println!("{report}");
//! # Ok(())
//! # }
//! ```

mod cadence;
mod lock;
mod operations;
#[cfg(test)]
mod tests;

pub use cadence::{Maintainer, MaintenanceConfig};
pub use operations::{
    CheckpointReport, DEFAULT_RETENTION_HOURS, OptimizeOptions, OptimizeReport, VacuumOptions,
    VacuumReport, checkpoint, file_stats, is_commit_conflict, optimize, vacuum,
};
