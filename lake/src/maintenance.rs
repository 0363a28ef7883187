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
//!   `docs/lake-maintenance.md`), and a failure is logged, never returned.
//!
//! ```no_run
//! # async fn demo(lake: &tributary_lake::Lake) -> tributary_lake::Result<()> {
//! use tributary_lake::maintenance::{self, OptimizeOptions};
//! let report = maintenance::optimize(lake, "silver", "orders", &OptimizeOptions::default()).await?;
//! println!("{report}");
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use deltalake::DeltaTableError;
use deltalake::kernel::transaction::TransactionError;
use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::table::config::TablePropertiesExt as _;
use serde::Deserialize;
use tributary_model::error_chain;

use crate::{Error, Lake, Result};

/// `[ingest.maintenance]`: what the ingester does to the tables it writes,
/// and when. Every trigger can be turned off with 0.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Master switch for maintenance inside the ingester.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Compact a table after this many ingest batches committed to it.
    #[serde(default = "default_optimize_every_commits")]
    pub optimize_every_commits: u64,
    /// ... or after this many seconds, when at least one batch came since.
    #[serde(default = "default_optimize_interval_s")]
    pub optimize_interval_s: u64,
    /// Compaction's target file size in bytes; files at or above it stay.
    #[serde(default = "default_target_file_size")]
    pub target_file_size: u64,
    /// Z-order silver tables by these columns when compacting:
    /// `zorder = { orders = ["customer_id", "created_at"] }`. Z-order
    /// rewrites the whole table each time, so keep it for large tables read
    /// by those columns.
    #[serde(default)]
    pub zorder: BTreeMap<String, Vec<String>>,
    /// Write a checkpoint after this many batches (and after every
    /// compaction).
    #[serde(default = "default_checkpoint_every_commits")]
    pub checkpoint_every_commits: u64,
    /// Delete expired log entries (older than `delta.logRetentionDuration`,
    /// 30 days by default) after a checkpoint.
    #[serde(default)]
    pub cleanup_expired_logs: bool,
    /// Vacuum a table this often (seconds; 0: never).
    #[serde(default = "default_vacuum_interval_s")]
    pub vacuum_interval_s: u64,
    /// Keep files that left the table for this long before vacuum deletes them.
    #[serde(default = "default_vacuum_retention_hours")]
    pub vacuum_retention_hours: u64,
    /// Allow `vacuum_retention_hours` below the table's minimum.
    #[serde(default)]
    pub vacuum_force: bool,
    /// Attempts of one maintenance commit that loses races with other writers.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

impl MaintenanceConfig {
    /// Whether the ingester checkpoints tables on its own cadence.
    pub fn writes_checkpoints(&self) -> bool {
        self.enabled && self.checkpoint_every_commits > 0
    }
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            enabled: true,
            optimize_every_commits: default_optimize_every_commits(),
            optimize_interval_s: default_optimize_interval_s(),
            target_file_size: default_target_file_size(),
            zorder: BTreeMap::new(),
            checkpoint_every_commits: default_checkpoint_every_commits(),
            cleanup_expired_logs: false,
            vacuum_interval_s: default_vacuum_interval_s(),
            vacuum_retention_hours: default_vacuum_retention_hours(),
            vacuum_force: false,
            max_attempts: default_max_attempts(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_optimize_every_commits() -> u64 {
    300
}
fn default_optimize_interval_s() -> u64 {
    900
}
fn default_target_file_size() -> u64 {
    128 << 20
}
fn default_checkpoint_every_commits() -> u64 {
    100
}
fn default_vacuum_interval_s() -> u64 {
    6 * 3600
}
fn default_vacuum_retention_hours() -> u64 {
    DEFAULT_RETENTION_HOURS
}
fn default_max_attempts() -> u32 {
    8
}

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
    /// (see [`CompactionLock`]); 0: fail at once with
    /// [`Error::CompactionBusy`].
    pub lock_wait: Duration,
}

impl Default for OptimizeOptions {
    fn default() -> Self {
        OptimizeOptions {
            target_size: default_target_file_size(),
            zorder: vec![],
            max_attempts: default_max_attempts(),
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
            human_bytes(self.bytes_before),
            human_bytes(self.bytes_after),
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
            max_attempts: default_max_attempts(),
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

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
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

fn conflicted(e: &Error) -> bool {
    matches!(e, Error::Delta { source, .. } if is_commit_conflict(source))
}

/// Runs `attempt` until it commits, redoing it (it reopens the table) when
/// it lost a race with another writer, at most `max_attempts` times with
/// exponential backoff. Returns the result and the attempts it took.
async fn with_retries<T, F, Fut>(
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
    let mut backoff = Duration::from_millis(50);
    for n in 1.. {
        match attempt().await {
            Ok(v) => return Ok((v, n)),
            Err(e) if conflicted(&e) && n < max_attempts => {
                crate::metrics::maintenance_retry(name, op);
                tracing::info!(table = name, op, attempt = n, error = %error_chain(&e), "maintenance commit lost a race with another writer; redoing it on the new version");
                // Jitter, so two maintainers do not collide in lockstep.
                let jitter = Duration::from_millis(u64::from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.subsec_millis() % 50)
                        .unwrap_or(0),
                ));
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
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

async fn open_existing(lake: &Lake, layer: &str, table: &str) -> Result<DeltaTable> {
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

/// Name of the compaction lock object in a table's folder (hidden from
/// Delta readers and from vacuum by its leading `_`).
const LOCK: &str = "_tributary_compaction.lock";

/// How long a compaction lock holds when its holder never releases it (a
/// crash): longer than any compaction should take.
const LOCK_TTL: Duration = Duration::from_secs(30 * 60);

/// One compaction per table at a time, across processes.
///
/// delta-rs 1.1.3 does not detect two concurrent compactions of the same
/// files as a conflict (its delete/delete check skips `dataChange = false`
/// removes), so both commit and every row they moved is doubled. Ingest
/// commits against a compaction are detected; compaction against
/// compaction is not, hence this lock. It is created with put-if-absent,
/// which is atomic on local disks and AWS S3; on S3-compatible stores that
/// do not make it atomic, a lake with a commit coordinator takes the lock as
/// a lease in the coordinator's database instead.
enum CompactionLock {
    Store {
        store: std::sync::Arc<dyn object_store::ObjectStore>,
        token: String,
    },
    Lease {
        coordinator: std::sync::Arc<crate::coordinator::Coordinator>,
        fence: crate::coordinator::Fence,
    },
}

impl CompactionLock {
    /// Takes the lock of `t`, waiting up to `wait` for another holder.
    /// `None`: still held by someone else after `wait`.
    async fn acquire(
        lake: &Lake,
        t: &DeltaTable,
        name: &str,
        wait: Duration,
    ) -> Result<Option<Self>> {
        let Some(coordinator) = lake.coordinator().await? else {
            return Self::acquire_in_store(t, name, wait).await;
        };
        let resource = format!("compaction:{}", t.log_store().root_url());
        let owner = format!(
            "{}:{}",
            lake.writer(),
            LOCK_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(100);
        loop {
            if let Some(epoch) = coordinator.try_acquire(&resource, &owner, LOCK_TTL).await? {
                return Ok(Some(CompactionLock::Lease {
                    coordinator,
                    fence: crate::coordinator::Fence {
                        resource,
                        owner,
                        epoch,
                    },
                }));
            }
            if Instant::now() + pause > deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    async fn acquire_in_store(t: &DeltaTable, name: &str, wait: Duration) -> Result<Option<Self>> {
        use object_store::{
            ObjectStore as _, ObjectStoreExt as _, PutMode, PutOptions, PutPayload,
        };
        let store = t.log_store().object_store(None);
        let path = object_store::path::Path::from(LOCK);
        let store_err = |e| Error::ObjectStore(format!("{name}/{LOCK}"), e);
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(100);
        loop {
            let now_ms = unix_ms();
            let token = format!(
                "{}:{}:{now_ms}",
                std::process::id(),
                LOCK_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let body = serde_json::json!({
                "token": token,
                "expires_unix_ms": now_ms + LOCK_TTL.as_millis() as u64,
            });
            let put = store
                .put_opts(
                    &path,
                    PutPayload::from(body.to_string()),
                    PutOptions {
                        mode: PutMode::Create,
                        ..Default::default()
                    },
                )
                .await;
            match put {
                Ok(_) => return Ok(Some(CompactionLock::Store { store, token })),
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(store_err(e)),
            }
            // Held: take it over when its holder died long ago.
            let expired = match store.get(&path).await {
                Ok(got) => {
                    let bytes = got.bytes().await.map_err(store_err)?;
                    serde_json::from_slice::<serde_json::Value>(&bytes)
                        .ok()
                        .and_then(|v| v["expires_unix_ms"].as_u64())
                        .is_none_or(|exp| exp < unix_ms())
                }
                // Released meanwhile: try again at once.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(store_err(e)),
            };
            if expired {
                tracing::warn!(table = name, "taking over an expired compaction lock");
                let _ = store.delete(&path).await;
                continue;
            }
            if Instant::now() + pause > deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Releases the lock when it is still ours.
    async fn release(self) {
        use object_store::ObjectStoreExt as _;
        let (store, token) = match self {
            CompactionLock::Store { store, token } => (store, token),
            CompactionLock::Lease { coordinator, fence } => {
                if let Err(e) = coordinator.release(&fence).await {
                    tracing::warn!(error = %e, "could not release a compaction lease; it expires by itself");
                }
                return;
            }
        };
        let path = object_store::path::Path::from(LOCK);
        let ours = match store.get(&path).await {
            Ok(got) => got.bytes().await.ok().is_some_and(|b| {
                serde_json::from_slice::<serde_json::Value>(&b)
                    .ok()
                    .is_some_and(|v| v["token"] == token.as_str())
            }),
            Err(_) => false,
        };
        if ours && let Err(e) = store.delete(&path).await {
            tracing::warn!(error = %e, "could not release a compaction lock; it expires by itself");
        }
    }
}

static LOCK_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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

/// Per table: what happened since its last maintenance.
struct Cadence {
    since_optimize: u64,
    since_checkpoint: u64,
    last_optimize: Instant,
    last_vacuum: Instant,
}

/// Keeps the maintenance cadence of the tables one ingester writes.
///
/// Call [`Maintainer::after_batch`] after each table's batch is committed.
/// It runs what is due on `bronze.<table>` and `silver.<table>` right away,
/// in the caller's task: the ingester is the tables' only writer, so its
/// maintenance commits never race its ingest commits. Errors are logged and
/// counted; ingest goes on.
pub struct Maintainer {
    config: MaintenanceConfig,
    tables: HashMap<String, Cadence>,
    warned_retention: bool,
}

impl Maintainer {
    pub fn new(config: MaintenanceConfig) -> Self {
        Maintainer {
            config,
            tables: HashMap::new(),
            warned_retention: false,
        }
    }

    /// Notes one committed batch of `table` and runs the maintenance that is
    /// due. Never fails: errors are logged.
    pub async fn after_batch(&mut self, lake: &Lake, table: &str) {
        if !self.config.enabled {
            return;
        }
        let now = Instant::now();
        let c = self.tables.entry(table.to_string()).or_insert(Cadence {
            since_optimize: 0,
            since_checkpoint: 0,
            last_optimize: now,
            last_vacuum: now,
        });
        c.since_optimize += 1;
        c.since_checkpoint += 1;
        let cfg = &self.config;
        let optimize_due = (cfg.optimize_every_commits > 0
            && c.since_optimize >= cfg.optimize_every_commits)
            || (cfg.optimize_interval_s > 0
                && now.duration_since(c.last_optimize).as_secs() >= cfg.optimize_interval_s);
        let vacuum_due = cfg.vacuum_interval_s > 0
            && now.duration_since(c.last_vacuum).as_secs() >= cfg.vacuum_interval_s;
        if optimize_due {
            c.since_optimize = 0;
            c.last_optimize = now;
        }
        if vacuum_due {
            c.last_vacuum = now;
        }
        let checkpoint_due = optimize_due
            || (cfg.checkpoint_every_commits > 0
                && c.since_checkpoint >= cfg.checkpoint_every_commits);
        if checkpoint_due {
            c.since_checkpoint = 0;
        }
        for layer in ["bronze", "silver"] {
            if optimize_due {
                self.optimize_one(lake, layer, table).await;
            }
            if checkpoint_due {
                self.checkpoint_one(lake, layer, table).await;
            }
            if vacuum_due {
                self.vacuum_one(lake, layer, table).await;
            }
        }
    }

    async fn optimize_one(&self, lake: &Lake, layer: &str, table: &str) {
        let options = OptimizeOptions {
            target_size: self.config.target_file_size,
            zorder: if layer == "silver" {
                self.config.zorder.get(table).cloned().unwrap_or_default()
            } else {
                vec![]
            },
            max_attempts: self.config.max_attempts,
            // Ingest never waits on maintenance: when someone else compacts
            // the table, this turn is skipped.
            lock_wait: Duration::ZERO,
        };
        match optimize(lake, layer, table, &options).await {
            Ok(r) => tracing::info!(
                table = %r.table,
                files_before = r.files_before,
                files_after = r.files_after,
                bytes_before = r.bytes_before,
                bytes_after = r.bytes_after,
                attempts = r.attempts,
                ms = r.elapsed.as_millis() as u64,
                "table compacted"
            ),
            Err(Error::CompactionBusy(name)) => {
                tracing::info!(table = %name, "another process is compacting the table; skipped this turn");
            }
            Err(e) => failed(layer, table, "optimize", &e),
        }
    }

    async fn checkpoint_one(&self, lake: &Lake, layer: &str, table: &str) {
        match checkpoint(lake, layer, table, self.config.cleanup_expired_logs).await {
            Ok(r) => tracing::info!(
                table = %r.table,
                version = r.version,
                logs_cleaned = r.logs_cleaned,
                ms = r.elapsed.as_millis() as u64,
                "checkpoint written"
            ),
            Err(e) => failed(layer, table, "checkpoint", &e),
        }
    }

    async fn vacuum_one(&mut self, lake: &Lake, layer: &str, table: &str) {
        let options = VacuumOptions {
            retention_hours: self.config.vacuum_retention_hours,
            force: self.config.vacuum_force,
            max_attempts: self.config.max_attempts,
            ..VacuumOptions::default()
        };
        match vacuum(lake, layer, table, &options).await {
            Ok(r) => tracing::info!(
                table = %r.table,
                deleted = r.files.len(),
                ms = r.elapsed.as_millis() as u64,
                "table vacuumed"
            ),
            Err(e @ Error::RetentionTooShort { .. }) => {
                // A config mistake: say it once, not every interval and table.
                if !self.warned_retention {
                    self.warned_retention = true;
                    failed(layer, table, "vacuum", &e);
                }
            }
            Err(e) => failed(layer, table, "vacuum", &e),
        }
    }
}

fn failed(layer: &str, table: &str, op: &'static str, e: &Error) {
    // A table the batch did not create (silver of a table whose events all
    // were replays) is not an error.
    if matches!(e, Error::NoSuchTable(_)) {
        return;
    }
    crate::metrics::maintenance_failure(&format!("{layer}.{table}"), op);
    tracing::warn!(layer, table, op, error = %error_chain(e), "maintenance failed; ingest goes on and maintenance tries again at its next turn");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;
    use deltalake::protocol::SaveMode;

    use super::*;
    use crate::store::query_table;

    fn new_lake() -> (tempfile::TempDir, Lake) {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(&crate::LakeConfig {
            root: dir.path().display().to_string(),
            s3: None,
            coordinator_dsn: None,
        })
        .unwrap();
        (dir, lake)
    }

    fn batch(ids: std::ops::Range<i64>, v: &str) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
            Field::new("date", DataType::Utf8, true),
        ]));
        let n = ids.clone().count();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(ids.clone())),
                Arc::new(StringArray::from(vec![v; n])),
                Arc::new(StringArray::from_iter_values(
                    ids.map(|i| format!("2026-01-0{}", 1 + i % 3)),
                )),
            ],
        )
        .unwrap()
    }

    async fn append(lake: &Lake, layer: &str, table: &str, b: RecordBatch, partitioned: bool) {
        let t = match lake.open(layer, table).await.unwrap() {
            Some(t) => t,
            None => lake.table_handle(layer, table).await.unwrap(),
        };
        let mut w = t.write(vec![b]).with_save_mode(SaveMode::Append);
        if partitioned {
            w = w.with_partition_columns(["date".to_string()]);
        }
        w.await.unwrap();
    }

    /// Upserts rows by id: the silver pattern.
    async fn merge(lake: &Lake, table: &str, b: RecordBatch) -> Result<()> {
        let t = open_existing(lake, "silver", table).await?;
        merge_into(t, table, b).await
    }

    async fn merge_into(t: DeltaTable, table: &str, b: RecordBatch) -> Result<()> {
        let name = format!("silver.{table}");
        let source = SessionContext::new().read_batch(b).unwrap();
        let delta_err = |source| Error::Delta {
            table: name.clone(),
            source,
        };
        t.merge(source, "target.id = source.id")
            .with_source_alias("source")
            .with_target_alias("target")
            .when_matched_update(|u| u.update("v", "source.v"))
            .and_then(|m| {
                m.when_not_matched_insert(|i| {
                    i.set("id", "source.id")
                        .set("v", "source.v")
                        .set("date", "source.date")
                })
            })
            .map_err(delta_err)?
            .await
            .map_err(delta_err)?;
        Ok(())
    }

    /// Every row, sorted, as text.
    async fn contents(lake: &Lake, layer: &str, table: &str) -> Vec<String> {
        let t = lake.open(layer, table).await.unwrap().unwrap();
        let batches = query_table(&t, table, "SELECT id, v, date FROM t ORDER BY id, v")
            .await
            .unwrap();
        let mut out = vec![];
        for b in batches {
            let text = arrow::util::pretty::pretty_format_batches(&[b])
                .unwrap()
                .to_string();
            out.extend(
                text.lines()
                    .filter(|l| l.starts_with("| "))
                    .skip(1)
                    .map(str::to_string),
            );
        }
        out
    }

    fn small() -> OptimizeOptions {
        OptimizeOptions {
            target_size: 1 << 20,
            ..OptimizeOptions::default()
        }
    }

    #[tokio::test]
    async fn optimize_compacts_small_files_and_keeps_every_row() {
        let (_dir, lake) = new_lake();
        for i in 0..12 {
            append(&lake, "bronze", "t", batch(i * 10..i * 10 + 10, "x"), true).await;
            append(&lake, "silver", "t", batch(i * 10..i * 10 + 10, "y"), false).await;
        }
        for layer in ["bronze", "silver"] {
            let before = contents(&lake, layer, "t").await;
            assert_eq!(before.len(), 120);
            let r = optimize(&lake, layer, "t", &small()).await.unwrap();
            // Bronze is partitioned by date: each append wrote one file for
            // each of 3 days, and compaction leaves one per day.
            let (files, expect) = if layer == "bronze" { (36, 3) } else { (12, 1) };
            assert_eq!(r.files_before, files, "{r}");
            assert_eq!(r.files_after, expect, "{r}");
            assert_eq!(r.files_removed as usize, files, "{r}");
            assert_eq!(r.files_added as usize, expect, "{r}");
            assert_eq!(r.attempts, 1);
            assert_eq!(
                contents(&lake, layer, "t").await,
                before,
                "{layer} rows changed"
            );
            // Nothing left to compact: no commit.
            let v = lake.open(layer, "t").await.unwrap().unwrap().version();
            let again = optimize(&lake, layer, "t", &small()).await.unwrap();
            assert_eq!((again.files_removed, again.files_added), (0, 0));
            assert_eq!(lake.open(layer, "t").await.unwrap().unwrap().version(), v);
        }
    }

    #[tokio::test]
    async fn zorder_rewrites_and_keeps_every_row() {
        let (_dir, lake) = new_lake();
        for i in 0..6 {
            append(&lake, "silver", "t", batch(i * 10..i * 10 + 10, "y"), false).await;
        }
        let before = contents(&lake, "silver", "t").await;
        let options = OptimizeOptions {
            zorder: vec!["id".into(), "v".into()],
            ..small()
        };
        let r = optimize(&lake, "silver", "t", &options).await.unwrap();
        assert_eq!((r.files_before, r.files_after), (6, 1), "{r}");
        assert_eq!(contents(&lake, "silver", "t").await, before);
        let bad = OptimizeOptions {
            zorder: vec!["nope".into()],
            ..small()
        };
        let err = error_chain(&optimize(&lake, "silver", "t", &bad).await.unwrap_err());
        assert!(err.contains("nope"), "{err}");
    }

    fn data_files(dir: &std::path::Path) -> Vec<String> {
        let mut out = vec![];
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    if !p.ends_with("_delta_log") {
                        stack.push(p);
                    }
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    out.push(p.strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn vacuum_deletes_only_unreferenced_files_past_retention() {
        let (dir, lake) = new_lake();
        for i in 0..5 {
            append(&lake, "bronze", "t", batch(i * 10..i * 10 + 10, "x"), true).await;
        }
        let table_dir = dir.path().join("bronze/t");
        let before = contents(&lake, "bronze", "t").await;
        optimize(&lake, "bronze", "t", &small()).await.unwrap();
        assert_eq!(data_files(&table_dir).len(), 15 + 3);

        // Below the minimum without --force: refused, naming the option.
        let short = VacuumOptions {
            retention_hours: 0,
            ..VacuumOptions::default()
        };
        let err = vacuum(&lake, "bronze", "t", &short).await.unwrap_err();
        assert!(matches!(err, Error::RetentionTooShort { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("--force") && msg.contains("bronze.t") && msg.contains("168"),
            "{msg}"
        );

        // The default retention keeps the files just replaced.
        let r = vacuum(&lake, "bronze", "t", &VacuumOptions::default())
            .await
            .unwrap();
        assert!(r.files.is_empty(), "{r}");
        // A forced one-hour retention too: they left the table seconds ago.
        let hour = VacuumOptions {
            retention_hours: 1,
            force: true,
            ..VacuumOptions::default()
        };
        assert!(
            vacuum(&lake, "bronze", "t", &hour)
                .await
                .unwrap()
                .files
                .is_empty()
        );

        // A dry run lists them and deletes nothing.
        let dry = VacuumOptions {
            dry_run: true,
            force: true,
            ..short.clone()
        };
        let r = vacuum(&lake, "bronze", "t", &dry).await.unwrap();
        assert_eq!(r.files.len(), 15, "{r}");
        assert_eq!(data_files(&table_dir).len(), 18);

        let forced = VacuumOptions {
            force: true,
            ..short
        };
        let r = vacuum(&lake, "bronze", "t", &forced).await.unwrap();
        assert_eq!(r.files.len(), 15, "{r}");
        let left = data_files(&table_dir);
        assert_eq!(left.len(), 3, "{left:?}");
        // What is left is exactly what the table references.
        let t = lake.open("bronze", "t").await.unwrap().unwrap();
        let mut referenced: Vec<String> = t
            .snapshot()
            .unwrap()
            .log_data()
            .iter()
            .map(|f| percent_decode(&f.path()))
            .collect();
        referenced.sort();
        assert_eq!(left, referenced);
        assert_eq!(contents(&lake, "bronze", "t").await, before);
    }

    fn percent_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match (b[i], s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16))) {
                (b'%', Some(Ok(v))) => {
                    out.push(v);
                    i += 3;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn checkpoint_appears_and_the_table_loads_from_it() {
        let (dir, lake) = new_lake();
        for i in 0..7 {
            append(&lake, "silver", "t", batch(i * 10..i * 10 + 10, "y"), false).await;
        }
        let before = contents(&lake, "silver", "t").await;
        let r = checkpoint(&lake, "silver", "t", false).await.unwrap();
        assert_eq!(r.version, 6, "{r}");
        let log = dir.path().join("silver/t/_delta_log");
        assert!(
            log.join("00000000000000000006.checkpoint.parquet").exists(),
            "{:?}",
            std::fs::read_dir(&log).unwrap().collect::<Vec<_>>()
        );
        let last: serde_json::Value =
            serde_json::from_slice(&std::fs::read(log.join("_last_checkpoint")).unwrap()).unwrap();
        assert_eq!(last["version"], 6);
        // Without the JSON commits it replaced, the table still loads, from
        // the checkpoint.
        for v in 0..=6 {
            std::fs::remove_file(log.join(format!("{v:020}.json"))).unwrap();
        }
        let t = lake.open("silver", "t").await.unwrap().unwrap();
        assert_eq!(t.version(), Some(6));
        assert_eq!(contents(&lake, "silver", "t").await, before);
        // Cleaning expired logs keeps everything younger than 30 days.
        let r = checkpoint(&lake, "silver", "t", true).await.unwrap();
        assert_eq!(r.logs_cleaned, 0, "{r}");
    }

    #[tokio::test]
    async fn a_missing_table_is_named() {
        let (_dir, lake) = new_lake();
        let err = optimize(&lake, "silver", "nope", &small())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "table silver.nope does not exist");
        let err = checkpoint(&lake, "gold", "nope", false).await.unwrap_err();
        assert_eq!(err.to_string(), "table gold.nope does not exist");
    }

    /// A writer that read the table before a compaction committed must not
    /// commit on top of it (the files it rewrites are gone, their rows live
    /// on in the compacted file): delta-rs 1.1.3 rejects it as a conflict,
    /// which ingest treats as transient and redoes from the lake's offsets.
    #[tokio::test]
    async fn a_merge_that_read_the_table_before_a_compaction_conflicts() {
        let (_dir, lake) = new_lake();
        for i in 0..4 {
            append(
                &lake,
                "silver",
                "t",
                batch(i * 10..i * 10 + 10, "old"),
                false,
            )
            .await;
        }
        let stale = lake.open("silver", "t").await.unwrap().unwrap();
        optimize(&lake, "silver", "t", &small()).await.unwrap();
        let err = merge_into(stale, "t", batch(5..6, "new"))
            .await
            .unwrap_err();
        assert!(conflicted(&err) && err.is_transient(), "{err:?}");
        merge(&lake, "t", batch(5..6, "new")).await.unwrap();
        let rows = contents(&lake, "silver", "t").await;
        assert_eq!(rows.len(), 40);
        let five: Vec<&String> = rows.iter().filter(|r| r.starts_with("| 5 ")).collect();
        assert!(five.len() == 1 && five[0].contains("new"), "{five:?}");
    }

    /// Pins why compactions take [`CompactionLock`]: delta-rs 1.1.3 lets two
    /// compactions of the same files both commit, doubling their rows.
    #[tokio::test]
    async fn two_unlocked_compactions_of_the_same_files_double_rows() {
        let (_dir, lake) = new_lake();
        for i in 0..4 {
            append(&lake, "silver", "t", batch(i * 10..i * 10 + 10, "x"), false).await;
        }
        let target = NonZeroU64::new(1 << 20).unwrap();
        let a = lake.open("silver", "t").await.unwrap().unwrap();
        let b = lake.open("silver", "t").await.unwrap().unwrap();
        a.optimize().with_target_size(target).await.unwrap();
        b.optimize().with_target_size(target).await.unwrap();
        assert_eq!(
            contents(&lake, "silver", "t").await.len(),
            80,
            "if delta-rs now rejects the second compaction, CompactionLock may go"
        );
    }

    #[tokio::test]
    async fn a_second_compaction_waits_for_the_lock_or_is_told_busy() {
        let (_dir, lake) = new_lake();
        for i in 0..4 {
            append(&lake, "silver", "t", batch(i * 10..i * 10 + 10, "x"), false).await;
        }
        let t = lake.open("silver", "t").await.unwrap().unwrap();
        let held = CompactionLock::acquire(&lake, &t, "silver.t", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        let now = OptimizeOptions {
            lock_wait: Duration::ZERO,
            ..small()
        };
        let err = optimize(&lake, "silver", "t", &now).await.unwrap_err();
        assert!(matches!(err, Error::CompactionBusy(_)), "{err}");
        held.release().await;
        let r = optimize(&lake, "silver", "t", &now).await.unwrap();
        assert_eq!((r.files_before, r.files_after), (4, 1));
        // Released again: the next one gets it at once.
        optimize(&lake, "silver", "t", &now).await.unwrap();
        assert_eq!(contents(&lake, "silver", "t").await.len(), 40);
    }

    /// A compaction that loses the race with a MERGE is redone on the new
    /// version and commits.
    #[tokio::test]
    async fn a_compaction_that_loses_a_race_is_redone() {
        let (_dir, lake) = new_lake();
        for i in 0..4 {
            append(
                &lake,
                "silver",
                "t",
                batch(i * 10..i * 10 + 10, "old"),
                false,
            )
            .await;
        }
        let mut first = true;
        let (metrics, attempts) = with_retries("silver.t", "optimize", 3, || {
            let lake = lake.clone();
            let race = std::mem::take(&mut first);
            async move {
                let t = open_existing(&lake, "silver", "t").await?;
                if race {
                    // A writer rewrites a file after the compaction read the table.
                    merge(&lake, "t", batch(5..6, "new")).await?;
                }
                let (_, m) = t
                    .optimize()
                    .with_target_size(NonZeroU64::new(1 << 20).unwrap())
                    .await
                    .map_err(|source| Error::Delta {
                        table: "silver.t".into(),
                        source,
                    })?;
                Ok(m)
            }
        })
        .await
        .unwrap();
        assert_eq!(attempts, 2);
        assert!(metrics.num_files_removed >= 4, "{metrics:?}");
        let rows = contents(&lake, "silver", "t").await;
        assert_eq!(rows.len(), 40);
        assert_eq!(rows.iter().filter(|r| r.contains("new")).count(), 1);
        let t = lake.open("silver", "t").await.unwrap().unwrap();
        assert_eq!(file_stats(&t, "silver.t").unwrap().0, 1);
        // Giving up says so, with the attempts.
        let err = with_retries("silver.t", "optimize", 2, || async {
            Err::<(), _>(Error::Delta {
                table: "silver.t".into(),
                source: DeltaTableError::VersionAlreadyExists(1),
            })
        })
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("lost the race with other writers 2 times"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_beside_a_live_writer_loses_nothing() {
        let (_dir, lake) = new_lake();
        const COMMITS: i64 = 60;
        const ROWS: i64 = 5;
        append(&lake, "bronze", "t", batch(0..ROWS, "x"), true).await;
        append(&lake, "silver", "t", batch(0..ROWS, "v0"), false).await;
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let lake = lake.clone();
            let done = done.clone();
            // A runtime of its own: a writer in another process, in effect.
            std::thread::spawn(move || {
                tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(async move {
                        let mut redone = 0u32;
                        let mut expected: BTreeMap<i64, String> =
                            (0..ROWS).map(|id| (id, "v0".to_string())).collect();
                        for i in 1..COMMITS {
                            append(
                                &lake,
                                "bronze",
                                "t",
                                batch(i * ROWS..(i + 1) * ROWS, "x"),
                                true,
                            )
                            .await;
                            // New rows, and a new value for a row of the commit
                            // before (as orders change status soon after they are
                            // placed): the merge rewrites a file compaction wants too.
                            let old = i * ROWS - 1;
                            let b = arrow::compute::concat_batches(
                                &batch(0..0, "").schema(),
                                &[
                                    batch(i * ROWS..(i + 1) * ROWS, &format!("v{i}")),
                                    batch(old..old + 1, &format!("v{i}")),
                                ],
                            )
                            .unwrap();
                            for id in (i * ROWS..(i + 1) * ROWS).chain([old]) {
                                expected.insert(id, format!("v{i}"));
                            }
                            loop {
                                match merge(&lake, "t", b.clone()).await {
                                    Ok(()) => break,
                                    Err(e) if e.is_transient() => redone += 1,
                                    Err(e) => panic!("{}", error_chain(&e)),
                                }
                            }
                        }
                        done.store(true, Ordering::SeqCst);
                        (redone, expected)
                    })
            })
        };
        let attempts = Arc::new(AtomicU32::new(0));
        let (mut runs, mut committed) = (0, 0);
        let options = OptimizeOptions {
            max_attempts: 50,
            ..small()
        };
        while !done.load(Ordering::SeqCst) {
            for layer in ["bronze", "silver"] {
                let r = optimize(&lake, layer, "t", &options).await.unwrap();
                attempts.fetch_add(r.attempts - 1, Ordering::SeqCst);
                runs += 1;
                committed += usize::from(r.files_removed > 0);
            }
        }
        let (writer_redone, expected) = writer.join().unwrap();
        let bronze = contents(&lake, "bronze", "t").await;
        assert_eq!(
            bronze.len() as i64,
            COMMITS * ROWS,
            "bronze lost or doubled rows"
        );
        let silver = contents(&lake, "silver", "t").await;
        assert_eq!(
            silver.len() as i64,
            COMMITS * ROWS,
            "silver lost or doubled rows"
        );
        for (row, (id, v)) in silver.iter().zip(&expected) {
            assert!(
                row.starts_with(&format!("| {id} ")) && row.contains(&format!(" {v} ")),
                "{row} should be {id} {v}"
            );
        }
        eprintln!(
            "{runs} compactions ({committed} committed), {} redone after a lost race; writer redid {writer_redone}",
            attempts.load(Ordering::SeqCst)
        );
    }
}
