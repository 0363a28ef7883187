//! The maintenance operations: [`optimize`], [`vacuum`] and [`checkpoint`]
//! of one table, with their options and reports.
//!
//! Rules kept here:
//! - Compaction commits only `dataChange = false` actions and holds the
//!   table's compaction lock ([`super::lock`]) while it runs.
//! - A commit that lost a race with another writer is redone on the table
//!   as it now is, at most `max_attempts` times with backoff; the last
//!   failure says how many attempts were made.
//! - Vacuum refuses a retention below the table's minimum unless forced.

use std::fmt;
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use deltalake::DeltaTableError;
use deltalake::kernel::transaction::TransactionError;
use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::table::config::TablePropertiesExt as _;
use tributary_model::backoff::Backoff;
use tributary_model::error_chain;

use super::lock::CompactionLock;
use crate::{Error, Lake, Result};

/// Compaction's default target file size in bytes.
pub(crate) const DEFAULT_TARGET_FILE_SIZE: u64 = 128 << 20;

/// Default attempts of one maintenance commit that loses races.
pub(crate) const DEFAULT_MAX_ATTEMPTS: u32 = 8;

/// Delta's default `delta.deletedFileRetentionDuration`, in hours.
pub const DEFAULT_RETENTION_HOURS: u64 = 168;

/// How to compact one table.
#[derive(Clone, Debug)]
pub struct OptimizeOptions {
    pub target_size: u64,
    /// Empty: bin-packing only.
    pub zorder: Vec<String>,
    pub max_attempts: u32,
    /// How long to wait for another compaction of the table to finish
    /// (one compaction per table at a time); 0: fail at once with
    /// [`Error::CompactionBusy`].
    pub lock_wait: Duration,
}

impl Default for OptimizeOptions {
    fn default() -> Self {
        OptimizeOptions {
            target_size: DEFAULT_TARGET_FILE_SIZE,
            zorder: vec![],
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            lock_wait: Duration::from_secs(120),
        }
    }
}

/// What a compaction did.
#[derive(Clone, Debug)]
pub struct OptimizeReport {
    /// `layer.table`.
    pub table: String,
    pub files_before: usize,
    pub bytes_before: u64,
    pub files_after: usize,
    pub bytes_after: u64,
    pub files_removed: u64,
    pub files_added: u64,
    /// 1 when the first try committed; more when it lost races.
    pub attempts: u32,
    pub elapsed: Duration,
}

impl fmt::Display for OptimizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<28} files {:>6} → {:<6} size {} → {}  removed {} added {}  {:.2}s{}",
            self.table,
            self.files_before,
            self.files_after,
            tributary_model::human_bytes(self.bytes_before),
            tributary_model::human_bytes(self.bytes_after),
            self.files_removed,
            self.files_added,
            self.elapsed.as_secs_f64(),
            retries_note(self.attempts)
        )
    }
}

/// How to vacuum one table.
#[derive(Clone, Debug)]
pub struct VacuumOptions {
    pub retention_hours: u64,
    /// List what would be deleted, delete nothing.
    pub dry_run: bool,
    /// Allow a retention below the table's minimum.
    pub force: bool,
    /// Also delete files the log never mentioned (failed writes), which
    /// needs a listing of the whole table; otherwise only files the log
    /// removed are deleted.
    pub full: bool,
    pub max_attempts: u32,
}

impl Default for VacuumOptions {
    fn default() -> Self {
        VacuumOptions {
            retention_hours: DEFAULT_RETENTION_HOURS,
            dry_run: false,
            force: false,
            full: false,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// What a vacuum deleted (or would delete, on a dry run).
#[derive(Clone, Debug)]
pub struct VacuumReport {
    pub table: String,
    pub dry_run: bool,
    /// Paths relative to the table.
    pub files: Vec<String>,
    pub files_in_table: usize,
    pub attempts: u32,
    pub elapsed: Duration,
}

impl fmt::Display for VacuumReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<28} {} {} unreferenced files; {} files in the table  {:.2}s{}",
            self.table,
            if self.dry_run {
                "would delete"
            } else {
                "deleted"
            },
            self.files.len(),
            self.files_in_table,
            self.elapsed.as_secs_f64(),
            retries_note(self.attempts)
        )
    }
}

/// What a checkpoint did.
#[derive(Clone, Debug)]
pub struct CheckpointReport {
    pub table: String,
    pub version: u64,
    pub files_in_table: usize,
    /// Expired log entries deleted (only when asked to).
    pub logs_cleaned: usize,
    pub elapsed: Duration,
}

impl fmt::Display for CheckpointReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<28} checkpoint at version {} ({} files){}  {:.2}s",
            self.table,
            self.version,
            self.files_in_table,
            if self.logs_cleaned > 0 {
                format!("; {} expired log entries deleted", self.logs_cleaned)
            } else {
                String::new()
            },
            self.elapsed.as_secs_f64()
        )
    }
}

fn retries_note(attempts: u32) -> String {
    if attempts > 1 {
        format!("  ({attempts} attempts: lost races with other writers)")
    } else {
        String::new()
    }
}

/// Whether a Delta error means "another writer committed first and the two
/// commits cannot both stand": redoing the operation on the new version is
/// the cure.
pub fn is_commit_conflict(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_)
                    | TransactionError::MaxCommitAttempts(_)
                    | TransactionError::VersionAlreadyExists(_)
            }
    )
}

pub(super) fn conflicted(e: &Error) -> bool {
    matches!(e, Error::Delta { source, .. } if is_commit_conflict(source))
}

/// Runs `attempt` until it commits, redoing it (it reopens the table) when
/// it lost a race with another writer, at most `max_attempts` times with
/// exponential backoff. Returns the result and the attempts it took.
pub(super) async fn with_retries<T, F, Fut>(
    name: &str,
    op: &'static str,
    max_attempts: u32,
    mut attempt: F,
) -> Result<(T, u32)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let max_attempts = max_attempts.max(1);
    // Jitter, so two maintainers do not collide in lockstep.
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5))
        .with_jitter(Duration::from_millis(50));
    for n in 1.. {
        match attempt().await {
            Ok(v) => return Ok((v, n)),
            Err(e) if conflicted(&e) && n < max_attempts => {
                crate::metrics::maintenance_retry(name, op);
                tracing::info!(table = name, op, attempt = n, error = %error_chain(&e), "maintenance commit lost a race with another writer; redoing it on the new version");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) if conflicted(&e) => {
                return Err(Error::MaintenanceGaveUp {
                    table: name.to_string(),
                    op,
                    attempts: n,
                    source: Box::new(e),
                });
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

pub(super) async fn open_existing(lake: &Lake, layer: &str, table: &str) -> Result<DeltaTable> {
    lake.open(layer, table)
        .await?
        .ok_or_else(|| Error::NoSuchTable(format!("{layer}.{table}")))
}

/// Number of data files and their total size.
pub fn file_stats(table: &DeltaTable, name: &str) -> Result<(usize, u64)> {
    let snapshot = table.snapshot().map_err(|source| Error::Delta {
        table: name.to_string(),
        source,
    })?;
    let log = snapshot.log_data();
    let bytes = log.iter().map(|f| f.size().max(0) as u64).sum();
    Ok((log.num_files(), bytes))
}

/// Compacts one table: small files into files of about the target size,
/// Z-ordered when columns are given. Commits nothing when there is nothing
/// to compact.
pub async fn optimize(
    lake: &Lake,
    layer: &str,
    table: &str,
    options: &OptimizeOptions,
) -> Result<OptimizeReport> {
    let name = format!("{layer}.{table}");
    let started = Instant::now();
    let target = NonZeroU64::new(options.target_size)
        .ok_or_else(|| Error::Config("optimize target size must be above 0 bytes".into()))?;
    let t = open_existing(lake, layer, table).await?;
    let before = file_stats(&t, &name)?;
    let Some(lock) = CompactionLock::acquire(lake, &t, &name, options.lock_wait).await? else {
        return Err(Error::CompactionBusy(name));
    };
    let result = with_retries(&name, "optimize", options.max_attempts, || async {
        let t = open_existing(lake, layer, table).await?;
        let mut builder = t.optimize().with_target_size(target);
        if !options.zorder.is_empty() {
            builder = builder.with_type(OptimizeType::ZOrder(options.zorder.clone()));
        }
        let (_, metrics) = builder.await.map_err(|source| Error::Delta {
            table: name.clone(),
            source,
        })?;
        Ok(metrics)
    })
    .await;
    lock.release().await;
    let (metrics, attempts) = result?;
    let after = file_stats(&open_existing(lake, layer, table).await?, &name)?;
    crate::metrics::maintenance_run(&name, "optimize");
    crate::metrics::table_files(layer, table, after.0);
    Ok(OptimizeReport {
        table: name,
        files_before: before.0,
        bytes_before: before.1,
        files_after: after.0,
        bytes_after: after.1,
        files_removed: metrics.num_files_removed,
        files_added: metrics.num_files_added,
        attempts,
        elapsed: started.elapsed(),
    })
}

/// Deletes the files that left the table more than `retention_hours` ago
/// (or lists them, on a dry run).
pub async fn vacuum(
    lake: &Lake,
    layer: &str,
    table: &str,
    options: &VacuumOptions,
) -> Result<VacuumReport> {
    let name = format!("{layer}.{table}");
    let started = Instant::now();
    let t = open_existing(lake, layer, table).await?;
    let min_hours = t
        .snapshot()
        .map_err(|source| Error::Delta {
            table: name.clone(),
            source,
        })?
        .table_config()
        .deleted_file_retention_duration()
        .as_secs()
        / 3600;
    if options.retention_hours < min_hours && !options.force {
        return Err(Error::RetentionTooShort {
            table: name,
            hours: options.retention_hours,
            min_hours,
        });
    }
    let retention = chrono::Duration::hours(options.retention_hours as i64);
    let (deleted, attempts) = with_retries(&name, "vacuum", options.max_attempts, || async {
        let t = open_existing(lake, layer, table).await?;
        let (_, metrics) = t
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .with_dry_run(options.dry_run)
            .with_mode(if options.full {
                VacuumMode::Full
            } else {
                VacuumMode::Lite
            })
            .await
            .map_err(|source| Error::Delta {
                table: name.clone(),
                source,
            })?;
        Ok(metrics.files_deleted)
    })
    .await?;
    let (files, _) = file_stats(&open_existing(lake, layer, table).await?, &name)?;
    if !options.dry_run {
        crate::metrics::maintenance_run(&name, "vacuum");
    }
    Ok(VacuumReport {
        table: name,
        dry_run: options.dry_run,
        files: deleted,
        files_in_table: files,
        attempts,
        elapsed: started.elapsed(),
    })
}

/// Writes a checkpoint at the table's latest version; with `cleanup_logs`,
/// then deletes log entries older than `delta.logRetentionDuration` that the
/// checkpoint made unnecessary.
pub async fn checkpoint(
    lake: &Lake,
    layer: &str,
    table: &str,
    cleanup_logs: bool,
) -> Result<CheckpointReport> {
    let name = format!("{layer}.{table}");
    let started = Instant::now();
    let t = open_existing(lake, layer, table).await?;
    let delta_err = |source| Error::Delta {
        table: name.clone(),
        source,
    };
    let version = t.version().unwrap_or(0);
    // A checkpoint is a file named by its version, written beside the log:
    // no commit, so nothing to race; a concurrent writer at most makes it
    // one version old.
    deltalake::checkpoints::create_checkpoint(&t, None)
        .await
        .map_err(delta_err)?;
    let logs_cleaned = if cleanup_logs {
        deltalake::checkpoints::cleanup_metadata(&t, None)
            .await
            .map_err(delta_err)?
    } else {
        0
    };
    let (files, _) = file_stats(&t, &name)?;
    crate::metrics::maintenance_run(&name, "checkpoint");
    crate::metrics::table_files(layer, table, files);
    Ok(CheckpointReport {
        table: name,
        version,
        files_in_table: files,
        logs_cleaned,
        elapsed: started.elapsed(),
    })
}
